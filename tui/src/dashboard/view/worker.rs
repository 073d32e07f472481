//! The Worker screen: state and figures, state history, tok/s, log tail.
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Sparkline, Wrap};
use ratatui::Frame;
use rbee_proto::fmt::{age as fmt_age, bytes as fmt_bytes, rate as fmt_rate};

use super::widgets::{block, gauge, state_style, DIM};
use crate::dashboard::state::{NodeIdx, NodeState, State, WorkerView};
use crate::fmt::{progress, short_model, truncate};

/// Draw worker `id` of node `idx` into `area`.
pub(super) fn render(state: &State, idx: NodeIdx, id: &str, f: &mut Frame, area: Rect) {
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
    render_info(state, n, w, f, info_area);
    render_history(state, w, f, hist_area);
    render_tokps(w, f, spark);
    render_log(w, f, logs);
}

/// The worker's figures, one `key value` line each.
fn info_lines(state: &State, w: &WorkerView) -> Vec<Line<'static>> {
    let i = &w.info;
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
    let slots = i
        .summary
        .as_ref()
        .map(|s| format!(" · {} slots", s.slots()))
        .unwrap_or_default();
    lines.push(kv("requests", format!("{} in flight{slots}", i.in_flight)));
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
    lines
}

/// The figures in a block, with a progress bar at the bottom while it loads.
fn render_info(state: &State, n: &NodeState, w: &WorkerView, f: &mut Frame, area: Rect) {
    let i = &w.info;
    let lines = info_lines(state, w);
    let info_block = block(format!(" {} on {} ", i.id, n.name));
    let inner = info_block.inner(area);
    f.render_widget(info_block, area);
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
}

/// State changes, newest first, with their age.
fn render_history(state: &State, w: &WorkerView, f: &mut Frame, area: Rect) {
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
    f.render_widget(Paragraph::new(hist).block(block(" State history ")), area);
}

/// Tokens per second now, and its history as a sparkline.
fn render_tokps(w: &WorkerView, f: &mut Frame, area: Rect) {
    let spark_block = block(format!(" tok/s {} ", fmt_rate(w.info.tokens_per_s)));
    let spark_inner = spark_block.inner(area);
    f.render_widget(spark_block, area);
    let data = w.tokps.tail(spark_inner.width as usize);
    f.render_widget(
        Sparkline::default()
            .data(&data)
            .style(Style::new().fg(Color::Green)),
        spark_inner,
    );
}

/// The last log lines that fit, each cut to the width.
fn render_log(w: &WorkerView, f: &mut Frame, area: Rect) {
    let log_block = block(format!(" Log ({} lines) ", w.log.len()));
    let log_inner = log_block.inner(area);
    f.render_widget(log_block, area);
    let h = log_inner.height as usize;
    let start = w.log.len().saturating_sub(h);
    let log_lines: Vec<Line> = w
        .log
        .iter()
        .skip(start)
        // A log line must not drive the terminal: colours go, other controls are made visible.
        .map(|l| {
            Line::raw(truncate(
                &rbee_proto::fmt::log_line(l),
                log_inner.width as usize,
            ))
        })
        .collect();
    if log_lines.is_empty() {
        f.render_widget(Paragraph::new("(no log lines yet)").style(DIM), log_inner);
    } else {
        f.render_widget(Paragraph::new(log_lines), log_inner);
    }
}
