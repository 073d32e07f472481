use serde::{Deserialize, Serialize};

/// What went wrong, in a form a caller can act on. Travels inside `Error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not valid JSON, was too large, or did not match any known message.
    BadFrame,
    /// The request was well formed but its arguments are not acceptable.
    BadRequest,
    /// Protocol versions differ.
    VersionMismatch,
    /// Missing or wrong credentials.
    Unauthorized,
    /// No worker, model or request with that id.
    NotFound,
    /// The queue is full; try again later.
    Busy,
    /// The request was cancelled by its sender.
    Cancelled,
    /// The request's deadline passed before it completed.
    DeadlineExceeded,
    /// The prompt does not fit in the model's context.
    PromptTooLong,
    /// The model could not be loaded (missing, corrupt, unsupported).
    ModelLoad,
    /// The model does not fit in free memory.
    InsufficientMemory,
    /// A model download does not fit on the disk of the model cache.
    InsufficientDisk,
    /// The worker serving the request died or stopped.
    WorkerGone,
    /// The agent is shutting down.
    ShuttingDown,
    /// Anything else: a bug or an environment failure.
    Internal,
}

impl ErrorCode {
    /// The code as it travels on the wire (`snake_case`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Busy => "busy",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::PromptTooLong => "prompt_too_long",
            ErrorCode::ModelLoad => "model_load",
            ErrorCode::InsufficientMemory => "insufficient_memory",
            ErrorCode::InsufficientDisk => "insufficient_disk",
            ErrorCode::WorkerGone => "worker_gone",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a code and a human message; the common currency of every reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtoError {
    /// The kind of failure, for programs.
    pub code: ErrorCode,
    /// What happened and, where there is one, the fix, for people.
    pub message: String,
}

impl ProtoError {
    /// An error of kind `code` saying `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
