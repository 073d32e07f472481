//! One handler per request kind. [`answer`] dispatches a request to its handler and sends the
//! reply (or the error) back under the request's id.
mod ctx;
mod infer;
mod logs;
mod metrics;
mod node;
mod pull;
mod workers;

use rbee_proto::session::{Reply, Request, ServerMsg};
use rbee_proto::{RequestId, UnixMillis};

use crate::workers::Prompt;
use ctx::Answer;
pub(super) use ctx::{Ctx, Inflight};

/// Run the handler for `body` and send what it answers.
pub(super) async fn answer(ctx: &Ctx, id: RequestId, deadline: Option<UnixMillis>, body: Request) {
    match dispatch(ctx, id, deadline, body).await {
        Ok(Some(body)) => {
            let _ = ctx.out.send(ServerMsg::Reply { id, body }).await;
        }
        Ok(None) => {}
        Err(e) => {
            ctx.shared.metrics.error(e.code.as_str());
            ctx.send_error(Some(id), e.code, e.message).await;
        }
    }
}

async fn dispatch(ctx: &Ctx, id: RequestId, deadline: Option<UnixMillis>, body: Request) -> Answer {
    match body {
        Request::Ping => node::ping(),
        Request::Status => node::status(ctx),
        Request::ListModels => node::list_models(ctx),
        Request::ListWorkers => workers::list(ctx),
        Request::Spawn(spec) => workers::spawn(ctx, spec).await,
        Request::Kill { worker } => workers::kill(ctx, worker).await,
        Request::Restart { worker } => workers::restart(ctx, worker).await,
        Request::TailLog { worker, lines } => logs::tail_log(ctx, worker, lines),
        Request::ReadLog {
            worker,
            lines,
            after,
        } => logs::read_log(ctx, worker, lines, after),
        Request::Infer {
            worker,
            model,
            prompt,
            params,
        } => {
            let prompt = Prompt::Text(prompt);
            infer::infer(ctx, id, deadline, worker, model, prompt, params)
        }
        Request::Chat {
            worker,
            model,
            messages,
            params,
        } => {
            let prompt = Prompt::Chat(messages);
            infer::infer(ctx, id, deadline, worker, model, prompt, params)
        }
        Request::Cancel { request } => infer::cancel(ctx, request),
        Request::Subscribe => Ok(Some(Reply::Subscribed)),
        Request::Pull { model } => pull::pull(ctx, model).await,
        Request::Metrics => metrics::metrics(ctx),
    }
}
