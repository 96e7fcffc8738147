//! `resnet serve`: a model behind HTTP ([`crate::serve`]).

use super::group_thousands;
use crate::data::transforms::check_resize;
use crate::explain::Explainer;
use crate::infer::Model;
use crate::nn::ArchName;
use crate::out::status_line;
use crate::serve::{
    serve, BatchOptions, ConnLimits, ServeOptions, MAX_DECODE_BYTES, MAX_INPUT_SIDE,
};
use crate::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// Most images `serve --max-batch` gathers into one forward pass.
pub const MAX_SERVE_BATCH: usize = 1024;
/// Most images `serve --queue` lets wait.
pub const MAX_SERVE_QUEUE: usize = 1 << 16;
/// Most connections `serve --max-connections` allows (each holds a file descriptor).
pub const MAX_SERVE_CONNECTIONS: usize = 1 << 16;

/// `resnet serve` arguments.
#[derive(Args)]
pub struct ServeArgs {
    /// A model file: ours, safetensors saved from PyTorch, or torchvision's `.pth` state dict.
    #[arg(long)]
    pub weights: PathBuf,
    /// Address to listen on (port 0: any free port; the one taken is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Refuse weights of another network than this one.
    #[arg(long, value_enum)]
    pub arch: Option<ArchName>,
    /// Input size (shorter side) of a one-channel model; default: the size stored in the weights.
    #[arg(long)]
    pub resize: Option<usize>,
    /// Most images in one forward pass.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Most input pixels (images × height × width) in one forward pass: 8 images of 224×224 by default
    /// (resnet50's throughput at batch 8 is its throughput at 32, in a third of the memory); the chapter's 96×96
    /// images still go 32 at a time.
    #[arg(long, default_value_t = 8 * 224 * 224)]
    pub max_batch_pixels: usize,
    /// Longest the first image of a batch waits for more, milliseconds.
    #[arg(long, default_value_t = 5)]
    pub max_wait_ms: u64,
    /// Most images waiting for a forward pass; beyond it requests get 503 with Retry-After.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,
    /// Largest request body, MiB.
    #[arg(long, default_value_t = 16)]
    pub max_body_mb: usize,
    /// Most images in one multipart request.
    #[arg(long, default_value_t = 64)]
    pub max_images: usize,
    /// Longest a request may take, seconds: reading the body (else 408), then waiting for the answer (else 503).
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Longest a client may take to send a request's headers, seconds (from the connection's start, or the end of
    /// the previous answer on a kept-alive one); past it the connection is closed.
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Most connections open at once; beyond it a new connection is answered 503 (JSON, Retry-After) and closed.
    /// Keep it well below the open-file limit (`ulimit -n`).
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// Classes returned when a request does not say (`?topk=`).
    #[arg(long, default_value_t = 5)]
    pub topk: usize,
    /// Test-time augmentation for every image: the mean of its and its mirror's logits.
    #[arg(long)]
    pub tta: bool,
    /// Run each convolution with the algorithm a batch of one gets, so that an image's answer is bit for bit the
    /// same whatever it is batched with; `--batch-invariant=false` lets large batches pick faster algorithms
    /// (answers then equal to f32 rounding).
    #[arg(long, default_value_t = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub batch_invariant: bool,
    /// Most `POST /v1/explain` requests waiting for the explain worker, which runs one at a time outside the
    /// batched path (a request past them gets 503).
    #[arg(long, default_value_t = 4)]
    pub explain_queue: usize,
}

impl ServeArgs {
    /// The checked options (no file is read).
    pub fn options(&self) -> Result<ServeOptions> {
        if self.max_batch == 0 || self.max_batch > MAX_SERVE_BATCH {
            bail!(
                "--max-batch must be between 1 and {MAX_SERVE_BATCH}, got {}",
                self.max_batch
            );
        }
        if self.max_batch_pixels == 0 || self.max_batch_pixels > 1 << 26 {
            bail!(
                "--max-batch-pixels must be between 1 and {}, got {}",
                1 << 26,
                self.max_batch_pixels
            );
        }
        if self.queue == 0 || self.queue > MAX_SERVE_QUEUE {
            bail!(
                "--queue must be between 1 and {MAX_SERVE_QUEUE}, got {}",
                self.queue
            );
        }
        if self.max_wait_ms > 10_000 {
            bail!(
                "--max-wait-ms must be at most 10000, got {}",
                self.max_wait_ms
            );
        }
        if self.max_body_mb == 0 || self.max_body_mb > 1024 {
            bail!(
                "--max-body-mb must be between 1 and 1024, got {}",
                self.max_body_mb
            );
        }
        if self.max_images == 0 || self.max_images > MAX_SERVE_BATCH {
            bail!(
                "--max-images must be between 1 and {MAX_SERVE_BATCH}, got {}",
                self.max_images
            );
        }
        if !(self.timeout.is_finite() && self.timeout > 0.0 && self.timeout <= 3600.0) {
            bail!(
                "--timeout must be a number of seconds above 0 and at most 3600, got {}",
                self.timeout
            );
        }
        if !(self.header_timeout.is_finite()
            && self.header_timeout > 0.0
            && self.header_timeout <= 3600.0)
        {
            bail!(
                "--header-timeout must be a number of seconds above 0 and at most 3600, got {}",
                self.header_timeout
            );
        }
        if self.max_connections == 0 || self.max_connections > MAX_SERVE_CONNECTIONS {
            bail!(
                "--max-connections must be between 1 and {MAX_SERVE_CONNECTIONS}, got {}",
                self.max_connections
            );
        }
        if self.topk == 0 {
            bail!("--topk must be at least 1");
        }
        if self.explain_queue == 0 || self.explain_queue > MAX_SERVE_QUEUE {
            bail!(
                "--explain-queue must be between 1 and {MAX_SERVE_QUEUE}, got {}",
                self.explain_queue
            );
        }
        self.resize.map_or(Ok(()), check_resize)?;
        Ok(ServeOptions {
            addr: self.addr,
            batch: BatchOptions {
                max_batch: self.max_batch,
                max_batch_pixels: self.max_batch_pixels,
                max_wait: Duration::from_millis(self.max_wait_ms),
                queue: self.queue,
                tta: self.tta,
            },
            max_body: self.max_body_mb << 20,
            max_images: self.max_images,
            timeout: Duration::from_secs_f64(self.timeout),
            max_decode_bytes: MAX_DECODE_BYTES,
            max_input_side: MAX_INPUT_SIDE,
            topk: self.topk,
            limits: ConnLimits {
                header_timeout: Duration::from_secs_f64(self.header_timeout),
                max_connections: self.max_connections,
            },
            explain_queue: self.explain_queue,
        })
    }
}

/// Loads the model and serves it until SIGTERM or Ctrl-C.
pub fn run(args: &ServeArgs) -> Result<()> {
    let opts = args.options()?;
    let mut model = Model::load(&args.weights, args.arch, args.resize)?;
    model.net.set_batch_invariant(args.batch_invariant);
    model.reserve(opts.batch.max_batch, opts.batch.max_batch_pixels)?;
    let explainer = Explainer::load(&args.weights, args.arch, args.resize)?;
    // A status line: dropped if standard output is a closed pipe, the server serves regardless (see crate::out).
    status_line(format_args!(
        "serving {} ({}, {} classes, {}) from {}",
        model.net.config().name(),
        group_thousands(model.params),
        model.names.len(),
        model.net.precision(),
        args.weights.display()
    ));
    serve(model, explainer, opts)
}
