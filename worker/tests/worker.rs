//! The real `rbee-worker` binary on the real small model, driven as a person (`--prompt`) and as
//! the agent does (frames on stdin/stdout).
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{greedy, worker, Proto};
use rbee_proto::worker::{FromWorker, ToWorker};
use rbee_proto::{ErrorCode, FinishReason, PROTOCOL_VERSION};
use rbee_testkit::model_path;

fn one_shot(prompt: &str, extra: &[&str]) -> (String, String) {
    let out = worker()
        .arg("--model")
        .arg(model_path())
        .args(["--prompt", prompt])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    (
        String::from_utf8(out.stdout).expect("stdout is valid UTF-8"),
        stderr,
    )
}

#[test]
fn prompt_mode_generates_sensible_deterministic_text() {
    let args = [
        "--max-tokens",
        "24",
        "--temperature",
        "0.7",
        "--seed",
        "42",
        "--json",
    ];
    let (a, stderr) = one_shot("Once upon a time, there was a little bee who", &args);
    let (b, _) = one_shot("Once upon a time, there was a little bee who", &args);
    assert_eq!(a, b, "same seed and parameters must give the same text");
    let words = a
        .split_whitespace()
        .filter(|w| w.chars().any(|c| c.is_alphabetic()))
        .count();
    assert!(words >= 10, "expected English-like text, got {a:?}");
    let stats: serde_json::Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    assert_eq!(stats["usage"]["generated_tokens"], 24);
    assert_eq!(stats["finish_reason"], "length");
    assert!(stats["usage"]["decode_tokens_per_s"].as_f64().unwrap() > 1.0);
    // A different seed gives different text.
    let (c, _) = one_shot(
        "Once upon a time, there was a little bee who",
        &["--max-tokens", "24", "--temperature", "0.7", "--seed", "7"],
    );
    assert_ne!(a, c);
}

