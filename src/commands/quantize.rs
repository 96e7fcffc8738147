//! `resnet quantize`: a model file quantized to int8 after calibration ([`crate::compiled::int8`]), written as
//! a quantized model file ([`crate::compiled::quant_file`]) that `predict`, `eval`, `serve`, `bench --weights`
//! and `summary --plan --weights` run on the int8 kernels.

use crate::checkpoint::{
    arch_string, write_atomic, META_ARCH, META_CLASSES, META_EVAL_TRANSFORM, META_INPUT_SIZE,
};
use crate::compiled::int8::{Calibration, Method};
use crate::compiled::quant_file::{self, Record};
use crate::compiled::CompiledNet;
use crate::data::calib::CalibImages;
use crate::data::transforms::{check_resize, MAX_INPUT_SIDE};
use crate::infer::prepare;
use crate::model_file::ModelFile;
use crate::{bail, outln, Result, Shape4};
use clap::Args;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Most calibration images `--images` accepts.
pub const MAX_IMAGES: usize = 1 << 16;

/// Images run through the network at once while calibrating.
const CALIB_BATCH: usize = 16;

/// The calibration method `--method` takes when not given: chosen by accuracy, see docs/int8.md.
pub const DEFAULT_METHOD: &str = "percentile";

/// `resnet quantize` arguments.
#[derive(Args)]
pub struct QuantizeArgs {
    /// The f32 model file to quantize (ours, safetensors saved from PyTorch, a `.pth` state dict, or ONNX).
    #[arg(long)]
    pub weights: PathBuf,
    /// Calibration images: a folder of image files (flat or in class folders) or a data set `--data` reads
    /// (IDX, CIFAR: its training images).
    #[arg(long)]
    pub calib: PathBuf,
    /// How many calibration images, evenly spaced over the sorted list (as tools/calib_images.py picks them).
    #[arg(long, default_value_t = 512)]
    pub images: usize,
    /// How each activation's clip is chosen: `minmax` (the largest value seen) or `percentile` (its 99.99th
    /// percentile).
    #[arg(long, default_value = DEFAULT_METHOD)]
    pub method: String,
    /// The quantized model file to write (atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// Input size (shorter side) to calibrate and then predict at; default: the size stored in the weights
    /// (required for PyTorch files). Given, it and the preprocessing it implies are stored in the quantized file.
    #[arg(long)]
    pub resize: Option<usize>,
}

impl QuantizeArgs {
    /// Checks the flags' values (no file is read).
    pub fn check(&self) -> Result<Method> {
        if self.images == 0 || self.images > MAX_IMAGES {
            bail!(
                "--images must be between 1 and {MAX_IMAGES}, got {}",
                self.images
            );
        }
        self.resize.map_or(Ok(()), check_resize)?;
        if self.out.file_name().is_none() {
            bail!("--out {}: not a file path", self.out.display());
        }
        let method: Method = self
            .method
            .parse()
            .map_err(|e| crate::Error::new(format!("--method: {e}")))?;
        Ok(method)
    }
}

/// Calibrates, quantizes and writes the file, then prints what it holds.
pub fn run(args: &QuantizeArgs) -> Result<()> {
    let method = args.check()?;
    let file = ModelFile::load(&args.weights)?;
    if file.quantized.is_some() {
        bail!(
            "--weights {}: already a quantized model file; quantize its f32 model file",
            args.weights.display()
        );
    }
    let trained = file.network()?;
    let preprocess = file.preprocess(args.resize)?;
    let channels = file.config.in_channels;
    let images = CalibImages::select(&args.calib, args.images, channels)?;
    let mut net = CompiledNet::new(&trained, None)?;
    let mut calibration = Calibration::new(&net);
    let mut digest = Sha256::new();
    // Runs of images of one shape, in order, up to CALIB_BATCH at a time.
    let mut batch: Vec<f32> = Vec::new();
    let mut shape: Option<Shape4> = None;
    let mut flush = |batch: &mut Vec<f32>, shape: Shape4, net: &mut CompiledNet| -> Result<()> {
        if shape.n > 0 {
            calibration.observe(net, batch, shape)?;
        }
        batch.clear();
        Ok(())
    };
    for i in 0..images.len() {
        let (img, origin) =
            images.image(i, |h, w| preprocess.prepared_size(h, w), MAX_INPUT_SIDE)?;
        let (x, xs) = prepare(&preprocess, img, &origin)?;
        for v in &x {
            digest.update(v.to_le_bytes());
        }
        match shape {
            Some(s) if s.c == xs.c && s.h == xs.h && s.w == xs.w && s.n < CALIB_BATCH => {
                shape = Some(Shape4::new(s.n + 1, s.c, s.h, s.w));
            }
            s => {
                if let Some(s) = s {
                    flush(&mut batch, s, &mut net)?;
                }
                shape = Some(xs);
            }
        }
        batch.extend_from_slice(&x);
    }
    if let Some(s) = shape {
        flush(&mut batch, s, &mut net)?;
    }
    let sha256: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let record = Record::new(method, images.len(), sha256);
    let mut meta = BTreeMap::new();
    meta.insert(META_ARCH.to_string(), arch_string(&file.config));
    meta.insert(META_CLASSES.to_string(), json(&file.class_names()));
    // With --resize, the file stores the preprocessing it was calibrated with; without, the model's own.
    let stored = if args.resize.is_some() {
        Some(&preprocess)
    } else {
        file.eval_transform.as_ref()
    };
    if let Some(p) = stored {
        meta.insert(META_EVAL_TRANSFORM.to_string(), json(p));
    }
    if let Some(size) = args.resize.or(file.trained_size) {
        meta.insert(META_INPUT_SIZE.to_string(), size.to_string());
    }
    let clips = calibration.clips(method);
    let bytes = quant_file::to_bytes(&net, &clips, &record, &meta)?;
    write_atomic(&args.out, &bytes)?;
    outln!(
        "{}: {} int8 (the convolutions; the stem stored in f32, quantized when loaded; classifier f32), calibrated on {} images of {} ({}, sha256 {}…), {} bytes",
        args.out.display(),
        file.config.name(),
        images.len(),
        args.calib.display(),
        method,
        &record.calibration_sha256[..12],
        bytes.len()
    );
    Ok(())
}

/// `v` as JSON, as a model file's metadata holds it.
fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain records serialize")
}
