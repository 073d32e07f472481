//! One run of a worker process: start it, wire its pipes, follow its frames and heartbeats until
//! it exits or is stopped, then say how it ended.
use std::io;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use rbee_proto::frame::encode;
use rbee_proto::session::ServerMsg;
use rbee_proto::worker::ToWorker;
use rbee_proto::{ErrorCode, WorkerState, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::core::Core;
use super::frames::RunNotes;
use super::lines::ByteLines;
use super::process::{describe_status, Launched, Signal, WorkerProcess};
use super::slot::{Control, PendingInfer, Slot};

/// Exit code `rbee-worker` uses when its model cannot be loaded: retrying will not help.
const EXIT_MODEL_LOAD: i32 = 3;

/// How a run ended, as the lifecycle needs to know it.
pub(crate) enum Ended {
    /// Stopped on purpose (kill or shutdown); the sender, if any, waits for the stop.
    Stopped(Option<oneshot::Sender<()>>),
    /// The operator asked for a restart.
    RestartRequested,
    /// The model cannot be loaded: restarting will not help.
    LoadFailed,
    /// Died or hung: the restart policy decides.
    Crashed,
}

/// How a run ended and the words for it.
pub(crate) struct Outcome {
    pub ended: Ended,
    pub reason: String,
}

impl Outcome {
    fn crashed(reason: String) -> Self {
        Self {
            ended: Ended::Crashed,
            reason,
        }
    }
}

/// A stop the lifecycle asked for while the process ran: who waits for it, and whether a new
/// run follows.
struct StopAsked {
    ack: Option<oneshot::Sender<()>>,
    restart: bool,
}

/// What following the process found.
struct Followed {
    status: io::Result<ExitStatus>,
    stop: Option<StopAsked>,
    hung: Option<String>,
    /// Killed for starting or loading past its limit: a load failure, not a crash.
    load_timeout: Option<String>,
}

/// The tasks feeding the worker's stdin and draining its stderr.
struct Plumbing {
    stdin: mpsc::Sender<String>,
    writer: JoinHandle<()>,
    log: JoinHandle<()>,
}

impl Core {
    /// Start the worker process once and follow it until it ends.
    pub(crate) async fn run_once(
        &self,
        slot: &Arc<Slot>,
        ctl: &mut mpsc::Receiver<Control>,
    ) -> Outcome {
        self.update(slot, |i| {
            i.state = WorkerState::Starting;
            i.summary = None;
            i.detail.clear();
        });
        slot.lock().last_heartbeat = None;
        let spawned_at = Instant::now();
        let Launched {
            pid,
            stdin,
            stdout,
            stderr,
            mut process,
        } = match self.launcher.launch(&slot.spec) {
            Ok(l) => l,
            Err(e) => return Outcome::crashed(e.to_string()),
        };
        self.update(slot, |i| i.pid = pid);
        let pipes = self.plumb(slot, stdin, stderr);
        let mut notes = RunNotes {
            spawned_at,
            load_error: None,
            incompatible: None,
        };
        let mut lines = ByteLines::new(stdout);
        let mut stdout_open = true;
        let followed = self
            .follow(
                slot,
                ctl,
                process.as_mut(),
                &pipes.stdin,
                &mut lines,
                &mut stdout_open,
                &mut notes,
            )
            .await;
        // Drain frames already written (tokens, a final error) before declaring the end.
        while stdout_open {
            match tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await {
                Ok(Ok(Some(line))) => self.on_frame(slot, &line, &mut notes).await,
                _ => stdout_open = false,
            }
        }
        {
            let mut st = slot.lock();
            st.stdin = None;
            st.reservation = None;
        }
        drop(pipes.stdin);
        pipes.writer.abort();
        let _ = tokio::time::timeout(Duration::from_secs(1), pipes.log).await;
        self.finish(slot, followed, notes).await
    }

    /// Start the stdin writer (it says hello first) and the stderr collector.
    fn plumb(
        &self,
        slot: &Arc<Slot>,
        mut stdin: Box<dyn AsyncWrite + Send + Unpin>,
        stderr: Box<dyn AsyncRead + Send + Unpin>,
    ) -> Plumbing {
        let (in_tx, mut in_rx) = mpsc::channel::<String>(self.cfg.worker_queue * 2 + 16);
        let _ = in_tx.try_send(encode(&ToWorker::Hello {
            protocol_version: PROTOCOL_VERSION,
        }));
        slot.lock().stdin = Some(in_tx.clone());
        let writer = tokio::spawn(async move {
            while let Some(mut line) = in_rx.recv().await {
                line.push('\n');
                if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
                    break;
                }
            }
        });
        let log = tokio::spawn(super::logs::collect(
            slot.clone(),
            self.state.log_path(&slot.id),
            super::logs::rotation(&self.cfg.logs),
            stderr,
        ));
        Plumbing {
            stdin: in_tx,
            writer,
            log,
        }
    }

    /// Follow the process: frames, heartbeat watchdog, operator control and shutdown.
    #[allow(clippy::too_many_arguments)]
    async fn follow<R: AsyncRead + Unpin>(
        &self,
        slot: &Arc<Slot>,
        ctl: &mut mpsc::Receiver<Control>,
        process: &mut dyn WorkerProcess,
        stdin: &mpsc::Sender<String>,
        lines: &mut ByteLines<R>,
        stdout_open: &mut bool,
        notes: &mut RunNotes,
    ) -> Followed {
        let hb_limit = Duration::from_millis(self.cfg.heartbeat_ms * 2);
        let mut watchdog = tokio::time::interval(Duration::from_millis(
            (self.cfg.heartbeat_ms / 4).clamp(20, 500),
        ));
        let mut hung = None;
        let mut killed = false;
        let load_limit = super::load_timeout::load_limit(&self.cfg.load_timeout, &slot.spec.model);
        let mut load_timeout = None;
        let (status, stop) = loop {
            tokio::select! {
                line = lines.next_line(), if *stdout_open => match line {
                    Ok(Some(line)) => {
                        self.on_frame(slot, &line, notes).await;
                        // Nothing can be said to a worker of another protocol: end it now.
                        if notes.incompatible.is_some() && !killed {
                            killed = true;
                            process.signal(Signal::Kill);
                        }
                    }
                    _ => *stdout_open = false,
                },
                st = process.wait() => break (st, None),
                _ = watchdog.tick() => {
                    if let Some(msg) = heartbeat_missed(slot, hb_limit) {
                        tracing::warn!(worker_id = %slot.id, "{msg}; killing");
                        hung = Some(msg);
                        process.signal(Signal::Kill);
                    } else if let (false, Some(msg)) = (killed, load_overdue(slot, notes, load_limit)) {
                        tracing::warn!(worker_id = %slot.id, "{msg}; killing");
                        killed = true;
                        load_timeout = Some(msg);
                        process.signal(Signal::Kill);
                    }
                }
                c = ctl.recv() => {
                    let stop = match c {
                        Some(Control::Stop(ack)) => StopAsked { ack: Some(ack), restart: false },
                        Some(Control::Restart) => StopAsked { ack: None, restart: true },
                        None => StopAsked { ack: None, restart: false },
                    };
                    self.update(slot, |i| i.state = WorkerState::Stopping);
                    break (self.stop_process(process, stdin).await, Some(stop));
                }
                _ = self.shutdown.cancelled() => {
                    self.update(slot, |i| i.state = WorkerState::Stopping);
                    let stop = StopAsked { ack: None, restart: false };
                    break (self.stop_process(process, stdin).await, Some(stop));
                }
            }
        };
        Followed {
            status,
            stop,
            hung,
            load_timeout,
        }
    }

    /// Ask the worker to exit, then force it after the grace period.
    async fn stop_process(
        &self,
        process: &mut dyn WorkerProcess,
        stdin: &mpsc::Sender<String>,
    ) -> io::Result<ExitStatus> {
        let _ = stdin.try_send(encode(&ToWorker::Shutdown));
        process.signal(Signal::Term);
        let grace = Duration::from_millis(self.cfg.stop_grace_ms);
        match tokio::time::timeout(grace, process.wait()).await {
            Ok(s) => s,
            Err(_) => {
                process.signal(Signal::Kill);
                process.wait().await
            }
        }
    }

    /// End every request still waiting on this worker, and say how the run ended.
    async fn finish(&self, slot: &Slot, followed: Followed, notes: RunNotes) -> Outcome {
        let Followed {
            status,
            stop,
            hung,
            load_timeout,
        } = followed;
        let status_text = match &status {
            Ok(s) => describe_status(s),
            Err(e) => format!("wait failed: {e}"),
        };
        let gone: Vec<PendingInfer> = slot.lock().pending.drain().map(|(_, p)| p).collect();
        let code = if stop.is_some() {
            ErrorCode::ShuttingDown
        } else {
            ErrorCode::WorkerGone
        };
        for p in gone {
            let _ = p
                .out
                .send(ServerMsg::Error {
                    id: Some(p.client_id),
                    code,
                    message: format!("worker `{}` ended: {status_text}", slot.id),
                })
                .await;
        }
        match stop {
            Some(StopAsked { restart: true, .. }) => Outcome {
                ended: Ended::RestartRequested,
                reason: format!("restarted by operator ({status_text})"),
            },
            Some(StopAsked { ack, .. }) => Outcome {
                ended: Ended::Stopped(ack),
                reason: format!("stopped ({status_text})"),
            },
            None => {
                if let Some(msg) = notes.incompatible {
                    return Outcome {
                        ended: Ended::LoadFailed,
                        reason: format!("incompatible worker: {msg}"),
                    };
                }
                if let Some(msg) = load_timeout {
                    return Outcome {
                        ended: Ended::LoadFailed,
                        reason: msg,
                    };
                }
                let code = status.as_ref().ok().and_then(|s| s.code());
                match (code, notes.load_error, hung) {
                    (Some(EXIT_MODEL_LOAD), Some(msg), _) => Outcome {
                        ended: Ended::LoadFailed,
                        reason: msg,
                    },
                    (_, _, Some(h)) => Outcome::crashed(h),
                    _ => Outcome::crashed(status_text),
                }
            }
        }
    }
}

/// The load-timeout message when the worker is still starting or loading past `limit`.
fn load_overdue(slot: &Slot, notes: &RunNotes, limit: Duration) -> Option<String> {
    let state = slot.lock().info.state;
    super::load_timeout::load_overdue(state, notes.spawned_at.elapsed(), limit)
}

/// The hang message when a serving worker's last heartbeat is older than `limit`.
fn heartbeat_missed(slot: &Slot, limit: Duration) -> Option<String> {
    let st = slot.lock();
    let t = st.last_heartbeat?;
    (st.info.state.is_serving() && t.elapsed() > limit).then(|| {
        format!(
            "hung: no heartbeat for {} ms (limit {} ms)",
            t.elapsed().as_millis(),
            limit.as_millis()
        )
    })
}
