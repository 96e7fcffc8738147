//! The routes, their JSON errors, and the middleware that times and counts every answer.

use super::batcher::{Batcher, Refused};
use super::conn::{serve_connections, Drained};
use super::explain::ExplainQueue;
use super::metrics::{ErrorLabels, Metrics, RequestLabels};
use super::{shutdown_signal, ServeOptions, SHUTDOWN_GRACE};
use crate::data::image_file::decode_image_within;
use crate::data::transforms::Step;
use crate::data::Pipeline;
use crate::error::Context;
use crate::infer::{check_input_side, prepare, ranked, softmax, Model};
use crate::out::status_line;
use crate::{Result, Shape4};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// The page at `/`: plain HTML, CSS and JS, nothing fetched from elsewhere.
const PAGE: &str = include_str!("page.html");

/// What every handler shares.
pub(super) struct App {
    metrics: Arc<Metrics>,
    preprocess: Arc<Pipeline>,
    channels: usize,
    names: Arc<Vec<String>>,
    /// `GET /v1/model`'s answer, made once.
    model_info: Value,
    opts: ServeOptions,
}

impl App {
    pub(super) fn new(model: &Model, opts: &ServeOptions, metrics: Arc<Metrics>) -> App {
        let p = &model.preprocess;
        // The input size, where the preprocessing fixes it (what it makes of a square image).
        let sized = p
            .steps
            .iter()
            .any(|s| matches!(s, Step::Resize(_) | Step::CenterCrop(..)));
        let input_size = sized.then(|| {
            let (h, w) = p.prepared_size(256, 256);
            [h, w]
        });
        let model_info = json!({
            "weights": model.path.file_name().map(|f| f.to_string_lossy().to_string()),
            "architecture": model.net.config().name(),
            "precision": model.net.precision(),
            "input_channels": model.channels(),
            "input_size": input_size,
            "trained_size": model.trained_size,
            "preprocess": p,
            "num_classes": model.names.len(),
            "classes": model.names,
            "parameters": model.params,
            "max_batch": opts.batch.max_batch,
            "tta": opts.batch.tta,
        });
        App {
            metrics,
            preprocess: Arc::new(model.preprocess.clone()),
            channels: model.channels(),
            names: Arc::new(model.names.clone()),
            model_info,
            opts: opts.clone(),
        }
    }
}

/// State of a request handler: the shared [`App`] and the batcher's queue.
#[derive(Clone)]
struct Shared {
    app: Arc<App>,
    batcher: Batcher,
    explain: ExplainQueue,
}

/// Binds, prints the address, serves until a stop signal, then drains (at most [`SHUTDOWN_GRACE`] past the
/// request timeout; connections still open then are dropped with the runtime, see [`super::serve`]).
pub(super) async fn run(
    app: App,
    batcher: Batcher,
    explain: ExplainQueue,
    opts: &ServeOptions,
) -> Result<()> {
    let counters = app.metrics.clone();
    let shared = Shared {
        app: Arc::new(app),
        batcher,
        explain,
    };
    let router = Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/model", get(model_info))
        .route("/v1/predict", post(predict))
        .route("/v1/explain", post(explain_images))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), observe))
        .layer(DefaultBodyLimit::max(opts.max_body))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .with_context(|| format!("serve: cannot listen on {}", opts.addr))?;
    let local = listener.local_addr().context("serve")?;
    // Status lines are dropped when standard output cannot be written (a log reader that died): the server keeps
    // serving (see crate::out).
    status_line(format_args!("listening on http://{local}"));
    let grace = opts.timeout + SHUTDOWN_GRACE;
    match serve_connections(
        listener,
        router,
        opts.limits,
        counters,
        shutdown_signal(),
        grace,
    )
    .await
    {
        Drained::All => status_line(format_args!("stopped: requests in flight answered")),
        Drained::Dropped => status_line(format_args!(
            "stopped: requests still open after {} s were dropped",
            grace.as_secs()
        )),
    }
    Ok(())
}

/// An error answer: `{"error": message, "status": code}`, counted under `kind`.
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        kind: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(super) fn overloaded(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
    }
}

/// The kind of an error answer, for the middleware to count.
#[derive(Clone, Copy)]
struct ErrorKind(&'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "status": self.status.as_u16()});
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r.extensions_mut().insert(ErrorKind(self.kind));
        r
    }
}

/// Counts and times every answer, by route and status (and errors by kind).
async fn observe(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let path = match req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
    {
        Some("/") => "/",
        Some("/healthz") => "/healthz",
        Some("/metrics") => "/metrics",
        Some("/v1/model") => "/v1/model",
        Some("/v1/predict") => "/v1/predict",
        Some("/v1/explain") => "/v1/explain",
        _ => "other",
    };
    let r = next.run(req).await;
    let m = &s.app.metrics;
    m.requests
        .get_or_create(&RequestLabels {
            path,
            status: r.status().as_u16(),
        })
        .inc();
    if let Some(ErrorKind(kind)) = r.extensions().get::<ErrorKind>() {
        m.errors.get_or_create(&ErrorLabels { kind }).inc();
    }
    m.latency.observe(started.elapsed().as_secs_f64());
    r
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(s): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.app.metrics.render(),
    )
        .into_response()
}

