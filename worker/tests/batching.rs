//! Continuous batching on the real model (SmolLM2, rbee's llama decoder): several requests at
//! once, each as it would be alone; cancel of one; context limits; prefix reuse.
mod common;

use std::collections::HashMap;

use common::{greedy, Proto};
use rbee_proto::worker::{FromWorker, ToWorker};
use rbee_proto::{ErrorCode, FinishReason, SamplingParams};

/// Seeded sampling (temperature 0.9) for `n` tokens.
fn seeded(seed: u64, n: u32) -> SamplingParams {
    SamplingParams {
        temperature: 0.9,
        top_p: Some(0.95),
        max_tokens: n,
        seed,
        ignore_eos: true,
        ..Default::default()
    }
}

fn generate(w: &mut Proto, id: u64, prompt: &str, params: SamplingParams) {
    w.send(&ToWorker::Generate {
        id,
        prompt: prompt.into(),
        params,
        deadline: None,
    });
}

/// Every frame until each of `ids` has ended: text and final frame per id.
fn collect_all(w: &Proto, ids: &[u64]) -> HashMap<u64, (String, FromWorker)> {
    let mut text: HashMap<u64, String> = HashMap::new();
    let mut ended = HashMap::new();
    while ended.len() < ids.len() {
        match w.next() {
            FromWorker::Token { id, text: t } => {
                assert!(ids.contains(&id), "token for unknown request {id}");
                assert!(!ended.contains_key(&id), "token for {id} after its end");
                text.entry(id).or_default().push_str(&t);
            }
            m @ (FromWorker::Done { .. } | FromWorker::Error { .. }) => {
                let id = match &m {
                    FromWorker::Done { id, .. } => *id,
                    FromWorker::Error { id, .. } => id.expect("error without id"),
                    _ => unreachable!(),
                };
                assert!(ids.contains(&id), "end of unknown request {id}: {m:?}");
                let t = text.remove(&id).unwrap_or_default();
                assert!(ended.insert(id, (t, m)).is_none(), "{id} ended twice");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    ended
}

const PROMPTS: [&str; 4] = [
    "The history of the printing press",
    "Once upon a time, in a small village,",
    "My favourite recipe for bread is",
    "Q: What is the capital of France?\nA:",
];

#[test]
fn seeded_requests_give_the_same_text_alone_or_batched() {
    let mut w = Proto::start(&["--parallel", "4"]);
    w.ready();
    // Alone, one after the other.
    let mut alone = Vec::new();
    for (i, p) in PROMPTS.iter().enumerate() {
        generate(&mut w, i as u64, p, seeded(7 + i as u64, 24));
        let (text, end) = w.collect(i as u64);
        assert!(matches!(end, FromWorker::Done { .. }), "{end:?}");
        alone.push(text);
    }
    // All four at once, plus a long prompt read in chunks while they decode.
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(60);
    generate(&mut w, 99, &long, greedy(4));
    for (i, p) in PROMPTS.iter().enumerate() {
        generate(&mut w, 10 + i as u64, p, seeded(7 + i as u64, 24));
    }
    let ids: Vec<u64> = (10..14).chain([99]).collect();
    let batched = collect_all(&w, &ids);
    for (i, text) in alone.iter().enumerate() {
        let (t, end) = &batched[&(10 + i as u64)];
        match end {
            FromWorker::Done {
                finish_reason,
                usage,
                ..
            } => {
                assert_eq!(*finish_reason, FinishReason::Length);
                assert_eq!(usage.generated_tokens, 24);
            }
            other => panic!("request {i}: {other:?}"),
        }
        assert!(!text.is_empty());
        assert_eq!(t, text, "request {i} differs batched");
    }
    assert!(matches!(batched[&99].1, FromWorker::Done { .. }));
}

#[test]
fn eight_concurrent_requests_on_four_slots_all_complete_with_their_ids() {
    let mut w = Proto::start(&["--parallel", "4", "--queue", "8"]);
    w.ready();
    let ids: Vec<u64> = (100..108).collect();
    for &id in &ids {
        generate(&mut w, id, PROMPTS[id as usize % 4], greedy(12));
    }
    let ended = collect_all(&w, &ids);
    for id in ids {
        match &ended[&id] {
            (text, FromWorker::Done { usage, .. }) => {
                assert!(!text.is_empty(), "{id}: no text");
                assert!(usage.generated_tokens > 0);
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    // Same prompt, greedy: same text whichever slot and neighbours it had.
    assert_eq!(ended[&100].0, ended[&104].0);
    assert_eq!(ended[&103].0, ended[&107].0);
}

#[test]
fn cancelling_one_request_leaves_the_others_running() {
    let mut w = Proto::start(&["--parallel", "3"]);
    w.ready();
    for id in 1..=3 {
        let params = SamplingParams {
            ignore_eos: true,
            ..greedy(40)
        };
        generate(&mut w, id, PROMPTS[id as usize], params);
    }
    // Once request 2 has produced text, cancel it.
    loop {
        if let FromWorker::Token { id: 2, .. } = w.next() {
            break;
        }
    }
    w.send(&ToWorker::Cancel { id: 2 });
    let mut done = HashMap::new();
    while done.len() < 3 {
        match w.next() {
            FromWorker::Token { .. } => {}
            FromWorker::Done { id, usage, .. } => {
                done.insert(id, Some(usage.generated_tokens));
            }
            FromWorker::Error {
                id: Some(2),
                code: ErrorCode::Cancelled,
                ..
            } => {
                done.insert(2, None);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(done[&2], None, "request 2 was not cancelled");
    assert_eq!(done[&1], Some(40));
    assert_eq!(done[&3], Some(40));
}

#[test]
fn ready_reports_slots_and_context() {
    let w = Proto::start(&["--parallel", "3", "--ctx", "100000"]);
    let s = w.ready_summary();
    assert_eq!(s.parallel, 3);
    // --ctx beyond the file's context is held to it (SmolLM2: 8 192).
    assert_eq!(s.context_length, 8192);
    // A family without the batched forward serves one sequence and says so.
    let g = Proto::start_on(&common::gemma_path(), &["--parallel", "3"]);
    assert_eq!(g.ready_summary().parallel, 1);
}

#[test]
fn a_prompt_longer_than_the_context_is_refused_and_the_worker_lives_on() {
    let mut w = Proto::start(&["--ctx", "64"]);
    let s = w.ready_summary();
    assert_eq!((s.context_length, s.parallel), (64, 4));
    generate(&mut w, 1, &"word ".repeat(100), greedy(4));
    match w.collect(1) {
        (_, FromWorker::Error { code, message, .. }) => {
            assert_eq!(code, ErrorCode::PromptTooLong);
            assert!(message.contains("64"), "{message}");
            assert!(message.contains("101"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // A prompt that fits still runs, and stops when the context is full.
    generate(&mut w, 2, &"word ".repeat(50), greedy(100));
    match w.collect(2) {
        (text, FromWorker::Done { finish_reason, .. }) => {
            assert!(!text.is_empty());
            assert_eq!(finish_reason, FinishReason::ContextFull);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_follow_up_turn_reuses_the_cached_prefix_and_answers_as_without() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("worker.log");
    let first = "<|im_start|>system\nYou are a helpful assistant who answers briefly and clearly, \
                 with short numbered lists when asked for several things.<|im_end|>\n\
                 <|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n";
    let mut w = Proto::start_logged(&["--parallel", "2", "--prefill-chunk", "16"], &log);
    w.ready();
    generate(&mut w, 1, first, greedy(16));
    let (answer, _) = w.collect(1);
    let follow = format!("{first}{answer}<|im_end|>\n<|im_start|>user\nAnd three animals?<|im_end|>\n<|im_start|>assistant\n");
    generate(&mut w, 2, &follow, greedy(16));
    let (reused, end) = w.collect(2);
    assert!(matches!(end, FromWorker::Done { .. }), "{end:?}");
    // The same turn on a fresh worker (nothing cached).
    let mut fresh = Proto::start(&["--parallel", "2", "--prefill-chunk", "16"]);
    fresh.ready();
    generate(&mut fresh, 2, &follow, greedy(16));
    let (cold, _) = fresh.collect(2);
    assert!(!cold.is_empty());
    assert_eq!(reused, cold);
    drop(w);
    let log = std::fs::read_to_string(&log).unwrap();
    let reuse: Vec<usize> = log
        .lines()
        .filter(|l| l.contains("request joins"))
        .filter_map(|l| {
            l.split("reused=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(reuse.len(), 2, "{log}");
    assert_eq!(reuse[0], 0);
    // Reuse covers the first turn's prompt, up to a chunk boundary (16 tokens here).
    assert!(reuse[1] >= 16, "follow-up reused only {} tokens", reuse[1]);
    assert_eq!(reuse[1] % 16, 0);
}
