//! `rbee-agent`: the daemon on every GPU node (the "hive").
//!
//! Owns the session server (auth, handshake, requests, events), worker supervision, telemetry,
//! the audit log and the desired state in its state directory. It must not draw anything or hold
//! opinions about other nodes: dashboards and scripts come to it.

pub mod audit;
pub mod metrics;
pub mod models;
pub mod pull;
pub mod server;
pub mod statedir;
pub mod supervisor;
pub mod telemetry;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbee_proto::config::AgentConfig;
use rbee_proto::session::{Event, Telemetry};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// What every session handler can reach.
pub struct Shared {
    pub config: Arc<AgentConfig>,
    pub node: String,
    pub token: String,
    pub supervisor: Arc<supervisor::Supervisor>,
    pub audit: Arc<audit::Audit>,
    pub metrics: Arc<metrics::Metrics>,
    pub events: broadcast::Sender<Event>,
    pub telemetry: watch::Receiver<Telemetry>,
}

/// Everything `run` needs, already validated.
pub struct Options {
    pub config: AgentConfig,
    pub state_dir: PathBuf,
    pub worker_bin: PathBuf,
}

/// A started agent: its address, and a handle to stop it.
pub struct Running {
    pub addr: std::net::SocketAddr,
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

    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }
}

/// Start the agent: lock the state dir, restore desired workers, listen.
pub async fn start(opts: Options) -> anyhow::Result<Running> {
    let Options {
        mut config,
        state_dir,
        worker_bin,
    } = opts;
    let state = Arc::new(statedir::StateDir::open(&state_dir)?);
    let (token, created) = state.token()?;
    if created {
        eprintln!(
            "rbee-agent: created session token at {} (mode 0600)",
            state.token_path().display()
        );
    }
    if config.model_dirs.is_empty() {
        config.model_dirs.push(state_dir.join("models"));
    }
    for d in &config.model_dirs {
        let _ = std::fs::create_dir_all(d);
    }
    let config = Arc::new(config);
    let node = config
        .node_name
        .clone()
        .unwrap_or_else(|| sysinfo::System::host_name().unwrap_or_else(|| "localhost".into()));
    let (events, _) = broadcast::channel(1024);
    let audit = Arc::new(audit::Audit::open(&state.audit_path(), events.clone())?);
    let metrics = Arc::new(metrics::Metrics::default());
    let collector = Arc::new(Mutex::new(telemetry::Collector::new(
        config.model_dirs[0].clone(),
    )));
    let workers_stop = CancellationToken::new();
    let supervisor = supervisor::Supervisor::new(
        config.clone(),
        worker_bin.clone(),
        state.clone(),
        audit.clone(),
        metrics.clone(),
        events.clone(),
        collector.clone(),
        workers_stop.clone(),
    );
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    statedir::write_atomic(&state.addr_path(), addr.to_string().as_bytes(), 0o644)?;
    audit.record(
        "agent_start",
        None,
        None,
        format!(
            "listen={addr} model_dirs={:?} worker_bin={} config={}",
            config.model_dirs,
            worker_bin.display(),
            serde_json::to_string(&*config).unwrap_or_default()
        ),
    );
    match state.load_desired() {
        Ok(desired) => supervisor.restore(desired),
        Err(e) => {
            tracing::error!("{e}");
            audit.record("desired_state_corrupt", None, None, e.to_string());
        }
    }

    let first = collector.lock().unwrap().sample(&supervisor.pids());
    let (tel_tx, tel_rx) = watch::channel(first);
    let sessions_stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        config: config.clone(),
        node,
        token,
        supervisor: supervisor.clone(),
        audit: audit.clone(),
        metrics,
        events,
        telemetry: tel_rx,
    });
    let stop = CancellationToken::new();
    let tel_task = {
        let (sup, collector, stop) = (supervisor.clone(), collector.clone(), stop.clone());
        let every = Duration::from_millis(config.telemetry_ms);
        tokio::spawn(async move {
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
        })
    };
    let accept = tokio::spawn(server::accept_loop(listener, shared, sessions_stop.clone()));
    tracing::info!(%addr, state_dir = %state_dir.display(), "rbee-agent listening");

    let stop_c = stop.clone();
    let done = tokio::spawn(async move {
        stop_c.cancelled().await;
        tracing::info!("shutting down: stopping workers");
        // Workers first, so their open streams end with a `shutting_down` error to the sessions.
        supervisor.shutdown().await;
        sessions_stop.cancel();
        let _ = accept.await;
        let _ = tel_task.await;
        audit.record("agent_stop", None, None, "graceful shutdown");
        audit.flush();
        drop(state);
    });
    Ok(Running {
        addr,
        token_path: state_dir.join("token"),
        stop,
        done,
    })
}
