//! The training loop: epochs over a seeded loader, the chapter's per-epoch line, evaluation with BN running
//! statistics, metrics, a training-curve plot, and atomic checkpoints that a run resumes from exactly.
//!
//! A run directory holds:
//! - `model.safetensors`: the model alone, PyTorch's keys and layouts (loads with `load_state_dict(strict=True)`);
//! - `checkpoint.safetensors`: model + optimizer state + progress, the one file `--resume` reads (written
//!   atomically, so a crash leaves the previous epoch's checkpoint);
//! - `metrics.jsonl` (one JSON object per epoch) and `curve.svg` (loss, train and test accuracy per epoch).

use crate::checkpoint::{self, META_ARCH, META_CLASSES, META_EVAL_TRANSFORM, META_INPUT_SIZE};
use crate::data::transforms::check_resize;
use crate::data::{
    open_data, pipelines, DataOptions, Format, ImageDataset, Loader, NormalizeSpec, Pipeline,
    Preset, Subset, CLASS_NAMES, NUM_CLASSES,
};
use crate::nn::{ArchName, ResNet, ResNetConfig, StateDict, StateTensor, Stem};
use crate::optim::{Optimizer, OptimizerKind, OptimizerOptions, OptimizerState, Schedule};
use crate::{bail, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

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
    pub optimizer: String,
    /// SGD momentum (`None`: the optimizer's default, 0).
    pub momentum: Option<f64>,
    /// SGD Nesterov momentum (needs a momentum > 0).
    pub nesterov: bool,
    /// Weight decay (`None`: the optimizer's default; L2 for `adam`/`sgd`, decoupled for `adamw`).
    pub weight_decay: Option<f64>,
    /// `constant`, `step`, `cosine` or `onecycle`.
    pub schedule: String,
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
    #[serde(default = "auto_format")]
    pub format: String,
    /// Channels the images are converted to, 1 or 3 (`None`: the data's own).
    #[serde(default)]
    pub channels: Option<usize>,
    /// Transform preset: `chapter`, `cifar` or `imagenet`.
    #[serde(default = "chapter_transforms")]
    pub transforms: String,
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
}

fn auto_format() -> String {
    "auto".into()
}

fn chapter_transforms() -> String {
    "chapter".into()
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
            optimizer: "adam".into(),
            momentum: None,
            nesterov: false,
            weight_decay: None,
            schedule: "constant".into(),
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
            format: self.format.parse()?,
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
    /// The training and evaluation pipelines of this run's preset for `train`.
    pub fn pipelines(&self, train: &dyn ImageDataset) -> Result<(Pipeline, Pipeline)> {
        let normalize = match (&self.channel_norm, self.normalize) {
            (Some((m, s)), _) => NormalizeSpec::Given(m.clone(), s.clone()),
            (None, Some((m, s))) => NormalizeSpec::Given(vec![m], vec![s]),
            (None, None) => NormalizeSpec::None,
        };
        pipelines(
            self.transforms.parse()?,
            self.resize,
            self.augment,
            &normalize,
            train,
        )
    }
    /// Parses the `optimizer` field.
    pub fn optimizer_kind(&self) -> Result<OptimizerKind> {
        self.optimizer.parse()
    }
    /// Parses the `schedule` field.
    pub fn schedule(&self) -> Result<Schedule> {
        self.schedule.parse()
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
        self.optimizer_kind()?;
        self.schedule()?;
        self.format.parse::<Format>()?;
        self.transforms.parse::<Preset>()?;
        if let Some(c) = self.channels.filter(|c| *c != 1 && *c != 3) {
            bail!("--channels must be 1 or 3, got {c}");
        }
        if self.freeze > 1 + self.layers.len() {
            bail!(
                "--freeze-until: the network has {} stages, so at most stage {}",
                self.layers.len(),
                self.layers.len()
            );
        }
        if let Some(f) = self.val_split.filter(|f| !(*f > 0.0 && *f < 1.0)) {
            bail!("--val-split must be a fraction between 0 and 1 (exclusive), got {f}");
        }
        Ok(())
    }
    fn optimizer_options(&self) -> OptimizerOptions {
        OptimizerOptions {
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            nesterov: self.nesterov,
            ..Default::default()
        }
    }
}

