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
        Some(w) => match ctx.shared.supervisor.read_log(&w, lines, after) {
            Ok(r) => (r.lines, r.next, r.skipped),
            // A worker killed or removed: its file is still on disk (a first read only; a
            // follower's cursor counts lines of the live worker, so it is told it is gone).
            Err(e) if e.code == ErrorCode::NotFound && after.is_none() => {
                let Some(path) = gone_worker_log(ctx, &w) else {
                    return Err(e);
                };
                tail_file(&path, lines).map_err(|_| e)?
            }
            Err(e) => return Err(e),
        },
        None => {
            let Some(path) = ctx.shared.config.log_file.as_deref() else {
                return Err(ProtoError::new(
                    ErrorCode::NotFound,
                    "this agent logs to its stderr, not to a file (start it with --log-file)",
                ));
            };
            agent_log(path, ctx.shared.config.logs.keep, lines, after).map_err(|e| {
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

/// The log file a worker no longer listed left in the state directory, if there is one. Only
/// ids as the agent makes them (letters, digits, `-`, `_`) are looked up, so a client cannot
/// name a file elsewhere.
fn gone_worker_log(ctx: &Ctx, worker: &str) -> Option<std::path::PathBuf> {
    let plain = !worker.is_empty()
        && worker.len() <= 64
        && worker
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let state = ctx.shared.operators.parent()?;
    let path = state
        .join(rbee_proto::statedir::WORKER_LOGS)
        .join(format!("{worker}.log"));
    (plain && path.is_file()).then_some(path)
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
/// cursor is the file's inode (low 24 bits) over the byte offset (40 bits). A follower whose
/// file was rotated away since (it is `NAME.k` now, one of the `keep` kept) gets the rest of that
/// file and of every newer one, so no line written between two reads is missed.
fn agent_log(
    path: &Path,
    keep: usize,
    lines: usize,
    after: Option<u64>,
) -> std::io::Result<(Vec<String>, u64, u64)> {
    let Some(cursor) = after else {
        return tail_file(path, lines);
    };
    // Oldest first, the file being written last.
    let mut chain = rbee_host::rotate::files_oldest_first(path, keep);
    chain.retain(|p| p != path);
    chain.push(path.to_path_buf());
    let ino_of = |p: &Path| std::fs::metadata(p).ok().map(|m| m.ino() & INO_MASK);
    let (mut idx, mut start) = match chain.iter().position(|p| ino_of(p) == Some(cursor >> 40)) {
        Some(i) => (i, cursor & OFFSET_MASK),
        // Its file is gone (rotated past `keep`): the current one from its start.
        None => (chain.len() - 1, 0),
    };
    let mut all = Vec::new();
    let mut budget = MAX_FILE_READ;
    let next = loop {
        let mut f = std::fs::File::open(&chain[idx])?;
        let meta = f.metadata()?;
        let len = meta.len();
        if start > len {
            start = 0; // truncated (`keep = 0`)
        }
        let (mut got, complete) = read_lines(&mut f, start, budget)?;
        all.append(&mut got);
        budget = budget.saturating_sub(complete);
        let end = start + complete;
        // Read to its end and a newer file follows: go on there.
        if end >= len && idx + 1 < chain.len() && budget > 0 {
            idx += 1;
            start = 0;
            continue;
        }
        break ((meta.ino() & INO_MASK) << 40) | end;
    };
    let skipped = all.len().saturating_sub(lines);
    let kept = all.split_off(skipped);
    Ok((kept, next, skipped as u64))
}

/// The last `lines` complete lines of the file at `path` (within its last [`MAX_FILE_READ`]
/// bytes), and the cursor after them.
fn tail_file(path: &Path, lines: usize) -> std::io::Result<(Vec<String>, u64, u64)> {
    let mut f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    let start = meta.len().saturating_sub(MAX_FILE_READ);
    let (mut all, complete) = read_lines(&mut f, start, MAX_FILE_READ)?;
    if start > 0 && !all.is_empty() {
        all.remove(0); // the first line read may be the tail of one
    }
    let skipped = all.len().saturating_sub(lines);
    let next = ((meta.ino() & INO_MASK) << 40) | (start + complete);
    Ok((all.split_off(skipped), next, 0))
}

/// The complete lines of `f` from byte `start`, reading at most `max` bytes, and how many bytes
/// they took (a line still being written is left for the next read).
fn read_lines(f: &mut std::fs::File, start: u64, max: u64) -> std::io::Result<(Vec<String>, u64)> {
    f.seek(SeekFrom::Start(start))?;
    let mut data = Vec::new();
    f.take(max).read_to_end(&mut data)?;
    let complete = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    data.truncate(complete);
    let mut all: Vec<String> = data
        .split(|&b| b == b'\n')
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    all.pop(); // after the last newline
    Ok((all, complete as u64))
}

const INO_MASK: u64 = 0xff_ffff;
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
        let (lines, next, _) = agent_log(&path, 2, 2, None).unwrap();
        assert_eq!(lines, ["b", "c"]);
        let (lines, next, _) = agent_log(&path, 2, 100, Some(next)).unwrap();
        assert!(lines.is_empty());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b" line\nd\n").unwrap();
        let (lines, next, _) = agent_log(&path, 2, 100, Some(next)).unwrap();
        assert_eq!(lines, ["partial line", "d"]);
        // A line written just before a rotation, then the rotation: the follower gets the rest
        // of the rotated file, then the new one from its start.
        f.write_all(b"late\n").unwrap();
        std::fs::rename(&path, dir.path().join("agent.log.1")).unwrap();
        std::fs::write(&path, "e\n").unwrap();
        let (lines, next, _) = agent_log(&path, 2, 100, Some(next)).unwrap();
        assert_eq!(lines, ["late", "e"]);
        // Two more rotations, the follower's file now `.2`: still every line once.
        std::fs::write(&path, "e\nf\n").unwrap();
        std::fs::rename(
            dir.path().join("agent.log.1"),
            dir.path().join("agent.log.2"),
        )
        .unwrap();
        std::fs::rename(&path, dir.path().join("agent.log.1")).unwrap();
        std::fs::write(&path, "g\n").unwrap();
        let (lines, _, _) = agent_log(&path, 2, 100, Some(next)).unwrap();
        assert_eq!(lines, ["f", "g"]);
    }
}
