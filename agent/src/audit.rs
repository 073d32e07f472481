//! Append-only audit log (JSON lines) that also feeds subscribed sessions.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use rbee_proto::session::{AuditEntry, Event};
use tokio::sync::broadcast;

/// The audit log: one JSON line per security- or lifecycle-relevant action.
pub struct Audit {
    file: Mutex<File>,
    events: broadcast::Sender<Event>,
}

impl Audit {
    /// Open (or create) the log at `path`; entries are also sent on `events`.
    pub fn open(path: &Path, events: broadcast::Sender<Event>) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file: Mutex::new(file),
            events,
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
        let entry = AuditEntry {
            at: rbee_proto::now_millis(),
            action: action.into(),
            peer,
            worker,
            detail: detail.into(),
        };
        let mut line = serde_json::to_string(&entry).expect("audit entry serializes");
        line.push('\n');
        {
            let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = f.write_all(line.as_bytes()) {
                tracing::error!("audit log write failed: {e}");
            }
        }
        tracing::info!(action = %entry.action, worker = ?entry.worker, peer = ?entry.peer, "audit: {}", entry.detail);
        let _ = self.events.send(Event::Audit { entry });
    }

    /// Make what was written durable (at shutdown).
    pub fn flush(&self) {
        let f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = f.sync_all();
    }
}
