//! OpenAI's request and response shapes, read and written by hand from `serde_json::Value` so a
//! refusal can name the field at fault: `/v1/chat/completions` and `/v1/completions` bodies into
//! one [`GenRequest`], and the finished or streamed answer back into OpenAI's JSON.
//!
//! Sampling fields are honoured (`temperature`, `top_p`, `top_k`, `max_tokens` /
//! `max_completion_tokens`, `stop`, `seed`, and the extensions `top_k`, `repeat_penalty`,
//! `ignore_eos`, `keep_alive`) or refused by name (`n` > 1,
//! non-zero `presence_penalty` / `frequency_penalty`, `logprobs`, `tools`, …). Fields nobody
//! here acts on and that change nothing (`user`, `store`, `metadata`, …) are accepted.
use std::time::Duration;

use rbee_proto::{ChatMessage, FinishReason, Role, SamplingParams, Usage};
use serde_json::{json, Map, Value};

use crate::gateway::error::ApiError;

/// Which endpoint a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`: messages in, an assistant message out.
    Chat,
    /// `/v1/completions`: a prompt in, its continuation out.
    Completion,
}

/// What the model is given.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A conversation (the worker applies the model's chat template).
    Chat(Vec<ChatMessage>),
    /// Raw text to continue.
    Text(String),
}

/// How long a worker spawned for this request stays loaded once idle (Ollama's `keep_alive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// Unload after this much idle time (zero: as soon as the answer is done).
    For(Duration),
    /// Never unload.
    Forever,
}

/// One generation request, whichever endpoint it came in on.
#[derive(Debug, Clone, PartialEq)]
pub struct GenRequest {
    /// Where it came in.
    pub endpoint: Endpoint,
    /// The model asked for, as the client named it.
    pub model: String,
    /// The prompt or the conversation.
    pub input: Input,
    /// Sampling and limits, OpenAI's fields mapped onto rbee's.
    pub params: SamplingParams,
    /// Server-sent events instead of one JSON answer.
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk carrying `usage`.
    pub include_usage: bool,
    /// Per-request keep-alive of a worker spawned for it; the gateway's default when absent.
    pub keep_alive: Option<KeepAlive>,
}

/// Most tokens generated when the request does not say (the worker also stops at its context).
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// Fields that ask for something rbee does not do; refused so nobody is silently misled.
const REFUSED: &[(&str, &str)] = &[
    ("tools", "tool calls are not supported"),
    ("tool_choice", "tool calls are not supported"),
    ("functions", "function calls are not supported"),
    ("function_call", "function calls are not supported"),
    ("logit_bias", "logit_bias is not supported"),
    ("suffix", "suffix (insertion) is not supported"),
    ("audio", "audio output is not supported"),
    ("prediction", "predicted outputs are not supported"),
];

/// Read a chat or completion body.
pub fn parse(endpoint: Endpoint, body: &[u8]) -> Result<GenRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_json(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::bad_json("request body must be a JSON object"));
    };
    for (field, why) in REFUSED {
        if present(&obj, field) && !empty_collection(&obj[*field]) {
            return Err(ApiError::unsupported(field, format!("`{field}`: {why}")));
        }
    }
    let model = match obj.get("model") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(ApiError::bad_field("model", "`model` is empty")),
        Some(_) => return Err(ApiError::bad_field("model", "`model` must be a string")),
        None => return Err(ApiError::bad_field("model", "`model` is required")),
    };
    let input = match endpoint {
        Endpoint::Chat => Input::Chat(messages(&obj)?),
        Endpoint::Completion => Input::Text(prompt(&obj)?),
    };
    let stream = opt_bool(&obj, "stream")?.unwrap_or(false);
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => opt_bool(o, "include_usage")
            .map_err(|_| {
                ApiError::bad_field(
                    "stream_options.include_usage",
                    "`stream_options.include_usage` must be a boolean",
                )
            })?
            .unwrap_or(false),
        Some(_) => {
            return Err(ApiError::bad_field(
                "stream_options",
                "`stream_options` must be an object",
            ))
        }
    };
    refuse_extras(&obj, endpoint)?;
    Ok(GenRequest {
        endpoint,
        model,
        input,
        params: params(&obj)?,
        stream,
        include_usage,
        keep_alive: keep_alive(&obj)?,
    })
}

