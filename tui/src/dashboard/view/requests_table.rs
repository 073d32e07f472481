//! The Requests view: the gateway's API traffic as a table, newest first — who asked, which
//! model, where it runs, how long it waited, its time to first token, tokens and speed, and how
//! it ended. A pure function of the board's rows and the clock, like every dashboard view.
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::widgets::{Block, Borders, Cell, Row, Table};
use ratatui::Frame;
use rbee_proto::fmt::age as fmt_age;
use rbee_proto::UnixMillis;

use crate::dashboard::board::{Phase, RequestRow};

fn ms(v: Option<u64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v >= 10_000 => format!("{:.0}s", v as f64 / 1000.0),
        Some(v) if v >= 1000 => format!("{:.1}s", v as f64 / 1000.0),
        Some(v) => format!("{v}ms"),
    }
}

/// Draw `rows` (oldest first, as the board keeps them) into `area` at time `now`.
pub fn render_requests(rows: &[RequestRow], now: UnixMillis, f: &mut Frame, area: Rect) {
    let waiting = rows.iter().filter(|r| r.phase == Phase::Waiting).count();
    let running = rows.iter().filter(|r| r.phase == Phase::Running).count();
    let failed = rows
        .iter()
        .filter(|r| matches!(&r.phase, Phase::Done(o) if o != "ok" && o != "cancelled"))
        .count();
    let live_tok_s: f64 = rows
        .iter()
        .filter(|r| r.phase == Phase::Running)
        .map(|r| r.tok_s)
        .sum::<f64>()
        .max(0.0);
    let title = format!(
        " Requests · {running} running · {waiting} waiting · {failed} failed · {live_tok_s:.0} tok/s "
    );
    let header = Row::new([
        "AGE",
        "CLIENT",
        "MODEL",
        "NODE/WORKER",
        "STATE",
        "QUEUE",
        "TTFT",
        "TOKENS",
        "TOK/S",
    ])
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::DIM));
    let body = rows.iter().rev().map(|r| {
        let (state, style) = match &r.phase {
            Phase::Waiting => ("waiting".to_string(), Style::new().fg(Color::Yellow)),
            Phase::Running => ("running".to_string(), Style::new().fg(Color::Green)),
            Phase::Done(o) if o == "ok" => ("ok".to_string(), Style::new()),
            Phase::Done(o) if o == "cancelled" => {
                (o.clone(), Style::new().add_modifier(Modifier::DIM))
            }
            Phase::Done(o) => (o.clone(), Style::new().fg(Color::Red)),
        };
        let place = if r.node.is_empty() {
            "–".to_string()
        } else {
            format!("{}/{}", r.node, r.worker)
        };
        let queue = match (&r.phase, r.queue_ms) {
            (Phase::Waiting, _) => ms(Some(now.saturating_sub(r.arrived))),
            (_, q) => ms(q),
        };
        Row::new(vec![
            Cell::from(fmt_age(now.saturating_sub(r.arrived))),
            Cell::from(r.key.clone().unwrap_or_else(|| r.client.clone())),
            Cell::from(crate::fmt::short_model(&r.model).to_string()),
            Cell::from(place),
            Cell::from(state),
            Cell::from(queue),
            Cell::from(ms(r.ttft_ms)),
            Cell::from(r.tokens.to_string()),
            Cell::from(if r.tok_s > 0.0 {
                format!("{:.1}", r.tok_s)
            } else {
                "–".into()
            }),
        ])
        .style(style)
    });
    let widths = [
        Constraint::Length(4),
        Constraint::Length(15),
        Constraint::Fill(1),
        Constraint::Length(12),
        Constraint::Length(12),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(6),
    ];
    let table = Table::new(body, widths)
        .header(header)
        .block(Block::default().borders(Borders::ALL).title(title));
    f.render_widget(table, area);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn row(id: u64, phase: Phase, node: &str) -> RequestRow {
        RequestRow {
            id,
            arrived: 1_000,
            client: "127.0.0.1:5000".into(),
            key: (id == 2).then(|| "alice".into()),
            model: "/m/SmolLM2.gguf".into(),
            node: node.into(),
            worker: if node.is_empty() {
                String::new()
            } else {
                "w1".into()
            },
            phase,
            queue_ms: (!node.is_empty()).then_some(12),
            ttft_ms: (!node.is_empty()).then_some(340),
            tokens: 17,
            tok_s: 41.5,
            total_ms: None,
        }
    }

    #[test]
    fn shows_every_phase_newest_first() {
        let rows = vec![
            row(1, Phase::Done("ok".into()), "a"),
            row(2, Phase::Done("queue_full".into()), ""),
            row(3, Phase::Running, "b"),
            row(4, Phase::Waiting, ""),
        ];
        let mut t = Terminal::new(TestBackend::new(100, 8)).unwrap();
        t.draw(|f| render_requests(&rows, 3_500, f, f.area()))
            .unwrap();
        let text: String = t
            .backend()
            .buffer()
            .content()
            .chunks(100)
            .map(|l| l.iter().map(|c| c.symbol()).collect::<String>() + "\n")
            .collect();
        assert!(
            text.contains("1 running · 1 waiting · 1 failed · 42 tok/s"),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[2].contains("waiting") && lines[2].contains("2.5s"),
            "{text}"
        );
        assert!(
            lines[3].contains("b/w1") && lines[3].contains("340ms"),
            "{text}"
        );
        assert!(
            lines[4].contains("alice") && lines[4].contains("queue_full"),
            "{text}"
        );
        assert!(
            lines[5].contains("SmolLM2.gguf") && lines[5].contains("ok"),
            "{text}"
        );
    }
}
