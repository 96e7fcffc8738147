//! Data: IDX files ([`idx`]), the Fashion-MNIST files, checksums, class names and discovery ([`fashion_mnist`]),
//! CIFAR-10/100 binaries ([`cifar`]), torchvision's `ImageFolder` ([`folder`]), image files ([`image_file`]), one
//! dataset interface over all of them ([`source`]), torchvision's transforms bit-exact with Pillow
//! ([`transforms`]), the batch [`loader`], opening a dataset by format ([`open`]), exporting a dataset as an image
//! folder ([`export`]) and timing the loader ([`bench`](mod@bench)).
//!
//! Flow: [`open_data`] (or [`Dataset::load`] for the chapter) → an [`ImageDataset`] (u8 images `h×w×c`, labels,
//! class names) → [`Loader`] with a [`Pipeline`] → [`Batch`] (f32 `n×c×h×w`, labels).

pub mod bench;
pub mod calib;
pub mod cifar;
pub mod export;
pub mod fashion_mnist;
pub mod folder;
pub mod idx;
pub mod image_file;
pub mod loader;
pub mod open;
pub mod source;
pub mod transforms;

pub use bench::bench_loader;
pub use export::export_image_folder;
pub use fashion_mnist::{find_data_dir, Dataset, Split, CLASS_NAMES, NUM_CLASSES};
pub use folder::{open_splits, FolderOptions, FolderSplits, ImageFolder};
pub use idx::{read_idx, read_images, read_labels, IdxArray};
pub use loader::{Batch, Epoch, Loader, TransformConfig};
pub use open::{open_data, pipelines, DataOptions, Format, NormalizeSpec, Preset, Splits};
pub use source::{channel_mean_std, class_counts, ArrayDataset, ImageDataset, Subset};
pub use transforms::{resize_shorter_side, Image, PilResize, Pipeline, RandomErasing, Step};
