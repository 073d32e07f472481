//! Everything that can go wrong reaching a node over SSH, each with what to do about it.
use std::path::PathBuf;

/// What can go wrong reaching a node over SSH.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// No TCP connection or no SSH handshake.
    #[error("cannot reach {target}: {reason}")]
    Unreachable {
        /// `HOST:PORT` (or the unparsable address).
        target: String,
        /// Why.
        reason: String,
    },
    /// Nobody has trusted this host key yet.
    #[error("host key of {host} is not known ({algo} {fingerprint}); if that is the node's key, run `rbee-tui nodes add` with --accept-new-host-key")]
    HostKeyUnknown {
        /// `HOST` or `[HOST]:PORT`.
        host: String,
        /// The key algorithm.
        algo: String,
        /// `SHA256:…`.
        fingerprint: String,
    },
    /// The host key differs from the recorded one: refused, always.
    #[error("HOST KEY OF {host} HAS CHANGED: it now presents {algo} {fingerprint}, which does not match line {line} of {file}; someone may be intercepting the connection, refusing (if the node was reinstalled, delete that line and add the node again)")]
    HostKeyChanged {
        /// `HOST` or `[HOST]:PORT`.
        host: String,
        /// The key algorithm.
        algo: String,
        /// `SHA256:…`.
        fingerprint: String,
        /// The known-hosts file.
        file: PathBuf,
        /// Its line with the recorded key.
        line: usize,
    },
    /// A host certificate instead of a plain key.
    #[error("{host} presented a host certificate; rbee checks plain host keys only")]
    HostCertificate {
        /// `HOST` or `[HOST]:PORT`.
        host: String,
    },
    /// A known-hosts file could not be read or written.
    #[error("cannot use known-hosts file {path}: {reason}")]
    KnownHosts {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No key was accepted.
    #[error("authentication as `{user}` refused by {host} (tried {tried})")]
    AuthRefused {
        /// The login user.
        user: String,
        /// `HOST` or `[HOST]:PORT`.
        host: String,
        /// The keys offered.
        tried: String,
    },
    /// The configured identity file is unusable.
    #[error("cannot use identity {path}: {reason}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The node's machine cannot run this machine's binaries.
    #[error("remote architecture mismatch: {host} is {remote}, this rbee-agent is built for {local}; install an rbee-agent built for the node in {dir}/bin")]
    ArchMismatch {
        /// `HOST` or `[HOST]:PORT`.
        host: String,
        /// What the node is.
        remote: String,
        /// What the binaries are built for.
        local: String,
        /// The node's rbee directory.
        dir: String,
    },
    /// Not enough room on the node for the binaries.
    #[error("no space to install rbee-agent on {host}: {detail}")]
    NoSpace {
        /// `HOST` or `[HOST]:PORT`.
        host: String,
        /// What the node said.
        detail: String,
    },
    /// The agent exited or never wrote its address.
    #[error("rbee-agent failed to start on {host}; last lines of {log}: {tail}")]
    AgentFailed {
        /// `HOST` or `[HOST]:PORT`.
        host: String,
        /// The agent log on the node.
        log: String,
        /// Its last lines.
        tail: String,
    },
    /// A binary to upload is missing on this machine.
    #[error("{path} not found; build it (cargo build) or set RBEE_AGENT_BIN / RBEE_WORKER_BIN")]
    LocalBinary {
        /// The file.
        path: PathBuf,
    },
    /// A command on the node failed.
    #[error("on {host}: {what} failed: {detail}")]
    Remote {
        /// `HOST` or `[HOST]:PORT`.
        host: String,
        /// The step.
        what: String,
        /// What the node said.
        detail: String,
    },
    /// A step took too long.
    #[error("{what} on {host}: no answer within {secs} s")]
    Timeout {
        /// `HOST` or `[HOST]:PORT`.
        host: String,
        /// The step.
        what: String,
        /// The limit.
        secs: u64,
    },
    /// The SSH library failed.
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
}
