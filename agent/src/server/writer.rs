//! One session's write loop: replies and tokens first, then events (when subscribed) and the
//! latest telemetry sample.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use rbee_proto::frame::encode;
use rbee_proto::session::{Event, ServerMsg, Telemetry};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::auth::Ws;
use super::shared::Shared;

/// Most frames one write carries.
const BATCH: usize = 64;

/// Where one session's outgoing frames come from.
pub(super) struct Sources {
    pub out: mpsc::Receiver<ServerMsg>,
    pub events: broadcast::Receiver<Event>,
    pub telemetry: watch::Receiver<Telemetry>,
    pub subscribed: Arc<AtomicBool>,
}

/// Write until the session's senders are gone, the peer stops taking frames (none for
/// `limits.write_stall`), or shutdown; then cancel `ended` so the read loop stops too.
pub(super) async fn run(
    mut sink: SplitSink<Ws, Message>,
    mut src: Sources,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    ended: CancellationToken,
) {
    let stall = shared.limits.write_stall;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let msg = tokio::select! {
            biased;
            m = src.out.recv() => match m {
                Some(m) => m,
                None => break,
            },
            e = src.events.recv() => match e {
                Ok(event) if src.subscribed.load(Ordering::Relaxed) => ServerMsg::Event { event },
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // Too slow for the event stream: skip ahead, then resend the truth.
                    tracing::debug!("session lagged by {n} events; resyncing");
                    if src.subscribed.load(Ordering::Relaxed) && resync(&mut sink, &shared).await.is_err() {
                        break;
                    }
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            c = src.telemetry.changed() => {
                if c.is_err() { break; }
                if !src.subscribed.load(Ordering::Relaxed) { continue; }
                // Latest sample wins: a slow session never queues old telemetry.
                let telemetry = src.telemetry.borrow_and_update().clone();
                ServerMsg::Event { event: Event::Telemetry { telemetry } }
            }
            _ = shutdown.cancelled() => {
                // Let replies already queued (errors ending streams) go out first.
                while let Ok(m) = src.out.try_recv() {
                    let _ = sink.send(Message::text(encode(&m))).await;
                }
                let _ = sink.send(Message::Close(None)).await;
                break;
            }
        };
        // Replies and tokens already queued behind this one leave in the same write: a worker
        // sends a few steps' tokens at once, and one write per token woke the client per token.
        batch.clear();
        batch.push(msg);
        while batch.len() < BATCH {
            match src.out.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let write = async {
            for m in &batch {
                sink.feed(Message::text(encode(m))).await?;
            }
            sink.flush().await
        };
        match tokio::time::timeout(stall, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                tracing::info!(
                    "session took no frame for {} s; closing it",
                    stall.as_secs()
                );
                shared.metrics.dropped("write_stall");
                break;
            }
        }
    }
    ended.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}

/// Send every worker's current state (after events were lost to lag).
async fn resync(sink: &mut SplitSink<Ws, Message>, shared: &Shared) -> Result<(), ()> {
    for w in shared.supervisor.list() {
        let frame = encode(&ServerMsg::Event {
            event: Event::WorkerState { worker: w },
        });
        sink.send(Message::text(frame)).await.map_err(|_| ())?;
    }
    Ok(())
}
