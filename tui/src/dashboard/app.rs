//! The dashboard in a terminal: raw mode and the alternate screen (restored however it ends:
//! return, error, panic, SIGTERM, SIGHUP), keys from crossterm into the [`Runtime`], and the
//! ephemeral nodes' agents stopped on the way out. The loop itself is the runtime's.
use crossterm::event::{Event as TermEvent, EventStream, KeyEventKind};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use futures_util::StreamExt;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use rbee_proto::config::NodeConfig;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::dashboard::action::Action;
use crate::dashboard::board::RequestBoard;
use crate::dashboard::runtime::{Driver, Input, Runtime};
use crate::nodes::config::NodeTarget;
use crate::nodes::error::TuiError;
use crate::nodes::stop::stop_ephemeral;

/// Puts the terminal back however we leave: return, error or panic unwinding through here.
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Leave raw mode and the alternate screen. Safe to call twice.
pub fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// Panics on the UI thread restore the terminal before the message is printed; panics elsewhere
/// (a session task) only go to the log, since printing would scribble over the dashboard.
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("panic: {info}");
        if std::thread::current().name() == Some("main") {
            restore_terminal();
            previous(info);
        }
    }));
}

/// Run the dashboard over `targets` until the operator quits; then stop the agents of SSH nodes
/// added as ephemeral (other agents are daemons and keep running). `config` is where `:add`
/// records nodes; `gateway` is the address and request board of a gateway serving beside it
/// (`--serve`), shown on the Requests screen.
pub async fn run(
    targets: Vec<NodeTarget>,
    config: std::path::PathBuf,
    gateway: Option<(String, RequestBoard)>,
) -> Result<(), TuiError> {
    let mut ephemeral: Vec<NodeConfig> = targets
        .iter()
        .filter_map(|t| match t {
            NodeTarget::Remote(n) if n.ssh.is_some() && n.ephemeral => Some(n.clone()),
            _ => None,
        })
        .collect();
    let mut rt = Runtime::start(targets, Some(config));
    if let Some((addr, board)) = gateway {
        rt.show_gateway(addr, board);
    }
    let result = in_terminal(&mut rt).await;
    ephemeral.extend_from_slice(rt.ephemeral());
    // Dropping the runtime ends every session before the ephemeral agents are stopped.
    drop(rt);
    if !ephemeral.is_empty() {
        stop_ephemeral(&ephemeral).await;
    }
    result
}

async fn in_terminal(rt: &mut Runtime) -> Result<(), TuiError> {
    install_panic_hook();
    enable_raw_mode().map_err(TuiError::Terminal)?;
    let _guard = TerminalGuard;
    execute!(std::io::stdout(), EnterAlternateScreen).map_err(TuiError::Terminal)?;
    let mut terminal =
        Terminal::new(CrosstermBackend::new(std::io::stdout())).map_err(TuiError::Terminal)?;
    terminal.clear().map_err(TuiError::Terminal)?;
    // A polite kill or a closed terminal ends the dashboard like `q`, so the terminal is restored.
    let mut keys = Keys {
        events: EventStream::new(),
        term: signal(SignalKind::terminate()).map_err(TuiError::Terminal)?,
        hup: signal(SignalKind::hangup()).map_err(TuiError::Terminal)?,
    };
    let result = rt.run(&mut terminal, &mut keys).await;
    let _ = terminal.show_cursor();
    result
}

/// The terminal's keys and resizes, and the signals that end the dashboard.
struct Keys {
    events: EventStream,
    term: Signal,
    hup: Signal,
}

impl Driver for Keys {
    async fn input(&mut self) -> Input {
        tokio::select! {
            ev = self.events.next() => match ev {
                Some(Ok(TermEvent::Key(k))) if k.kind != KeyEventKind::Release => Input::Action(Box::new(Action::Key(k))),
                Some(Ok(TermEvent::Resize(w, h))) => Input::Action(Box::new(Action::Resize(w, h))),
                Some(Ok(_)) => Input::Nothing,
                Some(Err(e)) => Input::Failed(TuiError::Terminal(e)),
                None => Input::Stop,
            },
            _ = self.term.recv() => Input::Stop,
            _ = self.hup.recv() => Input::Stop,
        }
    }
}
