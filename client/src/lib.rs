//! `rbee-client`: the async client for an agent session. It authenticates, handshakes, then
//! multiplexes requests over one WebSocket; replies and tokens are routed by request id, events go
//! to one channel. Dashboards, scripts, the gateway, tests and benches all talk to agents through it;
//! the wire types it speaks are `rbee_proto`'s.
#![warn(missing_docs)]
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use rbee_proto::frame::{decode, encode};
use rbee_proto::session::{ClientIdentity, ClientMsg, Event, Reply, Request, ServerMsg};
use rbee_proto::{
    ErrorCode, ProtoError, RequestId, UnixMillis, PROTOCOL_VERSION, WS_READ_BUFFER_BYTES,
};

/// Why a session could not be opened or a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at `url`, or the upgrade failed for another reason than the token.
    #[error("cannot reach agent at {url}: {reason}")]
    Connect {
        /// The agent's address.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The agent answered 401: wrong or missing token.
    #[error("agent at {url} refused the token (HTTP 401)")]
    Unauthorized {
        /// The agent's address.
        url: String,
    },
    /// The WebSocket opened but the hello/welcome exchange failed.
    #[error("handshake with {url} failed: {0}", .reason)]
    Handshake {
        /// The agent's address.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The session ended while the request waited.
    #[error("session closed")]
    Closed,
    /// The agent answered with an error.
    #[error("{0}")]
    Agent(#[from] ProtoError),
    /// No answer within the caller's time limit.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl ClientError {
    /// The protocol error code this failure maps to (for `--json` output and exit codes).
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::Agent(e) => e.code,
            ClientError::Unauthorized { .. } => ErrorCode::Unauthorized,
            ClientError::Timeout(_) => ErrorCode::DeadlineExceeded,
            _ => ErrorCode::Internal,
        }
    }
}

/// Something the session received that is not addressed to a pending request.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // moved once through a channel; a box would cost an allocation per event
pub enum Incoming {
    /// A node event (after `Subscribe`).
    Event(Event),
    /// An error frame that carried no request id (e.g. a frame the agent could not parse).
    Error(ProtoError),
    /// The connection ended.
    Closed(String),
}

/// What a pending request receives.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // moved once through a channel; a box would cost an allocation per reply
pub enum Streamed {
    /// A piece of generated text.
    Token(String),
    /// The final answer.
    Reply(Reply),
    /// The request failed.
    Error(ProtoError),
}

type Pending = Arc<Mutex<Waiters>>;

/// The requests waiting for answers, and whether the session has ended: a request started after
/// the end is refused at once instead of waiting out its whole timeout for an answer that
/// cannot come.
#[derive(Default)]
struct Waiters {
    map: HashMap<RequestId, mpsc::Sender<Streamed>>,
    closed: bool,
}

/// One authenticated session to one agent. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    out: mpsc::Sender<Message>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    /// The agent's release, from its welcome.
    pub agent_version: String,
    /// The node's name, from its welcome.
    pub node: String,
}

/// An in-flight streaming request (e.g. `Infer`).
pub struct Stream {
    /// The request's id (what `Cancel` names).
    pub id: RequestId,
    rx: mpsc::Receiver<Streamed>,
    client: Client,
}

impl Stream {
    /// Next token text, the final reply, or an error; `None` when the session closed.
    pub async fn next(&mut self) -> Option<Streamed> {
        self.rx.recv().await
    }

    /// Ask the agent to stop this request; its stream then ends with the final reply.
    pub async fn cancel(&self) -> Result<(), ClientError> {
        self.client
            .request(Request::Cancel { request: self.id }, None)
            .await
            .map(|_| ())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.client.pending.lock().unwrap().map.remove(&self.id);
    }
}

/// The error for a failed WebSocket upgrade: 401 means the token was refused.
/// The upgrade request to `url`, carrying the bearer token.
fn upgrade_request(
    url: &str,
    token: &str,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, ClientError> {
    let bad = |e: &dyn std::fmt::Display| ClientError::Connect {
        url: url.into(),
        reason: e.to_string(),
    };
    let mut req = url.into_client_request().map_err(|e| bad(&e))?;
    let auth = HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|e| bad(&e))?;
    req.headers_mut().insert("authorization", auth);
    Ok(req)
}

/// The client side's WebSocket settings: library defaults but for the read buffer.
fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
}

