//! `update` without a terminal: every key in the table does what its help says, destructive keys
//! ask first, and what agents report lands in the state.
mod common;

use common::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use rbee_proto::session::{Event, Reply, Request, SpawnSpec};
use rbee_proto::{ChatMessage, FinishReason, Role, Usage, WorkerState};
use rbee_tui::dashboard::action::{Action, Effect, InferDone};
use rbee_tui::dashboard::keys::{self, Cmd, Mode, BINDINGS};
use rbee_tui::dashboard::state::{
    Conn, EventKind, InputKind, InputLine, Pending, Popup, PromptPane, PromptRun, Screen,
    SpawnDialog, SpawnField, State,
};
use rbee_tui::dashboard::update::{key, update};

fn press(s: &mut State, ev: KeyEvent) -> Vec<Effect> {
    update(s, Action::Key(ev))
}

fn ch(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

/// The sample on the Node screen of gpu-a with w1 selected.
fn on_node() -> State {
    let mut s = sample();
    s.screen = Screen::Node(0);
    s.node_sel = 0;
    s.worker_sel = Some("w1".into());
    s
}

fn chat(role: Role, content: &str) -> ChatMessage {
    ChatMessage {
        role,
        content: content.into(),
    }
}

fn with_prompt(mut s: State, input: &str, active: bool) -> State {
    s.prompt = Some(PromptPane {
        node: 0,
        worker: Some("w1".into()),
        model: Some("m".into()),
        focused: true,
        input: input.into(),
        run: active.then(|| PromptRun {
            id: 7,
            active: true,
            ..PromptRun::default()
        }),
        ..PromptPane::default()
    });
    s
}

/// A state in `mode`, set up so that `cmd` has something to act on.
fn setup(mode: Mode, cmd: Cmd) -> State {
    let mut s = on_node();
    match mode {
        Mode::Normal => match cmd {
            Cmd::Up => s.worker_sel = Some("w2".into()),
            Cmd::Back => s.screen = Screen::Worker(0, "w1".into()),
            _ => {}
        },
        Mode::Prompt => {
            s = with_prompt(s, "hi", cmd == Cmd::PromptCancel);
            let p = s.prompt.as_mut().unwrap();
            p.history = vec![chat(Role::User, "q"), chat(Role::Assistant, "a")];
        }
        Mode::Input => {
            let kind = if cmd == Cmd::InputSubmit {
                InputKind::Command
            } else {
                InputKind::Filter
            };
            let text = if cmd == Cmd::InputSubmit {
                "events"
            } else {
                "ab"
            };
            s.input = Some(InputLine {
                kind,
                text: text.into(),
            });
            if kind == InputKind::Filter {
                s.filter = text.into();
            }
        }
        Mode::Confirm => {
            s.popup = Some(Popup::Confirm(Pending::Kill {
                node: 0,
                worker: "w1".into(),
            }))
        }
        Mode::Dialog => {
            s.popup = Some(Popup::Spawn(SpawnDialog {
                node: 0,
                field: SpawnField::Model,
                model: 0,
                device: 0,
                count: 1,
            }))
        }
        Mode::Help => s.popup = Some(Popup::Help),
    }
    assert_eq!(keys::mode(&s), mode, "setup for {cmd:?}");
    s
}

/// What the help text of `cmd` promises, checked on the state after the key.
#[allow(clippy::too_many_lines)] // a flat match: one arm per command of the key table
fn check(cmd: Cmd, s: &State, fx: &[Effect], label: &str) {
    let none = fx.is_empty();
    match cmd {
        Cmd::Up => assert_eq!(s.worker_sel.as_deref(), Some("w1"), "{label}"),
        Cmd::Down => assert_eq!(s.worker_sel.as_deref(), Some("w2"), "{label}"),
        Cmd::Open => {
            assert_eq!(s.screen, Screen::Worker(0, "w1".into()), "{label}");
            assert_eq!(
                fx,
                [Effect::Request {
                    node: 0,
                    request: Request::TailLog {
                        worker: "w1".into(),
                        lines: 200
                    }
                }]
            );
        }
        Cmd::Back => assert_eq!(s.screen, Screen::Node(0), "{label}"),
        Cmd::SwitchPane => match &s.prompt {
            Some(p) => assert!(!p.focused, "{label}: focus goes to the table"),
            None => assert_eq!(s.screen, Screen::Events, "{label}"),
        },
        Cmd::Spawn => {
            assert!(matches!(s.popup, Some(Popup::Spawn(_))), "{label}");
            assert_eq!(
                fx,
                [Effect::Request {
                    node: 0,
                    request: Request::ListModels
                }],
                "{label}: refreshes the catalog"
            );
        }
        Cmd::Kill => {
            assert_eq!(
                s.popup,
                Some(Popup::Confirm(Pending::Kill {
                    node: 0,
                    worker: "w1".into()
                })),
                "{label}"
            );
            assert!(none, "{label}: nothing is sent before confirmation");
        }
        Cmd::Restart => {
            assert_eq!(
                s.popup,
                Some(Popup::Confirm(Pending::Restart {
                    node: 0,
                    worker: "w1".into()
                })),
                "{label}"
            );
            assert!(none, "{label}: nothing is sent before confirmation");
        }
        Cmd::Requests => assert_eq!(s.screen, Screen::Requests, "{label}"),
        Cmd::UnloadAll => {
            let Some(Popup::Confirm(Pending::UnloadAll { node: 0, workers })) = &s.popup else {
                panic!("{label}: {:?}", s.popup)
            };
            let all: Vec<String> = s.nodes[0]
                .workers
                .iter()
                .map(|w| w.info.id.clone())
                .collect();
            assert!(workers.len() > 1 && *workers == all, "{label}: {workers:?}");
            assert!(none, "{label}: nothing is sent before confirmation");
        }
        Cmd::Prompt => {
            let p = s.prompt.as_ref().expect(label);
            assert!(p.focused && p.worker.as_deref() == Some("w1"), "{label}");
        }
        Cmd::Filter => assert_eq!(
            s.input.as_ref().map(|i| i.kind),
            Some(InputKind::Filter),
            "{label}"
        ),
        Cmd::CommandLine => assert_eq!(
            s.input.as_ref().map(|i| i.kind),
            Some(InputKind::Command),
            "{label}"
        ),
        Cmd::Help => assert_eq!(s.popup, Some(Popup::Help), "{label}"),
        Cmd::Quit => assert!(s.should_quit, "{label}"),
        Cmd::PromptSend => {
            let [Effect::Infer {
                node: 0,
                request: Request::Chat {
                    worker, messages, ..
                },
                ..
            }] = fx
            else {
                panic!("{label}: {fx:?}")
            };
            assert_eq!(worker.as_deref(), Some("w1"), "{label}");
            let want = [
                chat(Role::User, "q"),
                chat(Role::Assistant, "a"),
                chat(Role::User, "hi"),
            ];
            assert_eq!(
                messages[..],
                want,
                "{label}: the history goes with the turn"
            );
            assert!(s.prompt.as_ref().unwrap().run.as_ref().unwrap().active);
        }
        Cmd::PromptNew => {
            let p = s.prompt.as_ref().unwrap();
            assert!(p.history.is_empty() && p.run.is_none() && none, "{label}");
        }
        Cmd::PromptCancel => {
            assert_eq!(fx, [Effect::CancelInfer { node: 0, prompt: 7 }], "{label}");
            assert!(!s.prompt.as_ref().unwrap().run.as_ref().unwrap().active);
        }
        Cmd::DeleteChar => match &s.input {
            Some(i) => assert_eq!((i.text.as_str(), s.filter.as_str()), ("a", "a"), "{label}"),
            None => assert_eq!(s.prompt.as_ref().unwrap().input, "h", "{label}"),
        },
        Cmd::InputSubmit => assert_eq!(
            (s.input.is_none(), &s.screen),
            (true, &Screen::Events),
            "{label}"
        ),
        Cmd::InputCancel => assert!(s.input.is_none() && s.filter.is_empty(), "{label}"),
        Cmd::ConfirmYes => {
            assert_eq!(
                fx,
                [Effect::Request {
                    node: 0,
                    request: Request::Kill {
                        worker: "w1".into()
                    }
                }],
                "{label}"
            );
            assert!(s.popup.is_none());
        }
        Cmd::ConfirmNo => assert!(s.popup.is_none() && none, "{label}"),
        Cmd::DialogNext => assert_eq!(dialog(s).field, SpawnField::Device, "{label}"),
        Cmd::DialogPrev => assert_eq!(dialog(s).field, SpawnField::Count, "{label}"),
        Cmd::DialogLess => assert_eq!(dialog(s).model, 1, "{label}: wraps to the last model"),
        Cmd::DialogMore => assert_eq!(dialog(s).model, 1, "{label}"),
        Cmd::DialogSubmit => {
            // `auto` comes first on a node with GPUs: the agent picks the GPU.
            let spec = SpawnSpec {
                model: "/models/SmolLM2-135M-Instruct.Q4_1.gguf".into(),
                device: "auto".into(),
                threads: None,
                ..Default::default()
            };
            assert_eq!(
                fx,
                [Effect::Request {
                    node: 0,
                    request: Request::Spawn(spec)
                }],
                "{label}"
            );
            assert!(s.popup.is_none());
        }
        Cmd::DialogCancel | Cmd::HelpClose => assert!(s.popup.is_none() && none, "{label}"),
    }
}

fn dialog(s: &State) -> &SpawnDialog {
    match &s.popup {
        Some(Popup::Spawn(d)) => d,
        other => panic!("no dialog: {other:?}"),
    }
}

#[test]
fn every_key_in_the_table_does_what_it_says() {
    for b in BINDINGS {
        for k in b.keys {
            let mut s = setup(b.mode, b.cmd);
            let fx = press(&mut s, k.event());
            let label = format!("{:?} key `{}` ({:?}: {})", b.mode, k.label(), b.cmd, b.help);
            check(b.cmd, &s, &fx, &label);
        }
    }
}

#[test]
fn no_key_is_bound_twice_in_one_mode() {
    for (i, a) in BINDINGS.iter().enumerate() {
        for b in &BINDINGS[i + 1..] {
            if a.mode == b.mode {
                for k in a.keys {
                    assert!(
                        !b.keys.contains(k),
                        "{:?}: `{}` bound to {:?} and {:?}",
                        a.mode,
                        k.label(),
                        a.cmd,
                        b.cmd
                    );
                }
            }
        }
    }
}

#[test]
fn kill_asks_first_and_only_y_confirms() {
    let others = [
        ch('n'),
        ch('x'),
        ch('Y'),
        ch('q'),
        key_ev(KeyCode::Esc),
        key_ev(KeyCode::Enter),
        ch(' '),
    ];
    for other in others {
        let mut s = on_node();
        assert!(press(&mut s, ch('x')).is_empty(), "x alone sends nothing");
        assert!(matches!(
            s.popup,
            Some(Popup::Confirm(Pending::Kill { .. }))
        ));
        let fx = press(&mut s, other);
        assert!(fx.is_empty(), "{other:?} must not kill: {fx:?}");
        assert!(s.popup.is_none(), "{other:?} closes the popup");
        assert!(!s.should_quit, "{other:?} in the popup must not quit");
    }
    let mut s = on_node();
    press(&mut s, ch('x'));
    let fx = press(&mut s, ch('y'));
    assert_eq!(
        fx,
        vec![Effect::Request {
            node: 0,
            request: Request::Kill {
                worker: "w1".into()
            }
        }]
    );
}

#[test]
fn restart_goes_through_the_same_confirmation() {
    let mut s = on_node();
    assert!(press(&mut s, ch('r')).is_empty());
    assert!(press(&mut s, ch('n')).is_empty());
    press(&mut s, ch('r'));
    assert_eq!(
        press(&mut s, ch('y')),
        vec![Effect::Request {
            node: 0,
            request: Request::Restart {
                worker: "w1".into()
            }
        }]
    );
}

#[test]
fn kill_without_a_worker_explains() {
    let mut s = sample();
    assert!(press(&mut s, ch('x')).is_empty());
    assert!(s.popup.is_none());
    assert!(s.flash.as_ref().is_some_and(|f| f.error), "{:?}", s.flash);
}

fn key_ev(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

#[test]
fn navigation_between_screens() {
    let mut s = sample();
    press(&mut s, ch('j'));
    assert_eq!(s.node_sel, 1);
    press(&mut s, ch('k'));
    press(&mut s, ch('k'));
    assert_eq!(s.node_sel, 0, "stays at the top");
    press(&mut s, key_ev(KeyCode::Enter));
    assert_eq!(s.screen, Screen::Node(0));
    press(&mut s, key_ev(KeyCode::Down));
    assert_eq!(s.worker_sel.as_deref(), Some("w2"));
    press(&mut s, key_ev(KeyCode::Enter));
    assert_eq!(s.screen, Screen::Worker(0, "w2".into()));
    press(&mut s, key_ev(KeyCode::Esc));
    assert_eq!(s.screen, Screen::Node(0));
    assert_eq!(s.worker_sel.as_deref(), Some("w2"), "selection kept");
    press(&mut s, key_ev(KeyCode::Tab));
    assert_eq!(s.screen, Screen::Events);
    press(&mut s, key_ev(KeyCode::Tab));
    assert_eq!(s.screen, Screen::Node(0), "tab returns to where we were");
    press(&mut s, key_ev(KeyCode::Esc));
    assert_eq!(s.screen, Screen::Nodes);
}

#[test]
fn filter_narrows_and_esc_clears() {
    let mut s = on_node();
    press(&mut s, ch('/'));
    for c in "fail".chars() {
        press(&mut s, ch(c));
    }
    assert_eq!(s.filter, "fail");
    let ids: Vec<_> = s
        .visible_workers(0)
        .iter()
        .map(|w| w.info.id.clone())
        .collect();
    assert_eq!(ids, ["w3"]);
    press(&mut s, key_ev(KeyCode::Enter));
    assert!(s.input.is_none());
    assert_eq!(
        s.selected_worker(),
        Some((0, "w3".into())),
        "the only visible worker is the selection"
    );
    press(&mut s, key_ev(KeyCode::Esc));
    assert!(s.filter.is_empty());
    assert_eq!(
        s.screen,
        Screen::Node(0),
        "first esc only clears the filter"
    );
}

#[test]
fn command_line() {
    let run = |cmd: &str| {
        let mut s = on_node();
        press(&mut s, ch(':'));
        for c in cmd.chars() {
            press(&mut s, ch(c));
        }
        press(&mut s, key_ev(KeyCode::Enter));
        s
    };
    assert_eq!(run("nodes").screen, Screen::Nodes);
    assert_eq!(run("events").screen, Screen::Events);
    assert_eq!(run("node cpu-b").screen, Screen::Node(1));
    assert!(run("q").should_quit);
    assert!(run("quit").should_quit);
    let s = run("frobnicate");
    assert!(s
        .flash
        .as_ref()
        .is_some_and(|f| f.error && f.text.contains("frobnicate")));
    assert!(!s.should_quit);
}

#[test]
fn add_command_asks_for_the_node_as_an_effect() {
    let typed = |s: &mut State, cmd: &str| {
        press(s, ch(':'));
        for c in cmd.chars() {
            press(s, ch(c));
        }
        press(s, key_ev(KeyCode::Enter))
    };
    let mut s = on_node();
    let effects = typed(&mut s, "add far me@gpu-a:2222 --ephemeral");
    let [Effect::AddNode(req)] = effects.as_slice() else {
        panic!(":add asks for the node and nothing else: {effects:?}")
    };
    assert_eq!(req.node.name, "far");
    assert_eq!(req.node.ssh.as_deref(), Some("me@gpu-a:2222"));
    assert!(req.node.ephemeral && !req.accept_new_host_key);
    assert!(s
        .flash
        .as_ref()
        .is_some_and(|f| !f.error && f.text.contains("adding far")));

    let name = s.nodes[0].name.clone();
    assert!(
        typed(&mut s, &format!("add {name} me@h")).is_empty(),
        "a taken name"
    );
    assert!(s
        .flash
        .as_ref()
        .is_some_and(|f| f.error && f.text.contains("exists already")));
    assert!(typed(&mut s, "add far me@h --bogus").is_empty());
    assert!(s
        .flash
        .as_ref()
        .is_some_and(|f| f.error && f.text.contains("--bogus")));
}

#[test]
fn typing_q_in_the_prompt_does_not_quit() {
    let mut s = on_node();
    press(&mut s, ch('p'));
    for c in "quit?".chars() {
        press(&mut s, ch(c));
    }
    assert!(!s.should_quit);
    assert_eq!(s.prompt.as_ref().unwrap().input, "quit?");
}

#[test]
fn prompt_streams_and_reports_speed() {
    let mut s = on_node();
    press(&mut s, ch('p'));
    for c in "hello".chars() {
        press(&mut s, ch(c));
    }
    let fx = press(&mut s, key_ev(KeyCode::Enter));
    let [Effect::Infer { prompt, .. }] = fx[..] else {
        panic!("{fx:?}")
    };
    update(&mut s, Action::PromptSent { prompt, at: NOW });
    for (i, t) in ["Hel", "lo", " there"].iter().enumerate() {
        update(
            &mut s,
            Action::PromptToken {
                prompt,
                text: t.to_string(),
                at: NOW + 50 + i as u64 * 100,
            },
        );
    }
    // Tokens of some other prompt are not ours.
    update(
        &mut s,
        Action::PromptToken {
            prompt: prompt + 1,
            text: "XX".into(),
            at: NOW,
        },
    );
    let pane = s.prompt.as_ref().unwrap();
    assert_eq!(pane.output, "Hello there");
    let run = pane.run.as_ref().unwrap();
    assert_eq!(run.ttft_ms(), Some(50.0));
    assert_eq!(run.tokens_per_s(), Some(10.0));
    let usage = Usage {
        generated_tokens: 3,
        time_to_first_token_ms: 48.0,
        decode_tokens_per_s: 11.5,
        ..Usage::default()
    };
    update(
        &mut s,
        Action::PromptDone {
            prompt,
            result: Ok(InferDone {
                worker: "w1".into(),
                finish_reason: FinishReason::Length,
                usage,
            }),
            at: NOW + 300,
        },
    );
    let run = s.prompt.as_ref().unwrap().run.as_ref().unwrap();
    assert!(!run.active);
    assert_eq!(
        run.ttft_ms(),
        Some(48.0),
        "the agent's figure wins once done"
    );
    assert_eq!(run.tokens_per_s(), Some(11.5));
}

#[test]
fn cancel_stops_the_stream_and_hides_the_cancelled_error() {
    let mut s = with_prompt(on_node(), "", true);
    let fx = press(
        &mut s,
        KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
    );
    assert_eq!(fx, vec![Effect::CancelInfer { node: 0, prompt: 7 }]);
    assert!(
        !s.should_quit,
        "ctrl-c in the prompt cancels, it does not quit"
    );
    update(
        &mut s,
        Action::PromptToken {
            prompt: 7,
            text: "late".into(),
            at: NOW,
        },
    );
    update(
        &mut s,
        Action::PromptDone {
            prompt: 7,
            result: Err("cancelled: by client".into()),
            at: NOW,
        },
    );
    let pane = s.prompt.as_ref().unwrap();
    assert_eq!(pane.output, "", "tokens after cancel are dropped");
    assert!(pane.run.as_ref().unwrap().error.is_none());
    // A second esc closes the pane.
    press(&mut s, key_ev(KeyCode::Esc));
    assert!(s.prompt.is_none());
}

#[test]
fn prompt_from_nodes_screen_targets_a_ready_model() {
    let mut s = sample();
    press(&mut s, ch('p'));
    let p = s.prompt.as_ref().unwrap();
    assert_eq!(
        (p.worker.as_deref(), p.model.as_deref()),
        (None, Some("/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    );
    // The unreachable node's workers are not offered.
    let mut s = sample();
    s.node_sel = 2;
    s.nodes[2].workers.clear();
    press(&mut s, ch('p'));
    assert!(s.prompt.is_none());
    assert!(s.flash.as_ref().is_some_and(|f| f.error));
}

#[test]
fn spawn_dialog_submits_count_times_on_the_chosen_device() {
    let mut s = on_node();
    press(&mut s, ch('s'));
    press(&mut s, key_ev(KeyCode::Right)); // model 2
    press(&mut s, key_ev(KeyCode::Tab));
    press(&mut s, key_ev(KeyCode::Right)); // cpu (auto comes first on a node with GPUs)
    press(&mut s, key_ev(KeyCode::Right)); // cuda:0
    press(&mut s, key_ev(KeyCode::Right)); // cuda:1
    press(&mut s, key_ev(KeyCode::Tab));
    press(&mut s, ch('+'));
    press(&mut s, ch('+'));
    let fx = press(&mut s, key_ev(KeyCode::Enter));
    let spec = SpawnSpec {
        model: "/models/Qwen2.5-0.5B-Instruct.Q8_0.gguf".into(),
        device: "cuda:1".into(),
        threads: None,
        ..Default::default()
    };
    assert_eq!(
        fx,
        vec![
            Effect::Request {
                node: 0,
                request: Request::Spawn(spec)
            };
            3
        ]
    );
}

#[test]
fn spawn_on_an_unreachable_node_is_refused() {
    let mut s = sample();
    s.node_sel = 2;
    assert!(press(&mut s, ch('s')).is_empty());
    assert!(s.popup.is_none());
    assert!(s.flash.as_ref().unwrap().text.contains("unreachable"));
}

#[test]
fn worker_state_changes_become_events() {
    let mut s = sample();
    let before = s.events.len();
    let mut w = worker(
        "w2",
        "/models/Qwen2.5-0.5B-Instruct.Q8_0.gguf",
        "cuda:1",
        WorkerState::Ready,
    );
    w.heartbeat_age_ms = Some(0);
    update(
        &mut s,
        agent_event(0, Event::WorkerState { worker: w.clone() }),
    );
    assert_eq!(s.events.len(), before + 1);
    assert_eq!(s.events[0].text, "w2 loading → ready");
    let view = s.nodes[0].worker("w2").unwrap();
    assert_eq!(view.states.back().unwrap().state, WorkerState::Ready);
    // The same state again is not news.
    update(&mut s, agent_event(0, Event::WorkerState { worker: w }));
    assert_eq!(s.events.len(), before + 1);
    // A failure is an error event carrying the exit reason.
    let mut f = worker("w1", "/m.gguf", "cuda:0", WorkerState::Failed);
    f.last_exit = Some("signal 9".into());
    update(&mut s, agent_event(0, Event::WorkerState { worker: f }));
    assert_eq!(s.events[0].kind, EventKind::Error);
    assert!(
        s.events[0].text.ends_with("signal 9"),
        "{}",
        s.events[0].text
    );
    // A new worker is inserted in natural order.
    update(
        &mut s,
        agent_event(
            0,
            Event::WorkerState {
                worker: worker("w4", "/m.gguf", "cpu", WorkerState::Starting),
            },
        ),
    );
    let ids: Vec<_> = s.nodes[0]
        .workers
        .iter()
        .map(|w| w.info.id.as_str())
        .collect();
    assert_eq!(ids, ["w1", "w2", "w3", "w4", "w10"]);
}

#[test]
fn heartbeats_and_telemetry_feed_the_graphs() {
    let mut s = sample();
    let before = s.nodes[0].cpu_history.len();
    update(
        &mut s,
        agent_event(
            0,
            Event::Heartbeat {
                worker: "w1".into(),
                tokens_per_s: 50.4,
                rss_bytes: 1,
                in_flight: 1,
            },
        ),
    );
    let w = s.nodes[0].worker("w1").unwrap();
    assert_eq!(
        (w.info.tokens_per_s, w.tokps.last(), w.heartbeat_age_ms(NOW)),
        (50.4, Some(50), Some(0))
    );
    let t = s.nodes[0].telemetry.clone().unwrap();
    update(&mut s, agent_event(0, Event::Telemetry { telemetry: t }));
    assert_eq!(s.nodes[0].cpu_history.len(), before + 1);
    assert_eq!(s.nodes[0].gpu_history[1].last(), Some(95));
}

#[test]
fn audit_entries_are_listed_newest_first() {
    let mut s = sample();
    update(&mut s, agent_event(0, audit("auth_failed")));
    assert_eq!(s.events[0].kind, EventKind::Audit);
    assert_eq!(s.events[0].text, "auth_failed");
}

#[test]
fn disconnect_shows_the_reason_once_and_connect_clears_it() {
    let mut s = sample();
    let before = s.events.len();
    let down = |s: &mut State| {
        update(
            s,
            Action::Disconnected {
                node: 1,
                reason: "connection reset".into(),
                retry_in_ms: 2000,
            },
        );
    };
    down(&mut s);
    down(&mut s);
    assert!(
        matches!(&s.nodes[1].conn, Conn::Unreachable { reason, .. } if reason == "connection reset")
    );
    assert_eq!(
        s.events.len(),
        before + 1,
        "repeated failures with the same reason are one event"
    );
    update(
        &mut s,
        Action::Connecting {
            node: 1,
            attempt: 2,
        },
    );
    assert!(
        matches!(s.nodes[1].conn, Conn::Unreachable { .. }),
        "keeps the reason while retrying"
    );
    update(
        &mut s,
        Action::Connected {
            node: 1,
            url: "ws://127.0.0.1:7734".into(),
            agent_version: "0.1.0".into(),
            agent_node: "laptop".into(),
        },
    );
    assert_eq!(s.nodes[1].conn, Conn::Connected);
}

#[test]
fn failed_requests_say_what_failed() {
    let mut s = sample();
    update(
        &mut s,
        Action::Reply {
            node: 0,
            request: Request::Kill {
                worker: "w9".into(),
            },
            result: Err("not_found: no worker w9".into()),
        },
    );
    let f = s.flash.as_ref().unwrap();
    assert!(
        f.error && f.text.contains("kill w9") && f.text.contains("not_found"),
        "{}",
        f.text
    );
    assert_eq!(s.events[0].kind, EventKind::Error);
}

#[test]
fn replies_fill_the_state() {
    let mut s = sample();
    let w = worker("w1", "/x.gguf", "cpu", WorkerState::Ready);
    update(
        &mut s,
        Action::Reply {
            node: 1,
            request: Request::ListWorkers,
            result: Ok(Reply::Workers { workers: vec![] }),
        },
    );
    assert!(
        s.nodes[1].workers.is_empty(),
        "a snapshot replaces the list"
    );
    update(
        &mut s,
        Action::Reply {
            node: 1,
            request: Request::ListWorkers,
            result: Ok(Reply::Workers { workers: vec![w] }),
        },
    );
    assert_eq!(s.nodes[1].workers.len(), 1);
    update(
        &mut s,
        Action::Reply {
            node: 1,
            request: Request::TailLog {
                worker: "w1".into(),
                lines: 200,
            },
            result: Ok(Reply::Log {
                worker: "w1".into(),
                lines: vec!["a".into(), "b".into()],
            }),
        },
    );
    assert_eq!(s.nodes[1].workers[0].log, ["a", "b"]);
    update(
        &mut s,
        agent_event(
            1,
            Event::Log {
                worker: "w1".into(),
                line: "c".into(),
            },
        ),
    );
    assert_eq!(
        s.nodes[1].workers[0].log.back().map(String::as_str),
        Some("c")
    );
}

#[test]
fn help_opens_and_closes() {
    let mut s = sample();
    press(&mut s, ch('?'));
    assert_eq!(s.popup, Some(Popup::Help));
    // Keys of other modes do nothing while help is open.
    assert!(press(&mut s, ch('x')).is_empty());
    assert!(!s.should_quit);
    press(&mut s, ch('q'));
    assert!(s.popup.is_none() && !s.should_quit, "q closes help first");
}

#[test]
fn footer_offers_only_what_applies() {
    let s = sample();
    let words: Vec<_> = keys::footer(&s).into_iter().map(|(_, w)| w).collect();
    assert!(
        !words.contains(&"kill") && !words.contains(&"back"),
        "{words:?}"
    );
    let s = on_node();
    let words: Vec<_> = keys::footer(&s).into_iter().map(|(_, w)| w).collect();
    assert!(
        words.contains(&"kill") && words.contains(&"restart") && words.contains(&"back"),
        "{words:?}"
    );
    let s = setup(Mode::Confirm, Cmd::ConfirmYes);
    let words: Vec<_> = keys::footer(&s).into_iter().map(|(_, w)| w).collect();
    assert_eq!(words, ["yes", "no"]);
}

#[test]
fn key_release_is_ignored() {
    let mut s = sample();
    let mut ev = ch('q');
    ev.kind = crossterm::event::KeyEventKind::Release;
    press(&mut s, ev);
    assert!(!s.should_quit);
    let _ = key(KeyCode::Esc);
}

#[test]
fn an_open_worker_screen_refreshes_its_log() {
    let mut s = on_node();
    let fx = press(&mut s, key_ev(KeyCode::Enter));
    assert_eq!(fx.len(), 1, "log fetched on open");
    s.now += 500;
    assert!(update(&mut s, Action::Tick).is_empty(), "not again so soon");
    s.now += 2000;
    let fx = update(&mut s, Action::Tick);
    assert_eq!(
        fx,
        vec![Effect::Request {
            node: 0,
            request: Request::TailLog {
                worker: "w1".into(),
                lines: 200
            }
        }]
    );
    // Not on other screens.
    press(&mut s, key_ev(KeyCode::Esc));
    s.now += 5000;
    assert!(update(&mut s, Action::Tick).is_empty());
}

#[test]
fn killed_workers_leave_the_table() {
    let mut s = on_node();
    update(
        &mut s,
        Action::Reply {
            node: 0,
            request: Request::Kill {
                worker: "w1".into(),
            },
            result: Ok(Reply::Killed {
                worker: "w1".into(),
            }),
        },
    );
    assert!(s.nodes[0].worker("w1").is_none());
    let mut w = worker("w2", "/m.gguf", "cuda:1", WorkerState::Exited);
    w.last_exit = Some("killed".into());
    update(&mut s, agent_event(0, Event::WorkerState { worker: w }));
    assert!(s.nodes[0].worker("w2").is_none());
    assert_eq!(s.events[0].text, "w2 loading → exited");
}

#[test]
fn unknown_host_key_is_asked_about_and_only_y_trusts_it() {
    let req = rbee_tui::nodes::add::parse_dashboard_add(&["far", "me@gpu-a"]).unwrap();
    assert!(!req.accept_new_host_key);
    let asked = || Action::HostKeyUnknown {
        req: req.clone(),
        host: "gpu-a:22".into(),
        key: "ssh-ed25519 SHA256:abc".into(),
    };
    let mut s = on_node();
    assert!(update(&mut s, asked()).is_empty());
    assert!(
        matches!(s.popup, Some(Popup::Confirm(Pending::TrustHostKey { .. }))),
        "{:?}",
        s.popup
    );
    assert!(
        press(&mut s, ch('n')).is_empty(),
        "n refuses the key and adds nothing"
    );
    assert!(s.popup.is_none());

    update(&mut s, asked());
    let effects = press(&mut s, ch('y'));
    let [Effect::AddNode(retry)] = effects.as_slice() else {
        panic!("y retries the add, and sends nothing to any agent: {effects:?}")
    };
    assert!(
        retry.accept_new_host_key,
        "the retry accepts the key it showed"
    );
    assert_eq!(retry.node, req.node);
    assert!(s.popup.is_none());
}

/// `:unload-all` asks about every worker of the current node; `y` kills each, any other key
/// sends nothing.
#[test]
fn unload_all_asks_then_kills_every_worker_of_the_node() {
    let mut s = on_node();
    let all: Vec<String> = s.nodes[0]
        .workers
        .iter()
        .map(|w| w.info.id.clone())
        .collect();
    assert!(all.len() > 1);
    s.input = Some(InputLine {
        kind: InputKind::Command,
        text: "unload-all".into(),
    });
    assert!(press(&mut s, KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE)).is_empty());
    let asked = s.popup.clone();
    assert_eq!(
        asked,
        Some(Popup::Confirm(Pending::UnloadAll {
            node: 0,
            workers: all.clone()
        }))
    );
    assert!(press(&mut s, ch('z')).is_empty(), "any other key cancels");
    assert!(s.popup.is_none());
    s.popup = asked;
    let fx = press(&mut s, ch('y'));
    let want: Vec<Effect> = all
        .iter()
        .map(|w| Effect::Request {
            node: 0,
            request: Request::Kill { worker: w.clone() },
        })
        .collect();
    assert_eq!(fx, want);
    assert!(s.popup.is_none());
    // A node without workers: said so, no popup.
    let mut s = sample();
    s.nodes[1].workers.clear();
    s.node_sel = 1;
    assert!(press(&mut s, ch('U')).is_empty());
    assert!(s.popup.is_none());
    assert!(s.flash.is_some());
}
