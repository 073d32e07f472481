//! Worker frames into the agent: arbitrary bytes on a worker's stdout, cut into lines and decoded
//! exactly as the agent's supervisor does (`rbee_proto::frame::decode_line::<FromWorker>`).
#![no_main]
use libfuzzer_sys::fuzz_target;
use rbee_proto::frame::{decode, decode_line, encode};
use rbee_proto::worker::FromWorker;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        match decode_line::<FromWorker>(line) {
            Ok(msg) => {
                let again = encode(&msg);
                if let Ok(back) = decode::<FromWorker>(&again) {
                    assert_eq!(encode(&back), again, "re-encoding is not stable");
                }
            }
            Err(e) => {
                assert!(e.message.len() <= rbee_proto::frame::MAX_ERROR_MESSAGE_BYTES + 64, "unbounded error message");
            }
        }
    }
});
