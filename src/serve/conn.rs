//! The accept loop: HTTP/1.1 connections served by hyper with a header-read timeout, at most
//! `--max-connections` at a time, and a shutdown that drains them for a bounded time. (`axum::serve` sets no
//! header timeout and caps nothing: 50 clients sending a header byte a second held their connections for ever,
//! and 1,100 half-sent requests took every file descriptor.)

use super::metrics::{ErrorLabels, Metrics};
use super::rejections::JsonRejections;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Connections beyond the cap that are answered 503 at the same time; past these, a connection is closed at once
/// (answering costs a file descriptor for up to [`REFUSAL_LINGER`]).
const REFUSALS_IN_FLIGHT: usize = 64;
/// Longest a refused connection is kept to read what its client sends after the 503, so that closing does not
/// reset the connection under the answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);
/// The pause after a failed accept that is not the client's doing (out of file descriptors): the loop retries
/// instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How connections are limited.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Longest a client may take to send a request's headers (from the connection's start, or from the end of
    /// the previous answer on a kept-alive connection); past it the connection is closed.
    pub header_timeout: Duration,
    /// Most connections open at once; beyond it a new one is answered 503 and closed.
    pub max_connections: usize,
}

/// How the loop ended.
pub(super) enum Drained {
    /// Every connection finished its requests.
    All,
    /// Some were still open at the deadline and were dropped.
    Dropped,
}

/// Serves `router` on `listener` until `stop` completes, then lets the open connections finish their requests
/// (hyper's graceful shutdown: no new request on a kept-alive connection) for at most `grace`. Connections still
/// open then are left to the caller, which drops them with the runtime.
pub(super) async fn serve_connections(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()>,
    grace: Duration,
) -> Drained {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    let refusal: Arc<[u8]> = refusal_answer(limits.max_connections).into();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) if is_connection_error(&e) => continue,
                Err(_) => {
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics
                .errors
                .get_or_create(&ErrorLabels {
                    kind: "too_many_connections",
                })
                .inc();
            // Beyond the refusals in flight too: closed at once (the client sees the connection end).
            if let Ok(permit) = refusing.clone().try_acquire_owned() {
                let answer = refusal.clone();
                tokio::spawn(async move {
                    refuse(stream, &answer).await;
                    drop(permit);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(JsonRejections::new(stream, metrics.clone()));
        let conn =
            graceful.watch(http.serve_connection(io, TowerToHyperService::new(router.clone())));
        let metrics = metrics.clone();
        metrics.connections.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                if e.is_timeout() {
                    metrics
                        .errors
                        .get_or_create(&ErrorLabels {
                            kind: "header_timeout",
                        })
                        .inc();
                }
            }
            metrics.connections.dec();
            drop(permit);
        });
    }
    // No new connection from here: the port is closed.
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => Drained::All,
        () = tokio::time::sleep(grace) => Drained::Dropped,
    }
}

/// The answer to a connection beyond the cap: 503 with Retry-After and our JSON error, then close.
fn refusal_answer(max_connections: usize) -> Vec<u8> {
    let body = json!({
        "error": format!("the server holds {max_connections} connections already (--max-connections): retry later"),
        "status": 503,
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes `answer` without reading the request (it may never come), ends the sending side, then reads what the
/// client sends until it closes or [`REFUSAL_LINGER`] passes.
async fn refuse(mut stream: TcpStream, answer: &[u8]) {
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// Whether a failed accept concerns only that connection (the next accept may succeed at once).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
