//! A worker's stderr: the last lines in memory for `tail_log` / `read_log`, everything on disk
//! in `<state>/logs/<id>.log`, rotated by size (`[logs]` in the config; a line is never split).
use std::path::PathBuf;
use std::sync::Arc;

use rbee_host::rotate::{RotatingFile, Rotation};
use rbee_proto::config::LogRotation;
use tokio::io::AsyncRead;

use super::lines::ByteLines;
use super::slot::Slot;

/// The host crate's rotation from the config's.
pub(crate) fn rotation(cfg: &LogRotation) -> Rotation {
    Rotation {
        max_bytes: cfg.max_bytes,
        keep: cfg.keep,
    }
}

/// Copy `stderr` into the slot's in-memory tail and the log file at `path` until it ends.
pub(crate) async fn collect(
    slot: Arc<Slot>,
    path: PathBuf,
    rotation: Rotation,
    stderr: impl AsyncRead + Unpin,
) {
    if let Some(dir) = path.parent() {
        let removed = prune(dir, &slot.id, KEPT_WORKER_LOGS);
        if removed > 0 {
            tracing::info!(removed, "log files of long-gone workers removed");
        }
    }
    let mut file = match RotatingFile::open(&path, rotation) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(worker = %slot.id, path = %path.display(), "worker log not written: {e}");
            None
        }
    };
    let mut lines = ByteLines::new(stderr);
    while let Ok(Some(mut line)) = lines.next_line().await {
        line.push(b'\n');
        if let Some(f) = file.as_mut() {
            // Small appends to a local file: not worth a trip to the blocking pool.
            let _ = f.write_line(&line);
        }
        line.pop();
        let kept = memory_line(&line);
        slot.lock().push_log(kept);
    }
}

/// Workers whose log files are kept in `<state>/logs/` (the newest by last write): a killed
/// worker's log stays for a post-mortem (`workers logs`), but not forever.
const KEPT_WORKER_LOGS: usize = 200;

/// Remove the log files (`ID.log`, `ID.log.N`) of all but the `keep` most recently written
/// workers in `dir`, never `current`'s. Returns how many files went. A worker idle for longer
/// than `keep` others took to start and write would lose its file too; its new lines go on
/// into the open file, unseen by readers of the directory.
fn prune(dir: &std::path::Path, current: &str, keep: usize) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut by_worker: std::collections::HashMap<String, (std::time::SystemTime, Vec<PathBuf>)> =
        std::collections::HashMap::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((id, _)) = name.split_once(".log") else {
            continue;
        };
        if id == current || id.is_empty() {
            continue;
        }
        let modified = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        let w = by_worker
            .entry(id.to_string())
            .or_insert((std::time::UNIX_EPOCH, Vec::new()));
        w.0 = w.0.max(modified);
        w.1.push(e.path());
    }
    let mut workers: Vec<_> = by_worker.into_values().collect();
    workers.sort_by_key(|w| std::cmp::Reverse(w.0));
    workers
        .into_iter()
        .skip(keep)
        .flat_map(|(_, files)| files)
        .filter(|f| std::fs::remove_file(f).is_ok())
        .count()
}

/// Longest line kept whole in memory: answers cut lines at 64 KiB anyway, and 1 000 lines of a
/// megabyte each would hold a gigabyte of the agent's memory per worker.
const MEMORY_LINE_BYTES: usize = 60 << 10;

/// `line` as the in-memory tail keeps it: cut to [`MEMORY_LINE_BYTES`], saying how much is not
/// shown (the file has it whole).
fn memory_line(line: &[u8]) -> String {
    if line.len() <= MEMORY_LINE_BYTES {
        return String::from_utf8_lossy(line).into_owned();
    }
    let mut text = String::from_utf8_lossy(&line[..MEMORY_LINE_BYTES]).into_owned();
    // A character cut in two became U+FFFD: drop it.
    if text.ends_with('\u{fffd}') {
        text.pop();
    }
    text.push_str(&format!(
        " … [{} more bytes of this line not shown]",
        line.len() - MEMORY_LINE_BYTES
    ));
    text
}

