//! The one error type of the dashboard library. Each variant is something the operator can act on,
//! and its message says what failed, with which input, and what to do.
use std::path::PathBuf;

use rbee_client::ClientError;
use rbee_proto::config::ConfigError;

use crate::local::LocalError;

#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot write config {path}: {source}")]
    ConfigWrite {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no config directory on this system; pass --config FILE or set RBEE_CONFIG")]
    NoConfigDir,
    #[error("no node named `{name}` (known: {known}); see `rbee-tui nodes list`")]
    UnknownNode { name: String, known: String },
    #[error("a node named `{name}` already exists in {path}; remove it first with `rbee-tui nodes rm {name}`")]
    DuplicateNode { name: String, path: PathBuf },
    #[error("several nodes are configured ({known}); pick one with --node NAME")]
    NodeRequired { known: String },
    #[error("node `{node}`: cannot read token file {path}: {source}")]
    TokenFile {
        node: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node `{node}`: {source}")]
    Connect { node: String, source: ClientError },
    #[error("node `{node}`: no answer from {url} within {secs} s")]
    ConnectTimeout {
        node: String,
        url: String,
        secs: u64,
    },
    #[error("node `{node}`: {what} failed: {source}")]
    Request {
        node: String,
        what: String,
        source: ClientError,
    },
    #[error("node `{node}`: agent answered {what} with an unexpected reply: {reply}")]
    UnexpectedReply {
        node: String,
        what: String,
        reply: String,
    },
    #[error("local agent: {0}")]
    Local(#[from] LocalError),
    #[error("node `{node}`: {source}")]
    Ssh {
        node: String,
        source: Box<crate::ssh::SshError>,
    },
    #[error("node `{node}` is not an SSH node; only SSH nodes can be stopped from here")]
    NotSsh { node: String },
    #[error("no worker `{id}` on {scope}; see `rbee-tui workers list`")]
    WorkerNotFound { id: String, scope: String },
    #[error("worker `{id}` exists on several nodes ({nodes}); pick one with --node NAME")]
    AmbiguousWorker { id: String, nodes: String },
    #[error("worker `{id}` on node `{node}` {state}: {reason}")]
    WorkerFailed {
        id: String,
        node: String,
        state: String,
        reason: String,
    },
    #[error("{what}: gave up after {secs} s; raise --timeout")]
    Timeout { what: String, secs: u64 },
    #[error("node `{node}` closed the session: {reason}")]
    SessionClosed { node: String, reason: String },
    #[error("terminal: {0}")]
    Terminal(#[source] std::io::Error),
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
    #[error("cannot open log file {path}: {source}")]
    LogFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("interrupted")]
    Interrupted,
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
