//! Routing: which worker serves an inference.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rbee_proto::{ErrorCode, ProtoError, WorkerId};

use super::slot::Slot;

/// Whether `slot` answers to the model name `m`: its spec, its reported name, or its file name.
fn serves(slot: &Slot, m: &str) -> bool {
    let st = slot.lock();
    let name_match = st.info.summary.as_ref().is_some_and(|x| x.name == m);
    st.info.state.is_serving()
        && (slot.spec.model == m
            || name_match
            || Path::new(&slot.spec.model)
                .file_name()
                .and_then(|f| f.to_str())
                == Some(m))
}

/// How full a worker is, in thousandths of its slots: requests it holds over the sequences it
/// decodes at once, so a 4-slot worker with 2 requests (500) wins over an idle-looking 1-slot
/// worker with 1 (1000).
fn load(slot: &Slot) -> usize {
    let st = slot.lock();
    let parallel = st.info.summary.as_ref().map_or(1, |x| x.slots()) as usize;
    st.pending.len() * 1000 / parallel
}

/// The worker an inference goes to: the named one if it serves, else the least loaded serving
/// worker of `model`.
pub(crate) fn pick(
    workers: &BTreeMap<WorkerId, Arc<Slot>>,
    worker: Option<&str>,
    model: Option<&str>,
) -> Result<Arc<Slot>, ProtoError> {
    match (worker, model) {
        (Some(w), _) => {
            let s = workers.get(w).cloned().ok_or_else(|| not_found(w))?;
            let state = s.worker_state();
            if !state.is_serving() {
                return Err(ProtoError::new(
                    ErrorCode::Busy,
                    format!("worker `{w}` is {state}, not ready"),
                ));
            }
            Ok(s)
        }
        (None, Some(m)) => workers
            .values()
            .filter(|s| serves(s, m))
            .min_by_key(|s| load(s))
            .cloned()
            .ok_or_else(|| {
                ProtoError::new(
                    ErrorCode::NotFound,
                    format!("no ready worker serves `{m}` on this node"),
                )
            }),
        (None, None) => Err(ProtoError::new(
            ErrorCode::BadRequest,
            "infer needs `worker` or `model`",
        )),
    }
}

/// The error for a worker id this node does not know.
pub(crate) fn not_found(id: &str) -> ProtoError {
    ProtoError::new(
        ErrorCode::NotFound,
        format!("no worker `{id}` on this node"),
    )
}
