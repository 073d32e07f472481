//! Pieces every screen uses: colours, bordered blocks, gauges, a row-by-row layout, cells for
//! connection and worker states.
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, BorderType, Cell, LineGauge, Paragraph};
use ratatui::Frame;
use rbee_proto::session::GpuTelemetry;
use rbee_proto::WorkerState;

use crate::dashboard::state::Conn;
use crate::fmt::{gib, gib_unit, ratio, text_bar, truncate};

/// The colour of keys, focus and graphs.
pub(super) const ACCENT: Color = Color::Cyan;
/// Secondary text.
pub(super) const DIM: Style = Style::new().fg(Color::DarkGray);

pub(super) fn block(title: impl Into<Line<'static>>) -> Block<'static> {
    Block::bordered()
        .border_type(BorderType::Rounded)
        .title(title.into())
        .border_style(DIM)
}

pub(super) fn conn_cell(conn: &Conn) -> Cell<'static> {
    match conn {
        Conn::Connected => Cell::from("● connected").style(Style::new().fg(Color::Green)),
        Conn::Connecting { .. } => Cell::from("◌ connecting").style(Style::new().fg(Color::Yellow)),
        Conn::Unreachable { .. } => Cell::from("✗ unreachable").style(Style::new().fg(Color::Red)),
    }
}

pub(super) fn gpu_cell(gpus: &[GpuTelemetry]) -> String {
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
pub(super) struct Rows {
    area: Rect,
    y: u16,
}

impl Rows {
    pub(super) fn new(area: Rect) -> Self {
        Self { area, y: area.y }
    }

    pub(super) fn left(&self) -> u16 {
        self.area.bottom().saturating_sub(self.y)
    }

    /// The next `h` rows, or `None` when full.
    pub(super) fn take(&mut self, h: u16) -> Option<Rect> {
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

    pub(super) fn line(&mut self, f: &mut Frame, l: Line) {
        if let Some(r) = self.take(1) {
            f.render_widget(Paragraph::new(l), r);
        }
    }
}

/// `GPU0 NVIDIA H100 40.0/80.0G 71% 64°C`, dropping the name when it would not fit in `max`.
pub(super) fn gpu_label(g: &GpuTelemetry, max: usize) -> String {
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
pub(super) fn gauge(label: String, r: f64, label_w: usize) -> LineGauge<'static> {
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
pub(super) fn label_width(width: u16) -> usize {
    (width as usize * 45 / 100).clamp(8, 44)
}

pub(super) fn state_style(s: WorkerState) -> Style {
    match s {
        WorkerState::Ready => Style::new().fg(Color::Green),
        WorkerState::Busy => Style::new().fg(Color::Cyan),
        WorkerState::Starting | WorkerState::Loading => Style::new().fg(Color::Yellow),
        WorkerState::Crashed | WorkerState::BackingOff => Style::new().fg(Color::Magenta),
        WorkerState::Failed => Style::new().fg(Color::Red),
        WorkerState::Stopping | WorkerState::Exited => DIM,
    }
}

/// Centered in `area`, at most `w` × `h`.
pub(super) fn popup_area(area: Rect, w: u16, h: u16) -> Rect {
    area.centered(
        Constraint::Length(w.min(area.width)),
        Constraint::Length(h.min(area.height)),
    )
}
