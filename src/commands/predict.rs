//! `resnet predict`: the top classes of image files, with their probabilities.

use super::printable;
use crate::data::transforms::check_resize;
use crate::error::Context;
use crate::infer::{ranked, softmax, Model};
use crate::nn::ArchName;
use crate::{bail, outln, Result};
use clap::Args;
use std::path::PathBuf;

/// `resnet predict` arguments.
#[derive(Args)]
pub struct PredictArgs {
    /// A model file: ours, safetensors saved from PyTorch, or torchvision's `.pth` state dict.
    #[arg(long)]
    pub weights: PathBuf,
    /// Image files (PNG or JPEG).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// Input size (shorter side) of a one-channel model; default: the size stored in the weights (required
    /// for PyTorch files).
    #[arg(long)]
    pub resize: Option<usize>,
    /// How many of the most probable classes to print.
    #[arg(long, default_value_t = 3)]
    pub topk: usize,
    /// Refuse weights of another network than this one (the architecture is read from the file).
    #[arg(long, value_enum)]
    pub arch: Option<ArchName>,
    /// Print, per image, the logits, the probabilities, the predicted class and the top classes as JSON.
    #[arg(long)]
    pub json: bool,
    /// Test-time augmentation: the mean of the logits of each image and its horizontal mirror (the JSON's
    /// `logits` are then that mean).
    #[arg(long)]
    pub tta: bool,
}

impl PredictArgs {
    /// Checks the flags' values (no file is read).
    pub fn check(&self) -> Result<()> {
        if self.topk == 0 {
            bail!("--topk must be at least 1");
        }
        self.resize.map_or(Ok(()), check_resize)
    }
}

/// Prints each image's top classes (a line, or a JSON object with `--json`).
pub fn run(args: &PredictArgs) -> Result<()> {
    let mut model = Model::load(&args.weights, args.arch, args.resize)?;
    for path in &args.images {
        let origin = path.display().to_string();
        let (x, xs) = model.read_input(path)?;
        let logits = model.logits(&x, xs, args.tta).context(&origin)?;
        let probs = softmax(&logits);
        let order = ranked(&probs);
        let top = &order[..args.topk.min(order.len())];
        let names = &model.names;
        if args.json {
            let v = serde_json::json!({
                "image": origin,
                "logits": logits,
                "probabilities": probs,
                "predicted": order[0],
                "class": names[order[0]],
                "top": top.iter().map(|&c| serde_json::json!({
                    "index": c, "class": names[c], "probability": probs[c],
                })).collect::<Vec<_>>(),
            });
            outln!("{v}");
        } else {
            let top: Vec<String> = top
                .iter()
                .map(|&c| format!("{} {:.3}", printable(&names[c]), probs[c]))
                .collect();
            // Names from the model file and the command line, shown on a terminal: escaped (JSON escapes its own).
            outln!("{}: {}", printable(&origin), top.join(", "));
        }
    }
    Ok(())
}
