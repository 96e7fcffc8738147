//! The command line's arguments, parsed by clap and checked without touching a file: `resnet` runs what
//! [`Cli::check`] accepts, and the CLI fuzz target feeds arbitrary argument lists through the same two steps.

use crate::data::transforms::check_resize;
use crate::data::{Format, Preset, NUM_CLASSES};
use crate::nn::{ArchName, ResNetConfig, Stem};
use crate::train::{DataSettings, OptimSettings, Recipe, RunSettings, Settings, TrainConfig};
use crate::{bail, Error, Result, Shape4};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Largest `summary --input` (N·C·H·W values, 2^22): the command runs the network on it for real.
pub const MAX_INPUT_VALUES: usize = 1 << 22;

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
    Eval {
        /// A model file (ours, or `safetensors.torch.save_file(net.state_dict(), …)` from the chapter's code).
        #[arg(long)]
        weights: PathBuf,
        /// Dataset directory, any format `train --data` reads; the test (or validation) images are evaluated
        /// (default: $RESNET_DATA, the bundled data/fashion-mnist, /usr/share/datasets/fashion-mnist).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Dataset format: auto, idx, cifar10, cifar100, cifar100-coarse, folder.
        #[arg(long, default_value = "auto")]
        format: Format,
        /// Refuse weights of another network than this one (the architecture is read from the file).
        #[arg(long, value_enum)]
        arch: Option<ArchName>,
        /// Evaluate on the validation images a run held out with `train --val-split F --seed S` (the same F and
        /// S; image folders without val/ or test/ always split, with 0.1 by default).
        #[arg(long)]
        val_split: Option<f64>,
        /// The seed of `--val-split`'s draw (the training run's --seed).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Input size (shorter side) to resize to; default: the size stored in the weights (required for PyTorch files).
        #[arg(long)]
        resize: Option<usize>,
        /// Evaluate only the first N test images.
        #[arg(long)]
        limit: Option<usize>,
        /// Images per evaluation batch.
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
        /// Test-time augmentation: classify each image by the mean of the logits of the image and its horizontal
        /// mirror (twice the work).
        #[arg(long)]
        tta: bool,
    },
    /// Classify PNG/JPEG images: the top classes with probabilities.
    ///
    /// For a one-channel model (the chapter's), images of any size are converted to grayscale and resized as in
    /// training; Fashion-MNIST items are light objects on a dark (black) background: a photo of a dark item on
    /// white should be inverted first. For a three-channel model (torchvision's), images are read as RGB with
    /// torchvision's ImageNet evaluation transform (resize 256, center crop 224, ImageNet mean and std).
    Predict {
        /// A model file: ours, safetensors saved from PyTorch, or torchvision's `.pth` state dict.
        #[arg(long)]
        weights: PathBuf,
        /// Image files (PNG or JPEG).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Input size (shorter side) of a one-channel model; default: the size stored in the weights (required
        /// for PyTorch files).
        #[arg(long)]
        resize: Option<usize>,
        /// How many of the most probable classes to print.
        #[arg(long, default_value_t = 3)]
        topk: usize,
        /// Refuse weights of another network than this one (the architecture is read from the file).
        #[arg(long, value_enum)]
        arch: Option<ArchName>,
        /// Print, per image, the logits, the probabilities, the predicted class and the top classes as JSON.
        #[arg(long)]
        json: bool,
        /// Test-time augmentation: the mean of the logits of each image and its horizontal mirror (the JSON's
        /// `logits` are then that mean).
        #[arg(long)]
        tta: bool,
    },
    /// Print a network's layer-by-layer shape walk and its parameter count (the chapter's by default).
    Summary {
        /// The network: the chapter's ResNet-18, or torchvision's resnet18/34/50/101/152.
        #[arg(long, value_enum, default_value = "chapter")]
        arch: ArchName,
        /// Input shape as NxCxHxW; its C is the network's input channels [default: the chapter's 1x1x224x244,
        /// torchvision's 1x3x224x224].
        #[arg(long, allow_hyphen_values = true)]
        input: Option<String>,
        /// Classes of the final layer [default: the chapter's 10, torchvision's 1000].
        #[arg(long)]
        classes: Option<usize>,
        /// The stem: `imagenet` (7×7 stride 2 + max pool) or `small` (3×3 stride 1, no pool).
        #[arg(long, value_enum, default_value = "imagenet")]
        stem: Stem,
        /// Also print each convolution's plan on this CPU for this input (batch = its N): the algorithm of the
        /// forward pass, the weight gradient and the input gradient.
        #[arg(long)]
        plan: bool,
    },
    /// Benchmark the chapter's network: training and inference images/s, batch-1 latency, peak memory.
    Bench(crate::bench::BenchArgs),
    /// Serve a model over HTTP: POST /v1/predict (PNG/JPEG or multipart), GET /v1/model, /healthz, /metrics,
    /// and a page at / to try it; concurrent requests are batched into one forward pass.
    Serve(ServeArgs),
}

