//! The Nodes screen: every node in a table, the selected one summed up below (why it is down, or
//! its gauges and workers).
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, HighlightSpacing, Paragraph, Row, Table, TableState};
use ratatui::Frame;
use rbee_proto::fmt::{age as fmt_age, rate as fmt_rate};

use super::widgets::{
    block, conn_cell, gauge, gpu_cell, gpu_label, label_width, state_style, Rows, DIM,
};
use rbee_proto::WorkerState;

use crate::dashboard::state::{Conn, NodeState, State};
use crate::fmt::{gib, gib_unit, no_gpu_text, ratio, short_model, wrap};
use crate::nodes::clock;

/// Draw the Nodes screen into `area`.
pub(super) fn render(state: &State, f: &mut Frame, area: Rect) {
    let visible = state.visible_nodes();
    let table_h = (visible.len() as u16 + 3).clamp(4, area.height.saturating_sub(7).max(4));
    let [top, bottom] =
        Layout::vertical([Constraint::Length(table_h), Constraint::Min(0)]).areas(area);

    let header = Row::new([
        "NODE", "STATUS", "PING", "CPU", "RAM", "GPU VRAM", "WRK", "TOK/S",
    ])
    .style(DIM.bold());
    let rows = visible.iter().map(|&i| {
        let n = &state.nodes[i];
        let (cpu, ram, gpu) = match &n.telemetry {
            Some(t) if n.conn == Conn::Connected => (
                format!("{:.0}%", t.cpu_percent),
                format!("{}/{}", gib(t.mem_used_bytes), gib_unit(t.mem_total_bytes)),
                gpu_cell(&t.gpus),
            ),
            _ => ("—".into(), "—".into(), "—".into()),
        };
        // A skewed clock marks the ping cell; the summary below says by how much.
        let skew = if n.clock_offset_ms.is_some_and(clock::skewed) {
            "!"
        } else {
            ""
        };
        let ping = n
            .latency_ms
            .map(|ms| format!("{ms}ms{skew}"))
            .unwrap_or_else(|| "—".into());
        Row::new(vec![
            Cell::from(n.name.clone()),
            conn_cell(&n.conn),
            Cell::from(ping),
            Cell::from(cpu),
            Cell::from(ram),
            Cell::from(gpu),
            Cell::from(n.live_workers().to_string()),
            Cell::from(fmt_rate(n.tokens_per_s())),
        ])
    });
    let widths = [
        Constraint::Length(10),
        Constraint::Length(13),
        Constraint::Length(5),
        Constraint::Length(4),
        Constraint::Length(10),
        Constraint::Fill(1),
        Constraint::Length(3),
        Constraint::Length(6),
    ];
    let title = format!(" Nodes ({}) ", visible.len());
    let table = Table::new(rows, widths)
        .header(header)
        .block(block(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("›")
        .highlight_spacing(HighlightSpacing::Always);
    let mut ts =
        TableState::default().with_selected(visible.iter().position(|&i| i == state.node_sel));
    f.render_stateful_widget(table, top, &mut ts);

    match visible
        .iter()
        .find(|&&i| i == state.node_sel)
        .or(visible.first())
    {
        Some(&i) => render_node_summary(state, &state.nodes[i], f, bottom),
        None if state.nodes.is_empty() => f.render_widget(
            Paragraph::new("no nodes: add one with `rbee-tui nodes add`").block(block("")),
            bottom,
        ),
        None => f.render_widget(
            Paragraph::new("no node matches the filter")
                .style(DIM)
                .block(block("")),
            bottom,
        ),
    }
}

/// The selected node under the table: why it is down, or its resources.
fn render_node_summary(state: &State, n: &NodeState, f: &mut Frame, area: Rect) {
    let title = format!(" {} · {} ", n.name, n.url);
    let b = block(title);
    let inner = b.inner(area);
    f.render_widget(b, area);
    let mut rows = Rows::new(inner);
    match &n.conn {
        Conn::Unreachable {
            reason,
            retry_in_ms,
            since,
        } => {
            let wrapped = wrap(&format!("✗ unreachable: {reason}"), inner.width as usize);
            let h = wrapped.len().min(4) as u16;
            if let Some(r) = rows.take(h) {
                let text: Vec<Line> = wrapped.into_iter().map(Line::from).collect();
                f.render_widget(Paragraph::new(text).style(Style::new().fg(Color::Red)), r);
            }
            let down = format!(
                "down for {} · next attempt within {} s",
                fmt_age(state.now.saturating_sub(*since)),
                retry_in_ms.div_ceil(1000)
            );
            rows.line(f, Line::styled(down, DIM));
            return;
        }
        Conn::Connecting { attempt } => {
            rows.line(
                f,
                Line::styled(
                    format!("connecting… (attempt {})", attempt + 1),
                    Style::new().fg(Color::Yellow),
                ),
            );
            return;
        }
        Conn::Connected => {}
    }
    let agent = format!(
        "agent {} on {} · ping {}{}",
        n.agent_version.as_deref().unwrap_or("?"),
        n.agent_node.as_deref().unwrap_or("?"),
        n.latency_ms
            .map(|m| format!("{m} ms"))
            .unwrap_or_else(|| "—".into()),
        n.clock_offset_ms
            .map(|o| format!(" · clock {}", clock::offset_text(o)))
            .unwrap_or_default()
    );
    rows.line(f, Line::styled(agent, DIM));
    if let Some(w) = n.clock_offset_ms.and_then(clock::warning) {
        rows.line(
            f,
            Line::styled(format!("⚠ {w}"), Style::new().fg(Color::Yellow)),
        );
    }
    let Some(t) = &n.telemetry else {
        rows.line(f, Line::styled("waiting for telemetry…", DIM));
        return;
    };
    let mut gauges: Vec<(String, f64)> = vec![
        (
            format!("CPU  {:>3.0}%", t.cpu_percent),
            (t.cpu_percent as f64 / 100.0).clamp(0.0, 1.0),
        ),
        (
            format!(
                "RAM  {}/{}",
                gib(t.mem_used_bytes),
                gib_unit(t.mem_total_bytes)
            ),
            ratio(t.mem_used_bytes, t.mem_total_bytes),
        ),
    ];
    for g in &t.gpus {
        gauges.push((
            gpu_label(g, label_width(inner.width)),
            ratio(g.mem_used_bytes, g.mem_total_bytes),
        ));
    }
    // Keep the last rows for the "no GPU" reason and the workers line.
    let room = rows.left().saturating_sub(1 + t.gpus.is_empty() as u16) as usize;
    for (label, r) in gauges.into_iter().take(room) {
        if let Some(area) = rows.take(1) {
            f.render_widget(gauge(label, r, label_width(inner.width)), area);
        }
    }
    if t.gpus.is_empty() {
        rows.line(f, Line::styled(no_gpu_text(&t.gpu_status), DIM));
    }
    rows.line(f, Line::from(worker_summary(n)));
    // What is left shows the workers themselves, so the overview answers "what runs where".
    if let Some(area) = rows.take(rows.left()) {
        render_worker_list(state, n, f, area);
    }
}

/// A borderless, compact list of a node's workers.
fn render_worker_list(state: &State, n: &NodeState, f: &mut Frame, area: Rect) {
    let rows = n.workers.iter().map(|w| {
        let i = &w.info;
        let what = if !i.detail.is_empty() && !i.state.is_serving() {
            i.detail.clone()
        } else {
            short_model(&i.model).to_string()
        };
        Row::new(vec![
            Cell::from(format!(" {}", i.id)),
            Cell::from(i.state.as_str()).style(state_style(i.state)),
            Cell::from(i.device.clone()),
            Cell::from(format!("{} tok/s", fmt_rate(i.tokens_per_s))),
            Cell::from(what),
        ])
    });
    let widths = [
        Constraint::Length(5),
        Constraint::Length(11),
        Constraint::Length(7),
        Constraint::Length(11),
        Constraint::Fill(1),
    ];
    let _ = state;
    f.render_widget(Table::new(rows, widths).column_spacing(1), area);
}

fn worker_summary(n: &NodeState) -> String {
    if n.workers.is_empty() {
        return "no workers · press s to spawn".into();
    }
    let mut counts: Vec<(WorkerState, usize)> = Vec::new();
    for w in &n.workers {
        match counts.iter_mut().find(|(s, _)| *s == w.info.state) {
            Some((_, c)) => *c += 1,
            None => counts.push((w.info.state, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(s, c)| format!("{c} {s}")).collect();
    format!(
        "workers: {} · {} tok/s",
        parts.join(", "),
        fmt_rate(n.tokens_per_s())
    )
}
