//! `resnet export`: a model file's network as an ONNX file ([`crate::onnx`]).

use crate::checkpoint::write_atomic;
use crate::model_file::ModelFile;
use crate::onnx::{export_bytes, input_hw, ExportOptions, DEFAULT_OPSET, OPSETS};
use crate::{bail, Result};
use clap::Args;
use std::path::PathBuf;

/// Largest `--batch` accepted.
pub const MAX_BATCH: usize = 1 << 16;

/// `resnet export` arguments.
#[derive(Args)]
pub struct ExportArgs {
    /// A model file: ours, safetensors saved from PyTorch, or torchvision's `.pth` state dict.
    #[arg(long)]
    pub weights: PathBuf,
    /// The ONNX file to write (atomically: a temporary file renamed into place).
    #[arg(long)]
    pub onnx: PathBuf,
    /// The default-domain opset, 17 to 21.
    #[arg(long, default_value_t = DEFAULT_OPSET, allow_hyphen_values = true)]
    pub opset: i64,
    /// A fixed batch size [default: a dynamic batch dimension `N`].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Fold each batch norm into its convolution's weight and bias (no BatchNormalization nodes).
    #[arg(long)]
    pub fold_bn: bool,
}

impl ExportArgs {
    /// Checks the flags' values (no file is read).
    pub fn check(&self) -> Result<()> {
        if !OPSETS.contains(&self.opset) {
            bail!(
                "--opset must be between {} and {}, got {}",
                OPSETS.start(),
                OPSETS.end(),
                self.opset
            );
        }
        match self.batch {
            Some(n) if n == 0 || n > MAX_BATCH => {
                bail!("--batch must be between 1 and {MAX_BATCH}, got {n}")
            }
            _ => {}
        }
        if self.onnx.file_name().is_none() {
            bail!("--onnx {}: not a file path", self.onnx.display());
        }
        Ok(())
    }

    fn options(&self) -> ExportOptions {
        ExportOptions {
            opset: self.opset,
            batch: self.batch,
            fold_bn: self.fold_bn,
        }
    }
}

/// Writes the ONNX file and prints what it holds.
pub fn run(args: &ExportArgs) -> Result<()> {
    let file = ModelFile::load(&args.weights)?;
    let bytes = export_bytes(&file, &args.options())?;
    write_atomic(&args.onnx, &bytes)?;
    let dim = |d: Option<usize>, name: &str| d.map_or(name.to_string(), |d| d.to_string());
    let hw = input_hw(&file);
    crate::outln!(
        "{}: {} ({} channels, {} classes), input [{}, {}, {}, {}], opset {}{}, {} bytes",
        args.onnx.display(),
        file.config.name(),
        file.config.in_channels,
        file.config.num_classes,
        dim(args.batch, "N"),
        file.config.in_channels,
        dim(hw.map(|h| h.0), "H"),
        dim(hw.map(|h| h.1), "W"),
        args.opset,
        if args.fold_bn {
            ", batch norms folded"
        } else {
            ""
        },
        bytes.len()
    );
    Ok(())
}
