//! `rbee-tui`: parse the command line, run it, and turn a failure into one line on stderr.
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = rbee_tui::cli::args::Cli::parse();
    // One thread: the dashboard waits on sockets and draws; a multi-threaded runtime only added
    // cross-thread wake-ups for every event (measured by bench/fanin.sh).
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(rbee_tui::cli::run(cli))
                .map_err(anyhow::Error::from)
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e
                .downcast_ref::<rbee_tui::TuiError>()
                .map(|e| e.exit_code())
                .unwrap_or(1);
            // Our errors already name their cause, so the chain would repeat it; one line only.
            // Agent- and user-supplied names inside it are shown with control characters escaped.
            let msg = format!("{e}").replace('\n', " ");
            eprintln!("rbee-tui: {}", rbee_proto::fmt::printable(&msg));
            ExitCode::from(code)
        }
    }
}
