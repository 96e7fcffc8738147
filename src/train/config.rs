//! The run's configuration: everything that determines a training run, stored in its checkpoint. Each setting
//! is a field of one of four parts — the network ([`ResNetConfig`]), the data, the optimization and the run —
//! with its default given once, in that part's `Default`; recipes and flags are overlays on these defaults
//! ([`super::Settings`]).

use super::{Data, Recipe};
use crate::data::transforms::{check_normalize_values, check_resize};
use crate::data::{
    channel_mean_std, pipelines, DataOptions, Format, ImageDataset, NormalizeSpec, Pipeline,
    Preset, RandomErasing, CLASS_NAMES, NUM_CLASSES,
};
use crate::error::Context;
use crate::nn::{ArchName, ResNetConfig, Stem};
use crate::optim::{OptimizerKind, OptimizerOptions, Schedule};
use crate::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Largest `--batch-size`.
pub const MAX_BATCH: usize = 1 << 16;
/// Largest input batch, in values (batch × height × width): 2^28, 1 GiB of f32.
pub const MAX_BATCH_VALUES: usize = 1 << 28;
/// Side of Fashion-MNIST's images: the input size of a run that does not resize.
pub const NATIVE_SIZE: usize = 28;
/// The chapter's input size: the chapter's transforms resize to it unless told otherwise.
pub const CHAPTER_RESIZE: usize = 96;
/// Fashion-MNIST's pixel mean and standard deviation, `--normalize`'s on one-channel IDX data.
pub const FASHION_MNIST_MEAN_STD: (f32, f32) = (0.2860, 0.3530);

/// Everything that determines a training run (stored in the checkpoint, so `--resume` continues the same run).
/// Stored as JSON: the network under `model`, the other parts' fields at the top level (where earlier versions
/// kept every field; their flat layout still loads, see `StoredConfig`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StoredConfig")]
pub struct TrainConfig {
    /// The network, built as described: its input channels and classes are the data's, set when the run starts.
    pub model: ResNetConfig,
    /// What the run trains on and how the images are prepared.
    #[serde(flatten)]
    pub data: DataSettings,
    /// How the weights are updated.
    #[serde(flatten)]
    pub optim: OptimSettings,
    /// How long, in which batches, from which start, and how the run is evaluated.
    #[serde(flatten)]
    pub run: RunSettings,
}

/// What a run trains on and how its images are prepared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSettings {
    /// Dataset format: `auto`, `idx`, `cifar10`, `cifar100`, `cifar100-coarse` or `folder`.
    #[serde(default = "auto_format", with = "as_text")]
    pub format: Format,
    /// Channels the images are converted to, 1 or 3 (`None`: the data's own).
    #[serde(default)]
    pub channels: Option<usize>,
    /// Transform preset: `chapter`, `cifar` or `imagenet`.
    #[serde(default = "chapter_transforms", with = "as_text")]
    pub transforms: Preset,
    /// Images are resized (shorter side) to this size; `None` keeps the data's own size (the chapter preset always
    /// resizes; its runs stored before every value was honoured hold `None` for `--resize 28`).
    pub resize: Option<usize>,
    /// `(mean, std)` applied after `ToTensor`; `None` leaves pixels in `[0, 1]`.
    pub normalize: Option<(f32, f32)>,
    /// Per-channel `(mean, std)` for `Normalize`, computed once from the training images when the run starts
    /// (`--normalize` on data other than one-channel IDX files).
    #[serde(default)]
    pub channel_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// Random crop and horizontal flip of the training images (never of the test images).
    pub augment: bool,
    /// Probability of torchvision's `RandomErasing` on each training image, after `Normalize` (0: none).
    #[serde(default)]
    pub random_erasing: f64,
    /// Train on only the first this many training images.
    pub limit_train: Option<usize>,
    /// Evaluate on only the first this many test images.
    pub limit_test: Option<usize>,
    /// Folder datasets without `val/` or `test/`: the fraction of each class held out for validation.
    #[serde(default)]
    pub val_split: Option<f64>,
    /// Folder datasets: leave out files that cannot be read instead of stopping.
    #[serde(default)]
    pub skip_bad: bool,
    /// Class names in label order, from the data when the run starts (empty: Fashion-MNIST's ten).
    #[serde(default)]
    pub classes: Vec<String>,
}

