//! The command line's arguments, parsed by clap and checked without touching a file: `resnet` runs what
//! [`Cli::check`] accepts, and the CLI fuzz target feeds arbitrary argument lists through the same two steps.

use crate::commands::{
    BenchArgs, EvalArgs, ExportArgs, PredictArgs, QuantizeArgs, ServeArgs, SummaryArgs, TrainArgs,
};
use crate::nn::{ArchName, Stem};
use crate::{bail, Result};
use clap::builder::PossibleValue;
use clap::{Parser, Subcommand, ValueEnum};

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
    /// Write a model file's network as ONNX (standard operators, opset 17 by default), with its class names,
    /// preprocessing and architecture in the metadata.
    Export(ExportArgs),
    /// Quantize a model file to int8 (per-channel weights, per-tensor activations calibrated on images), for
    /// predict, eval, serve and bench on the int8 kernels.
    Quantize(QuantizeArgs),
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

impl Cli {
    /// Checks every value the arguments carry (ranges, shapes, names) before any file is read or written.
    pub fn check(&self) -> Result<()> {
        match self.threads {
            Some(0) => bail!("--threads must be at least 1"),
            Some(n) if n > MAX_THREADS => bail!("--threads must be at most {MAX_THREADS}, got {n}"),
            _ => {}
        }
        match &self.command {
            Command::Train(a) => a.check(),
            Command::Eval(a) => a.check(),
            Command::Predict(a) => a.check(),
            Command::Summary(a) => a.check(),
            Command::Bench(b) => b.check().map(|_| ()),
            Command::Serve(a) => a.options().map(|_| ()),
            Command::Export(a) => a.check(),
            Command::Quantize(a) => a.check().map(|_| ()),
        }
    }
}
