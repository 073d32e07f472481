//! `rbee-agent`: the daemon on every GPU node (the "hive").
//!
//! Owns the session server (auth, handshake, requests, events), worker supervision, telemetry,
//! the audit log and the desired state in its state directory. It must not draw anything or hold
//! opinions about other nodes: dashboards and scripts come to it.
//!
//! | module      | job                                                                   |
//! |-------------|-----------------------------------------------------------------------|
//! | [`server`]  | sessions: accept, auth, `/metrics`, handshake, one handler per request |
//! | [`workers`] | worker registry, lifecycle state machine, processes, admission, routing |
//! | [`statedir`]| state directory: lock, token, desired state, atomic writes            |
//! | [`audit`]   | the append-only audit log                                             |
//! | [`metrics`] | counters for `/metrics`                                               |
//! | [`telemetry`]| CPU, memory, disk and GPU samples                                    |
//! | [`pull`]    | pulling Hugging Face models, paced as progress events (rules: `rbee_store`) |
#![warn(missing_docs)]

pub mod audit;
pub mod metrics;
pub mod pull;
pub mod server;
pub mod statedir;
pub mod telemetry;
pub mod workers;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbee_proto::config::AgentConfig;
use rbee_proto::session::Telemetry;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// Everything `run` needs, already validated.
pub struct Options {
    /// The agent's configuration.
    pub config: AgentConfig,
    /// Where token, lock, desired state, audit log and worker logs live.
    pub state_dir: PathBuf,
    /// The `rbee-worker` binary.
    pub worker_bin: PathBuf,
}

/// A started agent: its address, and a handle to stop it.
pub struct Running {
    /// Where sessions connect.
    pub addr: std::net::SocketAddr,
    /// The file holding the session token.
    pub token_path: PathBuf,
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stop gracefully (as SIGTERM does) and wait until every worker is gone.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.done.await;
    }

    /// Wait until the agent stops on its own (it never does unless `stop_token` fires).
    pub async fn wait(self) {
        let _ = self.done.await;
    }

    /// Cancelling this token stops the agent (as `stop` does).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// The config with its model dirs made (the state dir's `models` when none is given), and the
/// name the node reports.
fn prepare(mut config: AgentConfig, state_dir: &std::path::Path) -> (Arc<AgentConfig>, String) {
    if config.model_dirs.is_empty() {
        config.model_dirs.push(state_dir.join("models"));
    }
    for d in &config.model_dirs {
        let _ = std::fs::create_dir_all(d);
    }
    let node = config
        .node_name
        .clone()
        .unwrap_or_else(|| sysinfo::System::host_name().unwrap_or_else(|| "localhost".into()));
    (Arc::new(config), node)
}

/// The audit log, rotated as the config's `[logs]` says.
fn open_audit(
    state: &statedir::StateDir,
    config: &AgentConfig,
    events: &broadcast::Sender<rbee_proto::session::Event>,
) -> std::io::Result<audit::Audit> {
    let rotation = rbee_host::rotate::Rotation {
        max_bytes: config.logs.max_bytes,
        keep: config.logs.keep,
    };
    audit::Audit::open_rotated(&state.audit_path(), rotation, events.clone())
}

