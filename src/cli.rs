//! The command line's arguments, parsed by clap and checked without touching a file: `resnet` runs what
//! [`Cli::check`] accepts, and the CLI fuzz target feeds arbitrary argument lists through the same two steps.

use crate::commands::{BenchArgs, EvalArgs, PredictArgs, ServeArgs, SummaryArgs};
use crate::data::{Format, Preset};
use crate::nn::{ArchName, ResNetConfig, Stem};
use crate::train::{Recipe, Settings, TrainConfig};
use crate::{bail, Result};
use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Most worker threads `--threads` accepts.
pub const MAX_THREADS: usize = 1024;

/// `resnet [--threads N] COMMAND ...`.
#[derive(Parser)]
#[command(
    name = "resnet",
    version,
    about = "The d2l chapter's ResNet-18 in Rust: train on Fashion-MNIST, evaluate, predict, inspect, benchmark"
)]
pub struct Cli {
    /// Worker threads (default: the number of physical cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// The subcommand and its arguments.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Command {
    /// Train on Fashion-MNIST (the defaults reproduce the chapter: resize 96, batch 256, Adam lr 0.001, 5 epochs),
    /// or on your own images: an image folder, CIFAR-10/100 or IDX files (--data).
    Train(Box<TrainArgs>),
    /// Evaluate saved weights on a test (or validation) set: accuracy, per-class accuracy, confusion matrix.
    Eval(EvalArgs),
    /// Classify PNG/JPEG images: the top classes with probabilities.
    ///
    /// For a one-channel model (the chapter's), images of any size are converted to grayscale and resized as in
    /// training; Fashion-MNIST items are light objects on a dark (black) background: a photo of a dark item on
    /// white should be inverted first. For a three-channel model (torchvision's), images are read as RGB with
    /// torchvision's ImageNet evaluation transform (resize 256, center crop 224, ImageNet mean and std).
    Predict(PredictArgs),
    /// Print a network's layer-by-layer shape walk and its parameter count (the chapter's by default).
    Summary(SummaryArgs),
    /// Benchmark the chapter's network: training and inference images/s, batch-1 latency, peak memory.
    Bench(BenchArgs),
    /// Serve a model over HTTP: POST /v1/predict (PNG/JPEG or multipart), GET /v1/model, /healthz, /metrics,
    /// and a page at / to try it; concurrent requests are batched into one forward pass.
    Serve(ServeArgs),
}

