//! Authentication before the WebSocket upgrade: the request head is read first, so `/metrics` can
//! be told apart and a wrong token gets a plain 401 without a session.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rbee_proto::MAX_FRAME_BYTES;
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request as HttpRequest, Response,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::limits::HANDSHAKE_TIMEOUT;
use super::shared::Shared;

/// An authenticated WebSocket session.
pub(super) type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Whether an `Authorization` header value carries our token (compared in constant time).
pub(super) fn token_ok(header: Option<&str>, token: &str) -> bool {
    let Some(h) = header else { return false };
    let Some(given) = h.strip_prefix("Bearer ") else {
        return false;
    };
    given.trim().as_bytes().ct_eq(token.as_bytes()).into()
}

/// The parts of a request head the agent looks at before deciding what the connection is.
pub(super) struct Head {
    /// The raw bytes (still unread on the socket).
    pub bytes: Vec<u8>,
    pub path: String,
    pub upgrade: bool,
    pub authorization: Option<String>,
}

impl Head {
    fn parse(bytes: Vec<u8>) -> Self {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let _ = req.parse(&bytes);
        let path = req.path.unwrap_or("").to_string();
        let upgrade = req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade"));
        let authorization = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("authorization"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::to_string);
        Self {
            bytes,
            path,
            upgrade,
            authorization,
        }
    }

    /// A plain `GET /metrics` (not an upgrade).
    pub fn is_metrics(&self) -> bool {
        self.path == "/metrics" && !self.upgrade
    }
}

/// Read the request head without consuming it, so the WebSocket handshake can still read it.
pub(super) async fn peek_head(stream: &TcpStream) -> std::io::Result<Head> {
    let mut buf = vec![0u8; 8192];
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "request head timeout")
            })??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == buf.len() {
            buf.truncate(n);
            return Ok(Head::parse(buf));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Checks the token during the WebSocket upgrade; a wrong or missing one is answered 401.
struct CheckToken {
    shared: Arc<Shared>,
    peer: SocketAddr,
    authorized: Arc<AtomicBool>,
}

impl Callback for CheckToken {
    fn on_request(self, req: &HttpRequest, resp: Response) -> Result<Response, ErrorResponse> {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if token_ok(auth, &self.shared.token) {
            self.authorized.store(true, Ordering::SeqCst);
            return Ok(resp);
        }
        // Recorded before the 401 goes out, so the log is complete once the client knows.
        self.shared.metrics.error("unauthorized");
        let what = if auth.is_some() { "wrong" } else { "missing" };
        self.shared.audit.record_limited(
            "auth_failed",
            Some(self.peer.to_string()),
            format!("session with {what} token"),
        );
        let mut r = ErrorResponse::new(Some("missing or wrong bearer token".into()));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        Err(r)
    }
}

/// Run the WebSocket upgrade, checking the token in it. `None` when the token was wrong or
/// missing (the client got a 401 and an audit line was written).
pub(super) async fn upgrade(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> anyhow::Result<Option<Ws>> {
    let authorized = Arc::new(AtomicBool::new(false));
    let check = CheckToken {
        shared: shared.clone(),
        peer,
        authorized: authorized.clone(),
    };
    let mut config = WebSocketConfig::default();
    // Larger than our frame limit so an oversized frame gets a protocol error reply, not a drop.
    config.max_message_size = Some(MAX_FRAME_BYTES * 16);
    config.max_frame_size = Some(MAX_FRAME_BYTES * 16);
    config.read_buffer_size = rbee_proto::WS_READ_BUFFER_BYTES;
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)).await;
    if !authorized.load(Ordering::SeqCst) {
        return Ok(None);
    }
    Ok(Some(ws?))
}
