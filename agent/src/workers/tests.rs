//! The lifecycle on paused time: a scripted stand-in takes the place of `rbee-worker` behind the
//! launch seam, so crash loops, backoff, the breaker, hang detection and give-up run in
//! milliseconds and their timing is exact. Real processes are covered by `agent/tests/`.
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rbee_proto::config::AgentConfig;
use rbee_proto::frame::encode;
use rbee_proto::policy::RestartPolicy;
use rbee_proto::session::{Event, SpawnSpec, WorkerInfo};
use rbee_proto::worker::FromWorker;
use rbee_proto::{ErrorCode, ModelSummary, WorkerState, PROTOCOL_VERSION};
use tokio::io::{AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use super::process::{Launched, Launcher, Signal, WorkerProcess};
use super::{Parts, Supervisor};
use crate::audit::Audit;
use crate::metrics::Metrics;
use crate::statedir::StateDir;
use crate::telemetry::Collector;

/// What one stand-in process does.
#[derive(Clone, Debug)]
enum Script {
    /// Says hello, then exits with `code` after `after`.
    Crash { after: Duration, code: i32 },
    /// Says hello and ready, then heartbeats every `every`, `beats` times (forever if `None`),
    /// then goes silent while staying alive: a hang.
    Serve { every: Duration, beats: Option<u32> },
    /// Reports that its model cannot be loaded and exits 3, as `rbee-worker` does.
    LoadFail,
    /// Speaks another protocol version: says so and exits 0, as another `rbee-worker` does.
    OtherVersion,
}

/// The stand-in launcher: plays `script(n)` for the n-th launch and records what happened.
struct Fake {
    script: Box<dyn Fn(usize) -> Script + Send + Sync>,
    launches: Mutex<Vec<Instant>>,
    signals: Arc<Mutex<Vec<(Instant, Signal)>>>,
}

impl Fake {
    fn launches(&self) -> Vec<Instant> {
        self.launches.lock().unwrap().clone()
    }
    fn kills(&self) -> Vec<Instant> {
        let s = self.signals.lock().unwrap();
        s.iter()
            .filter(|(_, s)| *s == Signal::Kill)
            .map(|(t, _)| *t)
            .collect()
    }
}

impl Launcher for Fake {
    fn launch(&self, _spec: &SpawnSpec) -> io::Result<Launched> {
        let n = {
            let mut l = self.launches.lock().unwrap();
            l.push(Instant::now());
            l.len() - 1
        };
        let script = (self.script)(n);
        let (stdin, stdin_worker) = tokio::io::duplex(1 << 16);
        let (stdout_worker, stdout) = tokio::io::duplex(1 << 16);
        let (stderr_worker, stderr) = tokio::io::duplex(1 << 16);
        let (sig_tx, sig_rx) = mpsc::unbounded_channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        tokio::spawn(async move {
            let status = play(script, stdout_worker, stderr_worker, sig_rx).await;
            drop(stdin_worker);
            let _ = exit_tx.send(status);
        });
        Ok(Launched {
            pid: Some(100_000 + n as u32),
            stdin: Box::new(stdin),
            stdout: Box::new(stdout),
            stderr: Box::new(stderr),
            process: Box::new(FakeProcess {
                exit: exit_rx,
                status: None,
                signals: sig_tx,
                log: self.signals.clone(),
            }),
        })
    }
}

struct FakeProcess {
    exit: oneshot::Receiver<ExitStatus>,
    status: Option<ExitStatus>,
    signals: mpsc::UnboundedSender<Signal>,
    log: Arc<Mutex<Vec<(Instant, Signal)>>>,
}

impl WorkerProcess for FakeProcess {
    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>> {
        Box::pin(async move {
            if let Some(s) = self.status {
                return Ok(s);
            }
            let s = (&mut self.exit)
                .await
                .map_err(|_| io::Error::other("stand-in vanished"))?;
            self.status = Some(s);
            Ok(s)
        })
    }

    fn signal(&self, signal: Signal) {
        self.log.lock().unwrap().push((Instant::now(), signal));
        let _ = self.signals.send(signal);
    }
}

fn exit_code(code: i32) -> ExitStatus {
    ExitStatus::from_raw(code << 8)
}

fn killed(signal: Signal) -> ExitStatus {
    ExitStatus::from_raw(match signal {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    })
}

async fn say(out: &mut (impl AsyncWrite + Unpin), frame: &FromWorker) {
    let mut line = encode(frame);
    line.push('\n');
    let _ = out.write_all(line.as_bytes()).await;
}

/// Play one script as a worker would on its pipes; the exit status comes back.
async fn play(
    script: Script,
    mut out: DuplexStream,
    mut err: DuplexStream,
    mut signals: mpsc::UnboundedReceiver<Signal>,
) -> ExitStatus {
    let version = match script {
        Script::OtherVersion => PROTOCOL_VERSION + 1,
        _ => PROTOCOL_VERSION,
    };
    say(
        &mut out,
        &FromWorker::Hello {
            protocol_version: version,
            pid: 1,
        },
    )
    .await;
    let _ = err.write_all(b"stand-in worker starting\n").await;
    match script {
        Script::Crash { after, code } => tokio::select! {
            _ = tokio::time::sleep(after) => exit_code(code),
            Some(s) = signals.recv() => killed(s),
        },
        Script::LoadFail => {
            let message = "cannot load model: bad magic".to_string();
            say(
                &mut out,
                &FromWorker::Error {
                    id: None,
                    code: ErrorCode::ModelLoad,
                    message,
                },
            )
            .await;
            exit_code(3)
        }
        Script::OtherVersion => {
            let message =
                format!("agent speaks protocol {PROTOCOL_VERSION}, worker speaks {version}");
            let frame = FromWorker::Error {
                id: None,
                code: ErrorCode::VersionMismatch,
                message,
            };
            say(&mut out, &frame).await;
            exit_code(0)
        }
        Script::Serve { every, beats } => serve(&mut out, every, beats, &mut signals).await,
    }
}

async fn serve(
    out: &mut DuplexStream,
    every: Duration,
    beats: Option<u32>,
    signals: &mut mpsc::UnboundedReceiver<Signal>,
) -> ExitStatus {
    let model: ModelSummary = serde_json::from_value(serde_json::json!({
        "name": "stand-in", "architecture": "llama", "context_length": 2048,
        "memory_bytes": 1 << 20, "device": "cpu",
    }))
    .unwrap();
    say(out, &FromWorker::Ready { model }).await;
    let mut seq = 0;
    loop {
        let beating = beats.is_none_or(|b| seq < u64::from(b));
        tokio::select! {
            _ = tokio::time::sleep(every), if beating => {
                seq += 1;
                say(out, &FromWorker::Heartbeat {
                    seq, in_flight: 0, queued: 0, tokens_generated: 0, last_tokens_per_s: 0.0, rss_bytes: 1 << 20,
                }).await;
            }
            s = signals.recv() => return killed(s.unwrap_or(Signal::Kill)),
        }
    }
}

/// A supervisor over the stand-in, with a model file it admits.
struct Rig {
    _dir: tempfile::TempDir,
    sup: Arc<Supervisor>,
    fake: Arc<Fake>,
    events: broadcast::Receiver<Event>,
    audit_path: std::path::PathBuf,
    model: String,
}

fn rig(
    restart: RestartPolicy,
    heartbeat_ms: u64,
    script: impl Fn(usize) -> Script + Send + Sync + 'static,
) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let model = models.join("m.gguf");
    std::fs::write(&model, b"GGUF stand-in").unwrap();
    let config = Arc::new(AgentConfig {
        model_dirs: vec![models],
        heartbeat_ms,
        stop_grace_ms: 500,
        admission_headroom_bytes: 0,
        restart,
        // Scripted runs last minutes without loading; the load timeout has its own test.
        load_timeout: rbee_proto::config::LoadTimeout {
            base_secs: 24 * 3600,
            per_gib_secs: 0,
        },
        ..AgentConfig::default()
    });
    let state = Arc::new(StateDir::open(&dir.path().join("state")).unwrap());
    let (events, rx) = broadcast::channel(1 << 14);
    let audit_path = state.audit_path();
    let fake = Arc::new(Fake {
        script: Box::new(script),
        launches: Mutex::default(),
        signals: Arc::default(),
    });
    let sup = Supervisor::new(Parts {
        config,
        launcher: fake.clone(),
        audit: Arc::new(Audit::open(&audit_path, events.clone()).unwrap()),
        state,
        metrics: Arc::new(Metrics::default()),
        events,
        collector: Arc::new(Mutex::new(Collector::new(dir.path().to_path_buf()))),
    });
    Rig {
        model: model.display().to_string(),
        _dir: dir,
        sup,
        fake,
        events: rx,
        audit_path,
    }
}

