//! Inference with a model file, shared by `predict` and `serve`: [`Model`] holds the network of a [`ModelFile`]
//! compiled for inference ([`CompiledNet`]), its preprocessing and its class names, and turns decoded images into
//! logits.

use crate::compiled::loaded::InferenceNet;
use crate::compiled::CompiledNet;
use crate::data::image_file;
use crate::data::transforms::{to_tensor_chw, Image, MAX_INPUT_SIDE};
use crate::data::Pipeline;
use crate::error::Context;
use crate::model_file::ModelFile;
use crate::nn::{ArchName, InitRng, SeedableRng};
use crate::train::forward_flip_tta;
use crate::{bail, Result, Shape4};
use std::path::{Path, PathBuf};

/// A model ready to predict: the network compiled for inference, its preprocessing and its class names.
pub struct Model {
    /// The network, compiled for inference (f32, or int8 from a quantized file).
    pub net: InferenceNet,
    /// Its number of parameters (as trained: before the batch norms were folded).
    pub params: usize,
    /// How an image becomes the network's input.
    pub preprocess: Pipeline,
    /// The name of each class, in label order.
    pub names: Vec<String>,
    /// The file it came from (named in errors).
    pub path: PathBuf,
    /// The input size it was trained at, where the file says (`resnet.input_size`).
    pub trained_size: Option<usize>,
}

impl Model {
    /// Loads the model file at `path`, refused if it holds another network than `arch` (`--arch`); `resize`
    /// overrides the stored input size as `predict --resize` does.
    pub fn load(path: &Path, arch: Option<ArchName>, resize: Option<usize>) -> Result<Model> {
        let file = ModelFile::load(path)?;
        file.check_arch(arch)?;
        let (mut net, params) = match &file.quantized {
            Some(_) => (file.inference()?, file.config.num_params().unwrap_or(0)),
            None => {
                let trained = file.network()?;
                let net = InferenceNet::F32(Box::new(CompiledNet::new(&trained, None)?));
                (net, trained.num_params())
            }
        };
        let preprocess = file.preprocess(resize)?;
        // An image's answer must not depend on the images it is batched with (`serve`); a batch of one, as
        // `predict` runs, gets the same plans either way.
        net.set_batch_invariant(true);
        Ok(Model {
            net,
            params,
            preprocess,
            names: file.class_names(),
            path: file.path.clone(),
            trained_size: file.trained_size,
        })
    }

    /// Plans the batches a server may run, 1 to `max_batch` images and at most `max_batch_pixels` pixels, and
    /// sizes the arena for the largest, where the preprocessing gives every image one size: serving a batch then
    /// allocates no activation memory.
    pub fn reserve(&mut self, max_batch: usize, max_batch_pixels: usize) -> Result<()> {
        if let Ok((h, w)) = self.preprocess.output_size(None) {
            let largest = max_batch.min(max_batch_pixels / (h * w)).max(1);
            for n in (1..=largest).rev() {
                let xs = Shape4::new(n, self.channels(), h, w);
                self.net
                    .reserve(xs)
                    .context(self.path.display().to_string())?;
            }
        }
        Ok(())
    }

    /// The network's input channels (what images are decoded to).
    pub fn channels(&self) -> usize {
        self.net.config().in_channels
    }

    /// The image file at `path` read and prepared as the network's input (`predict`): an image its preprocessing
    /// would make larger than [`MAX_INPUT_SIDE`] a side is refused from its header, before it is decoded.
    pub fn read_input(&self, path: &Path) -> Result<(Vec<f32>, Shape4)> {
        let img = read_image_bounded(path, &self.preprocess, self.channels())?;
        self.input(img, &path.display().to_string())
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
            self.net.forward(x, xs).map(<[f32]>::to_vec)
        }
    }
}

/// One decoded image prepared by `preprocess` as a network input: the `[c, h, w]` tensor and its shape (`n` = 1).
/// `origin` names the image in errors.
pub fn prepare(preprocess: &Pipeline, img: Image, origin: &str) -> Result<(Vec<f32>, Shape4)> {
    // An evaluation pipeline draws no random numbers; the generator only satisfies the signature.
    let img = preprocess
        .apply(img, &mut InitRng::seed_from_u64(0))
        .context(origin)?;
    let mut x = vec![0.0; img.pixels.len()];
    let norm = preprocess.normalize_for(img.c)?;
    let norm = norm.as_ref().map(|(m, s)| (m.as_slice(), s.as_slice()));
    to_tensor_chw(&img, &mut x, norm);
    Ok((x, Shape4::new(1, img.c, img.h, img.w)))
}

/// The image file at `path`, decoded to `channels`; an image `preprocess` would make larger than
/// [`MAX_INPUT_SIDE`] a side is refused from its header, before it is decoded.
pub fn read_image_bounded(path: &Path, preprocess: &Pipeline, channels: usize) -> Result<Image> {
    let bytes = image_file::read_file(path)?;
    let header = image_file::probe_bytes(&bytes, path)?;
    let origin = path.display().to_string();
    check_input_side(preprocess, header.h, header.w, MAX_INPUT_SIDE, &origin)?;
    image_file::decode_image(&bytes, path, channels)
}

/// Refuses an `h × w` image (named `origin`) that `preprocess` would make more than `side` pixels a side (a
/// pipeline without a resize step passes an image at its own size); checked before any pixel is touched.
pub fn check_input_side(
    preprocess: &Pipeline,
    h: usize,
    w: usize,
    side: usize,
    origin: &str,
) -> Result<()> {
    let (ph, pw) = preprocess.prepared_size(h, w);
    if ph > side || pw > side {
        bail!(
            "{origin}: {w}×{h} pixels would be {pw}×{ph} after preprocessing; this model takes at most {side} pixels a side"
        );
    }
    Ok(())
}

/// Class indices from the most to the least probable (ties keep index order).
pub fn ranked(probs: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    order
}

/// Probabilities of one image's logits, in f64 (what `predict` and `serve` report).
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = logits.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}
