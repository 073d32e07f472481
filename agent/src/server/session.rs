//! One session's read loop: frames in, each request handed to its handler on its own task.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rbee_proto::frame::decode;
use rbee_proto::session::{ClientMsg, Event, Reply, Request, ServerMsg};
use rbee_proto::{ErrorCode, RequestId, UnixMillis};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::auth::Ws;
use super::handlers::{self, Ctx, Inflight};
use super::shared::Shared;
use super::{handshake, writer};

/// A request taken off the wire.
struct Incoming {
    id: RequestId,
    deadline: Option<UnixMillis>,
    body: Request,
}

/// Run a session from its handshake until either side leaves. At most `limits.in_flight` of
/// its requests are handled at once: beyond that the loop stops reading, so a client that
/// never reads its answers holds a bounded amount of the agent's memory.
pub(super) async fn run(
    ws: Ws,
    peer: SocketAddr,
    token: String,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    let (mut sink, mut source) = ws.split();
    let greeted = handshake::Greeting {
        peer,
        token,
        deadline,
    };
    if !handshake::greet(&mut sink, &mut source, greeted, &shared).await? {
        return Ok(());
    }
    let (out_tx, out_rx) = mpsc::channel::<ServerMsg>(1024);
    let subscribed = Arc::new(AtomicBool::new(false));
    // Cancelled when the writer gives up (the client stopped taking frames).
    let ended = CancellationToken::new();
    let sources = writer::Sources {
        out: out_rx,
        events: shared.events.subscribe(),
        telemetry: shared.telemetry.clone(),
        subscribed: subscribed.clone(),
    };
    let mut writer = tokio::spawn(writer::run(
        sink,
        sources,
        shared.clone(),
        shutdown.clone(),
        ended.clone(),
    ));
    let inflight: Inflight = Arc::default();
    let ctx = Ctx {
        shared: shared.clone(),
        out: out_tx.clone(),
        inflight: inflight.clone(),
        peer: peer.to_string(),
    };
    let permits = Arc::new(Semaphore::new(shared.limits.in_flight));
    loop {
        let msg = tokio::select! {
            m = source.next() => m,
            _ = shutdown.cancelled() => break,
            _ = ended.cancelled() => break,
        };
        let Some(Ok(msg)) = msg else { break };
        if let Message::Close(_) = msg {
            break;
        }
        let Some(req) = read_request(msg, &ctx).await else {
            continue;
        };
        if matches!(req.body, Request::Subscribe) {
            subscribed.store(true, Ordering::SeqCst);
            subscribe(&ctx, req.id).await;
            continue;
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.cancelled() => break,
            _ = ended.cancelled() => break,
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            handlers::answer(&ctx, req.id, req.deadline, req.body).await;
            drop(permit);
        });
    }
    // The session is gone: its inferences are cancelled down to the worker.
    let gone: Vec<_> = inflight.lock().unwrap().drain().collect();
    for (_, (worker, req)) in gone {
        shared.supervisor.cancel(&worker, req);
    }
    drop(ctx);
    drop(out_tx);
    // Queued answers get a moment to go out; then the writer goes, and with its queue every
    // handler still waiting to send.
    if tokio::time::timeout(Duration::from_secs(2), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    tracing::info!(%peer, "session ended");
    Ok(())
}

/// Decode one frame into a request, answering frames that are not one. `None` means nothing
/// to dispatch (an error was sent, or the frame carries nothing).
async fn read_request(msg: Message, ctx: &Ctx) -> Option<Incoming> {
    let text = match msg {
        Message::Text(t) => t,
        Message::Binary(_) => {
            ctx.send_error(
                None,
                ErrorCode::BadFrame,
                "binary frames are not part of the protocol; send JSON text".into(),
            )
            .await;
            return None;
        }
        _ => return None,
    };
    let (id, legacy_deadline, timeout_ms, body) = match decode::<ClientMsg>(&text) {
        Ok(ClientMsg::Request {
            id,
            deadline,
            timeout_ms,
            body,
        }) => (id, deadline, timeout_ms, body),
        Ok(ClientMsg::Hello { .. }) => {
            ctx.send_error(
                None,
                ErrorCode::BadFrame,
                "hello was already received".into(),
            )
            .await;
            return None;
        }
        Err(e) => {
            ctx.shared.metrics.error("bad_frame");
            let message = match time_limit_hint(&text) {
                Some(hint) => format!("{hint} ({})", e.message),
                None => e.message,
            };
            ctx.send_error(e.id, ErrorCode::BadFrame, message).await;
            return None;
        }
    };
    let deadline = match arrival_deadline(rbee_proto::now_millis(), legacy_deadline, timeout_ms) {
        Ok(d) => d,
        Err(message) => {
            ctx.shared.metrics.error("deadline_exceeded");
            ctx.send_error(Some(id), ErrorCode::DeadlineExceeded, message)
                .await;
            return None;
        }
    };
    Some(Incoming { id, deadline, body })
}