/// The options that only make sense when they ask for nothing (`n: 1`, `logprobs: false`, …).
fn refuse_extras(obj: &Map<String, Value>, endpoint: Endpoint) -> Result<(), ApiError> {
    if let Some(n) = opt_f64(obj, "n")? {
        if n != 1.0 {
            return Err(ApiError::unsupported(
                "n",
                "`n` must be 1: one choice per request",
            ));
        }
    }
    if let Some(n) = opt_f64(obj, "best_of")? {
        if n != 1.0 {
            return Err(ApiError::unsupported("best_of", "`best_of` must be 1"));
        }
    }
    for field in ["presence_penalty", "frequency_penalty"] {
        if let Some(v) = opt_f64(obj, field)? {
            if v != 0.0 {
                return Err(ApiError::unsupported(
                    field,
                    format!("`{field}` is not supported; use `repeat_penalty` (1.0 = off)"),
                ));
            }
        }
    }
    let wants_logprobs = match obj.get("logprobs") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => endpoint == Endpoint::Completion && n.as_f64() != Some(0.0),
        Some(_) => true,
    };
    if wants_logprobs || present(obj, "top_logprobs") {
        return Err(ApiError::unsupported(
            "logprobs",
            "`logprobs` is not supported",
        ));
    }
    if opt_bool(obj, "echo")? == Some(true) {
        return Err(ApiError::unsupported("echo", "`echo` is not supported"));
    }
    if let Some(rf) = obj.get("response_format") {
        let kind = rf.get("type").and_then(Value::as_str);
        if !rf.is_null() && kind != Some("text") {
            return Err(ApiError::unsupported(
                "response_format",
                "`response_format` other than `text` (JSON mode, schemas) is not supported",
            ));
        }
    }
    Ok(())
}

/// OpenAI's sampling fields onto rbee's.
fn params(obj: &Map<String, Value>) -> Result<SamplingParams, ApiError> {
    let mut p = SamplingParams {
        max_tokens: DEFAULT_MAX_TOKENS,
        ..SamplingParams::default()
    };
    if let Some(t) = opt_f64(obj, "temperature")? {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::bad_field(
                "temperature",
                "`temperature` must be within 0 to 2",
            ));
        }
        p.temperature = t;
    }
    if let Some(t) = opt_f64(obj, "top_p")? {
        if !(t > 0.0 && t <= 1.0) {
            return Err(ApiError::bad_field(
                "top_p",
                "`top_p` must be within (0, 1]",
            ));
        }
        p.top_p = Some(t);
    }
    if let Some(k) = opt_uint(obj, "top_k")? {
        p.top_k = (k > 0).then_some(k as usize);
    }
    if let Some(r) = opt_f64(obj, "repeat_penalty")? {
        if r <= 0.0 {
            return Err(ApiError::bad_field(
                "repeat_penalty",
                "`repeat_penalty` must be above 0",
            ));
        }
        p.repeat_penalty = r as f32;
    }
    for field in ["max_completion_tokens", "max_tokens"] {
        if let Some(n) = opt_uint(obj, field)? {
            if n == 0 {
                return Err(ApiError::bad_field(
                    field,
                    format!("`{field}` must be at least 1"),
                ));
            }
            p.max_tokens = n.min(u64::from(u32::MAX)) as u32;
            break;
        }
    }
    if let Some(s) = opt_uint(obj, "seed")? {
        p.seed = s;
    }
    // rbee's (and llama.cpp's) extension: fixed-length answers for benchmarks and tests.
    p.ignore_eos = opt_bool(obj, "ignore_eos")?.unwrap_or(false);
    p.stop = match obj.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            if a.len() > 4 {
                return Err(ApiError::bad_field(
                    "stop",
                    "`stop` takes at most 4 sequences",
                ));
            }
            a.iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ApiError::bad_field("stop", "`stop` must be strings"))?
        }
        Some(_) => {
            return Err(ApiError::bad_field(
                "stop",
                "`stop` must be a string or an array of strings",
            ))
        }
    };
    p.stop.retain(|s| !s.is_empty());
    // The protocol's own rule, so the gateway and the agent cannot disagree; its messages
    // start with the field's name in backticks.
    p.validate().map_err(|e| {
        let field = e.message.split('`').nth(1).unwrap_or("").to_string();
        ApiError::bad_field(&field, e.message)
    })?;
    Ok(p)
}

/// `messages`: roles and text content (text parts of an array are joined).
fn messages(obj: &Map<String, Value>) -> Result<Vec<ChatMessage>, ApiError> {
    let Some(list) = obj.get("messages") else {
        return Err(ApiError::bad_field("messages", "`messages` is required"));
    };
    let Value::Array(list) = list else {
        return Err(ApiError::bad_field(
            "messages",
            "`messages` must be an array",
        ));
    };
    if list.is_empty() {
        return Err(ApiError::bad_field("messages", "`messages` is empty"));
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| message(i, m))
        .collect()
}

