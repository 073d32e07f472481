//! The Events screen: worker state changes, audit entries and errors of every node, newest first,
//! the selected one in full below.
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, HighlightSpacing, Paragraph, Row, Table, TableState};
use ratatui::Frame;
use rbee_proto::fmt::age as fmt_age;

use super::widgets::{block, DIM};
use crate::dashboard::state::{EventKind, State};
use crate::fmt::wrap;

/// Draw the events list into `area`.
pub(super) fn render(state: &State, f: &mut Frame, area: Rect) {
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
