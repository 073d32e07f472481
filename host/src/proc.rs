//! Memory of processes, from `/proc` (Linux). Every function answers `None` or 0 rather than fail:
//! the figures are for display and admission, never worth an error.

/// Resident memory of `pid` in bytes (`/proc/<pid>/statm`), or `None` when there is no such
/// process.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    statm_rss(&format!("/proc/{pid}/statm"))
}

/// Resident memory of this process in bytes (0 when `/proc` cannot be read).
pub fn own_rss_bytes() -> u64 {
    statm_rss("/proc/self/statm").unwrap_or(0)
}

/// Peak resident memory of this process in bytes (`VmHWM`), 0 when unknown.
pub fn own_peak_rss_bytes() -> u64 {
    own_status_bytes("VmHWM").unwrap_or(0)
}

/// A `VmXxx:` line of `/proc/self/status` in bytes (e.g. `VmHWM`, `VmRSS`).
pub fn own_status_bytes(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    status_bytes(&text, key)
}

/// The `key:` line of a `/proc/<pid>/status` text, in bytes.
fn status_bytes(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| {
        l.strip_prefix(key)
            .is_some_and(|rest| rest.starts_with(':'))
    })?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn statm_rss(path: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_memory_is_visible_and_strangers_are_none() {
        let rss = own_rss_bytes();
        assert!(rss > 0);
        assert_eq!(rss_bytes(std::process::id()).map(|r| r > 0), Some(true));
        assert!(rss_bytes(u32::MAX).is_none());
        assert!(own_peak_rss_bytes() >= rss / 2);
    }

    #[test]
    fn status_lines_are_read_by_exact_key() {
        let text = "VmHWMx:\t 1 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(status_bytes(text, "VmHWM"), Some(2048 * 1024));
        assert_eq!(status_bytes(text, "VmRSS"), Some(1024 * 1024));
        assert_eq!(status_bytes(text, "VmSwap"), None);
    }
}
