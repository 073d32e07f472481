//! Bring-up on the node: make sure exactly one agent of our protocol runs there (reuse it, start
//! the installed one, or check the machine and upload this machine's binaries first), and stop it.
use std::path::{Path, PathBuf};
use std::time::Duration;

use rbee_proto::PROTOCOL_VERSION;

use super::conn::SshConn;
use super::error::SshError;
use super::remote::{self, KeyValues};
use super::{SshOptions, SSH_COMMAND_TIMEOUT};

/// The agent running on a node.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteAgent {
    /// Its process id on the node.
    pub pid: u32,
    /// The agent's address on the node's loopback.
    pub addr: std::net::SocketAddr,
    /// The bearer token it requires.
    pub token: String,
    /// This bring-up uploaded the binaries.
    pub installed: bool,
    /// This bring-up started the agent (else it was running).
    pub started: bool,
    /// Why a running agent was stopped and started again (another build, a model dir it lacked).
    pub replaced: Option<String>,
    /// What keeps it running: `systemd user unit …` or `detached (…)` (as the node recorded when
    /// it was started; `None` for an agent started by an older rbee-tui).
    pub supervisor: Option<String>,
    /// The node's rbee directory, expanded.
    pub dir: String,
}

/// `rbee-agent` and `rbee-worker` on this machine, to upload.
fn local_binaries() -> Result<[(PathBuf, &'static str); 2], SshError> {
    let agent = crate::nodes::local::LocalOptions::from_env()
        .map(|o| o.agent_bin)
        .unwrap_or_else(|_| PathBuf::from("rbee-agent"));
    let worker = match std::env::var_os("RBEE_WORKER_BIN") {
        Some(w) if !w.is_empty() => PathBuf::from(w),
        _ => agent.with_file_name("rbee-worker"),
    };
    for p in [&agent, &worker] {
        if !p.is_file() {
            return Err(SshError::LocalBinary { path: p.clone() });
        }
    }
    Ok([(worker, "rbee-worker"), (agent, "rbee-agent")])
}

/// This machine's agent and worker build ids (hashes of the binaries), computed once; `None`
/// when they are not here to compare (nothing could be uploaded then either).
fn local_builds() -> Option<(String, String)> {
    static BUILDS: std::sync::OnceLock<Option<(String, String)>> = std::sync::OnceLock::new();
    BUILDS
        .get_or_init(|| {
            let [(worker, _), (agent, _)] = local_binaries().ok()?;
            let id = |p: &Path| rbee_host::build::file_id(p).ok();
            Some((id(&agent)?, id(&worker)?))
        })
        .clone()
}

/// Why the node's installed binaries must be replaced, or `None` when they can stay: another
/// protocol always; another build (agent or worker) unless the node is pinned (`--no-upgrade`).
fn needs_install(probe: &KeyValues, opts: &SshOptions) -> Option<String> {
    let Some(version) = probe.get("bin").and(probe.get("version")) else {
        return Some("no rbee installed".into());
    };
    if remote::protocol_of(version) != Some(PROTOCOL_VERSION) {
        return Some(format!(
            "it runs `{version}`, not protocol {PROTOCOL_VERSION}"
        ));
    }
    if opts.no_upgrade {
        return None;
    }
    let (agent, worker) = local_builds()?;
    let theirs = (
        rbee_host::build::id_in(version, "build"),
        rbee_host::build::id_in(version, "worker"),
    );
    (theirs != (Some(agent.clone()), Some(worker.clone()))).then(|| {
        format!(
            "it has build {} worker {}, this machine {agent} worker {worker}",
            theirs.0.as_deref().unwrap_or("?"),
            theirs.1.as_deref().unwrap_or("?")
        )
    })
}

/// The model dirs asked for that the running agent was not started with.
fn missing_model_dirs(probe: &KeyValues, opts: &SshOptions) -> Vec<String> {
    let args = probe.all("arg");
    let has: Vec<&str> = args
        .windows(2)
        .filter(|w| w[0] == "--model-dir")
        .map(|w| w[1].as_str())
        .collect();
    opts.model_dirs
        .iter()
        .filter(|m| !has.contains(&m.as_str()))
        .cloned()
        .collect()
}

/// Where the last bring-up of the node at `ssh` (`USER@HOST:PORT`) with rbee dir `remote_dir`
/// noted what keeps its agent up (`<state dir>/rbee/nodes/…`), for `nodes list`.
pub fn supervisor_note(ssh: &str, remote_dir: Option<&str>) -> std::path::PathBuf {
    let key: String = format!("{ssh} {}", remote_dir.unwrap_or("~/.local/share/rbee"))
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@.-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    dirs::state_dir()
        .or_else(dirs::data_dir)
        .unwrap_or_else(std::env::temp_dir)
        .join("rbee/nodes")
        .join(key)
}

/// Make sure one agent of our protocol version and this machine's build runs on the node, with
/// the model dirs asked for; install and (re)start it as needed. A running agent that must be
/// replaced is stopped first; the new one restores its desired workers. What keeps it up is
/// noted for `nodes list` ([`supervisor_note`]).
pub async fn ensure_agent(conn: &SshConn, opts: &SshOptions) -> Result<RemoteAgent, SshError> {
    let agent = bring_up_agent(conn, opts).await?;
    if let Some(s) = &agent.supervisor {
        let note = supervisor_note(&opts.addr.to_string(), opts.remote_dir.as_deref());
        if let Some(dir) = note.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(&note, s);
    }
    Ok(agent)
}

async fn bring_up_agent(conn: &SshConn, opts: &SshOptions) -> Result<RemoteAgent, SshError> {
    let host = conn.host().to_string();
    let rd = opts.remote_dir.as_deref();
    let probe = conn.exec_kv("probe", &remote::probe_script(rd)).await?;
    let dir = probe
        .get("dir")
        .unwrap_or("~/.local/share/rbee")
        .to_string();
    if probe.get("os") != Some("Linux") {
        return Err(SshError::Remote {
            host,
            what: "probe".into(),
            detail: format!(
                "rbee-agent runs on Linux; the node says `{}`",
                probe.get("os").unwrap_or("?")
            ),
        });
    }
    let install_why = needs_install(&probe, opts);
    let running = probe.get("pid").is_some();
    let missing = missing_model_dirs(&probe, opts);
    let replace_why = match (&install_why, running, missing.is_empty()) {
        (_, false, _) => None,
        (Some(why), true, _) => Some(format!("replaced: {why}")),
        (None, true, false) => Some(format!(
            "restarted with model dir(s) {}",
            missing.join(", ")
        )),
        (None, true, true) => None,
    };
    if install_why.is_none() && replace_why.is_none() {
        if let (Some(pid), Some(addr), Some(token)) =
            (probe.get("pid"), probe.get("addr"), probe.get("token"))
        {
            if let (Ok(pid), Some(addr)) = (pid.parse(), parse_addr(addr)) {
                tracing::info!(%host, pid, "reusing the node's agent");
                return Ok(RemoteAgent {
                    pid,
                    addr,
                    token: token.into(),
                    installed: false,
                    started: false,
                    replaced: None,
                    supervisor: probe.get("supervisor").map(String::from),
                    dir,
                });
            }
        }
    }
    if let Some(why) = &install_why {
        tracing::info!(%host, "installing this machine's binaries: {why}");
        install(conn, opts, &probe, &dir).await?;
    }
    let bin = match (&install_why, probe.get("bin")) {
        (None, Some(b)) => b.to_string(),
        _ => format!("{dir}/bin/rbee-agent"),
    };
    let restart = install_why.is_some() || replace_why.is_some();
    let mut agent = start(conn, opts, &bin, restart, dir).await?;
    agent.installed = install_why.is_some();
    agent.replaced = replace_why;
    Ok(agent)
}

/// Start the agent at `bin` (stopping one of another protocol first when `replace`), and read
/// back its pid, address and token.
async fn start(
    conn: &SshConn,
    opts: &SshOptions,
    bin: &str,
    replace: bool,
    dir: String,
) -> Result<RemoteAgent, SshError> {
    let host = conn.host().to_string();
    let rd = opts.remote_dir.as_deref();
    let current = !replace;
    let out = conn
        .exec(
            "starting rbee-agent",
            &remote::start_script(rd, bin, &opts.model_dirs, replace),
            None,
            SSH_COMMAND_TIMEOUT,
        )
        .await?;
    let kv = KeyValues::parse(&out.stdout);
    if kv.get("failed").is_some() || kv.get("timeout").is_some() {
        let tail = kv
            .all("log")
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" | ");
        return Err(SshError::AgentFailed {
            host,
            log: kv.get("log_file").unwrap_or("agent.log").to_string(),
            tail: if kv.get("timeout").is_some() {
                format!("no address after 30 s: {tail}")
            } else if tail.is_empty() {
                "(empty log)".into()
            } else {
                tail
            },
        });
    }
    if !out.success() {
        let detail = kv
            .get("error")
            .map(String::from)
            .unwrap_or_else(|| out.failure());
        return Err(SshError::Remote {
            host,
            what: "starting rbee-agent".into(),
            detail,
        });
    }
    let pid: Option<u32> = kv.get("pid").and_then(|p| p.parse().ok());
    let addr = kv.get("addr").and_then(parse_addr);
    let (Some(pid), Some(addr), Some(token)) = (pid, addr, kv.get("token")) else {
        return Err(SshError::Remote {
            host,
            what: "starting rbee-agent".into(),
            detail: format!("unexpected answer: {}", out.stdout.trim()),
        });
    };
    let started = kv.get("started").is_some_and(|s| s == pid.to_string());
    tracing::info!(%host, pid, installed = !current, started, "node agent up");
    Ok(RemoteAgent {
        pid,
        addr,
        token: token.into(),
        installed: !current,
        started,
        replaced: None,
        supervisor: kv.get("supervisor").map(String::from),
        dir,
    })
}