async fn model_info(State(s): State<Shared>) -> Json<Value> {
    Json(s.app.model_info.clone())
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {}: try GET /, GET /v1/model, POST /v1/predict, POST /v1/explain, GET /healthz, GET /metrics",
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {} (POST /v1/predict and /v1/explain; GET for the others)",
            req.method(),
            req.uri().path()
        ),
    )
}

/// `POST /v1/predict`'s query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictQuery {
    topk: Option<usize>,
    logits: Option<bool>,
}

/// `POST /v1/predict`: read the images (408 past the timeout), decode and prepare them on the engine's pool,
/// queue them (503 when full) and answer their classes.
async fn predict(
    State(s): State<Shared>,
    req: Request,
) -> std::result::Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let opts = &s.app.opts;
    let q = parse_query(req.uri())?;
    let topk = q.topk.unwrap_or(opts.topk);
    let images = read_images_in_time(req, opts).await?;
    let left = opts.timeout.saturating_sub(started.elapsed());
    let answers = tokio::time::timeout(left, classify(&s, images))
        .await
        .map_err(|_| {
            ApiError::overloaded(format!(
                "no prediction within {} s: the server is overloaded",
                opts.timeout.as_secs_f64()
            ))
        })??;
    let names = &s.app.names;
    let predictions: Vec<Value> = answers
        .into_iter()
        .map(|(name, logits)| {
            let probs = softmax(&logits);
            let order = ranked(&probs);
            let top: Vec<Value> = order
                .iter()
                .take(topk)
                .map(|&c| json!({"index": c, "class": names[c], "probability": probs[c]}))
                .collect();
            let mut v = json!({
                "image": name,
                "index": order[0],
                "class": names[order[0]],
                "top": top,
            });
            if q.logits == Some(true) {
                v["logits"] = json!(logits);
            }
            v
        })
        .collect();
    Ok(Json(json!({ "predictions": predictions })))
}

/// `POST /v1/explain`'s query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainQuery {
    topk: Option<usize>,
    class: Option<String>,
    layer: Option<String>,
}

/// `POST /v1/explain[?class=NAME&layer=NAME&topk=K]`: the bodies `/v1/predict` takes; each image's prediction and
/// its Grad-CAM heatmap (a PNG in base64 and the raw grid), computed by the explain worker outside the batched
/// path (503 when its queue is full).
async fn explain_images(
    State(s): State<Shared>,
    req: Request,
) -> std::result::Result<Json<Value>, ApiError> {
    let started = Instant::now();
    let opts = &s.app.opts;
    let Query(q) = Query::<ExplainQuery>::try_from_uri(req.uri())
        .map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    if q.topk == Some(0) {
        return Err(ApiError::bad_request("topk must be at least 1"));
    }
    for (what, v) in [("class", &q.class), ("layer", &q.layer)] {
        if v.as_ref().is_some_and(|v| v.is_empty() || v.len() > 256) {
            return Err(ApiError::bad_request(format!(
                "{what} must be 1 to 256 bytes"
            )));
        }
    }
    let images = read_images_in_time(req, opts).await?;
    let left = opts.timeout.saturating_sub(started.elapsed());
    let topk = q.topk.unwrap_or(opts.topk);
    let answers = tokio::time::timeout(left, s.explain.explain(images, q.class, q.layer, topk))
        .await
        .map_err(|_| {
            ApiError::overloaded(format!(
                "no explanation within {} s: the server is overloaded",
                opts.timeout.as_secs_f64()
            ))
        })??;
    Ok(Json(json!({ "predictions": answers })))
}

/// `?topk=K&logits=BOOL`, both optional, nothing else.
fn parse_query(uri: &axum::http::Uri) -> std::result::Result<PredictQuery, ApiError> {
    let Query(q) = Query::<PredictQuery>::try_from_uri(uri)
        .map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    if q.topk == Some(0) {
        return Err(ApiError::bad_request("topk must be at least 1"));
    }
    Ok(q)
}

/// One image ready for the network: its `[c, h, w]` values and shape (`n` = 1).
pub type Prepared = (Vec<f32>, Shape4);

/// What `POST /v1/predict` makes of a request before it queues the images (query, body, decoding,
/// preprocessing, limits), run to completion on the calling thread: the prepared inputs, or the error answer's
/// status and message. The fuzz target `request` drives it (`crate::fuzzing::request`).
pub fn parse_predict(
    query: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
    preprocess: &Pipeline,
    channels: usize,
    opts: &ServeOptions,
) -> std::result::Result<Vec<Prepared>, (u16, String)> {
    let fail = |e: ApiError| (e.status.as_u16(), e.message);
    let mut req = Request::builder()
        .method("POST")
        .uri(format!("/v1/predict?{query}"));
    if let Some(ct) = content_type {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    // What hyper would refuse before any handler ran.
    let req = req
        .body(axum::body::Body::from(body))
        .map_err(|e| (400, e.to_string()))?;
    parse_query(req.uri()).map_err(fail)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| (500, e.to_string()))?;
    let images = runtime.block_on(read_images(req, opts)).map_err(fail)?;
    images
        .iter()
        .map(|(name, bytes)| prepare_upload(preprocess, channels, opts, bytes, name).map_err(fail))
        .collect()
}

