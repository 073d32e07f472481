use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use rbee_proto::config::AgentConfig;

/// The rbee node daemon: authenticates sessions, supervises rbee-worker processes, streams
/// telemetry, keeps an audit log and remembers which workers should run.
#[derive(clap::Parser, Debug)]
#[command(about)]
struct Args {
    /// Address to listen on (default 127.0.0.1:7733; env RBEE_LISTEN). Use port 0 for any free port.
    #[arg(long, env = "RBEE_LISTEN")]
    listen: Option<String>,
    /// State directory: token, lock, desired workers, audit log, worker logs.
    #[arg(long, env = "RBEE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// TOML config file (see assets/agent.example.toml).
    #[arg(long, env = "RBEE_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// A directory of models this node serves (repeatable; adds to the config's model_dirs). The
    /// environment variable RBEE_MODEL_DIRS adds more, separated by `:` as in PATH.
    #[arg(long = "model-dir")]
    model_dirs: Vec<PathBuf>,
    /// Path of rbee-worker (default: next to this binary).
    #[arg(long, env = "RBEE_WORKER_BIN")]
    worker_bin: Option<PathBuf>,
    /// Write the log to this file, rotated by size (`[logs]` of the config), instead of stderr;
    /// stderr follows the current file. `rbee-tui nodes logs` reads it through the session.
    #[arg(long, env = "RBEE_AGENT_LOG_FILE")]
    log_file: Option<PathBuf>,
    /// Manage operator tokens instead of running the agent.
    #[command(subcommand)]
    command: Option<Command>,
}

/// What else `rbee-agent` does besides running.
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Operator tokens, accepted beside the node token and named in the audit log.
    #[command(subcommand)]
    Token(TokenCmd),
}

/// `rbee-agent token …` (works while the agent runs: it reads the tokens at each login).
#[derive(clap::Subcommand, Debug)]
enum TokenCmd {
    /// Give an operator a token of their own; prints it (shown once).
    Add {
        /// The operator's name, as the audit log will show it.
        name: String,
    },
    /// Take an operator's token back; new logins with it are refused.
    Revoke {
        /// The operator's name.
        name: String,
    },
    /// The operators holding a token.
    List,
}

/// Run a token subcommand on the operators file of `state_dir`.
fn token(state_dir: &std::path::Path, cmd: TokenCmd) -> anyhow::Result<()> {
    // Private, as the agent makes it: it will hold the node token and the audit log.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let file = rbee_agent::server::operators::path(state_dir);
    match cmd {
        TokenCmd::Add { name } => {
            let token = rbee_agent::server::operators::add(&file, &name)?;
            println!("{token}");
            eprintln!(
                "rbee-agent: token for operator {name} added to {} (shown only now)",
                file.display()
            );
        }
        TokenCmd::Revoke { name } => {
            if !rbee_agent::server::operators::revoke(&file, &name)? {
                anyhow::bail!(
                    "operator {name} has no token (`rbee-agent token list` names those who do)"
                );
            }
            eprintln!("rbee-agent: token of operator {name} revoked");
        }
        TokenCmd::List => {
            for name in rbee_agent::server::operators::list(&file)? {
                println!("{name}");
            }
        }
    }
    Ok(())
}

/// The `--version` text; the build ids (hashes of the binaries) only when it is asked for.
fn version_line() -> String {
    let base = format!(
        "{} (protocol {})",
        env!("CARGO_PKG_VERSION"),
        rbee_proto::PROTOCOL_VERSION
    );
    if !std::env::args()
        .skip(1)
        .any(|a| a == "--version" || a == "-V")
    {
        return base;
    }
    let worker = std::env::current_exe()
        .map(|p| p.with_file_name("rbee-worker"))
        .and_then(|p| rbee_host::build::file_id(&p))
        .unwrap_or_else(|_| "none".into());
    format!(
        "{base} build {} worker {worker}",
        rbee_host::build::this_binary()
    )
}

fn default_state_dir() -> PathBuf {
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("rbee/agent")
}

fn main() -> anyhow::Result<()> {
    // `rbee-agent --version` prints `rbee-agent X.Y.Z (protocol N) build B worker W`: `rbee-tui`
    // reads N over SSH to decide whether a node's agent can be reused, and B and W (hashes of
    // this binary and of the worker beside it) whether the node has this machine's build.
    let version: &'static str = Box::leak(version_line().into_boxed_str());
    let mut args = Args::from_arg_matches(&Args::command().version(version).get_matches())
        .unwrap_or_else(|e| e.exit());
    if let Some(Command::Token(cmd)) = args.command.take() {
        let dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
        return token(&dir, cmd);
    }
    let mut config = match &args.config {
        Some(p) => AgentConfig::load(p)?,
        None => AgentConfig::default(),
    };
    if let Some(l) = args.log_file {
        config.log_file = Some(l);
    }
    match &config.log_file {
        Some(path) => {
            let rotation = rbee_host::rotate::Rotation {
                max_bytes: config.logs.max_bytes,
                keep: config.logs.keep,
            };
            // A log in a state directory not made yet (the first start): make it, private.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::os::unix::fs::DirBuilderExt::mode(
                    std::fs::DirBuilder::new().recursive(true),
                    0o700,
                )
                .create(dir)
                .with_context(|| format!("creating {} for the log file", dir.display()))?;
            }
            rbee_host::logging::init_file(path, rotation)
                .with_context(|| format!("opening log file {}", path.display()))?;
        }
        None => rbee_host::logging::init_stderr(),
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    config.model_dirs.extend(args.model_dirs);
    // A flag names one directory (it may contain `:`); the variable is a list, like PATH.
    if let Some(list) = std::env::var_os("RBEE_MODEL_DIRS") {
        config
            .model_dirs
            .extend(std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()));
    }
    if let Some(w) = args.worker_bin {
        config.worker_bin = Some(w);
    }
    config
        .validate()
        .map_err(|m| anyhow::anyhow!("invalid configuration: {m}"))?;
    let worker_bin = match &config.worker_bin {
        Some(w) => w.clone(),
        None => std::env::current_exe()
            .context("locating rbee-agent")?
            .with_file_name("rbee-worker"),
    };
    if !worker_bin.is_file() {
        anyhow::bail!(
            "worker binary {} not found; build it or pass --worker-bin",
            worker_bin.display()
        );
    }
    let state_dir = args.state_dir.unwrap_or_else(default_state_dir);
    // Connection limits are sized from this (see agent/README.md, "Limits").
    rbee_agent::server::raise_descriptor_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let running = rbee_agent::start(rbee_agent::Options {
            config,
            state_dir,
            worker_bin,
        })
        .await?;
        eprintln!(
            "rbee-agent: listening on ws://{} (token: {})",
            running.addr,
            running.token_path.display()
        );
        let stop = running.stop_token();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            stop.cancel();
        });
        running.wait().await;
        Ok(())
    })
}
