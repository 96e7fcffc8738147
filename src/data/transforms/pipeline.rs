//! The [`Pipeline`] (a `transforms.Compose` of u8 [`Step`]s, then `ToTensor`, `Normalize` and `RandomErasing`),
//! its presets, and the checks of its settings wherever they come from (flags, a model file).

use super::{
    center_crop, hflip_image, pad_crop, random_crop_params, random_resized_crop_params, resize,
    resize_shorter_side, resized_crop, Image, RandomErasing, RRC_RATIO, RRC_SCALE,
};
use crate::error::Context;
use crate::{bail, Result};
use rand::Rng;

/// Longest side of a network input, in pixels, for every command that runs a model (`predict`, `eval`, `serve`):
/// an image whose preprocessing (or a model file's stored pipeline) would make a longer side is refused before
/// it is decoded (a 4000×4000 input would cost gigabytes of activations).
pub const MAX_INPUT_SIDE: usize = 1024;

/// Input sizes (the shorter side after resizing, `--resize`) every command accepts.
pub const INPUT_SIZES: std::ops::RangeInclusive<usize> = 8..=MAX_INPUT_SIDE;

/// Refuses a `--resize` outside [`INPUT_SIZES`].
pub fn check_resize(size: usize) -> Result<()> {
    if !INPUT_SIZES.contains(&size) {
        bail!(
            "--resize must be between {} and {}, got {size}",
            INPUT_SIZES.start(),
            INPUT_SIZES.end()
        );
    }
    Ok(())
}

/// Zero padding used by augmentation for images of side `size`: `max(1, size / 8)` (3 at 28, 12 at 96).
pub const fn augment_padding(size: usize) -> usize {
    if size / 8 > 1 {
        size / 8
    } else {
        1
    }
}

/// One step of a [`Pipeline`], on u8 images (before `ToTensor`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// `Resize(size)`: shorter side to `size`.
    Resize(usize),
    /// `CenterCrop((h, w))`.
    CenterCrop(usize, usize),
    /// `RandomResizedCrop((h, w), scale, ratio)`.
    RandomResizedCrop {
        /// Output `(h, w)`.
        size: (usize, usize),
        /// Range of the crop's area as a fraction of the image's (torchvision: `(0.08, 1.0)`).
        scale: (f64, f64),
        /// Range of the crop's aspect ratio width/height (torchvision: `(3/4, 4/3)`).
        ratio: (f64, f64),
    },
    /// `RandomCrop((h, w), padding)` with zero padding.
    RandomCrop {
        /// Output `(h, w)`.
        size: (usize, usize),
        /// Zeros added on every side first.
        padding: usize,
    },
    /// `RandomHorizontalFlip(0.5)`.
    HorizontalFlip,
}

impl Step {
    /// Whether the step draws random numbers.
    pub fn is_random(&self) -> bool {
        matches!(
            self,
            Step::RandomResizedCrop { .. } | Step::RandomCrop { .. } | Step::HorizontalFlip
        )
    }
}

/// Checks `Normalize`'s values wherever they come from (flags, a model file): one or three finite means and as
/// many positive, finite stds.
pub fn check_normalize_values(mean: &[f32], std: &[f32]) -> Result<()> {
    let ok = mean.len() == std.len()
        && (mean.len() == 1 || mean.len() == 3)
        && mean.iter().all(|v| v.is_finite())
        && std.iter().all(|v| v.is_finite() && *v > 0.0);
    if !ok {
        bail!("need 1 or 3 finite means and as many positive stds, got {mean:?} and {std:?}");
    }
    Ok(())
}

/// Longest side a `Resize` may produce (as decoders accept at most 16,384 pixels a side).
pub const MAX_RESIZED_SIDE: usize = 16_384;

/// Largest resize or crop side a pipeline stored in a model file may ask for.
pub const MAX_STORED_SIZE: usize = 4096;

/// A `transforms.Compose`: u8 [`Step`]s, then `ToTensor` and an optional per-channel `Normalize(mean, std)`.
/// A model file stores its evaluation pipeline as JSON, so `predict` and `eval` preprocess as training did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pipeline {
    /// The u8 steps, in order.
    pub steps: Vec<Step>,
    /// `(mean, std)`, one value per channel (or one value for every channel).
    pub normalize: Option<(Vec<f32>, Vec<f32>)>,
    /// `RandomErasing` on the tensor after `Normalize` (training only; the loader applies it). Absent from the
    /// JSON when `None`, so that pipelines stored before it existed read and write the same bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erasing: Option<RandomErasing>,
}

impl Pipeline {
    /// The `cifar` preset: training `RandomCrop(32, padding=4)` + `RandomHorizontalFlip()`; evaluation nothing.
    pub fn cifar(train: bool) -> Pipeline {
        let steps = if train {
            vec![
                Step::RandomCrop {
                    size: (32, 32),
                    padding: 4,
                },
                Step::HorizontalFlip,
            ]
        } else {
            Vec::new()
        };
        Pipeline {
            steps,
            normalize: None,
            erasing: None,
        }
    }

