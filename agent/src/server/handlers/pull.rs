//! `pull`: download a Hugging Face model into the cache, with progress events.
use rbee_proto::session::Reply;
use rbee_proto::{ErrorCode, ProtoError};

use super::ctx::{Answer, Ctx};

/// Download on a blocking thread; audited before and after.
pub(super) async fn pull(ctx: &Ctx, model: String) -> Answer {
    let audit = &ctx.shared.audit;
    audit.record("pull", ctx.peer(), None, model.clone());
    let events = ctx.shared.events.clone();
    let m = model.clone();
    let pulled = tokio::task::spawn_blocking(move || crate::pull::pull(&m, &events))
        .await
        .map_err(|e| ProtoError::new(ErrorCode::Internal, format!("pull task: {e}")))?;
    match pulled {
        Ok(p) => {
            audit.record(
                "pulled",
                ctx.peer(),
                None,
                format!("{model} -> {}", p.path.display()),
            );
            Ok(Some(Reply::Pulled {
                model,
                path: p.path.display().to_string(),
                downloaded_bytes: p.downloaded_bytes,
            }))
        }
        Err(e) => {
            audit.record(
                "pull_failed",
                ctx.peer(),
                None,
                format!("{model}: {}", e.message),
            );
            Err(e)
        }
    }
}
