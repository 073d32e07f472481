//! Everything that can happen to the dashboard, as data: keys, the clock, and what node sessions
//! report. `update` turns actions into state changes and `Effect`s; nothing here does I/O.
use crossterm::event::KeyEvent;
use rbee_proto::session::{Event, Reply, Request};
use rbee_proto::{FinishReason, ProtoError, UnixMillis, Usage, WorkerId};

use crate::state::NodeIdx;

/// Id the dashboard gives each prompt it sends, to match streamed tokens to the pane.
pub type PromptId = u64;

#[derive(Debug, Clone)]
pub enum Action {
    Key(KeyEvent),
    /// The clock moved (heartbeat ages, "retry in" counters).
    Tick,
    Resize(u16, u16),
    /// A session task started connection attempt `attempt` (0 = first).
    Connecting {
        node: NodeIdx,
        attempt: u32,
    },
    /// The handshake succeeded with the agent at `url`.
    Connected {
        node: NodeIdx,
        url: String,
        agent_version: String,
        agent_node: String,
    },
    /// An `:add` stopped at a host key nobody has trusted yet; the operator decides.
    HostKeyUnknown {
        req: crate::ssh::AddNodeRequest,
        host: String,
        /// "ALGO SHA256:…"
        key: String,
    },
    /// The session failed or dropped; the task retries after `retry_in_ms`.
    Disconnected {
        node: NodeIdx,
        reason: String,
        retry_in_ms: u64,
    },
    /// Round trip of a `Ping`.
    Latency {
        node: NodeIdx,
        ms: u64,
    },
    AgentEvent {
        node: NodeIdx,
        event: Event,
    },
    /// An error frame not tied to a request.
    AgentError {
        node: NodeIdx,
        error: ProtoError,
    },
    /// The answer to an `Effect::Request`; the request comes back so errors can say what failed.
    Reply {
        node: NodeIdx,
        request: Request,
        result: Result<Reply, String>,
    },
    /// The prompt left for the agent at `at`.
    PromptSent {
        prompt: PromptId,
        at: UnixMillis,
    },
    PromptToken {
        prompt: PromptId,
        text: String,
        at: UnixMillis,
    },
    PromptDone {
        prompt: PromptId,
        result: Result<InferDone, String>,
        at: UnixMillis,
    },
}

/// Successful end of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct InferDone {
    pub worker: WorkerId,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

/// Work `update` asks the node sessions to do. The app routes each to its node's task.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send one request; the reply comes back as `Action::Reply`.
    Request { node: NodeIdx, request: Request },
    /// Start a streaming `Infer`; tokens come back as `Action::PromptToken`.
    Infer {
        node: NodeIdx,
        prompt: PromptId,
        request: Request,
    },
    /// Stop a running prompt (the agent cancels it down to the worker).
    CancelInfer { node: NodeIdx, prompt: PromptId },
}

impl Effect {
    pub fn node(&self) -> NodeIdx {
        match self {
            Effect::Request { node, .. }
            | Effect::Infer { node, .. }
            | Effect::CancelInfer { node, .. } => *node,
        }
    }
}

/// Short human name of a request, for error messages ("kill w3 failed: …").
pub fn describe(request: &Request) -> String {
    match request {
        Request::ListModels => "list models".into(),
        Request::Spawn(s) => format!("spawn {} on {}", short_model(&s.model), s.device),
        Request::Kill { worker } => format!("kill {worker}"),
        Request::Restart { worker } => format!("restart {worker}"),
        Request::ListWorkers => "list workers".into(),
        Request::Infer { worker, model, .. } => {
            format!(
                "infer on {}",
                worker
                    .as_deref()
                    .or(model.as_deref())
                    .unwrap_or("any worker")
            )
        }
        Request::Cancel { request } => format!("cancel request {request}"),
        Request::TailLog { worker, .. } => format!("log of {worker}"),
        Request::Subscribe => "subscribe".into(),
        Request::Status => "status".into(),
        Request::Ping => "ping".into(),
        Request::Pull { model } => format!("pull {model}"),
    }
}

/// The file name of a model reference, without directories.
pub fn short_model(reference: &str) -> &str {
    reference
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(reference)
}
