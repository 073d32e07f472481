//! A worker's stderr: the last lines in memory for `tail_log`, everything on disk (rotated).
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWriteExt};

use super::lines::ByteLines;
use super::slot::Slot;

/// A log file over this size is moved to `<name>.log.1` when the worker starts again.
const ROTATE_BYTES: u64 = 8 << 20;

/// Copy `stderr` into the slot's in-memory tail and the log file at `path` until it ends.
pub(crate) async fn collect(slot: Arc<Slot>, path: PathBuf, stderr: impl AsyncRead + Unpin) {
    if std::fs::metadata(&path)
        .map(|m| m.len() > ROTATE_BYTES)
        .unwrap_or(false)
    {
        let _ = std::fs::rename(&path, path.with_extension("log.1"));
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .await
        .ok();
    let mut lines = ByteLines::new(stderr);
    while let Ok(Some(line)) = lines.next_line().await {
        let line = String::from_utf8_lossy(&line).into_owned();
        if let Some(f) = file.as_mut() {
            let _ = f.write_all(format!("{line}\n").as_bytes()).await;
        }
        slot.lock().push_log(line);
    }
}
