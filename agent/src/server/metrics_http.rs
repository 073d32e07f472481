//! `GET /metrics` on the session port, behind the same bearer tokens (the node's or an
//! operator's).
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::auth::{which_token, Head};
use super::shared::Shared;

/// Answer one `/metrics` request and close.
pub(super) async fn serve(
    mut stream: TcpStream,
    head: &Head,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> anyhow::Result<()> {
    let ok = which_token(shared, head.authorization.as_deref()).is_some();
    let (status, body) = if ok {
        ("200 OK", render(shared))
    } else {
        shared.audit.record_limited(
            "auth_failed",
            Some(peer.to_string()),
            "GET /metrics with missing or wrong token".into(),
        );
        (
            "401 Unauthorized",
            "missing or wrong bearer token\n".to_string(),
        )
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

/// The exposition as `GET /metrics` and `Request::Metrics` answer it.
pub(crate) fn render(shared: &Shared) -> String {
    let workers = shared.supervisor.list();
    let telemetry = shared.telemetry.borrow().clone();
    let open = shared
        .limits
        .sessions
        .saturating_sub(shared.sessions.available_permits());
    shared.metrics.render(&crate::metrics::Snapshot {
        workers: &workers,
        telemetry: &telemetry,
        active_sessions: open as u64,
    })
}
