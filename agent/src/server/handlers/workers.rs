//! Worker management: list, spawn, kill, restart, tail a log.
use rbee_proto::session::{Reply, SpawnSpec};
use rbee_proto::WorkerId;

use super::ctx::{Answer, Ctx};

/// Most log lines one `tail_log` returns.
const MAX_TAIL_LINES: usize = 10_000;

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

/// `tail_log`: the last lines of a worker's stderr.
pub(super) fn tail_log(ctx: &Ctx, worker: WorkerId, lines: usize) -> Answer {
    let lines = ctx
        .shared
        .supervisor
        .tail_log(&worker, lines.min(MAX_TAIL_LINES))?;
    Ok(Some(Reply::Log { lines, worker }))
}