fn parse_addr(text: &str) -> Option<std::net::SocketAddr> {
    let t = text.trim();
    let t = t.strip_prefix("ws://").unwrap_or(t);
    t.trim_end_matches('/').parse().ok()
}

/// Check the node can run our binaries and has room for them, then upload them.
async fn install(
    conn: &SshConn,
    opts: &SshOptions,
    probe: &KeyValues,
    dir: &str,
) -> Result<(), SshError> {
    let host = conn.host().to_string();
    let remote_arch = probe.get("arch").unwrap_or("unknown");
    let local = std::env::consts::ARCH;
    if remote::normalize_arch(remote_arch) != local {
        return Err(SshError::ArchMismatch {
            host,
            remote: remote_arch.into(),
            local: local.into(),
            dir: dir.into(),
        });
    }
    if cfg!(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    )) && probe.get("avx2") != Some("1")
    {
        return Err(SshError::ArchMismatch {
            host,
            remote: "x86_64 without AVX2/FMA".into(),
            local: "x86-64-v3 (AVX2, FMA)".into(),
            dir: dir.into(),
        });
    }
    let bins = local_binaries()?;
    let mut need = 0u64;
    for (path, _) in &bins {
        need += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    }
    let need_with_room = need + (16 << 20);
    if let Some(free) = probe.get("free_kb").and_then(|f| f.parse::<u64>().ok()) {
        if free * 1024 < need_with_room {
            return Err(SshError::NoSpace {
                host,
                detail: format!(
                    "{} needs {} MiB, {} MiB free",
                    dir,
                    need_with_room >> 20,
                    (free * 1024) >> 20
                ),
            });
        }
    }
    for (path, name) in &bins {
        upload(conn, opts, path, name).await?;
    }
    let out = conn
        .exec(
            "rbee-agent --version",
            &remote::version_script(opts.remote_dir.as_deref()),
            None,
            SSH_COMMAND_TIMEOUT,
        )
        .await?;
    let line = out.stdout.lines().next().unwrap_or("").to_string();
    if !out.success() || remote::protocol_of(&line) != Some(PROTOCOL_VERSION) {
        return Err(SshError::Remote {
            host,
            what: "running the uploaded rbee-agent".into(),
            detail: if out.success() {
                format!("it says `{line}`, expected protocol {PROTOCOL_VERSION}")
            } else {
                out.failure()
            },
        });
    }
    Ok(())
}

