//! `render`: a pure function from `State` to a frame. Everything on screen is derived here, so a
//! `TestBackend` snapshot of a fixed state is a full test of what the operator sees.
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{
    Block, BorderType, Cell, Clear, HighlightSpacing, LineGauge, Paragraph, Row, Sparkline, Table,
    TableState, Wrap,
};
use ratatui::Frame;
use rbee_proto::session::GpuTelemetry;
use rbee_proto::{UnixMillis, WorkerState};

use crate::action::short_model;
use crate::keys::{self, Mode, BINDINGS, MODES};
use crate::state::{
    Conn, EventKind, InputKind, NodeIdx, NodeState, Pending, Popup, PromptPane, Screen,
    SpawnDialog, SpawnField, State, WorkerView,
};

const ACCENT: Color = Color::Cyan;
const DIM: Style = Style::new().fg(Color::DarkGray);

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
        Screen::Nodes => render_nodes(state, f, main),
        Screen::Node(n) => render_node(state, *n, f, main),
        Screen::Worker(n, w) => render_worker(state, *n, w, f, main),
        Screen::Events => render_events(state, f, main),
    }
    if let (Some(p), Some(a)) = (&state.prompt, prompt_area) {
        render_prompt(state, p, f, a);
    }
    render_status(state, f, status);
    render_footer(state, f, footer);

    match &state.popup {
        Some(Popup::Help) => render_help(f, area),
        Some(Popup::Confirm(p)) => render_confirm(state, p, f, area),
        Some(Popup::Spawn(d)) => render_spawn(state, d, f, area),
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

fn block(title: impl Into<Line<'static>>) -> Block<'static> {
    Block::bordered()
        .border_type(BorderType::Rounded)
        .title(title.into())
        .border_style(DIM)
}

// ---------------------------------------------------------------------------------------------
// Nodes screen.

fn render_nodes(state: &State, f: &mut Frame, area: Rect) {
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
        let ping = n
            .latency_ms
            .map(|ms| format!("{ms}ms"))
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

fn conn_cell(conn: &Conn) -> Cell<'static> {
    match conn {
        Conn::Connected => Cell::from("● connected").style(Style::new().fg(Color::Green)),
        Conn::Connecting { .. } => Cell::from("◌ connecting").style(Style::new().fg(Color::Yellow)),
        Conn::Unreachable { .. } => Cell::from("✗ unreachable").style(Style::new().fg(Color::Red)),
    }
}

fn gpu_cell(gpus: &[GpuTelemetry]) -> String {
    if gpus.is_empty() {
        return "no GPU".into();
    }
    let used: u64 = gpus.iter().map(|g| g.mem_used_bytes).sum();
    let total: u64 = gpus.iter().map(|g| g.mem_total_bytes).sum();
    let mut s = format!(
        "{} {}/{}",
        text_bar(ratio(used, total), 6),
        gib(used),
        gib_unit(total)
    );
    if gpus.len() > 1 {
        s.push_str(&format!(" ×{}", gpus.len()));
    }
    s
}

/// Lays widgets out one row at a time inside an area, dropping what does not fit.
struct Rows {
    area: Rect,
    y: u16,
}

impl Rows {
    fn new(area: Rect) -> Self {
        Self { area, y: area.y }
    }

    fn left(&self) -> u16 {
        self.area.bottom().saturating_sub(self.y)
    }

    /// The next `h` rows, or `None` when full.
    fn take(&mut self, h: u16) -> Option<Rect> {
        let h = h.min(self.left());
        if h == 0 {
            return None;
        }
        let r = Rect {
            y: self.y,
            height: h,
            ..self.area
        };
        self.y += h;
        Some(r)
    }

    fn line(&mut self, f: &mut Frame, l: Line) {
        if let Some(r) = self.take(1) {
            f.render_widget(Paragraph::new(l), r);
        }
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
        "agent {} on {} · ping {}",
        n.agent_version.as_deref().unwrap_or("?"),
        n.agent_node.as_deref().unwrap_or("?"),
        n.latency_ms
            .map(|m| format!("{m} ms"))
            .unwrap_or_else(|| "—".into())
    );
    rows.line(f, Line::styled(agent, DIM));
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

/// `GPU0 NVIDIA H100 40.0/80.0G 71% 64°C`, dropping the name when it would not fit in `max`.
fn gpu_label(g: &GpuTelemetry, max: usize) -> String {
    let numbers = format!(
        "{}/{} {}% {}°C",
        gib(g.mem_used_bytes),
        gib_unit(g.mem_total_bytes),
        g.utilization_percent,
        g.temperature_c
    );
    let full = format!("GPU{} {} {numbers}", g.index, g.name);
    if full.chars().count() <= max {
        return full;
    }
    let room = max.saturating_sub(numbers.chars().count() + format!("GPU{} ", g.index).len() + 1);
    if room >= 6 {
        format!("GPU{} {} {numbers}", g.index, truncate(&g.name, room))
    } else {
        format!("GPU{} {numbers}", g.index)
    }
}

/// A one-row bar with its label in a fixed-width column, so bars line up. The filled part uses a
/// heavier line than the rest, which stays readable without colour.
fn gauge(label: String, r: f64, label_w: usize) -> LineGauge<'static> {
    let color = if r > 0.9 {
        Color::Red
    } else if r > 0.7 {
        Color::Yellow
    } else {
        Color::Green
    };
    LineGauge::default()
        .ratio(r.clamp(0.0, 1.0))
        .label(format!("{:<label_w$} ", truncate(&label, label_w)))
        .filled_symbol("━")
        .unfilled_symbol("─")
        .filled_style(Style::new().fg(color))
        .unfilled_style(DIM)
}

/// Label column for gauges in an area `width` wide.
fn label_width(width: u16) -> usize {
    (width as usize * 45 / 100).clamp(8, 44)
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

// ---------------------------------------------------------------------------------------------
// Node screen.

fn render_node(state: &State, idx: NodeIdx, f: &mut Frame, area: Rect) {
    let Some(n) = state.nodes.get(idx) else {
        return;
    };
    let gpu_rows = n
        .telemetry
        .as_ref()
        .map(|t| t.gpus.len().max(1))
        .unwrap_or(1) as u16;
    let res_h = (gpu_rows + 5).min(area.height.saturating_sub(6).max(3));
    let [res, table_area, detail] = Layout::vertical([
        Constraint::Length(res_h),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    render_resources(n, f, res);
    render_workers_table(state, idx, n, f, table_area);
    render_selected_detail(state, f, detail);
}

fn render_resources(n: &NodeState, f: &mut Frame, area: Rect) {
    let title = format!(" {} · {} ", n.name, n.conn.label());
    let b = block(title);
    let inner = b.inner(area);
    f.render_widget(b, area);
    if let Conn::Unreachable { reason, .. } = &n.conn {
        let text = Text::from(
            wrap(
                &format!("✗ unreachable: {reason} (showing last known state)"),
                inner.width as usize,
            )
            .into_iter()
            .map(Line::from)
            .collect::<Vec<_>>(),
        );
        f.render_widget(
            Paragraph::new(text).style(Style::new().fg(Color::Red)),
            inner,
        );
        return;
    }
    let Some(t) = &n.telemetry else {
        f.render_widget(Paragraph::new("waiting for telemetry…").style(DIM), inner);
        return;
    };
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(inner);
    let label_w = (left.width as usize * 55 / 100).max(8);
    let mut rows: Vec<(String, f64, Option<Vec<u64>>)> = vec![
        (
            format!("CPU {:>3.0}%", t.cpu_percent),
            (t.cpu_percent as f64 / 100.0).clamp(0.0, 1.0),
            Some(n.cpu_history.tail(right.width as usize)),
        ),
        (
            format!(
                "RAM {}/{}",
                gib(t.mem_used_bytes),
                gib_unit(t.mem_total_bytes)
            ),
            ratio(t.mem_used_bytes, t.mem_total_bytes),
            None,
        ),
    ];
    for (i, g) in t.gpus.iter().enumerate() {
        let hist = n.gpu_history.get(i).map(|h| h.tail(right.width as usize));
        rows.push((
            gpu_label(g, label_w),
            ratio(g.mem_used_bytes, g.mem_total_bytes),
            hist,
        ));
    }
    for p in &n.pulls {
        rows.push((
            format!(
                "pull {:>3.0}% {} {}/{}",
                ratio(p.downloaded_bytes, p.total_bytes) * 100.0,
                short_ref(&p.model),
                fmt_bytes(p.downloaded_bytes),
                fmt_bytes(p.total_bytes)
            ),
            ratio(p.downloaded_bytes, p.total_bytes),
            None,
        ));
    }
    let mut y = inner.y;
    for (label, r, hist) in rows {
        if y >= inner.bottom() {
            return;
        }
        f.render_widget(
            gauge(label, r, label_w),
            Rect {
                y,
                height: 1,
                ..left
            },
        );
        if let Some(h) = hist {
            f.render_widget(
                Sparkline::default()
                    .data(&h)
                    .max(100)
                    .style(Style::new().fg(ACCENT)),
                Rect {
                    y,
                    height: 1,
                    ..right
                },
            );
        }
        y += 1;
    }
    if y < inner.bottom() && t.gpus.is_empty() {
        f.render_widget(
            Paragraph::new(no_gpu_text(&t.gpu_status)).style(DIM),
            Rect {
                y,
                height: 1,
                ..inner
            },
        );
        y += 1;
    }
    if y < inner.bottom() {
        let label = format!("tok/s {}", fmt_rate(n.tokens_per_s()));
        f.render_widget(
            Paragraph::new(label),
            Rect {
                y,
                height: 1,
                ..left
            },
        );
        let h = n.tokps_history.tail(right.width as usize);
        f.render_widget(
            Sparkline::default()
                .data(&h)
                .style(Style::new().fg(Color::Green)),
            Rect {
                y,
                height: 1,
                ..right
            },
        );
    }
}

fn render_workers_table(state: &State, idx: NodeIdx, n: &NodeState, f: &mut Frame, area: Rect) {
    let visible = state.visible_workers(idx);
    let header = Row::new([
        "ID", "MODEL", "DEVICE", "STATE", "HB", "TOK/S", "RST", "RSS", "VRAM",
    ])
    .style(DIM.bold());
    let rows = visible.iter().map(|w| {
        let i = &w.info;
        Row::new(vec![
            Cell::from(i.id.clone()),
            Cell::from(short_model(&i.model).to_string()),
            Cell::from(i.device.clone()),
            Cell::from(i.state.as_str()).style(state_style(i.state)),
            Cell::from(
                w.heartbeat_age_ms(state.now)
                    .map(fmt_age)
                    .unwrap_or_else(|| "—".into()),
            ),
            Cell::from(fmt_rate(i.tokens_per_s)),
            Cell::from(i.restarts.to_string()),
            Cell::from(fmt_bytes_short(i.rss_bytes)),
            Cell::from(if i.vram_bytes == 0 {
                "—".into()
            } else {
                fmt_bytes_short(i.vram_bytes)
            }),
        ])
    });
    let widths = [
        Constraint::Length(4),
        Constraint::Fill(1),
        Constraint::Length(6),
        Constraint::Length(11),
        Constraint::Length(4),
        Constraint::Length(5),
        Constraint::Length(3),
        Constraint::Length(6),
        Constraint::Length(6),
    ];
    let title = format!(" Workers ({}) ", visible.len());
    let table = Table::new(rows, widths)
        .header(header)
        .block(block(title))
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("›")
        .highlight_spacing(HighlightSpacing::Always);
    let sel = state
        .selected_worker()
        .and_then(|(_, id)| visible.iter().position(|w| w.info.id == id));
    let mut ts = TableState::default().with_selected(sel);
    f.render_stateful_widget(table, area, &mut ts);
    if visible.is_empty() {
        let msg = if n.workers.is_empty() {
            "no workers · press s to spawn"
        } else {
            "no worker matches the filter"
        };
        let inner = area.inner(ratatui::layout::Margin {
            horizontal: 2,
            vertical: 2,
        });
        f.render_widget(Paragraph::new(msg).style(DIM), inner);
    }
}

/// One line under the workers table about the selected worker: loading progress, why it failed,
/// or what it serves.
fn render_selected_detail(state: &State, f: &mut Frame, area: Rect) {
    let Some((n, id)) = state.selected_worker() else {
        return;
    };
    let Some(w) = state.nodes[n].worker(&id) else {
        return;
    };
    render_worker_detail_line(w, f, area);
}

fn render_worker_detail_line(w: &WorkerView, f: &mut Frame, area: Rect) {
    let i = &w.info;
    if let Some(p) = progress(&i.detail).filter(|_| !i.state.is_serving() && !i.state.is_terminal())
    {
        f.render_widget(
            gauge(
                format!("{} {}: {}", i.id, i.state, i.detail),
                p,
                label_width(area.width),
            ),
            area,
        );
        return;
    }
    let text = if !i.detail.is_empty() {
        format!("{} {}: {}", i.id, i.state, i.detail)
    } else if matches!(
        i.state,
        WorkerState::Failed | WorkerState::Crashed | WorkerState::BackingOff
    ) {
        format!(
            "{} {}: {}",
            i.id,
            i.state,
            i.last_exit.as_deref().unwrap_or("no exit reason")
        )
    } else if let Some(s) = &i.summary {
        format!(
            "{} {} · {} · ctx {} · {}",
            i.id,
            s.name,
            s.architecture,
            s.context_length,
            fmt_bytes(s.memory_bytes)
        )
    } else {
        format!("{} {}", i.id, i.state)
    };
    f.render_widget(Paragraph::new(text).style(state_style(i.state)), area);
}

// ---------------------------------------------------------------------------------------------
// Worker screen.

fn render_worker(state: &State, idx: NodeIdx, id: &str, f: &mut Frame, area: Rect) {
    let Some(n) = state.nodes.get(idx) else {
        return;
    };
    let Some(w) = n.worker(id) else {
        let msg = format!("worker {id} is gone from {} (esc goes back)", n.name);
        f.render_widget(
            Paragraph::new(msg)
                .style(DIM)
                .block(block(format!(" {id} "))),
            area,
        );
        return;
    };
    let i = &w.info;
    // Leave the log at least two lines; the info block gives way first.
    let info_h = 12.min(area.height.saturating_sub(3 + 4)).max(4);
    let [top, spark, logs] = Layout::vertical([
        Constraint::Length(info_h),
        Constraint::Length(3),
        Constraint::Min(0),
    ])
    .areas(area);
    let [info_area, hist_area] =
        Layout::horizontal([Constraint::Percentage(62), Constraint::Percentage(38)]).areas(top);

    let kv =
        |k: &str, v: String| Line::from(vec![Span::styled(format!("{k:<10}"), DIM), Span::raw(v)]);
    let mut lines = vec![Line::from(vec![
        Span::styled(format!("{:<10}", "state"), DIM),
        Span::styled(i.state.as_str(), state_style(i.state).bold()),
    ])];
    if !i.detail.is_empty() {
        lines.push(kv("detail", i.detail.clone()));
    }
    lines.push(kv("model", short_model(&i.model).to_string()));
    lines.push(kv("device", i.device.clone()));
    let pid = i.pid.map(|p| p.to_string()).unwrap_or_else(|| "—".into());
    lines.push(kv("pid", format!("{pid} · {} restarts", i.restarts)));
    lines.push(kv(
        "last exit",
        i.last_exit.clone().unwrap_or_else(|| "—".into()),
    ));
    lines.push(kv(
        "heartbeat",
        w.heartbeat_age_ms(state.now)
            .map(|a| format!("{} ago", fmt_age(a)))
            .unwrap_or_else(|| "—".into()),
    ));
    let vram = if i.vram_bytes == 0 {
        "—".to_string()
    } else {
        fmt_bytes(i.vram_bytes)
    };
    let rss = if i.rss_bytes == 0 {
        "—".to_string()
    } else {
        fmt_bytes(i.rss_bytes)
    };
    lines.push(kv("memory", format!("RSS {rss} · VRAM {vram}")));
    lines.push(kv("requests", format!("{} in flight", i.in_flight)));
    if let Some(s) = &i.summary {
        let ready = w
            .spawn_to_ready_ms
            .map(|ms| format!(" · ready in {ms} ms"))
            .unwrap_or_default();
        lines.push(kv(
            "loaded",
            format!("{} · ctx {}{ready}", s.architecture, s.context_length),
        ));
    }
    let info_block = block(format!(" {} on {} ", i.id, n.name));
    let inner = info_block.inner(info_area);
    f.render_widget(info_block, info_area);
    let progress_row =
        progress(&i.detail).filter(|_| !i.state.is_serving() && !i.state.is_terminal());
    let text_h = if progress_row.is_some() {
        inner.height.saturating_sub(1)
    } else {
        inner.height
    };
    f.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }),
        Rect {
            height: text_h,
            ..inner
        },
    );
    if let (Some(p), true) = (progress_row, inner.height > 1) {
        let r = Rect {
            y: inner.bottom() - 1,
            height: 1,
            ..inner
        };
        f.render_widget(gauge(format!("{:.0}%", p * 100.0), p, 4), r);
    }

    let hist: Vec<Line> = w
        .states
        .iter()
        .rev()
        .map(|c| {
            let mut spans = vec![
                Span::styled(
                    format!("{:>4} ", fmt_age(state.now.saturating_sub(c.at))),
                    DIM,
                ),
                Span::styled(c.state.as_str(), state_style(c.state)),
            ];
            if !c.detail.is_empty() {
                spans.push(Span::styled(format!(" {}", c.detail), DIM));
            }
            Line::from(spans)
        })
        .collect();
    f.render_widget(
        Paragraph::new(hist).block(block(" State history ")),
        hist_area,
    );

    let spark_block = block(format!(" tok/s {} ", fmt_rate(i.tokens_per_s)));
    let spark_inner = spark_block.inner(spark);
    f.render_widget(spark_block, spark);
    let data = w.tokps.tail(spark_inner.width as usize);
    f.render_widget(
        Sparkline::default()
            .data(&data)
            .style(Style::new().fg(Color::Green)),
        spark_inner,
    );

    let log_block = block(format!(" Log ({} lines) ", w.log.len()));
    let log_inner = log_block.inner(logs);
    f.render_widget(log_block, logs);
    let h = log_inner.height as usize;
    let start = w.log.len().saturating_sub(h);
    let log_lines: Vec<Line> = w
        .log
        .iter()
        .skip(start)
        .map(|l| Line::raw(truncate(l, log_inner.width as usize)))
        .collect();
    if log_lines.is_empty() {
        f.render_widget(Paragraph::new("(no log lines yet)").style(DIM), log_inner);
    } else {
        f.render_widget(Paragraph::new(log_lines), log_inner);
    }
}

// ---------------------------------------------------------------------------------------------
// Events screen.

fn render_events(state: &State, f: &mut Frame, area: Rect) {
    let visible = state.visible_events();
    let header = Row::new(["AGE", "NODE", "KIND", "WHAT"]).style(DIM.bold());
    let rows = visible.iter().map(|e| {
        let style = match e.kind {
            EventKind::Error => Style::new().fg(Color::Red),
            EventKind::Audit => Style::new().fg(Color::Magenta),
            EventKind::State => Style::new(),
            EventKind::Info => DIM,
        };
        Row::new(vec![
            Cell::from(fmt_age(state.now.saturating_sub(e.at))),
            Cell::from(e.node.clone()),
            Cell::from(e.kind.label()),
            Cell::from(e.text.clone()),
        ])
        .style(style)
    });
    let widths = [
        Constraint::Length(4),
        Constraint::Length(10),
        Constraint::Length(5),
        Constraint::Fill(1),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .block(block(format!(
            " Events ({}) · newest first ",
            visible.len()
        )))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("›")
        .highlight_spacing(HighlightSpacing::Always);
    let sel = (!visible.is_empty()).then(|| state.event_sel.min(visible.len() - 1));
    // The selected event in full under the table: rows cut long messages short.
    let [table_area, full_area] =
        Layout::vertical([Constraint::Min(4), Constraint::Length(3)]).areas(area);
    let mut ts = TableState::default().with_selected(sel);
    f.render_stateful_widget(table, table_area, &mut ts);
    if let Some(e) = sel.map(|i| visible[i]) {
        let text = format!("{} · {} · {}", e.node, e.kind.label(), e.text);
        let lines: Vec<Line> = wrap(&text, full_area.width as usize)
            .into_iter()
            .take(full_area.height as usize)
            .map(Line::from)
            .collect();
        f.render_widget(Paragraph::new(lines), full_area);
    }
    if visible.is_empty() {
        let inner = area.inner(ratatui::layout::Margin {
            horizontal: 2,
            vertical: 2,
        });
        f.render_widget(Paragraph::new("nothing yet").style(DIM), inner);
    }
}

// ---------------------------------------------------------------------------------------------
// Prompt pane.

fn render_prompt(state: &State, p: &PromptPane, f: &mut Frame, area: Rect) {
    // The table shows the model; the title only needs to say where the prompt goes.
    let target = match (&p.worker, &p.model) {
        (Some(w), _) => w.clone(),
        (None, Some(m)) => format!("any {}", truncate(short_model(m), 24)),
        (None, None) => "?".into(),
    };
    let node = state
        .nodes
        .get(p.node)
        .map(|n| n.name.as_str())
        .unwrap_or("?");
    let mut stats = Vec::new();
    if let Some(r) = &p.run {
        if let Some(t) = r.ttft_ms() {
            stats.push(format!("TTFT {t:.0} ms"));
        }
        if let Some(t) = r.tokens_per_s() {
            stats.push(format!("{t:.1} tok/s"));
        }
        let n = r
            .usage
            .as_ref()
            .map(|u| u.generated_tokens)
            .unwrap_or(r.tokens);
        stats.push(format!("{n} tok"));
        if r.active {
            stats.push("streaming…".into());
        } else if r.cancelled {
            stats.push("cancelled".into());
        } else if let Some(fin) = r.finish {
            stats.push(format!("{fin:?}").to_lowercase());
        }
    }
    let border = if p.focused {
        Style::new().fg(ACCENT)
    } else {
        DIM
    };
    let b = Block::bordered()
        .border_type(BorderType::Rounded)
        .border_style(border)
        .title(format!(" Prompt → {target} on {node} "))
        .title(Line::from(format!(" {} ", stats.join(" · "))).right_aligned());
    let inner = b.inner(area);
    f.render_widget(b, area);
    if inner.height == 0 {
        return;
    }
    let [out_area, in_area] =
        Layout::vertical([Constraint::Min(0), Constraint::Length(1)]).areas(inner);
    let width = out_area.width as usize;
    let mut lines: Vec<Line> = Vec::new();
    if !p.asked.is_empty() {
        lines.extend(
            wrap(&format!("› {}", p.asked), width)
                .into_iter()
                .map(|l| Line::styled(l, DIM)),
        );
    }
    lines.extend(wrap(&p.output, width).into_iter().map(Line::raw));
    if let Some(e) = p.run.as_ref().and_then(|r| r.error.as_ref()) {
        lines.extend(
            wrap(&format!("error: {e}"), width)
                .into_iter()
                .map(|l| Line::styled(l, Style::new().fg(Color::Red))),
        );
    }
    // Follow the end of the answer.
    let skip = lines.len().saturating_sub(out_area.height as usize);
    f.render_widget(
        Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>()),
        out_area,
    );

    let input = if p.input.is_empty() && !p.focused {
        Line::styled("press p or tab to type a prompt", DIM)
    } else {
        let max = (in_area.width as usize).saturating_sub(3);
        let shown: String = {
            let n = p.input.chars().count();
            p.input.chars().skip(n.saturating_sub(max)).collect()
        };
        Line::from(vec![
            Span::styled("> ", Style::new().fg(ACCENT).bold()),
            Span::raw(shown),
            if p.focused {
                Span::raw("█")
            } else {
                Span::raw("")
            },
        ])
    };
    f.render_widget(Paragraph::new(input), in_area);
}

// ---------------------------------------------------------------------------------------------
// Popups.

fn popup_area(area: Rect, w: u16, h: u16) -> Rect {
    area.centered(
        Constraint::Length(w.min(area.width)),
        Constraint::Length(h.min(area.height)),
    )
}

/// Every binding of the key table, by mode; two columns when there is room.
fn render_help(f: &mut Frame, area: Rect) {
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

fn render_confirm(state: &State, p: &Pending, f: &mut Frame, area: Rect) {
    let (verb, node, worker) = match p {
        Pending::Kill { node, worker } => ("Kill", *node, worker),
        Pending::Restart { node, worker } => ("Restart", *node, worker),
        Pending::TrustHostKey { req, host, key } => return render_trust(req, host, key, f, area),
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

/// The host-key question: what the node presented, where rbee will remember it, and y/n.
fn render_trust(
    req: &crate::ssh::AddNodeRequest,
    host: &str,
    key: &str,
    f: &mut Frame,
    area: Rect,
) {
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

fn render_spawn(state: &State, d: &SpawnDialog, f: &mut Frame, area: Rect) {
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
        .cloned()
        .unwrap_or_else(|| "cpu".into());
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

// ---------------------------------------------------------------------------------------------
// Formatting.

/// Why a node has no GPU, said once even when the agent's reason already starts with "no GPU".
/// `hf:ORG/REPO:FILE` shortened to what identifies it on one line: the file, else the repo.
fn short_ref(model: &str) -> &str {
    let rest = model.strip_prefix("hf:").unwrap_or(model);
    rest.rsplit_once(':')
        .map(|(_, f)| f)
        .or_else(|| rest.rsplit_once('/').map(|(_, r)| r))
        .unwrap_or(rest)
}

pub fn no_gpu_text(status: &str) -> String {
    if status.is_empty() {
        "no GPU".into()
    } else if status.to_lowercase().starts_with("no gpu") {
        status.to_string()
    } else {
        format!("no GPU: {status}")
    }
}

fn state_style(s: WorkerState) -> Style {
    match s {
        WorkerState::Ready => Style::new().fg(Color::Green),
        WorkerState::Busy => Style::new().fg(Color::Cyan),
        WorkerState::Starting | WorkerState::Loading => Style::new().fg(Color::Yellow),
        WorkerState::Crashed | WorkerState::BackingOff => Style::new().fg(Color::Magenta),
        WorkerState::Failed => Style::new().fg(Color::Red),
        WorkerState::Stopping | WorkerState::Exited => DIM,
    }
}

fn ratio(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        (used as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// `▮▮▮▯▯▯`: a gauge that fits in a table cell.
pub fn text_bar(r: f64, width: usize) -> String {
    let filled = (r.clamp(0.0, 1.0) * width as f64).round() as usize;
    "▮".repeat(filled) + &"▯".repeat(width - filled)
}

const GIB: f64 = (1u64 << 30) as f64;

fn gib(b: u64) -> String {
    format!("{:.1}", b as f64 / GIB)
}

fn gib_unit(b: u64) -> String {
    format!("{:.1}G", b as f64 / GIB)
}

/// `98 MiB`, `7.9 GiB`.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `98M`, `7.9G`: for narrow columns.
fn fmt_bytes_short(b: u64) -> String {
    if b == 0 {
        return "—".into();
    }
    let s = fmt_bytes(b);
    s.replace(" KiB", "K")
        .replace(" MiB", "M")
        .replace(" GiB", "G")
        .replace(" TiB", "T")
        .replace(" B", "B")
}

/// `45.2`, `0`, `1234`.
pub fn fmt_rate(r: f64) -> String {
    if r <= 0.0 {
        "0".into()
    } else if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// `850ms`→`0s`, `12s`, `3m`, `2h`, `4d`.
pub fn fmt_age(ms: UnixMillis) -> String {
    let s = ms / 1000;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m", s / 60)
    } else if s < 86_400 {
        format!("{}h", s / 3600)
    } else {
        format!("{}d", s / 86_400)
    }
}

/// The last `NN%` (or `NN.N%`) in a detail string, as a ratio.
pub fn progress(detail: &str) -> Option<f64> {
    let end = detail.rfind('%')?;
    let start = detail[..end]
        .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| i + 1)
        .unwrap_or(0);
    let v: f64 = detail[start..end].parse().ok()?;
    Some((v / 100.0).clamp(0.0, 1.0))
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else if max == 0 {
        String::new()
    } else {
        s.chars().take(max - 1).collect::<String>() + "…"
    }
}

/// Wrap at `width` characters, breaking after a space where there is one, keeping explicit
/// newlines. Counts characters, not display columns: good enough for model output.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut out = Vec::new();
    if text.is_empty() {
        return out;
    }
    for line in text.split('\n') {
        let mut rest: Vec<char> = line.chars().collect();
        if rest.is_empty() {
            out.push(String::new());
        }
        while !rest.is_empty() {
            if rest.len() <= width {
                out.push(rest.drain(..).collect());
                break;
            }
            let cut = rest[..width]
                .iter()
                .rposition(|c| *c == ' ')
                .map(|i| i + 1)
                .filter(|&i| i > width / 3)
                .unwrap_or(width);
            let piece: String = rest.drain(..cut).collect();
            out.push(piece.trim_end().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_parses_last_percentage() {
        assert_eq!(progress("loading weights 45%"), Some(0.45));
        assert_eq!(progress("step 2/3: 12.5%"), Some(0.125));
        assert_eq!(progress("no number"), None);
        assert_eq!(progress("%"), None);
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(98 << 20), "98.0 MiB");
        assert_eq!(fmt_bytes_short(8 << 30), "8.0G");
        assert_eq!(fmt_age(125_000), "2m");
        assert_eq!(text_bar(0.5, 4), "▮▮▯▯");
        assert_eq!(wrap("abcdef", 4), vec!["abcd", "ef"]);
        assert_eq!(wrap("hello big world", 10), vec!["hello big", "world"]);
        assert_eq!(wrap("a\n\nb", 10), vec!["a", "", "b"]);
        assert!(wrap("", 10).is_empty());
        assert_eq!(
            no_gpu_text("no GPU: driver missing"),
            "no GPU: driver missing"
        );
        assert_eq!(no_gpu_text("driver missing"), "no GPU: driver missing");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