/// Most images `serve --max-batch` gathers into one forward pass.
pub const MAX_SERVE_BATCH: usize = 1024;
/// Most images `serve --queue` lets wait.
pub const MAX_SERVE_QUEUE: usize = 1 << 16;

/// `resnet serve` arguments.
#[derive(Args)]
pub struct ServeArgs {
    /// A model file: ours, safetensors saved from PyTorch, or torchvision's `.pth` state dict.
    #[arg(long)]
    pub weights: PathBuf,
    /// Address to listen on (port 0: any free port; the one taken is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Refuse weights of another network than this one.
    #[arg(long, value_enum)]
    pub arch: Option<ArchName>,
    /// Input size (shorter side) of a one-channel model; default: the size stored in the weights.
    #[arg(long)]
    pub resize: Option<usize>,
    /// Most images in one forward pass.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Most input pixels (images × height × width) in one forward pass: 8 images of 224×224 by default
    /// (resnet50's throughput at batch 8 is its throughput at 32, in a third of the memory); the chapter's 96×96
    /// images still go 32 at a time.
    #[arg(long, default_value_t = 8 * 224 * 224)]
    pub max_batch_pixels: usize,
    /// Longest the first image of a batch waits for more, milliseconds.
    #[arg(long, default_value_t = 5)]
    pub max_wait_ms: u64,
    /// Most images waiting for a forward pass; beyond it requests get 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Largest request body, MiB.
    #[arg(long, default_value_t = 16)]
    pub max_body_mb: usize,
    /// Most images in one multipart request.
    #[arg(long, default_value_t = 64)]
    pub max_images: usize,
    /// Longest a request may take, seconds: reading the body (else 408), then waiting for the answer (else 503).
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Classes returned when a request does not say (`?topk=`).
    #[arg(long, default_value_t = 5)]
    pub topk: usize,
    /// Test-time augmentation for every image: the mean of its and its mirror's logits.
    #[arg(long)]
    pub tta: bool,
    /// Run each convolution with the algorithm a batch of one gets, so that an image's answer is bit for bit the
    /// same whatever it is batched with; `--batch-invariant=false` lets large batches pick faster algorithms
    /// (answers then equal to f32 rounding).
    #[arg(long, default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub batch_invariant: bool,
}

impl ServeArgs {
    /// The checked options (no file is read).
    pub fn options(&self) -> Result<crate::serve::ServeOptions> {
        if self.max_batch == 0 || self.max_batch > MAX_SERVE_BATCH {
            bail!(
                "--max-batch must be between 1 and {MAX_SERVE_BATCH}, got {}",
                self.max_batch
            );
        }
        if self.max_batch_pixels == 0 || self.max_batch_pixels > 1 << 26 {
            bail!(
                "--max-batch-pixels must be between 1 and {}, got {}",
                1 << 26,
                self.max_batch_pixels
            );
        }
        if self.queue == 0 || self.queue > MAX_SERVE_QUEUE {
            bail!(
                "--queue must be between 1 and {MAX_SERVE_QUEUE}, got {}",
                self.queue
            );
        }
        if self.max_wait_ms > 10_000 {
            bail!(
                "--max-wait-ms must be at most 10000, got {}",
                self.max_wait_ms
            );
        }
        if self.max_body_mb == 0 || self.max_body_mb > 1024 {
            bail!(
                "--max-body-mb must be between 1 and 1024, got {}",
                self.max_body_mb
            );
        }
        if self.max_images == 0 || self.max_images > MAX_SERVE_BATCH {
            bail!(
                "--max-images must be between 1 and {MAX_SERVE_BATCH}, got {}",
                self.max_images
            );
        }
        if !(self.timeout.is_finite() && self.timeout > 0.0 && self.timeout <= 3600.0) {
            bail!(
                "--timeout must be a number of seconds above 0 and at most 3600, got {}",
                self.timeout
            );
        }
        if self.topk == 0 {
            bail!("--topk must be at least 1");
        }
        self.resize.map_or(Ok(()), check_resize)?;
        Ok(crate::serve::ServeOptions {
            addr: self.addr,
            batch: crate::serve::BatchOptions {
                max_batch: self.max_batch,
                max_batch_pixels: self.max_batch_pixels,
                max_wait: std::time::Duration::from_millis(self.max_wait_ms),
                queue: self.queue,
                tta: self.tta,
            },
            max_body: self.max_body_mb << 20,
            max_images: self.max_images,
            timeout: std::time::Duration::from_secs_f64(self.timeout),
            max_decode_bytes: crate::serve::MAX_DECODE_BYTES,
            max_input_side: crate::serve::MAX_INPUT_SIDE,
            topk: self.topk,
        })
    }
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

/// Most classes `--classes` accepts.
pub const MAX_CLASSES: usize = 1 << 16;

/// `summary --input` when none is given: the chapter's `1x1x224x244`, torchvision's `1x3x224x224`.
pub fn default_summary_input(arch: ArchName) -> &'static str {
    match arch {
        ArchName::Chapter => "1x1x224x244",
        _ => "1x3x224x224",
    }
}

