//! The OpenAI-compatible gateway (`rbee-tui serve`): one HTTP address for every node's models.
//!
//! * [`hub`]: the one task that runs a dashboard session per node (`dashboard::node_session::run_node`
//!   through its `Action`/`Effect` channels) and schedules requests onto workers, with the
//!   cluster view in [`cluster`] and the placement rules in [`sched`].
//! * [`http`]: axum routes — `/v1/models`, `/v1/chat/completions`, `/v1/completions` (JSON or
//!   SSE), `/health`, `/metrics` — over [`openai`] (request and response shapes), [`error`]
//!   (OpenAI's error JSON) and [`keys`] (bearer API keys).
//! * [`relay`]: `/metrics` for the whole cluster, every node's exposition labelled `node`.
//! * [`job`] and [`stats`]: what the two sides pass each other, counters and the audit line.
//! * The live list of requests it fills is `dashboard::board`, drawn by
//!   `dashboard::view::requests_table` (the dashboard's Requests screen and `serve --watch`).
//!
//! Nothing here speaks the agent's wire format: the sessions do, exactly as for the dashboard.
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

pub mod cluster;
pub mod error;
pub mod http;
pub mod hub;
pub mod job;
pub mod keys;
pub mod openai;
pub mod relay;
pub mod sched;
pub mod stats;

use crate::nodes::config::NodeTarget;
use crate::nodes::connect::CONNECT_TIMEOUT;

/// Everything `rbee-tui serve` is told.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Accepted API keys; `None` is allowed only on loopback.
    pub keys: Option<keys::ApiKeys>,
    /// Longest a request may take, from arrival (queue and on-demand spawn included).
    pub timeout: Duration,
    /// Scheduling.
    pub hub: hub::HubConfig,
    /// Append-only audit log of every request (`None`: the tracing log only).
    pub audit_log: Option<PathBuf>,
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Off loopback, every request must carry a key.
    #[error("refusing to listen on {0} without --api-key-file: only loopback addresses may go without API keys")]
    NoKeysOffLoopback(SocketAddr),
    /// The key file cannot be used.
    #[error(transparent)]
    Keys(#[from] keys::KeyFileError),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// The audit log cannot be opened.
    #[error("cannot open the gateway audit log {path}: {source}")]
    Audit {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Check the config, connect to every node, wait until each has connected (or failed once),
/// then serve until `shutdown` resolves. `on_listening` is told the bound address (port 0 picks
/// one) before the first request is taken.
pub async fn serve(
    targets: Vec<NodeTarget>,
    cfg: GatewayConfig,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let bound = bind(targets, cfg).await?;
    on_listening(bound.addr);
    bound.serve(shutdown).await
}

/// A gateway whose address is bound and whose sessions run, not yet taking requests.
pub struct Bound {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Every request, live and recent (the dashboard's Requests view reads it).
    pub board: crate::dashboard::board::RequestBoard,
    listener: tokio::net::TcpListener,
    shared: Arc<http::Shared>,
}

/// Check the config, bind the address, start the hub and its node sessions, and wait until every
/// node has connected and listed its models, or failed once (bounded by twice the connect
/// timeout): requests that came earlier would be refused for nothing.
pub async fn bind(targets: Vec<NodeTarget>, cfg: GatewayConfig) -> Result<Bound, GatewayError> {
    if cfg.keys.is_none() && !cfg.listen.ip().is_loopback() {
        return Err(GatewayError::NoKeysOffLoopback(cfg.listen));
    }
    let audit =
        stats::AuditLog::open(cfg.audit_log.as_deref()).map_err(|source| GatewayError::Audit {
            path: cfg.audit_log.clone().unwrap_or_default(),
            source,
        })?;
    let bind_error = |source| GatewayError::Bind {
        addr: cfg.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let handle = hub::start(targets, cfg.hub.clone(), audit);
    let mut settled = handle.settled.clone();
    let _ = tokio::time::timeout(CONNECT_TIMEOUT * 2, settled.wait_for(|s| *s)).await;
    let board = handle.board.clone();
    let shared = Arc::new(http::Shared {
        hub: handle,
        keys: cfg.keys,
        timeout: cfg.timeout,
        next: AtomicU64::new(1),
    });
    Ok(Bound {
        addr,
        board,
        listener,
        shared,
    })
}

impl Bound {
    /// Take requests until `shutdown` resolves; then unload the workers loaded on demand.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let addr = self.addr;
        tracing::info!(%addr, "gateway listening");
        let cmds = self.shared.hub.cmds.clone();
        let app = http::router(self.shared).into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(GatewayError::Serve);
        // Workers loaded on demand leave with the gateway (bounded: a node may be gone).
        let (tx, rx) = tokio::sync::oneshot::channel();
        if cmds.send(job::Cmd::Shutdown(tx)).is_ok() {
            let _ = tokio::time::timeout(SHUTDOWN_UNLOAD, rx).await;
        }
        served
    }
}

/// Longest wait at shutdown for the nodes to confirm the unloads.
pub const SHUTDOWN_UNLOAD: Duration = Duration::from_secs(10);
