//! Questions about the node itself: ping, status, models.
use rbee_proto::session::{NodeStatus, Reply};

use super::ctx::{Answer, Ctx};

/// `ping`: the agent's clock, for latency and skew.
pub(super) fn ping() -> Answer {
    Ok(Some(Reply::Pong {
        agent_time: rbee_proto::now_millis(),
    }))
}

/// `status`: node name, agent version, latest telemetry and every worker.
pub(super) fn status(ctx: &Ctx) -> Answer {
    let shared = &ctx.shared;
    Ok(Some(Reply::Status {
        status: NodeStatus {
            node: shared.node.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            telemetry: shared.telemetry.borrow().clone(),
            workers: shared.supervisor.list(),
        },
    }))
}

/// `list_models`: models in the model dirs, then those in the Hugging Face cache.
pub(super) fn list_models(ctx: &Ctx) -> Answer {
    let models = rbee_store::Store::new(ctx.shared.config.model_dirs.clone()).list();
    Ok(Some(Reply::Models { models }))
}
