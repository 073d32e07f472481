//! What passes between the HTTP handlers and the hub: a generation job going in, its events
//! coming out, and the commands the handlers may send.
use std::time::Duration;

use rbee_proto::{FinishReason, SamplingParams, Usage, WorkerId};
use tokio::sync::{mpsc, oneshot};

use crate::gateway::error::ApiError;
use crate::gateway::openai::{Endpoint, Input, KeepAlive};
use crate::gateway::stats::{AuditLine, Snapshot};

/// A request's number within this gateway's life.
pub type JobId = u64;

/// One generation to schedule.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its number (also what a cancel names).
    pub id: JobId,
    /// Where it came in.
    pub endpoint: Endpoint,
    /// The model as the client named it.
    pub model: String,
    /// Prompt or conversation.
    pub input: Input,
    /// Sampling and limits.
    pub params: SamplingParams,
    /// Per-request keep-alive for a worker spawned for it.
    pub keep_alive: Option<KeepAlive>,
    /// Longest the whole request may take, queue wait and spawn included (the gateway's clock:
    /// no node's clock is involved).
    pub timeout: Duration,
    /// The client's address, for the audit.
    pub client: String,
    /// The API key's id (never the key), for the audit.
    pub key_id: Option<String>,
}

/// What happens to a job, in order: `Started` (maybe more than once when a retry moves it),
/// `Token`s, then exactly one of `Done` or `Failed`.
#[derive(Debug, Clone)]
pub enum GenEvent {
    /// Sent to a worker.
    Started {
        /// The node's name.
        node: String,
        /// The worker.
        worker: WorkerId,
    },
    /// A piece of the answer.
    Token(String),
    /// The answer is complete.
    Done {
        /// Why it ended.
        finish: FinishReason,
        /// The worker's counts.
        usage: Usage,
    },
    /// The request failed; no more events follow.
    Failed(ApiError),
}

/// What the HTTP side asks of the hub.
#[derive(Debug)]
pub enum Cmd {
    /// Schedule a job; its events go to the sender.
    Generate(Box<Job>, mpsc::UnboundedSender<GenEvent>),
    /// The client went away: stop the job wherever it is.
    Cancel(JobId),
    /// The cluster view and counters, for `/v1/models`, `/health` and `/metrics`.
    Snapshot(oneshot::Sender<Snapshot>),
    /// Audit a request refused before it reached the scheduler (a bad key, a bad body).
    Audit(Box<AuditLine>),
    /// `/metrics`: scrape every node over its session; the answers come as [`ScrapeMsg`]s.
    Metrics(mpsc::UnboundedSender<ScrapeMsg>),
    /// The gateway is stopping: unload the workers it spawned, answer when the nodes confirmed.
    Shutdown(oneshot::Sender<()>),
}

/// What a scrape hands back: the hub's snapshot first, then one answer per configured node.
#[derive(Debug)]
pub enum ScrapeMsg {
    /// The cluster view and the gateway's counters at the start of the scrape.
    Snapshot(Box<Snapshot>),
    /// A node's exposition, or why there is none.
    Node(usize, Result<String, String>),
}
