//! Sessions: accept TCP, authenticate before the WebSocket upgrade (or serve `/metrics`), run the
//! handshake, then answer requests and push events until either side leaves.
//!
//! | module       | job                                                             |
//! |--------------|-----------------------------------------------------------------|
//! | `auth`       | the bearer token check and the request head before the upgrade  |
//! | `metrics_http` | `GET /metrics` on the session port                            |
//! | `handshake`  | `Hello` / `Welcome`, or the refusal                             |
//! | `session`    | one session's read loop: frames in, requests dispatched         |
//! | `writer`     | one session's write loop: replies, tokens, events, telemetry    |
//! | `handlers`   | one handler per request kind                                    |
//! | `shared`     | what every connection can reach                                 |
//! | `limits`     | the bounds on connections, handshakes and requests in flight    |
//! | `stream`     | the socket with its already-read head replayed to the upgrade   |
mod auth;
mod handlers;
mod handshake;
mod limits;
mod metrics_http;
pub mod operators;
mod session;
mod shared;
mod stream;
mod writer;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub use limits::{raise_descriptor_limit, Limits};
pub use shared::Shared;

/// Accept connections until `shutdown`, then give open sessions a moment to end. Every
/// connection starts among the pending ones (see [`Limits::pending`]).
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let sessions = tokio_util::task::TaskTracker::new();
    let pending = limits::Pending::new(shared.limits.pending);
    let mut last_warning: Option<Instant> = None;
    // Every open connection holds a descriptor, and an evicted one closes a moment after its
    // eviction (when its task runs). A flood under load could outrun those closes and exhaust
    // the descriptors (accept's EMFILE); beyond this many open, wait for them instead. In
    // normal running (pending + sessions at most) it never waits.
    let live = Arc::new(AtomicUsize::new(0));
    let max_live = 2 * shared.limits.pending + shared.limits.sessions;
    loop {
        while live.load(Ordering::Acquire) >= max_live && !shutdown.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            acc = listener.accept() => match acc {
                Ok((stream, peer)) => {
                    let ticket = pending.admit();
                    let shared = shared.clone();
                    let shutdown = shutdown.clone();
                    let open = Open::new(&live);
                    sessions.spawn(async move {
                        let _open = open;
                        if let Err(e) = handle_connection(stream, peer, shared, shutdown, ticket).await {
                            tracing::debug!(%peer, "connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors or memory: say so at most once a second, and wait.
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!("accept failed: {e}");
                        last_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    sessions.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), sessions.wait()).await;
}

/// One open connection, counted in the accept loop's `live` until its task ends (its stream
/// dropped with it).
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(live: &Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::AcqRel);
        Self(live.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection: `/metrics`, or an authenticated WebSocket session. From accept to
/// `Welcome` it has [`Limits::handshake`]; until it is authenticated a newer connection may
/// evict it.
async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    ticket: limits::Ticket,
) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + shared.limits.handshake;
    let opened = tokio::select! {
        o = tokio::time::timeout_at(deadline, open(stream, peer, &shared)) => match o {
            Ok(o) => o?,
            Err(_) => {
                shared.metrics.dropped("handshake_timeout");
                return Ok(());
            }
        },
        _ = ticket.evicted.cancelled() => {
            shared.metrics.dropped("evicted");
            return Ok(());
        }
    };
    drop(ticket);
    let Some((ws, permit, token)) = opened else {
        return Ok(());
    };
    shared.metrics.session();
    // `auth_ok` is written once the hello says who the client is (see `handshake`).
    let r = session::run(ws, peer, token, shared.clone(), shutdown, deadline).await;
    shared.audit.session_ended(&peer.to_string());
    drop(permit);
    r
}

/// Read the head, then serve `/metrics` or run the authenticated upgrade. A session comes back
/// with its place among the sessions; `None` when the connection was answered and is done
/// (`/metrics`, a 401, a 503).
async fn open(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> anyhow::Result<Option<auth::Admitted>> {
    let head = match auth::read_head(&mut stream, shared.limits.head_bytes).await {
        Ok(h) => h,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            shared.metrics.dropped("head_too_large");
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    if head.is_metrics() {
        metrics_http::serve(stream, &head, peer, shared).await?;
        return Ok(None);
    }
    let stream = stream::Replayed::new(head.bytes, stream);
    auth::upgrade(stream, peer, shared).await
}
