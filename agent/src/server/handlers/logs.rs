//! Reading logs over the session: a worker's stderr (`tail_log`, `read_log`) or the agent's own
//! log file (`read_log` without a worker). Every answer fits in one frame: very long lines are
//! cut saying how much, and beyond a total the oldest lines are left out (counted as skipped).
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rbee_proto::session::Reply;
use rbee_proto::{ErrorCode, ProtoError, WorkerId};

use super::ctx::{Answer, Ctx};

/// Most lines one answer holds.
pub(super) const MAX_LINES: usize = 10_000;
/// Longest line an answer carries whole.
const MAX_LINE_BYTES: usize = 64 << 10;
/// Most bytes of lines in one answer (well inside the 1 MiB frame limit).
const MAX_ANSWER_BYTES: usize = 512 << 10;
/// Most of the agent's log file read for one answer.
const MAX_FILE_READ: u64 = 16 << 20;

/// `tail_log`: the last lines of a worker's stderr.
pub(super) fn tail_log(ctx: &Ctx, worker: WorkerId, lines: usize) -> Answer {
    let read = ctx
        .shared
        .supervisor
        .read_log(&worker, lines.min(MAX_LINES), None)?;
    let (lines, _) = fit(read.lines);
    Ok(Some(Reply::Log { lines, worker }))
}

/// `read_log`: a worker's log, or the agent's own.
pub(super) fn read_log(
    ctx: &Ctx,
    worker: Option<WorkerId>,
    lines: usize,
    after: Option<u64>,
) -> Answer {
    let lines = lines.min(MAX_LINES);
    let (all, next, skipped) = match worker {
        Some(w) => {
            let r = ctx.shared.supervisor.read_log(&w, lines, after)?;
            (r.lines, r.next, r.skipped)
        }
        None => {
            let Some(path) = ctx.shared.config.log_file.as_deref() else {
                return Err(ProtoError::new(
                    ErrorCode::NotFound,
                    "this agent logs to its stderr, not to a file (start it with --log-file)",
                ));
            };
            agent_log(path, lines, after).map_err(|e| {
                ProtoError::new(
                    ErrorCode::Internal,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?
        }
    };
    let (lines, left_out) = fit(all);
    Ok(Some(Reply::LogLines {
        lines,
        next,
        skipped: skipped + left_out,
    }))
}

/// Lines cut to [`MAX_LINE_BYTES`], the newest kept within [`MAX_ANSWER_BYTES`]; how many of
/// the oldest were left out.
fn fit(lines: Vec<String>) -> (Vec<String>, u64) {
    let mut total = 0usize;
    let mut kept: Vec<String> = Vec::new();
    let n = lines.len();
    for mut l in lines.into_iter().rev() {
        if l.len() > MAX_LINE_BYTES {
            let mut cut = MAX_LINE_BYTES;
            while !l.is_char_boundary(cut) {
                cut -= 1;
            }
            let dropped = l.len() - cut;
            l.truncate(cut);
            l.push_str(&format!(" … [{dropped} more bytes of this line not shown]"));
        }
        if total + l.len() > MAX_ANSWER_BYTES && !kept.is_empty() {
            break;
        }
        total += l.len();
        kept.push(l);
    }
    kept.reverse();
    let left_out = (n - kept.len()) as u64;
    (kept, left_out)
}

/// The agent's log file: the last `lines` complete lines, or those after cursor `after`. The
/// cursor is the file's inode (low 24 bits) over the byte offset (40 bits), so a rotation
/// (a new file) is noticed and the new file read from its start.
fn agent_log(
    path: &Path,
    lines: usize,
    after: Option<u64>,
) -> std::io::Result<(Vec<String>, u64, u64)> {
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    let ino = meta.ino() & 0xff_ffff;
    let len = meta.len();
    let start = match after {
        Some(c) if c >> 40 == ino && (c & OFFSET_MASK) <= len => c & OFFSET_MASK,
        Some(_) => 0,
        None => len.saturating_sub(MAX_FILE_READ),
    };
    f.seek(SeekFrom::Start(start))?;
    let mut data = Vec::new();
    f.take(MAX_FILE_READ).read_to_end(&mut data)?;
    // Only complete lines; a line being written is read next time.
    let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    data.truncate(complete);
    let mut all: Vec<String> = data
        .split(|&b| b == b'\n')
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    all.pop(); // after the last newline
    if after.is_none() && start > 0 && !all.is_empty() {
        all.remove(0); // the first line read may be the tail of one
    }
    let skipped = all.len().saturating_sub(lines);
    let next = (ino << 40) | (start + complete as u64);
    let kept = all.split_off(skipped);
    let skipped = if after.is_some() { skipped as u64 } else { 0 };
    Ok((kept, next, skipped))
}

const OFFSET_MASK: u64 = (1 << 40) - 1;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn long_lines_are_cut_and_the_answer_stays_within_a_frame() {
        let huge = "é".repeat(600_000);
        let (lines, left_out) = fit(vec!["old".into(), huge, "new".into()]);
        assert_eq!(left_out, 0);
        assert_eq!(lines[0], "old");
        assert!(lines[1].len() < MAX_LINE_BYTES + 64, "{}", lines[1].len());
        assert!(lines[1].ends_with("more bytes of this line not shown]"));
        let many: Vec<String> = (0..20_000).map(|i| format!("{i:060}")).collect();
        let (lines, left_out) = fit(many);
        assert!(lines.iter().map(String::len).sum::<usize>() <= MAX_ANSWER_BYTES);
        assert_eq!(lines.last().unwrap(), &format!("{:060}", 19_999));
        assert_eq!(left_out as usize + lines.len(), 20_000);
    }

    #[test]
    fn the_agent_log_is_followed_line_by_line_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        std::fs::write(&path, "a\nb\nc\npartial").unwrap();
        let (lines, next, _) = agent_log(&path, 2, None).unwrap();
        assert_eq!(lines, ["b", "c"]);
        let (lines, next, _) = agent_log(&path, 100, Some(next)).unwrap();
        assert!(lines.is_empty());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b" line\nd\n").unwrap();
        let (lines, next, _) = agent_log(&path, 100, Some(next)).unwrap();
        assert_eq!(lines, ["partial line", "d"]);
        // Rotated: a new file under the name, read from its start.
        std::fs::rename(&path, dir.path().join("agent.log.1")).unwrap();
        std::fs::write(&path, "e\n").unwrap();
        let (lines, _, _) = agent_log(&path, 100, Some(next)).unwrap();
        assert_eq!(lines, ["e"]);
    }
}
