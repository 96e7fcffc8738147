//! Batches for training and evaluation: a per-epoch order, the transforms, and a small pool of worker threads
//! that decode and transform the next batches while the caller trains on the current one.
//!
//! Reproducibility: the order of epoch `e` is a function of `(seed, e)` only, and the augmentation of the item at
//! position `p` of that order (its u8 steps, then random erasing, from one generator) a function of `(seed, e, p)`
//! only, so a run resumed at epoch `e` sees exactly the batches an uninterrupted run would have seen, whatever the
//! number of workers: worker `k` of `W` prepares batches `k, k + W, …` and the consumer takes them in order.
//!
//! The workers are plain threads, not the rayon pool (whose cores belong to the matrix multiplies). The chapter's
//! Fashion-MNIST loader ([`Loader::new`]) uses one (resizing 28→96 costs ≈ 30 µs an image, about 1% of a training
//! step); image folders, whose decoding costs more, default to two ([`Loader::with_workers`]).

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::fashion_mnist::Dataset;
use super::source::ImageDataset;
use super::transforms::{augment_padding, resize_shorter_side, to_tensor_chw, Pipeline, Step};
use crate::error::Context;
use crate::{bail, Result, Shape4};

/// The chapter's transforms (the `chapter` preset), in this order: `resize` (torchvision's `Resize(size)`: shorter
/// side to `size`, Pillow bilinear, u8), `augment` (random crop with zero padding [`augment_padding`] and random
/// horizontal flip), `ToTensor` (÷255), `normalize` (`(x − mean) / std`). The default does only `ToTensor`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TransformConfig {
    /// Target length of the shorter side (`Resize(size)`); `None` keeps the dataset's `h×w`.
    pub resize: Option<usize>,
    /// `(mean, std)`, the same for every channel.
    pub normalize: Option<(f32, f32)>,
    /// Random crop (zero padding [`augment_padding`]) and random horizontal flip, seeded per epoch and position.
    pub augment: bool,
}

impl TransformConfig {
    /// The [`Pipeline`] for images of `h×w`: `[Resize(size)] [RandomCrop(out, padding) RandomHorizontalFlip]`,
    /// `padding = augment_padding(min side after the resize)`. Checks the sizes and the normalization.
    pub fn pipeline(&self, h: usize, w: usize) -> Result<Pipeline> {
        let (mut out_h, mut out_w) = (h, w);
        let mut steps = Vec::new();
        if let Some(size) = self.resize {
            if size == 0 {
                bail!("resize size must be at least 1");
            }
            (out_h, out_w) = resize_shorter_side(h, w, size);
            if out_h == 0 || out_w == 0 {
                bail!("resize to {size}: {h}×{w} images would become {out_h}×{out_w}");
            }
            steps.push(Step::Resize(size));
        }
        if self.augment {
            let padding = augment_padding(out_h.min(out_w));
            steps.push(Step::RandomCrop {
                size: (out_h, out_w),
                padding,
            });
            steps.push(Step::HorizontalFlip);
        }
        if let Some((mean, std)) = self.normalize {
            if !(std > 0.0 && std.is_finite() && mean.is_finite()) {
                bail!(
                    "normalize: need a finite mean and a positive std, got mean {mean}, std {std}"
                );
            }
        }
        Ok(Pipeline {
            steps,
            normalize: self.normalize.map(|(m, s)| (vec![m], vec![s])),
            erasing: None,
        })
    }
}

/// One batch: `images` is `n×c×h×w` f32 (NCHW; with one channel this is also NHWC), `labels[i]` and `indices[i]`
/// (the position in the dataset) belong to image `i`; `shape = Shape4 { n, c, h, w }`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Transformed pixels, `[n, c, h, w]` f32, `shape.len()` values.
    pub images: Vec<f32>,
    /// Class of each image, `[n]`.
    pub labels: Vec<usize>,
    /// Position in the dataset of each image, `[n]`.
    pub indices: Vec<usize>,
    /// `Shape4 { n, c, h, w }` of `images` (`n` is less than the batch size for a short last batch).
    pub shape: Shape4,
}

