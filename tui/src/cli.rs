//! The command line: the dashboard (no subcommand) and the headless subcommands scripts and tests
//! use. Every subcommand goes through the same `session::connect` as the dashboard. Success is
//! exit 0 with the answer on stdout (`--json` for machines); failure is a `TuiError` the binary
//! prints as one line, `rbee-tui: <reason>`.
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgGroup, Parser, Subcommand};
use rbee_client::{Client, ClientError, Incoming, Streamed};
use rbee_proto::config::NodeConfig;
use rbee_proto::session::{Event, NodeStatus, Reply, Request, SpawnSpec, WorkerInfo};
use rbee_proto::{SamplingParams, WorkerState};
use serde_json::{json, Value};

use crate::action::describe;
use crate::config::{config_path, ConfigFile, NodeTarget};
use crate::error::TuiError;
use crate::session::{connect, deadline_in, reason};

#[derive(Debug, Parser)]
#[command(
    name = "rbee-tui",
    version,
    about = "Control center for an rbee GPU cluster: run without a command for the dashboard"
)]
pub struct Cli {
    /// Config file with the node list [default: <config dir>/rbee/tui.toml].
    #[arg(long, env = "RBEE_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Machine-readable output on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for a connection, a reply, a generation or `--wait`.
    #[arg(long, global = true, default_value_t = 60, value_name = "SECS")]
    pub timeout: u64,
    /// Where the dashboard logs [default: <state dir>/rbee/tui.log].
    #[arg(long, env = "RBEE_LOG_FILE", global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show or edit the nodes in the config file.
    Nodes {
        #[command(subcommand)]
        cmd: NodesCmd,
    },
    /// Models the nodes can serve.
    Models {
        #[command(subcommand)]
        cmd: ModelsCmd,
    },
    /// List, spawn, kill and restart workers.
    Workers {
        #[command(subcommand)]
        cmd: WorkersCmd,
    },
    /// Generate text; streams it to stdout as it arrives.
    Infer(InferArgs),
    /// Every node's connection state, telemetry and workers.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// Add a node: an agent URL and the file holding its token, or an SSH address. An SSH node
    /// is brought up at once (host key checked, agent installed and started when needed, a
    /// session opened through the tunnel) and recorded only when that worked.
    #[command(group(ArgGroup::new("how").required(true).args(["url", "ssh"])))]
    Add {
        name: String,
        #[arg(long, value_name = "ws://HOST:PORT", requires = "token_file")]
        url: Option<String>,
        #[arg(long, value_name = "FILE", requires = "url")]
        token_file: Option<PathBuf>,
        /// Reach the node over SSH; its agent is installed and started as needed.
        #[arg(long, value_name = "USER@HOST[:PORT]", conflicts_with_all = ["url", "token_file"])]
        ssh: Option<String>,
        /// Private key for SSH [default: ssh-agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa].
        #[arg(long, value_name = "FILE", requires = "ssh")]
        identity: Option<PathBuf>,
        /// Trust the node's host key if it is not known yet (it is recorded in rbee's known_hosts).
        #[arg(long, requires = "ssh")]
        accept_new_host_key: bool,
        /// Stop the node's agent when the dashboard quits.
        #[arg(long, requires = "ssh")]
        ephemeral: bool,
        /// Directory on the node for rbee's binaries and the agent's state [default: ~/.local/share/rbee].
        #[arg(long, value_name = "DIR", requires = "ssh")]
        remote_dir: Option<String>,
        /// A model directory on the node for its agent (repeatable).
        #[arg(long = "model-dir", value_name = "DIR", requires = "ssh")]
        model_dirs: Vec<String>,
    },
    List,
    /// Remove a node from the config (its agent keeps running).
    Rm {
        name: String,
    },
    /// Stop an SSH node's agent and its workers, and check they are gone.
    Stop {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelsCmd {
    List {
        #[arg(long)]
        node: Option<String>,
    },
    /// Download an `hf:ORG/REPO[@REVISION][:FILE]` model into a node's Hugging Face cache;
    /// progress on stderr, the cached path on stdout. Use a generous `--timeout`.
    Pull {
        #[arg(long)]
        node: Option<String>,
        /// `hf:ORG/REPO[@REVISION][:FILE]`
        model: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum WorkersCmd {
    List {
        #[arg(long)]
        node: Option<String>,
    },
    /// Start a worker; prints its id.
    Spawn {
        /// Node to spawn on (may be left out when there is only one).
        #[arg(long)]
        node: Option<String>,
        /// Model name or reference, as `models list` shows.
        #[arg(long)]
        model: String,
        /// `cpu` or `cuda:N`.
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long)]
        threads: Option<usize>,
        /// Return only once the worker is ready (exit 0) or has failed (exit 1), within --timeout.
        #[arg(long)]
        wait: bool,
    },
    /// Stop a worker for good.
    Kill {
        id: String,
        #[arg(long)]
        node: Option<String>,
    },
    Restart {
        id: String,
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("target").required(true).args(["worker", "model"])))]
pub struct InferArgs {
    #[arg(long)]
    pub node: Option<String>,
    /// A specific worker.
    #[arg(long)]
    pub worker: Option<String>,
    /// Any ready worker of this model.
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub prompt: String,
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// 0 is greedy.
    #[arg(long)]
    pub temperature: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep generating past end-of-sequence (fixed-length runs, e.g. benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
}

/// Run what the command line asks. The dashboard when there is no subcommand.
pub async fn run(cli: Cli) -> Result<(), TuiError> {
    let path = config_path(cli.config.as_deref())?;
    let timeout = Duration::from_secs(cli.timeout.max(1));
    let out = Out { json: cli.json };
    let Some(command) = cli.command else {
        let log = cli
            .log_file
            .clone()
            .unwrap_or_else(crate::logging::default_log_path);
        crate::logging::init_file(&log)?;
        let cfg = ConfigFile::load(&path)?;
        tracing::info!(config = %path.display(), nodes = cfg.config.nodes.len(), "dashboard starting");
        return crate::app::run_dashboard(cfg.targets(), path).await;
    };
    crate::logging::init_stderr_if_asked();
    match command {
        Command::Nodes { cmd } => nodes(&path, cmd, timeout, out).await,
        Command::Models {
            cmd: ModelsCmd::List { node },
        } => models_list(&ConfigFile::load(&path)?, node, timeout, out).await,
        Command::Models {
            cmd: ModelsCmd::Pull { node, model },
        } => {
            let target = ConfigFile::load(&path)?.select_one(node.as_deref())?;
            pull(&target, model, timeout, out).await
        }
        Command::Workers { cmd } => workers(&ConfigFile::load(&path)?, cmd, timeout, out).await,
        Command::Infer(args) => infer(&ConfigFile::load(&path)?, args, timeout, out).await,
        Command::Status => status(&ConfigFile::load(&path)?, timeout, out).await,
    }
}

/// Parse `args` (the first being the program name) and run; for tests that call the CLI in-process.
pub async fn run_from<I, T>(args: I) -> Result<(), TuiError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    run(Cli::parse_from(args)).await
}

/// Where answers go: stdout, as text or JSON.
#[derive(Debug, Clone, Copy)]
struct Out {
    json: bool,
}

impl Out {
    fn print(&self, text: &str, value: Value) -> Result<(), TuiError> {
        let mut stdout = std::io::stdout().lock();
        let r = if self.json {
            writeln!(stdout, "{value}")
        } else {
            write!(stdout, "{text}")
        };
        r.and_then(|_| stdout.flush()).map_err(TuiError::Output)
    }
}

/// Columns padded to the widest cell; the last column is not padded.
pub fn text_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, (c, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i + 1 == n {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// nodes

async fn nodes(path: &Path, cmd: NodesCmd, timeout: Duration, out: Out) -> Result<(), TuiError> {
    let mut cf = ConfigFile::load(path)?;
    match cmd {
        NodesCmd::Add {
            name,
            ssh: Some(ssh),
            identity,
            accept_new_host_key,
            ephemeral,
            remote_dir,
            model_dirs,
            ..
        } => {
            check_node_name(path, &name)?;
            let node = NodeConfig {
                name: name.clone(),
                ssh: Some(ssh.clone()),
                identity: identity.map(|i| std::path::absolute(&i).unwrap_or(i)),
                ephemeral,
                remote_dir,
                model_dirs,
                ..Default::default()
            };
            node.validate()
                .map_err(|message| rbee_proto::config::ConfigError::Invalid {
                    path: path.into(),
                    message: format!("node `{name}`: {message}"),
                })?;
            // Refuse a duplicate before touching the node.
            cf.clone().add_node(node.clone())?;
            let up = crate::ssh::bring_up(&node, accept_new_host_key, timeout).await?;
            cf.add_node(node)?;
            cf.save()?;
            let a = &up.agent;
            let what = match (a.installed, a.started) {
                (true, _) => "installed and started its agent",
                (false, true) => "started its agent",
                (false, false) => "reusing its running agent",
            };
            let key = match &up.learned_host_key {
                Some(fp) => format!("; trusted new host key {fp}"),
                None => String::new(),
            };
            out.print(
                &format!(
                    "added node {name} (ssh://{ssh}): {what} (pid {}, {} in {}){key}\n",
                    a.pid, up.agent_version, a.dir
                ),
                json!({
                    "added": name, "ssh": ssh, "config": path,
                    "host_key_learned": up.learned_host_key,
                    "agent": {
                        "pid": a.pid, "installed": a.installed, "started": a.started,
                        "dir": a.dir, "addr": a.addr.to_string(),
                        "version": up.agent_version, "node": up.agent_node,
                    },
                }),
            )
        }
        NodesCmd::Add {
            name,
            url: Some(url),
            token_file: Some(token_file),
            ..
        } => {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(rbee_proto::config::ConfigError::Invalid {
                    path: path.into(),
                    message: format!(
                        "key `nodes[].url`: `{url}` is not a ws://HOST:PORT or wss:// URL"
                    ),
                }
                .into());
            }
            check_node_name(path, &name)?;
            // Stored absolute: the config is read from any working directory.
            let token_file = std::path::absolute(&token_file).unwrap_or(token_file);
            cf.add_node(NodeConfig {
                name: name.clone(),
                url: url.clone(),
                token_file: token_file.clone(),
                ..Default::default()
            })?;
            cf.save()?;
            out.print(
                &format!("added node {name} ({url}) to {}\n", path.display()),
                json!({ "added": name, "url": url, "token_file": token_file, "config": path }),
            )
        }
        NodesCmd::Add { .. } => unreachable!("clap requires --url with --token-file, or --ssh"),
        NodesCmd::List => {
            let rows: Vec<Vec<String>> = cf
                .config
                .nodes
                .iter()
                .map(|n| match &n.ssh {
                    Some(addr) => vec![
                        n.name.clone(),
                        format!("ssh://{addr}"),
                        if n.ephemeral {
                            "(over ssh, ephemeral)"
                        } else {
                            "(over ssh)"
                        }
                        .to_string(),
                    ],
                    None => vec![
                        n.name.clone(),
                        n.url.clone(),
                        n.token_file.display().to_string(),
                    ],
                })
                .collect();
            let text = if rows.is_empty() {
                format!(
                    "no nodes in {}; the dashboard and subcommands use the local agent\n",
                    path.display()
                )
            } else {
                text_table(&["NAME", "URL", "TOKEN FILE"], &rows)
            };
            out.print(
                &text,
                serde_json::to_value(&cf.config.nodes).unwrap_or_default(),
            )
        }
        NodesCmd::Rm { name } => {
            cf.remove_node(&name)?;
            cf.save()?;
            out.print(
                &format!("removed node {name} from {}\n", path.display()),
                json!({ "removed": name }),
            )
        }
        NodesCmd::Stop { name } => {
            let node = match cf.select_one(Some(&name))? {
                NodeTarget::Remote(n) if n.ssh.is_some() => n,
                _ => return Err(TuiError::NotSsh { node: name }),
            };
            let s = crate::ssh::stop_node(&node).await?;
            let text = match s.pid {
                Some(pid) => format!(
                    "stopped node {name}: agent pid {pid} and {} worker process(es) are gone\n",
                    s.workers.len()
                ),
                None => format!("node {name}: no agent was running\n"),
            };
            out.print(
                &text,
                json!({ "stopped": name, "agent_pid": s.pid, "worker_pids": s.workers }),
            )
        }
    }
}

fn check_node_name(path: &Path, name: &str) -> Result<(), TuiError> {
    if name.trim().is_empty() || name.chars().any(char::is_whitespace) {
        return Err(rbee_proto::config::ConfigError::Invalid {
            path: path.into(),
            message: format!("key `nodes[].name`: `{name}` must be one word"),
        }
        .into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// helpers over sessions

/// One connected node.
struct Session {
    name: String,
    client: Client,
    incoming: tokio::sync::mpsc::Receiver<Incoming>,
}

async fn open(target: &NodeTarget, timeout: Duration) -> Result<Session, TuiError> {
    let (client, incoming, _url) = connect(target, timeout).await?;
    Ok(Session {
        name: target.name().to_string(),
        client,
        incoming,
    })
}

impl Session {
    async fn ask(&self, request: Request, timeout: Duration) -> Result<Reply, TuiError> {
        let what = describe(&request);
        let fut = self.client.request(request, deadline_in(timeout));
        // A little beyond the deadline, so the agent's own deadline error wins when it answers.
        match tokio::time::timeout(timeout + Duration::from_secs(2), fut).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(source)) => Err(TuiError::Request {
                node: self.name.clone(),
                what,
                source,
            }),
            Err(_) => Err(TuiError::Request {
                node: self.name.clone(),
                what,
                source: ClientError::Timeout(timeout),
            }),
        }
    }

    fn unexpected(&self, what: &str, reply: Reply) -> TuiError {
        TuiError::UnexpectedReply {
            node: self.name.clone(),
            what: what.into(),
            reply: format!("{reply:?}"),
        }
    }

    async fn workers(&self, timeout: Duration) -> Result<Vec<WorkerInfo>, TuiError> {
        match self.ask(Request::ListWorkers, timeout).await? {
            Reply::Workers { workers } => Ok(workers),
            other => Err(self.unexpected("list workers", other)),
        }
    }
}

/// Run `f` against every target concurrently; results in target order.
async fn each_node<T, F, Fut>(
    targets: &[NodeTarget],
    timeout: Duration,
    f: F,
) -> Vec<(String, Result<T, TuiError>)>
where
    F: Fn(Session) -> Fut,
    Fut: std::future::Future<Output = Result<T, TuiError>>,
{
    let futs = targets.iter().map(|t| {
        let f = &f;
        async move {
            let r = match open(t, timeout).await {
                Ok(s) => f(s).await,
                Err(e) => Err(e),
            };
            (t.name().to_string(), r)
        }
    });
    futures_util::future::join_all(futs).await
}

fn worker_json(node: &str, w: &WorkerInfo) -> Value {
    let mut v = serde_json::to_value(w).unwrap_or_default();
    if let Value::Object(m) = &mut v {
        m.insert("node".into(), Value::String(node.into()));
    }
    v
}

/// Print what succeeded; fail with the first error (after all output) when any node failed.
fn first_error<T>(
    results: Vec<(String, Result<T, TuiError>)>,
) -> (Vec<(String, T)>, Option<TuiError>) {
    let mut ok = Vec::new();
    let mut err = None;
    for (name, r) in results {
        match r {
            Ok(v) => ok.push((name, v)),
            Err(e) => {
                if err.is_some() {
                    eprintln!("rbee-tui: {e}");
                } else {
                    err = Some(e);
                }
            }
        }
    }
    (ok, err)
}

// ---------------------------------------------------------------------------------------------
// models

/// `models pull`: the request, with the node's progress events shown while it runs.
async fn pull(
    target: &NodeTarget,
    model: String,
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    let mut s = open(target, timeout).await?;
    s.ask(Request::Subscribe, timeout).await?;
    let request = Request::Pull {
        model: model.clone(),
    };
    let what = describe(&request);
    let fut = s.client.request(request, deadline_in(timeout));
    tokio::pin!(fut);
    let deadline = tokio::time::Instant::now() + timeout + Duration::from_secs(2);
    let reply = loop {
        tokio::select! {
            r = &mut fut => break r,
            Some(m) = s.incoming.recv() => {
                if let Incoming::Event(Event::PullProgress { model: m, file, downloaded_bytes, total_bytes }) = m {
                    if m == model && !file.is_empty() {
                        let pct = if total_bytes == 0 { 100 } else { downloaded_bytes * 100 / total_bytes };
                        eprintln!("{m}: {pct:>3}% {} of {} ({file})", crate::view::fmt_bytes(downloaded_bytes), crate::view::fmt_bytes(total_bytes));
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(TuiError::Request { node: s.name.clone(), what, source: ClientError::Timeout(timeout) });
            }
        }
    };
    match reply {
        Ok(Reply::Pulled { model, path, downloaded_bytes }) => out.print(
            &format!("{path}\n"),
            json!({ "node": s.name, "model": model, "path": path, "downloaded_bytes": downloaded_bytes }),
        ),
        Ok(other) => Err(s.unexpected("pull", other)),
        Err(source) => Err(TuiError::Request { node: s.name.clone(), what, source }),
    }
}

async fn models_list(
    cf: &ConfigFile,
    node: Option<String>,
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    let targets = cf.select(node.as_deref())?;
    let results = each_node(&targets, timeout, |s| async move {
        match s.ask(Request::ListModels, timeout).await? {
            Reply::Models { models } => Ok(models),
            other => Err(s.unexpected("list models", other)),
        }
    })
    .await;
    let (ok, err) = first_error(results);
    let mut rows = Vec::new();
    let mut arr = Vec::new();
    for (node, models) in &ok {
        for m in models {
            rows.push(vec![
                node.clone(),
                m.name.clone(),
                m.format.clone(),
                crate::view::fmt_bytes(m.size_bytes),
                m.reference.clone(),
            ]);
            arr.push(json!({ "name": m.name, "ref": m.reference, "node": node, "size_bytes": m.size_bytes, "format": m.format }));
        }
    }
    if err.is_none() || !rows.is_empty() {
        out.print(
            &text_table(&["NODE", "NAME", "FORMAT", "SIZE", "REF"], &rows),
            Value::Array(arr),
        )?;
    }
    err.map_or(Ok(()), Err)
}

// ---------------------------------------------------------------------------------------------
// workers

async fn workers(
    cf: &ConfigFile,
    cmd: WorkersCmd,
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    match cmd {
        WorkersCmd::List { node } => {
            let targets = cf.select(node.as_deref())?;
            let results = each_node(
                &targets,
                timeout,
                |s| async move { s.workers(timeout).await },
            )
            .await;
            let (ok, err) = first_error(results);
            let mut rows = Vec::new();
            let mut arr = Vec::new();
            for (node, ws) in &ok {
                for w in ws {
                    rows.push(vec![
                        node.clone(),
                        w.id.clone(),
                        w.state.to_string(),
                        w.device.clone(),
                        w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        w.restarts.to_string(),
                        crate::view::fmt_rate(w.tokens_per_s),
                        crate::action::short_model(&w.model).to_string(),
                    ]);
                    arr.push(worker_json(node, w));
                }
            }
            if err.is_none() || !rows.is_empty() {
                let header = [
                    "NODE", "ID", "STATE", "DEVICE", "PID", "RESTARTS", "TOK/S", "MODEL",
                ];
                out.print(&text_table(&header, &rows), Value::Array(arr))?;
            }
            err.map_or(Ok(()), Err)
        }
        WorkersCmd::Spawn {
            node,
            model,
            device,
            threads,
            wait,
        } => {
            let target = cf.select_one(node.as_deref())?;
            spawn(
                &target,
                SpawnSpec {
                    model,
                    device,
                    threads,
                },
                wait,
                timeout,
                out,
            )
            .await
        }
        WorkersCmd::Kill { id, node } => {
            let (s, id) = find_worker(cf, &id, node.as_deref(), timeout).await?;
            match s.ask(Request::Kill { worker: id.clone() }, timeout).await? {
                Reply::Killed { worker } => out.print(
                    &format!("killed {worker} on {}\n", s.name),
                    json!({ "killed": worker, "node": s.name }),
                ),
                other => Err(s.unexpected("kill", other)),
            }
        }
        WorkersCmd::Restart { id, node } => {
            let (s, id) = find_worker(cf, &id, node.as_deref(), timeout).await?;
            match s
                .ask(Request::Restart { worker: id.clone() }, timeout)
                .await?
            {
                Reply::Restarted { worker } => out.print(
                    &format!("restarting {worker} on {}\n", s.name),
                    json!({ "restarted": worker, "node": s.name }),
                ),
                other => Err(s.unexpected("restart", other)),
            }
        }
    }
}

/// The session of the node that has worker `id`: the named node, the only node, or the one node
/// whose worker list has it.
async fn find_worker(
    cf: &ConfigFile,
    id: &str,
    node: Option<&str>,
    timeout: Duration,
) -> Result<(Session, String), TuiError> {
    let targets = cf.select(node)?;
    if targets.len() == 1 {
        return Ok((open(&targets[0], timeout).await?, id.to_string()));
    }
    let id_owned = id.to_string();
    let results = each_node(&targets, timeout, |s| {
        let id = id_owned.clone();
        async move {
            let has = s.workers(timeout).await?.iter().any(|w| w.id == id);
            Ok(has.then_some(s))
        }
    })
    .await;
    let mut found = Vec::new();
    for (name, r) in results {
        match r {
            Ok(Some(s)) => found.push(s),
            Ok(None) => {}
            Err(e) => tracing::warn!(node = %name, "skipped: {e}"),
        }
    }
    match found.len() {
        0 => Err(TuiError::WorkerNotFound {
            id: id.into(),
            scope: "any reachable node".into(),
        }),
        1 => Ok((found.remove(0), id.into())),
        _ => Err(TuiError::AmbiguousWorker {
            id: id.into(),
            nodes: found
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

async fn spawn(
    target: &NodeTarget,
    spec: SpawnSpec,
    wait: bool,
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    let mut s = open(target, timeout).await?;
    if wait {
        // Subscribe first: the worker's state changes after the spawn reply must not be missed.
        s.ask(Request::Subscribe, timeout).await?;
    }
    let worker = match s.ask(Request::Spawn(spec), timeout).await? {
        Reply::Spawned { worker } => worker,
        other => return Err(s.unexpected("spawn", other)),
    };
    if !wait {
        return out.print(&format!("{}\n", worker.id), worker_json(&s.name, &worker));
    }
    if !out.json {
        // The id first, so a script can read it while the model loads.
        out.print(&format!("{}\n", worker.id), Value::Null)?;
    }
    let verbose = std::io::stderr().is_terminal();
    let id = worker.id.clone();
    let mut last = worker;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if last.state.is_serving() {
            break;
        }
        if matches!(last.state, WorkerState::Failed | WorkerState::Exited) {
            if out.json {
                out.print("", worker_json(&s.name, &last))?;
            }
            return Err(TuiError::WorkerFailed {
                id,
                node: s.name.clone(),
                state: last.state.to_string(),
                reason: failure_reason(&last),
            });
        }
        let msg = match tokio::time::timeout_at(deadline, s.incoming.recv()).await {
            Err(_) => {
                return Err(TuiError::Timeout {
                    what: format!(
                        "waiting for {id} on {} to be ready (it is {})",
                        s.name, last.state
                    ),
                    secs: timeout.as_secs(),
                })
            }
            Ok(m) => m,
        };
        match msg {
            Some(Incoming::Event(Event::WorkerState { worker })) if worker.id == id => {
                if verbose && (worker.state != last.state || worker.detail != last.detail) {
                    eprintln!(
                        "{id}: {}{}",
                        worker.state,
                        if worker.detail.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", worker.detail)
                        }
                    );
                }
                last = worker;
            }
            Some(Incoming::Event(Event::WorkerReady { worker, model, .. })) if worker == id => {
                last.state = WorkerState::Ready;
                last.summary = Some(model);
            }
            Some(Incoming::Closed(reason)) => {
                return Err(TuiError::SessionClosed {
                    node: s.name.clone(),
                    reason,
                })
            }
            None => {
                return Err(TuiError::SessionClosed {
                    node: s.name.clone(),
                    reason: "connection closed".into(),
                })
            }
            Some(_) => {}
        }
    }
    if out.json {
        out.print("", worker_json(&s.name, &last))?;
    } else if verbose {
        eprintln!("{id}: ready");
    }
    Ok(())
}

fn failure_reason(w: &WorkerInfo) -> String {
    let mut parts = Vec::new();
    if let Some(e) = &w.last_exit {
        parts.push(e.clone());
    }
    if !w.detail.is_empty() {
        parts.push(w.detail.clone());
    }
    if parts.is_empty() {
        "no reason given".into()
    } else {
        parts.join("; ")
    }
}

// ---------------------------------------------------------------------------------------------
// infer

async fn infer(
    cf: &ConfigFile,
    args: InferArgs,
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    let target = cf.select_one(args.node.as_deref())?;
    let s = open(&target, timeout).await?;
    let mut params = SamplingParams::default();
    if let Some(n) = args.max_tokens {
        params.max_tokens = n;
    }
    if let Some(t) = args.temperature {
        params.temperature = t;
    }
    if let Some(seed) = args.seed {
        params.seed = seed;
    }
    params.ignore_eos = args.ignore_eos;
    let request = Request::Infer {
        worker: args.worker.clone(),
        model: args.model.clone(),
        prompt: args.prompt,
        params,
    };
    let what = describe(&request);
    let req_err = |source| TuiError::Request {
        node: s.name.clone(),
        what: what.clone(),
        source,
    };
    let mut stream = s
        .client
        .start(request, deadline_in(timeout))
        .await
        .map_err(req_err)?;
    let mut text = String::new();
    // Arrival times at this client, for the relay benchmark (what a user sees, not what the worker did).
    let sent_at = std::time::Instant::now();
    let mut first_at: Option<std::time::Instant> = None;
    let mut last_at = sent_at;
    let mut stdout = std::io::stdout();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    // Our own guard in case the agent never answers; its deadline normally ends the stream first.
    let guard = tokio::time::sleep(timeout + Duration::from_secs(5));
    tokio::pin!(guard);
    let (worker, finish, usage) = loop {
        tokio::select! {
            item = stream.next() => match item {
                Some(Streamed::Token(t)) => {
                    last_at = std::time::Instant::now();
                    first_at.get_or_insert(last_at);
                    if !out.json {
                        stdout.write_all(t.as_bytes()).and_then(|_| stdout.flush()).map_err(TuiError::Output)?;
                    }
                    text.push_str(&t);
                }
                Some(Streamed::Reply(Reply::InferDone { worker, finish_reason, usage })) => break (worker, finish_reason, usage),
                Some(Streamed::Reply(other)) => return Err(s.unexpected("infer", other)),
                Some(Streamed::Error(e)) => {
                    if interrupted {
                        return Err(TuiError::Interrupted);
                    }
                    return Err(req_err(ClientError::Agent(e)));
                }
                None => return Err(TuiError::SessionClosed { node: s.name.clone(), reason: "connection closed".into() }),
            },
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                let _ = stream.cancel().await;
                // Give the agent a moment to confirm, then leave regardless.
                guard.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(2));
            }
            _ = &mut guard => {
                if interrupted {
                    return Err(TuiError::Interrupted);
                }
                return Err(TuiError::Timeout { what: what.clone(), secs: timeout.as_secs() });
            }
        }
    };
    if out.json {
        let v = json!({
            "node": s.name,
            "worker": worker,
            "text": text,
            "finish_reason": finish,
            "usage": usage,
            "client": {
                "request_to_first_token_ms": first_at.map(|f| (f - sent_at).as_secs_f64() * 1e3),
                "decode_tokens_per_s": first_at
                    .filter(|f| last_at > *f && usage.generated_tokens > 1)
                    .map(|f| (usage.generated_tokens - 1) as f64 / (last_at - f).as_secs_f64()),
            },
        });
        out.print("", v)?;
    } else {
        if stdout.is_terminal() && !text.ends_with('\n') {
            let _ = writeln!(stdout);
        }
        eprintln!(
            "usage: worker={worker} finish={} prompt_tokens={} generated_tokens={} ttft_ms={:.0} decode_tok_s={:.1} total_ms={:.0}",
            serde_json::to_value(finish).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            usage.prompt_tokens,
            usage.generated_tokens,
            usage.time_to_first_token_ms,
            usage.decode_tokens_per_s,
            usage.total_ms
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// status

async fn status(cf: &ConfigFile, timeout: Duration, out: Out) -> Result<(), TuiError> {
    let targets = cf.targets();
    let results = each_node(&targets, timeout, |s| async move {
        let t0 = std::time::Instant::now();
        s.ask(Request::Ping, timeout).await?;
        let latency = t0.elapsed().as_millis() as u64;
        match s.ask(Request::Status, timeout).await? {
            Reply::Status { status } => Ok((latency, s.client.agent_version.clone(), status)),
            other => Err(s.unexpected("status", other)),
        }
    })
    .await;
    let mut arr = Vec::new();
    let mut text = String::new();
    for (target, (name, r)) in targets.iter().zip(results) {
        match r {
            Ok((latency, version, st)) => {
                text.push_str(&status_line(&name, latency, &st));
                let workers: Vec<Value> =
                    st.workers.iter().map(|w| worker_json(&name, w)).collect();
                arr.push(json!({
                    "name": name,
                    "url": target.display_url(),
                    "state": "connected",
                    "agent_version": version,
                    "agent_node": st.node,
                    "latency_ms": latency,
                    "telemetry": st.telemetry,
                    "workers": workers,
                }));
            }
            Err(e) => {
                let why = reason(&e);
                text.push_str(&format!("{name}  unreachable  {why}\n"));
                arr.push(json!({ "name": name, "url": target.display_url(), "state": "unreachable", "error": why }));
            }
        }
    }
    out.print(&text, json!({ "nodes": arr }))
}

fn status_line(name: &str, latency: u64, st: &NodeStatus) -> String {
    let t = &st.telemetry;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let gpus = if t.gpus.is_empty() {
        crate::view::no_gpu_text(&t.gpu_status)
    } else {
        t.gpus
            .iter()
            .map(|g| {
                format!(
                    "GPU{} {:.1}/{:.1}G",
                    g.index,
                    gib(g.mem_used_bytes),
                    gib(g.mem_total_bytes)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ready = st.workers.iter().filter(|w| w.state.is_serving()).count();
    format!(
        "{name}  connected  ping {latency} ms  agent {}  cpu {:.0}%  ram {:.1}/{:.1}G  {gpus}  workers {} ({ready} ready)\n",
        st.agent_version,
        t.cpu_percent,
        gib(t.mem_used_bytes),
        gib(t.mem_total_bytes),
        st.workers.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn infer_needs_worker_or_model() {
        assert!(Cli::try_parse_from(["rbee-tui", "infer", "--prompt", "hi"]).is_err());
        assert!(Cli::try_parse_from([
            "rbee-tui", "infer", "--prompt", "hi", "--worker", "w1", "--model", "m"
        ])
        .is_err());
        assert!(
            Cli::try_parse_from(["rbee-tui", "infer", "--prompt", "hi", "--model", "m"]).is_ok()
        );
    }

    #[test]
    fn json_flag_is_global() {
        let c = Cli::try_parse_from(["rbee-tui", "workers", "list", "--json"]).unwrap();
        assert!(c.json);
    }

    #[test]
    fn text_table_aligns() {
        let t = text_table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