/// `resnet train` arguments.
#[derive(Args)]
pub struct TrainArgs {
    /// A named bundle of settings: chapter (the chapter's run), fast or best (see the README); each flag given
    /// overrides the recipe's value. The settings in effect are printed at the start and stored in the run.
    #[arg(long, default_value = "chapter")]
    pub recipe: Recipe,
    /// The settings a recipe decides.
    #[command(flatten)]
    pub settings: Settings,
    /// Stop after the first evaluation at or above this accuracy (e.g. 0.93) and report the time to reach it.
    #[arg(long, value_name = "ACC", allow_negative_numbers = true)]
    pub target_acc: Option<f64>,
    /// Normalize after ToTensor with these per-channel means (one value, or one per channel), e.g.
    /// 0.485,0.456,0.406; needs --std.
    #[arg(
        long,
        value_delimiter = ',',
        requires = "std",
        allow_negative_numbers = true
    )]
    pub mean: Option<Vec<f32>>,
    /// The per-channel standard deviations that go with --mean, e.g. 0.229,0.224,0.225.
    #[arg(long, value_delimiter = ',', requires = "mean")]
    pub std: Option<Vec<f32>>,
    /// Dataset format: auto (from what --data holds), idx, cifar10, cifar100, cifar100-coarse, folder.
    #[arg(long, default_value = "auto")]
    pub format: Format,
    /// Convert images to 1 (PIL's convert('L')) or 3 (convert('RGB')) channels [default: the data's own].
    #[arg(long)]
    pub channels: Option<usize>,
    /// Transform preset: chapter (resize, optional augment), cifar (pad 4 + crop 32 + flip), imagenet
    /// (random-resized-crop 224 + flip; eval resize 256 + center crop 224).
    #[arg(long, default_value = "chapter")]
    pub transforms: Preset,
    /// Hold out this fraction of each class of the training images for validation (stratified, drawn with
    /// --seed) and evaluate on it instead of the test images, to choose settings honestly [image folders without
    /// val/ or test/: default 0.1].
    #[arg(long)]
    pub val_split: Option<f64>,
    /// Image folders: keep decoded images in memory up to this many MiB (beyond it they are decoded every epoch).
    #[arg(long, default_value_t = crate::data::folder::DEFAULT_CACHE_MB)]
    pub cache_mb: usize,
    /// Image folders: leave out files that cannot be decoded (and say how many) instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// Fine-tune: start from these weights (ours, or PyTorch's safetensors or .pth) instead of a fresh
    /// initialization; the architecture flags must describe the same network.
    #[arg(long, value_name = "WEIGHTS")]
    pub init: Option<PathBuf>,
    /// With --init: start the classifier afresh (for a new class count) instead of loading it.
    #[arg(long, requires = "init")]
    pub reset_head: bool,
    /// Train only the classifier: the stem and every stage stay fixed (their batch norms in eval mode, no
    /// gradients computed for them).
    #[arg(long, conflicts_with = "freeze_until")]
    pub freeze_backbone: bool,
    /// Hold the stem and stages 1..=STAGE fixed (0: the stem only) and train what follows.
    #[arg(long, value_name = "STAGE")]
    pub freeze_until: Option<usize>,
    /// Seed of the initialization, the shuffling and the augmentation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run directory for checkpoints, metrics and the training curve (default: runs/run-<unix time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Dataset directory (default: $RESNET_DATA, the bundled data/fashion-mnist, /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Train on the first N training images only.
    #[arg(long)]
    pub limit_train: Option<usize>,
    /// Evaluate on the first N test images only.
    #[arg(long)]
    pub limit_test: Option<usize>,
    /// Continue the run in RUN_DIR from its last checkpoint (its stored settings are used; --epochs may extend it).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// The network: the chapter's ResNet-18, or torchvision's resnet18/34/50/101/152.
    #[arg(long, value_enum, default_value = "chapter")]
    pub arch: ArchName,
    /// Start every residual block as the identity (its last batch-norm weight zero), as torchvision's option.
    #[arg(long)]
    pub zero_init_residual: bool,
    /// No progress output (the per-epoch lines are still printed).
    #[arg(long)]
    pub quiet: bool,
    /// Data-parallel runs (`mpirun -np N resnet train`, feature `mpi`): batch norm uses the statistics of the
    /// whole global batch, summed over the ranks in forward and backward (PyTorch's SyncBatchNorm), instead of
    /// each rank's own share's.
    #[arg(long)]
    pub sync_bn: bool,
    /// Data-parallel runs: sum gradients in buckets of about this many MiB, each started as soon as the backward
    /// pass has produced it, instead of one allreduce of all gradients after the backward pass (not with
    /// --sync-bn).
    #[arg(long, value_name = "MIB", conflicts_with = "sync_bn")]
    pub bucket_mb: Option<f64>,
}

/// `--arch`: the named models as the command line spells and describes them (the network itself knows nothing
/// of the command line).
impl ValueEnum for ArchName {
    fn value_variants<'a>() -> &'a [Self] {
        &ArchName::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self {
            ArchName::Chapter => {
                "The chapter's ResNet-18 (conv biases, no BN on the shortcut, `nn.Sequential` names)"
            }
            ArchName::Resnet18 => "torchvision's `resnet18`: BasicBlock, layers 2, 2, 2, 2",
            ArchName::Resnet34 => "torchvision's `resnet34`: BasicBlock, layers 3, 4, 6, 3",
            ArchName::Resnet50 => "torchvision's `resnet50`: Bottleneck, layers 3, 4, 6, 3",
            ArchName::Resnet101 => "torchvision's `resnet101`: Bottleneck, layers 3, 4, 23, 3",
            ArchName::Resnet152 => "torchvision's `resnet152`: Bottleneck, layers 3, 8, 36, 3",
        };
        Some(PossibleValue::new(self.as_str()).help(help))
    }
}

/// `--stem`, as [`ArchName`]'s `--arch`.
impl ValueEnum for Stem {
    fn value_variants<'a>() -> &'a [Self] {
        &[Stem::Imagenet, Stem::Small]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Stem::Imagenet => PossibleValue::new("imagenet").help(
                "7×7 stride-2 conv (padding 3), BN, ReLU, 3×3 stride-2 max pool (padding 1): the chapter's and ImageNet's",
            ),
            Stem::Small => PossibleValue::new("small").help(
                "3×3 stride-1 conv (padding 1), BN, ReLU, no pool: for 28×28 and 32×32 inputs (as CIFAR ResNets do)",
            ),
        })
    }
}

