//! Authentication before the WebSocket upgrade: the request head is read first (bounded in size;
//! the caller bounds the time), so `/metrics` can be told apart and a wrong token gets a plain
//! 401 without a session.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rbee_proto::MAX_FRAME_BYTES;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request as HttpRequest, Response,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::operators;
use super::shared::Shared;
use super::stream::Replayed;

/// An authenticated WebSocket session.
pub(super) type Ws = tokio_tungstenite::WebSocketStream<Replayed>;

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
    /// The raw bytes read (the head, and whatever followed it in the same reads).
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

/// Read the request head (up to its blank line). It is consumed from the socket; the bytes are
/// kept in [`Head::bytes`] for the WebSocket handshake to replay. A peer that closes first gets
/// an error; a head longer than `max` is answered `431` and refused. The caller bounds the time.
pub(super) async fn read_head(stream: &mut TcpStream, max: usize) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the request head ended",
            ));
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if buf[searched_from..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(Head::parse(buf));
        }
        if buf.len() >= max {
            let _ = stream
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("request head over {max} bytes"),
            ));
        }
    }
}

/// An authenticated session: its WebSocket, its place among the sessions, and which token it
/// presented (`node token`, `operator NAME`).
pub(super) type Admitted = (Ws, OwnedSemaphorePermit, String);

/// Checks the token during the WebSocket upgrade; a wrong or missing one is answered 401, a
/// right one beyond the session limit 503.
struct CheckToken {
    shared: Arc<Shared>,
    peer: SocketAddr,
    admitted: Arc<Mutex<Option<(OwnedSemaphorePermit, String)>>>,
}

/// Which token an `Authorization` header carries: the node's (`node token`), an operator's
/// (`operator NAME`), or none the agent knows.
pub(super) fn which_token(shared: &Shared, auth: Option<&str>) -> Option<String> {
    if token_ok(auth, &shared.token) {
        return Some("node token".into());
    }
    let given = auth?.strip_prefix("Bearer ")?.trim();
    operators::lookup(&shared.operators, given).map(|name| format!("operator {name}"))
}

impl Callback for CheckToken {
    fn on_request(self, req: &HttpRequest, resp: Response) -> Result<Response, ErrorResponse> {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if let Some(token) = which_token(&self.shared, auth) {
            let Ok(permit) = self.shared.sessions.clone().try_acquire_owned() else {
                self.shared.metrics.dropped("too_many_sessions");
                let limit = self.shared.limits.sessions;
                let mut r = ErrorResponse::new(Some(format!(
                    "the agent serves at most {limit} sessions at once; try again later"
                )));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return Err(r);
            };
            *self.admitted.lock().unwrap_or_else(|p| p.into_inner()) = Some((permit, token));
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

/// Run the WebSocket upgrade on a connection whose head was read, checking the token in it.
/// `None` when the token was wrong or missing (the client got a 401 and an audit line was
/// written) or the session limit is reached (503). The permit holds the session's place.
pub(super) async fn upgrade(
    stream: Replayed,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> anyhow::Result<Option<Admitted>> {
    let admitted = Arc::new(Mutex::new(None));
    let check = CheckToken {
        shared: shared.clone(),
        peer,
        admitted: admitted.clone(),
    };
    let mut config = WebSocketConfig::default();
    // Larger than our frame limit so an oversized frame gets a protocol error reply, not a drop.
    config.max_message_size = Some(MAX_FRAME_BYTES * 16);
    config.max_frame_size = Some(MAX_FRAME_BYTES * 16);
    config.read_buffer_size = rbee_proto::WS_READ_BUFFER_BYTES;
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config)).await;
    let permit = admitted.lock().unwrap_or_else(|p| p.into_inner()).take();
    match permit {
        Some((permit, token)) => Ok(Some((ws?, permit, token))),
        None => Ok(None),
    }
}
