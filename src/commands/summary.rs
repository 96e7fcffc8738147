//! `resnet summary`: a network's layer-by-layer shape walk and its parameter count.

use super::group_thousands;
use crate::compiled::loaded::InferenceNet;
use crate::compiled::CompiledNet;
use crate::model_file::ModelFile;
use crate::nn::{ArchName, Buffers, ResNet, ResNetConfig, Stem};
use crate::{bail, outln, Error, Result, Shape4};
use clap::Args;

/// Largest `summary --input` (N·C·H·W values, 2^22): the command runs the network on it for real.
pub const MAX_INPUT_VALUES: usize = 1 << 22;

/// Most classes `--classes` accepts.
pub const MAX_CLASSES: usize = 1 << 16;

/// `resnet summary` arguments.
#[derive(Args)]
pub struct SummaryArgs {
    /// The network: the chapter's ResNet-18, or torchvision's resnet18/34/50/101/152.
    #[arg(long, value_enum, default_value = "chapter")]
    pub arch: ArchName,
    /// Input shape as NxCxHxW; its C is the network's input channels [default: the chapter's 1x1x224x244,
    /// torchvision's 1x3x224x224].
    #[arg(long, allow_hyphen_values = true)]
    pub input: Option<String>,
    /// Classes of the final layer [default: the chapter's 10, torchvision's 1000].
    #[arg(long)]
    pub classes: Option<usize>,
    /// The stem: `imagenet` (7×7 stride 2 + max pool) or `small` (3×3 stride 1, no pool).
    #[arg(long, value_enum, default_value = "imagenet")]
    pub stem: Stem,
    /// Also print each convolution's plan on this CPU for this input (batch = its N): in training, the algorithm
    /// of the forward pass, the weight gradient and the input gradient; then the compiled inference network's
    /// steps (algorithm, epilogue, arena buffer) and its memory.
    #[arg(long)]
    pub plan: bool,
    /// A model file (f32 or quantized): its network instead of `--arch`/`--classes`/`--stem`'s, and with `--plan`
    /// its inference plan (for a quantized file, which convolutions run int8).
    #[arg(long)]
    pub weights: Option<std::path::PathBuf>,
}

impl SummaryArgs {
    /// The input shape: `--input`, else the network's default.
    fn input_shape(&self) -> Result<Shape4> {
        parse_shape(
            self.input
                .as_deref()
                .unwrap_or(default_summary_input(self.arch)),
        )
    }

    /// Checks the flags' values (no file is read).
    pub fn check(&self) -> Result<()> {
        self.input_shape()?;
        match self.classes {
            Some(c) if c == 0 || c > MAX_CLASSES => {
                bail!("--classes must be between 1 and {MAX_CLASSES}, got {c}")
            }
            _ => Ok(()),
        }
    }
}

/// Prints the shape walk, the parameter count and, with `--plan`, each convolution's plan.
pub fn run(args: &SummaryArgs) -> Result<()> {
    let file = args.weights.as_deref().map(ModelFile::load).transpose()?;
    let xs = match (&file, &args.input) {
        (Some(f), None) => {
            let side = f.trained_size.unwrap_or(224);
            Shape4::new(1, f.config.in_channels, side, side)
        }
        _ => args.input_shape()?,
    };
    let config = match &file {
        Some(f) => f.config.clone(),
        None => {
            let classes = args.classes.unwrap_or(default_classes(args.arch));
            ResNetConfig {
                stem: args.stem,
                ..ResNetConfig::named(args.arch, xs.c, classes)
            }
        }
    };
    let classes = config.num_classes;
    let mut net = ResNet::new(config, 0)?;
    let walk = net.shape_walk(xs)?;
    // Run the network for real (eval mode) so the printed walk is what the engine computes.
    net.set_train(false);
    let x: Vec<f32> = (0..xs.len()).map(|i| (i % 251) as f32 / 251.0).collect();
    let logits_len = net.forward(&x, xs, Buffers::Own)?.len();
    debug_assert_eq!(logits_len, xs.n * classes);
    for (name, dims) in &walk {
        let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
        outln!("{name}  output shape:\t torch.Size([{}])", dims.join(", "));
    }
    outln!("parameters: {}", group_thousands(net.num_params()));
    if args.plan {
        outln!(
            "convolution plans at batch {} ({}):",
            xs.n,
            crate::kernels::conv::engine()
        );
        for (name, p) in net.conv_plans(xs)? {
            outln!("  {name:<22} {p}");
        }
        outln!(
            "inference plan at batch {} (the network compiled for predict, eval, serve: batch norms folded, each block's shortcut and ReLU in its last convolution's epilogue):",
            xs.n
        );
        let mut compiled = match &file {
            Some(f) => f.inference()?,
            None => InferenceNet::F32(Box::new(CompiledNet::new(&net, Some(xs))?)),
        };
        if let InferenceNet::Int8(_) = compiled {
            outln!(
                "  quantized: every convolution on {}, reading u8 activations (scale shown; the stem its input per channel, quantized when the file loads); shortcut outputs, features and classifier in f32",
                compiled.precision()
            );
        }
        for line in compiled.plan_lines(xs)? {
            outln!("{line}");
        }
    }
    Ok(())
}

/// `summary --input` when none is given: the chapter's `1x1x224x244`, torchvision's `1x3x224x224`.
fn default_summary_input(arch: ArchName) -> &'static str {
    match arch {
        ArchName::Chapter => "1x1x224x244",
        _ => "1x3x224x224",
    }
}

/// `summary --classes` when none is given: the chapter's 10, ImageNet's 1000 for torchvision's models.
fn default_classes(arch: ArchName) -> usize {
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
