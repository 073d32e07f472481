//! The prompt pane: where the conversation goes (and whether it is a chat or, for a model
//! without a chat template, plain completion), live TTFT and tok/s, the turns with their roles
//! (the system turn once at the top), the streamed answer, the input. Agent text is shown through
//! `printable`, so a model's output cannot drive the terminal.
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Paragraph};
use ratatui::Frame;

use super::widgets::{ACCENT, DIM};
use rbee_proto::fmt::printable;
use rbee_proto::Role;

use crate::dashboard::state::{PromptPane, State};
use crate::fmt::{short_model, truncate, wrap};

/// Draw the pane into `area`.
pub(super) fn render(state: &State, p: &PromptPane, f: &mut Frame, area: Rect) {
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
        .title(format!(
            " Prompt → {} on {} · {} ",
            printable(&target),
            printable(node),
            if p.completion {
                "completion: model has no chat template"
            } else {
                "chat"
            }
        ))
        .title(Line::from(format!(" {} ", stats.join(" · "))).right_aligned());
    let inner = b.inner(area);
    f.render_widget(b, area);
    if inner.height == 0 {
        return;
    }
    let [out_area, in_area] =
        Layout::vertical([Constraint::Min(0), Constraint::Length(1)]).areas(inner);
    let width = out_area.width as usize;
    let mut lines = conversation(p, width);
    if let Some(e) = p.run.as_ref().and_then(|r| r.error.as_ref()) {
        lines.extend(
            wrap(&format!("error: {}", printable(e)), width)
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

/// The turns with their roles: the system turn once at the top, the finished exchanges, then the
/// question being answered and the answer so far.
fn conversation(p: &PromptPane, width: usize) -> Vec<Line<'static>> {
    let mut lines: Vec<Line> = Vec::new();
    let mut turn = |role: Role, text: &str| {
        let (label, style) = match role {
            Role::System => ("system", DIM),
            Role::User => ("user", Style::new().fg(ACCENT)),
            Role::Assistant => ("assistant", Style::new()),
        };
        let shown: Vec<String> = text
            .split('\n')
            .map(|l| printable(l).into_owned())
            .collect();
        lines.extend(
            wrap(&format!("{label} › {}", shown.join("\n")), width)
                .into_iter()
                .map(|l| Line::styled(l, style)),
        );
    };
    if !p.system.is_empty() {
        turn(Role::System, &p.system);
    }
    for m in &p.history {
        turn(m.role, &m.content);
    }
    if !p.asked.is_empty() {
        turn(Role::User, &p.asked);
        if !p.output.is_empty() || p.run.as_ref().is_some_and(|r| r.active) {
            turn(Role::Assistant, &p.output);
        }
    }
    lines
}