/// One epoch's results, as printed and logged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean cross-entropy over the epoch's batches.
    pub loss: f64,
    /// Fraction of training images classified correctly during the epoch (training mode, as the weights moved).
    pub train_acc: f64,
    /// Fraction of test images classified correctly after the epoch (eval mode, BN running statistics).
    pub test_acc: f64,
    /// Seconds for the epoch's training and its test evaluation.
    pub time_sec: f64,
    /// Training throughput: training images over the training time (evaluation excluded).
    pub images_per_sec: f64,
    /// Learning rate of the epoch's last step (after the schedule).
    pub lr: f64,
}

impl EpochMetrics {
    /// The chapter's line: `epoch 1, loss 0.3812, train acc 0.853, test acc 0.885, time 310.0 sec`.
    pub fn line(&self) -> String {
        format!(
            "epoch {}, loss {:.4}, train acc {:.3}, test acc {:.3}, time {:.1} sec",
            self.epoch, self.loss, self.train_acc, self.test_acc, self.time_sec
        )
    }
}

/// Progress stored in the checkpoint: finished epochs and their metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Epochs finished and checkpointed; a resumed run starts at this epoch (0-based).
    pub epochs_done: usize,
    /// Metrics of each finished epoch, in order.
    pub history: Vec<EpochMetrics>,
}

const META_CONFIG: &str = "resnet.train_config";
const META_PROGRESS: &str = "resnet.progress";
const META_OPTIMIZER: &str = "resnet.optimizer";
const OPT_PREFIX: &str = "optimizer.";

/// The training and test (or validation) data, opened (and sliced by the limits).
pub struct Data {
    /// The training images (shared with the loader threads).
    pub train: Arc<dyn ImageDataset>,
    /// The test or validation images.
    pub test: Arc<dyn ImageDataset>,
    /// What the user should know about the data: where validation images came from, files skipped, caching.
    pub notes: Vec<String>,
    /// The format found.
    pub format: Format,
}

impl Data {
    /// Opens both splits from `dir` as the config says (IDX checksums verified when `verify`; folder images
    /// cached up to `cache_mb`), applying the config's limits.
    pub fn load(dir: &Path, verify: bool, config: &TrainConfig, cache_mb: usize) -> Result<Data> {
        let splits = open_data(dir, &config.data_options(verify, cache_mb)?)?;
        let limit = |ds: Arc<dyn ImageDataset>, n: Option<usize>| -> Arc<dyn ImageDataset> {
            match n {
                Some(n) => Arc::new(Subset::first(ds, n)),
                None => ds,
            }
        };
        Ok(Data {
            train: limit(splits.train, config.limit_train),
            test: limit(splits.test, config.limit_test),
            notes: splits.notes,
            format: splits.format,
        })
    }

    /// Checks that the data fits a run's configuration: its channels and its classes.
    pub fn check_fits(&self, config: &TrainConfig) -> Result<()> {
        let c = self.train.channels();
        if c != config.in_channels {
            bail!(
                "the data has {c} channels, the run was started on {} (pass the same --channels)",
                config.in_channels
            );
        }
        let classes = self.train.classes().len();
        if classes != config.num_classes() {
            bail!(
                "the data has {classes} classes, the run was started on {}",
                config.num_classes()
            );
        }
        Ok(())
    }
}

/// How a run reports progress: an interactive bar on a terminal, periodic plain lines otherwise, or nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// A progress bar when stderr is a terminal, periodic plain lines otherwise.
    Auto,
    /// No progress output (the per-epoch line is still the caller's to print).
    Quiet,
}

/// Accuracy and confusion matrix of `net` (eval mode, BN running statistics) on a dataset.
pub struct Evaluation {
    /// Fraction of images whose arg-max prediction equals the label (0 on an empty dataset).
    pub accuracy: f64,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    /// Number of images evaluated.
    pub count: usize,
}

