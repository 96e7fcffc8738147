//! Dynamic batching: requests from many connections wait in one bounded queue; a single thread owns the model,
//! takes every waiting image (up to `max_batch`) and runs one forward pass per input shape on the engine's
//! thread pool. Each image's logits go back to its request.
//!
//! It waits for more images (at most `max_wait`) only while some are being decoded (an image announces itself,
//! [`Batcher::announce`], before its decoding starts) or while it has fewer than the last pass had. So a lone
//! client never waits (measured with the chapter's network at 96×96, a fixed 5 ms wait halved its
//! throughput), and concurrent clients are gathered into one pass (with no wait at all, 8 clients got 30 %
//! less throughput than with a fixed 5 ms).
//!
//! In eval mode every layer computes each image of a batch on its own (batch norm uses its running
//! statistics), so an image's logits do not depend on what it was batched with, except in their last bits: the
//! engine picks each convolution's algorithm by batch size (Winograd needs enough tiles). `tests/serve.rs`
//! checks that they equal a batch of one's to f32 rounding, with the same ranking of the classes.

use super::metrics::Metrics;
use crate::infer::Model;
use crate::{Error, Result, Shape4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How the batcher gathers images.
#[derive(Clone, Copy, Debug)]
pub struct BatchOptions {
    /// Most images in one forward pass.
    pub max_batch: usize,
    /// Most input pixels (images × height × width) in one forward pass: large images go in smaller batches, so
    /// that the activations stay in memory that the batch size alone would not bound.
    pub max_batch_pixels: usize,
    /// Longest an image waits for others being decoded once it is first in line.
    pub max_wait: Duration,
    /// Most images waiting (beyond it, [`Batcher::submit`] refuses: the server answers 503).
    pub queue: usize,
    /// Flip test-time augmentation for every image.
    pub tta: bool,
}

/// One prepared image waiting for its logits.
struct Job {
    /// The `[c, h, w]` input.
    x: Vec<f32>,
    /// Its shape (`n` = 1).
    xs: Shape4,
    reply: oneshot::Sender<Result<Vec<f32>>>,
}

/// Why an image was not queued.
#[derive(Debug)]
pub enum Refused {
    /// The queue holds `queue` images already.
    Full,
    /// The batcher has stopped (the server is shutting down).
    Stopped,
}

/// The queue's sending end; cloning it is cheap. The batching thread ends once every clone is dropped and the
/// queue is empty.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
    /// Images announced and not yet queued (being decoded and prepared).
    preparing: Arc<AtomicUsize>,
}

/// An image on its way to the queue (see [`Batcher::announce`]); dropping it withdraws the announcement.
pub struct Announced {
    preparing: Arc<AtomicUsize>,
}

impl Drop for Announced {
    fn drop(&mut self) {
        self.preparing.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Batcher {
    /// Starts the batching thread, which owns `model`.
    pub fn start(
        model: Model,
        opts: BatchOptions,
        metrics: Arc<Metrics>,
    ) -> (Batcher, JoinHandle<()>) {
        let (tx, rx) = sync_channel(opts.queue.max(1));
        let m = metrics.clone();
        let preparing = Arc::new(AtomicUsize::new(0));
        let p = preparing.clone();
        let handle = std::thread::Builder::new()
            .name("resnet-batcher".into())
            .spawn(move || run(model, opts, rx, &p, &m))
            .expect("spawn the batching thread");
        (
            Batcher {
                tx,
                metrics,
                preparing,
            },
            handle,
        )
    }

    /// Says that an image will be submitted soon (its decoding starts), so that a forward pass about to start
    /// may wait for it.
    pub fn announce(&self) -> Announced {
        self.preparing.fetch_add(1, Ordering::SeqCst);
        Announced {
            preparing: self.preparing.clone(),
        }
    }

    /// Queues one announced image (`x`, shape `xs` with `n` = 1) without waiting; its logits arrive on the
    /// receiver.
    pub fn submit(
        &self,
        announced: Announced,
        x: Vec<f32>,
        xs: Shape4,
    ) -> std::result::Result<oneshot::Receiver<Result<Vec<f32>>>, Refused> {
        let (reply, rx) = oneshot::channel();
        // Counted before sending, so that the batcher's decrement can never come first.
        self.metrics.queue_depth.inc();
        let sent = self.tx.try_send(Job { x, xs, reply });
        // Queued (or refused): no longer on its way.
        drop(announced);
        match sent {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.metrics.queue_depth.dec();
                Err(match e {
                    TrySendError::Full(_) => Refused::Full,
                    TrySendError::Disconnected(_) => Refused::Stopped,
                })
            }
        }
    }
}

/// The batching thread: gather, group by shape, forward, reply; until the queue is closed and empty.
fn run(
    mut model: Model,
    opts: BatchOptions,
    rx: Receiver<Job>,
    preparing: &AtomicUsize,
    metrics: &Metrics,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(opts.max_batch);
    // Images in the last forward pass(es).
    let mut last = 1;
    while let Ok(first) = rx.recv() {
        jobs.push(first);
        let deadline = Instant::now() + opts.max_wait;
        while jobs.len() < opts.max_batch {
            // Everything already queued; then, until the deadline, whatever is still being decoded, and as many
            // images as the last pass had (under steady load the next requests are still on the wire).
            let wait = if preparing.load(Ordering::SeqCst) > 0 || jobs.len() < last {
                deadline.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match rx.recv_timeout(wait.min(POLL)) {
                Ok(job) => jobs.push(job),
                Err(RecvTimeoutError::Timeout) if !wait.is_zero() => continue,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        metrics.queue_depth.dec_by(jobs.len() as i64);
        last = jobs.len();
        // Images of one shape share a forward pass (a stored pipeline may keep each image's aspect ratio).
        while !jobs.is_empty() {
            let xs = jobs[0].xs;
            let (mut group, rest): (Vec<Job>, Vec<Job>) = jobs.drain(..).partition(|j| j.xs == xs);
            jobs = rest;
            let most = (opts.max_batch_pixels / (xs.h * xs.w).max(1)).max(1);
            while group.len() > most {
                let tail = group.split_off(most);
                forward_group(&mut model, opts.tta, group, metrics);
                group = tail;
            }
            forward_group(&mut model, opts.tta, group, metrics);
        }
    }
}

/// How often a waiting batcher looks again at the images being decoded.
const POLL: Duration = Duration::from_micros(200);

/// One forward pass over `group` (all of one shape), each image's logits sent to its request.
fn forward_group(model: &mut Model, tta: bool, group: Vec<Job>, metrics: &Metrics) {
    let n = group.len();
    let one = group[0].xs;
    metrics.batch_size.observe(n as f64);
    metrics.forward_passes.inc();
    let mut x = Vec::with_capacity(n * one.len());
    for job in &group {
        x.extend_from_slice(&job.x);
    }
    let xs = Shape4::new(n, one.c, one.h, one.w);
    let started = Instant::now();
    let result = model.logits(&x, xs, tta);
    metrics
        .forward_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.images.inc_by(n as u64);
    match result {
        Ok(logits) => {
            let k = logits.len() / n;
            for (job, row) in group.into_iter().zip(logits.chunks_exact(k)) {
                // A request that gave up (timed out, connection closed) no longer listens: nothing to do.
                let _ = job.reply.send(Ok(row.to_vec()));
            }
        }
        Err(e) => {
            for job in group {
                let _ = job.reply.send(Err(Error::new(e.to_string())));
            }
        }
    }
}
