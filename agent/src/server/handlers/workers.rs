//! Worker management: list, spawn, kill, restart (their logs: `logs`).
use rbee_proto::session::{Reply, SpawnSpec};
use rbee_proto::WorkerId;

use super::ctx::{Answer, Ctx};

/// `list_workers`.
pub(super) fn list(ctx: &Ctx) -> Answer {
    Ok(Some(Reply::Workers {
        workers: ctx.shared.supervisor.list(),
    }))
}

/// `spawn`: admitted or refused at once; the worker then reports its own progress.
pub(super) async fn spawn(ctx: &Ctx, spec: SpawnSpec) -> Answer {
    let worker = ctx.shared.supervisor.spawn(spec, ctx.peer()).await?;
    Ok(Some(Reply::Spawned { worker }))
}

/// `kill`: answered once the worker is gone.
pub(super) async fn kill(ctx: &Ctx, worker: WorkerId) -> Answer {
    ctx.shared.supervisor.kill(&worker, ctx.peer()).await?;
    Ok(Some(Reply::Killed { worker }))
}

/// `restart`: answered once the restart is under way.
pub(super) async fn restart(ctx: &Ctx, worker: WorkerId) -> Answer {
    ctx.shared.supervisor.restart(&worker, ctx.peer()).await?;
    Ok(Some(Reply::Restarted { worker }))
}
