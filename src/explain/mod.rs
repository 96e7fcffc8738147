//! Why a model said what it said: Grad-CAM heatmaps ([`gradcam`]) over the image, brought back to its pixels
//! ([`upsample`]), coloured ([`colormap`]) and blended over it ([`overlay`]). [`Explainer`] does it all for a
//! model file, as `resnet predict --explain` and `serve`'s `/v1/explain` do.
//!
//! It runs the training path's network (the one [`crate::nn::ResNet`] that trains) in eval mode, forward and
//! back, not the compiled inference network, which keeps no activations and has no backward.

pub mod colormap;
pub mod gradcam;
pub mod overlay;
pub mod upsample;

pub use gradcam::{grad_cam, CamLayer, GradCam, Target};

use crate::data::transforms::Image;
use crate::data::Pipeline;
use crate::error::Context;
use crate::infer::{prepare, read_image_bounded, softmax};
use crate::model_file::ModelFile;
use crate::nn::{ArchName, ResNet};
use crate::{bail, Result};
use std::path::{Path, PathBuf};

/// A model ready to explain its predictions: the trainable network in eval mode, its preprocessing and its
/// class names.
pub struct Explainer {
    /// The network, in eval mode.
    pub net: ResNet,
    /// How an image becomes the network's input.
    pub preprocess: Pipeline,
    /// The name of each class, in label order.
    pub names: Vec<String>,
    /// The file it came from (named in errors).
    pub path: PathBuf,
}

/// One image explained.
pub struct Explanation {
    /// The map at the layer's resolution, its layer, class and the logits.
    pub cam: GradCam,
    /// The probability of each class.
    pub probabilities: Vec<f64>,
    /// The network input's `(h, w)`.
    pub input_size: (usize, usize),
    /// The map upsampled bilinearly to the network input, `[h·w]`, not normalized.
    pub input_map: Vec<f32>,
    /// The map at the original image's pixels, normalized to `[0, 1]` by the input map's maximum; `None` where
    /// the preprocessing cropped the pixel away.
    pub heat: Vec<Option<f32>>,
    /// The image as decoded for the network (its channels), at its own size.
    pub image: Image,
}

impl Explanation {
    /// The heatmap blended over the image, at the image's size (RGB).
    pub fn overlay(&self) -> Image {
        overlay::blend(&self.image, &self.heat)
    }

    /// [`Explanation::overlay`] as PNG.
    pub fn overlay_png(&self) -> Result<Vec<u8>> {
        overlay::png(&self.overlay())
    }
}

impl Explainer {
    /// Loads the model file at `path` as [`crate::infer::Model::load`] does (`arch` and `resize` alike), keeping
    /// the trainable network.
    pub fn load(path: &Path, arch: Option<ArchName>, resize: Option<usize>) -> Result<Explainer> {
        let file = ModelFile::load(path)?;
        file.check_arch(arch)?;
        let net = file.network()?;
        let preprocess = file.preprocess(resize)?;
        Ok(Explainer::new(
            net,
            preprocess,
            file.class_names(),
            file.path.clone(),
        ))
    }

    /// An explainer of `net` (switched to eval mode) with its preprocessing and class names.
    pub fn new(
        mut net: ResNet,
        preprocess: Pipeline,
        names: Vec<String>,
        path: PathBuf,
    ) -> Explainer {
        net.set_train(false);
        Explainer {
            net,
            preprocess,
            names,
            path,
        }
    }

    /// The network's input channels (what images are decoded to).
    pub fn channels(&self) -> usize {
        self.net.config.in_channels
    }

    /// The layer `name` names (`--layer`), or the last stage's output.
    pub fn layer(&self, name: Option<&str>) -> Result<CamLayer> {
        match name {
            Some(n) => CamLayer::find(&self.net, n),
            None => Ok(CamLayer::last_stage(&self.net)),
        }
    }

    /// The class `name` names (`--class`): a class name of the model (exactly, else ignoring ASCII case), else a
    /// class index.
    pub fn class(&self, name: &str) -> Result<usize> {
        let exact = self.names.iter().position(|n| n == name);
        if let Some(k) =
            exact.or_else(|| self.names.iter().position(|n| n.eq_ignore_ascii_case(name)))
        {
            return Ok(k);
        }
        match name.parse::<usize>() {
            Ok(k) if k < self.names.len() => Ok(k),
            _ => {
                // Escaped first, then clipped: escaping can make a character ten, and the model's names
                // reach a terminal.
                let shown = crate::error::clip(&format!("{name:?}"), 80);
                let known: Vec<String> = self.names.iter().map(|n| format!("{n:?}")).collect();
                bail!(
                    "--class {shown}: not a class of this model (a name or an index below {}: {})",
                    self.names.len(),
                    crate::error::few(&known)
                )
            }
        }
    }

    /// The image file at `path`, decoded to the network's channels; an image its preprocessing would make
    /// larger than [`MAX_INPUT_SIDE`](crate::data::transforms::MAX_INPUT_SIDE) a side is refused from its header, before it is decoded.
    pub fn read_image(&self, path: &Path) -> Result<Image> {
        read_image_bounded(path, &self.preprocess, self.channels())
    }

    /// Grad-CAM of `img` (decoded to [`Explainer::channels`]) for `target` at `layer`; `origin` names the image
    /// in errors.
    pub fn explain(
        &mut self,
        img: Image,
        origin: &str,
        target: Target,
        layer: &CamLayer,
    ) -> Result<Explanation> {
        let (x, xs) = prepare(&self.preprocess, img.clone(), origin)?;
        let cam = grad_cam(&mut self.net, &x, xs, layer, target).context(origin)?;
        let input_map = upsample::bilinear(&cam.map, cam.h, cam.w, xs.h, xs.w);
        let scaled = overlay::normalized(&input_map);
        let heat = upsample::to_original(
            &scaled,
            (xs.h, xs.w),
            &self.preprocess.steps,
            (img.h, img.w),
        )
        .context(origin)?;
        Ok(Explanation {
            probabilities: softmax(&cam.logits),
            cam,
            input_size: (xs.h, xs.w),
            input_map,
            heat,
            image: img,
        })
    }
}