fn upgrade_error(url: &str, e: tokio_tungstenite::tungstenite::Error) -> ClientError {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) if resp.status() == 401 => {
            ClientError::Unauthorized { url: url.into() }
        }
        e => ClientError::Connect {
            url: url.into(),
            reason: e.to_string(),
        },
    }
}

/// Wait for the agent's `Welcome` (skipping non-text frames); an error frame or anything else
/// ends the handshake with the reason.
async fn await_welcome<S>(
    source: &mut futures_util::stream::SplitStream<tokio_tungstenite::WebSocketStream<S>>,
    url: &str,
) -> Result<(String, String), ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = source.next().await.ok_or_else(|| ClientError::Handshake {
            url: url.into(),
            reason: "connection closed before welcome".into(),
        })?;
        let msg = msg.map_err(|e| ClientError::Handshake {
            url: url.into(),
            reason: e.to_string(),
        })?;
        let Message::Text(text) = msg else { continue };
        match decode::<ServerMsg>(&text) {
            Ok(ServerMsg::Welcome {
                agent_version,
                node,
                ..
            }) => return Ok((agent_version, node)),
            Ok(ServerMsg::Error { code, message, .. }) => {
                return Err(ClientError::Agent(ProtoError::new(code, message)))
            }
            Ok(other) => {
                return Err(ClientError::Handshake {
                    url: url.into(),
                    reason: format!("unexpected {other:?}"),
                })
            }
            Err(e) => {
                return Err(ClientError::Handshake {
                    url: url.into(),
                    reason: e.message,
                })
            }
        }
    }
}

/// The session's reader: route each frame to its pending request, events and id-less errors to
/// `ev_tx`; when the connection ends, wake every waiter with the reason.
async fn read_frames<S>(
    mut source: futures_util::stream::SplitStream<tokio_tungstenite::WebSocketStream<S>>,
    pending_r: Pending,
    ev_tx: mpsc::Sender<Incoming>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let reason = loop {
        let Some(msg) = source.next().await else {
            break "connection closed".to_string();
        };
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(c)) => {
                break c
                    .map(|c| c.reason.to_string())
                    .unwrap_or_else(|| "closed by agent".into())
            }
            Ok(_) => continue,
            Err(e) => break e.to_string(),
        };
        let msg = match decode::<ServerMsg>(&text) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("undecodable frame from agent: {}", e.message);
                continue;
            }
        };
        let (id, item) = match msg {
            ServerMsg::Token { id, text } => (id, Streamed::Token(text)),
            ServerMsg::Reply { id, body } => (id, Streamed::Reply(body)),
            ServerMsg::Error {
                id: Some(id),
                code,
                message,
            } => (id, Streamed::Error(ProtoError::new(code, message))),
            ServerMsg::Error {
                id: None,
                code,
                message,
            } => {
                let _ = ev_tx
                    .send(Incoming::Error(ProtoError::new(code, message)))
                    .await;
                continue;
            }
            ServerMsg::Event { event } => {
                if ev_tx.send(Incoming::Event(event)).await.is_err() {
                    // Nobody listens for events; keep serving replies.
                }
                continue;
            }
            ServerMsg::Welcome { .. } => continue,
        };
        let tx = pending_r.lock().unwrap().map.get(&id).cloned();
        if let Some(tx) = tx {
            // Awaiting here applies backpressure: tokens are never dropped.
            let _ = tx.send(item).await;
        }
    };
    // Wake every waiter: their session is gone.
    let waiters: Vec<_> = {
        let mut w = pending_r.lock().unwrap();
        w.closed = true;
        w.map.drain().collect()
    };
    for (_, tx) in waiters {
        let _ = tx
            .send(Streamed::Error(ProtoError::new(
                ErrorCode::Internal,
                format!("session closed: {reason}"),
            )))
            .await;
    }
    let _ = ev_tx.send(Incoming::Closed(reason)).await;
}

impl Client {
    /// Connect to `url` (ws://HOST:PORT) with a bearer token and complete the handshake.
    /// `events` receives everything not addressed to a request.
    pub async fn connect(
        url: &str,
        token: &str,
        client_name: &str,
    ) -> Result<(Client, mpsc::Receiver<Incoming>), ClientError> {
        Self::connect_with_version(url, token, client_name, PROTOCOL_VERSION).await
    }

