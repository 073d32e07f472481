//! What floats over the screen: the help overlay (from the key table), the confirm popup, the
//! host-key question and the spawn dialog.
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph};
use ratatui::Frame;
use rbee_proto::fmt::{bytes as fmt_bytes, printable};

use super::widgets::{block, popup_area, ACCENT, DIM};
use crate::dashboard::keys::{self, Mode, BINDINGS, MODES};
use crate::dashboard::state::{Pending, SpawnDialog, SpawnField, State};
use crate::fmt::short_model;
use crate::nodes::config::AddNodeRequest;

/// The `?` overlay: every binding of the key table, by mode; two columns when there is room.
pub(super) fn help(f: &mut Frame, area: Rect) {
    let section = |m: Mode| -> Vec<Line<'static>> {
        let mut v = vec![Line::styled(
            m.title().to_string(),
            Style::new().fg(ACCENT).bold(),
        )];
        for b in BINDINGS.iter().filter(|b| b.mode == m) {
            v.push(Line::from(vec![
                Span::styled(format!(" {:<8}", keys::keys_label(b)), Style::new().bold()),
                Span::raw(b.help),
            ]));
        }
        v
    };
    let r = popup_area(area, 100, 26);
    f.render_widget(Clear, r);
    let b = block(" Keys · esc closes ").border_style(Style::new().fg(ACCENT));
    let inner = b.inner(r);
    f.render_widget(b, r);
    let two = inner.width >= 70;
    let (mut left, mut right) = (Vec::new(), Vec::new());
    for &m in MODES {
        let target = if two && !matches!(m, Mode::Normal | Mode::Help) {
            &mut right
        } else {
            &mut left
        };
        target.extend(section(m));
    }
    if two {
        let [l, rr] = Layout::horizontal([Constraint::Percentage(52), Constraint::Percentage(48)])
            .areas(inner);
        f.render_widget(Paragraph::new(left), l);
        f.render_widget(Paragraph::new(right), rr);
    } else {
        f.render_widget(Paragraph::new(left), inner);
    }
}

/// `y do it · n esc cancel`: the keys of one mode, from the table.
fn mode_hints(mode: Mode) -> Vec<Span<'static>> {
    let mut spans = Vec::new();
    for b in BINDINGS.iter().filter(|b| b.mode == mode) {
        if !spans.is_empty() {
            spans.push(Span::styled(" · ", DIM));
        }
        spans.push(Span::styled(
            keys::keys_label(b),
            Style::new().fg(ACCENT).bold(),
        ));
        spans.push(Span::raw(format!(" {}", b.help)));
    }
    spans
}

/// "Kill worker w1 (model) on gpu-a?" and the keys that answer.
pub(super) fn confirm(state: &State, p: &Pending, f: &mut Frame, area: Rect) {
    let (verb, node, worker) = match p {
        Pending::Kill { node, worker } => ("Kill", *node, worker),
        Pending::Restart { node, worker } => ("Restart", *node, worker),
        Pending::TrustHostKey { req, host, key } => return render_trust(req, host, key, f, area),
        Pending::UnloadAll { node, workers } => return unload_all(state, *node, workers, f, area),
    };
    let n = state.nodes.get(node);
    let model = n
        .and_then(|n| n.worker(worker))
        .map(|w| format!(" ({})", short_model(&w.info.model)))
        .unwrap_or_default();
    let q = format!(
        "{verb} worker {worker}{model} on {}?",
        n.map(|n| n.name.as_str()).unwrap_or("?")
    );
    let r = popup_area(area, (q.chars().count() as u16 + 6).max(40), 6);
    f.render_widget(Clear, r);
    let text = vec![
        Line::raw(""),
        Line::from(q).bold().centered(),
        Line::from(mode_hints(Mode::Confirm)).centered(),
    ];
    f.render_widget(
        Paragraph::new(text)
            .block(block(format!(" {verb}? ")).border_style(Style::new().fg(Color::Red))),
        r,
    );
}

/// "Unload all 2 workers on gpu-a?" with the ids, and the keys that answer.
fn unload_all(state: &State, node: usize, workers: &[String], f: &mut Frame, area: Rect) {
    let q = format!(
        "Kill all {} worker(s) on {}?",
        workers.len(),
        state.node_name(node)
    );
    let ids = workers.join(" ");
    let width = q.chars().count().max(ids.chars().count()) as u16 + 6;
    let r = popup_area(area, width.clamp(40, area.width.max(40)), 7);
    f.render_widget(Clear, r);
    let text = vec![
        Line::raw(""),
        Line::from(q).bold().centered(),
        Line::from(printable(&ids).into_owned()).centered(),
        Line::from(mode_hints(Mode::Confirm)).centered(),
    ];
    f.render_widget(
        Paragraph::new(text)
            .block(block(" Unload all? ").border_style(Style::new().fg(Color::Red))),
        r,
    );
}

/// The host-key question: what the node presented, where rbee will remember it, and y/n.
fn render_trust(req: &AddNodeRequest, host: &str, key: &str, f: &mut Frame, area: Rect) {
    let lines = [
        format!("{host} presents a host key nobody has trusted yet:"),
        key.to_string(),
        format!(
            "Trust it and add node {}? (kept in rbee's known_hosts)",
            req.node.name
        ),
    ];
    let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(40) as u16 + 6;
    let r = popup_area(area, width.max(40), 8);
    f.render_widget(Clear, r);
    let mut text = vec![Line::raw("")];
    text.push(Line::from(lines[0].clone()).centered());
    text.push(Line::from(lines[1].clone()).bold().centered());
    text.push(Line::from(lines[2].clone()).centered());
    text.push(Line::from(mode_hints(Mode::Confirm)).centered());
    f.render_widget(
        Paragraph::new(text)
            .block(block(" Trust host key? ").border_style(Style::new().fg(Color::Yellow))),
        r,
    );
}

/// The spawn dialog.
pub(super) fn spawn(state: &State, d: &SpawnDialog, f: &mut Frame, area: Rect) {
    let Some(n) = state.nodes.get(d.node) else {
        return;
    };
    let devices = n.devices();
    let model = match n.models.get(d.model) {
        Some(m) => format!("{} ({})", m.name, fmt_bytes(m.size_bytes)),
        None if n.models.is_empty() => "(no models in this node's model dirs)".into(),
        None => "?".into(),
    };
    let device = devices
        .get(d.device)
        .map_or_else(|| "cpu".into(), |dev| n.device_label(dev));
    let field = |name: &str, f: SpawnField, value: String, of: String| {
        let selected = d.field == f;
        let style = if selected {
            Style::new().fg(Color::Black).bg(ACCENT)
        } else {
            Style::new()
        };
        Line::from(vec![
            Span::styled(format!(" {name:<7}"), DIM),
            Span::styled(format!("‹ {value} ›"), style),
            Span::styled(of, DIM),
        ])
    };
    let lines = vec![
        Line::raw(""),
        field(
            "model",
            SpawnField::Model,
            model,
            format!(" {}/{}", (d.model + 1).min(n.models.len()), n.models.len()),
        ),
        field("device", SpawnField::Device, device, String::new()),
        field(
            "count",
            SpawnField::Count,
            d.count.to_string(),
            String::new(),
        ),
    ];
    let r = popup_area(area, 70, 6);
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .block(block(format!(" Spawn on {} ", n.name)).border_style(Style::new().fg(ACCENT))),
        r,
    );
}
