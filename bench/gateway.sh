#!/usr/bin/env bash
# Gateway benchmarks (issue 12), in one run on this machine, over two real agents:
#  1. cold request → first token: the model loaded on no node; the gateway spawns a worker on
#     demand and streams once it is ready;
#  2. overhead: client-observed decode tok/s through `rbee-tui serve` (`/v1/completions`, SSE over
#     HTTP) vs a direct session to the same worker (`rbee-tui infer --json`), same prompt, same
#     fixed length, interleaved runs (target ≥ 0.98×; the median of the per-pair ratios);
#  3. load: CLIENTS concurrent streaming clients for SECONDS against the 2 nodes: every request
#     answered exactly once or refused with 429/503, none lost or hung; requests/s, TTFT p50/p99,
#     queue wait p99 (the gateway's audit log), gateway CPU and RSS.
# Usage: bench/gateway.sh [RUNS] [SECONDS] [CLIENTS]   (defaults 7, 60, 64). Prints markdown.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"; cd "$root"
runs="${1:-7}"; seconds="${2:-60}"; clients="${3:-64}"; tokens=128
model="$(assets/fetch-model.sh)"; name="$(basename "$model" .gguf)"
[ -n "${RBEE_BENCH_NO_BUILD:-}" ] || cargo build --release -q -p rbee-worker -p rbee-agent -p rbee-tui -p rbee-bench
bin="$root/target/release"
tmp="$(mktemp -d)"
cleanup() {
  for p in "$tmp"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done
  sleep 1; rm -rf "$tmp"
}
trap cleanup EXIT
: > "$tmp/tui.toml"
for n in a b; do
  mkdir -p "$tmp/$n"
  "$bin/rbee-agent" --listen 127.0.0.1:0 --state-dir "$tmp/$n" --model-dir "$(dirname "$model")" \
    --worker-bin "$bin/rbee-worker" 2>"$tmp/$n.log" &
  echo $! > "$tmp/$n.pid"
  for _ in $(seq 100); do [ -s "$tmp/$n/agent.addr" ] && break; sleep 0.1; done
  printf '[[nodes]]\nname = "%s"\nurl = "ws://%s"\ntoken_file = "%s/%s/token"\n\n' \
    "$n" "$(cat "$tmp/$n/agent.addr")" "$tmp" "$n" >> "$tmp/tui.toml"
done
export RBEE_CONFIG="$tmp/tui.toml"
# Two workers share this machine's cores when both nodes serve: one thread each.
"$bin/rbee-tui" serve --listen 127.0.0.1:0 --threads 1 --audit-log "$tmp/audit.jsonl" \
  > "$tmp/serve.out" 2>"$tmp/serve.log" &
gw=$!; echo $gw > "$tmp/gw.pid"
for _ in $(seq 200); do grep -q listening "$tmp/serve.out" 2>/dev/null && break; sleep 0.1; done
addr="$(sed -n 's|listening on http://||p' "$tmp/serve.out")"
load() { "$bin/gatewayload" --addr "$addr" --model "$name" "$@"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# 1. Cold: nothing loaded anywhere.
cold="$(load --tokens 8 single --runs 1 | jq .ttft_ms)"
node="$(jq -r .node "$tmp/audit.jsonl" | tail -1)"; worker="$(jq -r .worker "$tmp/audit.jsonl" | tail -1)"

# 2. Overhead, on the worker the cold request loaded.
prompt="Tell me a story about bee number 0."
direct=(); gateway=(); ttft_d=(); ttft_g=()
for _ in $(seq "$runs"); do
  r="$("$bin/rbee-tui" infer --node "$node" --worker "$worker" --prompt "$prompt" --max-tokens $tokens \
       --temperature 0 --ignore-eos --json)"
  direct+=("$(jq .client.decode_tokens_per_s <<<"$r")"); ttft_d+=("$(jq .client.request_to_first_token_ms <<<"$r")")
  g="$(load --tokens $tokens --endpoint completions single --runs 1)"
  gateway+=("$(jq .decode_tokens_per_s <<<"$g")"); ttft_g+=("$(jq .ttft_ms <<<"$g")")
done
md=$(printf '%s\n' "${direct[@]}" | median); mg=$(printf '%s\n' "${gateway[@]}" | median)
ratios=(); for i in "${!direct[@]}"; do ratios+=("$(echo "scale=4; ${gateway[$i]} / ${direct[$i]}" | bc)"); done
mr=$(printf '%s\n' "${ratios[@]}" | median)

# 3. Load over both nodes.
lines0=$(wc -l < "$tmp/audit.jsonl")
ticks() { awk '{print $14 + $15}' "/proc/$gw/stat"; }
c0=$(ticks); t0=$(date +%s.%N)
res="$(load --tokens 32 load --clients "$clients" --seconds "$seconds")"
c1=$(ticks); t1=$(date +%s.%N)
hz=$(getconf CLK_TCK)
cpu=$(echo "scale=2; ($c1 - $c0) * 100 / $hz / ($t1 - $t0)" | bc)
rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$gw/status")
hwm=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$gw/status")
qwait=$(tail -n +$((lines0 + 1)) "$tmp/audit.jsonl" | jq -r 'select(.outcome == "ok") | .queue_ms' | sort -n \
  | awk '{a[NR]=$1} END {r=int(NR*0.99+0.999); if (r<1) r=1; print a[r]}')
spread=$(tail -n +$((lines0 + 1)) "$tmp/audit.jsonl" | jq -r 'select(.outcome == "ok") | .node' | sort | uniq -c | awk '{printf "%s %s; ", $2, $1}')
j() { jq -r ".$1" <<<"$res"; }

echo "| measure | value |"; echo "|---|---|"
echo "| cold request → first token (spawn on demand + load + prompt; 8-token chat) | $(printf %.0f "$cold") ms |"
echo "| direct session (\`rbee-tui infer\`), client decode tok/s (median of $runs, $tokens tokens) | $(printf %.1f "$md") |"
echo "| through the gateway (\`/v1/completions\`, SSE), client decode tok/s (median of $runs) | $(printf %.1f "$mg") |"
echo "| ratio gateway / direct, median of the $runs interleaved pairs (target ≥ 0.98) | $mr |"
echo "| per run (tok/s), direct · gateway | ${direct[*]} · ${gateway[*]} |"
echo "| TTFT warm, direct · gateway (median, ms) | $(printf '%s\n' "${ttft_d[@]}" | median | xargs printf %.0f) · $(printf '%s\n' "${ttft_g[@]}" | median | xargs printf %.0f) |"
echo "| load: $clients streaming clients × $(j seconds) s, 2 nodes, 32-token chats: requests, ok, 429, 503, lost, hung | $(j requests), $(j ok), $(j refused_429), $(j refused_503), $(j lost), $(j hung) |"
echo "| load: answered requests/s; tokens/s | $(j ok_per_s); $(j tokens_per_s) |"
echo "| load: TTFT p50 / p99 at the client | $(j ttft_p50_ms) / $(j ttft_p99_ms) ms |"
echo "| load: queue wait p99 (gateway audit) | ${qwait:-0} ms |"
echo "| load: answered per node | ${spread} |"
echo "| gateway CPU % of one core during the load; RSS now / peak | $cpu; $rss / $hwm MiB |"
[ "$(j lost)" = 0 ] && [ "$(j hung)" = 0 ] || echo "| FIRST LOSS | $(j first_loss) |"
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), worker slots 2, gateway queue 256, $(date -u +%F)"
