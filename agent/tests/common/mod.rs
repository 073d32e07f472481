//! Helpers shared by the hardening tests: an agent started with another worker binary (and
//! under a prefix such as `prlimit`), stand-in worker scripts, and /proc readings.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::time::Duration;

use rbee_testkit::AgentProc;

/// Every wait in these tests is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(60);

pub async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A real agent on a free loopback port, run through `prefix` (which must exec it), with
/// `worker_bin` as its worker and `extra` arguments.
pub fn start_agent(
    prefix: &[&str],
    state_dir: &Path,
    worker_bin: &Path,
    extra: &[&str],
) -> AgentProc {
    AgentProc::launch(prefix, "127.0.0.1:0", state_dir, worker_bin, extra, &[])
}

pub use rbee_testkit::script;

/// A stand-in worker that starts and then does nothing (never hello, never ready), until it is
/// signalled: spawns and kills cost no model load.
pub fn idle_worker(dir: &Path) -> PathBuf {
    script(dir, "idle-worker", "exec sleep 600")
}

/// Open descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Resident memory of `pid` in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse().ok())
        .unwrap();
    kb * 1024
}

/// `GET path` with the agent's token; the whole response.
pub async fn http_get(agent: &AgentProc, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = agent.url.trim_start_matches("ws://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        agent.token
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    bounded("http response", s.read_to_string(&mut out))
        .await
        .unwrap();
    out
}

/// The value of one line of the Prometheus text, e.g. `rbee_sessions_total`.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}