    /// As `connect`, announcing an arbitrary protocol version (tests of the mismatch path).
    pub async fn connect_with_version(
        url: &str,
        token: &str,
        client_name: &str,
        version: u32,
    ) -> Result<(Client, mpsc::Receiver<Incoming>), ClientError> {
        let req = upgrade_request(url, token)?;
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(ws_config()), false)
            .await
            .map_err(|e| upgrade_error(url, e))?;
        Self::handshake(ws, url, this_process(client_name), version).await
    }

    /// As `connect`, over a byte stream that is already connected to the agent (e.g. a channel
    /// of an SSH connection). `url` names the agent in the upgrade request and in errors.
    pub async fn connect_stream<S>(
        stream: S,
        url: &str,
        token: &str,
        client_name: &str,
    ) -> Result<(Client, mpsc::Receiver<Incoming>), ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let identity = this_process(client_name);
        Self::connect_stream_as(stream, url, token, identity).await
    }

    /// As [`connect_stream`](Self::connect_stream), saying who is connecting (e.g. with the SSH
    /// user and key of the tunnel the stream runs through), for the agent's audit log.
    pub async fn connect_stream_as<S>(
        stream: S,
        url: &str,
        token: &str,
        identity: ClientIdentity,
    ) -> Result<(Client, mpsc::Receiver<Incoming>), ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let req = upgrade_request(url, token)?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(ws_config()))
            .await
            .map_err(|e| upgrade_error(url, e))?;
        Self::handshake(ws, url, identity, PROTOCOL_VERSION).await
    }

    /// Say hello, wait for the welcome, then start the reader and writer tasks.
    async fn handshake<S>(
        ws: tokio_tungstenite::WebSocketStream<S>,
        url: &str,
        identity: ClientIdentity,
        version: u32,
    ) -> Result<(Client, mpsc::Receiver<Incoming>), ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut source) = ws.split();
        let hello = ClientMsg::Hello {
            protocol_version: version,
            client: identity.tool.clone(),
            identity: Some(identity),
        };
        sink.send(Message::text(encode(&hello)))
            .await
            .map_err(|e| ClientError::Handshake {
                url: url.into(),
                reason: e.to_string(),
            })?;
        let (agent_version, node) = await_welcome(&mut source, url).await?;

        let (out_tx, mut out_rx) = mpsc::channel::<Message>(256);
        let (ev_tx, ev_rx) = mpsc::channel::<Incoming>(4096);
        let pending: Pending = Arc::default();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let pending_r = pending.clone();
        tokio::spawn(read_frames(source, pending_r, ev_tx));
        Ok((
            Client {
                out: out_tx,
                pending,
                next_id: Arc::new(AtomicU64::new(1)),
                agent_version,
                node,
            },
            ev_rx,
        ))
    }

    /// Start a request; the returned stream yields its tokens and final reply. `timeout` is the
    /// request's time budget: it travels as a duration the agent counts from the request's
    /// arrival by its own clock, so clocks that disagree between here and the node do not matter.
    pub async fn start(
        &self,
        body: Request,
        timeout: Option<Duration>,
    ) -> Result<Stream, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(1024);
        {
            let mut w = self.pending.lock().unwrap();
            if w.closed {
                return Err(ClientError::Closed);
            }
            w.map.insert(id, tx);
        }
        let frame = encode(&ClientMsg::Request {
            id,
            deadline: None,
            // At least 1 ms: a zero budget means "already passed" to the agent.
            timeout_ms: timeout.map(|t| (t.as_millis() as u64).max(1)),
            body,
        });
        self.out
            .send(Message::text(frame))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(Stream {
            id,
            rx,
            client: self.clone(),
        })
    }

    /// Send a request and wait for its reply (tokens, if any, are discarded).
    pub async fn request(
        &self,
        body: Request,
        timeout: Option<Duration>,
    ) -> Result<Reply, ClientError> {
        let mut s = self.start(body, timeout).await?;
        loop {
            match s.next().await {
                Some(Streamed::Reply(r)) => return Ok(r),
                Some(Streamed::Error(e)) => return Err(ClientError::Agent(e)),
                Some(Streamed::Token(_)) => continue,
                None => return Err(ClientError::Closed),
            }
        }
    }

    /// Ping the agent and read its clock: the round trip and how far the agent's clock is from
    /// this machine's (NTP-style, the agent's time against the middle of the round trip).
    pub async fn ping(&self, timeout: Duration) -> Result<PingSample, ClientError> {
        let t0 = rbee_proto::now_millis();
        let start = std::time::Instant::now();
        let reply = tokio::time::timeout(timeout, self.request(Request::Ping, Some(timeout)))
            .await
            .map_err(|_| ClientError::Timeout(timeout))??;
        let rtt = start.elapsed();
        let t1 = rbee_proto::now_millis();
        match reply {
            Reply::Pong { agent_time } => Ok(PingSample {
                rtt,
                clock_offset_ms: clock_offset_ms(t0, t1, agent_time),
            }),
            other => Err(ClientError::Handshake {
                url: self.node.clone(),
                reason: format!("unexpected answer to ping: {other:?}"),
            }),
        }
    }

    /// Send raw text as one frame (for tests of the agent's handling of bad input).
    pub async fn send_raw(&self, text: &str) -> Result<(), ClientError> {
        self.out
            .send(Message::text(text.to_string()))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Register interest in replies to a raw frame with this id.
    pub fn watch_id(&self, id: RequestId) -> mpsc::Receiver<Streamed> {
        let (tx, rx) = mpsc::channel(64);
        let mut w = self.pending.lock().unwrap();
        // After the session's end nothing will answer: the receiver ends at once.
        if !w.closed {
            w.map.insert(id, tx);
        }
        rx
    }
}

