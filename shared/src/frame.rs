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
            id: None,
            message: format!("frame of {} bytes exceeds the limit of {MAX_FRAME_BYTES}", text.len()),
        });
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| FrameError { id: None, message: format!("not JSON: {e}") })?;
    let id = value.get("id").and_then(|v| v.as_u64());
    serde_json::from_value(value).map_err(|e| FrameError { id, message: e.to_string() })
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
        let err = decode::<ClientMsg>(r#"{"type":"request","id":7,"op":"launch_rockets"}"#)
            .unwrap_err();
        assert_eq!(err.id, Some(7));
        assert!(err.message.contains("launch_rockets"), "{}", err.message);
    }

    #[test]
    fn garbage_is_not_json() {
        let err = decode::<ClientMsg>("{{{").unwrap_err();
        assert_eq!(err.id, None);
        assert!(err.message.starts_with("not JSON"));
    }

    #[test]
    fn oversized_frame_is_refused() {
        let big = format!(r#"{{"type":"hello","client":"{}"}}"#, "x".repeat(MAX_FRAME_BYTES));
        let err = decode::<ClientMsg>(&big).unwrap_err();
        assert!(err.message.contains("exceeds the limit"));
    }

    #[test]
    fn request_wire_shape_is_flat() {
        let msg = ClientMsg::Request { id: 3, deadline: None, body: Request::ListWorkers };
        assert_eq!(encode(&msg), r#"{"type":"request","id":3,"deadline":null,"op":"list_workers"}"#);
    }
}