/// Start the agent: lock the state dir, restore desired workers, listen.
pub async fn start(opts: Options) -> anyhow::Result<Running> {
    let Options {
        config,
        state_dir,
        worker_bin,
    } = opts;
    let state = Arc::new(statedir::StateDir::open(&state_dir)?);
    let token = session_token(&state)?;
    let (config, node) = prepare(config, &state_dir);
    let (events, _) = broadcast::channel(1024);
    let audit = Arc::new(open_audit(&state, &config, &events)?);
    let metrics = Arc::new(metrics::Metrics::default());
    let collector = Arc::new(Mutex::new(telemetry::Collector::new(
        config.model_dirs[0].clone(),
    )));
    let supervisor = workers::Supervisor::new(workers::Parts {
        config: config.clone(),
        launcher: Arc::new(workers::process::ProcessLauncher {
            worker_bin: worker_bin.clone(),
            heartbeat_ms: config.heartbeat_ms,
            queue: config.worker_queue,
        }),
        state: state.clone(),
        audit: audit.clone(),
        metrics: metrics.clone(),
        events: events.clone(),
        collector: collector.clone(),
    });
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    statedir::write_atomic(&state.addr_path(), addr.to_string().as_bytes(), 0o644)?;
    audit.record(
        "agent_start",
        None,
        None,
        start_line(addr, &config, &worker_bin),
    );
    match state.load_desired() {
        Ok(desired) => supervisor.restore(desired),
        Err(e) => {
            tracing::error!("{e}");
            audit.record("desired_state_corrupt", None, None, e.to_string());
        }
    }

    let limits = server::Limits::for_this_process();
    tracing::info!(?limits, "session server limits");
    let first = collector.lock().unwrap().sample(&supervisor.pids());
    let (tel_tx, tel_rx) = watch::channel(first);
    let shared = Arc::new(server::Shared {
        config: config.clone(),
        node,
        token,
        operators: server::operators::path(&state_dir),
        supervisor: supervisor.clone(),
        audit: audit.clone(),
        metrics,
        events,
        telemetry: tel_rx,
        limits,
        sessions: Arc::new(tokio::sync::Semaphore::new(limits.sessions)),
    });
    let stop = CancellationToken::new();
    let every = Duration::from_millis(config.telemetry_ms);
    let tel_task = tokio::spawn(sample_telemetry(
        supervisor.clone(),
        collector,
        tel_tx,
        every,
        stop.clone(),
    ));
    let sessions_stop = CancellationToken::new();
    let accept = tokio::spawn(server::accept_loop(listener, shared, sessions_stop.clone()));
    tracing::info!(%addr, state_dir = %state_dir.display(), "rbee-agent listening");

    let done = tokio::spawn(stop_when_asked(
        stop.clone(),
        supervisor,
        sessions_stop,
        accept,
        tel_task,
        audit,
        state,
    ));
    Ok(Running {
        addr,
        token_path: state_dir.join(rbee_proto::statedir::TOKEN),
        stop,
        done,
    })
}

/// Wait for `stop`, then stop workers, sessions and telemetry in that order.
async fn stop_when_asked(
    stop: CancellationToken,
    supervisor: Arc<workers::Supervisor>,
    sessions_stop: CancellationToken,
    accept: tokio::task::JoinHandle<()>,
    tel_task: tokio::task::JoinHandle<()>,
    audit: Arc<audit::Audit>,
    state: Arc<statedir::StateDir>,
) {
    stop.cancelled().await;
    tracing::info!("shutting down: stopping workers");
    // Workers first, so their open streams end with a `shutting_down` error to the sessions.
    supervisor.shutdown().await;
    sessions_stop.cancel();
    let _ = accept.await;
    let _ = tel_task.await;
    audit.record("agent_stop", None, None, "graceful shutdown");
    audit.flush();
    // The state-dir lock is released last.
    drop(state);
}

/// The audit detail of `agent_start`: where it listens and with what configuration.
fn start_line(
    addr: std::net::SocketAddr,
    config: &AgentConfig,
    worker_bin: &std::path::Path,
) -> String {
    format!(
        "listen={addr} model_dirs={:?} worker_bin={} config={}",
        config.model_dirs,
        worker_bin.display(),
        serde_json::to_string(config).unwrap_or_default()
    )
}

/// The session token, created on first start (and said so on stderr).
fn session_token(state: &statedir::StateDir) -> anyhow::Result<String> {
    let (token, created) = state.token()?;
    if created {
        eprintln!(
            "rbee-agent: created session token at {} (mode 0600)",
            state.token_path().display()
        );
    }
    Ok(token)
}

/// Sample telemetry every `every` until `stop`; each sample also updates the workers' figures.
async fn sample_telemetry(
    sup: Arc<workers::Supervisor>,
    collector: Arc<Mutex<telemetry::Collector>>,
    tel_tx: watch::Sender<Telemetry>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                let pids = sup.pids();
                let c = collector.clone();
                let Ok(t) = tokio::task::spawn_blocking(move || c.lock().unwrap().sample(&pids)).await else { break };
                sup.apply_telemetry(&t);
                let _ = tel_tx.send(t);
            }
        }
    }
}
