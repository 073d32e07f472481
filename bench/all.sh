#!/usr/bin/env bash
# Every benchmark of the project, one after another, as one markdown report on stdout.
# Usage: bench/all.sh > /tmp/report.md   (then paste the tables into BENCHMARKS.md)
# Each part also runs on its own; see the header of each script. Run on a quiet machine: the
# anchors share the run, but not the noise of a compiler in the background.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"; cd "$root"
assets/fetch-model.sh >/dev/null
# One build with every package at once (building subsets would rebuild with other features).
cargo build --release -q -p rbee-worker -p rbee-agent -p rbee-tui -p rbee-bench
export RBEE_BENCH_NO_BUILD=1
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(date -u +%F)"
echo
echo "## Worker: decode and prompt speed (bench/worker.sh)"; echo
bench/worker.sh
echo; echo "## Chat-length prompts per family (bench/chat.sh)"; echo
bench/chat.sh
echo; echo "## Worker throughput: batching, long prompts, prefix reuse (bench/throughput.sh)"; echo
bench/throughput.sh 1 3
echo; echo "## Agent: relay, latency, idle cost (bench/agent.sh)"; echo
bench/agent.sh
echo; echo "## Dashboard fan-in (bench/fanin.sh)"; echo
bench/fanin.sh
echo; echo "## Dashboard keypress to first token (target/release/keypress)"; echo
target/release/keypress
echo; echo "## Metrics: the cluster endpoint's scrape cost, 100 nodes x 8 workers (target/release/scrape)"; echo
target/release/scrape 100 50
echo; echo "## Gateway: cold request, overhead, 64 clients (bench/gateway.sh)"; echo
bench/gateway.sh 5 60 64
if [ -x bench/ssh.sh ]; then
  echo; echo "## SSH (bench/ssh.sh)"; echo
  bench/ssh.sh
fi
