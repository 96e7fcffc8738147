//! The run's configuration: everything that determines a training run, stored in its checkpoint.

use super::Recipe;
use crate::data::transforms::{check_normalize_values, check_resize};
use crate::data::{
    pipelines, DataOptions, Format, ImageDataset, NormalizeSpec, Pipeline, Preset, RandomErasing,
    CLASS_NAMES, NUM_CLASSES,
};
use crate::nn::{ArchName, ResNetConfig, Stem};
use crate::optim::{OptimizerKind, OptimizerOptions, Schedule};
use crate::{bail, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Largest `--batch-size`.
pub const MAX_BATCH: usize = 1 << 16;
/// Largest input batch, in values (batch × height × width): 2^28, 1 GiB of f32.
pub const MAX_BATCH_VALUES: usize = 1 << 28;

/// Everything that determines a training run (stored in the checkpoint, so `--resume` continues the same run).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Total epochs of the run (a resumed run trains the ones not yet done).
    pub epochs: usize,
    /// Images per training and evaluation batch (at least 2, for batch norm).
    pub batch_size: usize,
    /// Base learning rate; the schedule scales it per step.
    pub lr: f32,
    /// `adam`, `adamw` or `sgd`.
    #[serde(with = "as_text")]
    pub optimizer: OptimizerKind,
    /// SGD momentum (`None`: the optimizer's default, 0).
    pub momentum: Option<f64>,
    /// SGD Nesterov momentum (needs a momentum > 0).
    pub nesterov: bool,
    /// Weight decay (`None`: the optimizer's default; L2 for `adam`/`sgd`, decoupled for `adamw`).
    pub weight_decay: Option<f64>,
    /// `constant`, `step`, `cosine` or `onecycle`.
    #[serde(with = "as_text")]
    pub schedule: Schedule,
    /// Images are resized (shorter side) to this size; `None` keeps 28×28.
    pub resize: Option<usize>,
    /// `(mean, std)` applied after `ToTensor`; `None` leaves pixels in `[0, 1]`.
    pub normalize: Option<(f32, f32)>,
    /// Random crop and horizontal flip of the training images (never of the test images).
    pub augment: bool,
    /// Seeds the initialization, the per-epoch shuffle and the augmentation.
    pub seed: u64,
    /// Train on only the first this many training images.
    pub limit_train: Option<usize>,
    /// Evaluate on only the first this many test images.
    pub limit_test: Option<usize>,
    /// The named network (`--arch`); `widths`, `layers`, `stem` and `zero_init_residual` adjust it.
    #[serde(default = "chapter_arch")]
    pub arch: ArchName,
    /// Network stage widths (the chapter's: 64,128,256,512).
    pub widths: Vec<usize>,
    /// Residual blocks per stage, one per entry of `widths` (the chapter's: 2,2,2,2).
    #[serde(alias = "residuals")]
    pub layers: Vec<usize>,
    /// The layers before the first stage (the ImageNet stem, or the small one for 28×28 and 32×32 inputs).
    #[serde(default = "imagenet_stem")]
    pub stem: Stem,
    /// Start every block as the identity (its last batch-norm weight zero).
    #[serde(default)]
    pub zero_init_residual: bool,
    /// Dataset format: `auto`, `idx`, `cifar10`, `cifar100`, `cifar100-coarse` or `folder`.
    #[serde(default = "auto_format", with = "as_text")]
    pub format: Format,
    /// Channels the images are converted to, 1 or 3 (`None`: the data's own).
    #[serde(default)]
    pub channels: Option<usize>,
    /// Transform preset: `chapter`, `cifar` or `imagenet`.
    #[serde(default = "chapter_transforms", with = "as_text")]
    pub transforms: Preset,
    /// Folder datasets without `val/` or `test/`: the fraction of each class held out for validation.
    #[serde(default)]
    pub val_split: Option<f64>,
    /// Folder datasets: leave out files that cannot be read instead of stopping.
    #[serde(default)]
    pub skip_bad: bool,
    /// Input channels of the network: the data's, set when the run starts.
    #[serde(default = "one_channel")]
    pub in_channels: usize,
    /// Class names in label order, from the data when the run starts (empty: Fashion-MNIST's ten).
    #[serde(default)]
    pub classes: Vec<String>,
    /// Per-channel `(mean, std)` for `Normalize`, computed once from the training images when the run starts
    /// (`--normalize` on data other than one-channel IDX files).
    #[serde(default)]
    pub channel_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// Fine-tuning: the weights file the run started from (ours, safetensors or `.pth` from PyTorch).
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// Fine-tuning: keep the classifier's fresh initialization instead of loading it (a new class count).
    #[serde(default)]
    pub reset_head: bool,
    /// Fine-tuning: leading parts held fixed (0 none, 1 the stem, `1 + k` the stem and the first `k` stages; see
    /// [`ResNet::set_frozen`]).
    #[serde(default)]
    pub freeze: usize,
    /// Data-parallel jobs: batch norm normalizes with the global batch's statistics (`SyncBatchNorm`) instead
    /// of each rank's own. No effect on a single process.
    #[serde(default)]
    pub sync_bn: bool,
    /// The `--recipe` the run's defaults came from (`chapter`, `fast`, `best`); flags given override it.
    #[serde(default, with = "as_text")]
    pub recipe: Recipe,
    /// Label smoothing of the loss, `CrossEntropyLoss(label_smoothing=…)` (0: none).
    #[serde(default)]
    pub label_smoothing: f32,
    /// Probability of torchvision's `RandomErasing` on each training image, after `Normalize` (0: none).
    #[serde(default)]
    pub random_erasing: f64,
    /// Decay of an exponential moving average of the weights (and batch-norm statistics), updated every step
    /// and evaluated and saved in place of the raw weights (`None`: no average).
    #[serde(default)]
    pub ema: Option<f64>,
    /// Evaluate with flip test-time augmentation: the mean of the logits of each image and its mirror.
    #[serde(default)]
    pub tta: bool,
    /// Exempt the batch norms' weights and biases and every bias from weight decay.
    #[serde(default)]
    pub wd_skip_norm: bool,
    /// Epochs (fractions allowed) of linear learning-rate warm-up, multiplying the schedule's rate.
    #[serde(default)]
    pub warmup_epochs: f64,
    /// Stop after the first evaluation at or above this accuracy.
    #[serde(default)]
    pub target_acc: Option<f64>,
}

