//! Frames from a running worker: state changes, heartbeats, and tokens routed to sessions.
use std::sync::Arc;

use rbee_proto::frame::decode_line;
use rbee_proto::session::{Event, Reply, ServerMsg};
use rbee_proto::worker::FromWorker;
use rbee_proto::{ErrorCode, FinishReason, ModelSummary, Usage, WorkerState, PROTOCOL_VERSION};
use tokio::time::Instant;

use super::core::Core;
use super::slot::Slot;

/// What one run of a worker process learnt from its frames.
pub(crate) struct RunNotes {
    pub spawned_at: Instant,
    /// Why the model could not be loaded, as the worker said.
    pub load_error: Option<String>,
    /// The worker speaks another protocol version (both named): it cannot serve, and a restart
    /// would only meet the same binary again.
    pub incompatible: Option<String>,
}

impl Core {
    /// Act on one line from the worker's stdout.
    pub(crate) async fn on_frame(&self, slot: &Arc<Slot>, line: &[u8], notes: &mut RunNotes) {
        let msg = match decode_line::<FromWorker>(line) {
            Ok(m) => m,
            Err(e) => {
                self.metrics.error("bad_worker_frame");
                tracing::warn!(worker_id = %slot.id, "bad frame from worker: {}", e.message);
                return;
            }
        };
        match msg {
            FromWorker::Hello {
                protocol_version, ..
            } => self.on_hello(slot, protocol_version, notes),
            FromWorker::Loading { stage, progress } => self.update(slot, |i| {
                i.state = WorkerState::Loading;
                i.detail = format!("{stage} {:.0}%", progress * 100.0);
            }),
            FromWorker::Ready { model } => self.on_ready(slot, model, notes),
            FromWorker::Heartbeat {
                in_flight,
                last_tokens_per_s,
                rss_bytes,
                ..
            } => self.on_heartbeat(slot, in_flight, last_tokens_per_s, rss_bytes),
            FromWorker::Token { id, text } => on_token(slot, id, text).await,
            FromWorker::Done {
                id,
                finish_reason,
                usage,
            } => self.on_done(slot, id, finish_reason, usage).await,
            FromWorker::Error {
                id: Some(id),
                code,
                message,
            } => self.on_request_error(slot, id, code, message).await,
            FromWorker::Error {
                id: None,
                code,
                message,
            } => {
                if code == ErrorCode::VersionMismatch {
                    notes.incompatible.get_or_insert(message.clone());
                } else if code == ErrorCode::ModelLoad {
                    notes.load_error = Some(message.clone());
                }
                tracing::warn!(worker_id = %slot.id, %code, "worker error: {message}");
            }
        }
    }

    fn on_hello(&self, slot: &Slot, protocol_version: u32, notes: &mut RunNotes) {
        if protocol_version != PROTOCOL_VERSION {
            let msg = format!(
                "worker speaks protocol {protocol_version}, agent speaks {PROTOCOL_VERSION}"
            );
            notes.incompatible = Some(msg.clone());
            self.update(slot, |i| i.detail = msg);
        }
    }

    fn on_ready(&self, slot: &Slot, model: ModelSummary, notes: &RunNotes) {
        let ms = notes.spawned_at.elapsed().as_millis() as u64;
        self.metrics.ready(&slot.spec.model, ms as f64 / 1e3);
        {
            let mut st = slot.lock();
            st.last_heartbeat = Some(Instant::now());
            // What it holds now shows in what admission measures; the rest of its estimate
            // (a KV cache still to grow) stays promised.
            let rss = st.info.pid.and_then(rbee_host::proc::rss_bytes);
            if let (Some(r), Some(rss)) = (&st.reservation, rss) {
                if !r.on_gpu() {
                    r.measured(rss);
                }
            }
        }
        self.update(slot, |i| {
            i.state = WorkerState::Ready;
            i.summary = Some(model.clone());
            i.detail.clear();
        });
        let _ = self.events.send(Event::WorkerReady {
            worker: slot.id.clone(),
            model,
            spawn_to_ready_ms: ms,
        });
    }

    fn on_heartbeat(&self, slot: &Slot, in_flight: u32, tokens_per_s: f64, rss_bytes: u64) {
        {
            let mut st = slot.lock();
            st.last_heartbeat = Some(Instant::now());
            st.info.tokens_per_s = tokens_per_s;
            st.info.rss_bytes = rss_bytes;
            if let Some(r) = st.reservation.as_ref().filter(|r| !r.on_gpu()) {
                r.measured(rss_bytes);
            }
        }
        let _ = self.events.send(Event::Heartbeat {
            worker: slot.id.clone(),
            tokens_per_s,
            rss_bytes,
            in_flight,
        });
    }

    async fn on_done(&self, slot: &Slot, id: u64, finish_reason: FinishReason, usage: Usage) {
        let p = slot.lock().pending.remove(&id);
        if let Some(p) = p {
            self.metrics.infer_done(
                &slot.spec.model,
                p.started.elapsed().as_secs_f64(),
                p.tokens,
                finish_reason,
                &usage,
            );
            let _ = p
                .out
                .send(ServerMsg::Reply {
                    id: p.client_id,
                    body: Reply::InferDone {
                        worker: slot.id.clone(),
                        finish_reason,
                        usage,
                    },
                })
                .await;
        }
        self.settle(slot);
    }

    async fn on_request_error(&self, slot: &Slot, id: u64, code: ErrorCode, message: String) {
        let p = slot.lock().pending.remove(&id);
        if let Some(p) = p {
            self.metrics
                .infer_failed(&slot.spec.model, code.as_str(), p.tokens);
            let _ = p
                .out
                .send(ServerMsg::Error {
                    id: Some(p.client_id),
                    code,
                    message,
                })
                .await;
        }
        self.settle(slot);
    }

    /// Back to Ready when the last request finished.
    fn settle(&self, slot: &Slot) {
        let back = {
            let st = slot.lock();
            st.pending.is_empty() && st.info.state == WorkerState::Busy
        };
        if back {
            self.update(slot, |i| i.state = WorkerState::Ready);
        }
    }
}

/// Hand a token to the session that asked for it. Awaiting applies backpressure to this worker's
/// stdout; tokens are never dropped.
async fn on_token(slot: &Slot, id: u64, text: String) {
    let target = slot.lock().pending.get_mut(&id).map(|p| {
        p.tokens += 1;
        (p.out.clone(), p.client_id)
    });
    if let Some((out, client_id)) = target {
        let _ = out
            .send(ServerMsg::Token {
                id: client_id,
                text,
            })
            .await;
    }
}