/// Streams an [`ImageDataset`] as batches of `batch_size` (the last one smaller if `n` is not a multiple), in
/// dataset order or shuffled per epoch, through a [`Pipeline`]. Cheap to clone (the dataset is shared).
#[derive(Clone, Debug)]
pub struct Loader {
    source: Arc<dyn ImageDataset>,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    pipeline: Arc<Pipeline>,
    normalize: Option<(Vec<f32>, Vec<f32>)>,
    c: usize,
    out_h: usize,
    out_w: usize,
    workers: usize,
    /// `(rank, ranks)`: this loader yields rank `rank`'s share ([`crate::dist::share`]) of every batch.
    shard: (usize, usize),
}

/// Purposes of the random streams, so that order and augmentation never share numbers.
const STREAM_ORDER: u64 = 0;
const STREAM_AUGMENT: u64 = 1;

/// Most workers a loader starts.
pub const MAX_WORKERS: usize = 64;

/// A generator determined by `(seed, epoch, stream, index)` alone.
fn rng_for(seed: u64, epoch: u64, stream: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    for (chunk, v) in key.chunks_exact_mut(8).zip([seed, epoch, stream, index]) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key)
}

impl Loader {
    /// The chapter's loader of an IDX [`Dataset`]: checks the arguments (`batch_size > 0`, a consistent dataset,
    /// `resize` size > 0, `std > 0`) and plans the transforms ([`TransformConfig::pipeline`]). Output images are
    /// `h×w` of the dataset, or [`resize_shorter_side`] of it with `resize`. One worker thread.
    pub fn new(
        dataset: Arc<Dataset>,
        batch_size: usize,
        shuffle: bool,
        seed: u64,
        transform: TransformConfig,
    ) -> Result<Loader> {
        let d = &*dataset;
        if d.h == 0 || d.w == 0 || d.images.len() != d.n * d.h * d.w || d.labels.len() != d.n {
            bail!(
                "inconsistent dataset: {} pixels and {} labels for {} images of {}×{}",
                d.images.len(),
                d.labels.len(),
                d.n,
                d.h,
                d.w
            );
        }
        let pipeline = transform.pipeline(d.h, d.w)?;
        Ok(Loader::with_pipeline(dataset, batch_size, shuffle, seed, pipeline)?.with_workers(1))
    }

    /// A loader of any [`ImageDataset`] through `pipeline`, with two workers. Errors: `batch_size` 0, a channel
    /// count other than 1 or 3, a pipeline whose output size is not fixed (variable-size images need a crop), a
    /// normalization with the wrong number of values or a non-positive std.
    pub fn with_pipeline(
        source: Arc<dyn ImageDataset>,
        batch_size: usize,
        shuffle: bool,
        seed: u64,
        pipeline: Pipeline,
    ) -> Result<Loader> {
        if batch_size == 0 {
            bail!("batch size must be at least 1");
        }
        let c = source.channels();
        if !(c == 1 || c == 3) {
            bail!("images must have 1 or 3 channels, the dataset has {c}");
        }
        let (out_h, out_w) = pipeline.output_size(source.image_size())?;
        let normalize = pipeline.normalize_for(c)?;
        if let Some(e) = &pipeline.erasing {
            e.check()?;
        }
        Ok(Loader {
            source,
            batch_size,
            shuffle,
            seed,
            pipeline: Arc::new(pipeline),
            normalize,
            c,
            out_h,
            out_w,
            workers: 2,
            shard: (0, 1),
        })
    }

    /// The same loader with `workers` threads (clamped to `1..=MAX_WORKERS`). The batches do not depend on it.
    pub fn with_workers(mut self, workers: usize) -> Loader {
        self.workers = workers.clamp(1, MAX_WORKERS);
        self
    }

