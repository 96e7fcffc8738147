//! Dynamic batching: requests from many connections wait in one bounded queue; a single thread owns the model,
//! takes the first waiting image, gathers more for up to `max_wait` (or until `max_batch`), and runs one
//! forward pass per input shape on the engine's thread pool. Each image's logits go back to its request.
//!
//! In eval mode every layer computes each image of a batch on its own (batch norm uses its running
//! statistics), so an image's logits do not depend on what it was batched with, except in their last bits: the
//! engine picks each convolution's algorithm by batch size (Winograd needs enough tiles). `tests/serve.rs`
//! checks that they equal a batch of one's to f32 rounding, with the same ranking of the classes.

use super::metrics::Metrics;
use crate::infer::Model;
use crate::{Error, Result, Shape4};
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
    /// Longest an image waits for others once it is first in line.
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
        let handle = std::thread::Builder::new()
            .name("resnet-batcher".into())
            .spawn(move || run(model, opts, rx, &m))
            .expect("spawn the batching thread");
        (Batcher { tx, metrics }, handle)
    }

    /// Queues one image (`x`, shape `xs` with `n` = 1) without waiting; its logits arrive on the receiver.
    pub fn submit(
        &self,
        x: Vec<f32>,
        xs: Shape4,
    ) -> std::result::Result<oneshot::Receiver<Result<Vec<f32>>>, Refused> {
        let (reply, rx) = oneshot::channel();
        // Counted before sending, so that the batcher's decrement can never come first.
        self.metrics.queue_depth.inc();
        match self.tx.try_send(Job { x, xs, reply }) {
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
fn run(mut model: Model, opts: BatchOptions, rx: Receiver<Job>, metrics: &Metrics) {
    let mut jobs: Vec<Job> = Vec::with_capacity(opts.max_batch);
    while let Ok(first) = rx.recv() {
        jobs.push(first);
        let deadline = Instant::now() + opts.max_wait;
        while jobs.len() < opts.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(job) => jobs.push(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        metrics.queue_depth.dec_by(jobs.len() as i64);
        // Images of one shape share a forward pass (a stored pipeline may keep each image's aspect ratio).
        while !jobs.is_empty() {
            let xs = jobs[0].xs;
            let (group, rest): (Vec<Job>, Vec<Job>) = jobs.drain(..).partition(|j| j.xs == xs);
            jobs = rest;
            forward_group(&mut model, opts.tta, group, metrics);
        }
    }
}

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
