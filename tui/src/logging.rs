//! Logging to a file. The dashboard owns the terminal, so nothing may ever be printed to it.
use std::path::{Path, PathBuf};

use tracing_subscriber::EnvFilter;

use crate::nodes::error::TuiError;

/// `--log-file` / `RBEE_LOG_FILE`, else `<state dir>/rbee/tui.log`.
pub fn default_log_path() -> PathBuf {
    dirs::state_dir()
        .or_else(dirs::data_dir)
        .unwrap_or_else(std::env::temp_dir)
        .join("rbee")
        .join("tui.log")
}

/// Send `tracing` output (filter from `RUST_LOG`, default `info`) to `path`, appending.
pub fn init_file(path: &Path) -> Result<(), TuiError> {
    let err = |source| TuiError::LogFile {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Ok(())
}

/// Subcommands log to stderr, and only when `RUST_LOG` asks: their stdout and stderr are for
/// scripts.
pub fn init_stderr_if_asked() {
    if let Ok(filter) = EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
}
