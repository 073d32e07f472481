//! Bring-up of the agent on this machine, so a first run of `rbee-tui` works with nothing
//! configured: reuse the agent that already serves the local state directory, or start one,
//! detached, and wait until it answers.
//!
//! Synchronous on purpose: callers are a subcommand before it connects, a test, or the dashboard's
//! session task through `spawn_blocking`. It never kills an agent; a started agent outlives us.
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rbee_proto::statedir::{ADDR, AGENT_LOG, LOCK, TOKEN};

/// Environment override for the local agent's state directory.
pub const ENV_STATE: &str = "RBEE_LOCAL_STATE";
/// Environment override for the `rbee-agent` binary.
pub const ENV_AGENT_BIN: &str = "RBEE_AGENT_BIN";
/// Extra model directory handed to a started agent.
pub const ENV_MODEL_DIR: &str = "RBEE_MODEL_DIR";

/// Why the local agent is not there.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// No data directory to keep the agent state in.
    #[error("no data directory on this system; set {ENV_STATE}=DIR")]
    NoDataDir,
    /// No `rbee-agent` to start.
    #[error("rbee-agent not found at {path}; build it (cargo build -p rbee-agent) or set {ENV_AGENT_BIN}")]
    AgentBinMissing {
        /// The file.
        path: PathBuf,
    },
    /// Starting it failed.
    #[error("cannot start {bin}: {source}")]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It exited before it listened.
    #[error("rbee-agent exited ({status}) before listening; last log lines from {log}: {tail}")]
    Exited {
        /// How it exited.
        status: String,
        /// Its log.
        log: PathBuf,
        /// The last lines of it.
        tail: String,
    },
    /// It did not write its address and token in time.
    #[error("rbee-agent did not write {dir}/agent.addr and token within {secs} s; see {log}")]
    Timeout {
        /// The state directory.
        dir: PathBuf,
        /// The limit.
        secs: u64,
        /// Its log.
        log: PathBuf,
    },
    /// A file in the state directory.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// How to find or start the local agent.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The agent's state directory (its lock, address, token, log).
    pub state_dir: PathBuf,
    /// The `rbee-agent` to start.
    pub agent_bin: PathBuf,
    /// `--model-dir`s for a started agent.
    pub model_dirs: Vec<PathBuf>,
    /// How long a started agent gets to write its address and token.
    pub timeout: Duration,
}

impl LocalOptions {
    /// Defaults from the environment: `RBEE_LOCAL_STATE` or `<data dir>/rbee/local-agent`;
    /// `RBEE_AGENT_BIN` or `rbee-agent` beside the current executable; `RBEE_MODEL_DIR` and
    /// `./assets/models` when they exist.
    pub fn from_env() -> Result<Self, LocalError> {
        let state_dir = match std::env::var_os(ENV_STATE) {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => dirs::data_dir()
                .ok_or(LocalError::NoDataDir)?
                .join("rbee")
                .join("local-agent"),
        };
        let agent_bin = match std::env::var_os(ENV_AGENT_BIN) {
            Some(b) if !b.is_empty() => PathBuf::from(b),
            _ => default_agent_bin(),
        };
        let mut model_dirs = Vec::new();
        if let Some(d) = std::env::var_os(ENV_MODEL_DIR).filter(|d| !d.is_empty()) {
            model_dirs.push(absolute(Path::new(&d)));
        }
        let assets = Path::new("assets/models");
        if assets.is_dir() {
            model_dirs.push(absolute(assets));
        }
        Ok(Self {
            state_dir,
            agent_bin,
            model_dirs,
            timeout: Duration::from_secs(10),
        })
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// `rbee-agent` beside the running binary. Test binaries live one level deeper
/// (`target/debug/deps/`), so the parent of `deps` is tried too.
fn default_agent_bin() -> PathBuf {
    let exe = std::env::current_exe().ok();
    let dir = exe
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let beside = dir.join("rbee-agent");
    if !beside.exists() && dir.file_name().is_some_and(|n| n == "deps") {
        if let Some(up) = dir.parent() {
            let up = up.join("rbee-agent");
            if up.exists() {
                return up;
            }
        }
    }
    beside
}

/// A local agent that answers.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalAgent {
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The file holding its token.
    pub token_file: PathBuf,
    /// Pid of the agent when this call started it; `None` when it was already running.
    pub started_pid: Option<u32>,
}

impl LocalAgent {
    /// `ws://ADDR`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

/// Find or start the local agent with options from the environment.
pub fn ensure_local_agent() -> Result<LocalAgent, LocalError> {
    ensure_local_agent_with(&LocalOptions::from_env()?)
}

/// Find or start the local agent described by `opts`.
pub fn ensure_local_agent_with(opts: &LocalOptions) -> Result<LocalAgent, LocalError> {
    let dir = &opts.state_dir;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LocalError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    if lock_held(&dir.join(LOCK)) {
        if let Some(agent) = probe(dir) {
            tracing::info!(addr = %agent.addr, "reusing local agent");
            return Ok(agent);
        }
        // Held but not answering yet: an agent is starting (maybe another dashboard's). Wait for it.
        return wait_ready(opts, None);
    }
    if !opts.agent_bin.exists() {
        return Err(LocalError::AgentBinMissing {
            path: opts.agent_bin.clone(),
        });
    }
    // Nobody holds the lock, so any address file is stale; removing it lets us tell a fresh one.
    let _ = std::fs::remove_file(dir.join(ADDR));
    let log_path = dir.join(AGENT_LOG);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(&log_path))?;
    let log2 = log.try_clone().map_err(io(&log_path))?;
    let mut cmd = Command::new(&opts.agent_bin);
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--state-dir")
        .arg(dir);
    for m in &opts.model_dirs {
        cmd.arg("--model-dir").arg(m);
    }
    // The agent writes (and rotates) agent.log itself; until its logger is up, and for an older
    // agent that ignores the variable, its stderr goes there too.
    cmd.env("RBEE_AGENT_LOG_FILE", &log_path);
    cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent. Its own session
    // keeps the agent out of our terminal's job control, so closing the dashboard leaves it running.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| LocalError::Spawn {
        bin: opts.agent_bin.clone(),
        source,
    })?;
    tracing::info!(pid = child.id(), bin = %opts.agent_bin.display(), "started local agent");
    wait_ready(opts, Some(child))
}

