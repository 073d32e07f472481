//! Remote nodes over SSH (russh; the `ssh` program is never run). For a node configured with
//! `ssh = "USER@HOST[:PORT]"` the dashboard and the subcommands:
//!
//! 1. connect and check the server's host key against `~/.ssh/known_hosts` and rbee's own
//!    known-hosts file ([`known_hosts`]); an unknown key is refused with its fingerprint unless the
//!    caller accepts new keys (`nodes add --accept-new-host-key`), a changed key is always refused;
//! 2. authenticate with the node's `identity` file, else the keys of a running ssh-agent, else
//!    `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`;
//! 3. make sure exactly one agent runs on the node ([`remote`]): reuse the running one, or start
//!    the installed one, or (none installed, another protocol version, or another build than
//!    this machine's, by `--version`'s build ids, unless the node is pinned with `--no-upgrade`)
//!    check the node's architecture and free space, upload this machine's `rbee-agent` and
//!    `rbee-worker` and start that, detached, on the node's loopback, stopping the old agent
//!    first (the new one restores its workers); a running agent lacking a requested
//!    `--model-dir` is restarted with it;
//! 4. read the agent's token and open the WebSocket session through a `direct-tcpip` channel to
//!    the agent's loopback port, so no agent port is ever exposed on the network.
//!
//! The SSH connection lives exactly as long as the session's byte stream ([`conn::Tunnel`] holds
//! it), so a dropped SSH connection ends the session and the caller's usual reconnect loop applies.
//!
//! Files: `error` (what can go wrong), `conn` (connection, commands, tunnels), `trust` (the
//! host-key check), `auth` (which keys are tried), `agent` (bring-up and stop on the node), `gpu` (the node's GPUs and
//! its CUDA worker, at `nodes add`), `remote` (the POSIX
//! `sh` scripts run there), `known_hosts`. Everything here answers in [`SshError`]; turning that
//! into the dashboard's errors and sessions is `nodes::connect`'s job.
use std::path::PathBuf;
use std::time::Duration;

use rbee_proto::config::{NodeConfig, SshAddr};

pub mod agent;
mod auth;
pub mod conn;
pub mod error;
pub mod gpu;
pub mod known_hosts;
pub mod remote;
mod trust;

pub use error::SshError;
use known_hosts::{host_label, KnownHosts};

/// TCP connect plus SSH handshake plus authentication.
pub const SSH_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// One short remote command (probe, version, start, stop).
pub const SSH_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach one node.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// `USER@HOST:PORT`.
    pub addr: SshAddr,
    /// The one key to use, if configured.
    pub identity: Option<PathBuf>,
    /// rbee's directory on the node [default: `~/.local/share/rbee`].
    pub remote_dir: Option<String>,
    /// Model directories on the node for its agent.
    pub model_dirs: Vec<String>,
    /// Where host keys are looked up and learned.
    pub known_hosts: KnownHosts,
    /// Trust (and record) a host key seen for the first time.
    pub accept_new_host_key: bool,
    /// Keep the node's binaries when they are another build than this machine's.
    pub no_upgrade: bool,
}

impl SshOptions {
    /// Options for a configured SSH node (`ssh` must be set).
    pub fn from_node(node: &NodeConfig) -> Result<Self, SshError> {
        let spec = node.ssh.as_deref().unwrap_or_default();
        let addr = SshAddr::parse(spec).map_err(|reason| SshError::Unreachable {
            target: spec.to_string(),
            reason,
        })?;
        Ok(Self {
            addr,
            identity: node.identity.clone(),
            remote_dir: node.remote_dir.clone(),
            model_dirs: node.model_dirs.clone(),
            known_hosts: KnownHosts::from_env(),
            accept_new_host_key: false,
            no_upgrade: node.no_upgrade,
        })
    }

    /// `HOST` or `[HOST]:PORT`, as known_hosts and messages name it.
    pub fn host(&self) -> String {
        host_label(&self.addr.host, self.addr.port)
    }
}
