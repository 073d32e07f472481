//! Session frames into the agent: the text of one WebSocket message, decoded exactly as the agent's
//! session server decodes it (`rbee_proto::frame::decode::<ClientMsg>`), plus the error reply it
//! would send back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use rbee_proto::frame::{decode, encode};
use rbee_proto::session::{ClientMsg, ServerMsg};
use rbee_proto::{ErrorCode, MAX_FRAME_BYTES};

fuzz_target!(|data: &[u8]| {
    // WebSocket text messages are UTF-8 by construction; binary messages are refused unread.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match decode::<ClientMsg>(text) {
        Ok(msg) => {
            // What was accepted re-encodes to something that decodes the same way (unless a float
            // overflowed to infinity, which JSON cannot carry).
            let again = encode(&msg);
            if let Ok(back) = decode::<ClientMsg>(&again) {
                assert_eq!(encode(&back), again, "re-encoding is not stable for {text:?}");
            }
        }
        Err(e) => {
            // The id the error names is the one the frame carried.
            if let Some(id) = e.id {
                let v: serde_json::Value = serde_json::from_str(text).expect("id recovered from non-JSON");
                assert_eq!(v.get("id").and_then(|v| v.as_u64()), Some(id));
            }
            // The agent's answer is itself a frame every client can decode.
            let reply = encode(&ServerMsg::Error { id: e.id, code: ErrorCode::BadFrame, message: e.message });
            assert!(reply.len() <= MAX_FRAME_BYTES, "error reply of {} bytes exceeds the frame limit", reply.len());
            decode::<ServerMsg>(&reply).expect("error reply decodes");
        }
    }
});
