#!/usr/bin/env bash
# Agent benchmarks, in one run on this machine:
#  1. tokens/s seen by a session client through agent + WebSocket vs the worker alone, same prompt,
#     same fixed length, interleaved runs (target ≥ 0.99×);
#  2. spawn-to-ready and request-to-first-token latency;
#  3. idle agent with 4 ready workers: agent CPU % of one core over 20 s and RSS (targets < 1 %, < 30 MB).
# Usage: bench/agent.sh [RUNS]. Prints markdown.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"; cd "$root"
runs="${1:-5}"; tokens=128
model="$(assets/fetch-model.sh)"
[ -n "${RBEE_BENCH_NO_BUILD:-}" ] || cargo build --release -q -p rbee-worker -p rbee-agent -p rbee-tui
bin=target/release
tmp="$(mktemp -d)"; trap 'kill $(cat "$tmp/pid" 2>/dev/null) 2>/dev/null; sleep 1; rm -rf "$tmp"' EXIT
$bin/rbee-agent --listen 127.0.0.1:0 --state-dir "$tmp/state" --model-dir "$(dirname "$model")" 2>"$tmp/agent.log" &
echo $! > "$tmp/pid"; agent=$!
for _ in $(seq 100); do [ -s "$tmp/state/agent.addr" ] && break; sleep 0.1; done
export RBEE_CONFIG="$tmp/tui.toml"
tui() { $bin/rbee-tui "$@"; }
tui nodes add n1 --url "ws://$(cat "$tmp/state/agent.addr")" --token-file "$tmp/state/token" >/dev/null
prompt="Once upon a time, in a small village at the edge of a great forest, there lived a beekeeper named"

t0=$(date +%s.%N); wid="$(tui workers spawn --node n1 --model "$model" --wait)"; t1=$(date +%s.%N)
spawn_ms=$(echo "($t1 - $t0) * 1000" | bc)
tui infer --node n1 --worker "$wid" --prompt "warm up" --max-tokens 8 >/dev/null 2>&1
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# The worker alone: a long-lived worker like the agent's, driven over its pipes with no agent
# (bench/direct.py), one generation per line; runs interleave with the relayed ones.
version="$(grep -o 'PROTOCOL_VERSION: u32 = [0-9]*' shared/src/lib.rs | awk '{print $4}')"
coproc DIRECT { python3 bench/direct.py "$bin/rbee-worker" "$model" "$version" "$prompt" "$tokens"; }
alone=(); relay=(); own=(); ttft=()
for _ in $(seq "$runs"); do
  echo go >&"${DIRECT[1]}"; read -r a <&"${DIRECT[0]}"; alone+=("$a")
  r="$(tui infer --node n1 --worker "$wid" --prompt "$prompt" --max-tokens $tokens --temperature 0 --ignore-eos --json)"
  relay+=("$(jq .client.decode_tokens_per_s <<<"$r")")
  own+=("$(jq .usage.decode_tokens_per_s <<<"$r")")
  ttft+=("$(jq .client.request_to_first_token_ms <<<"$r")")
done
exec {DIRECT[1]}>&-; wait "$DIRECT_PID" 2>/dev/null || true
ma=$(printf '%s\n' "${alone[@]}" | median); mr=$(printf '%s\n' "${relay[@]}" | median); mo=$(printf '%s\n' "${own[@]}" | median)
echo "| measure | value |"; echo "|---|---|"
echo "| worker alone (no agent, driven over its pipes), decode tok/s at the pipe (median of $runs) | $(printf %.1f "$ma") |"
echo "| through agent + WebSocket, client-observed decode tok/s | $(printf %.1f "$mr") |"
echo "| ratio (target ≥ 0.99) | $(echo "scale=4; $mr / $ma" | bc) |"
echo "| same relayed runs: the worker's own decode tok/s; client / worker | $(printf %.1f "$mo"); $(echo "scale=4; $mr / $mo" | bc) |"
echo "| per run (tok/s), alone · relayed | ${alone[*]} · ${relay[*]} |"
echo "| spawn → ready (\`workers spawn --wait\`, incl. CLI connect) | $(printf %.0f "$spawn_ms") ms |"
echo "| request → first token at the client, warm worker (prompt of 22 tokens) | $(printf '%s\n' "${ttft[@]}" | median | xargs printf %.0f) ms |"

for _ in 1 2 3; do tui workers spawn --node n1 --model "$model" --wait >/dev/null; done
sleep 3
ticks() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
c0=$(ticks); sleep 20; c1=$(ticks)
hz=$(getconf CLK_TCK)
cpu=$(echo "scale=3; ($c1 - $c0) * 100 / $hz / 20" | bc)
rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$agent/status")
echo "| idle agent, 4 ready workers: CPU % of one core over 20 s (target < 1) | $cpu |"
echo "| idle agent, 4 ready workers: RSS MiB (target < 30) | $rss |"
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), heartbeat 2 s, telemetry 1 s, $(date -u +%F)"
