//! Inference with a model file, shared by `predict`, `eval` and `serve`: the network and its metadata checked
//! ([`load_model`]), how its inputs are prepared ([`preprocess_for`]), its class names ([`class_names`]), and
//! [`Model`], which holds all three and turns decoded images into logits.

use crate::checkpoint::{self, META_CLASSES, META_EVAL_TRANSFORM, META_INPUT_SIZE};
use crate::data::transforms::{to_tensor_chw, Image, Step, INPUT_SIZES};
use crate::data::{Pipeline, CLASS_NAMES};
use crate::nn::{ArchName, Buffers, InitRng, ResNet, ResNetConfig, SeedableRng};
use crate::train::forward_flip_tta;
use crate::{bail, Error, Result, Shape4};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A model ready to predict: the network in eval mode, its preprocessing and its class names.
pub struct Model {
    /// The network, in eval mode.
    pub net: ResNet,
    /// How an image becomes the network's input.
    pub preprocess: Pipeline,
    /// The name of each class, in label order.
    pub names: Vec<String>,
    /// The file it came from (named in errors).
    pub path: PathBuf,
    /// The input size it was trained at, where the file says (`resnet.input_size`).
    pub trained_size: Option<usize>,
    /// The activation buffers lent to the network's forward passes (see [`ResNet::forward`]); start empty.
    pub activations: Vec<Vec<f32>>,
}

impl Model {
    /// Loads `path` ([`load_model`]); `resize` overrides the stored input size as `predict --resize` does.
    pub fn load(path: &Path, arch: Option<ArchName>, resize: Option<usize>) -> Result<Model> {
        let (mut net, meta) = load_model(path, arch)?;
        let preprocess = preprocess_for(path, &meta, resize, net.config.in_channels)?;
        let names = class_names(path, &net.config, &meta)?;
        net.set_train(false);
        // An image's answer must not depend on the images it is batched with (`serve`); a batch of one, as
        // `predict` runs, gets the same plans either way.
        net.set_batch_independent(true);
        let trained_size = match meta.contains_key(META_INPUT_SIZE) {
            true => Some(input_size(path, &meta, None)?),
            false => None,
        };
        Ok(Model {
            net,
            preprocess,
            names,
            path: path.to_path_buf(),
            trained_size,
            activations: Vec::new(),
        })
    }

    /// The network's input channels (what images are decoded to).
    pub fn channels(&self) -> usize {
        self.net.config.in_channels
    }

    /// One decoded image (of [`Model::channels`] channels) prepared as the network's input: the `[c, h, w]` tensor
    /// and its shape (`n` = 1). `origin` names the image in errors.
    pub fn input(&self, img: Image, origin: &str) -> Result<(Vec<f32>, Shape4)> {
        prepare(&self.preprocess, img, origin)
    }

    /// The logits `[n, classes]` of the NCHW batch `x` of shape `xs`; with `tta`, the mean of the batch's and its
    /// mirror's.
    pub fn logits(&mut self, x: &[f32], xs: Shape4, tta: bool) -> Result<Vec<f32>> {
        if tta {
            forward_flip_tta(&mut self.net, x, xs)
        } else {
            // Inference only: the activations on a few shared buffers (what a large served batch needs).
            let bufs = Buffers::Lent(&mut self.activations);
            self.net.forward(x, xs, bufs).map(<[f32]>::to_vec)
        }
    }
}

/// One decoded image prepared by `preprocess` as a network input: the `[c, h, w]` tensor and its shape (`n` = 1).
/// `origin` names the image in errors.
pub fn prepare(preprocess: &Pipeline, img: Image, origin: &str) -> Result<(Vec<f32>, Shape4)> {
    // An evaluation pipeline draws no random numbers; the generator only satisfies the signature.
    let img = preprocess
        .apply(img, &mut InitRng::seed_from_u64(0))
        .map_err(|e| Error::new(format!("{origin}: {e}")))?;
    let mut x = vec![0.0; img.pixels.len()];
    let norm = preprocess.normalize_for(img.c)?;
    let norm = norm.as_ref().map(|(m, s)| (m.as_slice(), s.as_slice()));
    to_tensor_chw(&img, &mut x, norm);
    Ok((x, Shape4::new(1, img.c, img.h, img.w)))
}

/// Class indices from the most to the least probable (ties keep index order).
pub fn ranked(probs: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    order
}

