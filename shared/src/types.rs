//! Plain data shared by both links.
use serde::{Deserialize, Serialize};

/// Id a client picks for each of its requests; replies and streams carry it back.
pub type RequestId = u64;

/// Stable id of a worker on its node, e.g. `w3`.
pub type WorkerId = String;

/// Milliseconds since the Unix epoch; used for deadlines and timestamps.
pub type UnixMillis = u64;

/// Milliseconds since the Unix epoch, by this machine's clock.
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How to pick the next token. Same seed and parameters give the same text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f64,
    /// Sample only among the `k` likeliest tokens.
    pub top_k: Option<usize>,
    /// Sample only among the likeliest tokens whose probabilities add up to `p`.
    pub top_p: Option<f64>,
    /// 1.0 disables the penalty.
    pub repeat_penalty: f32,
    /// How many of the most recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// Most tokens to generate.
    pub max_tokens: u32,
    /// Generation ends before any of these strings; they are not part of the text.
    pub stop: Vec<String>,
    /// Seed of the sampler's random numbers.
    pub seed: u64,
    /// Keep generating past end-of-sequence (fixed-length runs for benchmarks).
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: Some(40),
            top_p: Some(0.95),
            repeat_penalty: 1.1,
            repeat_last_n: 64,
            max_tokens: 128,
            stop: Vec::new(),
            seed: 299_792_458,
            ignore_eos: false,
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced its end-of-sequence token.
    Eos,
    /// `max_tokens` reached.
    Length,
    /// A stop sequence matched.
    Stop,
    /// The context window is full.
    ContextFull,
}

/// Counts and timings reported when a generation finishes.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub generated_tokens: u32,
    /// From receiving the request to the first generated token.
    pub time_to_first_token_ms: f64,
    /// Prompt processing speed.
    pub prompt_tokens_per_s: f64,
    /// Generation speed after the first token.
    pub decode_tokens_per_s: f64,
    /// Wall time of the whole request, in milliseconds.
    pub total_ms: f64,
}

/// Who speaks one turn of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The person (or program) asking.
    User,
    /// The model's earlier answers.
    Assistant,
}

/// One turn of a conversation, as chat templates take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who speaks.
    pub role: Role,
    /// What was said.
    pub content: String,
}

/// What a loaded model is, reported in `Ready`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ModelSummary {
    /// The model's name (file stem or repository).
    pub name: String,
    /// Model architecture as the weights name it (`llama`, …).
    pub architecture: String,
    /// Longest context the model takes, in tokens.
    pub context_length: u32,
    /// Bytes of weights the worker holds (host or device memory).
    pub memory_bytes: u64,
    /// The device it runs on (`cpu`, `cuda:0`, …).
    pub device: String,
    /// Model family the worker runs it as: `llama`, `qwen2`, `qwen3`, `gemma3`, `phi3`.
    #[serde(default)]
    pub family: String,
    /// Where the chat template came from (`gguf`, `tokenizer_config.json`,
    /// `chat_template.jinja`); `None`: no template, completion only.
    #[serde(default)]
    pub chat_template: Option<String>,
}

/// Lifecycle of a worker as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Process started, handshake not done yet.
    Starting,
    /// Loading weights.
    Loading,
    /// Serving; has room for more requests.
    Ready,
    /// Serving; every slot and its queue are full.
    Busy,
    /// Asked to stop; draining.
    Stopping,
    /// Stopped on purpose (kill, shutdown).
    Exited,
    /// Died unexpectedly; a restart will follow.
    Crashed,
    /// Waiting before the next restart.
    BackingOff,
    /// Gave up: too many failures; needs the operator.
    Failed,
}

impl WorkerState {
    /// The state as the dashboard and `--json` print it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Loading => "loading",
            WorkerState::Ready => "ready",
            WorkerState::Busy => "busy",
            WorkerState::Stopping => "stopping",
            WorkerState::Exited => "exited",
            WorkerState::Crashed => "crashed",
            WorkerState::BackingOff => "backing_off",
            WorkerState::Failed => "failed",
        }
    }

    /// Whether the worker can take requests.
    pub fn is_serving(self) -> bool {
        matches!(self, WorkerState::Ready | WorkerState::Busy)
    }

    /// Whether the worker is gone for good (until the operator acts).
    pub fn is_terminal(self) -> bool {
        matches!(self, WorkerState::Exited | WorkerState::Failed)
    }
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model on the Hugging Face hub: `hf:ORG/REPO[@REVISION][:FILE]`. Without FILE it names a
/// safetensors model directory (config.json, tokenizer.json, weights).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    /// `org/name` of the repository.
    pub repo: String,
    /// Branch, tag or commit; `main` when absent.
    pub revision: Option<String>,
    /// The one file to use; absent means the repository's single GGUF or its safetensors.
    pub file: Option<String>,
}

impl HubRef {
    /// `None` when `s` does not start with `hf:`; `Some(Err(why))` when it does but is malformed.
    pub fn parse(s: &str) -> Option<Result<HubRef, String>> {
        let rest = s.strip_prefix("hf:")?;
        let bad =
            || format!("invalid model reference `{s}`: expected hf:ORG/REPO[@REVISION][:FILE]");
        let (repo_rev, file) = match rest.split_once(':') {
            Some((a, f)) if !f.is_empty() => (a, Some(f.to_string())),
            Some(_) => return Some(Err(bad())),
            None => (rest, None),
        };
        let (repo, revision) = match repo_rev.split_once('@') {
            Some((r, v)) if !v.is_empty() => (r, Some(v.to_string())),
            Some(_) => return Some(Err(bad())),
            None => (repo_rev, None),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Some(Err(bad()));
        }
        Some(Ok(HubRef {
            repo: repo.to_string(),
            revision,
            file,
        }))
    }

    /// The revision asked for, `main` by default.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}