/// How a run updates its weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimSettings {
    /// `adam`, `adamw` or `sgd`.
    #[serde(with = "as_text")]
    pub optimizer: OptimizerKind,
    /// Base learning rate; the schedule scales it per step.
    pub lr: f32,
    /// SGD momentum (`None`: the optimizer's default, 0).
    pub momentum: Option<f64>,
    /// SGD Nesterov momentum (needs a momentum > 0).
    pub nesterov: bool,
    /// Weight decay (`None`: the optimizer's default; L2 for `adam`/`sgd`, decoupled for `adamw`).
    pub weight_decay: Option<f64>,
    /// Exempt the batch norms' weights and biases and every bias from weight decay.
    #[serde(default)]
    pub wd_skip_norm: bool,
    /// `constant`, `step`, `cosine` or `onecycle`.
    #[serde(with = "as_text")]
    pub schedule: Schedule,
    /// Epochs (fractions allowed) of linear learning-rate warm-up, multiplying the schedule's rate.
    #[serde(default)]
    pub warmup_epochs: f64,
    /// Label smoothing of the loss, `CrossEntropyLoss(label_smoothing=…)` (0: none).
    #[serde(default)]
    pub label_smoothing: f32,
    /// Decay of an exponential moving average of the weights (and batch-norm statistics), updated every step
    /// and evaluated and saved in place of the raw weights (`None`: no average).
    #[serde(default)]
    pub ema: Option<f64>,
}

/// How long a run trains, in which batches, from which start, and how it is evaluated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// The `--recipe` the run's defaults came from (`chapter`, `fast`, `best`); flags given override it.
    #[serde(default, with = "as_text")]
    pub recipe: Recipe,
    /// Total epochs of the run (a resumed run trains the ones not yet done).
    pub epochs: usize,
    /// Images per training and evaluation batch (at least 2, for batch norm).
    pub batch_size: usize,
    /// Seeds the initialization, the per-epoch shuffle, the augmentation and the validation split.
    pub seed: u64,
    /// Fine-tuning: the weights file the run started from (ours, safetensors or `.pth` from PyTorch).
    #[serde(default)]
    pub init: Option<PathBuf>,
    /// Fine-tuning: keep the classifier's fresh initialization instead of loading it (a new class count).
    #[serde(default)]
    pub reset_head: bool,
    /// Fine-tuning: leading parts held fixed (0 none, 1 the stem, `1 + k` the stem and the first `k` stages; see
    /// [`crate::nn::ResNet::set_frozen`]).
    #[serde(default)]
    pub freeze: usize,
    /// Data-parallel jobs: batch norm normalizes with the global batch's statistics (`SyncBatchNorm`) instead
    /// of each rank's own. No effect on a single process.
    #[serde(default)]
    pub sync_bn: bool,
    /// Evaluate with flip test-time augmentation: the mean of the logits of each image and its mirror.
    #[serde(default)]
    pub tta: bool,
    /// Stop after the first evaluation at or above this accuracy.
    #[serde(default)]
    pub target_acc: Option<f64>,
}

impl Default for TrainConfig {
    /// The chapter's run: its ResNet-18 for one channel and ten classes, resize 96, batch 256, Adam lr 0.001,
    /// 5 epochs, seed 0.
    fn default() -> Self {
        TrainConfig {
            model: ResNetConfig::chapter(1, NUM_CLASSES),
            data: DataSettings::default(),
            optim: OptimSettings::default(),
            run: RunSettings::default(),
        }
    }
}

impl Default for DataSettings {
    /// The chapter's data: Fashion-MNIST (or whatever `auto` finds) resized to 96, nothing else.
    fn default() -> Self {
        DataSettings {
            format: auto_format(),
            channels: None,
            transforms: chapter_transforms(),
            resize: Some(CHAPTER_RESIZE),
            normalize: None,
            channel_norm: None,
            augment: false,
            random_erasing: 0.0,
            limit_train: None,
            limit_test: None,
            val_split: None,
            skip_bad: false,
            classes: Vec::new(),
        }
    }
}

