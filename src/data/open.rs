//! Opening a dataset by format, and the transform presets: what `--data/--format/--channels/--transforms/
//! --val-split/--cache-mb/--skip-bad` map to.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use super::cifar::{self, Kind, Label};
use super::fashion_mnist::{Dataset, Split, CLASS_NAMES};
use super::folder::{self, FolderOptions, DEFAULT_CACHE_MB};
use super::loader::TransformConfig;
use super::source::{channel_mean_std, ArrayDataset, ImageDataset};
use super::transforms::{resize_shorter_side, Pipeline};
use crate::{bail, Error, Result};

/// A dataset format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Decide from the directory's contents ([`detect_format`]).
    Auto,
    /// IDX files (Fashion-MNIST, MNIST): `train-images-idx3-ubyte[.gz]` and the three others.
    Idx,
    /// CIFAR-10 binary.
    Cifar10,
    /// CIFAR-100 binary, with the fine or coarse label.
    Cifar100(Label),
    /// torchvision's `ImageFolder`.
    Folder,
}

impl FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Format> {
        Ok(match s {
            "auto" => Format::Auto,
            "idx" | "fashion-mnist" | "mnist" => Format::Idx,
            "cifar10" | "cifar-10" => Format::Cifar10,
            "cifar100" | "cifar-100" => Format::Cifar100(Label::Fine),
            "cifar100-coarse" | "cifar-100-coarse" => Format::Cifar100(Label::Coarse),
            "folder" | "imagefolder" => Format::Folder,
            _ => bail!(
                "unknown data format {s:?} (auto, idx, cifar10, cifar100, cifar100-coarse, folder)"
            ),
        })
    }
}

impl std::fmt::Display for Format {
    /// The spelling [`Format::from_str`] reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Auto => "auto",
            Format::Idx => "idx",
            Format::Cifar10 => "cifar10",
            Format::Cifar100(Label::Fine) => "cifar100",
            Format::Cifar100(Label::Coarse) => "cifar100-coarse",
            Format::Folder => "folder",
        })
    }
}

/// How to open a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct DataOptions {
    /// The format (`Auto`: [`detect_format`]).
    pub format: Format,
    /// Channels of the images handed out, 1 or 3 (`None`: the format's own; folders: 1 if all gray, else 3).
    pub channels: Option<usize>,
    /// Folder datasets: decoded-image cache budget in MiB (0: decode on every access).
    pub cache_mb: usize,
    /// Folder datasets: leave out unreadable files (counted in [`Splits::notes`]) instead of failing.
    pub skip_bad: bool,
    /// The fraction of the training images held out for validation, which replaces the test images (IDX,
    /// CIFAR, and folders with `train/` only or no split; folders without `val/` or `test/` default to 0.1).
    pub val_split: Option<f64>,
    /// Seed of the validation split.
    pub seed: u64,
    /// IDX: check the official Fashion-MNIST sha256 of `.gz` files.
    pub verify: bool,
    /// Threads for scanning and caching folders.
    pub threads: usize,
    /// IDX and CIFAR: read only the test split (`Splits::train` is then the test split too), for `eval`.
    pub test_only: bool,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            format: Format::Auto,
            channels: None,
            cache_mb: DEFAULT_CACHE_MB,
            skip_bad: false,
            val_split: None,
            seed: 0,
            verify: false,
            threads: 2,
            test_only: false,
        }
    }
}

/// Training and test/validation datasets, opened.
#[derive(Debug)]
pub struct Splits {
    /// Training images.
    pub train: Arc<dyn ImageDataset>,
    /// Test (IDX, CIFAR) or validation (folders) images, same classes.
    pub test: Arc<dyn ImageDataset>,
    /// The format found.
    pub format: Format,
    /// Lines worth showing the user: where the validation images came from, files skipped, cache use.
    pub notes: Vec<String>,
}

