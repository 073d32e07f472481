//! Agent ⇄ worker link: one JSON document per line on the worker's stdin (to the worker) and
//! stdout (from the worker). Logs go to stderr and never share a channel with frames.
use serde::{Deserialize, Serialize};

use crate::{ChatMessage, ErrorCode, ModelSummary, RequestId, SamplingParams, UnixMillis, Usage};

/// Frames the agent sends to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Must be the first frame; the worker refuses anything else until versions agree.
    Hello {
        /// The agent's [`crate::PROTOCOL_VERSION`].
        protocol_version: u32,
    },
    /// Start generating text for `prompt`; answered by `Token`s then `Done` or `Error`.
    Generate {
        /// Chosen by the agent; every answer carries it back.
        id: RequestId,
        /// The text to continue.
        prompt: String,
        /// Sampling and limits for this request alone.
        #[serde(default)]
        params: SamplingParams,
        /// Absolute deadline; the worker stops generating within one token once it passes.
        #[serde(default)]
        deadline: Option<UnixMillis>,
    },
    /// Render the model's chat template over `messages` with the generation prompt and generate
    /// the assistant's reply; answered exactly like `Generate`. A model without a template
    /// answers `Error` (`bad_request`) saying so.
    Chat {
        /// Chosen by the agent; every answer carries it back.
        id: RequestId,
        /// The conversation so far, oldest first.
        messages: Vec<ChatMessage>,
        /// Sampling and limits for this request alone.
        #[serde(default)]
        params: SamplingParams,
        /// Absolute deadline by the worker's (and its agent's) clock.
        #[serde(default)]
        deadline: Option<UnixMillis>,
    },
    /// Stop the request `id` at the next token; answered by its `Done` (`cancelled`).
    Cancel {
        /// The request to stop.
        id: RequestId,
    },
    /// Finish the current token, end every request with an error, exit 0.
    Shutdown,
}

/// Frames a worker sends to its agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    /// Sent once at start, before loading begins.
    Hello {
        /// The worker's [`crate::PROTOCOL_VERSION`].
        protocol_version: u32,
        /// The worker's process id, to map GPU memory back to it.
        pid: u32,
    },
    /// Progress while loading (0.0–1.0) with a short stage name.
    Loading {
        /// `reading weights`, `tokenizer`, … shown as the worker's detail.
        stage: String,
        /// 0.0–1.0 of the whole load.
        progress: f32,
    },
    /// The model is loaded; requests are welcome from now on.
    Ready {
        /// What was loaded, for the dashboard and routing.
        model: ModelSummary,
    },
    /// Proof of life, every `--heartbeat-ms`.
    Heartbeat {
        /// Counts up by one per heartbeat; a gap means lost frames.
        seq: u64,
        /// Requests generating now.
        in_flight: u32,
        /// Requests waiting for a slot.
        queued: u32,
        /// Tokens generated since start.
        tokens_generated: u64,
        /// Decode speed of the last finished generation.
        last_tokens_per_s: f64,
        /// Resident memory of the worker process.
        rss_bytes: u64,
    },
    /// A piece of generated text; concatenating every `Token` of a request gives its full text.
    Token {
        /// The request this text belongs to.
        id: RequestId,
        /// Valid UTF-8; may hold several tokens' worth of text or part of a word.
        text: String,
    },
    /// The request finished normally.
    Done {
        /// The request that finished.
        id: RequestId,
        /// Why generation ended.
        finish_reason: crate::FinishReason,
        /// Token counts and speeds.
        usage: Usage,
    },
    /// The request (or, with `id: None`, a frame that had no usable id) failed.
    Error {
        /// The request that failed, when the frame had a usable id.
        id: Option<RequestId>,
        /// The kind of failure, for programs.
        code: ErrorCode,
        /// What happened, for people.
        message: String,
    },
}