impl Default for OptimSettings {
    /// The chapter's optimizer: Adam at a constant 0.001.
    fn default() -> Self {
        OptimSettings {
            optimizer: OptimizerKind::Adam,
            lr: 0.001,
            momentum: None,
            nesterov: false,
            weight_decay: None,
            wd_skip_norm: false,
            schedule: Schedule::Constant,
            warmup_epochs: 0.0,
            label_smoothing: 0.0,
            ema: None,
        }
    }
}

impl Default for RunSettings {
    /// The chapter's run: 5 epochs of batch 256, seed 0, from a fresh initialization.
    fn default() -> Self {
        RunSettings {
            recipe: Recipe::Chapter,
            epochs: 5,
            batch_size: 256,
            seed: 0,
            init: None,
            reset_head: false,
            freeze: 0,
            sync_bn: false,
            tta: false,
            target_acc: None,
        }
    }
}

fn auto_format() -> Format {
    Format::Auto
}

fn chapter_transforms() -> Preset {
    Preset::Chapter
}

/// A configuration as stored: today's (`model` given), or the flat layout of earlier versions, whose network
/// was the named `arch` adjusted by `widths`, `layers` (once `residuals`), `stem` and `zero_init_residual`,
/// for `in_channels` and the classes of `classes`.
#[derive(Deserialize)]
struct StoredConfig {
    model: Option<ResNetConfig>,
    #[serde(flatten)]
    data: DataSettings,
    #[serde(flatten)]
    optim: OptimSettings,
    #[serde(flatten)]
    run: RunSettings,
    #[serde(flatten)]
    flat: FlatArch,
}

/// The network's fields of the flat layout.
#[derive(Deserialize)]
struct FlatArch {
    arch: Option<ArchName>,
    widths: Option<Vec<usize>>,
    layers: Option<Vec<usize>>,
    residuals: Option<Vec<usize>>,
    stem: Option<Stem>,
    #[serde(default)]
    zero_init_residual: bool,
    in_channels: Option<usize>,
}

impl FlatArch {
    /// The network the flat layout described, for `num_classes`.
    fn model(self, num_classes: usize) -> std::result::Result<ResNetConfig, String> {
        let widths = self.widths.ok_or("missing field `widths`")?;
        let layers = self
            .layers
            .or(self.residuals)
            .ok_or("missing field `layers`")?;
        let named = ResNetConfig::named(
            self.arch.unwrap_or(ArchName::Chapter),
            self.in_channels.unwrap_or(1),
            num_classes,
        );
        Ok(ResNetConfig {
            widths,
            layers,
            stem: self.stem.unwrap_or(Stem::Imagenet),
            zero_init_residual: self.zero_init_residual,
            ..named
        })
    }
}

impl TryFrom<StoredConfig> for TrainConfig {
    type Error = String;
    fn try_from(s: StoredConfig) -> std::result::Result<TrainConfig, String> {
        let model = match s.model {
            Some(model) => model,
            None => s.flat.model(class_count(&s.data.classes))?,
        };
        Ok(TrainConfig {
            model,
            data: s.data,
            optim: s.optim,
            run: s.run,
        })
    }
}

