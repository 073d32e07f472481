//! Chat through the real worker on real models: SmolLM2-135M-Instruct with the ChatML template
//! its GGUF file carries, and Gemma 3 270M (a base model: no template, completion only).
mod common;

use common::{gemma_path, greedy, worker, Proto};
use rbee_proto::worker::{FromWorker, ToWorker};
use rbee_proto::{ChatMessage, ErrorCode, FinishReason, Role, SamplingParams};
use rbee_testkit::model_path;

/// A system prompt that asks for one sentence. Along llama.cpp's greedy path on the same file
/// every choice leads its runner-up by 0.86 or more, so kernels that round differently still
/// answer in one sentence and end the turn. (With SmolLM2's default system prompt the first
/// token is a near-tie in llama.cpp itself: "L" 24.74 against "The" 24.65.)
const SYSTEM: &str = "You are a helpful assistant. Answer in one short sentence.";

fn msg(role: Role, content: &str) -> ChatMessage {
    ChatMessage {
        role,
        content: content.into(),
    }
}

/// `rbee-worker --chat` on the test model; returns (answer, stats JSON).
fn chat_once(question: &str, extra: &[&str]) -> (String, serde_json::Value) {
    let out = worker()
        .arg("--model")
        .arg(model_path())
        .args(["--chat", question, "--json"])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let stats = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    (String::from_utf8(out.stdout).unwrap(), stats)
}

#[test]
fn a_factual_question_gets_an_answer_that_ends_at_the_end_of_the_turn() {
    let system = ["--system", SYSTEM];
    let greedy_args = [&system[..], &["--temperature", "0", "--max-tokens", "64"]].concat();
    let (answer, stats) = chat_once("What is the capital of France?", &greedy_args);
    assert!(answer.contains("Paris"), "{answer:?}");
    assert!(
        !answer.contains("<|im_end|>") && !answer.contains("<|im_start|>"),
        "{answer:?}"
    );
    // The model closed its turn: finish `eos` (not `length`), well under the limit.
    assert_eq!(stats["finish_reason"], "eos", "{stats}");
    assert!(
        stats["usage"]["generated_tokens"].as_u64().unwrap() < 64,
        "{stats}"
    );
    // The prompt is the rendered conversation (system + user turn + generation prompt).
    assert!(
        stats["usage"]["prompt_tokens"].as_u64().unwrap() > 20,
        "{stats}"
    );
    // Sampled, the answer is the same for the same seed.
    let sampled = [&system[..], &["--temperature", "0.7", "--seed", "42"]].concat();
    let (a, _) = chat_once("Name a large city in Europe.", &sampled);
    let (b, _) = chat_once("Name a large city in Europe.", &sampled);
    assert!(!a.trim().is_empty());
    assert_eq!(a, b, "same seed, same answer");
}

#[test]
fn protocol_chat_reports_the_template_and_carries_the_history() {
    let mut w = Proto::start(&[]);
    let summary = w.ready_summary();
    assert_eq!(summary.family, "llama");
    assert_eq!(summary.chat_template.as_deref(), Some("gguf"));
    assert_eq!(summary.context_length, 8192, "the file's");
    let first = vec![
        msg(Role::System, SYSTEM),
        msg(Role::User, "What is the capital of France?"),
    ];
    w.send(&ToWorker::Chat {
        id: 1,
        messages: first.clone(),
        params: greedy(64),
        deadline: None,
    });
    let (answer, done) = w.collect(1);
    assert!(answer.contains("Paris"), "{answer:?}");
    let FromWorker::Done {
        finish_reason,
        usage: first_usage,
        ..
    } = done
    else {
        panic!("{done:?}")
    };
    assert_eq!(finish_reason, FinishReason::Eos);
    // The next turn carries the whole conversation.
    let mut second = first;
    second.push(msg(Role::Assistant, &answer));
    second.push(msg(Role::User, "What is the capital of Italy?"));
    w.send(&ToWorker::Chat {
        id: 2,
        messages: second,
        params: greedy(64),
        deadline: None,
    });
    let (answer2, done) = w.collect(2);
    let FromWorker::Done { usage, .. } = done else {
        panic!("{done:?}")
    };
    assert!(
        usage.prompt_tokens > first_usage.prompt_tokens + first_usage.generated_tokens,
        "history sent: {} vs {}",
        usage.prompt_tokens,
        first_usage.prompt_tokens
    );
    assert!(!answer2.trim().is_empty());
    // The same conversation as a completion prompt is not a chat: no template applied.
    w.send(&ToWorker::Generate {
        id: 3,
        prompt: "What is the capital of France?".into(),
        params: greedy(4),
        deadline: None,
    });
    let FromWorker::Done { usage, .. } = w.collect(3).1 else {
        panic!()
    };
    assert_eq!(usage.prompt_tokens, 7);
}

#[test]
fn gemma_completes_and_refuses_chat_clearly_then_lives_on() {
    let mut w = Proto::start_on(&gemma_path(), &[]);
    let summary = w.ready_summary();
    assert_eq!(summary.family, "gemma3");
    assert_eq!(summary.architecture, "gemma3");
    assert_eq!(summary.chat_template, None);
    assert_eq!(summary.context_length, 32_768);
    w.send(&ToWorker::Chat {
        id: 1,
        messages: vec![msg(Role::User, "Hello")],
        params: SamplingParams::default(),
        deadline: None,
    });
    match w.collect(1).1 {
        FromWorker::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::BadRequest);
            assert!(message.contains("no chat template"), "{message}");
            assert!(message.contains("completion only"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    w.send(&ToWorker::Generate {
        id: 2,
        prompt: "The capital of France is".into(),
        params: greedy(12),
        deadline: None,
    });
    let (text, done) = w.collect(2);
    let FromWorker::Done { usage, .. } = done else {
        panic!("{done:?}")
    };
    // BOS + 5 SentencePiece tokens, BOS added once.
    assert_eq!(usage.prompt_tokens, 6);
    assert_eq!(usage.generated_tokens, 12);
    assert!(text.split_whitespace().count() >= 5, "{text:?}");
}
