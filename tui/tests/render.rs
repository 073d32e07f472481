//! What the operator sees, from fixed states: every screen at 80×24 (the smallest terminal we
//! promise to work in) and some wider, with an unreachable node and a failed worker among them.
//! Snapshots live in `tests/snapshots/`; review changes before accepting them.
mod common;

use common::*;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use rbee_tui::dashboard::action::Action;
use rbee_tui::dashboard::keys::{self, BINDINGS};
use rbee_tui::dashboard::state::{
    InputKind, InputLine, Pending, Popup, PromptPane, PromptRun, Screen, SpawnDialog, SpawnField,
    State,
};
use rbee_tui::dashboard::update::update;
use rbee_tui::dashboard::view;

fn draw(state: &State, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| view::render(state, f)).unwrap();
    t.backend().to_string()
}

fn on(screen: Screen) -> State {
    let mut s = sample();
    s.screen = screen;
    s
}

#[test]
fn nodes_80x24() {
    insta::assert_snapshot!(draw(&sample(), 80, 24));
}

#[test]
fn nodes_wide() {
    insta::assert_snapshot!(draw(&sample(), 120, 32));
}

#[test]
fn nodes_unreachable_selected_80x24() {
    let mut s = sample();
    s.node_sel = 2;
    insta::assert_snapshot!(draw(&s, 80, 24));
}

#[test]
fn nodes_cpu_only_selected_80x24() {
    let mut s = sample();
    s.node_sel = 1;
    insta::assert_snapshot!(draw(&s, 80, 24));
}

#[test]
fn nodes_empty_config_connecting_80x24() {
    let mut s = State::new(vec![rbee_tui::dashboard::state::NodeState::new(
        "local",
        "local agent",
    )]);
    s.now = NOW;
    insta::assert_snapshot!(draw(&s, 80, 24));
}

#[test]
fn node_detail_80x24() {
    let mut s = on(Screen::Node(0));
    s.worker_sel = Some("w2".into());
    insta::assert_snapshot!(draw(&s, 80, 24));
}

#[test]
fn node_detail_wide() {
    let mut s = on(Screen::Node(0));
    s.worker_sel = Some("w1".into());
    insta::assert_snapshot!(draw(&s, 120, 32));
}

#[test]
fn node_detail_failed_worker_selected_80x24() {
    let mut s = on(Screen::Node(0));
    s.worker_sel = Some("w3".into());
    insta::assert_snapshot!(draw(&s, 80, 24));
}

#[test]
fn node_detail_no_gpu_80x24() {
    insta::assert_snapshot!(draw(&on(Screen::Node(1)), 80, 24));
}

#[test]
fn node_detail_pull_in_progress_then_done_80x24() {
    use rbee_proto::session::Event;
    let mut s = on(Screen::Node(1));
    let progress = |downloaded_bytes, file: &str| Action::AgentEvent {
        node: 1,
        event: Event::PullProgress {
            model: "hf:org/tiny:tiny.Q8_0.gguf".into(),
            file: file.into(),
            downloaded_bytes,
            total_bytes: 400 << 20,
        },
    };
    update(&mut s, progress(100 << 20, "tiny.Q8_0.gguf"));
    let screen = draw(&s, 80, 24);
    assert!(screen.contains("pull  25% tiny.Q8_0.gguf"), "{screen}");
    assert!(draw(&s, 160, 30).contains("pull  25% tiny.Q8_0.gguf 100 MiB/400 MiB"));
    insta::assert_snapshot!(screen);
    // Complete: the gauge goes, an event says so.
    update(&mut s, progress(400 << 20, ""));
    assert!(s.nodes[1].pulls.is_empty());
    assert!(
        s.events
            .iter()
            .any(|e| e.text.contains("pulled hf:org/tiny:tiny.Q8_0.gguf")),
        "{:?}",
        s.events
    );
    assert!(!draw(&s, 80, 24).contains("pull tiny"));
}

#[test]
fn node_detail_unreachable_80x24() {
    insta::assert_snapshot!(draw(&on(Screen::Node(2)), 80, 24));
}

#[test]
fn worker_detail_ready_80x24() {
    insta::assert_snapshot!(draw(&on(Screen::Worker(0, "w1".into())), 80, 24));
}

#[test]
fn worker_detail_failed_80x24() {
    insta::assert_snapshot!(draw(&on(Screen::Worker(0, "w3".into())), 80, 24));
}

#[test]
fn worker_detail_loading_80x24() {
    insta::assert_snapshot!(draw(&on(Screen::Worker(0, "w2".into())), 80, 24));
}

#[test]
fn worker_detail_gone_80x24() {
    insta::assert_snapshot!(draw(&on(Screen::Worker(0, "w99".into())), 80, 24));
}

#[test]
fn events_80x24() {
    insta::assert_snapshot!(draw(&on(Screen::Events), 80, 24));
}

#[test]
fn events_filtered_80x24() {
    let mut s = on(Screen::Events);
    s.filter = "error".into();
    insta::assert_snapshot!(draw(&s, 80, 24));
}