/// The input size of a one-channel model: `--resize`, else the size stored in the file.
pub fn input_size(
    path: &Path,
    meta: &BTreeMap<String, String>,
    resize: Option<usize>,
) -> Result<usize> {
    Ok(match (resize, meta.get(META_INPUT_SIZE)) {
        // `--resize` was range-checked with the other arguments (`Cli::check`).
        (Some(r), _) => r,
        (None, Some(s)) => match s.parse() {
            Ok(r) if INPUT_SIZES.contains(&r) => r,
            _ => bail!(
                "{}: bad `{META_INPUT_SIZE}` metadata `{s}` (expected a size between {} and {}); pass --resize N to override it",
                path.display(),
                INPUT_SIZES.start(),
                INPUT_SIZES.end()
            ),
        },
        (None, None) => bail!("{}: the file does not say what input size it was trained at (PyTorch files don't): pass --resize N (the chapter trains at 96)", path.display()),
    })
}

/// A model file and its metadata, the metadata checked: a file that carries a bad value is refused even where
/// another value would be used instead.
pub fn load_model(
    path: &Path,
    arch: Option<ArchName>,
) -> Result<(ResNet, BTreeMap<String, String>)> {
    let (net, meta) = checkpoint::load_model(path)?;
    if let Some(arch) = arch {
        let found = net.config.name();
        if found != arch.as_str() {
            bail!(
                "{}: holds {found}, not {} (--arch)",
                path.display(),
                arch.as_str()
            );
        }
    }
    if meta.contains_key(META_INPUT_SIZE) {
        input_size(path, &meta, None)?;
    }
    stored_pipeline(path, &meta)?;
    class_names(path, &net.config, &meta)?;
    Ok((net, meta))
}

/// The evaluation transforms stored in a model file by `train`, checked (`None` for files without them).
pub fn stored_pipeline(path: &Path, meta: &BTreeMap<String, String>) -> Result<Option<Pipeline>> {
    let Some(text) = meta.get(META_EVAL_TRANSFORM) else {
        return Ok(None);
    };
    let p: Pipeline = serde_json::from_str(text).map_err(|e| {
        Error::new(format!(
            "{}: bad `{META_EVAL_TRANSFORM}` metadata: {e}",
            path.display()
        ))
    })?;
    p.check_stored().map_err(|e| {
        Error::new(format!(
            "{}: bad `{META_EVAL_TRANSFORM}` metadata: {e}",
            path.display()
        ))
    })?;
    Ok(Some(p))
}

/// How a model's inputs are prepared (`predict`, `eval`), after decoding to its channels: its stored transforms, else the chapter's
/// `Resize(size)` for one channel, else torchvision's ImageNet evaluation transform for three (`--resize` forces
/// the chapter's).
pub fn preprocess_for(
    path: &Path,
    meta: &BTreeMap<String, String>,
    resize: Option<usize>,
    channels: usize,
) -> Result<Pipeline> {
    if resize.is_none() {
        if let Some(p) = stored_pipeline(path, meta)? {
            return Ok(p);
        }
    }
    Ok(match channels {
        1 => Pipeline {
            steps: vec![Step::Resize(input_size(path, meta, resize)?)],
            normalize: None,
            erasing: None,
        },
        3 => imagenet_eval(),
        c => bail!(
            "{}: a network for {c} channels; images are read as grayscale (1) or RGB (3)",
            path.display()
        ),
    })
}

/// The class names of a model's outputs: those stored in the file by `train`, else Fashion-MNIST's for one
/// channel and 10 classes, ImageNet's for 1000 classes, `class K` otherwise.
pub fn class_names(
    path: &Path,
    config: &ResNetConfig,
    meta: &BTreeMap<String, String>,
) -> Result<Vec<String>> {
    if let Some(text) = meta.get(META_CLASSES) {
        let names: Vec<String> = serde_json::from_str(text).map_err(|e| {
            Error::new(format!(
                "{}: bad `{META_CLASSES}` metadata: {e}",
                path.display()
            ))
        })?;
        if names.len() != config.num_classes {
            bail!(
                "{}: `{META_CLASSES}` names {} classes, the network has {}",
                path.display(),
                names.len(),
                config.num_classes
            );
        }
        return Ok(names);
    }
    Ok(match (config.in_channels, config.num_classes) {
        (1, 10) => CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        (_, 1000) => IMAGENET_CLASSES.lines().map(str::to_string).collect(),
        (_, k) => (0..k).map(|i| format!("class {i}")).collect(),
    })
}

/// torchvision's ImageNet evaluation transform: `Resize(256)`, `CenterCrop(224)`, `ToTensor`,
/// `Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])`.
pub fn imagenet_eval() -> Pipeline {
    Pipeline::imagenet(false, 224)
        .with_normalize(vec![0.485, 0.456, 0.406], vec![0.229, 0.224, 0.225])
}

/// ImageNet's 1000 class names in label order (torchvision's `weights.meta["categories"]`).
const IMAGENET_CLASSES: &str = include_str!("data/imagenet_classes.txt");

/// Probabilities of one image's logits, in f64 (what `predict` and `serve` report).
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = logits.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}