fn message(i: usize, m: &Value) -> Result<ChatMessage, ApiError> {
    let field = |f: &str| format!("messages[{i}].{f}");
    let role = match m.get("role").and_then(Value::as_str) {
        Some("system") | Some("developer") => Role::System,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some(other) => {
            return Err(ApiError::unsupported(
                &field("role"),
                format!(
                    "`{}` is `{other}`; rbee takes system, developer, user and assistant",
                    field("role")
                ),
            ))
        }
        None => {
            return Err(ApiError::bad_field(
                &field("role"),
                format!("`{}` is required (a string)", field("role")),
            ))
        }
    };
    let content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) if role == Role::Assistant => String::new(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => text.push_str(t),
                    _ => {
                        return Err(ApiError::unsupported(
                            &format!("messages[{i}].content[{j}]"),
                            format!("`messages[{i}].content[{j}]`: only text parts are supported"),
                        ))
                    }
                }
            }
            text
        }
        _ => {
            return Err(ApiError::bad_field(
                &field("content"),
                format!(
                    "`{}` must be a string or an array of text parts",
                    field("content")
                ),
            ))
        }
    };
    Ok(ChatMessage { role, content })
}

/// `prompt`: a string, or an array holding one string.
fn prompt(obj: &Map<String, Value>) -> Result<String, ApiError> {
    match obj.get("prompt") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(a[0].as_str().unwrap_or_default().to_string())
        }
        Some(Value::Array(_)) => Err(ApiError::unsupported(
            "prompt",
            "`prompt` must be one string (batches and token arrays are not supported)",
        )),
        None => Err(ApiError::bad_field("prompt", "`prompt` is required")),
        Some(_) => Err(ApiError::bad_field("prompt", "`prompt` must be a string")),
    }
}

/// `keep_alive` as Ollama takes it: seconds as a number, or `"5m"`, `"30s"`, `"1h"`, `"0"`, `"-1"`.
fn keep_alive(obj: &Map<String, Value>) -> Result<Option<KeepAlive>, ApiError> {
    let bad = || {
        ApiError::bad_field(
            "keep_alive",
            "`keep_alive` must be seconds or a duration like \"5m\" (0 = unload after the answer, -1 = keep)",
        )
    };
    match obj.get("keep_alive") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(seconds_keep_alive).ok_or_else(bad).map(Some),
        Some(Value::String(s)) => parse_keep_alive(s).map(Some).ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

fn seconds_keep_alive(secs: f64) -> KeepAlive {
    if secs < 0.0 {
        KeepAlive::Forever
    } else {
        KeepAlive::For(Duration::from_secs_f64(secs))
    }
}

/// `"5m"`, `"300"`, `"300s"`, `"1h"`, `"0"`, `"-1"` (negative: keep forever).
pub fn parse_keep_alive(s: &str) -> Option<KeepAlive> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num.trim().parse().ok()?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(seconds_keep_alive(n * scale))
}

fn present(obj: &Map<String, Value>, field: &str) -> bool {
    obj.get(field).is_some_and(|v| !v.is_null())
}

fn empty_collection(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s == "none",
        _ => false,
    }
}

fn opt_f64(obj: &Map<String, Value>, field: &str) -> Result<Option<f64>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(_) => Err(ApiError::bad_field(
            field,
            format!("`{field}` must be a number"),
        )),
    }
}

fn opt_uint(obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_field(field, format!("`{field}` must be a whole number ≥ 0"))
        }),
        Some(_) => Err(ApiError::bad_field(
            field,
            format!("`{field}` must be a whole number"),
        )),
    }
}

fn opt_bool(obj: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad_field(
            field,
            format!("`{field}` must be a boolean"),
        )),
    }
}

/// OpenAI's `finish_reason` for rbee's.
pub fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::ContextFull => "length",
    }
}

/// OpenAI's `usage` object.
pub fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.generated_tokens,
        "total_tokens": u.prompt_tokens + u.generated_tokens,
    })
}

/// Identity shared by every chunk of one answer.
#[derive(Debug, Clone)]
pub struct AnswerId {
    /// `chatcmpl-…` or `cmpl-…`.
    pub id: String,
    /// Unix seconds when the request arrived.
    pub created: u64,
    /// The model name as the client asked for it.
    pub model: String,
    /// Which endpoint's shape.
    pub endpoint: Endpoint,
}

impl AnswerId {
    /// A fresh identity for request number `n`.
    pub fn new(endpoint: Endpoint, model: &str, n: u64) -> Self {
        let prefix = match endpoint {
            Endpoint::Chat => "chatcmpl",
            Endpoint::Completion => "cmpl",
        };
        let now = rbee_proto::now_millis();
        Self {
            id: format!("{prefix}-{now:x}{n:06x}"),
            created: now / 1000,
            model: model.into(),
            endpoint,
        }
    }

