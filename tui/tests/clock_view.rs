//! What the dashboard shows of a node's operation: its clock offset (measured by each ping, in
//! the node summary, with a warning and a mark in the node table's ping cell beyond a few
//! seconds), and event texts from agents and workers with no control character left.
mod common;

use common::sample;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use rbee_tui::dashboard::action::Action;
use rbee_tui::dashboard::update::update;
use rbee_tui::dashboard::view;

fn draw_after_ping(clock_offset_ms: i64) -> String {
    let mut s = sample();
    s.node_sel = 0;
    update(
        &mut s,
        Action::Latency {
            node: 0,
            ms: 7,
            clock_offset_ms,
        },
    );
    assert_eq!(s.nodes[0].clock_offset_ms, Some(clock_offset_ms));
    let mut t = Terminal::new(TestBackend::new(120, 32)).unwrap();
    t.draw(|f| view::render(&s, f)).unwrap();
    t.backend().to_string()
}

#[test]
fn a_node_two_minutes_ahead_is_warned_about() {
    let screen = draw_after_ping(120_000);
    assert!(screen.contains("ping 7 ms · clock +120.0 s"), "{screen}");
    assert!(
        screen.contains("clock 120.0 s ahead of this machine"),
        "{screen}"
    );
    assert!(screen.contains("7ms!"), "the ping cell is marked: {screen}");
}

#[test]
fn a_node_behind_is_warned_about_too() {
    let screen = draw_after_ping(-120_000);
    assert!(screen.contains("clock -120.0 s"), "{screen}");
    assert!(
        screen.contains("clock 120.0 s behind this machine"),
        "{screen}"
    );
}

#[test]
fn a_small_offset_is_shown_without_a_warning() {
    let screen = draw_after_ping(400);
    assert!(screen.contains("clock +0.4 s"), "{screen}");
    assert!(!screen.contains("this machine"), "{screen}");
    assert!(!screen.contains("7ms!"), "{screen}");
}

#[test]
fn losing_the_node_forgets_its_offset() {
    let mut s = sample();
    update(
        &mut s,
        Action::Latency {
            node: 0,
            ms: 7,
            clock_offset_ms: 120_000,
        },
    );
    update(
        &mut s,
        Action::Disconnected {
            node: 0,
            reason: "gone".into(),
            retry_in_ms: 1000,
        },
    );
    assert_eq!(s.nodes[0].clock_offset_ms, None);
}

#[test]
fn event_texts_from_agents_reach_the_screen_without_control_characters() {
    let mut s = sample();
    s.push_event(
        "gpu-a",
        rbee_tui::dashboard::state::EventKind::Error,
        "\x1b[31mred\x1b[0m \x1b]0;t\x07",
    );
    assert_eq!(s.events[0].text, "red \\x1b]0;t\\x07");
}

#[test]
fn a_worker_log_with_escape_sequences_is_shown_plain() {
    let mut s = sample();
    let w = s.nodes[0].worker_mut("w1").unwrap();
    w.push_log("\x1b[2m2026-11-30\x1b[0m \x1b[32m INFO\x1b[0m loaded".into());
    w.push_log("evil \x1b]0;pwned\x07 \x1b[2J".into());
    s.screen = rbee_tui::dashboard::state::Screen::Worker(0, "w1".into());
    let mut t = Terminal::new(TestBackend::new(120, 40)).unwrap();
    t.draw(|f| view::render(&s, f)).unwrap();
    let buf = t.backend().buffer();
    let cells: String = buf.content().iter().map(|c| c.symbol()).collect();
    assert!(
        !cells.contains('\x1b') && !cells.contains('\x07'),
        "no control character drawn"
    );
    let screen = t.backend().to_string();
    assert!(screen.contains("2026-11-30  INFO loaded"), "{screen}");
    assert!(screen.contains("evil \\x1b]0;pwned\\x07"), "{screen}");
}