    /// The same loader yielding only rank `rank`'s contiguous share of every batch of `ranks` ranks
    /// ([`crate::dist::share`]): the same images, in the same order and with the same augmentation, that the
    /// unsharded loader puts at those positions. A share may be empty.
    pub fn with_shard(mut self, rank: usize, ranks: usize) -> Result<Loader> {
        if ranks == 0 || rank >= ranks {
            bail!("rank {rank} of {ranks}: no such rank");
        }
        self.shard = (rank, ranks);
        Ok(self)
    }

    /// Images in the whole batch `b` (over all ranks): the batch size, less for a short last batch.
    pub fn global_batch_len(&self, b: usize) -> usize {
        self.len()
            .saturating_sub(b * self.batch_size)
            .min(self.batch_size)
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Number of items per epoch (`len()` of the dataset).
    pub fn len(&self) -> usize {
        self.source.len()
    }

    /// Whether the dataset is empty.
    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    /// The batch size given to [`Loader::new`].
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch: `ceil(n / batch_size)`.
    pub fn num_batches(&self) -> usize {
        self.len().div_ceil(self.batch_size)
    }

    /// Size `(h, w)` of the images in the batches.
    pub fn image_size(&self) -> (usize, usize) {
        (self.out_h, self.out_w)
    }

    /// Channels `c` of the images in the batches (1 or 3).
    pub fn channels(&self) -> usize {
        self.c
    }

    /// The dataset this loader reads.
    pub fn source(&self) -> &Arc<dyn ImageDataset> {
        &self.source
    }

    /// The transforms.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The order of epoch `epoch`: a permutation of `0..n`, depending only on `(seed, epoch)` when shuffling,
    /// `0..n` otherwise.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if self.shuffle {
            order.shuffle(&mut rng_for(self.seed, epoch as u64, STREAM_ORDER, 0));
        }
        order
    }

    /// Batch `b` of epoch `epoch`, prepared on the calling thread (what [`Loader::epoch`] yields as its `b`-th
    /// item). `Ok(None)` if `b >= num_batches()`.
    pub fn batch(&self, epoch: usize, b: usize) -> Result<Option<Batch>> {
        if b >= self.num_batches() {
            return Ok(None);
        }
        self.make_batch(&self.order(epoch), epoch, b).map(Some)
    }

    /// The batches of epoch `epoch`, in order; prepared by the worker threads while the caller works on earlier
    /// ones (each worker at most one finished batch ahead). An image that cannot be read or transformed ends the
    /// epoch with an `Err` naming it. Dropping the iterator early stops the threads.
    pub fn epoch(&self, epoch: usize) -> Epoch {
        let num_batches = self.num_batches();
        let workers = self.workers.min(num_batches);
        let order = Arc::new(self.order(epoch));
        let mut rxs = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for k in 0..workers {
            let (tx, rx) = sync_channel(1);
            let loader = self.clone();
            let order = order.clone();
            let handle = std::thread::Builder::new()
                .name(format!("resnet-loader-{k}"))
                .spawn(move || {
                    for b in (k..num_batches).step_by(workers) {
                        let batch = loader.make_batch(&order, epoch, b);
                        let failed = batch.is_err();
                        if tx.send(batch).is_err() || failed {
                            return; // the consumer is gone, or this epoch is over
                        }
                    }
                })
                .expect("cannot start a data-loader thread");
            rxs.push(rx);
            handles.push(handle);
        }
        Epoch {
            rxs,
            handles,
            next: 0,
            remaining: num_batches,
            failed: false,
        }
    }

    fn make_batch(&self, order: &[usize], epoch: usize, b: usize) -> Result<Batch> {
        let (rank, ranks) = self.shard;
        let mine = crate::dist::share(self.global_batch_len(b), rank, ranks);
        let start = b * self.batch_size + mine.start;
        let indices = order[start..start + mine.len()].to_vec();
        let (c, h, w) = (self.c, self.out_h, self.out_w);
        let size = c * h * w;
        let normalize = self
            .normalize
            .as_ref()
            .map(|(m, s)| (m.as_slice(), s.as_slice()));
        let mut images = vec![0.0f32; indices.len() * size];
        for (j, (&i, dst)) in indices
            .iter()
            .zip(images.chunks_exact_mut(size))
            .enumerate()
        {
            let img = self.source.image(i)?;
            let mut rng = rng_for(self.seed, epoch as u64, STREAM_AUGMENT, (start + j) as u64);
            let img = self
                .pipeline
                .apply(img, &mut rng)
                .with_context(|| self.source.describe(i))?;
            if (img.h, img.w, img.c) != (h, w, c) {
                bail!(
                    "{}: {}×{}×{} after the transforms, but the batch holds {h}×{w}×{c} (images of different sizes \
                     need a crop)",
                    self.source.describe(i),
                    img.h,
                    img.w,
                    img.c
                );
            }
            to_tensor_chw(&img, dst, normalize);
            // After the u8 steps, from the same generator: a pipeline without erasing draws exactly what it
            // always drew, so its batches (and resumed runs) are unchanged.
            if let Some(erasing) = &self.pipeline.erasing {
                erasing.apply(dst, c, h, w, &mut rng);
            }
        }
        let labels = indices.iter().map(|&i| self.source.label(i)).collect();
        Ok(Batch {
            images,
            labels,
            shape: Shape4::new(indices.len(), c, h, w),
            indices,
        })
    }
}

