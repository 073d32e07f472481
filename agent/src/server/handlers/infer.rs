//! Inference: route to a worker (tokens and the final reply come from the worker's task), and
//! cancel what this session started.
use rbee_proto::session::Reply;
use rbee_proto::{ErrorCode, ProtoError, RequestId, SamplingParams, UnixMillis, WorkerId};

use super::ctx::{Answer, Ctx};
use crate::workers::Prompt;

/// Above this many remembered inferences, finished ones are swept from the session's map.
const SWEEP_ABOVE: usize = 256;

/// `infer` and `chat`: the answer comes later, so nothing is replied here.
pub(super) fn infer(
    ctx: &Ctx,
    id: RequestId,
    deadline: Option<UnixMillis>,
    worker: Option<WorkerId>,
    model: Option<String>,
    prompt: Prompt,
    params: SamplingParams,
) -> Answer {
    // Parameters no sampler can honour are refused here, naming the field, before routing.
    params.validate()?;
    let sup = &ctx.shared.supervisor;
    let (w, req) = sup.infer(
        ctx.out.clone(),
        id,
        worker.as_deref(),
        model.as_deref(),
        prompt,
        params,
        deadline,
    )?;
    let mut map = ctx.inflight.lock().unwrap();
    if map.len() > SWEEP_ABOVE {
        map.retain(|_, (w, r)| sup.is_pending(w, *r));
    }
    map.insert(id, (w, req));
    Ok(None)
}

/// `cancel`: only requests of this session, and only while they run.
pub(super) fn cancel(ctx: &Ctx, request: RequestId) -> Answer {
    let target = ctx.inflight.lock().unwrap().get(&request).cloned();
    match target {
        Some((w, req)) if ctx.shared.supervisor.cancel(&w, req) => {
            Ok(Some(Reply::Cancelled { request }))
        }
        _ => Err(ProtoError::new(
            ErrorCode::NotFound,
            format!("no request {request} in flight on this session"),
        )),
    }
}
