#!/usr/bin/env bash
# Chat-length prompts per family with a real model (issue 11): a ~1,000-token conversation, then 64
# greedy tokens, rbee-worker against llama.cpp (llama-cpp-python) on the same file and thread count,
# interleaved, median of RUNS. SmolLM2's text is its ChatML conversation (system + 8 turns + the
# open assistant turn, special tokens as text: exactly what --chat sends); Gemma 3 270M is a base
# model (no template), so the same turns go as plain paragraphs.
# Usage: bench/chat.sh [THREADS] [RUNS]   (2, 3). Prints a markdown table.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"; cd "$root"
threads="${1:-2}"; runs="${2:-3}"
assets/fetch-model.sh >/dev/null
[ -n "${RBEE_BENCH_NO_BUILD:-}" ] || cargo build --release -q -p rbee-worker
w=target/release/rbee-worker
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| model | engine | prompt tokens | prompt tok/s | TTFT ms | decode tok/s |"
echo "|---|---|---|---|---|---|"
for m in "SmolLM2-135M-Instruct.Q4_1.gguf smollm2-1k.txt" "gemma-3-270m-q4_k_m.gguf gemma3-1k.txt"; do
  set -- $m
  file="assets/models/$1"; text="bench/chat/$2"
  [ -f "$file" ] || { echo "| $1 | missing (assets/fetch-model.sh) | | | | |"; continue; }
  rp=(); rt=(); rd=(); lp=(); lt=(); ld=(); n=0; ln=0
  for _ in $(seq "$runs"); do
    out="$($w --model "$file" --prompt "$(cat "$text")" --max-tokens 64 --temperature 0 --ignore-eos \
            --threads "$threads" --json 2>&1 >/dev/null | tail -1)"
    n="$(jq .usage.prompt_tokens <<<"$out")"
    rp+=("$(jq .usage.prompt_tokens_per_s <<<"$out")"); rt+=("$(jq .usage.time_to_first_token_ms <<<"$out")")
    rd+=("$(jq .usage.decode_tokens_per_s <<<"$out")")
    if python3 -c 'import llama_cpp' 2>/dev/null; then
      l="$(python3 bench/chat/llamacpp_long.py "$file" "$text" 64 "$threads" 2>/dev/null)"
      ln="$(sed 's/.*prompt_tokens=\([0-9]*\).*/\1/' <<<"$l")"
      lp+=("$(sed 's/.*prompt_tps=\([0-9.]*\).*/\1/' <<<"$l")"); lt+=("$(sed 's/.*ttft_ms=\([0-9.]*\).*/\1/' <<<"$l")")
      ld+=("$(sed 's/.*decode_tps=\([0-9.]*\).*/\1/' <<<"$l")")
    fi
  done
  printf '| %s | rbee-worker | %s | %.1f | %.0f | %.1f |\n' "$1" "$n" \
    "$(printf '%s\n' "${rp[@]}" | median)" "$(printf '%s\n' "${rt[@]}" | median)" "$(printf '%s\n' "${rd[@]}" | median)"
  if [ ${#lp[@]} -gt 0 ]; then
    printf '| %s | llama.cpp (llama-cpp-python) | %s | %.1f | %.0f | %.1f |\n' "$1" "$ln" \
      "$(printf '%s\n' "${lp[@]}" | median)" "$(printf '%s\n' "${lt[@]}" | median)" "$(printf '%s\n' "${ld[@]}" | median)"
  fi
done
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), threads=$threads, runs=$runs (median), $(date -u +%F)"