/// `summary --classes` when none is given: the chapter's 10, ImageNet's 1000 for torchvision's models.
pub fn default_classes(arch: ArchName) -> usize {
    match arch {
        ArchName::Chapter => 10,
        _ => 1000,
    }
}

/// Parses `NxCxHxW` (e.g. `1x1x224x244`) into a shape; every dimension positive and the total bounded.
pub fn parse_shape(s: &str) -> Result<Shape4> {
    let parts: Vec<&str> = s.split(['x', 'X', '×']).collect();
    if parts.len() != 4 {
        bail!("--input `{s}`: expected four dimensions NxCxHxW, e.g. 1x1x224x244");
    }
    let mut d = [0usize; 4];
    for (slot, p) in d.iter_mut().zip(&parts) {
        *slot = p
            .trim()
            .parse()
            .map_err(|_| Error::new(format!("--input `{s}`: `{p}` is not a positive integer")))?;
        if *slot == 0 {
            bail!("--input `{s}`: dimensions must be positive");
        }
    }
    match d.iter().try_fold(1usize, |acc, &x| acc.checked_mul(x)) {
        Some(t) if t <= MAX_INPUT_VALUES => Ok(Shape4::new(d[0], d[1], d[2], d[3])),
        _ => bail!("--input `{s}`: more than 2^22 values is beyond what this command runs"),
    }
}

impl TrainArgs {
    /// The run's configuration (for a fresh run; `--resume` reads it from the checkpoint), validated: the
    /// chapter's defaults, then the recipe's settings, then the flags given.
    pub fn config(&self) -> Result<TrainConfig> {
        let mut config = TrainConfig {
            model: ResNetConfig {
                zero_init_residual: self.zero_init_residual,
                ..ResNetConfig::named(self.arch, self.channels.unwrap_or(1), NUM_CLASSES)
            },
            data: DataSettings {
                format: self.format,
                channels: self.channels,
                transforms: self.transforms,
                channel_norm: self.mean.clone().zip(self.std.clone()),
                limit_train: self.limit_train,
                limit_test: self.limit_test,
                val_split: self.val_split,
                skip_bad: self.skip_bad,
                ..DataSettings::default()
            },
            optim: OptimSettings::default(),
            run: RunSettings {
                recipe: self.recipe,
                seed: self.seed,
                init: self.init.clone(),
                reset_head: self.reset_head,
                sync_bn: self.sync_bn,
                target_acc: self.target_acc,
                ..RunSettings::default()
            },
        };
        let settings = self.settings.clone().or(self.recipe.settings());
        settings.apply(self.arch, &mut config)?;
        let stages = config.model.layers.len();
        config.run.freeze = match (self.freeze_backbone, self.freeze_until) {
            (true, _) => 1 + stages,
            (false, Some(k)) => k.saturating_add(1),
            (false, None) => 0,
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
            Command::Eval {
                resize,
                limit,
                batch_size,
                val_split,
                ..
            } => {
                if let Some(f) = val_split.filter(|f| !(*f > 0.0 && *f < 1.0)) {
                    bail!("--val-split must be a fraction between 0 and 1 (exclusive), got {f}");
                }
                resize.map_or(Ok(()), check_resize)?;
                if *batch_size == 0 || *batch_size > crate::train::MAX_BATCH {
                    bail!(
                        "--batch-size must be between 1 and {}, got {batch_size}",
                        crate::train::MAX_BATCH
                    );
                }
                if *limit == Some(0) {
                    bail!("--limit must be at least 1");
                }
                Ok(())
            }
            Command::Predict { resize, topk, .. } => {
                if *topk == 0 {
                    bail!("--topk must be at least 1");
                }
                resize.map_or(Ok(()), check_resize)
            }
            Command::Summary {
                arch,
                input,
                classes,
                ..
            } => {
                parse_shape(input.as_deref().unwrap_or(default_summary_input(*arch)))?;
                match classes {
                    Some(c) if *c == 0 || *c > MAX_CLASSES => {
                        bail!("--classes must be between 1 and {MAX_CLASSES}, got {c}")
                    }
                    _ => Ok(()),
                }
            }
            Command::Bench(b) => b.check().map(|_| ()),
            Command::Serve(a) => a.options().map(|_| ()),
        }
    }
}