/// [`read_images`] within `--timeout` (408 past it).
async fn read_images_in_time(
    req: Request,
    opts: &ServeOptions,
) -> std::result::Result<Vec<(String, Bytes)>, ApiError> {
    tokio::time::timeout(opts.timeout, read_images(req, opts))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!(
                    "the request body took longer than {} s",
                    opts.timeout.as_secs_f64()
                ),
            )
        })?
}

/// The request's images with their names: a multipart body's parts (their file names, else field names), or the
/// whole body as one image named `body`.
async fn read_images(
    req: Request,
    opts: &ServeOptions,
) -> std::result::Result<Vec<(String, Bytes)>, ApiError> {
    // A body announced larger than the limit is refused from its header, before any of it is waited for.
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = announced.filter(|&n| n > opts.max_body as u64) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the body is announced as {n} bytes (Content-Length), more than the limit of {} (--max-body-mb)",
                opts.max_body
            ),
        ));
    }
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/")
        });
    let mut images = Vec::new();
    if multipart {
        let mut form = axum::extract::Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::new(e.status(), "bad_request", e.body_text()))?;
        loop {
            let field = match form.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(body_error(e.status(), e.body_text())),
            };
            if images.len() == opts.max_images {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("more than {} images in one request", opts.max_images),
                ));
            }
            let name = field
                .file_name()
                .or(field.name())
                .unwrap_or("part")
                .chars()
                .take(256)
                .collect::<String>();
            let bytes = field
                .bytes()
                .await
                .map_err(|e| body_error(e.status(), e.body_text()))?;
            images.push((name, bytes));
        }
        if images.is_empty() {
            return Err(ApiError::bad_request("the multipart body holds no image"));
        }
    } else {
        let bytes = Bytes::from_request(req, &())
            .await
            .map_err(|e| body_error(e.status(), e.body_text()))?;
        images.push(("body".to_string(), bytes));
    }
    for (name, bytes) in &images {
        if bytes.is_empty() {
            return Err(ApiError::bad_request(format!(
                "{name}: empty: send a PNG or JPEG image"
            )));
        }
    }
    Ok(images)
}

/// A body that could not be read: 413 past the size limit, else the status the extractor chose.
fn body_error(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "too_large", text)
    } else {
        ApiError::new(status, "bad_request", text)
    }
}

/// Decodes and prepares every image on the engine's pool, queues them all, and waits for their logits.
async fn classify(
    s: &Shared,
    images: Vec<(String, Bytes)>,
) -> std::result::Result<Vec<(String, Vec<f32>)>, ApiError> {
    let mut prepared = Vec::with_capacity(images.len());
    for (name, bytes) in images {
        let announced = s.batcher.announce();
        let (tx, rx) = oneshot::channel();
        let app = s.app.clone();
        let origin = name.clone();
        rayon::spawn(move || {
            let _ = tx.send(prepare_upload(
                &app.preprocess,
                app.channels,
                &app.opts,
                &bytes,
                &origin,
            ));
        });
        prepared.push((name, announced, rx));
    }
    let mut waiting = Vec::with_capacity(prepared.len());
    for (name, announced, rx) in prepared {
        let (x, xs) = rx
            .await
            .map_err(|_| ApiError::bad_request(format!("{name}: could not be prepared")))??;
        let reply = s.batcher.submit(announced, x, xs).map_err(|r| match r {
            Refused::Full => ApiError::overloaded(format!(
                "the queue holds {} images already: retry later",
                s.app.opts.batch.queue
            )),
            Refused::Stopped => ApiError::overloaded("the server is shutting down"),
        })?;
        waiting.push((name, reply));
    }
    let mut answers = Vec::with_capacity(waiting.len());
    for (name, reply) in waiting {
        let logits = reply
            .await
            .map_err(|_| ApiError::overloaded("the server is shutting down"))?
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("{name}: {e}"),
                )
            })?;
        answers.push((name, logits));
    }
    Ok(answers)
}

/// One upload decoded (within the decoder budget) and prepared, its prepared size checked.
fn prepare_upload(
    preprocess: &Pipeline,
    channels: usize,
    opts: &ServeOptions,
    bytes: &[u8],
    origin: &str,
) -> std::result::Result<Prepared, ApiError> {
    let img = decode_image_within(bytes, Path::new(origin), channels, opts.max_decode_bytes)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    check_input_side(preprocess, img.h, img.w, opts.max_input_side, origin)
        .map_err(|e| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()))?;
    prepare(preprocess, img, origin).map_err(|e| ApiError::bad_request(e.to_string()))
}