impl Evaluation {
    /// Accuracy of each true class (NaN-free: classes with no examples get 0).
    pub fn per_class(&self) -> Vec<f64> {
        self.confusion
            .iter()
            .enumerate()
            .map(|(c, row)| {
                let n: usize = row.iter().sum();
                if n == 0 {
                    0.0
                } else {
                    row[c] as f64 / n as f64
                }
            })
            .collect()
    }
}

/// Evaluates `net` in eval mode on `loader`'s data (in order, epoch 0). Restores the previous mode.
pub fn evaluate(net: &mut ResNet, loader: &Loader) -> Result<Evaluation> {
    let was_train = net.is_train();
    net.set_train(false);
    let k = net.config.num_classes;
    let mut confusion = vec![vec![0usize; k]; k];
    let mut correct = 0usize;
    let mut count = 0usize;
    for batch in loader.epoch(0) {
        let batch = batch?;
        let logits = net.forward(&batch.images, batch.shape)?;
        for (row, &label) in logits.chunks_exact(k).zip(&batch.labels) {
            let pred = argmax(row);
            confusion[label][pred] += 1;
            correct += (pred == label) as usize;
            count += 1;
        }
    }
    net.set_train(was_train);
    Ok(Evaluation {
        accuracy: correct as f64 / count.max(1) as f64,
        confusion,
        count,
    })
}

/// Index of the largest value (first one on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// A training run in a run directory: the model, its optimizer, and what has been done so far.
pub struct Run {
    /// The run directory (checkpoint, model, metrics and curve live here).
    pub dir: PathBuf,
    /// The run's configuration, as stored in its checkpoint.
    pub config: TrainConfig,
    /// The model being trained.
    pub net: ResNet,
    /// The optimizer, with its per-parameter state.
    pub optimizer: Box<dyn Optimizer>,
    /// Epochs done so far and their metrics.
    pub progress: Progress,
    /// The evaluation transforms of the data being trained on (known once [`Run::train`] starts), stored in
    /// `model.safetensors` so that `predict` and `eval` preprocess as training did.
    eval_pipeline: Option<Pipeline>,
    /// Held for the run's lifetime: a second `resnet train` on the same directory is refused.
    _lock: RunLock,
}

/// What a training checkpoint holds, parsed and checked: the configuration, the model, the optimizer with its
/// state, and the progress.
pub struct Restored {
    /// The run's configuration (with `epochs` replaced when extending).
    pub config: TrainConfig,
    /// The model with the checkpoint's weights and running statistics.
    pub net: ResNet,
    /// The optimizer with its per-parameter state and step count.
    pub optimizer: Box<dyn Optimizer>,
    /// Epochs done and their metrics.
    pub progress: Progress,
}

