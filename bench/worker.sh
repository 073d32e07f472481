#!/usr/bin/env bash
# Worker decode/prompt speed against anchors, in one run, on the same file and thread count:
#   - candle's own `quantized` example (candle-examples 0.11.1, the candle version rbee uses),
#     built from the crates.io sources with the same compiler flags (never committed);
#   - llama.cpp through llama-cpp-python, when it is installed (`pip install llama-cpp-python`).
# Usage: bench/worker.sh [THREADS] [TOKENS]. Prints a markdown table.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"; cd "$root"
threads="${1:-2}"; tokens="${2:-128}"; runs="${RUNS:-3}"
model="$(assets/fetch-model.sh)"
prompt="Once upon a time, in a small village at the edge of a great forest, there lived a beekeeper named"
export RAYON_NUM_THREADS="$threads"
[ -n "${RBEE_BENCH_NO_BUILD:-}" ] || cargo build --release -q -p rbee-worker
w=target/release/rbee-worker
tok="$root/target/bench/tokenizer.json"; mkdir -p target/bench
$w --model "$model" --export-tokenizer "$tok"
anchor="$(bench/candle-anchor.sh)"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rss_of() { /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -1; }

row() { printf '| %s | %s | %s | %s | %s |\n' "$@"; }
echo "| engine | prompt tok/s | decode tok/s | TTFT ms | peak RSS MiB |"
echo "|---|---|---|---|---|"
# The worker as it runs by default (rbee's own kernel on x86), its narrower paths where this CPU
# has more (RBEE_QMM_ISA: 256-bit VNNI, AVX2 alone: what CPUs without them run), and with
# RBEE_NO_QMM=1: candle's kernels, Q4_1 re-encoded as Q8_0 at load (the worker before its own
# kernel).
modes=("")
grep -q avx512_vnni /proc/cpuinfo && modes+=("RBEE_QMM_ISA=vnni256")
modes+=("RBEE_QMM_ISA=avx2" "RBEE_NO_QMM=1")
for mode in "${modes[@]}"; do
  p=(); d=(); t=(); r=()
  for _ in $(seq "$runs"); do
    out="$(env $mode $w --model "$model" --prompt "$prompt" --max-tokens "$tokens" --temperature 0 --ignore-eos \
            --threads "$threads" --json 2>&1 >/dev/null | tail -1)"
    p+=("$(jq .usage.prompt_tokens_per_s <<<"$out")"); d+=("$(jq .usage.decode_tokens_per_s <<<"$out")")
    t+=("$(jq .usage.time_to_first_token_ms <<<"$out")"); r+=("$(jq '.peak_rss_bytes/1048576' <<<"$out")")
  done
  case "$mode" in
    "") name="rbee-worker (Q4_1 on its own kernel; 512-bit where AVX512-VNNI runs)" ;;
    RBEE_QMM_ISA=vnni256) name="rbee-worker, \`$mode\` (its kernel on 256-bit VNNI)" ;;
    RBEE_QMM_ISA=avx2) name="rbee-worker, \`$mode\` (its kernel on AVX2 alone)" ;;
    *) name="rbee-worker, \`$mode\` (candle's kernels, Q4_1 re-encoded Q8_0)" ;;
  esac
  row "$name" "$(printf '%s\n' "${p[@]}" | median | xargs printf %.1f)" "$(printf '%s\n' "${d[@]}" | median | xargs printf %.1f)" \
      "$(printf '%s\n' "${t[@]}" | median | xargs printf %.0f)" "$(printf '%s\n' "${r[@]}" | median | xargs printf %.0f)"
done
p=(); d=(); r=()
for _ in $(seq "$runs"); do
  out="$("$anchor" --cpu --model "$model" --tokenizer "$tok" --which SmoLM2-360M-Instruct --prompt "$prompt" \
          --sample-len "$tokens" --temperature 0 2>/dev/null)"
  p+=("$(grep -o 'prompt tokens processed: [0-9.]*' <<<"$out" | awk '{print $4}')")
  d+=("$(grep -o 'tokens generated: [0-9.]*' <<<"$out" | awk '{print $3}')")
  r+=("$(rss_of "$anchor" --cpu --model "$model" --tokenizer "$tok" --which SmoLM2-360M-Instruct --prompt "$prompt" --sample-len 8 --temperature 0)")
done
row "candle quantized example 0.11.1 (Q4_1)" "$(printf '%s\n' "${p[@]}" | median | xargs printf %.1f)" \
    "$(printf '%s\n' "${d[@]}" | median | xargs printf %.1f)" "—" "$(( $(printf '%s\n' "${r[@]}" | median) / 1024 ))"
if python3 -c 'import llama_cpp' 2>/dev/null; then
  python3 bench/llamacpp.py "$model" "$prompt" "$tokens" "$threads" "$runs"
else
  row "llama.cpp" "not installed" "" "" ""
fi
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), threads=$threads, tokens=$tokens, runs=$runs (median), $(date -u +%F)"