impl Rig {
    async fn spawn(&self) -> String {
        let spec = SpawnSpec {
            model: self.model.clone(),
            device: "cpu".into(),
            threads: None,
            ..Default::default()
        };
        self.sup.spawn(spec, None).await.unwrap().id
    }

    /// The next state of `id` that satisfies `pred` (an hour of paused time at most).
    async fn until(&mut self, id: &str, pred: impl Fn(&WorkerInfo) -> bool) -> WorkerInfo {
        let wait = async {
            loop {
                if let Ok(Event::WorkerState { worker }) = self.events.recv().await {
                    if worker.id == id && pred(&worker) {
                        return worker;
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(3600), wait)
            .await
            .expect("state reached within an hour of paused time")
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(&self.audit_path).unwrap()
    }
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// `got` is `want`, give or take the few milliseconds a run takes on paused time.
fn about(got: Duration, want: Duration) -> bool {
    got >= want && got < want + Duration::from_millis(50)
}

#[tokio::test(start_paused = true)]
async fn crash_loop_backs_off_1_2_4_8_s_then_the_breaker_opens() {
    let mut r = rig(RestartPolicy::default(), 2000, |_| Script::Crash {
        after: Duration::ZERO,
        code: 1,
    });
    let id = r.spawn().await;
    let failed = r.until(&id, |w| w.state == WorkerState::Failed).await;
    let launches = r.fake.launches();
    assert_eq!(launches.len(), 5, "breaker opens on the 5th failure");
    let g = gaps(&launches);
    for (got, want) in g.iter().zip([1, 2, 4, 8]) {
        assert!(about(*got, Duration::from_secs(want)), "gaps {g:?}");
    }
    assert_eq!(failed.restarts, 4);
    assert_eq!(
        failed.detail,
        "circuit breaker open: 5 failures within 300 s; last: exit code 1"
    );
    let audit = r.audit();
    assert_eq!(audit.matches("\"auto_restart\"").count(), 4, "{audit}");
    assert!(audit.contains("\"breaker_open\""), "{audit}");
    // Open means open: no further start however long we wait.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(r.fake.launches().len(), 5);
    r.sup.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn breaker_forgets_failures_outside_its_window_and_the_budget_gives_up() {
    let policy = RestartPolicy {
        initial_backoff_ms: 1000,
        max_backoff_ms: 60_000,
        max_restarts: 3,
        breaker_failures: 2,
        breaker_window_secs: 60,
    };
    // Each run lasts 2 minutes: no two failures fall within one 60 s window.
    let mut r = rig(policy, 2000, |_| Script::Crash {
        after: Duration::from_secs(120),
        code: 1,
    });
    let id = r.spawn().await;
    let failed = r.until(&id, |w| w.state == WorkerState::Failed).await;
    assert_eq!(r.fake.launches().len(), 4, "the first run and 3 restarts");
    assert_eq!(failed.detail, "gave up after 3 restarts; last: exit code 1");
    let audit = r.audit();
    assert!(audit.contains("\"gave_up\""), "{audit}");
    assert!(!audit.contains("\"breaker_open\""), "{audit}");
    r.sup.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_after_n_failures_within_m_minutes() {
    let policy = RestartPolicy {
        initial_backoff_ms: 1000,
        max_backoff_ms: 60_000,
        max_restarts: 10,
        breaker_failures: 3,
        breaker_window_secs: 120,
    };
    // 30 s runs: three failures fit in two minutes.
    let mut r = rig(policy, 2000, |_| Script::Crash {
        after: Duration::from_secs(30),
        code: 7,
    });
    let id = r.spawn().await;
    let failed = r.until(&id, |w| w.state == WorkerState::Failed).await;
    assert_eq!(r.fake.launches().len(), 3);
    assert_eq!(
        failed.detail,
        "circuit breaker open: 3 failures within 120 s; last: exit code 7"
    );
    r.sup.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn missing_heartbeats_mean_hung_killed_and_restarted() {
    // Heartbeats every second, three of them, then silence while the process stays alive.
    let mut r = rig(RestartPolicy::default(), 1000, |n| Script::Serve {
        every: Duration::from_secs(1),
        beats: (n == 0).then_some(3),
    });
    let id = r.spawn().await;
    let ready = r.until(&id, |w| w.state == WorkerState::Ready).await;
    assert_eq!(ready.pid, Some(100_000));
    let t_ready = Instant::now();
    let crashed = r.until(&id, |w| w.state == WorkerState::Crashed).await;
    let exit = crashed.last_exit.unwrap();
    assert!(exit.starts_with("hung: no heartbeat for"), "{exit}");
    assert!(exit.ends_with("(limit 2000 ms)"), "{exit}");
    let kills = r.fake.kills();
    assert_eq!(kills.len(), 1, "one SIGKILL");
    // Last beat at 3 s; the limit is 2 heartbeats; the watchdog looks every 250 ms.
    let waited = kills[0] - t_ready;
    assert!(
        waited > Duration::from_secs(5) && waited <= Duration::from_millis(5300),
        "killed {waited:?} after ready"
    );
    // Restarted after the first backoff, and the new run (which keeps beating) stays up.
    let again = r.until(&id, |w| w.state == WorkerState::Ready).await;
    assert_eq!(again.restarts, 1);
    assert!(about(
        gaps(&r.fake.launches())[0],
        waited + Duration::from_secs(1)
    ));
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(r.fake.launches().len(), 2, "a beating worker is left alone");
    assert_eq!(r.sup.list()[0].state, WorkerState::Ready);
    r.sup.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn load_failure_fails_once_without_restarts() {
    let mut r = rig(RestartPolicy::default(), 2000, |_| Script::LoadFail);
    let id = r.spawn().await;
    let failed = r.until(&id, |w| w.state == WorkerState::Failed).await;
    assert_eq!(failed.detail, "cannot load model: bad magic");
    assert_eq!(failed.restarts, 0);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(r.fake.launches().len(), 1);
    assert!(r.audit().contains("\"load_failed\""));
    r.sup.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn operator_restart_gives_a_failed_worker_a_fresh_budget_and_kill_ends_a_backoff() {
    let policy = RestartPolicy {
        breaker_failures: 2,
        ..RestartPolicy::default()
    };
    let mut r = rig(policy, 2000, |_| Script::Crash {
        after: Duration::ZERO,
        code: 1,
    });
    let id = r.spawn().await;
    r.until(&id, |w| w.state == WorkerState::Failed).await;
    assert_eq!(r.fake.launches().len(), 2);
    r.sup.restart(&id, None).await.unwrap();
    r.until(&id, |w| w.state == WorkerState::Starting).await;
    r.until(&id, |w| w.state == WorkerState::Failed).await;
    assert_eq!(
        r.fake.launches().len(),
        4,
        "two more runs after the restart"
    );
    r.sup.restart(&id, None).await.unwrap();
    r.until(&id, |w| w.state == WorkerState::BackingOff).await;
    r.sup.kill(&id, None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(r.fake.launches().len(), 5, "no start after the kill");
    assert!(r.sup.list().is_empty());
    r.sup.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_of_another_protocol_fails_at_once_naming_both_versions() {
    let mut r = rig(RestartPolicy::default(), 2000, |_| Script::OtherVersion);
    let id = r.spawn().await;
    let failed = r.until(&id, |w| w.state == WorkerState::Failed).await;
    let want = format!(
        "incompatible worker: worker speaks protocol {}, agent speaks {PROTOCOL_VERSION}",
        PROTOCOL_VERSION + 1
    );
    assert_eq!(failed.detail, want);
    assert_eq!(failed.restarts, 0);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        r.fake.launches().len(),
        1,
        "no restart: the same binary would come back"
    );
    let audit = r.audit();
    assert!(audit.contains("\"load_failed\""), "{audit}");
    assert!(!audit.contains("\"auto_restart\""), "{audit}");
    r.sup.shutdown().await;
}
