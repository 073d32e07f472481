//! The bounds of the session server. Every number here is in agent/README.md ("Limits"); the
//! connection counts are sized from the process's descriptor limit so that a flood of
//! connections can never take the descriptors the agent needs for its workers and files.
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Descriptors kept out of the connection budget: the agent's own files and its workers'
/// pipes and logs (4 per worker).
const RESERVED_DESCRIPTORS: u64 = 128;

/// The bounds of the session server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections not yet authenticated. A new one beyond it closes the oldest of them, so a
    /// flood of idle or slow connections cannot keep a client that sends its request out.
    pub pending: usize,
    /// Authenticated sessions at once; an upgrade beyond it is answered `503`.
    pub sessions: usize,
    /// From accept to `Welcome`: request head, upgrade and `Hello` together.
    pub handshake: Duration,
    /// Longest request head (bytes); a longer one is answered `431` and closed.
    pub head_bytes: usize,
    /// Requests of one session handled at once; beyond it the agent reads no further frames
    /// from that session until one finishes (the client's sends back up).
    pub in_flight: usize,
    /// A session that takes no frame for this long (its client stopped reading) is closed.
    pub write_stall: Duration,
}

impl Limits {
    /// The limits for a process that may hold `nofile` descriptors.
    pub fn for_descriptors(nofile: u64) -> Self {
        let budget = nofile.saturating_sub(RESERVED_DESCRIPTORS) as usize;
        Self {
            pending: (budget / 4).clamp(4, 128),
            sessions: (budget / 2).clamp(4, 512),
            handshake: Duration::from_secs(10),
            head_bytes: 8 << 10,
            in_flight: 64,
            write_stall: Duration::from_secs(30),
        }
    }

    /// The limits for this process's current descriptor limit.
    pub fn for_this_process() -> Self {
        Self::for_descriptors(descriptor_limit())
    }
}

/// The soft `RLIMIT_NOFILE` of this process.
pub fn descriptor_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_cur
}

/// Raise the soft descriptor limit to the hard one (as most daemons do); returns the new soft
/// limit.
pub fn raise_descriptor_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
    }
    descriptor_limit()
}

/// Connections that have not authenticated yet, oldest first. Admitting one beyond the limit
/// evicts the oldest.
pub(super) struct Pending {
    max: usize,
    queue: Mutex<VecDeque<(u64, CancellationToken)>>,
    next: AtomicU64,
}

/// One connection's place among the pending ones; it leaves when dropped.
pub(super) struct Ticket {
    pool: Arc<Pending>,
    id: u64,
    /// Cancelled when a newer connection took this one's place.
    pub evicted: CancellationToken,
}

impl Pending {
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            queue: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(0),
        })
    }

    /// A place for a new connection, evicting the oldest pending one when full.
    pub(super) fn admit(self: &Arc<Self>) -> Ticket {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        while q.len() >= self.max {
            if let Some((_, oldest)) = q.pop_front() {
                oldest.cancel();
            }
        }
        q.push_back((id, evicted.clone()));
        Ticket {
            pool: self.clone(),
            id,
            evicted,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.queue.lock().unwrap().len()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut q = self.pool.queue.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = q.iter().position(|(id, _)| *id == self.id) {
            q.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_fit_in_the_descriptors() {
        for nofile in [64, 256, 1024, 4096, 1 << 20] {
            let l = Limits::for_descriptors(nofile);
            assert!(l.pending >= 4 && l.sessions >= 4);
            if nofile >= 256 {
                assert!(
                    ((l.pending + l.sessions) as u64) < nofile - RESERVED_DESCRIPTORS / 2,
                    "{nofile}: {l:?}"
                );
            }
        }
        assert_eq!(Limits::for_descriptors(1024).pending, 128);
        assert_eq!(Limits::for_descriptors(256).pending, 32);
    }

    #[test]
    fn the_oldest_pending_connection_makes_room() {
        let p = Pending::new(2);
        let a = p.admit();
        let b = p.admit();
        assert!(!a.evicted.is_cancelled());
        let c = p.admit();
        assert!(a.evicted.is_cancelled(), "the oldest goes");
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        drop(b);
        assert_eq!(p.len(), 1);
        let _d = p.admit();
        assert!(
            !c.evicted.is_cancelled(),
            "room was made by a leaving connection"
        );
        drop(a);
        assert_eq!(p.len(), 2);
    }
}
