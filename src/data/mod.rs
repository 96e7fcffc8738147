//! Data: IDX files ([`idx`]), the Fashion-MNIST files, checksums, class names and discovery ([`fashion_mnist`]),
//! the chapter's transforms bit-exact with torchvision + Pillow ([`transforms`]), and the batch [`loader`].
//!
//! Flow: [`find_data_dir`] → [`Dataset::load`] (u8 images `n×h×w`, labels) → [`Loader`] → [`Batch`]
//! (f32 `n×1×h×w`, labels).

pub mod fashion_mnist;
pub mod idx;
pub mod image_file;
pub mod loader;
pub mod transforms;

pub use fashion_mnist::{find_data_dir, Dataset, Split, CLASS_NAMES, NUM_CLASSES};
pub use idx::{read_idx, read_images, read_labels, IdxArray};
pub use loader::{Batch, Epoch, Loader, TransformConfig};
pub use transforms::{resize_like_pil, resize_shorter_side, to_tensor, Normalize, PilResize};
