#!/usr/bin/env bash
# Fan-in benchmark: one dashboard process (rbee-tui's real session, update and view code,
# rendering headless into a 200×50 ratatui TestBackend) follows 100 fake agents × 8 workers,
# each worker reporting 50 tokens/s through 50 heartbeats a second, with 1 Hz telemetry per agent.
# The agents are `loadgen`, a separate process on 127.0.0.1, so only the dashboard's CPU is counted.
# Targets: dashboard CPU < 25 % of one core, frame time p99 < 16 ms; peak RSS is reported.
# Usage: bench/fanin.sh [extra fanin flags, e.g. --seconds 60 --screen node --prompt --backend ansi].
# Prints markdown.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"; cd "$root"
[ -n "${RBEE_BENCH_NO_BUILD:-}" ] || cargo build --release -q -p rbee-bench
exec target/release/fanin --agents 100 --workers 8 --tokens-per-s 50 --seconds 30 "$@"
