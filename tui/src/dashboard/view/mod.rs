//! `render`: a pure function from `State` to a frame. Everything on screen is derived here, so a
//! `TestBackend` snapshot of a fixed state is a full test of what the operator sees.
//!
//! `mod.rs` lays out the frame and draws the chrome (header, status line, footer); one file per
//! screen (`nodes`, `node`, `worker`, `events`, `requests`), the prompt pane (`prompt`), the popups
//! (`popups`), and the pieces they share (`widgets`).
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;
use rbee_proto::fmt::rate as fmt_rate;

use crate::dashboard::keys;
use crate::dashboard::state::{Conn, InputKind, NodeIdx, NodeState, Popup, Screen, State};
use widgets::{ACCENT, DIM};

mod events;
mod node;
mod nodes;
mod popups;
mod prompt;
mod requests;
pub mod requests_table;
mod widgets;
mod worker;

/// Draw the whole dashboard.
pub fn render(state: &State, f: &mut Frame) {
    let area = f.area();
    let [header, body, status, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    render_header(state, f, header);

    let (main, prompt_area) = match &state.prompt {
        Some(p) if body.height >= 10 => {
            // Focused, the pane takes up to half; unfocused it keeps the last lines in view.
            let h = if p.focused {
                (body.height / 2).clamp(5, 12)
            } else {
                5
            };
            let [m, p] = Layout::vertical([Constraint::Min(0), Constraint::Length(h)]).areas(body);
            (m, Some(p))
        }
        _ => (body, None),
    };
    match &state.screen {
        Screen::Nodes => nodes::render(state, f, main),
        Screen::Node(n) => node::render(state, *n, f, main),
        Screen::Worker(n, w) => worker::render(state, *n, w, f, main),
        Screen::Events => events::render(state, f, main),
        Screen::Requests => requests::render(state, f, main),
    }
    if let (Some(p), Some(a)) = (&state.prompt, prompt_area) {
        prompt::render(state, p, f, a);
    }
    render_status(state, f, status);
    render_footer(state, f, footer);

    match &state.popup {
        Some(Popup::Help) => popups::help(f, area),
        Some(Popup::Confirm(p)) => popups::confirm(state, p, f, area),
        Some(Popup::Spawn(d)) => popups::spawn(state, d, f, area),
        None => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Chrome.

fn render_header(state: &State, f: &mut Frame, area: Rect) {
    let mut crumbs = vec![
        Span::styled(" rbee ", Style::new().bg(ACCENT).fg(Color::Black).bold()),
        Span::raw(" "),
    ];
    let node_name = |n: NodeIdx| state.nodes.get(n).map(|n| n.name.as_str()).unwrap_or("?");
    match &state.screen {
        Screen::Nodes => crumbs.push("Nodes".bold()),
        Screen::Node(n) => {
            crumbs.push(Span::raw("Nodes › "));
            crumbs.push(node_name(*n).bold());
        }
        Screen::Worker(n, w) => {
            crumbs.push(Span::raw(format!("Nodes › {} › ", node_name(*n))));
            crumbs.push(w.as_str().bold());
        }
        Screen::Events => crumbs.push("Events".bold()),
        Screen::Requests => crumbs.push("Requests".bold()),
    }
    let connected = state
        .nodes
        .iter()
        .filter(|n| n.conn == Conn::Connected)
        .count();
    let workers: usize = state.nodes.iter().map(NodeState::live_workers).sum();
    let tokps: f64 = state.nodes.iter().map(NodeState::tokens_per_s).sum();
    let right = format!(
        "{connected}/{} up · {workers} workers · {} tok/s ",
        state.nodes.len(),
        fmt_rate(tokps)
    );
    f.render_widget(Paragraph::new(Line::from(crumbs)), area);
    f.render_widget(
        Paragraph::new(right).alignment(Alignment::Right).style(DIM),
        area,
    );
}

fn render_status(state: &State, f: &mut Frame, area: Rect) {
    let line = if let Some(input) = &state.input {
        let prefix = match input.kind {
            InputKind::Filter => "/",
            InputKind::Command => ":",
        };
        Line::from(vec![
            Span::styled(prefix, Style::new().fg(ACCENT).bold()),
            Span::raw(&input.text),
            "█".into(),
        ])
    } else if let Some(flash) = &state.flash {
        let style = if flash.error {
            Style::new().fg(Color::Red)
        } else {
            Style::new().fg(Color::Green)
        };
        Line::styled(flash.text.as_str(), style)
    } else if !state.filter.is_empty() {
        Line::from(vec![
            Span::styled("filter: ", DIM),
            Span::raw(&state.filter),
            Span::styled("  (esc clears)", DIM),
        ])
    } else {
        Line::default()
    };
    f.render_widget(Paragraph::new(line), area);
}

/// Footer from the key table: what works here, always ending with help when there is help.
fn render_footer(state: &State, f: &mut Frame, area: Rect) {
    let entries = keys::footer(state);
    let width = area.width as usize;
    let entry_w = |(k, w): &(String, &str)| k.chars().count() + 1 + w.chars().count() + 2;
    let (last, rest) = match entries.split_last() {
        Some((l, r)) if l.1 == "help" => (Some(l), r),
        _ => (None, &entries[..]),
    };
    let mut budget = width.saturating_sub(last.map(entry_w).unwrap_or(0));
    let mut spans = Vec::new();
    let push = |spans: &mut Vec<Span>, (k, w): &(String, &str)| {
        spans.push(Span::styled(k.clone(), Style::new().fg(ACCENT).bold()));
        spans.push(Span::raw(format!(" {w}  ")));
    };
    for e in rest {
        let w = entry_w(e);
        if w > budget {
            break;
        }
        budget -= w;
        push(&mut spans, e);
    }
    if let Some(l) = last {
        push(&mut spans, l);
    }
    f.render_widget(
        Paragraph::new(Line::from(spans)).style(Style::new().bg(Color::Black)),
        area,
    );
}
