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
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    let (mut sink, mut source) = ws.split();
    if !handshake::greet(&mut sink, &mut source, peer, &shared, deadline).await? {
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
    let (id, deadline, body) = match decode::<ClientMsg>(&text) {
        Ok(ClientMsg::Request { id, deadline, body }) => (id, deadline, body),
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
            ctx.send_error(e.id, ErrorCode::BadFrame, e.message).await;
            return None;
        }
    };
    if deadline.is_some_and(|d| rbee_proto::now_millis() >= d) {
        ctx.shared.metrics.error("deadline_exceeded");
        ctx.send_error(
            Some(id),
            ErrorCode::DeadlineExceeded,
            "deadline already passed when the request arrived".into(),
        )
        .await;
        return None;
    }
    Some(Incoming { id, deadline, body })
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