/// This process's identity as a client named `tool`: its user (`$USER`, else the uid) and host.
pub fn this_process(tool: &str) -> ClientIdentity {
    let os_user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| {
            // SAFETY: getuid has no preconditions.
            format!("uid {}", unsafe { libc::getuid() })
        });
    ClientIdentity {
        tool: tool.into(),
        os_user,
        host: host_name(),
        ssh_user: None,
        ssh_key: None,
    }
}

/// The host name, as `uname -n` says it.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it on success.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    if ok {
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "unknown".into()
    }
}

/// One ping: the round trip and the agent's clock against this machine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingSample {
    /// From sending the ping to reading the pong.
    pub rtt: Duration,
    /// The agent's clock minus this machine's, in milliseconds (positive: the node runs ahead).
    pub clock_offset_ms: i64,
}

/// The agent's clock offset from a ping sent at `t0` and answered at `t1` (both by this
/// machine's clock) carrying the agent's `server` time: the agent read its clock, on average,
/// half-way through the round trip.
pub fn clock_offset_ms(t0: UnixMillis, t1: UnixMillis, server: UnixMillis) -> i64 {
    let mid = (i128::from(t0) + i128::from(t1)) / 2;
    (i128::from(server) - mid) as i64
}

/// How long to wait before redialling an agent after `attempt` failures in a row: the policy's
/// exponential backoff spread by ±20 % at random, so that many dashboards that lost the same agent
/// (a restart, a network blip) do not all redial it in the same instant.
pub fn reconnect_delay(policy: &rbee_proto::policy::RestartPolicy, attempt: u32) -> Duration {
    use rand::Rng;
    let nominal = policy.backoff(attempt);
    nominal.mul_f64(rand::rng().random_range(0.8..=1.2))
}

#[cfg(test)]
mod reconnect_tests {
    use super::*;
    use rbee_proto::policy::RestartPolicy;

    #[test]
    fn clock_offset_is_the_agents_time_against_the_middle_of_the_round_trip() {
        assert_eq!(clock_offset_ms(1_000, 1_100, 121_050), 120_000);
        assert_eq!(clock_offset_ms(200_000, 200_010, 80_005), -120_000);
        assert_eq!(clock_offset_ms(0, 0, 0), 0);
    }

    #[test]
    fn reconnect_delays_spread_around_the_backoff() {
        let policy = RestartPolicy {
            initial_backoff_ms: 1000,
            max_backoff_ms: 30_000,
            ..RestartPolicy::default()
        };
        let delays: Vec<u128> = (0..200)
            .map(|_| reconnect_delay(&policy, 1).as_millis())
            .collect();
        assert!(
            delays.iter().all(|d| (1600..=2400).contains(d)),
            "{delays:?}"
        );
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 20,
            "jitter spreads the redials: {distinct:?}"
        );
    }
}
