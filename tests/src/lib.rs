//! Helpers for end-to-end tests: locate the real binaries and the real model, start real agents
//! on loopback, and wait for things with a bound instead of sleeping.
#![warn(missing_docs)]
pub mod standin;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rbee_client::{Client, Incoming};
use rbee_proto::session::{Reply, Request};
use rbee_proto::statedir;
use tokio::sync::mpsc;

/// The directory holding the workspace's built binaries (`target/debug` or `target/release`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe path");
    // target/<profile>/deps/<test> → target/<profile>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .to_path_buf();
    dir
}

/// Path of a workspace binary; panics with a hint if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} not built; run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// The workspace's root directory (where `Cargo.toml` and `assets/` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The real small model (SmolLM2-135M-Instruct Q4_1), fetched by `assets/fetch-model.sh`.
pub fn model_path() -> PathBuf {
    let p = std::env::var_os("RBEE_TEST_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("assets/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        p.is_file(),
        "test model {} missing; run assets/fetch-model.sh",
        p.display()
    );
    p
}

/// The directory holding the test model.
pub fn model_dir() -> PathBuf {
    model_path().parent().unwrap().to_path_buf()
}

/// Poll `f` every 20 ms until it returns `Some`, or panic after `limit` naming `what`.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A real `rbee-agent` process on a free loopback port with its own state dir.
pub struct AgentProc {
    /// The agent process.
    pub child: Child,
    /// Its state directory (token, lock, audit log, desired state).
    pub state_dir: PathBuf,
    /// `ws://` address it listens on.
    pub url: String,
    /// The session token it wrote.
    pub token: String,
}

impl AgentProc {
    /// Start an agent on `state_dir` with extra args; waits until it listens.
    pub fn start(state_dir: &Path, extra: &[&str]) -> AgentProc {
        Self::start_with_env(state_dir, extra, &[])
    }

    /// `start`, with extra environment variables for the agent (and so its workers).
    pub fn start_with_env(state_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> AgentProc {
        Self::start_in(&[], "127.0.0.1:0", state_dir, extra, env)
    }

    /// Start an agent listening on `listen`, run through `prefix` (e.g. `["ip", "netns", "exec",
    /// NS]`, which execs the agent so its pid is the child's); waits until it listens.
    pub fn start_in(
        prefix: &[&str],
        listen: &str,
        state_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> AgentProc {
        Self::launch(prefix, listen, state_dir, &bin("rbee-worker"), extra, env)
    }

    /// As [`AgentProc::start_in`], with `worker_bin` as the agent's worker (a stand-in script,
    /// a wrapper that misbehaves).
    pub fn launch(
        prefix: &[&str],
        listen: &str,
        state_dir: &Path,
        worker_bin: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> AgentProc {
        if let Some(parent) = state_dir.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let _ = std::fs::remove_file(state_dir.join(statedir::ADDR));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state_dir.with_extension("agent.log"))
            .unwrap();
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin("rbee-agent"));
                c
            }
            None => Command::new(bin("rbee-agent")),
        };
        cmd.arg("--listen")
            .arg(listen)
            .arg("--state-dir")
            .arg(state_dir);
        cmd.arg("--model-dir").arg(model_dir());
        cmd.arg("--worker-bin").arg(worker_bin);
        cmd.args(extra);
        cmd.env("RBEE_LOG", "info");
        cmd.envs(env.iter().copied());
        cmd.stdout(Stdio::null()).stderr(log);
        let mut child = cmd.spawn().expect("start rbee-agent");
        let addr = wait_for(Duration::from_secs(20), "agent to listen", || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "rbee-agent exited early with {st}; log: {}",
                    read_log(state_dir)
                );
            }
            std::fs::read_to_string(state_dir.join(statedir::ADDR))
                .ok()
                .filter(|s| !s.is_empty())
        });
        let token = std::fs::read_to_string(state_dir.join(statedir::TOKEN))
            .unwrap()
            .trim()
            .to_string();
        AgentProc {
            child,
            state_dir: state_dir.into(),
            url: format!("ws://{addr}"),
            token,
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open an authenticated session, handshake done.
    pub async fn connect(&self) -> (Client, mpsc::Receiver<Incoming>) {
        Client::connect(&self.url, &self.token, "test")
            .await
            .expect("connect to agent")
    }

    /// Send a signal and wait for the process to exit.
    pub fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        // SAFETY: signalling a child we started.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        self.child.wait().unwrap()
    }

    /// A session that has subscribed to the agent's events.
    pub async fn subscribed(&self) -> (Client, mpsc::Receiver<Incoming>) {
        let (c, ev) = self.connect().await;
        assert_eq!(
            c.request(Request::Subscribe, None).await.unwrap(),
            Reply::Subscribed
        );
        (c, ev)
    }

    /// The agent's audit log as it is on disk now.
    pub fn audit(&self) -> String {
        std::fs::read_to_string(self.state_dir.join(statedir::AUDIT)).unwrap_or_default()
    }

    /// Everything the agent has logged so far.
    pub fn log(&self) -> String {
        read_log(&self.state_dir)
    }
}

fn read_log(state_dir: &Path) -> String {
    std::fs::read_to_string(state_dir.with_extension("agent.log")).unwrap_or_default()
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An executable `sh` script `dir/name` running `body`: a stand-in worker (or any program) a test
/// hands to the agent as its `--worker-bin`.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

/// A stand-in worker for a model that hangs while loading: it says hello, reports a loading
/// stage, then never gets further.
pub fn hangs_while_loading(dir: &Path) -> PathBuf {
    script(
        dir,
        "hangs-loading",
        &format!(
            "echo '{{\"type\":\"hello\",\"protocol_version\":{},\"pid\":'$$'}}'\n\
             echo '{{\"type\":\"loading\",\"stage\":\"reading weights\",\"progress\":0.5}}'\n\
             exec sleep 100000",
            rbee_proto::PROTOCOL_VERSION
        ),
    )
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Live child processes of `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent)
            && fields.first() != Some(&"Z")
        {
            out.push(pid);
        }
    }
    out
}
