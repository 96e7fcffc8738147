//! hyper's own answers as our JSON errors. A request hyper cannot parse (a raw `\xff` in the URI, `Content-Length:
//! -1`, headers past its limit) never reaches the router: hyper answers it itself, 400, 414 or 431 with an empty
//! body, and closes the connection. It offers no hook for that answer's body, so the connection's writer
//! recognizes it (such a status with `content-length: 0` and nothing after the head: every error the router
//! answers has a JSON body) and writes the same head with a JSON body instead.

use super::metrics::{ErrorLabels, Metrics};
use serde_json::json;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose writer turns hyper's empty error answers into JSON ones (see the module documentation).
pub(super) struct JsonRejections<S> {
    inner: S,
    /// A rewritten answer still to be written, from `sent` on.
    pending: Vec<u8>,
    sent: usize,
    metrics: Arc<Metrics>,
}

impl<S> JsonRejections<S> {
    pub(super) fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        JsonRejections {
            inner,
            pending: Vec::new(),
            sent: 0,
            metrics,
        }
    }
}

impl<S: AsyncWrite + Unpin> JsonRejections<S> {
    /// Writes what is left of a rewritten answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

/// The JSON version of `head`, when `head` is hyper's answer to a request it could not parse: a status line of
/// 400, 414 or 431, `content-length: 0`, and nothing after the head.
pub(super) fn rewrite(head: &[u8]) -> Option<(Vec<u8>, u16)> {
    let (status, message) = match head.get(..13)? {
        b"HTTP/1.1 400 " => (
            400,
            "malformed request: the request line or a header cannot be parsed (a byte not allowed in the URI, a bad Content-Length, ...)",
        ),
        b"HTTP/1.1 414 " => (414, "the request URI is too long"),
        b"HTTP/1.1 431 " => (431, "the request headers are too large"),
        _ => return None,
    };
    let text = std::str::from_utf8(head).ok()?;
    let end = text.find("\r\n\r\n")? + 4;
    if end != text.len() || !text.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let body = json!({"error": message, "status": status}).to_string();
    let typed = format!(
        "\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    let head = text.replacen("\r\ncontent-length: 0\r\n", &typed, 1);
    Some(([head.as_bytes(), body.as_bytes()].concat(), status))
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonRejections<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonRejections<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some((answer, _)) = rewrite(buf) {
            self.metrics
                .errors
                .get_or_create(&ErrorLabels { kind: "malformed" })
                .inc();
            self.pending = answer;
            // The head counts as written: hyper flushes (and then shuts down) next, which writes the rest.
            return match self.poll_pending(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hyper_s_empty_error_answers_are_rewritten() {
        let hyper = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Sat, 05 Dec 2026 04:30:00 GMT\r\n\r\n";
        let (answer, status) = rewrite(hyper).unwrap();
        assert_eq!(status, 400);
        let text = String::from_utf8(answer).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 400);
        // Our own errors have bodies; a success is never touched; nor is a head followed by a body.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 30\r\n\r\n";
        assert!(rewrite(ours).is_none());
        assert!(rewrite(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        let with_body = [&hyper[..], b"x"].concat();
        assert!(rewrite(&with_body).is_none());
    }
}