    /// The `imagenet` preset: training `RandomResizedCrop(size)` + `RandomHorizontalFlip()`; evaluation
    /// `Resize(size·256/224)` + `CenterCrop(size)` (`Resize(256)` + `CenterCrop(224)` for `size = 224`).
    pub fn imagenet(train: bool, size: usize) -> Pipeline {
        let steps = if train {
            vec![
                Step::RandomResizedCrop {
                    size: (size, size),
                    scale: RRC_SCALE,
                    ratio: RRC_RATIO,
                },
                Step::HorizontalFlip,
            ]
        } else {
            vec![Step::Resize(size * 256 / 224), Step::CenterCrop(size, size)]
        };
        Pipeline {
            steps,
            normalize: None,
            erasing: None,
        }
    }

    /// This pipeline with `Normalize(mean, std)`.
    pub fn with_normalize(mut self, mean: Vec<f32>, std: Vec<f32>) -> Pipeline {
        self.normalize = Some((mean, std));
        self
    }

    /// This pipeline with `RandomErasing` after `Normalize`.
    pub fn with_erasing(mut self, erasing: RandomErasing) -> Pipeline {
        self.erasing = Some(erasing);
        self
    }

    /// Whether a step resizes the image (`Resize`).
    pub fn has_resize(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Resize(_)))
    }

    /// The `(h, w)` that the steps make of an `h × w` image, computed before any pixel is touched (no step that
    /// resizes or crops: the image's own size; `Resize` keeps the aspect ratio, saturating on absurd ones).
    pub fn prepared_size(&self, mut h: usize, mut w: usize) -> (usize, usize) {
        for step in &self.steps {
            match *step {
                Step::Resize(n) => {
                    let (short, long) = (h.min(w).max(1), h.max(w));
                    let long =
                        (n as u128 * long as u128 / short as u128).min(usize::MAX as u128) as usize;
                    (h, w) = if h <= w { (n, long) } else { (long, n) };
                }
                Step::CenterCrop(ch, cw) => (h, w) = (ch, cw),
                Step::RandomResizedCrop { size, .. } | Step::RandomCrop { size, .. } => {
                    (h, w) = size
                }
                Step::HorizontalFlip => {}
            }
        }
        (h, w)
    }

    /// Whether any step draws random numbers.
    pub fn is_random(&self) -> bool {
        self.steps.iter().any(Step::is_random) || self.erasing.is_some()
    }

    /// Size `(h, w)` of the output for inputs of size `input` (`None`: sizes vary). An error when the output size
    /// would vary (no crop after the last size-changing step on variable inputs) or a size is 0.
    pub fn output_size(&self, input: Option<(usize, usize)>) -> Result<(usize, usize)> {
        let mut size = input;
        for s in &self.steps {
            size = match *s {
                Step::Resize(n) => {
                    if n == 0 {
                        bail!("Resize: the size must be at least 1");
                    }
                    size.map(|(h, w)| resize_shorter_side(h, w, n))
                }
                Step::CenterCrop(h, w)
                | Step::RandomResizedCrop { size: (h, w), .. }
                | Step::RandomCrop { size: (h, w), .. } => {
                    if h == 0 || w == 0 {
                        bail!("crop to {h}×{w}: sizes must be at least 1");
                    }
                    Some((h, w))
                }
                Step::HorizontalFlip => size,
            };
        }
        match size {
            Some((h, w)) if h > 0 && w > 0 => Ok((h, w)),
            Some((h, w)) => bail!("the transforms would make {h}×{w} images"),
            None => bail!(
                "the images have different sizes and the transforms do not crop them to one size (use a preset with \
                 a crop, e.g. imagenet)"
            ),
        }
    }

    /// Checks the normalization against `c` channels: one value, or `c` values, finite means, positive stds.
    /// Returns `(mean, std)` with `c` values each.
    pub fn normalize_for(&self, c: usize) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        let Some((mean, std)) = &self.normalize else {
            return Ok(None);
        };
        let widen = |v: &Vec<f32>, what: &str| -> Result<Vec<f32>> {
            match v.len() {
                1 => Ok(vec![v[0]; c]),
                n if n == c => Ok(v.clone()),
                n => bail!("normalize: {n} {what} values for {c}-channel images (give 1 or {c})"),
            }
        };
        let (mean, std) = (widen(mean, "mean")?, widen(std, "std")?);
        if let Some((m, s)) = mean
            .iter()
            .zip(&std)
            .find(|(m, s)| !(m.is_finite() && s.is_finite() && **s > 0.0))
        {
            bail!("normalize: need a finite mean and a positive std, got mean {m}, std {s}");
        }
        Ok(Some((mean, std)))
    }

    /// Checks a pipeline read from a model file before it runs on anything: evaluation steps only (no
    /// randomness), every size between 1 and [`MAX_STORED_SIZE`], one or three normalization values per side
    /// with finite means and positive finite stds.
    pub fn check_stored(&self) -> Result<()> {
        for s in &self.steps {
            let sizes: &[usize] = match s {
                Step::Resize(n) => &[*n],
                Step::CenterCrop(h, w) => &[*h, *w],
                _ => bail!("{s:?} is a training step; a stored evaluation pipeline has none"),
            };
            if let Some(bad) = sizes.iter().find(|&&n| n == 0 || n > MAX_STORED_SIZE) {
                bail!("{s:?}: size {bad} is outside 1–{MAX_STORED_SIZE}");
            }
        }
        if let Some(e) = &self.erasing {
            bail!("{e:?} is a training step; a stored evaluation pipeline has none");
        }
        if let Some((m, sd)) = &self.normalize {
            check_normalize_values(m, sd).context("normalize")?;
        }
        Ok(())
    }

    /// Applies the u8 steps to `img`, drawing from `rng` in step order; `ToTensor` and `Normalize` are the
    /// caller's ([`to_tensor_chw`](super::to_tensor_chw)). An error (naming nothing: the caller adds the image)
    /// when a `RandomCrop` is larger than the padded image, or a `Resize` would make a side longer than
    /// [`MAX_RESIZED_SIDE`].
    pub fn apply<R: Rng + ?Sized>(&self, mut img: Image, rng: &mut R) -> Result<Image> {
        for s in &self.steps {
            img = match *s {
                Step::Resize(n) => {
                    // A very elongated image would grow its longer side far past any real image.
                    let (oh, ow) = resize_shorter_side(img.h, img.w, n);
                    if oh.max(ow) > MAX_RESIZED_SIDE {
                        bail!(
                            "a {}×{} image resized to {n} on its shorter side would be {oh}×{ow}, beyond the \
                             {MAX_RESIZED_SIDE}-pixel limit",
                            img.w,
                            img.h
                        );
                    }
                    resize(&img, n)
                }
                Step::CenterCrop(h, w) => center_crop(&img, h, w),
                Step::RandomResizedCrop {
                    size: (oh, ow),
                    scale,
                    ratio,
                } => {
                    let (t, l, h, w) = random_resized_crop_params(img.h, img.w, scale, ratio, rng);
                    resized_crop(&img, t, l, h, w, oh, ow)
                }
                Step::RandomCrop {
                    size: (th, tw),
                    padding,
                } => {
                    let Some((t, l)) = random_crop_params(img.h, img.w, th, tw, padding, rng)
                    else {
                        bail!(
                            "RandomCrop({th}×{tw}, padding={padding}): the image is only {}×{}",
                            img.h,
                            img.w
                        );
                    };
                    pad_crop(&img, padding, t, l, th, tw)
                }
                Step::HorizontalFlip => {
                    if rng.random_bool(0.5) {
                        hflip_image(&mut img);
                    }
                    img
                }
            };
        }
        Ok(img)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erasing_is_a_training_step_stored_pipelines_keep_their_json() {
        // A pipeline without erasing writes the JSON it always wrote, and old JSON reads back without erasing.
        let p = Pipeline::imagenet(false, 224).with_normalize(vec![0.5], vec![0.25]);
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"{"steps":[{"resize":256},{"center_crop":[224,224]}],"normalize":[[0.5],[0.25]]}"#
        );
        let back: Pipeline = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert!(!p.is_random());
        p.check_stored().unwrap();
        let e = p.clone().with_erasing(RandomErasing::new(0.25).unwrap());
        assert!(e.is_random());
        let err = e.check_stored().unwrap_err().to_string();
        assert!(
            err.contains("RandomErasing") && err.contains("training step"),
            "{err}"
        );
        let back: Pipeline = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn pipeline_sizes() {
        let p = Pipeline::imagenet(false, 224);
        assert_eq!(p.steps[0], Step::Resize(256));
        assert_eq!(p.output_size(None).unwrap(), (224, 224));
        assert_eq!(
            Pipeline::cifar(false).output_size(Some((32, 32))).unwrap(),
            (32, 32)
        );
        assert!(Pipeline::cifar(false).output_size(None).is_err());
        let n = Pipeline::default().with_normalize(vec![0.5], vec![0.0]);
        assert!(n.normalize_for(1).is_err());
        let n = Pipeline::default().with_normalize(vec![0.5, 0.5], vec![1.0, 1.0]);
        assert!(n.normalize_for(3).is_err());
        assert_eq!(n.normalize_for(2).unwrap().unwrap().0.len(), 2);
    }
}