    /// The whole answer, for a request that did not stream.
    pub fn complete(&self, text: &str, finish: FinishReason, usage: &Usage) -> Value {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": finish_reason(finish),
            }),
            Endpoint::Completion => json!({
                "index": 0,
                "text": text,
                "logprobs": null,
                "finish_reason": finish_reason(finish),
            }),
        };
        json!({
            "id": self.id,
            "object": self.object(false),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage_json(usage),
        })
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Completion, _) => "text_completion",
        }
    }

    /// One streamed piece: `text` (the first chat chunk also carries the role), or the end with
    /// `finish`. With `include_usage` every chunk has `"usage": null`, as OpenAI's do.
    pub fn chunk(
        &self,
        text: &str,
        first: bool,
        finish: Option<FinishReason>,
        include_usage: bool,
    ) -> Value {
        let finish = finish.map(finish_reason);
        let choice = match self.endpoint {
            Endpoint::Chat => {
                let delta = match (first, finish.is_some()) {
                    (true, _) => json!({"role": "assistant", "content": text}),
                    (false, true) if text.is_empty() => json!({}),
                    (false, _) => json!({"content": text}),
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Endpoint::Completion => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
        };
        let mut v = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        });
        if include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    /// The extra last chunk `stream_options.include_usage` asks for: no choices, the usage.
    pub fn usage_chunk(&self, usage: &Usage) -> Value {
        json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage_json(usage),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<GenRequest, ApiError> {
        parse(Endpoint::Chat, body.to_string().as_bytes())
    }

    #[test]
    fn chat_fields_map_onto_sampling() {
        let r = chat(json!({
            "model": "m", "messages": [{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "temperature": 0, "top_p": 0.5, "max_completion_tokens": 7, "stop": "\n", "seed": 3,
            "stream": true, "stream_options": {"include_usage": true}, "keep_alive": "0",
            "n": 1, "presence_penalty": 0, "user": "me",
        }))
        .unwrap();
        assert_eq!(r.params.temperature, 0.0);
        assert_eq!(r.params.top_p, Some(0.5));
        assert_eq!(r.params.max_tokens, 7);
        assert_eq!(r.params.stop, vec!["\n".to_string()]);
        assert_eq!(r.params.seed, 3);
        assert!(r.stream && r.include_usage);
        assert_eq!(r.keep_alive, Some(KeepAlive::For(Duration::ZERO)));
        let Input::Chat(m) = r.input else { panic!() };
        assert_eq!(
            m[1],
            ChatMessage {
                role: Role::User,
                content: "hi".into()
            }
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let base = || json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let cases = [
            ("n", json!(2)),
            ("presence_penalty", json!(0.5)),
            ("tools", json!([{"type": "function"}])),
            ("logprobs", json!(true)),
            ("temperature", json!("hot")),
            ("max_tokens", json!(-1)),
            ("stop", json!(5)),
            ("stop", json!("x".repeat(300))),
        ];
        for (field, value) in cases {
            let mut b = base();
            b[field] = value;
            let e = chat(b).unwrap_err();
            assert_eq!(e.status, 400, "{field}");
            assert_eq!(e.param.as_deref(), Some(field));
            assert!(e.message.contains(field), "{field}: {}", e.message);
        }
        let e = chat(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}))
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = chat(json!({"messages": []})).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = parse(Endpoint::Chat, b"{not json").unwrap_err();
        assert_eq!(e.code, "invalid_json");
    }

    #[test]
    fn keep_alive_forms() {
        assert_eq!(
            parse_keep_alive("5m"),
            Some(KeepAlive::For(Duration::from_secs(300)))
        );
        assert_eq!(parse_keep_alive("-1"), Some(KeepAlive::Forever));
        assert_eq!(
            parse_keep_alive("30"),
            Some(KeepAlive::For(Duration::from_secs(30)))
        );
        assert_eq!(parse_keep_alive("2x"), None);
    }

    #[test]
    fn chunks_have_openai_shape() {
        let id = AnswerId::new(Endpoint::Chat, "m", 1);
        let first = id.chunk("He", true, None, true);
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        assert!(first["usage"].is_null() && first.get("usage").is_some());
        let last = id.chunk("", false, Some(FinishReason::Length), false);
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert_eq!(last["choices"][0]["delta"], json!({}));
        let u = id.usage_chunk(&Usage {
            prompt_tokens: 3,
            generated_tokens: 4,
            ..Usage::default()
        });
        assert_eq!(u["usage"]["total_tokens"], 7);
        assert_eq!(u["choices"], json!([]));
    }
}