impl TrainArgs {
    /// The run's configuration (for a fresh run; `--resume` reads it from the checkpoint), validated.
    pub fn config(&self) -> Result<TrainConfig> {
        let s = self.settings.clone().or(self.recipe.settings());
        let mut named = ResNetConfig::named(self.arch, 1, crate::data::NUM_CLASSES);
        if let Some(w) = &s.widths {
            if self.arch == ArchName::Chapter {
                named.layers = vec![2; w.len()];
            } else if w.len() != named.layers.len() {
                bail!(
                    "--widths: {} has {} stages, so it takes {} widths, got {}",
                    self.arch.as_str(),
                    named.layers.len(),
                    named.layers.len(),
                    w.len()
                );
            }
            named.widths = w.clone();
        }
        let chapter = TrainConfig::default();
        let config = TrainConfig {
            epochs: s.epochs.unwrap_or(chapter.epochs),
            batch_size: s.batch_size.unwrap_or(chapter.batch_size),
            lr: s.lr.unwrap_or(chapter.lr),
            optimizer: s.optimizer.unwrap_or(chapter.optimizer),
            momentum: s.momentum,
            nesterov: s.nesterov.unwrap_or(false),
            weight_decay: s.weight_decay,
            schedule: s.schedule.unwrap_or(chapter.schedule),
            resize: match self.transforms {
                Preset::Chapter => Some(s.resize.unwrap_or(96)).filter(|&r| r != 28),
                _ => s.resize,
            },
            normalize: s.normalize.unwrap_or(false).then_some((0.2860, 0.3530)),
            format: self.format,
            channels: self.channels,
            transforms: self.transforms,
            val_split: self.val_split,
            skip_bad: self.skip_bad,
            in_channels: self.channels.unwrap_or(1),
            classes: Vec::new(),
            channel_norm: self.mean.clone().zip(self.std.clone()),
            init: self.init.clone(),
            reset_head: self.reset_head,
            freeze: match (self.freeze_backbone, self.freeze_until) {
                (true, _) => 1 + named.layers.len(),
                (false, Some(k)) => k.saturating_add(1),
                (false, None) => 0,
            },
            augment: s.augment.unwrap_or(false),
            seed: self.seed,
            limit_train: self.limit_train,
            limit_test: self.limit_test,
            arch: self.arch,
            widths: named.widths.clone(),
            layers: named.layers.clone(),
            stem: s.stem.unwrap_or(chapter.stem),
            zero_init_residual: self.zero_init_residual,
            sync_bn: self.sync_bn,
            recipe: self.recipe,
            label_smoothing: s.label_smoothing.unwrap_or(0.0),
            random_erasing: s.random_erasing.unwrap_or(0.0),
            ema: s.ema,
            tta: s.tta.unwrap_or(false),
            wd_skip_norm: s.wd_skip_norm.unwrap_or(false),
            warmup_epochs: s.warmup_epochs.unwrap_or(0.0),
            target_acc: self.target_acc,
        };
        config.validate()?;
        Ok(config)
    }
}

impl Cli {
    /// Checks every value the arguments carry (ranges, shapes, names) before any file is read or written.
    pub fn check(&self) -> Result<()> {
        match self.threads {
            Some(0) => bail!("--threads must be at least 1"),
            Some(n) if n > MAX_THREADS => bail!("--threads must be at most {MAX_THREADS}, got {n}"),
            _ => {}
        }
        match &self.command {
            Command::Train(a) => {
                if let Some(mb) = a.bucket_mb.filter(|mb| !(mb.is_finite() && *mb > 0.0)) {
                    bail!("--bucket-mb must be a positive number of MiB, got {mb}");
                }
                if a.resume.is_none() {
                    a.config()?;
                } else if a.settings.epochs == Some(0) {
                    bail!("--epochs must be at least 1");
                }
                Ok(())
            }
            Command::Eval(a) => a.check(),
            Command::Predict(a) => a.check(),
            Command::Summary(a) => a.check(),
            Command::Bench(b) => b.check().map(|_| ()),
            Command::Serve(a) => a.options().map(|_| ()),
        }
    }
}