async fn upload(
    conn: &SshConn,
    opts: &SshOptions,
    path: &Path,
    name: &str,
) -> Result<(), SshError> {
    let host = conn.host().to_string();
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|_| SshError::LocalBinary { path: path.into() })?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    // Generous: 60 s plus 1 s per 4 MiB.
    let limit = Duration::from_secs(60 + (size >> 22));
    let t0 = std::time::Instant::now();
    let out = conn
        .exec(
            &format!("uploading {name}"),
            &remote::upload_script(opts.remote_dir.as_deref(), name, size),
            Some(file),
            limit,
        )
        .await?;
    if !out.success() {
        let detail = out.failure();
        if detail.contains("No space left") || detail.contains("quota exceeded") {
            return Err(SshError::NoSpace { host, detail });
        }
        return Err(SshError::Remote {
            host,
            what: format!("uploading {name}"),
            detail,
        });
    }
    tracing::info!(%host, name, size, ms = t0.elapsed().as_millis() as u64, "uploaded");
    Ok(())
}

/// What `nodes stop` found and did.
#[derive(Debug, Clone, PartialEq)]
pub struct Stopped {
    /// The agent's pid, `None` when no agent was running.
    pub pid: Option<u32>,
    /// Pids of the worker processes it had.
    pub workers: Vec<u32>,
}

/// Stop the node's agent and its workers (SIGTERM, SIGKILL after 15 s) and check they are gone.
pub async fn stop_agent(conn: &SshConn, opts: &SshOptions) -> Result<Stopped, SshError> {
    let kv = conn
        .exec_kv(
            "stopping rbee-agent",
            &remote::stop_script(opts.remote_dir.as_deref()),
        )
        .await?;
    if kv.get("running") == Some("0") {
        return Ok(Stopped {
            pid: None,
            workers: vec![],
        });
    }
    let left = kv.pids("left");
    if !left.is_empty() {
        return Err(SshError::Remote {
            host: opts.host(),
            what: "stopping rbee-agent".into(),
            detail: format!("processes still alive after SIGKILL: {left:?}"),
        });
    }
    Ok(Stopped {
        pid: kv.get("pid").and_then(|p| p.parse().ok()),
        workers: kv.pids("workers"),
    })
}
