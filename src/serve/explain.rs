//! `POST /v1/explain`'s worker: one thread that owns the trainable network (in eval mode) and runs Grad-CAM,
//! outside the batched forward path. It has its own bounded queue (a full one answers 503), and costs
//! `/v1/predict` nothing while nobody asks: it sleeps on its queue.

use super::handlers::ApiError;
use super::ServeOptions;
use crate::data::image_file::decode_image_within;
use crate::explain::{Explainer, Target};
use crate::infer::{check_input_side, ranked};
use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// One request: its images, `?class=`, `?layer=`, `?topk=`, and where the answer goes.
struct Job {
    images: Vec<(String, Bytes)>,
    class: Option<String>,
    layer: Option<String>,
    topk: usize,
    reply: oneshot::Sender<Result<Vec<Value>, ApiError>>,
}

/// The handlers' end of the explain queue.
#[derive(Clone)]
pub(super) struct ExplainQueue {
    tx: SyncSender<Job>,
    limit: usize,
}

impl ExplainQueue {
    /// Starts the worker with a queue of `limit` requests waiting (besides the one it runs).
    pub(super) fn start(
        explainer: Explainer,
        limit: usize,
        opts: &ServeOptions,
    ) -> (ExplainQueue, JoinHandle<()>) {
        let (tx, rx) = sync_channel(limit);
        let (max_decode, max_side) = (opts.max_decode_bytes, opts.max_input_side);
        let worker = std::thread::Builder::new()
            .name("explain".into())
            .spawn(move || work(explainer, rx, max_decode, max_side))
            .expect("spawning the explain thread");
        (ExplainQueue { tx, limit }, worker)
    }

    /// Queues a request (503 when the queue is full) and waits for its explanations.
    pub(super) async fn explain(
        &self,
        images: Vec<(String, Bytes)>,
        class: Option<String>,
        layer: Option<String>,
        topk: usize,
    ) -> Result<Vec<Value>, ApiError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            images,
            class,
            layer,
            topk,
            reply,
        };
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => ApiError::overloaded(format!(
                "the explain queue holds {} requests already: retry later",
                self.limit
            )),
            TrySendError::Disconnected(_) => ApiError::overloaded("the server is shutting down"),
        })?;
        answer
            .await
            .map_err(|_| ApiError::overloaded("the server is shutting down"))?
    }
}

/// The worker: one request at a time until every sender is gone.
fn work(mut explainer: Explainer, rx: Receiver<Job>, max_decode: u64, max_side: usize) {
    for job in rx {
        let answer = explain_all(&mut explainer, &job, max_decode, max_side);
        let _ = job.reply.send(answer);
    }
}

/// Each image of `job`: its prediction and its heatmap (PNG in base64, and the raw grid).
fn explain_all(
    explainer: &mut Explainer,
    job: &Job,
    max_decode: u64,
    max_side: usize,
) -> Result<Vec<Value>, ApiError> {
    let bad = |e: crate::Error| ApiError::bad_request(e.to_string().replacen("--", "", 1));
    let layer = explainer.layer(job.layer.as_deref()).map_err(bad)?;
    let target = match &job.class {
        Some(c) => Target::Class(explainer.class(c).map_err(bad)?),
        None => Target::Top1,
    };
    let mut answers = Vec::with_capacity(job.images.len());
    for (name, bytes) in &job.images {
        let c = explainer.channels();
        let img = decode_image_within(bytes, Path::new(name), c, max_decode)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        check_input_side(&explainer.preprocess, img.h, img.w, max_side, name).map_err(|e| {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
        })?;
        let why = explainer
            .explain(img, name, target, &layer)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let png = why.overlay_png().map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        let names = &explainer.names;
        let probs = &why.probabilities;
        let order = ranked(probs);
        let cam = &why.cam;
        let top: Vec<Value> = order
            .iter()
            .take(job.topk)
            .map(|&k| json!({"index": k, "class": names[k], "probability": probs[k]}))
            .collect();
        answers.push(json!({
            "image": name,
            "index": order[0],
            "class": names[order[0]],
            "top": top,
            "explain": {
                "layer": cam.layer,
                "index": cam.class,
                "class": names[cam.class],
                "probability": probs[cam.class],
                "grid": cam.map.chunks(cam.w).collect::<Vec<_>>(),
                "width": why.image.w,
                "height": why.image.h,
                "png_base64": base64(&png),
            },
        }));
    }
    Ok(answers)
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_is_rfc_4648() {
        // RFC 4648 §10's test vectors.
        for (raw, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), want);
        }
    }
}
