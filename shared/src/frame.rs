//! Encoding and decoding of frames, with the rules every receiver applies: a size limit, and an
//! error that still names the request id when the frame carried one, so the sender learns which of
//! its requests was refused.
use serde::{de::DeserializeOwned, Serialize};

use crate::{ErrorCode, ProtoError, RequestId, MAX_FRAME_BYTES};

/// A frame that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad frame: {message}")]
pub struct FrameError {
    /// The `id` field, when the frame was JSON with a numeric id.
    pub id: Option<RequestId>,
    /// Why the frame was refused, naming the field where there is one.
    pub message: String,
}

impl From<FrameError> for ProtoError {
    fn from(e: FrameError) -> Self {
        ProtoError::new(ErrorCode::BadFrame, e.message)
    }
}

/// Decode one frame of type `T` from text.
pub fn decode<T: DeserializeOwned>(text: &str) -> Result<T, FrameError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(FrameError {
            id: id_only(text),
            message: format!(
                "frame of {} bytes exceeds the limit of {MAX_FRAME_BYTES}",
                text.len()
            ),
        });
    }
    // The common case, straight into `T`. Only a frame that fails this takes the slower way
    // through a `Value`, which also finds its id and words the error as before.
    if let Ok(msg) = serde_json::from_str::<T>(text) {
        return Ok(msg);
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| FrameError {
        id: None,
        message: format!("not JSON: {e}"),
    })?;
    let id = value.get("id").and_then(|v| v.as_u64());
    serde_json::from_value(value).map_err(|e| FrameError {
        id,
        message: bounded(e.to_string()),
    })
}

/// The request id of a frame too large to decode, so its error reply can still be matched to the
/// request. Every other field is skipped without being kept (serde's `IgnoredAny`).
fn id_only(text: &str) -> Option<RequestId> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<RequestId>,
    }
    serde_json::from_str::<IdOnly>(text).ok().and_then(|f| f.id)
}

/// Longest error message a decode error carries. Serde quotes what it did not expect (an unknown
/// `op`, a string where a number belongs), which can be nearly a whole frame; the error frame sent
/// back must itself stay far below the frame limit.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

fn bounded(mut message: String) -> String {
    if message.len() > MAX_ERROR_MESSAGE_BYTES {
        let mut cut = MAX_ERROR_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("… (truncated)");
    }
    message
}

/// Decode one line a worker wrote on its stdout (the bytes between two newlines, a trailing `\r`
/// ignored), as the agent's supervisor does. Bytes that are not UTF-8 are a bad frame like any
/// other: the line is refused and the next one is read.
pub fn decode_line<T: DeserializeOwned>(line: &[u8]) -> Result<T, FrameError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_FRAME_BYTES {
        return Err(FrameError {
            id: None,
            message: format!(
                "frame of {} bytes or more exceeds the limit of {MAX_FRAME_BYTES}",
                line.len()
            ),
        });
    }
    let text = std::str::from_utf8(line).map_err(|e| FrameError {
        id: None,
        message: format!("not UTF-8: {e}"),
    })?;
    decode(text)
}