/// The format of `dir`: IDX if it holds `train-images-idx3-ubyte[.gz]`, CIFAR-10 if `data_batch_1.bin` (here or in
/// `cifar-10-batches-bin/`), CIFAR-100 if `train.bin` (here or in `cifar-100-binary/`), else a folder dataset. A
/// name that exists decides, whatever the kind of file: one that is not a regular file is refused when read.
pub fn detect_format(dir: &Path) -> Result<Format> {
    if !dir.is_dir() {
        bail!("{}: no such folder", dir.display());
    }
    let idx = Split::Train.images_file();
    if dir.join(idx).exists() || dir.join(idx.trim_end_matches(".gz")).exists() {
        return Ok(Format::Idx);
    }
    if cifar::find_dir(dir, Kind::Cifar10).is_some() {
        return Ok(Format::Cifar10);
    }
    if cifar::find_dir(dir, Kind::Cifar100(Label::Fine)).is_some() {
        return Ok(Format::Cifar100(Label::Fine));
    }
    Ok(Format::Folder)
}

fn check_channels(c: Option<usize>) -> Result<()> {
    match c {
        None | Some(1) | Some(3) => Ok(()),
        Some(c) => bail!("--channels must be 1 or 3, got {c}"),
    }
}

/// An IDX split with `c` channels: the [`Dataset`] itself for 1, an RGB [`ArrayDataset`] for 3.
fn idx_with_channels(d: Dataset, c: usize, origin: &Path) -> Result<Arc<dyn ImageDataset>> {
    if c == 1 {
        return Ok(Arc::new(d));
    }
    let classes = CLASS_NAMES.iter().map(|s| s.to_string()).collect();
    let labels = d.labels.iter().map(|&l| l as u32).collect();
    let a = ArrayDataset::new(
        d.images,
        labels,
        (d.h, d.w, 1),
        classes,
        origin.display().to_string(),
    )?;
    Ok(Arc::new(a.with_channels(c)))
}

/// Opens the training and test (or validation) images of `dir` in `opts.format`.
pub fn open_data(dir: &Path, opts: &DataOptions) -> Result<Splits> {
    check_channels(opts.channels)?;
    if let Some(f) = opts.val_split {
        folder::check_val_split(f)?;
    }
    let format = match opts.format {
        Format::Auto => detect_format(dir)?,
        f => f,
    };
    let mut notes = Vec::new();
    let (train, test): (Arc<dyn ImageDataset>, Arc<dyn ImageDataset>) = match format {
        Format::Idx => {
            let c = opts.channels.unwrap_or(1);
            let load = |train| {
                let split = if train { Split::Train } else { Split::Test };
                idx_with_channels(Dataset::load(dir, split, opts.verify)?, c, dir)
            };
            train_and_test(load, opts, dir, &mut notes)?
        }
        Format::Cifar10 | Format::Cifar100(_) => {
            let kind = match format {
                Format::Cifar10 => Kind::Cifar10,
                Format::Cifar100(l) => Kind::Cifar100(l),
                _ => unreachable!(),
            };
            let c = opts.channels.unwrap_or(3);
            let load = |train| -> Result<Arc<dyn ImageDataset>> {
                Ok(Arc::new(cifar::load(dir, kind, train)?.with_channels(c)))
            };
            train_and_test(load, opts, dir, &mut notes)?
        }
        Format::Folder => {
            let fo = FolderOptions {
                channels: opts.channels,
                cache_mb: opts.cache_mb,
                skip_bad: opts.skip_bad,
                threads: opts.threads,
            };
            let s = folder::open_splits(dir, &fo, opts.val_split, opts.seed)?;
            notes.push(format!("validation images: {}", s.val_source));
            if !s.skipped.is_empty() {
                notes.push(format!(
                    "skipped {} unreadable files, the first: {}",
                    s.skipped.len(),
                    s.skipped[0]
                ));
            }
            notes.push(if s.cached {
                "decoded images cached in memory".to_string()
            } else {
                format!(
                    "images decoded on every access (more than the {} MiB cache)",
                    opts.cache_mb
                )
            });
            (s.train, s.val)
        }
        Format::Auto => unreachable!(),
    };
    if train.classes() != test.classes() {
        bail!(
            "{}: the training and test images have different classes",
            dir.display()
        );
    }
    Ok(Splits {
        train,
        test,
        format,
        notes,
    })
}

