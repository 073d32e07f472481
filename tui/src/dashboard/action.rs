//! Everything that can happen to the dashboard, as data: keys, the clock, and what node sessions
//! report. `update` turns actions into state changes and `Effect`s; nothing here does I/O.
use crossterm::event::KeyEvent;
use rbee_proto::session::{Event, Reply, Request};
use rbee_proto::{FinishReason, ProtoError, UnixMillis, Usage, WorkerId};

use crate::dashboard::board::RequestRow;
use crate::dashboard::state::{NodeIdx, PromptId};
use crate::nodes::config::AddNodeRequest;

/// One thing that happened, for `update` to apply.
#[derive(Debug, Clone)]
pub enum Action {
    /// A key press (releases never get here).
    Key(KeyEvent),
    /// The clock moved (heartbeat ages, "retry in" counters).
    Tick,
    /// The gateway's request board as it is now (`--serve`), taken on each clock tick.
    Requests(Vec<RequestRow>),
    /// The terminal changed size (the next frame redraws everything).
    Resize(u16, u16),
    /// A session task started connection attempt `attempt` (0 = first).
    Connecting {
        /// Which node.
        node: NodeIdx,
        /// Attempts since the last success.
        attempt: u32,
    },
    /// The handshake succeeded with the agent at `url`.
    Connected {
        /// Which node.
        node: NodeIdx,
        /// Where the session went (the local agent's address is only known now).
        url: String,
        /// The agent's version, from `Welcome`.
        agent_version: String,
        /// The name the agent gives its machine.
        agent_node: String,
    },
    /// An `:add` stopped at a host key nobody has trusted yet; the operator decides.
    HostKeyUnknown {
        /// The `:add` that stopped, to run again once the key is trusted.
        req: AddNodeRequest,
        /// `HOST:PORT` as the operator typed it.
        host: String,
        /// "ALGO SHA256:…"
        key: String,
    },
    /// The session failed or dropped; the task retries after `retry_in_ms`.
    Disconnected {
        /// Which node.
        node: NodeIdx,
        /// Why, in one line without the node's name.
        reason: String,
        /// When the next attempt starts.
        retry_in_ms: u64,
    },
    /// Round trip of a `Ping`.
    Latency {
        /// Which node.
        node: NodeIdx,
        /// Milliseconds there and back.
        ms: u64,
        /// The agent's clock minus this machine's, from the same ping (NTP-style).
        clock_offset_ms: i64,
    },
    /// Something the agent pushed (worker states, heartbeats, telemetry, audit, logs, pulls).
    AgentEvent {
        /// Which node.
        node: NodeIdx,
        /// What it said.
        event: Event,
    },
    /// An error frame not tied to a request.
    AgentError {
        /// Which node.
        node: NodeIdx,
        /// What it said.
        error: ProtoError,
    },
    /// The answer to an `Effect::Request`; the request comes back so errors can say what failed.
    Reply {
        /// Which node.
        node: NodeIdx,
        /// What was asked.
        request: Request,
        /// The reply, or why there is none.
        result: Result<Reply, String>,
    },
    /// The prompt left for the agent at `at`.
    PromptSent {
        /// Which prompt.
        prompt: PromptId,
        /// When (our clock).
        at: UnixMillis,
    },
    /// One streamed piece of the answer.
    PromptToken {
        /// Which prompt.
        prompt: PromptId,
        /// The text.
        text: String,
        /// When it arrived (our clock).
        at: UnixMillis,
    },
    /// The generation ended: the agent's figures, or why it failed.
    PromptDone {
        /// Which prompt.
        prompt: PromptId,
        /// How it ended.
        result: Result<InferDone, String>,
        /// When (our clock).
        at: UnixMillis,
    },
}

/// Successful end of a generation.
#[derive(Debug, Clone, PartialEq)]
pub struct InferDone {
    /// The worker that answered.
    pub worker: WorkerId,
    /// Why it stopped.
    pub finish_reason: FinishReason,
    /// The agent's figures.
    pub usage: Usage,
}

/// Work `update` asks for: requests for a node's session (the runtime routes each to its node's
/// task) and the one side effect that is no node's, adding a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send one request; the reply comes back as `Action::Reply`.
    Request {
        /// Which node.
        node: NodeIdx,
        /// What to ask.
        request: Request,
    },
    /// Start a streaming `Infer`; tokens come back as `Action::PromptToken`.
    Infer {
        /// Which node.
        node: NodeIdx,
        /// The pane's id for it.
        prompt: PromptId,
        /// The `Infer` request.
        request: Request,
    },
    /// Stop a running prompt (the agent cancels it down to the worker).
    CancelInfer {
        /// Which node.
        node: NodeIdx,
        /// Which prompt.
        prompt: PromptId,
    },
    /// Bring an SSH node up and record it in the config file (`:add`); an unknown host key comes
    /// back as `Action::HostKeyUnknown`.
    AddNode(AddNodeRequest),
}

impl Effect {
    /// The node whose session carries this effect out (`None` for adding a node).
    pub fn node(&self) -> Option<NodeIdx> {
        match self {
            Effect::Request { node, .. }
            | Effect::Infer { node, .. }
            | Effect::CancelInfer { node, .. } => Some(*node),
            Effect::AddNode(_) => None,
        }
    }
}
