//! The load timeout: how long a worker may stay starting or loading before it is killed, and the
//! message it fails with. Scaled to the model's size so a large file is not cut off while a
//! small one that hangs is caught early.
use std::time::Duration;

use rbee_proto::WorkerState;

/// How long a worker of `model` may stay starting or loading: the config's base plus its share
/// per GiB of the model's files (a file, or every file of a directory; a reference that is not a
/// local path gets the base).
pub(crate) fn load_limit(cfg: &rbee_proto::config::LoadTimeout, model: &str) -> Duration {
    cfg.for_model(model_bytes(std::path::Path::new(model)))
}

fn model_bytes(path: &std::path::Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m.len(),
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0),
        _ => 0,
    }
}

/// The message for a worker still starting or loading `elapsed` after its start, past `limit`.
pub(crate) fn load_overdue(
    state: WorkerState,
    elapsed: Duration,
    limit: Duration,
) -> Option<String> {
    let loading = matches!(state, WorkerState::Starting | WorkerState::Loading);
    (loading && elapsed > limit).then(|| {
        format!(
            "load timed out: still {state} after {:.1} s (limit {:.1} s for this model; \
             [load_timeout] in the agent config)",
            elapsed.as_secs_f64(),
            limit.as_secs_f64()
        )
    })
}
