//! The Node screen: gauges with history, model pulls, the workers table, and a line about the
//! selected worker.
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Text};
use ratatui::widgets::{Cell, HighlightSpacing, Paragraph, Row, Sparkline, Table, TableState};
use ratatui::Frame;
use rbee_proto::fmt::{
    age as fmt_age, bytes as fmt_bytes, bytes_short as fmt_bytes_short, rate as fmt_rate,
};

use super::widgets::{block, gauge, gpu_label, label_width, state_style, ACCENT, DIM};
use rbee_proto::session::Telemetry;
use rbee_proto::WorkerState;

use crate::dashboard::state::{Conn, NodeIdx, NodeState, State, WorkerView};
use crate::fmt::{gib, gib_unit, no_gpu_text, progress, ratio, short_model, short_ref, wrap};

/// Draw node `idx`'s screen into `area`.
pub(super) fn render(state: &State, idx: NodeIdx, f: &mut Frame, area: Rect) {
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
    // On a GPU node, which workers it runs: `cpu, cuda`, or `cpu` alone without a CUDA worker.
    let backends = match n.telemetry.as_ref() {
        Some(t) if !t.gpus.is_empty() && !t.backends.is_empty() => {
            format!("· backends {} ", t.backends.join(", "))
        }
        _ => String::new(),
    };
    let title = format!(" {} · {} {backends}", n.name, n.conn.label());
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
    let rows = gauge_rows(n, t, label_w, right.width as usize);
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

/// One gauge per resource: label, fill, and the history for a sparkline beside it.
type GaugeRow = (String, f64, Option<Vec<u64>>);

/// CPU and RAM, each GPU's memory, each model pull under way.
fn gauge_rows(n: &NodeState, t: &Telemetry, label_w: usize, hist_w: usize) -> Vec<GaugeRow> {
    let mut rows: Vec<GaugeRow> = vec![
        (
            format!("CPU {:>3.0}%", t.cpu_percent),
            (t.cpu_percent as f64 / 100.0).clamp(0.0, 1.0),
            Some(n.cpu_history.tail(hist_w)),
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
        let hist = n.gpu_history.get(i).map(|h| h.tail(hist_w));
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
    rows
}

/// Sequences in use over the worker's slots (`2/4`), once it has said how many it has.
fn slots(i: &rbee_proto::session::WorkerInfo) -> String {
    match &i.summary {
        Some(s) => format!("{}/{}", i.in_flight, s.slots()),
        None => "—".into(),
    }
}

fn render_workers_table(state: &State, idx: NodeIdx, n: &NodeState, f: &mut Frame, area: Rect) {
    let visible = state.visible_workers(idx);
    let header = Row::new([
        "ID", "MODEL", "DEVICE", "STATE", "SLOTS", "HB", "TOK/S", "RST", "RSS", "VRAM",
    ])
    .style(DIM.bold());
    let rows = visible.iter().map(|w| {
        let i = &w.info;
        Row::new(vec![
            Cell::from(i.id.clone()),
            Cell::from(short_model(&i.model).to_string()),
            Cell::from(i.device.clone()),
            Cell::from(i.state.as_str()).style(state_style(i.state)),
            Cell::from(slots(i)),
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
        Constraint::Length(5),
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
