//! Timing the loader alone (no model): images per second through decoding, transforms and batching, for
//! `resnet bench --loader DIR` and the comparison with `tools/bench_loader_torchvision.py`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::folder::{FolderOptions, ImageFolder};
use super::loader::Loader;
use super::open::{pipelines, NormalizeSpec, Preset};
use super::source::ImageDataset;
use crate::Result;

/// What [`bench_loader`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderBench {
    /// Images delivered.
    pub images: usize,
    /// Seconds for them (the epoch, from its start to the last batch).
    pub seconds: f64,
    /// `images / seconds`.
    pub images_per_s: f64,
    /// Seconds spent opening the folder (listing, headers, and the cache fill if it fits).
    pub open_seconds: f64,
}

/// Opens `dir` as an [`ImageFolder`] (`dir/train` if there is one) with `opts`, and times one shuffled epoch of
/// `preset`'s training transforms (normalized with ImageNet's mean and std, as the torchvision script does) at
/// `batch_size` with `workers` threads, stopping after `max_images` if given.
pub fn bench_loader(
    dir: &Path,
    opts: &FolderOptions,
    preset: Preset,
    batch_size: usize,
    workers: usize,
    max_images: Option<usize>,
) -> Result<LoaderBench> {
    let root = if dir.join("train").is_dir() {
        dir.join("train")
    } else {
        dir.to_path_buf()
    };
    let t0 = Instant::now();
    let folder: Arc<dyn ImageDataset> = Arc::new(ImageFolder::open(&root, opts)?);
    let open_seconds = t0.elapsed().as_secs_f64();
    let norm = NormalizeSpec::Given(vec![0.485, 0.456, 0.406], vec![0.229, 0.224, 0.225]);
    let norm = if folder.channels() == 3 {
        norm
    } else {
        NormalizeSpec::Given(vec![0.5], vec![0.25])
    };
    let (train, _) = pipelines(preset, None, true, &norm, &*folder)?;
    let loader = Loader::with_pipeline(folder, batch_size, true, 0, train)?.with_workers(workers);
    let limit = max_images.unwrap_or(usize::MAX);
    let start = Instant::now();
    let mut images = 0;
    for batch in loader.epoch(0) {
        images += batch?.labels.len();
        if images >= limit {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(LoaderBench {
        images,
        seconds,
        images_per_s: images as f64 / seconds.max(1e-9),
        open_seconds,
    })
}