/// Iterator over one epoch's batches (see [`Loader::epoch`]), fed by the worker threads.
#[derive(Debug)]
pub struct Epoch {
    rxs: Vec<Receiver<Result<Batch>>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    remaining: usize,
    failed: bool,
}

impl Iterator for Epoch {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.remaining == 0 || self.failed {
            return None;
        }
        let k = self.next % self.rxs.len();
        match self.rxs[k].recv() {
            Ok(Ok(b)) => {
                self.next += 1;
                self.remaining -= 1;
                Some(Ok(b))
            }
            Ok(Err(e)) => {
                self.failed = true;
                Some(Err(e))
            }
            Err(_) => {
                // The worker died: surface its panic instead of ending the epoch quietly.
                self.failed = true;
                let handle = self.handles.remove(k);
                if let Err(panic) = handle.join() {
                    std::panic::resume_unwind(panic);
                }
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = if self.failed { 0 } else { self.remaining };
        (n, Some(n))
    }
}

impl ExactSizeIterator for Epoch {}

impl Drop for Epoch {
    fn drop(&mut self) {
        self.rxs.clear(); // makes the workers' next send fail, so they stop
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_streams_differ() {
        use rand::RngCore;
        let a = rng_for(1, 2, STREAM_ORDER, 0).next_u64();
        assert_eq!(a, rng_for(1, 2, STREAM_ORDER, 0).next_u64());
        assert_ne!(a, rng_for(1, 3, STREAM_ORDER, 0).next_u64());
        assert_ne!(a, rng_for(1, 2, STREAM_AUGMENT, 0).next_u64());
        assert_ne!(a, rng_for(2, 2, STREAM_ORDER, 0).next_u64());
    }

    /// Random erasing draws after the u8 steps from the same generator: a loader with it yields the batches of
    /// the loader without it (same crops and flips) with one rectangle of some images set to 0, reproducibly.
    #[test]
    fn erasing_follows_the_u8_steps() {
        use super::super::transforms::RandomErasing;
        let n = 24;
        let images: Vec<u8> = (0..n * 28 * 28).map(|i| (i * 31 % 255 + 1) as u8).collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        let ds: Arc<dyn ImageDataset> = Arc::new(Dataset::new(images, labels, 28, 28).unwrap());
        let pipeline = TransformConfig {
            augment: true,
            ..Default::default()
        }
        .pipeline(28, 28)
        .unwrap();
        let erasing = RandomErasing::new(0.5).unwrap();
        let plain = Loader::with_pipeline(ds.clone(), 8, true, 5, pipeline.clone()).unwrap();
        let erased = Loader::with_pipeline(ds, 8, true, 5, pipeline.with_erasing(erasing)).unwrap();
        let mut count = 0;
        for (b, (p, e)) in plain.epoch(1).zip(erased.epoch(1)).enumerate() {
            let (p, e) = (p.unwrap(), e.unwrap());
            assert_eq!(p.indices, e.indices);
            for j in 0..p.labels.len() {
                let (pi, ei) = (&p.images[j * 784..][..784], &e.images[j * 784..][..784]);
                // The generator of this position, past the crop and flip, decides the rectangle.
                let mut rng = rng_for(5, 1, STREAM_AUGMENT, (b * 8 + j) as u64);
                let img = ds_image(&plain, p.indices[j]);
                plain.pipeline().apply(img, &mut rng).unwrap();
                let mut want = pi.to_vec();
                if erasing.apply(&mut want, 1, 28, 28, &mut rng).is_some() {
                    count += 1;
                    assert_ne!(pi, ei);
                }
                assert_eq!(ei, &want[..]);
            }
        }
        assert!(count > 4 && count < 20, "{count} of 24 erased");
        assert_eq!(
            erased.batch(1, 0).unwrap().unwrap(),
            erased.batch(1, 0).unwrap().unwrap()
        );
    }

    fn ds_image(loader: &Loader, i: usize) -> super::super::transforms::Image {
        loader.source().image(i).unwrap()
    }

    /// The chapter's batches are what the loader made before the general pipeline: resize, then a random crop
    /// with zero padding `augment_padding(min side)` and a flip with probability ½, drawn from
    /// `rng_for(seed, epoch, AUGMENT, position)`, then ToTensor and Normalize — the same pixels, labels and order.
    #[test]
    fn chapter_batches_are_unchanged() {
        use super::super::transforms::{
            hflip_image, pad_crop, random_crop_params, resize_to, Image,
        };
        use rand::Rng;
        let n = 50;
        let images: Vec<u8> = (0..n * 28 * 28).map(|i| (i * 31 % 256) as u8).collect();
        let labels = (0..n).map(|i| (i % 10) as u8).collect();
        let ds = Arc::new(Dataset::new(images, labels, 28, 28).unwrap());
        let cfg = TransformConfig {
            resize: Some(40),
            normalize: Some((0.3, 0.4)),
            augment: true,
        };
        let loader = Loader::new(ds.clone(), 16, true, 11, cfg).unwrap();
        for epoch in [0, 3] {
            let order = loader.order(epoch);
            for (b, batch) in loader.epoch(epoch).enumerate() {
                let batch = batch.unwrap();
                for (j, &i) in batch.indices.iter().enumerate() {
                    let pos = b * 16 + j;
                    assert_eq!(i, order[pos]);
                    let r = resize_to(
                        &Image::new(ds.image(i).to_vec(), 28, 28, 1).unwrap(),
                        40,
                        40,
                    );
                    let mut rng = rng_for(11, epoch as u64, STREAM_AUGMENT, pos as u64);
                    let pad = augment_padding(40);
                    let (top, left) = random_crop_params(40, 40, 40, 40, pad, &mut rng).unwrap();
                    let mut a = pad_crop(&r, pad, top, left, 40, 40);
                    if rng.random_bool(0.5) {
                        hflip_image(&mut a);
                    }
                    let mut want = vec![0f32; 1600];
                    to_tensor_chw(&a, &mut want, Some((&[0.3], &[0.4])));
                    assert_eq!(
                        &batch.images[j * 1600..][..1600],
                        &want[..],
                        "epoch {epoch} position {pos}"
                    );
                    assert_eq!(batch.labels[j], i % 10);
                }
            }
        }
    }
}
