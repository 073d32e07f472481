//! Plain data shared by both links.
use serde::{Deserialize, Serialize};

use crate::{ErrorCode, ProtoError};

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
    /// 0 means greedy (argmax). JSON `null` (what NaN becomes on the wire) reads as NaN, so
    /// [`SamplingParams::validate`] can refuse it by name.
    #[serde(deserialize_with = "null_is_nan")]
    pub temperature: f64,
    /// Sample only among the `k` likeliest tokens.
    pub top_k: Option<usize>,
    /// Sample only among the likeliest tokens whose probabilities add up to `p`.
    pub top_p: Option<f64>,
    /// 1.0 disables the penalty. JSON `null` reads as NaN, refused by
    /// [`SamplingParams::validate`].
    #[serde(deserialize_with = "null_is_nan")]
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

/// Most stop sequences a request may carry (as the OpenAI API).
pub const MAX_STOP_SEQUENCES: usize = 4;
/// Longest stop sequence, in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// Highest temperature accepted (as the OpenAI API).
pub const MAX_TEMPERATURE: f64 = 2.0;

/// A number that may arrive as `null`: serde_json writes NaN and the infinities as `null`, and
/// the sender meant a number, so it reads as NaN and the validation names the field.
fn null_is_nan<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + num_nan::Nan,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_else(T::nan))
}

mod num_nan {
    /// Number types with a NaN.
    pub trait Nan {
        /// Not a number.
        fn nan() -> Self;
    }
    impl Nan for f64 {
        fn nan() -> Self {
            f64::NAN
        }
    }
    impl Nan for f32 {
        fn nan() -> Self {
            f32::NAN
        }
    }
}

impl SamplingParams {
    /// Refuse parameters no sampler can honour, naming the field: the one rule every entry
    /// point (agent, worker, gateway) applies before a request is routed or generated.
    pub fn validate(&self) -> Result<(), ProtoError> {
        let bad = |msg: String| Err(ProtoError::new(ErrorCode::BadRequest, msg));
        let t = self.temperature;
        if !t.is_finite() || !(0.0..=MAX_TEMPERATURE).contains(&t) {
            return bad(format!(
                "`temperature` must be a number from 0 to {MAX_TEMPERATURE} (got {})",
                show(t)
            ));
        }
        if let Some(p) = self.top_p {
            if !(p.is_finite() && p > 0.0 && p <= 1.0) {
                return bad(format!(
                    "`top_p` must be above 0 and at most 1 (got {})",
                    show(p)
                ));
            }
        }
        if self.top_k == Some(0) {
            return bad(
                "`top_k` must be at least 1 (leave it out to sample from every token)".into(),
            );
        }
        let r = self.repeat_penalty;
        if !(r.is_finite() && r > 0.0) {
            return bad(format!(
                "`repeat_penalty` must be a number above 0; 1 disables it (got {})",
                show(f64::from(r))
            ));
        }
        if self.max_tokens == 0 {
            return bad("`max_tokens` must be at least 1".into());
        }
        if self.stop.len() > MAX_STOP_SEQUENCES {
            return bad(format!(
                "`stop` takes at most {MAX_STOP_SEQUENCES} sequences (got {})",
                self.stop.len()
            ));
        }
        if let Some(s) = self.stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return bad(format!(
                "`stop` sequences must be at most {MAX_STOP_BYTES} bytes each (got one of {})",
                s.len()
            ));
        }
        Ok(())
    }
}

