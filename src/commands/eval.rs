//! `resnet eval`: a model file's accuracy on a test (or validation) set, per class and as a confusion matrix.

use super::{data_dir, printable, verify_bundled};
use crate::compiled::loaded::InferenceNet;
use crate::data::transforms::{check_resize, MAX_INPUT_SIDE};
use crate::data::{open_data, DataOptions, Format, Loader, Subset};
use crate::model_file::ModelFile;
use crate::nn::ArchName;
use crate::train::{evaluate_on, Evaluation, MAX_BATCH};
use crate::{bail, outln, Result};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;

/// `resnet eval` arguments.
#[derive(Args)]
pub struct EvalArgs {
    /// A model file (ours, or `safetensors.torch.save_file(net.state_dict(), …)` from the chapter's code).
    #[arg(long)]
    pub weights: PathBuf,
    /// Dataset directory, any format `train --data` reads; the test (or validation) images are evaluated
    /// (default: $RESNET_DATA, the bundled data/fashion-mnist, /usr/share/datasets/fashion-mnist).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Dataset format: auto, idx, cifar10, cifar100, cifar100-coarse, folder.
    #[arg(long, default_value = "auto")]
    pub format: Format,
    /// Refuse weights of another network than this one (the architecture is read from the file).
    #[arg(long, value_enum)]
    pub arch: Option<ArchName>,
    /// Evaluate on the validation images a run held out with `train --val-split F --seed S` (the same F and
    /// S; image folders without val/ or test/ always split, with 0.1 by default).
    #[arg(long)]
    pub val_split: Option<f64>,
    /// The seed of `--val-split`'s draw (the training run's --seed).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Input size (shorter side) to resize to; default: the size stored in the weights (required for PyTorch files).
    #[arg(long)]
    pub resize: Option<usize>,
    /// Evaluate only the first N test images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Images per evaluation batch.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Test-time augmentation: classify each image by the mean of the logits of the image and its horizontal
    /// mirror (twice the work).
    #[arg(long)]
    pub tta: bool,
}

impl EvalArgs {
    /// Checks the flags' values (no file is read).
    pub fn check(&self) -> Result<()> {
        if let Some(f) = self.val_split.filter(|f| !(*f > 0.0 && *f < 1.0)) {
            bail!("--val-split must be a fraction between 0 and 1 (exclusive), got {f}");
        }
        self.resize.map_or(Ok(()), check_resize)?;
        if self.batch_size == 0 || self.batch_size > MAX_BATCH {
            bail!(
                "--batch-size must be between 1 and {MAX_BATCH}, got {}",
                self.batch_size
            );
        }
        if self.limit == Some(0) {
            bail!("--limit must be at least 1");
        }
        Ok(())
    }
}

/// Evaluates the model on the data's test (or validation) images and prints the accuracy, the per-class
/// accuracy and the confusion matrix. Data that does not fit the model (channels, classes, class names) is
/// refused before anything is evaluated.
pub fn run(args: &EvalArgs) -> Result<()> {
    let file = ModelFile::load(&args.weights)?;
    file.check_arch(args.arch)?;
    // The network compiled for inference (f32, or int8 from a quantized file; planned, and its arena sized, at
    // the first batch).
    let mut compiled = file.inference()?;
    let config = compiled.config().clone();
    let names = file.class_names();
    let dir = data_dir(args.data.as_deref())?;
    let opts = DataOptions {
        format: args.format,
        // A model trained here says how its images were prepared: convert the data to its channels.
        channels: (args.resize.is_none() && file.eval_transform.is_some())
            .then_some(config.in_channels),
        val_split: args.val_split,
        seed: args.seed,
        verify: verify_bundled(args.data.as_deref()),
        test_only: true,
        ..DataOptions::default()
    };
    let mut test = open_data(&dir, &opts)?.test;
    if let Some(n) = args.limit {
        test = Arc::new(Subset::first(test, n));
    }
    let weights = args.weights.display();
    let (c, k) = (test.channels(), test.classes().len());
    if c != config.in_channels {
        bail!(
            "{weights}: a network for {} channels, but the images of {} have {c}",
            config.in_channels,
            dir.display()
        );
    }
    if k != config.num_classes {
        bail!(
            "{weights}: a network for {} classes, but {} holds {k}",
            config.num_classes,
            dir.display()
        );
    }
    if file.classes.is_some() && test.classes() != names.as_slice() {
        let i = (0..k).find(|&i| test.classes()[i] != names[i]).unwrap_or(0);
        bail!(
            "{weights}: class {i} is `{}`, but in {} it is `{}`: the labels would not mean the same classes",
            printable(&names[i]),
            dir.display(),
            printable(&test.classes()[i])
        );
    }
    let pipeline = file.preprocess(args.resize)?;
    let loader = Loader::with_pipeline(test, args.batch_size, false, 0, pipeline)?;
    let (h, w) = loader.image_size();
    if h.max(w) > MAX_INPUT_SIDE {
        bail!(
            "{weights}: the images of {} would be {w}×{h} pixels after preprocessing; this model takes at most \
             {MAX_INPUT_SIDE} pixels a side (--resize N)",
            dir.display()
        );
    }
    let ev = evaluate_on(&mut compiled, &loader, args.tta)?;
    outln!(
        "{} acc {:.4} ({} images, input {h}×{w}{}{})",
        if args.val_split.is_some() {
            "validation"
        } else {
            "test"
        },
        ev.accuracy,
        ev.count,
        match &compiled {
            InferenceNet::F32(_) => String::new(),
            InferenceNet::Int8(_) => format!(", {}", compiled.precision()),
        },
        if args.tta { ", flip TTA" } else { "" }
    );
    print_breakdown(&names, &ev);
    Ok(())
}

/// The per-class accuracy and the confusion matrix (rows: true class, columns: predicted).
fn print_breakdown(names: &[String], ev: &Evaluation) {
    // Names from the model file or the data's folders, shown on a terminal: control characters escaped.
    let names: Vec<String> = names.iter().map(|n| printable(n).into_owned()).collect();
    let width = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0)
        .clamp(12, 32);
    outln!("\nper-class accuracy:");
    for (name, acc) in names.iter().zip(ev.per_class()) {
        outln!("  {name:<width$} {acc:.3}");
    }
    outln!("\nconfusion matrix (rows: true class, columns: predicted):");
    let mut header = format!("{:<width$}", "");
    for i in 0..names.len() {
        header += &format!("{i:>6}");
    }
    outln!("{header}");
    for (i, row) in ev.confusion.iter().enumerate() {
        let label: String = format!("{i} {}", names[i]).chars().take(width).collect();
        let mut line = format!("{label:<width$}");
        for v in row {
            line += &format!("{v:>6}");
        }
        outln!("{line}");
    }
}
