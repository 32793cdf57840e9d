//! The HTTP connection itself. Requests the HTTP parser rejects before any handler runs (a request
//! target over 64 KiB, headers over the buffer, a malformed request line) are answered by hyper
//! with an empty body. [`Listener`] wraps every accepted socket so that those answers, too, carry
//! the server's JSON error body (`{"error", "code"}`), and sets TCP_NODELAY.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Accepts TCP connections for axum, each with TCP_NODELAY (without it a keep-alive response
/// written in two segments waits ~40 ms for the client's delayed ACK) and [`ParserErrorBodies`].
pub struct Listener(pub TcpListener);

impl axum::serve::Listener for Listener {
    type Io = ParserErrorBodies<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((tcp, addr)) => {
                    let _ = tcp.set_nodelay(true);
                    return (ParserErrorBodies::new(tcp), addr);
                }
                // As axum's own TcpListener: a failed accept (e.g. too many open files) is
                // retried after a pause instead of ending the server.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// What hyper writes when its parser rejects a request: a head with `connection: close` and
/// `content-length: 0`, and nothing after it.
fn parser_error(buf: &[u8]) -> Option<(&'static str, &'static str, String)> {
    let (status, code, error) = if buf.starts_with(b"HTTP/1.1 414 ") {
        (
            "414 URI Too Long",
            "uri_too_long",
            "the request target is over 64 KiB, the most the HTTP parser reads; send options in the body instead".to_string(),
        )
    } else if buf.starts_with(b"HTTP/1.1 431 ") {
        (
            "431 Request Header Fields Too Large",
            "headers_too_large",
            "the request headers are over the HTTP parser's buffer; send fewer or shorter headers"
                .to_string(),
        )
    } else if buf.starts_with(b"HTTP/1.1 400 ") {
        (
            "400 Bad Request",
            "malformed_http",
            "the request is not valid HTTP/1.1 (request line or headers); see GET /openapi.json"
                .to_string(),
        )
    } else {
        return None;
    };
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end])
        .ok()?
        .to_ascii_lowercase();
    (head_end == buf.len()
        && head.contains("\r\nconnection: close\r\n")
        && head.contains("\r\ncontent-length: 0\r\n"))
    .then_some((status, code, error))
}

fn json_answer(status: &str, code: &str, error: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": error, "code": code }).to_string();
    format!(
        "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A socket whose parser-error answers get a JSON body (see the module docs); everything else
/// passes through untouched.
pub struct ParserErrorBodies<T> {
    inner: T,
    /// A replacement answer still being written, and how much of it went out.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> ParserErrorBodies<T> {
    pub fn new(inner: T) -> Self {
        ParserErrorBodies {
            inner,
            pending: None,
        }
    }
}

impl<T: AsyncWrite + Unpin> ParserErrorBodies<T> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, sent)) = &mut self.pending {
            if *sent == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *sent += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ParserErrorBodies<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ParserErrorBodies<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some((status, code, error)) = parser_error(buf) {
            self.pending = Some((json_answer(status, code, &error), 0));
            // The caller's bytes are accounted for: the replacement goes out in their place.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
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
    fn only_the_parsers_empty_error_heads_are_replaced() {
        let hyper_414 =
            b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 29 Nov 2026 20:38:31 GMT\r\n\r\n";
        let (status, code, _) = parser_error(hyper_414).expect("recognised");
        assert_eq!((status, code), ("414 URI Too Long", "uri_too_long"));
        // The server's own 400 has a body: untouched.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n";
        assert!(parser_error(ours).is_none());
        let answer = String::from_utf8(json_answer(status, code, "x")).expect("utf8");
        let body = answer.split("\r\n\r\n").nth(1).expect("body");
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["code"], "uri_too_long");
        assert!(answer.contains(&format!("content-length: {}\r\n", body.len())));
    }
}