fn auto_format() -> Format {
    Format::Auto
}

fn chapter_transforms() -> Preset {
    Preset::Chapter
}

/// Stores a value as the text its `FromStr` reads (`"adam"`, `"step:5:0.1"`, `"cifar100-coarse"`), so the JSON
/// in checkpoints stays what earlier versions wrote.
mod as_text {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};
    use std::fmt::Display;
    use std::str::FromStr;

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

fn one_channel() -> usize {
    1
}

fn chapter_arch() -> ArchName {
    ArchName::Chapter
}

fn imagenet_stem() -> Stem {
    Stem::Imagenet
}

impl Default for TrainConfig {
    /// The chapter's run: resize 96, batch 256, Adam lr 0.001, 5 epochs, seed 0.
    fn default() -> Self {
        TrainConfig {
            epochs: 5,
            batch_size: 256,
            lr: 0.001,
            optimizer: OptimizerKind::Adam,
            momentum: None,
            nesterov: false,
            weight_decay: None,
            schedule: Schedule::Constant,
            resize: Some(96),
            normalize: None,
            augment: false,
            seed: 0,
            limit_train: None,
            limit_test: None,
            arch: ArchName::Chapter,
            widths: vec![64, 128, 256, 512],
            layers: vec![2, 2, 2, 2],
            stem: Stem::Imagenet,
            zero_init_residual: false,
            format: auto_format(),
            channels: None,
            transforms: chapter_transforms(),
            val_split: None,
            skip_bad: false,
            in_channels: 1,
            classes: Vec::new(),
            channel_norm: None,
            init: None,
            reset_head: false,
            freeze: 0,
            sync_bn: false,
            recipe: Recipe::Chapter,
            label_smoothing: 0.0,
            random_erasing: 0.0,
            ema: None,
            tta: false,
            wd_skip_norm: false,
            warmup_epochs: 0.0,
            target_acc: None,
        }
    }
}

