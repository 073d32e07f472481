//! The Requests screen: the gateway's table (`dashboard::view::requests_table`, the same one `serve --watch` draws)
//! when the dashboard runs a gateway, else how to start one.
use ratatui::layout::Rect;
use ratatui::style::Stylize;
use ratatui::text::Line;
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use super::widgets::block;
use crate::dashboard::state::State;
use crate::dashboard::view::requests_table::render_requests;

/// Draw the Requests screen into `area`.
pub(super) fn render(state: &State, f: &mut Frame, area: Rect) {
    if state.serving.is_some() {
        render_requests(&state.requests, state.now, f, area);
        return;
    }
    let text = vec![
        Line::raw(""),
        Line::from("No gateway in this dashboard.").bold(),
        Line::raw("Start it with `rbee-tui --serve 127.0.0.1:8080` to see the API traffic here."),
    ];
    f.render_widget(Paragraph::new(text).block(block(" Requests ")), area);
}