/// Poll (never holding the lock ourselves, which could make a starting agent refuse) until the
/// state directory names an address that accepts connections and a token exists.
fn wait_ready(opts: &LocalOptions, mut child: Option<Child>) -> Result<LocalAgent, LocalError> {
    let dir = &opts.state_dir;
    let log = dir.join(AGENT_LOG);
    let deadline = Instant::now() + opts.timeout;
    loop {
        if let Some(mut agent) = probe(dir) {
            if let Some(c) = child.take() {
                agent.started_pid = Some(c.id());
                reap_in_background(c);
            }
            return Ok(agent);
        }
        if let Some(c) = child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                child = None;
                // Another agent may have won a race for the same directory; then use that one.
                if !lock_held(&dir.join(LOCK)) {
                    return Err(LocalError::Exited {
                        status: status.to_string(),
                        tail: log_tail(&log, 3),
                        log,
                    });
                }
            }
        }
        if Instant::now() >= deadline {
            if let Some(c) = child {
                reap_in_background(c);
            }
            return Err(LocalError::Timeout {
                dir: dir.clone(),
                secs: opts.timeout.as_secs(),
                log,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A thread that waits for the agent so it never lingers as a zombie while we run.
fn reap_in_background(mut child: Child) {
    std::thread::spawn(move || {
        let _ = child.wait();
    });
}

/// The agent of `state_dir` if its address file names a socket that accepts and its token exists.
pub fn probe(state_dir: &Path) -> Option<LocalAgent> {
    let text = std::fs::read_to_string(state_dir.join(ADDR)).ok()?;
    let addr = parse_addr(&text)?;
    let token_file = state_dir.join(TOKEN);
    if !std::fs::metadata(&token_file).is_ok_and(|m| m.len() > 0) {
        return None;
    }
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    Some(LocalAgent {
        state_dir: state_dir.into(),
        addr,
        token_file,
        started_pid: None,
    })
}

fn parse_addr(text: &str) -> Option<SocketAddr> {
    let t = text.trim();
    let t = t.strip_prefix("ws://").unwrap_or(t);
    t.trim_end_matches('/').parse().ok()
}

/// Whether some process holds the agent's exclusive lock. The probe takes a shared lock for an
/// instant and drops it at once.
pub fn lock_held(lock_path: &Path) -> bool {
    let Ok(f) = OpenOptions::new().read(true).open(lock_path) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own for the duration of the call.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc == 0 {
        // SAFETY: as above; closing the file would release it too.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        false
    } else {
        std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
    }
}

/// Last `n` non-empty lines of a log, joined with " | " so the error stays on one line.
fn log_tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return "(no log)".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
    let mut buf = String::new();
    let _ = f.read_to_string(&mut buf);
    let lines: Vec<&str> = buf
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(n)..].join(" | ");
    if tail.is_empty() {
        "(empty log)".into()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_forms() {
        assert_eq!(
            parse_addr("127.0.0.1:7733\n"),
            Some("127.0.0.1:7733".parse().unwrap())
        );
        assert_eq!(
            parse_addr("ws://127.0.0.1:1/"),
            Some("127.0.0.1:1".parse().unwrap())
        );
        assert_eq!(parse_addr("garbage"), None);
    }

    #[test]
    fn lock_probe_sees_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(LOCK);
        assert!(!lock_held(&p), "missing file is not held");
        let f = std::fs::File::create(&p).unwrap();
        assert!(!lock_held(&p));
        // SAFETY: test-owned descriptor.
        assert_eq!(
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
            0
        );
        assert!(lock_held(&p));
        drop(f);
        assert!(!lock_held(&p));
    }

    #[test]
    fn probe_needs_listener_and_token() {
        let dir = tempfile::tempdir().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std::fs::write(dir.path().join(ADDR), l.local_addr().unwrap().to_string()).unwrap();
        assert!(probe(dir.path()).is_none(), "no token yet");
        std::fs::write(dir.path().join(TOKEN), "secret").unwrap();
        let a = probe(dir.path()).unwrap();
        assert_eq!(a.addr, l.local_addr().unwrap());
        drop(l);
        assert!(probe(dir.path()).is_none(), "listener gone");
    }

    #[test]
    fn missing_binary_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LocalOptions {
            state_dir: dir.path().join("s"),
            agent_bin: dir.path().join("no-such-agent"),
            model_dirs: vec![],
            timeout: Duration::from_secs(1),
        };
        let e = ensure_local_agent_with(&opts).unwrap_err();
        assert!(matches!(e, LocalError::AgentBinMissing { .. }), "{e}");
    }

    #[test]
    fn agent_that_dies_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        // `false` ignores its arguments and exits 1 at once: an agent that cannot start.
        let opts = LocalOptions {
            state_dir: dir.path().join("s"),
            agent_bin: PathBuf::from("/bin/false"),
            model_dirs: vec![],
            timeout: Duration::from_secs(5),
        };
        let e = ensure_local_agent_with(&opts).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, LocalError::Exited { .. }), "{msg}");
        assert!(msg.contains("agent.log"), "{msg}");
    }
}
