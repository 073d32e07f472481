//! A worker's lifecycle as an explicit state machine, one small async fn per state:
//!
//! ```text
//!            ┌──────────── operator restart ────────────┐
//!            v                                          │
//!   ──► Running ──crash──► (policy) ──► BackingOff ──► Running
//!         │  │                 │
//!         │  └─load failure──► Failed ◄── breaker open / restart budget spent
//!         └─stop/shutdown────► Done
//! ```
//!
//! The restart policy (exponential backoff, a finite budget, a circuit breaker over a sliding
//! window) comes from `rbee_proto::policy`; this module only applies it. Time is tokio's, so the
//! whole machine runs on paused time in tests.
use std::sync::Arc;
use std::time::Duration;

use rbee_proto::policy::{AfterFailure, CircuitBreaker};
use rbee_proto::WorkerState;
use tokio::sync::{mpsc, oneshot};

use super::core::Core;
use super::run::Ended;
use super::slot::{Control, Slot};

/// The states a worker's task moves through.
enum Phase {
    /// A process runs (or is being started).
    Running,
    /// Crashed; the next start waits `delay`. `reason` is the crash, for the audit line.
    BackingOff { delay: Duration, reason: String },
    /// Needs the operator: load failure, breaker open, or restart budget spent.
    Failed,
    /// The task ends; the sender, if any, learns the worker is gone.
    Done(Option<oneshot::Sender<()>>),
}

/// The task that owns one worker for its whole life.
pub(crate) struct Lifecycle {
    core: Arc<Core>,
    slot: Arc<Slot>,
    ctl: mpsc::Receiver<Control>,
    breaker: CircuitBreaker,
    restarts: u32,
}

impl Lifecycle {
    pub(crate) fn new(core: Arc<Core>, slot: Arc<Slot>, ctl: mpsc::Receiver<Control>) -> Self {
        Self {
            core,
            slot,
            ctl,
            breaker: CircuitBreaker::default(),
            restarts: 0,
        }
    }

    /// Drive the machine until the worker is stopped for good.
    pub(crate) async fn run(mut self) {
        let mut phase = Phase::Running;
        loop {
            phase = match phase {
                Phase::Running => self.running().await,
                Phase::BackingOff { delay, reason } => self.backing_off(delay, reason).await,
                Phase::Failed => self.failed().await,
                Phase::Done(ack) => {
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                    return;
                }
            };
        }
    }

    /// Run the process once; what comes next depends on how it ended.
    async fn running(&mut self) -> Phase {
        let outcome = self.core.run_once(&self.slot, &mut self.ctl).await;
        let reason = outcome.reason;
        match outcome.ended {
            Ended::Stopped(ack) => {
                self.core.update(&self.slot, |i| {
                    i.state = WorkerState::Exited;
                    i.pid = None;
                    i.last_exit = Some(reason);
                });
                Phase::Done(ack)
            }
            Ended::RestartRequested => {
                self.reset_budget();
                self.core.update(&self.slot, |i| {
                    i.restarts = 0;
                    i.last_exit = Some(reason);
                });
                Phase::Running
            }
            Ended::LoadFailed => {
                self.core.audit.record(
                    "load_failed",
                    None,
                    Some(self.slot.id.clone()),
                    reason.clone(),
                );
                self.core.update(&self.slot, |i| {
                    i.state = WorkerState::Failed;
                    i.pid = None;
                    i.last_exit = Some(reason.clone());
                    i.detail = reason;
                });
                Phase::Failed
            }
            Ended::Crashed => self.crashed(reason),
        }
    }

    /// A crash: the restart policy picks backoff, breaker open, or give up.
    fn crashed(&mut self, reason: String) -> Phase {
        let core = &self.core;
        core.metrics.error("worker_crash");
        core.update(&self.slot, |i| {
            i.state = WorkerState::Crashed;
            i.pid = None;
            i.last_exit = Some(reason.clone());
        });
        let policy = &core.cfg.restart;
        let now = tokio::time::Instant::now().into_std();
        let (action, msg) = match self.breaker.on_failure(policy, self.restarts, now) {
            AfterFailure::RestartIn(delay) => {
                core.update(&self.slot, |i| {
                    i.state = WorkerState::BackingOff;
                    i.detail = format!("restart in {:.1}s", delay.as_secs_f64());
                });
                return Phase::BackingOff { delay, reason };
            }
            AfterFailure::BreakerOpen => (
                {
                    core.metrics.breaker_trip(&self.slot.spec.model);
                    "breaker_open"
                },
                format!(
                    "circuit breaker open: {} failures within {} s; last: {reason}",
                    policy.breaker_failures, policy.breaker_window_secs
                ),
            ),
            AfterFailure::GiveUp => (
                "gave_up",
                format!("gave up after {} restarts; last: {reason}", self.restarts),
            ),
        };
        core.audit
            .record(action, None, Some(self.slot.id.clone()), msg.clone());
        core.update(&self.slot, |i| {
            i.state = WorkerState::Failed;
            i.detail = msg;
        });
        Phase::Failed
    }

    /// Wait out the backoff, unless the operator or a shutdown intervenes.
    async fn backing_off(&mut self, delay: Duration, reason: String) -> Phase {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.core.shutdown.cancelled() => return self.exited(None),
            c = self.ctl.recv() => match c {
                Some(Control::Stop(ack)) => return self.exited(Some(ack)),
                Some(Control::Restart) => {
                    self.reset_budget();
                    return Phase::Running;
                }
                None => return Phase::Done(None),
            },
        }
        self.restarts += 1;
        let restarts = self.restarts;
        self.core.metrics.restart(&self.slot.spec.model);
        self.core.audit.record(
            "auto_restart",
            None,
            Some(self.slot.id.clone()),
            format!("attempt {restarts} after: {reason}"),
        );
        self.core.update(&self.slot, |i| i.restarts = restarts);
        Phase::Running
    }

    /// Wait for the operator: a restart starts afresh, a stop ends the task.
    async fn failed(&mut self) -> Phase {
        tokio::select! {
            _ = self.core.shutdown.cancelled() => Phase::Done(None),
            c = self.ctl.recv() => match c {
                Some(Control::Stop(ack)) => {
                    self.core.update(&self.slot, |i| i.state = WorkerState::Exited);
                    Phase::Done(Some(ack))
                }
                Some(Control::Restart) => {
                    self.reset_budget();
                    self.core.update(&self.slot, |i| {
                        i.restarts = 0;
                        i.detail.clear();
                    });
                    Phase::Running
                }
                None => Phase::Done(None),
            },
        }
    }

    /// Stopped while no process ran.
    fn exited(&self, ack: Option<oneshot::Sender<()>>) -> Phase {
        self.core.update(&self.slot, |i| {
            i.state = WorkerState::Exited;
            i.detail.clear();
        });
        Phase::Done(ack)
    }

    fn reset_budget(&mut self) {
        self.breaker.reset();
        self.restarts = 0;
    }
}