fn prompt_state(run: PromptRun, output: &str) -> State {
    let mut s = on(Screen::Node(0));
    s.worker_sel = Some("w1".into());
    s.prompt = Some(PromptPane {
        node: 0,
        worker: Some("w1".into()),
        model: Some("/models/SmolLM2-135M-Instruct.Q4_1.gguf".into()),
        focused: true,
        input: String::new(),
        asked: "Write a haiku about GPUs".into(),
        output: output.into(),
        run: Some(run),
        ..PromptPane::default()
    });
    s
}

#[test]
fn prompt_streaming_80x24() {
    let run = PromptRun {
        id: 1,
        active: true,
        sent_at: Some(NOW - 1000),
        first_token_at: Some(NOW - 952),
        last_token_at: Some(NOW),
        tokens: 21,
        ..PromptRun::default()
    };
    insta::assert_snapshot!(draw(
        &prompt_state(run, "Silicon rivers run,\nten thousand cores hum in"),
        80,
        24
    ));
}

#[test]
fn prompt_done_wide() {
    let run = PromptRun {
        id: 1,
        active: false,
        sent_at: Some(NOW - 1000),
        first_token_at: Some(NOW - 952),
        last_token_at: Some(NOW),
        tokens: 24,
        usage: Some(rbee_proto::Usage {
            prompt_tokens: 9,
            generated_tokens: 24,
            time_to_first_token_ms: 47.0,
            prompt_tokens_per_s: 190.0,
            decode_tokens_per_s: 42.7,
            total_ms: 610.0,
        }),
        finish: Some(rbee_proto::FinishReason::Eos),
        worker: Some("w1".into()),
        ..PromptRun::default()
    };
    let mut s = prompt_state(
        run,
        "Silicon rivers run,\nten thousand cores hum in tune,\nweights wake into words.",
    );
    s.prompt.as_mut().unwrap().input = "and another".into();
    insta::assert_snapshot!(draw(&s, 120, 32));
}

#[test]
fn prompt_error_80x24() {
    let run = PromptRun {
        id: 1,
        active: false,
        sent_at: Some(NOW - 1000),
        error: Some("busy: worker w1 queue is full (8 requests)".into()),
        ..PromptRun::default()
    };
    insta::assert_snapshot!(draw(&prompt_state(run, ""), 80, 24));
}

#[test]
fn help_overlay_80x24() {
    let mut s = sample();
    s.popup = Some(Popup::Help);
    insta::assert_snapshot!(draw(&s, 80, 24));
}

#[test]
fn help_overlay_lists_every_binding() {
    let mut s = sample();
    s.popup = Some(Popup::Help);
    let screen = draw(&s, 140, 40);
    for b in BINDINGS {
        assert!(
            screen.contains(b.help),
            "help overlay lacks `{}`:\n{screen}",
            b.help
        );
        assert!(
            screen.contains(&keys::keys_label(b)),
            "help overlay lacks keys `{}`",
            keys::keys_label(b)
        );
    }
}

#[test]
fn footer_comes_from_the_table() {
    let mut s = on(Screen::Node(0));
    s.worker_sel = Some("w1".into());
    let screen = draw(&s, 200, 24);
    let footer = screen.lines().last().unwrap().to_string();
    for (key, word) in keys::footer(&s) {
        assert!(
            footer.contains(&format!("{key} {word}")),
            "footer lacks {key} {word}: {footer}"
        );
    }
    // On the Nodes screen there is no worker, so kill and restart are not offered.
    let screen = draw(&sample(), 200, 24);
    let footer = screen.lines().last().unwrap();
    assert!(!footer.contains("x kill"), "{footer}");
    assert!(footer.contains("s spawn"), "{footer}");
}

#[test]
fn confirm_kill_80x24() {
    let mut s = on(Screen::Node(0));
    s.popup = Some(Popup::Confirm(Pending::Kill {
        node: 0,
        worker: "w1".into(),
    }));
    insta::assert_snapshot!(draw(&s, 80, 24));
}

#[test]
fn confirm_unload_all_80x24() {
    let mut s = on(Screen::Node(0));
    let workers = s.nodes[0]
        .workers
        .iter()
        .map(|w| w.info.id.clone())
        .collect();
    s.popup = Some(Popup::Confirm(Pending::UnloadAll { node: 0, workers }));
    insta::assert_snapshot!(draw(&s, 80, 24));
}

#[test]
fn trust_host_key_80x24() {
    let mut s = on(Screen::Nodes);
    s.popup = Some(Popup::Confirm(Pending::TrustHostKey {
        req: rbee_tui::nodes::add::parse_dashboard_add(&["far", "me@gpu-a"]).unwrap(),
        host: "gpu-a:22".into(),
        key: "ssh-ed25519 SHA256:q1Vt8Zk0sJ0mXb0oQ2cX1m5b3n4e8Yk7QyU0mK3wZ9c".into(),
    }));
    let screen = draw(&s, 80, 24);
    assert!(
        screen.contains("SHA256:q1Vt8Zk0sJ0mXb0oQ2cX1m5b3n4e8Yk7QyU0mK3wZ9c"),
        "the whole fingerprint is shown:\n{screen}"
    );
    insta::assert_snapshot!(screen);
}

