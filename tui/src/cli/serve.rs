//! `rbee-tui serve`: the headless gateway. Parses its flags into a [`GatewayConfig`], prints the
//! address it listens on (one line on stdout, `listening on http://ADDR`), and serves until
//! SIGINT or SIGTERM.
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rbee_proto::config::ConfigError;

use crate::error::TuiError;
use crate::gateway::hub::HubConfig;
use crate::gateway::keys::ApiKeys;
use crate::gateway::openai::{parse_keep_alive, KeepAlive};
use crate::gateway::{serve, GatewayConfig, GatewayError};
use crate::nodes::config::NodeTarget;

/// `serve` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address for the OpenAI-compatible API. Off loopback it needs --api-key-file.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// API keys, one per line: `ID SECRET` or `SECRET`. Requests must send `Authorization:
    /// Bearer SECRET`; the audit names the ID.
    #[arg(long, env = "RBEE_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Requests one worker is given at once; more wait in the gateway's queue.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub worker_slots: u32,
    /// Requests that may wait for a worker; one more is answered 429.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub queue: usize,
    /// How long a worker spawned on demand stays loaded once idle: `5m`, `300`, `0` (unload
    /// after the answer), `-1` (keep). Requests may set their own with `keep_alive`.
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = keep_alive_arg)]
    pub keep_alive: KeepAlive,
    /// Device for workers spawned on demand.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
    /// CPU threads of workers spawned on demand [default: all].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Seconds a request may take from arrival, queue wait and on-demand spawn included; past
    /// it the generation is cancelled on its worker.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub request_timeout: u64,
    /// Append one JSON line per request here (key id, client, model, node, outcome, timings).
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
}

fn keep_alive_arg(s: &str) -> Result<KeepAlive, String> {
    parse_keep_alive(s).ok_or_else(|| format!("`{s}` is not a duration like 5m, 300, 0 or -1"))
}

/// Run the gateway over `targets` until a signal.
pub async fn run(targets: Vec<NodeTarget>, args: ServeArgs) -> Result<(), TuiError> {
    let keys = match &args.api_key_file {
        Some(p) => Some(ApiKeys::load(p).map_err(|e| gateway_error(GatewayError::Keys(e)))?),
        None => None,
    };
    let cfg = GatewayConfig {
        listen: args.listen,
        keys,
        timeout: Duration::from_secs(args.request_timeout.max(1)),
        hub: HubConfig {
            worker_slots: args.worker_slots.max(1),
            queue: args.queue,
            keep_alive: args.keep_alive,
            device: args.device,
            threads: args.threads,
        },
        audit_log: args.audit_log,
    };
    serve(targets, cfg, announce, shutdown_signal())
        .await
        .map_err(gateway_error)
}

/// The one line scripts and tests wait for.
fn announce(addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on http://{addr}");
    let _ = out.flush();
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Until `TuiError` has a variant of its own for the gateway: the message, unchanged in meaning.
fn gateway_error(e: GatewayError) -> TuiError {
    TuiError::Config(ConfigError::Invalid {
        path: PathBuf::from("rbee-tui serve"),
        message: e.to_string(),
    })
}