#[test]
fn greedy_answer_and_stop_sequence() {
    let (text, _) = one_shot(
        "The capital of France is",
        &["--max-tokens", "12", "--temperature", "0"],
    );
    assert!(text.contains("Paris"), "{text:?}");
    let (stopped, err) = one_shot(
        "The capital of France is",
        &[
            "--max-tokens",
            "12",
            "--temperature",
            "0",
            "--stop",
            "Paris",
        ],
    );
    assert!(!stopped.contains("Paris"), "{stopped:?}");
    assert!(err.contains("Stop"), "{err}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--model".into(), "/nonexistent/m.gguf".into()],
            "model not found",
        ),
        (
            vec![
                "--model".into(),
                model_path().display().to_string(),
                "--device".into(),
                "cuda:0".into(),
            ],
            "`cuda` feature",
        ),
        (
            vec!["--model".into(), "hf:".into()],
            "invalid model reference",
        ),
    ];
    let truncated = dir.path().join("truncated.gguf");
    let bytes = std::fs::read(model_path()).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let mut cases = cases;
    cases.push((
        vec!["--model".into(), truncated.display().to_string()],
        "truncated",
    ));
    for (args, expect) in cases {
        let out = worker()
            .args(&args)
            .args(["--prompt", "hi"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(
            err.contains(expect),
            "{args:?}: expected {expect:?} in {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn protocol_streams_reports_and_survives_bad_frames() {
    let mut w = Proto::start(&["--heartbeat-ms", "200"]);
    w.send(&ToWorker::Hello {
        protocol_version: PROTOCOL_VERSION,
    });
    w.ready();
    w.send_raw("{garbage");
    match w.next() {
        FromWorker::Error {
            id: None,
            code: ErrorCode::BadFrame,
            message,
        } => assert!(message.starts_with("not JSON"), "{message}"),
        other => panic!("{other:?}"),
    }
    w.send_raw(r#"{"type":"generate","id":9}"#);
    assert!(matches!(
        w.next(),
        FromWorker::Error {
            id: Some(9),
            code: ErrorCode::BadFrame,
            ..
        }
    ));
    w.send(&ToWorker::Generate {
        id: 1,
        prompt: "The capital of France is".into(),
        params: greedy(8),
        deadline: None,
    });
    let (text, done) = w.collect(1);
    assert!(text.contains("Paris"), "{text:?}");
    let FromWorker::Done {
        finish_reason,
        usage,
        ..
    } = done
    else {
        panic!("{done:?}")
    };
    assert_eq!(finish_reason, FinishReason::Length);
    assert_eq!((usage.prompt_tokens, usage.generated_tokens), (5, 8));
    assert!(usage.time_to_first_token_ms > 0.0 && usage.decode_tokens_per_s > 0.0);
    // Heartbeats keep coming.
    let hb = (0..50).find_map(|_| match w.rx.recv_timeout(Duration::from_secs(2)) {
        Ok(FromWorker::Heartbeat {
            rss_bytes,
            tokens_generated,
            ..
        }) => Some((rss_bytes, tokens_generated)),
        _ => None,
    });
    let (rss, toks) = hb.expect("a heartbeat within 2 s");
    assert!(rss > 50 << 20 && toks >= 8, "rss={rss} tokens={toks}");
    // A prompt longer than the context.
    let long = "bee ".repeat(9000);
    w.send(&ToWorker::Generate {
        id: 2,
        prompt: long,
        params: greedy(4),
        deadline: None,
    });
    match w.collect(2).1 {
        FromWorker::Error {
            code: ErrorCode::PromptTooLong,
            message,
            ..
        } => assert!(message.contains("context"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Deadline already passed.
    w.send(&ToWorker::Generate {
        id: 3,
        prompt: "Hi".into(),
        params: greedy(4),
        deadline: Some(1),
    });
    assert!(matches!(
        w.collect(3).1,
        FromWorker::Error {
            code: ErrorCode::DeadlineExceeded,
            ..
        }
    ));
    // Cancel of an unknown id.
    w.send(&ToWorker::Cancel { id: 77 });
    assert!(matches!(
        w.next(),
        FromWorker::Error {
            id: Some(77),
            code: ErrorCode::NotFound,
            ..
        }
    ));
    // Shutdown exits cleanly.
    w.send(&ToWorker::Shutdown);
    let st = w.child.wait().unwrap();
    assert!(st.success(), "{st}");
}

#[test]
fn cancel_stops_within_a_token_and_full_queue_answers_busy() {
    let mut w = Proto::start(&["--queue", "1", "--parallel", "1"]);
    w.ready();
    w.send(&ToWorker::Generate {
        id: 1,
        prompt: "Count: 1, 2, 3, 4, 5, 6, 7,".into(),
        params: greedy(500),
        deadline: None,
    });
    // Wait for the first token so request 1 is running, then fill the queue.
    match w.next() {
        FromWorker::Token { id: 1, .. } => {}
        other => panic!("{other:?}"),
    }
    w.send(&ToWorker::Generate {
        id: 2,
        prompt: "queued".into(),
        params: greedy(2),
        deadline: None,
    });
    w.send(&ToWorker::Generate {
        id: 3,
        prompt: "one too many".into(),
        params: greedy(2),
        deadline: None,
    });
    w.send(&ToWorker::Cancel { id: 1 });
    let mut busy = false;
    let mut after_cancel_tokens = 0;
    let mut cancelled = false;
    let mut done2 = false;
    while !(busy && cancelled && done2) {
        match w.next() {
            FromWorker::Token { id: 1, .. } => after_cancel_tokens += 1,
            FromWorker::Error {
                id: Some(3),
                code: ErrorCode::Busy,
                ..
            } => busy = true,
            FromWorker::Error {
                id: Some(1),
                code: ErrorCode::Cancelled,
                ..
            } => cancelled = true,
            FromWorker::Token { id: 2, .. } => {}
            FromWorker::Done { id: 2, .. } => done2 = true,
            other => panic!("{other:?}"),
        }
    }
    // Tokens already in the pipe when the cancel arrived may still come out, but only a few.
    assert!(
        after_cancel_tokens <= 3,
        "{after_cancel_tokens} tokens after cancel"
    );
}

#[test]
fn protocol_version_mismatch_and_load_failure_are_reported() {
    let mut w = Proto::start(&[]);
    w.ready();
    w.send(&ToWorker::Hello {
        protocol_version: 999,
    });
    match w.next() {
        FromWorker::Error {
            code: ErrorCode::VersionMismatch,
            message,
            ..
        } => assert!(message.contains("999"), "{message}"),
        other => panic!("{other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF not really").unwrap();
    let out = worker()
        .arg("--model")
        .arg(&bad)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"model_load\""), "{stdout}");
}

/// Token frames made within `--stream-interval-ms` of each other leave together, a request's
/// first text at once, and nothing is lost or reordered by the wait.
#[test]
fn tokens_within_the_stream_interval_leave_together_the_first_at_once() {
    let run = |interval: &str| {
        let mut w = Proto::start(&["--stream-interval-ms", interval]);
        w.send(&ToWorker::Hello {
            protocol_version: PROTOCOL_VERSION,
        });
        w.ready();
        let mut params = greedy(64);
        params.ignore_eos = true;
        w.send(&ToWorker::Generate {
            id: 1,
            prompt: "Once upon a time".into(),
            params,
            deadline: None,
        });
        // Each frame's arrival, as the agent would see it.
        let (mut text, mut at) = (String::new(), Vec::new());
        loop {
            let frame = w.next();
            at.push(std::time::Instant::now());
            match frame {
                FromWorker::Token { text: t, .. } => text.push_str(&t),
                FromWorker::Done { .. } => return (text, at),
                other => panic!("{other:?}"),
            }
        }
    };
    // Far longer than the whole generation: every token after the first waits for the end.
    let (held, at) = run("60000");
    let (first_to_second, second_to_done) = (at[1] - at[0], at[at.len() - 1] - at[1]);
    assert!(
        second_to_done * 4 < first_to_second,
        "the first token left at once and the rest together: {first_to_second:?} then {second_to_done:?}"
    );
    let (each, _) = run("0");
    assert_eq!(held, each, "the same text whatever the interval");
}