/// The classes a run of these class names has: Fashion-MNIST's for none (earlier versions stored none).
fn class_count(names: &[String]) -> usize {
    match names.len() {
        0 => NUM_CLASSES,
        n => n,
    }
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

impl DataSettings {
    /// The side the images are trained at.
    pub fn input_size(&self) -> usize {
        self.resize.unwrap_or(NATIVE_SIZE)
    }
}

impl TrainConfig {
    /// Number of classes: of the network, the data's the run started on.
    pub fn num_classes(&self) -> usize {
        self.model.num_classes
    }
    /// Class names in label order (Fashion-MNIST's for runs that did not store them).
    pub fn class_names(&self) -> Vec<String> {
        if self.data.classes.is_empty() {
            CLASS_NAMES.iter().map(|s| s.to_string()).collect()
        } else {
            self.data.classes.clone()
        }
    }
    /// How the data is opened.
    pub fn data_options(&self, verify: bool, cache_mb: usize) -> Result<DataOptions> {
        Ok(DataOptions {
            format: self.data.format,
            channels: self.data.channels,
            cache_mb,
            skip_bad: self.data.skip_bad,
            val_split: self.data.val_split,
            seed: self.run.seed,
            verify,
            threads: 2,
            test_only: false,
        })
    }
    /// The training and evaluation pipelines of this run's preset for `train`, the training one ending in
    /// `RandomErasing` when the run asks for it.
    pub fn pipelines(&self, train: &dyn ImageDataset) -> Result<(Pipeline, Pipeline)> {
        let d = &self.data;
        let normalize = match (&d.channel_norm, d.normalize) {
            (Some((m, s)), _) => NormalizeSpec::Given(m.clone(), s.clone()),
            (None, Some((m, s))) => NormalizeSpec::Given(vec![m], vec![s]),
            (None, None) => NormalizeSpec::None,
        };
        let (t, e) = pipelines(d.transforms, d.resize, d.augment, &normalize, train)?;
        let t = match d.random_erasing {
            p if p > 0.0 => t.with_erasing(RandomErasing::new(p)?),
            _ => t,
        };
        Ok((t, e))
    }
    /// Fits a fresh run to the data it trains on: the network takes the data's channels and classes, and
    /// `--normalize` on data other than one-channel IDX files becomes each channel's mean and std over the
    /// training images (computed here, once).
    pub fn fit_to(&mut self, data: &Data) -> Result<()> {
        self.model.in_channels = data.train.channels();
        self.data.classes = data.train.classes().to_vec();
        self.model.num_classes = class_count(&self.data.classes);
        let channels = self.model.in_channels;
        if let Some((m, _)) = self
            .data
            .channel_norm
            .as_ref()
            .filter(|(m, _)| m.len() != 1)
        {
            if m.len() != channels {
                bail!(
                    "--mean / --std: {} values, but the images have {channels} channels",
                    m.len()
                );
            }
        }
        let fashion_like = data.format == Format::Idx && channels == 1;
        if self.data.normalize.is_some() && !fashion_like {
            self.data.normalize = None;
            self.data.channel_norm = Some(channel_mean_std(&*data.train)?);
        }
        self.validate()
    }
    /// Checks every value before any work starts.
    pub fn validate(&self) -> Result<()> {
        let (d, o, r) = (&self.data, &self.optim, &self.run);
        if r.epochs == 0 {
            bail!("--epochs must be at least 1");
        }
        if r.batch_size < 2 {
            bail!("--batch-size must be at least 2 (batch norm needs more than one value per channel)");
        }
        if !(o.lr.is_finite() && o.lr > 0.0) {
            bail!("--lr must be a positive number, got {}", o.lr);
        }
        if let Some(r) = d.resize {
            check_resize(r)?;
        }
        if r.batch_size > MAX_BATCH {
            bail!(
                "--batch-size must be at most {MAX_BATCH}, got {}",
                r.batch_size
            );
        }
        let side = d.input_size();
        if r.batch_size * side * side > MAX_BATCH_VALUES {
            bail!(
                "--batch-size {} at {side}×{side} is more than {MAX_BATCH_VALUES} input values per batch",
                r.batch_size
            );
        }
        self.model.check()?;
        if d.limit_train == Some(0) || d.limit_test == Some(0) {
            bail!("--limit-train / --limit-test must be at least 1");
        }
        if let Some(c) = d.channels.filter(|c| *c != 1 && *c != 3) {
            bail!("--channels must be 1 or 3, got {c}");
        }
        if let Some((m, s)) = &d.channel_norm {
            check_normalize_values(m, s).context("--mean / --std")?;
        }
        let stages = self.model.layers.len();
        if r.freeze > 1 + stages {
            bail!("--freeze-until: the network has {stages} stages, so at most stage {stages}");
        }
        if !(0.0..1.0).contains(&o.label_smoothing) {
            bail!(
                "--label-smoothing must be at least 0 and below 1, got {}",
                o.label_smoothing
            );
        }
        if !(0.0..=1.0).contains(&d.random_erasing) {
            bail!(
                "--random-erasing is a probability between 0 and 1, got {}",
                d.random_erasing
            );
        }
        if let Some(e) = o.ema.filter(|e| !(0.0..1.0).contains(e)) {
            bail!("--ema: the decay must be at least 0 and below 1 (e.g. 0.999), got {e}");
        }
        if !(o.warmup_epochs.is_finite() && o.warmup_epochs >= 0.0) {
            bail!(
                "--warmup-epochs must be a number of epochs >= 0, got {}",
                o.warmup_epochs
            );
        }
        if let Some(a) = r.target_acc.filter(|a| !(*a > 0.0 && *a <= 1.0)) {
            bail!("--target-acc is an accuracy above 0 and at most 1, got {a}");
        }
        if let Some(f) = d.val_split.filter(|f| !(*f > 0.0 && *f < 1.0)) {
            bail!("--val-split must be a fraction between 0 and 1 (exclusive), got {f}");
        }
        Ok(())
    }
    pub(super) fn optimizer_options(&self) -> OptimizerOptions {
        OptimizerOptions {
            weight_decay: self.optim.weight_decay,
            momentum: self.optim.momentum,
            nesterov: self.optim.nesterov,
            ..Default::default()
        }
    }
    /// The settings a recipe decides, as the `resnet train` flags that give them: what `--recipe` resolved to,
    /// printed at the start of a run.
    pub fn settings_flags(&self) -> String {
        super::Settings::of(self).to_string()
    }
    /// Steps of learning-rate warm-up for epochs of `steps_per_epoch` batches.
    pub fn warmup_steps(&self, steps_per_epoch: usize) -> usize {
        (self.optim.warmup_epochs * steps_per_epoch as f64).round() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flat layout of the earliest versions: no arch, stem or class names, `residuals` for `layers`.
    const EARLY_FLAT: &str = r#"{"epochs":3,"batch_size":64,"lr":0.01,"optimizer":"adam","momentum":null,
        "nesterov":false,"weight_decay":null,"schedule":"constant","resize":null,"normalize":[0.286,0.353],
        "augment":false,"seed":7,"limit_train":null,"limit_test":null,"widths":[16,32,64,128],
        "residuals":[2,2,2,2]}"#;

    #[test]
    fn the_earliest_flat_layout_loads_as_the_chapters_network() {
        let c: TrainConfig = serde_json::from_str(EARLY_FLAT).unwrap();
        let model = ResNetConfig {
            widths: vec![16, 32, 64, 128],
            ..ResNetConfig::chapter(1, NUM_CLASSES)
        };
        assert_eq!(c.model, model);
        assert_eq!((c.run.epochs, c.run.seed, c.optim.lr), (3, 7, 0.01));
        assert_eq!(c.data.normalize, Some((0.286, 0.353)));
        assert_eq!(
            (c.data.format, c.data.transforms),
            (Format::Auto, Preset::Chapter)
        );
        assert_eq!(c.run.recipe, Recipe::Chapter);
        c.validate().unwrap();
    }

    #[test]
    fn a_flat_layout_without_its_network_is_refused() {
        let no_widths = EARLY_FLAT.replace(r#""widths":[16,32,64,128],"#, "");
        let e = serde_json::from_str::<TrainConfig>(&no_widths).unwrap_err();
        assert!(e.to_string().contains("missing field `widths`"), "{e}");
    }

    #[test]
    fn the_stored_json_round_trips() {
        let mut c = TrainConfig::default();
        c.model.stem = Stem::Small;
        c.data.classes = vec!["a".into(), "b".into()];
        c.model.num_classes = 2;
        c.data.channel_norm = Some((vec![0.5], vec![0.25]));
        c.optim.schedule = Schedule::onecycle_default();
        c.run.init = Some("start.pth".into());
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<TrainConfig>(&json).unwrap(), c);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["recipe"], "chapter", "the settings stay at the top level");
        assert_eq!(v["model"]["stem"], "small", "the network is nested");
    }
}
