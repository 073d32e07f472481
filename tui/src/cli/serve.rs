//! `rbee-tui serve`: the headless gateway. Parses its flags into a [`GatewayConfig`], prints the
//! address it listens on (one line on stdout, `listening on http://ADDR`), and serves until
//! SIGINT or SIGTERM. With `--watch` the terminal shows the API traffic live instead (the
//! Requests view, `dashboard::view::requests_table`) until `q`.
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rbee_proto::config::ConfigError;

use crate::dashboard::board::RequestBoard;
use crate::dashboard::view::requests_table::render_requests;
use crate::gateway::hub::HubConfig;
use crate::gateway::keys::ApiKeys;
use crate::gateway::openai::{parse_keep_alive, KeepAlive};
use crate::gateway::{bind, serve, GatewayConfig, GatewayError};
use crate::nodes::config::NodeTarget;
use crate::nodes::error::TuiError;

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
    /// Requests one worker is given at once; more wait in the gateway's queue [default: the
    /// conversations the worker decodes at once, its `parallel`].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub worker_slots: Option<u32>,
    /// Requests that may wait for a worker; one more is answered 429.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub queue: usize,
    /// Seconds a request may wait for a worker (loading one included) before it is answered 503
    /// with Retry-After; never more than --request-timeout.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub queue_timeout: u64,
    /// How long a worker spawned on demand stays loaded once idle: `5m`, `300`, `0` (unload
    /// after the answer), `-1` (keep). Requests may set their own with `keep_alive`.
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = keep_alive_arg)]
    pub keep_alive: KeepAlive,
    /// Device for workers spawned on demand: `auto` (the node's GPU with the most free memory
    /// that fits the model, else its CPU), `cpu` or `cuda:N`.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: String,
    /// CPU threads of workers spawned on demand [default: all].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Conversations each worker spawned on demand decodes at once [default: the worker's].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: Option<u32>,
    /// Seconds a request may take from arrival, queue wait and on-demand spawn included; past
    /// it the generation is cancelled on its worker.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub request_timeout: u64,
    /// Append one JSON line per request here (key id, client, model, node, outcome, timings).
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Show the API traffic live in this terminal (the Requests view); `q` stops the gateway.
    #[arg(long)]
    pub watch: bool,
}

fn keep_alive_arg(s: &str) -> Result<KeepAlive, String> {
    parse_keep_alive(s).ok_or_else(|| format!("`{s}` is not a duration like 5m, 300, 0 or -1"))
}

/// A gateway serving beside the dashboard (`rbee-tui --serve ADDR`).
pub struct Beside {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its requests, for the Requests screen.
    pub board: RequestBoard,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), GatewayError>>,
}

#[derive(clap::Parser)]
struct Defaults {
    #[command(flatten)]
    args: ServeArgs,
}

/// `serve`'s defaults with this address and key file; bound here (so errors print before the
/// dashboard takes the terminal) and serving in a task until [`Beside::stop`].
pub async fn beside_dashboard(
    targets: Vec<NodeTarget>,
    listen: SocketAddr,
    api_key_file: Option<PathBuf>,
) -> Result<Beside, TuiError> {
    use clap::Parser as _;
    let mut args = Defaults::try_parse_from(["rbee-tui"])
        .map_err(|e| gateway_error(GatewayError::Serve(std::io::Error::other(e.to_string()))))?
        .args;
    args.listen = listen;
    if api_key_file.is_some() {
        args.api_key_file = api_key_file;
    }
    let bound = bind(targets, config(args)?).await.map_err(gateway_error)?;
    let (addr, board) = (bound.addr, bound.board.clone());
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(bound.serve(async move {
        let _ = stop_rx.await;
    }));
    Ok(Beside {
        addr,
        board,
        stop,
        server,
    })
}

impl Beside {
    /// Stop taking requests and wait for the gateway to end (it unloads its on-demand workers).
    pub async fn stop(self) -> Result<(), TuiError> {
        let _ = self.stop.send(());
        match self.server.await {
            Ok(r) => r.map_err(gateway_error),
            Err(e) => Err(gateway_error(GatewayError::Serve(std::io::Error::other(
                e.to_string(),
            )))),
        }
    }
}

/// The gateway's config from `serve`'s flags (the key file read here).
fn config(args: ServeArgs) -> Result<GatewayConfig, TuiError> {
    let keys = match &args.api_key_file {
        Some(p) => Some(ApiKeys::load(p).map_err(|e| gateway_error(GatewayError::Keys(e)))?),
        None => None,
    };
    Ok(GatewayConfig {
        listen: args.listen,
        keys,
        timeout: Duration::from_secs(args.request_timeout.max(1)),
        hub: HubConfig {
            worker_slots: args.worker_slots,
            queue: args.queue,
            queue_timeout: Duration::from_secs(args.queue_timeout.max(1)),
            keep_alive: args.keep_alive,
            device: args.device,
            threads: args.threads,
            parallel: args.parallel,
        },
        audit_log: args.audit_log,
    })
}

/// Run the gateway over `targets` until a signal.
pub async fn run(targets: Vec<NodeTarget>, args: ServeArgs) -> Result<(), TuiError> {
    let watch_it = args.watch;
    let cfg = config(args)?;
    if !watch_it {
        return serve(targets, cfg, announce, shutdown_signal())
            .await
            .map_err(gateway_error);
    }
    let bound = bind(targets, cfg).await.map_err(gateway_error)?;
    let (addr, board) = (bound.addr, bound.board.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async move {
        tokio::select! {
            _ = stop_rx => {}
            _ = shutdown_signal() => {}
        }
    };
    let (ended_tx, ended) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let served = bound.serve(stopped).await;
        let _ = ended_tx.send(());
        served
    });
    let watched = watch(addr, &board, ended).await;
    let _ = stop_tx.send(());
    let served = server
        .await
        .map_err(|e| gateway_error(GatewayError::Serve(std::io::Error::other(e.to_string()))))?;
    watched.map_err(TuiError::Terminal)?;
    served.map_err(gateway_error)
}

/// Draw the Requests view four times a second until `q`, `Esc` or Ctrl-C, or until the server
/// ends (a signal).
async fn watch(
    addr: SocketAddr,
    board: &RequestBoard,
    mut ended: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    use crossterm::event::{Event, EventStream, KeyCode, KeyEventKind, KeyModifiers};
    use futures_util::StreamExt;
    use ratatui::layout::{Constraint, Layout};
    use ratatui::text::Line;

    let mut terminal = ratatui::try_init()?;
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let result = loop {
        tokio::select! {
            _ = &mut ended => break Ok(()),
            _ = tick.tick() => {
                let rows = board.snapshot();
                let now = rbee_proto::now_millis();
                let drawn = terminal.draw(|f| {
                    let [head, body] =
                        Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(f.area());
                    let title = format!(" rbee gateway · http://{addr} · q quits");
                    f.render_widget(Line::from(title), head);
                    render_requests(&rows, now, f, body);
                });
                if let Err(e) = drawn {
                    break Err(e);
                }
            }
            ev = keys.next() => match ev {
                Some(Ok(Event::Key(k))) if k.kind == KeyEventKind::Press => {
                    let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) {
                        break Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(e),
                None => break Ok(()),
            },
        }
    };
    ratatui::restore();
    result
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
