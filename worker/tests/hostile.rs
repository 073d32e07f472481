//! Hostile input to the real `rbee-worker` binary: sampling parameters no sampler can honour,
//! crafted GGUF headers, absurd thread counts. Each is a clean, named refusal (or a load failure
//! with exit code 3), never a panic, a backtrace or a memory blow-up.
mod common;

use common::{greedy, worker, Proto};
use rbee_proto::frame::encode;
use rbee_proto::worker::{FromWorker, ToWorker};
use rbee_proto::{ErrorCode, SamplingParams};
use rbee_testkit::model_path;

/// The refusal of request `id`: its code and message.
fn refusal(w: &Proto, id: u64) -> (ErrorCode, String) {
    match w.collect(id).1 {
        FromWorker::Error { code, message, .. } => (code, message),
        other => panic!("expected an error for {id}, got {other:?}"),
    }
}

#[test]
fn bad_sampling_is_refused_by_name_and_the_worker_keeps_serving() {
    let mut w = Proto::start(&[]);
    w.ready();
    // repeat_penalty 0 used to end in `internal` with a backtrace; negative ones were accepted.
    for (id, penalty) in [(1, 0.0f32), (2, -1.5)] {
        w.send(&ToWorker::Generate {
            id,
            prompt: "Hi".into(),
            params: SamplingParams {
                repeat_penalty: penalty,
                ..greedy(4)
            },
            deadline: None,
        });
        let (code, message) = refusal(&w, id);
        assert_eq!(code, ErrorCode::BadRequest, "{message}");
        assert!(message.starts_with("`repeat_penalty` must be"), "{message}");
        assert!(!message.contains("backtrace"), "{message}");
    }
    // NaN crosses JSON as null: it is named, not "invalid type: null".
    let nan = encode(&ToWorker::Chat {
        id: 3,
        messages: vec![rbee_proto::ChatMessage {
            role: rbee_proto::Role::User,
            content: "Hi".into(),
        }],
        params: SamplingParams {
            temperature: f64::NAN,
            ..greedy(4)
        },
        deadline: None,
    });
    assert!(nan.contains("\"temperature\":null"), "{nan}");
    w.send_raw(&nan);
    let (code, message) = refusal(&w, 3);
    assert_eq!(code, ErrorCode::BadRequest, "{message}");
    assert!(
        message.starts_with("`temperature` must be a number from 0 to 2")
            && message.contains("NaN"),
        "{message}"
    );
    w.send(&ToWorker::Generate {
        id: 4,
        prompt: "Hi".into(),
        params: greedy(3),
        deadline: None,
    });
    assert!(matches!(w.collect(4).1, FromWorker::Done { .. }));
}

#[test]
fn bad_sampling_in_prompt_mode_is_a_clear_error() {
    let out = worker()
        .arg("--model")
        .arg(model_path())
        .args(["--prompt", "Hi", "--repeat-penalty", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`repeat_penalty` must be a number above 0")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
}
