//! How far a node's clock is from this machine's, as the dashboard and `status` say it. Requests
//! carry time budgets, not absolute times, so an offset breaks nothing in rbee; it is shown
//! because logs, audit entries and telemetry timestamps from that node are off by as much.

/// Offsets beyond this many milliseconds either way are called out as a warning.
pub const CLOCK_WARN_MS: i64 = 3_000;

/// `+120.0 s` / `-0.4 s`: the agent's clock against this machine's.
pub fn offset_text(ms: i64) -> String {
    format!("{:+.1} s", ms as f64 / 1000.0)
}

/// Whether an offset is large enough to warn about.
pub fn skewed(ms: i64) -> bool {
    ms.abs() > CLOCK_WARN_MS
}

/// The warning line for a skewed clock, or `None` when the clocks agree closely enough.
pub fn warning(ms: i64) -> Option<String> {
    skewed(ms).then(|| {
        let way = if ms > 0 { "ahead of" } else { "behind" };
        format!(
            "clock {} s {way} this machine (its timestamps are off by as much)",
            format_args!("{:.1}", (ms as f64 / 1000.0).abs())
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_offsets_pass_and_large_ones_warn_with_their_direction() {
        assert_eq!(offset_text(120_000), "+120.0 s");
        assert_eq!(offset_text(-400), "-0.4 s");
        assert_eq!(warning(2_999), None);
        assert!(warning(120_000)
            .unwrap()
            .starts_with("clock 120.0 s ahead of"));
        assert!(warning(-120_000)
            .unwrap()
            .starts_with("clock 120.0 s behind"));
    }
}