impl Restored {
    /// Parses the bytes of a `checkpoint.safetensors` (`origin` names it in errors); `epochs` replaces the stored
    /// total. Everything is checked — metadata, configuration, key set, shapes, optimizer state — and a file that
    /// describes a larger network than the values it holds is refused before that network is allocated.
    pub fn from_bytes(bytes: &[u8], origin: &str, epochs: Option<usize>) -> Result<Restored> {
        let (sd, meta) = checkpoint::deserialize(bytes, origin)?;
        let get = |k: &str| {
            meta.get(k).ok_or_else(|| {
                Error::new(format!(
                    "{origin}: no `{k}` metadata: not a resnet training checkpoint"
                ))
            })
        };
        let mut config: TrainConfig = serde_json::from_str(get(META_CONFIG)?)
            .map_err(|e| Error::new(format!("{origin}: bad `{META_CONFIG}`: {e}")))?;
        let progress: Progress = serde_json::from_str(get(META_PROGRESS)?)
            .map_err(|e| Error::new(format!("{origin}: bad `{META_PROGRESS}`: {e}")))?;
        if let Some(e) = epochs {
            config.epochs = e;
        }
        config
            .validate()
            .map_err(|e| Error::new(format!("{origin}: {e}")))?;
        if progress.history.len() != progress.epochs_done {
            bail!(
                "{origin}: bad `{META_PROGRESS}`: {} epochs done but {} epochs of metrics",
                progress.epochs_done,
                progress.history.len()
            );
        }
        let (model_sd, opt_sd): (StateDict, StateDict) = sd
            .into_iter()
            .partition(|(k, _)| !k.starts_with(OPT_PREFIX));
        let mut net = checkpoint::build_for(config.arch(), &model_sd, origin)?;
        net.load_state_dict(&model_sd)
            .map_err(|e| Error::new(format!("{origin}: {e}")))?;
        net.set_frozen(config.freeze)
            .map_err(|e| Error::new(format!("{origin}: {e}")))?;
        let mut optimizer = build_optimizer(&config, &mut net)?;
        let opt_meta: OptimizerMeta = serde_json::from_str(get(META_OPTIMIZER)?)
            .map_err(|e| Error::new(format!("{origin}: bad `{META_OPTIMIZER}`: {e}")))?;
        let tensors = opt_sd
            .into_iter()
            .map(|(k, t)| match t {
                StateTensor::F32 { data, .. } => Ok((k[OPT_PREFIX.len()..].to_string(), data)),
                _ => Err(Error::new(format!(
                    "{origin}: optimizer tensor `{k}` is not F32"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        optimizer
            .load_state(OptimizerState {
                kind: opt_meta.kind,
                step: opt_meta.step,
                tensors,
            })
            .map_err(|e| Error::new(format!("{origin}: {e}")))?;
        Ok(Restored {
            config,
            net,
            optimizer,
            progress,
        })
    }
}

/// An exclusive advisory lock (flock) on a run directory itself, so no lock file is left behind; released when
/// dropped or when the process dies (even by SIGKILL), so a crashed run never leaves its directory locked.
struct RunLock {
    _dir: std::fs::File,
}

impl RunLock {
    fn acquire(dir: &Path) -> Result<RunLock> {
        let handle = std::fs::File::open(dir).map_err(|e| {
            Error::new(format!("{}: cannot open run directory: {e}", dir.display()))
        })?;
        match handle.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "{}: another `resnet train` is using this run directory; wait for it to finish or choose another --out",
                dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                bail!("{}: cannot lock the run directory: {e}", dir.display())
            }
        }
        // Fail now, not after an epoch of training, if checkpoints cannot be written here.
        let probe = dir.join(format!(".write-check.tmp{}", std::process::id()));
        std::fs::File::create(&probe)
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|e| {
                Error::new(format!(
                    "{}: cannot write to the run directory: {e}",
                    dir.display()
                ))
            })?;
        // With the lock held no other run writes here, so temporary files are leftovers of a killed run.
        checkpoint::remove_stale_temporaries(dir);
        Ok(RunLock { _dir: handle })
    }
}

impl Run {
    /// Starts a fresh run in `dir` (created if missing). Refuses a directory that already holds a checkpoint,
    /// so a finished run is never overwritten by accident (use `--resume`).
    pub fn create(dir: &Path, config: TrainConfig) -> Result<Run> {
        config.validate()?;
        // Build everything that can fail on a bad config before touching the file system.
        let mut net = ResNet::new(config.arch(), config.seed)?;
        if let Some(path) = &config.init {
            load_init(&mut net, path, config.reset_head)?;
        }
        net.set_frozen(config.freeze)?;
        let optimizer = build_optimizer(&config, &mut net)?;
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::new(format!(
                "{}: cannot create run directory: {e}",
                dir.display()
            ))
        })?;
        let refuse_existing = || -> Result<()> {
            if dir.join("checkpoint.safetensors").exists() {
                bail!("{}: already holds a training run (checkpoint.safetensors); resume it with --resume {} or choose another --out", dir.display(), dir.display());
            }
            Ok(())
        };
        refuse_existing()?;
        let lock = RunLock::acquire(dir)?;
        // Again under the lock: another run may have written its first checkpoint meanwhile.
        refuse_existing()?;
        Ok(Run {
            dir: dir.to_path_buf(),
            config,
            net,
            optimizer,
            progress: Progress::default(),
            eval_pipeline: None,
            _lock: lock,
        })
    }

