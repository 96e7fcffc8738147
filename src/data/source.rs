//! The one dataset interface of the loader: [`ImageDataset`], images of 1 or 3 channels (u8, interleaved `h×w×c`
//! as PIL holds them) with a label below `classes().len()`. Implemented by the IDX [`Dataset`] (Fashion-MNIST),
//! the in-memory [`ArrayDataset`] (CIFAR, fixed size), the [`ImageFolder`](super::folder::ImageFolder) (files of
//! any size) and a [`Subset`] of any of them (a validation split, a limit).

use std::fmt::Debug;
use std::sync::{Arc, OnceLock};

use super::fashion_mnist::{Dataset, CLASS_NAMES};
use super::transforms::Image;
use crate::{bail, Result};

/// A dataset of labelled images. Image `i` may be decoded on access ([`ImageDataset::image`] can fail, naming the
/// file); the size may differ from image to image ([`ImageDataset::image_size`] is then `None`).
pub trait ImageDataset: Send + Sync + Debug {
    /// Number of images.
    fn len(&self) -> usize;
    /// Whether there are no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Channels of every image: 1 or 3.
    fn channels(&self) -> usize;
    /// Class names, label `l` is `classes()[l]`.
    fn classes(&self) -> &[String];
    /// Label of image `i` (`< classes().len()`). Panics if `i >= len()`.
    fn label(&self, i: usize) -> usize;
    /// `(h, w)` shared by every image, if they all have one size.
    fn image_size(&self) -> Option<(usize, usize)>;
    /// Image `i`, `channels()` channels. Panics if `i >= len()`; an error naming the file if it cannot be decoded.
    fn image(&self, i: usize) -> Result<Image>;
    /// How errors name image `i`: its file, or `dataset[i]`.
    fn describe(&self, i: usize) -> String;
}

/// Number of images of each class: `counts[label]`.
pub fn class_counts(ds: &dyn ImageDataset) -> Vec<usize> {
    let mut counts = vec![0; ds.classes().len()];
    for i in 0..ds.len() {
        counts[ds.label(i)] += 1;
    }
    counts
}

/// Per-channel mean and (population) standard deviation of the pixels on the 0–1 scale over every image of `ds`
/// (what `Normalize` should subtract and divide by: the `auto` normalization). Exact: per-channel histograms.
/// Decodes every image once (for a folder dataset without cache this reads every file).
pub fn channel_mean_std(ds: &dyn ImageDataset) -> Result<(Vec<f32>, Vec<f32>)> {
    let c = ds.channels();
    let mut hist = vec![[0u64; 256]; c];
    for i in 0..ds.len() {
        let img = ds.image(i)?;
        for px in img.pixels.chunks_exact(c) {
            for (h, &v) in hist.iter_mut().zip(px) {
                h[v as usize] += 1;
            }
        }
    }
    let (mut mean, mut std) = (Vec::new(), Vec::new());
    for h in &hist {
        let count = h.iter().sum::<u64>().max(1) as f64;
        let (mut s, mut s2) = (0.0f64, 0.0f64);
        for (v, &n) in h.iter().enumerate() {
            let x = v as f64 / 255.0;
            s += n as f64 * x;
            s2 += n as f64 * x * x;
        }
        let m = s / count;
        mean.push(m as f32);
        std.push(((s2 / count - m * m).max(0.0).sqrt() as f32).max(1e-6));
    }
    Ok((mean, std))
}

/// Fashion-MNIST's class names as `String`s (what [`Dataset::classes`] returns).
fn fashion_classes() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| CLASS_NAMES.iter().map(|s| s.to_string()).collect())
}

impl ImageDataset for Dataset {
    fn len(&self) -> usize {
        self.n
    }
    fn channels(&self) -> usize {
        1
    }
    fn classes(&self) -> &[String] {
        fashion_classes()
    }
    fn label(&self, i: usize) -> usize {
        Dataset::label(self, i)
    }
    fn image_size(&self) -> Option<(usize, usize)> {
        Some((self.h, self.w))
    }
    fn image(&self, i: usize) -> Result<Image> {
        Ok(Image {
            pixels: Dataset::image(self, i).to_vec(),
            h: self.h,
            w: self.w,
            c: 1,
        })
    }
    fn describe(&self, i: usize) -> String {
        format!("IDX image {i}")
    }
}