#[test]
fn spawn_dialog_80x24() {
    let mut s = on(Screen::Node(0));
    s.popup = Some(Popup::Spawn(SpawnDialog {
        node: 0,
        field: SpawnField::Device,
        model: 1,
        device: 3,
        count: 2,
    }));
    insta::assert_snapshot!(draw(&s, 80, 24));
}

#[test]
fn spawn_dialog_without_models_80x24() {
    let mut s = on(Screen::Node(1));
    s.popup = Some(Popup::Spawn(SpawnDialog {
        node: 1,
        field: SpawnField::Model,
        model: 0,
        device: 0,
        count: 1,
    }));
    insta::assert_snapshot!(draw(&s, 80, 24));
}

#[test]
fn filter_and_command_line_80x24() {
    let mut s = on(Screen::Node(0));
    s.input = Some(InputLine {
        kind: InputKind::Filter,
        text: "smol".into(),
    });
    s.filter = "smol".into();
    insta::assert_snapshot!("filter_typing_80x24", draw(&s, 80, 24));
    let mut s = sample();
    s.input = Some(InputLine {
        kind: InputKind::Command,
        text: "events".into(),
    });
    insta::assert_snapshot!("command_line_80x24", draw(&s, 80, 24));
}

#[test]
fn error_flash_80x24() {
    let mut s = sample();
    update(
        &mut s,
        Action::Reply {
            node: 0,
            request: rbee_proto::session::Request::Spawn(rbee_proto::session::SpawnSpec {
                model: "/models/Qwen2.5-0.5B-Instruct.Q8_0.gguf".into(),
                device: "cuda:1".into(),
                threads: None,
                ..Default::default()
            }),
            result: Err("insufficient_memory: needs 1.2 GiB, 0.8 GiB free on cuda:1".into()),
        },
    );
    insta::assert_snapshot!(draw(&s, 80, 24));
}

#[test]
fn tiny_terminal_does_not_panic() {
    let mut s = on(Screen::Worker(0, "w1".into()));
    s.prompt = prompt_state(PromptRun::default(), "x").prompt;
    for (w, h) in [(1, 1), (10, 3), (20, 5), (40, 10), (80, 24)] {
        for screen in [
            Screen::Nodes,
            Screen::Node(0),
            Screen::Worker(0, "w1".into()),
            Screen::Events,
        ] {
            s.screen = screen;
            for popup in [
                None,
                Some(Popup::Help),
                Some(Popup::Confirm(Pending::Kill {
                    node: 0,
                    worker: "w1".into(),
                })),
            ] {
                s.popup = popup;
                draw(&s, w, h);
            }
        }
    }
}

#[test]
fn worker_detail_with_unfocused_prompt_80x24() {
    let run = PromptRun {
        id: 1,
        tokens: 5,
        usage: None,
        finish: Some(rbee_proto::FinishReason::Length),
        ..PromptRun::default()
    };
    let mut s = prompt_state(run, "Silicon rivers run, ten thousand cores hum in tune, weights wake into words and the fans sing along");
    s.screen = Screen::Worker(0, "w1".into());
    s.prompt.as_mut().unwrap().focused = false;
    insta::assert_snapshot!(draw(&s, 80, 24));
}

/// A request as the gateway's board holds it.
fn request(
    id: u64,
    phase: rbee_tui::dashboard::board::Phase,
    node: &str,
) -> rbee_tui::dashboard::board::RequestRow {
    let placed = !node.is_empty();
    rbee_tui::dashboard::board::RequestRow {
        id,
        arrived: NOW - 9_000 + id * 1_000,
        client: format!("127.0.0.1:{}", 50_000 + id),
        key: (id == 2).then(|| "alice".into()),
        model: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        node: node.into(),
        worker: if placed {
            format!("w{id}")
        } else {
            String::new()
        },
        phase,
        queue_ms: placed.then_some(12 * id),
        ttft_ms: placed.then_some(300 + id),
        tokens: 10 * id,
        tok_s: 40.0 + id as f64,
        total_ms: None,
    }
}

#[test]
fn requests_screen_80x24() {
    use rbee_tui::dashboard::board::Phase;
    let mut s = on(Screen::Requests);
    s.serving = Some("127.0.0.1:8080".into());
    s.requests = vec![
        request(1, Phase::Done("ok".into()), "gpu-a"),
        request(2, Phase::Done("queue_full".into()), ""),
        request(3, Phase::Running, "gpu-b"),
        request(4, Phase::Waiting, ""),
    ];
    let screen = draw(&s, 80, 24);
    assert!(screen.contains("Requests"), "{screen}");
    assert!(screen.contains("gpu-b/w3"), "{screen}");
    insta::assert_snapshot!(screen);
}

#[test]
fn requests_screen_without_gateway_says_how_80x24() {
    let s = on(Screen::Requests);
    let screen = draw(&s, 80, 24);
    assert!(screen.contains("--serve"), "{screen}");
}
