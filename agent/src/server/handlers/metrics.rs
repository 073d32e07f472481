//! `metrics`: the agent's Prometheus exposition over the session, the same text `GET /metrics`
//! serves, so a gateway relays every node's metrics without a port per node.
use rbee_proto::session::Reply;

use super::ctx::{Answer, Ctx};

/// `metrics`: render the exposition now.
pub(super) fn metrics(ctx: &Ctx) -> Answer {
    Ok(Some(Reply::Metrics {
        text: crate::server::metrics_http::render(&ctx.shared),
    }))
}
