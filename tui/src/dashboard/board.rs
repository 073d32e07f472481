//! The live list of API requests, for the dashboard's Requests view: every request the gateway
//! holds and the most recent finished ones, with where they run and how they go. The hub writes
//! it as things happen; readers take a [`RequestBoard::snapshot`] (plain data).
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use rbee_proto::UnixMillis;

/// The gateway's number for a request (`job::JobId`; spelled here so this file imports nothing of
/// the gateway and the dashboard's state can hold rows without an import circle).
type JobId = u64;

/// Finished requests kept for the view.
pub const KEPT: usize = 500;

/// Where a request is.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// In the queue, waiting for a worker (or for one to load).
    Waiting,
    /// On a worker.
    Running,
    /// Over: `ok`, `cancelled`, or the error code.
    Done(String),
}

/// One API request as the view shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRow {
    /// The gateway's number for it.
    pub id: JobId,
    /// When it arrived (the gateway's clock).
    pub arrived: UnixMillis,
    /// The client's address.
    pub client: String,
    /// The key's id, when keys are configured.
    pub key: Option<String>,
    /// The model asked for.
    pub model: String,
    /// Where it runs or ran (empty before it is placed).
    pub node: String,
    /// The worker (empty before it is placed).
    pub worker: String,
    /// Waiting, running, or how it ended.
    pub phase: Phase,
    /// Milliseconds waiting for a worker, once placed.
    pub queue_ms: Option<u64>,
    /// Milliseconds from arrival to the first token.
    pub ttft_ms: Option<u64>,
    /// Pieces of text streamed so far; the worker's token count once done.
    pub tokens: u64,
    /// Tokens per second since the first token (the worker's decode speed once done).
    pub tok_s: f64,
    /// Milliseconds from arrival to the end.
    pub total_ms: Option<u64>,
}

/// The board, shared between the hub (writer) and whoever shows it.
#[derive(Debug, Clone, Default)]
pub struct RequestBoard {
    inner: Arc<Mutex<VecDeque<RequestRow>>>,
}

impl RequestBoard {
    /// Every row, oldest first: the requests held now, then up to [`KEPT`] finished ones.
    pub fn snapshot(&self) -> Vec<RequestRow> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<RequestRow>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request arrived.
    pub fn add(&self, row: RequestRow) {
        let mut rows = self.lock();
        rows.push_back(row);
        // Drop the oldest finished rows beyond the limit; live ones always stay.
        let done = rows
            .iter()
            .filter(|r| matches!(r.phase, Phase::Done(_)))
            .count();
        if done > KEPT {
            let mut extra = done - KEPT;
            rows.retain(|r| {
                if extra > 0 && matches!(r.phase, Phase::Done(_)) {
                    extra -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }

    /// Change request `id`'s row.
    pub fn update(&self, id: JobId, f: impl FnOnce(&mut RequestRow)) {
        let mut rows = self.lock();
        // Recent requests are at the back.
        if let Some(r) = rows.iter_mut().rev().find(|r| r.id == id) {
            f(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: JobId, phase: Phase) -> RequestRow {
        RequestRow {
            id,
            arrived: 0,
            client: String::new(),
            key: None,
            model: "m".into(),
            node: String::new(),
            worker: String::new(),
            phase,
            queue_ms: None,
            ttft_ms: None,
            tokens: 0,
            tok_s: 0.0,
            total_ms: None,
        }
    }

    #[test]
    fn keeps_live_rows_and_the_latest_finished() {
        let b = RequestBoard::default();
        b.add(row(0, Phase::Running));
        for i in 1..=(KEPT as u64 + 10) {
            b.add(row(i, Phase::Done("ok".into())));
        }
        let rows = b.snapshot();
        assert_eq!(rows.len(), KEPT + 1);
        assert_eq!(rows[0].id, 0, "a live row is never dropped");
        assert_eq!(rows[1].id, 11);
        b.update(0, |r| r.phase = Phase::Done("cancelled".into()));
        assert_eq!(b.snapshot()[0].phase, Phase::Done("cancelled".into()));
    }
}
