//! `resnet predict`: the top classes of image files, with their probabilities; with `--explain DIR`, a Grad-CAM
//! heatmap of each over the image too (see [`crate::explain`]).

use super::printable;
use crate::data::transforms::check_resize;
use crate::error::Context;
use crate::explain::{Explainer, Target};
use crate::infer::{ranked, softmax, Model};
use crate::nn::ArchName;
use crate::{bail, outln, Result};
use clap::{Args, ValueEnum};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// `--target`: which output `--explain` explains, when no `--class` is named.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExplainTarget {
    /// The most probable class.
    Top1,
}

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
    /// Also write a Grad-CAM heatmap of each image, blended over it at its own size, as `DIR/<image>.cam.png`
    /// (DIR is created); `--json` adds the raw map (a small grid at the layer's resolution) with its layer and
    /// class.
    #[arg(long, value_name = "DIR")]
    pub explain: Option<PathBuf>,
    /// The class `--explain` explains: a class name of the model, or an index (default: the predicted class).
    #[arg(
        long,
        value_name = "NAME",
        requires = "explain",
        conflicts_with = "target"
    )]
    pub class: Option<String>,
    /// `--explain` the predicted class (the default; `--class` names another).
    #[arg(long, value_enum, requires = "explain")]
    pub target: Option<ExplainTarget>,
    /// The layer whose output `--explain` weighs, by its state-dict name: a stage (`layer4`, the chapter's
    /// `resnet_block4`; either prefix names stage k of either network) or one block of it (`layer4.1`).
    /// Default: the last stage.
    #[arg(long, value_name = "NAME", requires = "explain")]
    pub layer: Option<String>,
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

/// Prints each image's top classes (a line, or a JSON object with `--json`); with `--explain`, writes its heatmap.
pub fn run(args: &PredictArgs) -> Result<()> {
    if let Some(dir) = &args.explain {
        return explain(args, dir);
    }
    let mut model = Model::load(&args.weights, args.arch, args.resize)?;
    for path in &args.images {
        let origin = path.display().to_string();
        let (x, xs) = model.read_input(path)?;
        let logits = model.logits(&x, xs, args.tta).context(&origin)?;
        report(args, &origin, &logits, &model.names, None);
    }
    Ok(())
}

/// Prints one image's top classes from its logits; `explained` is the `--explain` JSON object and the heatmap's
/// path.
fn report(
    args: &PredictArgs,
    origin: &str,
    logits: &[f32],
    names: &[String],
    explained: Option<(serde_json::Value, &Path)>,
) {
    let probs = softmax(logits);
    let order = ranked(&probs);
    let top = &order[..args.topk.min(order.len())];
    if args.json {
        let mut v = serde_json::json!({
            "image": origin,
            "logits": logits,
            "probabilities": probs,
            "predicted": order[0],
            "class": names[order[0]],
            "top": top.iter().map(|&c| serde_json::json!({
                "index": c, "class": names[c], "probability": probs[c],
            })).collect::<Vec<_>>(),
        });
        if let Some((e, _)) = explained {
            v["explain"] = e;
        }
        outln!("{v}");
    } else {
        let top: Vec<String> = top
            .iter()
            .map(|&c| format!("{} {:.3}", printable(&names[c]), probs[c]))
            .collect();
        // Names from the model file and the command line, shown on a terminal: escaped (JSON escapes its own).
        let cam = explained.map_or(String::new(), |(_, p)| {
            format!(" → {}", printable(&p.display().to_string()))
        });
        outln!("{}: {}{cam}", printable(origin), top.join(", "));
    }
}

/// `--explain DIR`: each image's prediction (from the training path's network in eval mode, the one Grad-CAM
/// differentiates) and its heatmap, `DIR/<image>.cam.png`. The layer and the class are checked before DIR is
/// created.
fn explain(args: &PredictArgs, dir: &Path) -> Result<()> {
    if args.tta {
        bail!("--explain explains one forward of each image; it does not combine with --tta");
    }
    let mut explainer = Explainer::load(&args.weights, args.arch, args.resize)?;
    let layer = explainer.layer(args.layer.as_deref())?;
    let target = match &args.class {
        Some(name) => Target::Class(explainer.class(name)?),
        None => Target::Top1,
    };
    let outputs = cam_paths(dir, &args.images)?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--explain {}: cannot create the directory", dir.display()))?;
    for (path, out) in args.images.iter().zip(&outputs) {
        let origin = path.display().to_string();
        let img = explainer.read_image(path)?;
        let why = explainer.explain(img, &origin, target, &layer)?;
        std::fs::write(out, why.overlay_png()?)
            .with_context(|| format!("--explain: cannot write {}", out.display()))?;
        let cam = &why.cam;
        let json = serde_json::json!({
            "layer": cam.layer,
            "index": cam.class,
            "class": explainer.names[cam.class],
            "probability": why.probabilities[cam.class],
            "grid": cam.map.chunks(cam.w).collect::<Vec<_>>(),
            "input_size": [why.input_size.0, why.input_size.1],
            "heatmap": out.display().to_string(),
        });
        report(
            args,
            &origin,
            &cam.logits,
            &explainer.names,
            Some((json, out)),
        );
    }
    Ok(())
}

/// `DIR/<stem>.cam.png` for each image; two images of the same stem would overwrite each other's: refused.
fn cam_paths(dir: &Path, images: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut seen = BTreeSet::new();
    images
        .iter()
        .map(|p| {
            let stem = p.file_stem().unwrap_or(p.as_os_str()).to_string_lossy();
            let out = dir.join(format!("{stem}.cam.png"));
            if !seen.insert(out.clone()) {
                bail!(
                    "--explain: two images would both write {} (rename one, or explain them in two runs)",
                    out.display()
                );
            }
            Ok(out)
        })
        .collect()
}