impl TrainConfig {
    /// The network's description: the named `arch` for the data's channels and classes, with this run's
    /// `widths`, `layers`, `stem` and `zero_init_residual`.
    pub fn arch(&self) -> ResNetConfig {
        ResNetConfig {
            widths: self.widths.clone(),
            layers: self.layers.clone(),
            stem: self.stem,
            zero_init_residual: self.zero_init_residual,
            ..ResNetConfig::named(self.arch, self.in_channels, self.num_classes())
        }
    }
    /// Number of classes: of the data the run started on (Fashion-MNIST's 10 for runs of earlier versions).
    pub fn num_classes(&self) -> usize {
        if self.classes.is_empty() {
            NUM_CLASSES
        } else {
            self.classes.len()
        }
    }
    /// Class names in label order.
    pub fn class_names(&self) -> Vec<String> {
        if self.classes.is_empty() {
            CLASS_NAMES.iter().map(|s| s.to_string()).collect()
        } else {
            self.classes.clone()
        }
    }
    /// How the data is opened.
    pub fn data_options(&self, verify: bool, cache_mb: usize) -> Result<DataOptions> {
        Ok(DataOptions {
            format: self.format,
            channels: self.channels,
            cache_mb,
            skip_bad: self.skip_bad,
            val_split: self.val_split,
            seed: self.seed,
            verify,
            threads: 2,
            test_only: false,
        })
    }
    /// The training and evaluation pipelines of this run's preset for `train`, the training one ending in
    /// `RandomErasing` when the run asks for it.
    pub fn pipelines(&self, train: &dyn ImageDataset) -> Result<(Pipeline, Pipeline)> {
        let normalize = match (&self.channel_norm, self.normalize) {
            (Some((m, s)), _) => NormalizeSpec::Given(m.clone(), s.clone()),
            (None, Some((m, s))) => NormalizeSpec::Given(vec![m], vec![s]),
            (None, None) => NormalizeSpec::None,
        };
        let (t, e) = pipelines(
            self.transforms,
            self.resize,
            self.augment,
            &normalize,
            train,
        )?;
        let t = match self.random_erasing {
            p if p > 0.0 => t.with_erasing(RandomErasing::new(p)?),
            _ => t,
        };
        Ok((t, e))
    }
    /// Checks every value before any work starts.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            bail!("--epochs must be at least 1");
        }
        if self.batch_size < 2 {
            bail!("--batch-size must be at least 2 (batch norm needs more than one value per channel)");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr must be a positive number, got {}", self.lr);
        }
        if let Some(r) = self.resize {
            check_resize(r)?;
        }
        if self.batch_size > MAX_BATCH {
            bail!(
                "--batch-size must be at most {MAX_BATCH}, got {}",
                self.batch_size
            );
        }
        let side = self.resize.unwrap_or(28);
        if self.batch_size * side * side > MAX_BATCH_VALUES {
            bail!(
                "--batch-size {} at {side}×{side} is more than {MAX_BATCH_VALUES} input values per batch",
                self.batch_size
            );
        }
        self.arch().check()?;
        if self.limit_train == Some(0) || self.limit_test == Some(0) {
            bail!("--limit-train / --limit-test must be at least 1");
        }
        if let Some(c) = self.channels.filter(|c| *c != 1 && *c != 3) {
            bail!("--channels must be 1 or 3, got {c}");
        }
        if let Some((m, s)) = &self.channel_norm {
            check_normalize_values(m, s).map_err(|e| Error::new(format!("--mean / --std: {e}")))?;
        }
        if self.freeze > 1 + self.layers.len() {
            bail!(
                "--freeze-until: the network has {} stages, so at most stage {}",
                self.layers.len(),
                self.layers.len()
            );
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!(
                "--label-smoothing must be at least 0 and below 1, got {}",
                self.label_smoothing
            );
        }
        if !(0.0..=1.0).contains(&self.random_erasing) {
            bail!(
                "--random-erasing is a probability between 0 and 1, got {}",
                self.random_erasing
            );
        }
        if let Some(d) = self.ema.filter(|d| !(0.0..1.0).contains(d)) {
            bail!("--ema: the decay must be at least 0 and below 1 (e.g. 0.999), got {d}");
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            bail!(
                "--warmup-epochs must be a number of epochs >= 0, got {}",
                self.warmup_epochs
            );
        }
        if let Some(a) = self.target_acc.filter(|a| !(*a > 0.0 && *a <= 1.0)) {
            bail!("--target-acc is an accuracy above 0 and at most 1, got {a}");
        }
        if let Some(f) = self.val_split.filter(|f| !(*f > 0.0 && *f < 1.0)) {
            bail!("--val-split must be a fraction between 0 and 1 (exclusive), got {f}");
        }
        Ok(())
    }
    pub(super) fn optimizer_options(&self) -> OptimizerOptions {
        OptimizerOptions {
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            nesterov: self.nesterov,
            ..Default::default()
        }
    }
    /// The settings a recipe decides, as the `resnet train` flags that give them: what `--recipe` resolved to,
    /// printed at the start of a run.
    pub fn settings_flags(&self) -> String {
        let mut f = vec![
            format!("--epochs {}", self.epochs),
            format!("--batch-size {}", self.batch_size),
            format!("--optimizer {}", self.optimizer),
            format!("--lr {}", self.lr),
        ];
        if let Some(m) = self.momentum {
            f.push(format!("--momentum {m}"));
        }
        f.push(format!("--nesterov={}", self.nesterov));
        if let Some(wd) = self.weight_decay {
            f.push(format!("--weight-decay {wd}"));
        }
        f.push(format!("--wd-skip-norm={}", self.wd_skip_norm));
        f.push(format!("--schedule {}", self.schedule));
        f.push(format!("--warmup-epochs {}", self.warmup_epochs));
        if self.transforms == Preset::Chapter || self.resize.is_some() {
            f.push(format!("--resize {}", self.resize.unwrap_or(28)));
        }
        f.push(format!("--augment={}", self.augment));
        f.push(format!(
            "--normalize={}",
            self.normalize.is_some() || self.channel_norm.is_some()
        ));
        f.push(format!(
            "--stem {}",
            match self.stem {
                Stem::Imagenet => "imagenet",
                Stem::Small => "small",
            }
        ));
        let widths: Vec<String> = self.widths.iter().map(|w| w.to_string()).collect();
        f.push(format!("--widths {}", widths.join(",")));
        f.push(format!("--label-smoothing {}", self.label_smoothing));
        f.push(format!("--random-erasing {}", self.random_erasing));
        if let Some(d) = self.ema {
            f.push(format!("--ema {d}"));
        }
        f.push(format!("--tta={}", self.tta));
        f.join(" ")
    }
    /// Steps of learning-rate warm-up for epochs of `steps_per_epoch` batches.
    pub fn warmup_steps(&self, steps_per_epoch: usize) -> usize {
        (self.warmup_epochs * steps_per_epoch as f64).round() as usize
    }
}
