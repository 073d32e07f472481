//! Agent ⇄ worker link: one JSON document per line on the worker's stdin (to the worker) and
//! stdout (from the worker). Logs go to stderr and never share a channel with frames.
use serde::{Deserialize, Serialize};

use crate::{ErrorCode, ModelSummary, RequestId, SamplingParams, UnixMillis, Usage};

/// Frames the agent sends to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Must be the first frame; the worker refuses anything else until versions agree.
    Hello {
        protocol_version: u32,
    },
    Generate {
        id: RequestId,
        prompt: String,
        #[serde(default)]
        params: SamplingParams,
        /// Absolute deadline; the worker stops generating within one token once it passes.
        #[serde(default)]
        deadline: Option<UnixMillis>,
    },
    Cancel {
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
    Hello { protocol_version: u32, pid: u32 },
    /// Progress while loading (0.0–1.0) with a short stage name.
    Loading { stage: String, progress: f32 },
    /// The model is loaded; requests are welcome from now on.
    Ready { model: ModelSummary },
    /// Proof of life, every `--heartbeat-ms`.
    Heartbeat {
        seq: u64,
        in_flight: u32,
        queued: u32,
        tokens_generated: u64,
        /// Decode speed of the last finished generation.
        last_tokens_per_s: f64,
        rss_bytes: u64,
    },
    /// A piece of generated text; concatenating every `Token` of a request gives its full text.
    Token { id: RequestId, text: String },
    /// The request finished normally.
    Done {
        id: RequestId,
        finish_reason: crate::FinishReason,
        usage: Usage,
    },
    /// The request (or, with `id: None`, a frame that had no usable id) failed.
    Error {
        id: Option<RequestId>,
        code: ErrorCode,
        message: String,
    },
}
