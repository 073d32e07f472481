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
mod auth;
mod handlers;
mod handshake;
mod limits;
mod metrics_http;
mod session;
mod shared;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub use shared::Shared;

/// Accept connections until `shutdown`, then give open sessions a moment to end.
pub async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let sessions = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            acc = listener.accept() => match acc {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    let shutdown = shutdown.clone();
                    sessions.spawn(async move {
                        if let Err(e) = handle_connection(stream, peer, shared, shutdown).await {
                            tracing::debug!(%peer, "connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    sessions.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), sessions.wait()).await;
}

/// One connection: `/metrics`, or an authenticated WebSocket session.
async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    let head = auth::peek_head(&stream).await?;
    if head.is_metrics() {
        return metrics_http::serve(stream, &head, peer, &shared).await;
    }
    let Some(ws) = auth::upgrade(stream, peer, &shared).await? else {
        return Ok(());
    };
    shared.audit.record(
        "auth_ok",
        Some(peer.to_string()),
        None,
        "session authenticated",
    );
    shared.metrics.session();
    session::run(ws, peer, shared, shutdown).await
}
