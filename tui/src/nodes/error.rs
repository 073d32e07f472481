//! The one error type of the dashboard library. Each variant is something the operator can act on,
//! and its message says what failed, with which input, and what to do.
use std::path::PathBuf;

use rbee_client::ClientError;
use rbee_proto::config::ConfigError;

use crate::nodes::local::LocalError;
use crate::nodes::ssh::SshError;

/// Why a command or the dashboard failed, in words the operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    /// The config file does not parse or check.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The config file could not be written.
    #[error("cannot write config {path}: {source}")]
    ConfigWrite {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No place for the config file.
    #[error("no config directory on this system; pass --config FILE or set RBEE_CONFIG")]
    NoConfigDir,
    /// `--node` (or a name) names no configured node.
    #[error("no node named `{name}` (known: {known}); see `rbee-tui nodes list`")]
    UnknownNode {
        /// The name given.
        name: String,
        /// The names there are.
        known: String,
    },
    /// `nodes add` with a name that is taken.
    #[error("a node named `{name}` already exists in {path}; remove it first with `rbee-tui nodes rm {name}`")]
    DuplicateNode {
        /// The name given.
        name: String,
        /// The file.
        path: PathBuf,
    },
    /// Several nodes and no `--node`.
    #[error("several nodes are configured ({known}); pick one with --node NAME")]
    NodeRequired {
        /// The names there are.
        known: String,
    },
    /// A node's token file is unreadable.
    #[error("node `{node}`: cannot read token file {path}: {source}")]
    TokenFile {
        /// The node.
        node: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The session failed to open (refused, unauthorised, wrong protocol…).
    #[error("node `{node}`: {source}")]
    Connect {
        /// The node.
        node: String,
        /// Why.
        source: ClientError,
    },
    /// No handshake within the time given.
    #[error("node `{node}`: no answer from {url} within {secs} s")]
    ConnectTimeout {
        /// The node.
        node: String,
        /// Where it tried.
        url: String,
        /// The limit.
        secs: u64,
    },
    /// A request failed or got an error back.
    #[error("node `{node}`: {what} failed: {source}")]
    Request {
        /// The node.
        node: String,
        /// The request.
        what: String,
        /// Why.
        source: ClientError,
    },
    /// A reply that does not answer the request.
    #[error("node `{node}`: agent answered {what} with an unexpected reply: {reply}")]
    UnexpectedReply {
        /// The node.
        node: String,
        /// The request.
        what: String,
        /// What came back.
        reply: String,
    },
    /// The local agent could not be found or started.
    #[error("local agent: {0}")]
    Local(#[from] LocalError),
    /// Reaching an SSH node failed.
    #[error("node `{node}`: {source}")]
    Ssh {
        /// The node.
        node: String,
        /// Why.
        source: Box<SshError>,
    },
    /// `nodes stop` on a node that is not reached over SSH.
    #[error("node `{node}` is not an SSH node; only SSH nodes can be stopped from here")]
    NotSsh {
        /// The node.
        node: String,
    },
    /// No such worker.
    #[error("no worker `{id}` on {scope}; see `rbee-tui workers list`")]
    WorkerNotFound {
        /// The worker id.
        id: String,
        /// Where it was looked for.
        scope: String,
    },
    /// The worker id exists on several nodes.
    #[error("worker `{id}` exists on several nodes ({nodes}); pick one with --node NAME")]
    AmbiguousWorker {
        /// The worker id.
        id: String,
        /// The nodes that have it.
        nodes: String,
    },
    /// `workers spawn --wait` saw the worker fail.
    #[error("worker `{id}` on node `{node}` {state}: {reason}")]
    WorkerFailed {
        /// The worker id.
        id: String,
        /// The node.
        node: String,
        /// Its final state.
        state: String,
        /// Why.
        reason: String,
    },
    /// Something took longer than `--timeout`.
    #[error("{what}: gave up after {secs} s; raise --timeout")]
    Timeout {
        /// The request.
        what: String,
        /// The limit.
        secs: u64,
    },
    /// The agent closed the session mid-command.
    #[error("node `{node}` closed the session: {reason}")]
    SessionClosed {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// The terminal failed.
    #[error("terminal: {0}")]
    Terminal(#[source] std::io::Error),
    /// Stdout failed.
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
    /// The log file could not be opened.
    #[error("cannot open log file {path}: {source}")]
    LogFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
    /// The person at the terminal answered no to a destructive action.
    #[error("{0}: not confirmed, nothing done")]
    Declined(String),
}

impl TuiError {
    /// Process exit status for this failure: 130 for Ctrl-C (as shells expect), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            TuiError::Interrupted => 130,
            _ => 1,
        }
    }
}