    /// Reopens a run from its `checkpoint.safetensors`; `epochs` may extend the run.
    pub fn resume(dir: &Path, epochs: Option<usize>) -> Result<Run> {
        let path = dir.join("checkpoint.safetensors");
        // Refuse a directory without a checkpoint before creating the lock file in it.
        std::fs::metadata(&path)
            .map_err(|e| Error::new(format!("{}: {e} (nothing to resume)", path.display())))?;
        let lock = RunLock::acquire(dir)?;
        let bytes = checkpoint::read_file_limited(&path)?;
        let restored = Restored::from_bytes(&bytes, &path.display().to_string(), epochs)?;
        Ok(Run {
            dir: dir.to_path_buf(),
            config: restored.config,
            net: restored.net,
            optimizer: restored.optimizer,
            progress: restored.progress,
            eval_pipeline: None,
            _lock: lock,
        })
    }

    /// Trains the remaining epochs, printing the chapter's line after each and checkpointing atomically.
    /// `on_epoch` sees each epoch's metrics (after its checkpoint is safely on disk).
    pub fn train(
        &mut self,
        data: &Data,
        mode: ProgressMode,
        mut on_epoch: impl FnMut(&EpochMetrics),
    ) -> Result<()> {
        let cfg = self.config.clone();
        let schedule = cfg.schedule()?;
        data.check_fits(&cfg)?;
        let (train_pipeline, eval_pipeline) = cfg.pipelines(&*data.train)?;
        let train_loader = Loader::with_pipeline(
            data.train.clone(),
            cfg.batch_size,
            true,
            cfg.seed,
            train_pipeline,
        )?;
        let test_loader = Loader::with_pipeline(
            data.test.clone(),
            cfg.batch_size,
            false,
            cfg.seed,
            eval_pipeline.clone(),
        )?;
        self.eval_pipeline = Some(eval_pipeline);
        let steps = train_loader.num_batches();
        for epoch in self.progress.epochs_done..cfg.epochs {
            let kept = match self.progress.epochs_done {
                0 => format!(
                    "no epoch finished, so {} holds no checkpoint",
                    self.dir.display()
                ),
                n => format!(
                    "the checkpoint of epoch {n} in {} is kept",
                    self.dir.display()
                ),
            };
            let start = Instant::now();
            self.net.set_train(true);
            let bar = Bar::new(mode, steps, epoch + 1, cfg.epochs);
            let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
            let mut lr = cfg.lr;
            for (b, batch) in train_loader.epoch(epoch).enumerate() {
                let batch = batch?;
                lr = schedule.lr(cfg.lr, epoch, b, steps, cfg.epochs);
                self.net.forward(&batch.images, batch.shape)?;
                let (loss, ok) = self.net.loss(&batch.labels)?;
                if !loss.is_finite() {
                    bail!("training diverged: loss is {loss} at epoch {}, batch {} of {steps}; lower the learning rate (--lr {}); {kept}", epoch + 1, b + 1, cfg.lr);
                }
                self.net.backward(&batch.images, false);
                // The key is formatted only when a gradient is bad: a healthy step allocates nothing here.
                if let Some(name) = self.net.non_finite_grad() {
                    bail!("training diverged: gradient of `{name}` is not finite at epoch {}, batch {} of {steps}; lower the learning rate (--lr {}); {kept}", epoch + 1, b + 1, cfg.lr);
                }
                self.net.optimizer_step(self.optimizer.as_mut(), lr);
                loss_sum += loss as f64;
                correct += ok;
                seen += batch.labels.len();
                bar.update(
                    b + 1,
                    loss_sum / (b + 1) as f64,
                    correct as f64 / seen as f64,
                    seen,
                    start,
                );
            }
            bar.finish();
            let train_secs = start.elapsed().as_secs_f64();
            let eval = evaluate(&mut self.net, &test_loader)?;
            let metrics = EpochMetrics {
                epoch: epoch + 1,
                loss: loss_sum / steps as f64,
                train_acc: correct as f64 / seen as f64,
                test_acc: eval.accuracy,
                time_sec: start.elapsed().as_secs_f64(),
                images_per_sec: seen as f64 / train_secs,
                lr: lr as f64,
            };
            // A last step can overflow the weights (or BN statistics) without a non-finite loss or gradient:
            // never checkpoint such a model over the last good one.
            let sd = self.net.state_dict();
            let bad = sd.iter().find(|(_, t)| {
                matches!(t, StateTensor::F32 { data, .. } if data.iter().any(|v| !v.is_finite()))
            });
            if let Some((name, _)) = bad {
                bail!("training diverged: `{name}` is not finite after epoch {}, batch {steps} of {steps}; lower the learning rate (--lr {}); {kept}", epoch + 1, cfg.lr);
            }
            drop(sd);
            self.progress.epochs_done = epoch + 1;
            self.progress.history.push(metrics.clone());
            self.save()?;
            on_epoch(&metrics);
        }
        Ok(())
    }