/// What `read_log` answers: lines, the cursor after them, and lines no longer kept before them.
#[derive(Debug, PartialEq)]
pub struct LogRead {
    /// Oldest first.
    pub lines: Vec<String>,
    /// Pass back as `after` for what comes next.
    pub next: u64,
    /// Lines after the caller's cursor that are gone from memory (or beyond `lines`).
    pub skipped: u64,
}

impl super::Supervisor {
    /// The last `lines` lines of a worker's stderr kept in memory, or with `after` (a cursor from
    /// an earlier read) only the lines since.
    pub fn read_log(
        &self,
        id: &str,
        lines: usize,
        after: Option<u64>,
    ) -> Result<LogRead, rbee_proto::ProtoError> {
        let slot = self.slot(id)?;
        let st = slot.lock();
        Ok(window(&st.log, st.log_total, lines, after))
    }
}

/// The part of a ring `log` (the last of `total` lines pushed) a reader asks for.
fn window(
    log: &std::collections::VecDeque<String>,
    total: u64,
    lines: usize,
    after: Option<u64>,
) -> LogRead {
    let first_kept = total - log.len() as u64;
    let from = after.unwrap_or(0).clamp(first_kept, total);
    let start = from.max(total.saturating_sub(lines as u64));
    let skip = (start - first_kept) as usize;
    LogRead {
        lines: log.iter().skip(skip).cloned().collect(),
        next: total,
        skipped: after.map_or(0, |a| start.saturating_sub(a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_workers_logs_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let at = |secs: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let write = |name: &str, secs: u64| {
            let f = std::fs::File::create(dir.path().join(name)).unwrap();
            f.set_modified(at(secs)).unwrap();
        };
        write("w1.log", 100);
        write("w1.log.1", 50);
        write("w2.log", 300);
        write("w3.log", 200);
        write("w4.log", 10); // the worker starting now: never removed
        write("agent.toml", 1); // not a worker log
        let removed = prune(dir.path(), "w4", 2);
        assert_eq!(removed, 2, "w1's two files");
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["agent.toml", "w2.log", "w3.log", "w4.log"]);
        assert_eq!(prune(dir.path(), "w4", 2), 0, "nothing more to remove");
    }

    #[test]
    fn a_huge_line_is_kept_cut_in_memory() {
        let line = "é".repeat(500_000);
        let kept = memory_line(line.as_bytes());
        assert!(kept.len() < 64 << 10, "{}", kept.len());
        assert!(kept.starts_with("éé") && !kept.contains('\u{fffd}'));
        assert!(
            kept.ends_with("more bytes of this line not shown]"),
            "{}",
            &kept[kept.len() - 60..]
        );
        assert_eq!(memory_line(b"short"), "short");
    }

    #[test]
    fn a_follower_gets_each_line_once_and_is_told_what_it_missed() {
        let ring = |first: u64, last: u64| -> Vec<String> {
            (first..last).map(|i| i.to_string()).collect()
        };
        let log: std::collections::VecDeque<String> = ring(5, 10).into();
        // The last 3 of what is kept.
        let r = window(&log, 10, 3, None);
        assert_eq!((r.lines, r.next, r.skipped), (ring(7, 10), 10, 0));
        // From cursor 8: lines 8 and 9, nothing skipped.
        let r = window(&log, 10, 100, Some(8));
        assert_eq!((r.lines, r.skipped), (ring(8, 10), 0));
        // From cursor 2: lines 2..5 are gone from the ring.
        let r = window(&log, 10, 100, Some(2));
        assert_eq!((r.lines, r.skipped), (ring(5, 10), 3));
        // Up to date: nothing, same cursor.
        let r = window(&log, 10, 100, Some(10));
        assert_eq!((r.lines.len(), r.next, r.skipped), (0, 10, 0));
    }
}