/// The training and test images of IDX or CIFAR data, `load(true)` and `load(false)`. With `--val-split`, a
/// seeded, stratified share of the training images ([`folder::split_dataset`]) stands in for the test images,
/// which are not read; for `eval` (`test_only`) the test images also stand in for the training ones.
fn train_and_test(
    load: impl Fn(bool) -> Result<Arc<dyn ImageDataset>>,
    opts: &DataOptions,
    dir: &Path,
    notes: &mut Vec<String>,
) -> Result<(Arc<dyn ImageDataset>, Arc<dyn ImageDataset>)> {
    if let Some(fraction) = opts.val_split {
        let all = load(true)?;
        let n = all.len();
        let (train, val) = folder::split_dataset(all, fraction, opts.seed)?;
        notes.push(format!(
            "validation images: {} of the {n} training images of {} (--val-split {fraction}, seed {}); the test images are not used",
            val.len(),
            dir.display(),
            opts.seed
        ));
        return Ok((train, val));
    }
    let train = (!opts.test_only).then(|| load(true)).transpose()?;
    let test = load(false)?;
    Ok((train.unwrap_or_else(|| test.clone()), test))
}

/// A transform preset (`--transforms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// The chapter's: `Resize(size)` (if given), the old augmentation when asked (random crop with padding
    /// `max(1, side/8)` + flip), `ToTensor`, `Normalize`.
    Chapter,
    /// Training `RandomCrop(32, padding=4)` + `RandomHorizontalFlip`; evaluation nothing.
    Cifar,
    /// Training `RandomResizedCrop(224)` + `RandomHorizontalFlip`; evaluation `Resize(256)` + `CenterCrop(224)`.
    Imagenet,
}

impl FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Preset> {
        Ok(match s {
            "chapter" => Preset::Chapter,
            "cifar" => Preset::Cifar,
            "imagenet" => Preset::Imagenet,
            _ => bail!("unknown transforms {s:?} (chapter, cifar, imagenet)"),
        })
    }
}

impl std::fmt::Display for Preset {
    /// The spelling [`Preset::from_str`] reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Preset::Chapter => "chapter",
            Preset::Cifar => "cifar",
            Preset::Imagenet => "imagenet",
        })
    }
}

/// `Normalize` of a preset.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum NormalizeSpec {
    /// No normalization.
    #[default]
    None,
    /// These means and stds (1 value, or one per channel).
    Given(Vec<f32>, Vec<f32>),
    /// Per-channel mean and std of the training images, computed once ([`channel_mean_std`]).
    Auto,
}

/// The training and evaluation pipelines of `preset` for `train` (whose size and channels they need):
/// `size` is the chapter's `--resize` or the imagenet crop (default 224); `augment` applies to the chapter preset
/// only (cifar and imagenet always augment the training images). `Auto` normalization reads every training image
/// once.
pub fn pipelines(
    preset: Preset,
    size: Option<usize>,
    augment: bool,
    normalize: &NormalizeSpec,
    train: &dyn ImageDataset,
) -> Result<(Pipeline, Pipeline)> {
    let (mut t, mut e) = match preset {
        Preset::Chapter => {
            let Some((h, w)) = train.image_size() else {
                bail!("the chapter transforms need images of one size; these differ (use --transforms imagenet)");
            };
            let cfg = TransformConfig {
                resize: size,
                normalize: None,
                augment,
            };
            let eval = TransformConfig {
                augment: false,
                ..cfg
            };
            (cfg.pipeline(h, w)?, eval.pipeline(h, w)?)
        }
        Preset::Cifar => (Pipeline::cifar(true), Pipeline::cifar(false)),
        Preset::Imagenet => {
            let s = size.unwrap_or(224);
            (Pipeline::imagenet(true, s), Pipeline::imagenet(false, s))
        }
    };
    let norm = match normalize {
        NormalizeSpec::None => None,
        NormalizeSpec::Given(m, s) => Some((m.clone(), s.clone())),
        NormalizeSpec::Auto => Some(channel_mean_std(train)?),
    };
    t.normalize = norm.clone();
    e.normalize = norm;
    // Fail now, not at the first batch: sizes and normalization must fit the data.
    let c = train.channels();
    for p in [&t, &e] {
        p.output_size(train.image_size())?;
        p.normalize_for(c)?;
    }
    Ok((t, e))
}

/// The output size of the chapter preset for `h×w` images and `--resize size`.
pub fn chapter_size(h: usize, w: usize, size: Option<usize>) -> (usize, usize) {
    size.map_or((h, w), |s| resize_shorter_side(h, w, s))
}