    /// Writes `model.safetensors`, then `checkpoint.safetensors`, `metrics.jsonl` and `curve.svg`, each atomically.
    pub fn save(&self) -> Result<()> {
        let mut meta = BTreeMap::new();
        meta.insert(
            META_INPUT_SIZE.to_string(),
            self.config.resize.unwrap_or(28).to_string(),
        );
        meta.insert(META_CLASSES.to_string(), json(&self.config.class_names()));
        if let Some(p) = &self.eval_pipeline {
            meta.insert(META_EVAL_TRANSFORM.to_string(), json(p));
        }
        checkpoint::save_model(&self.dir.join("model.safetensors"), &self.net, &meta)?;

        let mut sd = self.net.state_dict();
        let state = self.optimizer.state();
        for (k, data) in state.tensors {
            let shape = vec![data.len()];
            sd.push((format!("{OPT_PREFIX}{k}"), StateTensor::F32 { shape, data }));
        }
        meta.insert("format".into(), "pt".into());
        meta.insert(META_ARCH.into(), checkpoint::arch_string(&self.net.config));
        meta.insert(META_CONFIG.into(), json(&self.config));
        meta.insert(META_PROGRESS.into(), json(&self.progress));
        meta.insert(
            META_OPTIMIZER.into(),
            json(&OptimizerMeta {
                kind: state.kind,
                step: state.step,
            }),
        );
        let bytes = checkpoint::serialize(&sd, &meta)?;
        checkpoint::write_atomic(&self.dir.join("checkpoint.safetensors"), &bytes)?;

        let lines: String = self
            .progress
            .history
            .iter()
            .map(|m| json(m) + "\n")
            .collect();
        checkpoint::write_atomic(&self.dir.join("metrics.jsonl"), lines.as_bytes())?;
        checkpoint::write_atomic(
            &self.dir.join("curve.svg"),
            curve_svg(&self.progress.history).as_bytes(),
        )?;
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct OptimizerMeta {
    kind: String,
    step: u64,
}

/// One of the run's records as a single JSON line.
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain records serialize")
}

fn build_optimizer(config: &TrainConfig, net: &mut ResNet) -> Result<Box<dyn Optimizer>> {
    let lens = net.param_lens();
    config
        .optimizer_kind()?
        .build(&config.optimizer_options(), &lens)
}

/// Loads a fine-tuning start into `net`: every tensor of the file at `path`, strictly, except the classifier's
/// when `reset_head` (which then keeps its fresh initialization).
fn load_init(net: &mut ResNet, path: &Path, reset_head: bool) -> Result<()> {
    let origin = format!("--init {}", path.display());
    let bytes = checkpoint::read_file_limited(path)?;
    let (sd, _) = checkpoint::read_weights(&bytes, &origin)?;
    let head = net.config.naming.fc();
    net.load_state_dict_except(&sd, reset_head.then_some(head))
        .map_err(|e| {
            let hint = if !reset_head && e.to_string().contains(&format!("`{head}.")) {
                " (a different class count? --reset-head starts a new classifier)"
            } else {
                ""
            };
            Error::new(format!("{origin}: {e}{hint}"))
        })
}

/// The per-epoch progress display: an indicatif bar on a terminal, a plain line every ~10% otherwise.
struct Bar {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    total: usize,
    epoch: usize,
    epochs: usize,
}

impl Bar {
    fn new(mode: ProgressMode, total: usize, epoch: usize, epochs: usize) -> Bar {
        let interactive = mode == ProgressMode::Auto && std::io::stderr().is_terminal();
        let bar = interactive.then(|| {
            let pb = indicatif::ProgressBar::new(total as u64);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            pb.set_prefix(format!("{epoch}/{epochs}"));
            pb
        });
        Bar {
            bar,
            plain: mode == ProgressMode::Auto && !interactive,
            total,
            epoch,
            epochs,
        }
    }