/// A number as a message shows it; NaN is named as such (it arrived as JSON `null`).
fn show(x: f64) -> String {
    if x.is_nan() {
        "NaN or null".into()
    } else {
        x.to_string()
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
    /// Sequences the worker decodes at once (its slots); 1 for families without a batched
    /// forward. Routing sends a request where a slot is free.
    #[serde(default = "one")]
    pub parallel: u32,
}

fn one() -> u32 {
    1
}

impl ModelSummary {
    /// Sequences the worker serves at once, never less than one (a frame from a worker that
    /// did not say, or a default value, means one).
    pub fn slots(&self) -> u32 {
        self.parallel.max(1)
    }
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
        // Each part is joined into a path of the model cache: none may leave it.
        let parts = [
            ("repository", Some(repo)),
            ("revision", revision.as_deref()),
            ("file", file.as_deref()),
        ];
        for (what, part) in parts {
            if let Some(why) = part.and_then(escapes) {
                return Some(Err(format!(
                    "invalid model reference `{}`: the {what} part {why}",
                    crate::fmt::printable(s)
                )));
            }
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

/// Why a part of an `hf:` reference could lead out of the cache directory it is joined to, if
/// it could: absolute, a `.` or `..` component, an empty component, a backslash, NUL or
/// another control character.
fn escapes(part: &str) -> Option<&'static str> {
    if part.starts_with('/') {
        Some("must not be an absolute path")
    } else if part.contains('\\') {
        Some("must not contain a backslash")
    } else if part.contains('\0') {
        Some("must not contain a NUL byte")
    } else if part.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if part.split('/').any(|c| c == ".." || c == ".") {
        Some("must not contain `.` or `..` components")
    } else if part.split('/').any(str::is_empty) {
        Some("must not contain empty path components")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(p: SamplingParams) -> String {
        let e = p.validate().unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest, "{e}");
        e.message
    }

    #[test]
    fn sampling_defaults_and_edges_are_accepted() {
        SamplingParams::default().validate().unwrap();
        let edges = SamplingParams {
            temperature: 2.0,
            top_p: Some(1.0),
            top_k: Some(1),
            repeat_penalty: 0.01,
            max_tokens: 1,
            stop: vec!["x".repeat(MAX_STOP_BYTES); MAX_STOP_SEQUENCES],
            ..Default::default()
        };
        edges.validate().unwrap();
        let greedy = SamplingParams {
            temperature: 0.0,
            top_p: None,
            top_k: None,
            ..Default::default()
        };
        greedy.validate().unwrap();
    }

    #[test]
    fn bad_sampling_is_refused_naming_the_field() {
        type Edit = fn(&mut SamplingParams);
        let cases: [(Edit, &str); 14] = [
            (|p| p.temperature = f64::NAN, "`temperature`"),
            (|p| p.temperature = f64::INFINITY, "`temperature`"),
            (|p| p.temperature = -0.1, "`temperature`"),
            (|p| p.temperature = 2.5, "`temperature`"),
            (|p| p.top_p = Some(0.0), "`top_p`"),
            (|p| p.top_p = Some(1.5), "`top_p`"),
            (|p| p.top_p = Some(f64::NAN), "`top_p`"),
            (|p| p.top_k = Some(0), "`top_k`"),
            (|p| p.repeat_penalty = 0.0, "`repeat_penalty`"),
            (|p| p.repeat_penalty = -1.0, "`repeat_penalty`"),
            (|p| p.repeat_penalty = f32::NAN, "`repeat_penalty`"),
            (|p| p.max_tokens = 0, "`max_tokens`"),
            (|p| p.stop = vec!["a".into(); 5], "`stop`"),
            (|p| p.stop = vec!["a".repeat(257)], "`stop`"),
        ];
        for (edit, field) in cases {
            let mut p = SamplingParams::default();
            edit(&mut p);
            let m = refused(p.clone());
            assert!(m.starts_with(field), "{p:?}: {m}");
        }
    }

    #[test]
    fn nan_over_json_is_named_not_a_type_error() {
        // serde_json writes NaN as null; the far side must still say which field and why.
        let p = SamplingParams {
            temperature: f64::NAN,
            ..Default::default()
        };
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"temperature\":null"), "{json}");
        let back: SamplingParams = serde_json::from_str(&json).unwrap();
        let m = refused(back);
        assert!(
            m.starts_with("`temperature` must be a number") && m.contains("NaN"),
            "{m}"
        );
        let back: SamplingParams = serde_json::from_str(r#"{"repeat_penalty":null}"#).unwrap();
        assert!(refused(back).starts_with("`repeat_penalty`"));
    }

    #[test]
    fn hub_parts_that_leave_the_cache_are_refused_naming_the_part() {
        for (r, part) in [
            ("hf:o/r:/etc/passwd", "file"),
            ("hf:o/r:../../x.gguf", "file"),
            ("hf:o/r:a/../../x.gguf", "file"),
            ("hf:o/r:a\\..\\x.gguf", "file"),
            ("hf:o/r:x\0.gguf", "file"),
            ("hf:o/r:a//x.gguf", "file"),
            ("hf:o/r@../../x:m.gguf", "revision"),
            ("hf:o/r@/abs:m.gguf", "revision"),
            ("hf:o/r@v\n1", "revision"),
            ("hf:../..:m.gguf", "repository"),
            ("hf:o/.", "repository"),
        ] {
            let e = HubRef::parse(r).unwrap().unwrap_err();
            assert!(
                e.starts_with("invalid model reference") && e.contains(&format!("the {part} part")),
                "{r}: {e}"
            );
        }
        for ok in [
            "hf:o/r:sub/m.gguf",
            "hf:o/r@refs/pr/1:m.gguf",
            "hf:o/r@v1.0:m..q4.gguf",
        ] {
            assert!(HubRef::parse(ok).unwrap().is_ok(), "{ok}");
        }
    }
}