/// The request's deadline on this agent's clock, from what arrived at `now`: a `timeout_ms`
/// budget starts counting here, so the client's clock does not matter. An absolute `deadline`
/// alone (older clients) is taken as it is, by this agent's clock; one already passed is refused
/// naming the clock it was read on, as is a zero budget.
fn arrival_deadline(
    now: UnixMillis,
    legacy: Option<UnixMillis>,
    timeout_ms: Option<u64>,
) -> Result<Option<UnixMillis>, String> {
    match (timeout_ms, legacy) {
        (Some(0), _) => {
            Err("deadline already passed when the request arrived (timeout_ms 0)".into())
        }
        (Some(t), _) => Ok(Some(now.saturating_add(t))),
        (None, Some(d)) if now >= d => Err(format!(
            "deadline already passed when the request arrived (an absolute deadline is read by \
             this agent's clock, {} ms past it; send timeout_ms instead)",
            now - d
        )),
        (None, d) => Ok(d),
    }
}

/// What is wrong with a frame's time limit, naming the field: serde's own words for a
/// flattened request ("invalid value: integer `-5`, expected u64") do not say which field.
fn time_limit_hint(text: &str) -> Option<String> {
    if text.len() > rbee_proto::MAX_FRAME_BYTES {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    ["timeout_ms", "deadline"].into_iter().find_map(|key| {
        let v = value
            .get(key)
            .filter(|v| !v.is_null() && v.as_u64().is_none())?;
        Some(match key {
            "timeout_ms" => format!(
                "`timeout_ms` must be a whole number of milliseconds from 1 to {} (got {v})",
                u64::MAX
            ),
            _ => format!(
                "`deadline` must be Unix milliseconds from 0 to {} (got {v}); send \
                 `timeout_ms` instead",
                u64::MAX
            ),
        })
    })
}

/// Start the event stream from the truth: the current workers and the latest telemetry.
async fn subscribe(ctx: &Ctx, id: RequestId) {
    for w in ctx.shared.supervisor.list() {
        let _ = ctx
            .out
            .send(ServerMsg::Event {
                event: Event::WorkerState { worker: w },
            })
            .await;
    }
    let t = ctx.shared.telemetry.borrow().clone();
    let _ = ctx
        .out
        .send(ServerMsg::Event {
            event: Event::Telemetry { telemetry: t },
        })
        .await;
    let _ = ctx
        .out
        .send(ServerMsg::Reply {
            id,
            body: Reply::Subscribed,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::arrival_deadline;

    #[test]
    fn a_budget_counts_from_arrival_on_the_agents_clock() {
        // The client's clock is irrelevant: only the agent's `now` and the budget count.
        assert_eq!(arrival_deadline(1_000, None, Some(250)), Ok(Some(1_250)));
        // A budget wins over a legacy absolute deadline that a skewed client computed.
        assert_eq!(
            arrival_deadline(1_000, Some(10), Some(250)),
            Ok(Some(1_250))
        );
        assert!(arrival_deadline(1_000, None, Some(0)).is_err());
    }

    #[test]
    fn a_legacy_absolute_deadline_is_read_by_the_agents_clock() {
        assert_eq!(arrival_deadline(1_000, Some(5_000), None), Ok(Some(5_000)));
        assert_eq!(arrival_deadline(1_000, None, None), Ok(None));
        let e = arrival_deadline(1_000, Some(400), None).unwrap_err();
        assert!(
            e.contains("600 ms past it") && e.contains("timeout_ms"),
            "{e}"
        );
    }
}
