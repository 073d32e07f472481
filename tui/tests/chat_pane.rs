//! The prompt pane as a conversation, driven key by key through `update` and drawn on a
//! `TestBackend`: turns with their roles, the history sent with each turn, the system turn, a new
//! conversation, the completion fallback for a model without a chat template, and agent text that
//! cannot drive the terminal.
mod common;

use common::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use rbee_proto::session::Request;
use rbee_proto::{ChatMessage, FinishReason, Role, Usage};
use rbee_tui::dashboard::action::{Action, Effect, InferDone};
use rbee_tui::dashboard::state::{PromptId, Screen, State};
use rbee_tui::dashboard::update::update;
use rbee_tui::dashboard::view;

fn draw(state: &State, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| view::render(state, f)).unwrap();
    t.backend().to_string()
}

fn press(s: &mut State, code: KeyCode, mods: KeyModifiers) -> Vec<Effect> {
    update(s, Action::Key(KeyEvent::new(code, mods)))
}

fn type_line(s: &mut State, text: &str) -> Vec<Effect> {
    for c in text.chars() {
        press(s, KeyCode::Char(c), KeyModifiers::NONE);
    }
    press(s, KeyCode::Enter, KeyModifiers::NONE)
}

fn msg(role: Role, content: &str) -> ChatMessage {
    ChatMessage {
        role,
        content: content.into(),
    }
}

/// The pane open on w1 of gpu-a (the sample's SmolLM2 worker, which has a chat template).
fn pane_on_w1() -> State {
    let mut s = sample();
    s.screen = Screen::Node(0);
    s.node_sel = 0;
    s.worker_sel = Some("w1".into());
    press(&mut s, KeyCode::Char('p'), KeyModifiers::NONE);
    s
}

/// The answer `text` streamed for `prompt`, then its end.
fn answer(s: &mut State, prompt: PromptId, text: &str) {
    update(s, Action::PromptSent { prompt, at: NOW });
    update(
        s,
        Action::PromptToken {
            prompt,
            text: text.into(),
            at: NOW + 40,
        },
    );
    update(
        s,
        Action::PromptDone {
            prompt,
            result: Ok(InferDone {
                worker: "w1".into(),
                finish_reason: FinishReason::Eos,
                usage: Usage {
                    generated_tokens: 7,
                    time_to_first_token_ms: 40.0,
                    decode_tokens_per_s: 30.0,
                    ..Usage::default()
                },
            }),
            at: NOW + 200,
        },
    );
}

/// The one chat turn in `fx`: its prompt id and messages.
fn chat_turn(fx: &[Effect]) -> (PromptId, Vec<ChatMessage>) {
    match fx {
        [Effect::Infer {
            node: 0,
            prompt,
            request: Request::Chat {
                worker, messages, ..
            },
        }] => {
            assert_eq!(worker.as_deref(), Some("w1"));
            (*prompt, messages.clone())
        }
        _ => panic!("not one chat turn: {fx:?}"),
    }
}

#[test]
fn a_conversation_sends_its_history_and_shows_roles() {
    let mut s = pane_on_w1();
    assert!(type_line(&mut s, "/system Answer in one sentence.").is_empty());
    let (p1, m1) = chat_turn(&type_line(&mut s, "What is the capital of France?"));
    assert_eq!(
        m1,
        [
            msg(Role::System, "Answer in one sentence."),
            msg(Role::User, "What is the capital of France?"),
        ]
    );
    answer(&mut s, p1, "The capital of France is Paris.");
    let (p2, m2) = chat_turn(&type_line(&mut s, "And of Italy?"));
    assert_eq!(
        m2.len(),
        4,
        "system, the first exchange, the new question: {m2:?}"
    );
    assert_eq!(
        m2[2],
        msg(Role::Assistant, "The capital of France is Paris.")
    );
    assert_eq!(m2[3], msg(Role::User, "And of Italy?"));
    update(
        &mut s,
        Action::PromptToken {
            prompt: p2,
            text: "Rome".into(),
            at: NOW + 500,
        },
    );
    let screen = draw(&s, 80, 24);
    assert_eq!(screen.matches("system ›").count(), 1, "{screen}");
    insta::assert_snapshot!(screen);
}

#[test]
fn ctrl_n_starts_a_new_conversation() {
    let mut s = pane_on_w1();
    type_line(&mut s, "/system Be brief.");
    let (p1, _) = chat_turn(&type_line(&mut s, "Hi"));
    answer(&mut s, p1, "Hello!");
    assert_eq!(s.prompt.as_ref().unwrap().history.len(), 2);
    press(&mut s, KeyCode::Char('n'), KeyModifiers::CONTROL);
    let pane = s.prompt.as_ref().unwrap();
    assert!(pane.history.is_empty() && pane.run.is_none() && pane.output.is_empty());
    assert_eq!(pane.system, "Be brief.", "the system turn stays");
    let screen = draw(&s, 80, 24);
    assert!(
        !screen.contains("Hello!") && !screen.contains("user ›"),
        "{screen}"
    );
    insta::assert_snapshot!(screen);
    // The next turn starts from nothing but the system turn.
    let (_, m) = chat_turn(&type_line(&mut s, "Again"));
    assert_eq!(
        m,
        [msg(Role::System, "Be brief."), msg(Role::User, "Again")]
    );
    // `/clear` typed in the pane does the same once the answer is in.
}

#[test]
fn a_model_without_a_chat_template_falls_back_to_completion_and_says_so() {
    let mut s = sample();
    for w in &mut s.nodes[0].workers {
        if let Some(sum) = w.info.summary.as_mut() {
            sum.chat_template = None;
        }
    }
    s.screen = Screen::Node(0);
    s.worker_sel = Some("w1".into());
    press(&mut s, KeyCode::Char('p'), KeyModifiers::NONE);
    assert!(s.prompt.as_ref().unwrap().completion);
    let fx = type_line(&mut s, "The capital of France is");
    let [Effect::Infer {
        request: Request::Infer { prompt, worker, .. },
        ..
    }] = &fx[..]
    else {
        panic!("not a completion: {fx:?}")
    };
    assert_eq!(
        (prompt.as_str(), worker.as_deref()),
        ("The capital of France is", Some("w1"))
    );
    let screen = draw(&s, 100, 24);
    assert!(
        screen.contains("completion: model has no chat template"),
        "{screen}"
    );
    insta::assert_snapshot!(screen);
}

#[test]
fn control_characters_from_the_agent_are_shown_not_obeyed() {
    let mut s = pane_on_w1();
    let (p, _) = chat_turn(&type_line(&mut s, "hi"));
    answer(&mut s, p, "ok\u{1b}]0;pwned\u{7}\u{1b}[2J done");
    let screen = draw(&s, 80, 24);
    assert!(
        !screen.contains('\u{1b}') && !screen.contains('\u{7}'),
        "{screen:?}"
    );
    assert!(screen.contains("\\x1b]0;pwned\\x07"), "{screen}");
}

#[test]
fn system_command_line_sets_the_system_turn() {
    let mut s = pane_on_w1();
    press(&mut s, KeyCode::Tab, KeyModifiers::NONE); // focus the table
    type_line(&mut s, ":system You are terse.");
    assert_eq!(s.prompt.as_ref().unwrap().system, "You are terse.");
    press(&mut s, KeyCode::Tab, KeyModifiers::NONE);
    let (_, m) = chat_turn(&type_line(&mut s, "hi"));
    assert_eq!(m[0], msg(Role::System, "You are terse."));
}