/// Encode a frame as one line of JSON (no trailing newline).
pub fn encode<T: Serialize>(msg: &T) -> String {
    // Serialization of these plain types cannot fail: no maps with non-string keys, no NaN floats
    // that serde_json rejects (they become null).
    serde_json::to_string(msg).expect("protocol types always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{ClientMsg, Request};

    #[test]
    fn unknown_op_keeps_the_id() {
        let err =
            decode::<ClientMsg>(r#"{"type":"request","id":7,"op":"launch_rockets"}"#).unwrap_err();
        assert_eq!(err.id, Some(7));
        assert!(err.message.contains("launch_rockets"), "{}", err.message);
    }

    /// `ServerMsg` is decoded by hand: the tag first (as we encode it) or anywhere else, and
    /// what is not a server message is an error, never a panic.
    #[test]
    fn server_messages_decode_with_the_tag_anywhere() {
        use crate::session::{Event, ServerMsg};
        let hb = ServerMsg::Event {
            event: Event::Heartbeat {
                worker: "w1".into(),
                tokens_per_s: 12.5,
                rss_bytes: 7,
                in_flight: 1,
            },
        };
        assert_eq!(decode::<ServerMsg>(&encode(&hb)).unwrap(), hb);
        let late = r#"{"event":"heartbeat","worker":"w1","tokens_per_s":12.5,"rss_bytes":7,"in_flight":1,"type":"event"}"#;
        assert_eq!(decode::<ServerMsg>(late).unwrap(), hb);
        let token = r#"{"text":"hi","id":3,"type":"token"}"#;
        assert_eq!(
            decode::<ServerMsg>(token).unwrap(),
            ServerMsg::Token {
                id: 3,
                text: "hi".into()
            }
        );
        let err = r#"{"type":"error","code":"busy","message":"full"}"#;
        assert!(matches!(
            decode::<ServerMsg>(err).unwrap(),
            ServerMsg::Error { id: None, .. }
        ));
        for bad in [
            r#"{"type":"nonsense"}"#,
            r#"{"id":1}"#,
            "{}",
            "[]",
            r#"{"type":"token","id":1}"#,
            "7",
        ] {
            assert!(decode::<ServerMsg>(bad).is_err(), "{bad} decoded");
        }
    }

    #[test]
    fn garbage_is_not_json() {
        let err = decode::<ClientMsg>("{{{").unwrap_err();
        assert_eq!(err.id, None);
        assert!(err.message.starts_with("not JSON"));
    }

    #[test]
    fn oversized_frame_is_refused() {
        let big = format!(
            r#"{{"type":"hello","client":"{}"}}"#,
            "x".repeat(MAX_FRAME_BYTES)
        );
        let err = decode::<ClientMsg>(&big).unwrap_err();
        assert!(err.message.contains("exceeds the limit"));
        assert_eq!(err.id, None);
        // The id survives, wherever it sits in the frame, so the refusal answers that request.
        let big = format!(
            r#"{{"type":"request","op":"ping","pad":"{}","id":42}}"#,
            "x".repeat(MAX_FRAME_BYTES)
        );
        let err = decode::<ClientMsg>(&big).unwrap_err();
        assert!(err.message.contains("exceeds the limit"));
        assert_eq!(err.id, Some(42));
    }

    /// Regression (fuzzing): an unknown `op` of nearly a megabyte was quoted whole in the error,
    /// so the `bad_frame` reply itself went over the limit and clients dropped it: the request
    /// was never answered.
    #[test]
    fn error_for_a_huge_unknown_op_is_short_and_keeps_the_id() {
        let op = "x".repeat(MAX_FRAME_BYTES - 100);
        let err = decode::<ClientMsg>(&format!(r#"{{"type":"request","id":9,"op":"{op}"}}"#))
            .unwrap_err();
        assert_eq!(err.id, Some(9));
        assert!(
            err.message.starts_with("unknown variant `xxx"),
            "{}",
            &err.message[..80]
        );
        assert!(
            err.message.len() <= MAX_ERROR_MESSAGE_BYTES + 20,
            "{}",
            err.message.len()
        );
        assert!(err.message.ends_with("(truncated)"));
        let reply = encode(&crate::session::ServerMsg::Error {
            id: err.id,
            code: ErrorCode::BadFrame,
            message: err.message,
        });
        assert!(decode::<crate::session::ServerMsg>(&reply).is_ok());
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let op = "é".repeat(2000);
        let err = decode::<ClientMsg>(&format!(r#"{{"type":"request","id":1,"op":"{op}"}}"#))
            .unwrap_err();
        assert!(err.message.ends_with("(truncated)"));
    }

    #[test]
    fn worker_lines_that_are_not_utf8_are_bad_frames() {
        use crate::worker::FromWorker;
        let err = decode_line::<FromWorker>(b"{\"type\":\"token\",\"id\":1,\"text\":\"\xff\"}")
            .unwrap_err();
        assert_eq!(err.id, None);
        assert!(err.message.starts_with("not UTF-8"), "{}", err.message);
        let ok =
            decode_line::<FromWorker>(b"{\"type\":\"token\",\"id\":1,\"text\":\"a\"}\r").unwrap();
        assert_eq!(
            ok,
            FromWorker::Token {
                id: 1,
                text: "a".into()
            }
        );
        let big = vec![b' '; MAX_FRAME_BYTES + 1];
        assert!(decode_line::<FromWorker>(&big)
            .unwrap_err()
            .message
            .contains("exceeds the limit"));
    }

    #[test]
    fn request_wire_shape_is_flat() {
        let msg = ClientMsg::Request {
            id: 3,
            deadline: None,
            timeout_ms: None,
            body: Request::ListWorkers,
        };
        assert_eq!(
            encode(&msg),
            r#"{"type":"request","id":3,"deadline":null,"op":"list_workers"}"#
        );
    }
}
