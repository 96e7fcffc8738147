//! `resnet serve`: a model behind HTTP. axum on a small tokio runtime takes the requests; decoding and
//! preprocessing run on the engine's rayon pool; one batching thread owns the network and runs the forward
//! passes (see [`batcher`]).
//!
//! | route | |
//! |---|---|
//! | `GET /` | a page to try the model: drop an image, see the top-5 classes |
//! | `POST /v1/predict[?topk=K&logits=true]` | a PNG/JPEG body, or multipart with one or more images |
//! | `POST /v1/explain[?class=NAME&layer=NAME&topk=K]` | the same bodies: predictions with Grad-CAM heatmaps ([`explain`]) |
//! | `GET /v1/model` | architecture, input, class names, parameter count |
//! | `GET /healthz` | `{"status":"ok"}` |
//! | `GET /metrics` | OpenMetrics text (Prometheus) |
//!
//! Every error is JSON (`{"error": "...", "status": N}`) with its 4xx status, or 503 with `Retry-After` when the
//! queue is full or the connections are at `--max-connections`; hyper's own rejections of requests it cannot
//! parse are made JSON too (`rejections`). Headers must arrive within `--header-timeout` ([`conn`]).

pub mod batcher;
pub mod conn;
pub mod explain;
pub mod handlers;
pub mod metrics;
mod rejections;

pub use batcher::{BatchOptions, Batcher};
pub use conn::ConnLimits;
pub use handlers::parse_predict;
pub use metrics::Metrics;

use crate::error::Context;
use crate::explain::Explainer;
use crate::infer::Model;
use crate::{Error, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Everything `resnet serve` can be told.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Where to listen (port 0: any free port; the one taken is printed).
    pub addr: SocketAddr,
    /// Dynamic batching.
    pub batch: BatchOptions,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Most images in one multipart request.
    pub max_images: usize,
    /// Longest a request may take: reading its body (else 408), then waiting for its predictions (else 503).
    pub timeout: Duration,
    /// Decoder memory budget per image, bytes.
    pub max_decode_bytes: u64,
    /// Largest side of an image after preprocessing (a model without a resize step sees uploads at their size).
    pub max_input_side: usize,
    /// Classes returned when `?topk=` is not given.
    pub topk: usize,
    /// The header-read timeout and the connection cap.
    pub limits: ConnLimits,
    /// Most `/v1/explain` requests waiting for the explain worker (besides the one it runs).
    pub explain_queue: usize,
}

/// Serves `model` until SIGTERM or Ctrl-C, then finishes the requests in flight and returns; `explainer` (the
/// same weights on the trainable network) answers `/v1/explain` on a thread of its own. Prints
/// `listening on http://ADDR` once the socket is bound.
pub fn serve(model: Model, explainer: Explainer, opts: ServeOptions) -> Result<()> {
    let metrics = Arc::new(Metrics::new(opts.batch.max_batch));
    let app = handlers::App::new(&model, &opts, metrics.clone());
    let (explain, explain_worker) =
        explain::ExplainQueue::start(explainer, opts.explain_queue, &opts);
    let (batcher, worker) = Batcher::start(model, opts.batch, metrics);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("serve: cannot start the runtime")?;
    let result = runtime.block_on(handlers::run(app, batcher, explain, &opts));
    // Connections still open past the shutdown deadline hold the router, and with it queue senders: dropping the
    // runtime drops them (a half-sent request once kept the server up until its client left).
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    // The router, and with it the last queue sender, is gone: the batcher finishes what is queued and stops.
    worker
        .join()
        .map_err(|_| Error::new("serve: the batching thread panicked"))?;
    explain_worker
        .join()
        .map_err(|_| Error::new("serve: the explain thread panicked"))?;
    result
}

/// A signal to stop: SIGTERM (what `kill`, systemd and Kubernetes send) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = ctrl_c => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Decoder memory budget per uploaded image (128 MiB: a 40-megapixel RGB photo). Decoding runs on the engine's
/// pool, so at most one image per worker thread is decoded at a time.
pub const MAX_DECODE_BYTES: u64 = 128 << 20;
pub use crate::data::transforms::MAX_INPUT_SIDE;

/// How long shutdown waits for requests in flight before it stops anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