    fn update(&self, done: usize, loss: f64, acc: f64, seen: usize, start: Instant) {
        let rate = seen as f64 / start.elapsed().as_secs_f64().max(1e-9);
        let msg = format!("loss {loss:.4} acc {acc:.3} {rate:.0} img/s");
        if let Some(pb) = &self.bar {
            pb.set_position(done as u64);
            pb.set_message(msg);
        } else if self.plain {
            let step = (self.total / 10).max(1);
            if done.is_multiple_of(step) || done == self.total {
                eprintln!(
                    "epoch {}/{} batch {done}/{} {msg}",
                    self.epoch, self.epochs, self.total
                );
            }
        }
    }

    fn finish(&self) {
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
    }
}

/// A small self-contained SVG of loss, train accuracy and test accuracy per epoch.
pub fn curve_svg(history: &[EpochMetrics]) -> String {
    let (w, h, pad) = (640.0f64, 400.0f64, 50.0f64);
    let n = history.len().max(1);
    let x = |e: usize| {
        pad + if n == 1 {
            (w - 2.0 * pad) / 2.0
        } else {
            (e - 1) as f64 * (w - 2.0 * pad) / (n - 1) as f64
        }
    };
    let ymax = history.iter().map(|m| m.loss).fold(1.0f64, f64::max);
    let y = |v: f64| h - pad - v / ymax * (h - 2.0 * pad);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n<line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"black\"/>\n",
        b = h - pad,
        r = w - pad
    );
    for i in 0..=4 {
        let v = ymax * i as f64 / 4.0;
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}</text>\n",
            pad - 4.0,
            y(v) + 4.0
        );
    }
    for m in history {
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            x(m.epoch),
            h - pad + 16.0,
            m.epoch
        );
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">epoch</text>\n",
        w / 2.0,
        h - 10.0
    );
    type Series = (&'static str, &'static str, fn(&EpochMetrics) -> f64);
    let series: [Series; 3] = [
        ("train loss", "#1f77b4", |m| m.loss),
        ("train acc", "#ff7f0e", |m| m.train_acc),
        ("test acc", "#2ca02c", |m| m.test_acc),
    ];
    for (i, (name, color, f)) in series.iter().enumerate() {
        let pts: Vec<String> = history
            .iter()
            .map(|m| format!("{:.1},{:.1}", x(m.epoch), y(f(m))))
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            pts.join(" ")
        );
        for m in history {
            s += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>\n",
                x(m.epoch),
                y(f(m))
            );
        }
        let ly = pad + 16.0 * i as f64;
        s += &format!("<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{name}</text>\n", w - pad - 110.0, ly - 4.0, w - pad - 94.0, ly);
    }
    s + "</svg>\n"
}