/// Fixed-size images in memory (CIFAR): `images` is `n×h×w×c` u8 interleaved, `labels[i] < classes.len()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayDataset {
    /// Pixels, `[n, h, w, c]`.
    pub images: Vec<u8>,
    /// Labels, `[n]`.
    pub labels: Vec<u32>,
    /// Image height.
    pub h: usize,
    /// Image width.
    pub w: usize,
    /// Channels, 1 or 3.
    pub c: usize,
    /// Class names.
    pub classes: Vec<String>,
    /// Where the images came from, for errors (a file or directory).
    pub origin: String,
}

impl ArrayDataset {
    /// Checks sizes (`images.len() = n·h·w·c`, `c` 1 or 3) and labels (`< classes.len()`).
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u32>,
        (h, w, c): (usize, usize, usize),
        classes: Vec<String>,
        origin: impl Into<String>,
    ) -> Result<ArrayDataset> {
        let origin = origin.into();
        if h == 0 || w == 0 || !(c == 1 || c == 3) {
            bail!("{origin}: images must be h×w with 1 or 3 channels, got {h}×{w}×{c}");
        }
        if labels.len().checked_mul(h * w * c) != Some(images.len()) {
            bail!(
                "{origin}: {} bytes do not make {} images of {h}×{w}×{c}",
                images.len(),
                labels.len()
            );
        }
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes.len())
        {
            bail!(
                "{origin}: label {l} of image {i} is not one of the {} classes",
                classes.len()
            );
        }
        Ok(ArrayDataset {
            images,
            labels,
            h,
            w,
            c,
            classes,
            origin,
        })
    }

    /// The same images with `c` channels (PIL's `convert('L')` / `convert('RGB')`).
    pub fn with_channels(self, c: usize) -> ArrayDataset {
        if c == self.c {
            return self;
        }
        let (h, w, from) = (self.h, self.w, self.c);
        let images = self
            .images
            .chunks_exact(h * w * from)
            .flat_map(|p| {
                Image {
                    pixels: p.to_vec(),
                    h,
                    w,
                    c: from,
                }
                .with_channels(c)
                .pixels
            })
            .collect();
        ArrayDataset { images, c, ..self }
    }
}

impl ImageDataset for ArrayDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn channels(&self) -> usize {
        self.c
    }
    fn classes(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, i: usize) -> usize {
        self.labels[i] as usize
    }
    fn image_size(&self) -> Option<(usize, usize)> {
        Some((self.h, self.w))
    }
    fn image(&self, i: usize) -> Result<Image> {
        let size = self.h * self.w * self.c;
        Ok(Image {
            pixels: self.images[i * size..][..size].to_vec(),
            h: self.h,
            w: self.w,
            c: self.c,
        })
    }
    fn describe(&self, i: usize) -> String {
        format!("{}[{i}]", self.origin)
    }
}

/// The images `indices` of another dataset, in that order (a validation split, `--limit-train`).
#[derive(Clone, Debug)]
pub struct Subset {
    /// The whole dataset.
    pub base: Arc<dyn ImageDataset>,
    /// Positions in `base`.
    pub indices: Vec<usize>,
}

impl Subset {
    /// The first `min(count, len)` images of `base`.
    pub fn first(base: Arc<dyn ImageDataset>, count: usize) -> Subset {
        let indices = (0..count.min(base.len())).collect();
        Subset { base, indices }
    }
}

impl ImageDataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn channels(&self) -> usize {
        self.base.channels()
    }
    fn classes(&self) -> &[String] {
        self.base.classes()
    }
    fn label(&self, i: usize) -> usize {
        self.base.label(self.indices[i])
    }
    fn image_size(&self) -> Option<(usize, usize)> {
        self.base.image_size()
    }
    fn image(&self, i: usize) -> Result<Image> {
        self.base.image(self.indices[i])
    }
    fn describe(&self, i: usize) -> String {
        self.base.describe(self.indices[i])
    }
}
