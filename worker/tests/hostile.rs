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

/// A GGUF v3 header with `kvs` (key, value type, value bytes) and no tensors.
fn gguf(kvs: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (key, ty, value) in kvs {
        b.extend((key.len() as u64).to_le_bytes());
        b.extend(key.as_bytes());
        b.extend(ty.to_le_bytes());
        b.extend(value);
    }
    b
}

/// Start the real worker in protocol mode on `model` with `extra` flags; its exit code, stdout
/// and stderr.
fn protocol_run(model: &std::path::Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rbee-worker"))
        .arg("--model")
        .arg(model)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn crafted_gguf_headers_are_load_failures_not_panics_or_blow_ups() {
    let dir = tempfile::tempdir().unwrap();
    let arch = (
        "general.architecture",
        8,
        [5u64.to_le_bytes().as_slice(), b"llama"].concat(),
    );
    // 4 MiB of u8 metadata: candle would hold it as 128 MiB of 32-byte values.
    let n: u64 = 4 << 20;
    let mut array = 0u32.to_le_bytes().to_vec();
    array.extend(n.to_le_bytes());
    array.resize(array.len() + n as usize, 1);
    let alignment_zero = ("general.alignment", 4, 0u32.to_le_bytes().to_vec());
    for (name, kvs, says) in [
        (
            "huge-array.gguf",
            vec![arch.clone(), ("junk", 9, array)],
            "metadata would take over",
        ),
        (
            "alignment-zero.gguf",
            vec![arch.clone(), alignment_zero],
            "`general.alignment` is 0",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, gguf(&kvs)).unwrap();
        let (code, stdout, stderr) = protocol_run(&path, &["--threads", "1"]);
        assert_eq!(code, Some(3), "{name}: {stdout}\n{stderr}");
        assert!(
            stdout.contains("\"model_load\"")
                && stdout.contains("GGUF header refused")
                && stdout.contains(says),
            "{name}: {stdout}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

#[test]
fn absurd_thread_counts_are_refused_at_start() {
    for t in ["0", "1000000000"] {
        let (code, stdout, stderr) = protocol_run(&model_path(), &["--threads", t]);
        assert_eq!(code, Some(3), "{t}: {stdout}\n{stderr}");
        let want = format!("--threads {t}: must be from 1 to 4096");
        assert!(
            stdout.contains("\"model_load\"") && stdout.contains(&want),
            "{stdout}"
        );
        assert!(
            stderr.contains(&want) && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
}
