//! Append-only audit log (JSON lines) that also feeds subscribed sessions.
//!
//! Entries a peer can cause at will (failed logins) go through [`Audit::record_limited`]: a
//! token bucket per action lets [`BURST`] through at once and then [`PER_SECOND`] per second;
//! the rest are counted, and the count rides on the next entry written, so a flood costs a few
//! lines instead of filling the disk, the log and every dashboard's event list.
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use rbee_host::rotate::{RotatingFile, Rotation};
use rbee_proto::session::{AuditEntry, Event};
use tokio::sync::broadcast;

/// Entries of one rate-limited action written at once before the rate applies.
pub const BURST: f64 = 20.0;
/// Entries of one rate-limited action written per second after the burst.
pub const PER_SECOND: f64 = 1.0;

/// The audit log: one JSON line per security- or lifecycle-relevant action.
pub struct Audit {
    file: Mutex<RotatingFile>,
    events: broadcast::Sender<Event>,
    limits: Mutex<HashMap<String, Bucket>>,
    /// Who each open session says it is, by peer address: written into its entries.
    sessions: Mutex<HashMap<String, String>>,
}

/// A token bucket and what it held back.
struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
    first_suppressed: Option<Instant>,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Self {
            tokens: BURST,
            last: now,
            suppressed: 0,
            first_suppressed: None,
        }
    }

    /// `Some(note)` when an entry may be written now (the note tells of entries held back).
    fn take(&mut self, now: Instant) -> Option<String> {
        let refill = now.duration_since(self.last).as_secs_f64() * PER_SECOND;
        self.tokens = (self.tokens + refill).min(BURST);
        self.last = now;
        if self.tokens < 1.0 {
            self.suppressed += 1;
            self.first_suppressed.get_or_insert(now);
            return None;
        }
        self.tokens -= 1.0;
        let note = match self.first_suppressed.take() {
            Some(since) => format!(
                " ({} more like this not logged in the last {:.0} s)",
                std::mem::take(&mut self.suppressed),
                now.duration_since(since).as_secs_f64().max(1.0)
            ),
            None => String::new(),
        };
        Some(note)
    }
}

impl Audit {
    /// Open (or create) the log at `path`, readable by the agent's user only, rotated at the
    /// default size; entries are also sent on `events`.
    pub fn open(path: &Path, events: broadcast::Sender<Event>) -> std::io::Result<Self> {
        Self::open_rotated(path, Rotation::default(), events)
    }

    /// [`open`](Self::open), rotated by size as `rotation` says (an entry is never split).
    pub fn open_rotated(
        path: &Path,
        rotation: Rotation,
        events: broadcast::Sender<Event>,
    ) -> std::io::Result<Self> {
        let file = RotatingFile::open(path, rotation)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self {
            file: Mutex::new(file),
            events,
            limits: Mutex::default(),
            sessions: Mutex::default(),
        })
    }

    /// Record one entry: written to disk before it is announced.
    pub fn record(
        &self,
        action: &str,
        peer: Option<String>,
        worker: Option<String>,
        detail: impl Into<String>,
    ) {
        let who = peer.as_ref().and_then(|p| {
            let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            sessions.get(p).cloned()
        });
        let entry = AuditEntry {
            at: rbee_proto::now_millis(),
            action: action.into(),
            peer,
            who,
            worker,
            detail: detail.into(),
        };
        let mut line = serde_json::to_string(&entry).expect("audit entry serializes");
        line.push('\n');
        {
            let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = f.write_line(line.as_bytes()) {
                tracing::error!("audit log write failed: {e}");
            }
        }
        tracing::info!(action = %entry.action, worker = ?entry.worker, peer = ?entry.peer, who = ?entry.who, "audit: {}", entry.detail);
        let _ = self.events.send(Event::Audit { entry });
    }

    /// [`record`](Self::record), within the rate of its action (see the module docs). Returns
    /// whether the entry was written.
    pub fn record_limited(&self, action: &str, peer: Option<String>, detail: String) -> bool {
        let now = Instant::now();
        let note = {
            let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
            limits
                .entry(action.to_string())
                .or_insert_with(|| Bucket::new(now))
                .take(now)
        };
        match note {
            Some(note) => {
                self.record(action, peer, None, detail + &note);
                true
            }
            None => false,
        }
    }

    /// From now on, entries with `peer` name `who` (the client's identity and token).
    pub fn session_started(&self, peer: &str, who: String) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.insert(peer.into(), who);
    }

    /// The session at `peer` is over; its address may be reused by another.
    pub fn session_ended(&self, peer: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.remove(peer);
    }

    /// Make what was written durable (at shutdown).
    pub fn flush(&self) {
        let f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = f.sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flood_is_cut_to_the_burst_then_the_rate_and_counted() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        let written = (0..1000).filter(|_| b.take(t0).is_some()).count();
        assert_eq!(written, BURST as usize);
        // Two seconds later: two more, the first telling how many were held back.
        let t2 = t0 + Duration::from_secs(2);
        let note = b.take(t2).unwrap();
        assert_eq!(note, " (980 more like this not logged in the last 2 s)");
        assert_eq!(b.take(t2).unwrap(), "");
        assert!(b.take(t2).is_none());
    }

    #[test]
    fn audit_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (tx, _rx) = broadcast::channel(4);
        let a = Audit::open(&path, tx).unwrap();
        for i in 0..100 {
            a.record_limited("auth_failed", None, format!("try {i}"));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), BURST as usize);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
