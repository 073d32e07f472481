//! Errors as OpenAI's clients expect them: an HTTP status and `{"error":{"message","type",
//! "param","code"}}`, with `Retry-After` when trying again later can help.
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rbee_proto::ErrorCode;

/// One refused or failed request, ready to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// For people: what is wrong and, where it helps, what to do.
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, `not_found_error`,
    /// `rate_limit_error`, `server_error`.
    pub kind: &'static str,
    /// OpenAI's `code`, for programs (`model_not_found`, `queue_full`, …).
    pub code: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// Seconds after which trying again may work (429 and 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// 400: the request names field `param` with a value the gateway cannot take.
    pub fn bad_field(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            code: "invalid_value",
            param: Some(param.into()),
            retry_after: None,
        }
    }

    /// 400: the body is not JSON, or not an object.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self {
            code: "invalid_json",
            param: None,
            ..Self::bad_field("", message)
        }
    }

    /// 400: a field rbee does not implement, refused by name rather than ignored.
    pub fn unsupported(param: &str, message: impl Into<String>) -> Self {
        Self {
            code: "unsupported_parameter",
            ..Self::bad_field(param, message)
        }
    }

    /// 401: no key, or not one of ours.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            kind: "authentication_error",
            code: "invalid_api_key",
            param: None,
            retry_after: None,
        }
    }

    /// 404: no node has this model.
    pub fn model_not_found(model: &str, known: &[String]) -> Self {
        let known = if known.is_empty() {
            "no node lists any model".to_string()
        } else {
            format!("known: {}", known.join(", "))
        };
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("model `{model}` does not exist on any node ({known})"),
            kind: "invalid_request_error",
            code: "model_not_found",
            param: Some("model".into()),
            retry_after: None,
        }
    }

    /// 404 for a path the gateway does not serve.
    pub fn no_route(path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "no route {path}; see /v1/models, /v1/chat/completions, /v1/completions"
            ),
            kind: "invalid_request_error",
            code: "unknown_url",
            param: None,
            retry_after: None,
        }
    }

    /// 429: the wait queue is full.
    pub fn queue_full(limit: usize, retry_after: u64) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!(
                "every worker is busy and {limit} requests are already waiting; retry later"
            ),
            kind: "rate_limit_error",
            code: "queue_full",
            param: None,
            retry_after: Some(retry_after),
        }
    }

    /// 503: nothing can serve the request now (no node can hold the model, every node down, the
    /// wait ran out).
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            code,
            param: None,
            retry_after: Some(retry_after),
        }
    }

    /// 500 / 504 and friends: the generation failed on the node.
    pub fn server(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind: "server_error",
            code,
            param: None,
            retry_after: None,
        }
    }

    /// The answer for an agent's error that reached the client (after the gateway's retries).
    pub fn from_agent(code: ErrorCode, message: &str) -> Self {
        match code {
            ErrorCode::PromptTooLong => Self {
                code: "context_length_exceeded",
                param: Some("messages".into()),
                ..Self::bad_field("", message)
            },
            ErrorCode::BadRequest | ErrorCode::BadFrame => Self {
                param: None,
                ..Self::bad_field("", message)
            },
            ErrorCode::DeadlineExceeded => {
                Self::server(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
            }
            ErrorCode::Busy => Self::unavailable("busy", message, 1),
            ErrorCode::InsufficientMemory => Self::unavailable("insufficient_memory", message, 30),
            ErrorCode::WorkerGone | ErrorCode::ShuttingDown => {
                Self::unavailable("worker_gone", message, 1)
            }
            ErrorCode::Cancelled => {
                Self::server(StatusCode::INTERNAL_SERVER_ERROR, "cancelled", message)
            }
            _ => Self::server(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// `code: message` as `rbee_client` prints an agent's error, back into its parts. Errors that
/// did not come from the agent (`session closed`, `node unreachable: …`) are `None`.
pub fn parse_agent_error(text: &str) -> Option<(ErrorCode, &str)> {
    let (code, rest) = text.split_once(": ")?;
    let code: ErrorCode = serde_json::from_value(serde_json::Value::String(code.into())).ok()?;
    Some((code, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_errors_come_back_apart() {
        let (code, msg) = parse_agent_error("busy: worker queue is full").unwrap();
        assert_eq!(code, ErrorCode::Busy);
        assert_eq!(msg, "worker queue is full");
        assert!(parse_agent_error("session closed").is_none());
        assert!(parse_agent_error("node unreachable: refused").is_none());
    }

    #[test]
    fn body_has_openai_shape() {
        let e = ApiError::model_not_found("x", &["a".into()]);
        let b = e.body();
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["code"], "model_not_found");
        assert_eq!(b["error"]["param"], "model");
        assert!(b["error"]["message"].as_str().unwrap().contains("known: a"));
    }
}
