#!/usr/bin/env bash
# Worker throughput (issue 14): rbee-worker against llama.cpp (llama-cpp-python 0.3.x, low-level
# batch API) on the same file and thread count, in the same run, alternating engines.
#   1. single stream: a ~1,000-token ChatML chat (prompt tok/s, TTFT, decode tok/s after it)
#      and decode after a short prompt
#   2. aggregate decode tok/s at 1, 2, 4, 8 concurrent streams of 128 tokens (rbee: one worker,
#      --parallel STREAMS, requests sent at once; llama.cpp: one context, every stream's token
#      in one llama_decode)
#   3. TTFT of a ~2,000-token prompt while 3 streams decode, and their tok/s meanwhile
#   4. follow-up turn of a ~1,500-token conversation: TTFT with prefix reuse vs without (rbee)
# Usage: bench/throughput.sh [THREADS] [RUNS]   (1, 2). Prints markdown tables; medians of RUNS.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"; cd "$root"
threads="${1:-1}"; runs="${2:-2}"
assets/fetch-model.sh >/dev/null
[ -n "${RBEE_BENCH_NO_BUILD:-}" ] || cargo build --release -q -p rbee-worker
w=target/release/rbee-worker
m=assets/models/SmolLM2-135M-Instruct.Q4_1.gguf
python3 -c 'import llama_cpp' 2>/dev/null || { echo "llama-cpp-python missing: pip install llama-cpp-python"; exit 1; }
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
# Long texts: the 1k chat with its turns repeated (≈2,000 tokens) or half of them (≈1,500), each
# a valid ChatML conversation ending in an open assistant turn.
chat="bench/chat/smollm2-1k.txt"
python3 - "$chat" "$tmp" <<'PY'
import sys
text = open(sys.argv[1]).read()
cut = text.rindex("<|im_start|>user\n")
body, tail = text[:cut], text[cut:]
turns = body[body.index("<|im_start|>user\n"):].split("<|im_start|>user\n")[1:]
turns = ["<|im_start|>user\n" + t for t in turns]
open(sys.argv[2] + "/2k.txt", "w").write(body + "".join(turns) + tail)
open(sys.argv[2] + "/1500.txt", "w").write(body + "".join(turns[: len(turns) // 2]) + tail)
PY
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "## Single stream ($threads thread(s), median of $runs)"
echo "| run | rbee | llama.cpp | ratio |"
echo "|---|---|---|---|"
rp=(); rt=(); rd=(); lp=(); lt=(); ld=(); rs=(); ls=()
for _ in $(seq "$runs"); do
  o="$($w --model "$m" --prompt "$(cat "$chat")" --max-tokens 64 --temperature 0 --ignore-eos \
        --threads "$threads" --json 2>&1 >/dev/null | tail -1)"
  rp+=("$(jq .usage.prompt_tokens_per_s <<<"$o")"); rt+=("$(jq .usage.time_to_first_token_ms <<<"$o")")
  rd+=("$(jq .usage.decode_tokens_per_s <<<"$o")")
  l="$(python3 bench/throughput_llamacpp.py long "$m" "$threads" "$chat" 64 2>/dev/null)"
  lp+=("$(jq .prompt_tps <<<"$l")"); lt+=("$(jq .ttft_ms <<<"$l")"); ld+=("$(jq .decode_tps <<<"$l")")
  rs+=("$(python3 bench/throughput.py decode "$w" "$m" "$threads" 1 128 | jq .aggregate_tps)")
  ls+=("$(python3 bench/throughput_llamacpp.py decode "$m" "$threads" 1 128 2>/dev/null | jq .aggregate_tps)")
done
row() { local a b; a="$(printf '%s\n' "${@:2:$(( ($# - 1) / 2 ))}" | median)"; b="$(printf '%s\n' "${@:$(( ($# - 1) / 2 + 2 ))}" | median)"
  printf '| %s | %.1f | %.1f | %s× |\n' "$1" "$a" "$b" "$(ratio "$a" "$b")"; }
row "1,024-token chat: prompt tok/s" "${rp[@]}" "${lp[@]}"
row "same chat: TTFT ms (lower is better)" "${rt[@]}" "${lt[@]}"
row "same chat: decode tok/s after it" "${rd[@]}" "${ld[@]}"
row "decode tok/s, short prompt, 128 tokens" "${rs[@]}" "${ls[@]}"

echo
echo "## Aggregate decode, concurrent streams of 128 tokens ($threads thread(s), median of $runs)"
echo "| streams | rbee tok/s | rbee vs its 1 stream | llama.cpp tok/s | llama.cpp vs its 1 stream | rbee / llama.cpp |"
echo "|---|---|---|---|---|---|"
r1=""; l1=""
for s in 1 2 4 8; do
  ra=(); la=()
  for _ in $(seq "$runs"); do
    ra+=("$(python3 bench/throughput.py decode "$w" "$m" "$threads" "$s" 128 | jq .aggregate_tps)")
    la+=("$(python3 bench/throughput_llamacpp.py decode "$m" "$threads" "$s" 128 2>/dev/null | jq .aggregate_tps)")
  done
  r="$(printf '%s\n' "${ra[@]}" | median)"; l="$(printf '%s\n' "${la[@]}" | median)"
  [ -n "$r1" ] || { r1="$r"; l1="$l"; }
  printf '| %s | %.1f | %s× | %.1f | %s× | %s× |\n' "$s" "$r" "$(ratio "$r" "$r1")" "$l" "$(ratio "$l" "$l1")" "$(ratio "$r" "$l")"
done

echo
echo "## Long prompt while 3 streams decode ($threads thread(s), median of $runs)"
echo "| engine | prompt tokens | TTFT ms | the 3 streams' tok/s each, meanwhile |"
echo "|---|---|---|---|"
rt=(); ro=(); lt=(); lo=(); rn=0; ln=0
for _ in $(seq "$runs"); do
  o="$(python3 bench/throughput.py ttft "$w" "$m" "$threads" "$tmp/2k.txt")"
  rn="$(jq .prompt_tokens <<<"$o")"; rt+=("$(jq .ttft_ms <<<"$o")"); ro+=("$(jq .others_tps <<<"$o")")
  o="$(python3 bench/throughput_llamacpp.py ttft "$m" "$threads" "$tmp/2k.txt" 2>/dev/null)"
  ln="$(jq .prompt_tokens <<<"$o")"; lt+=("$(jq .ttft_ms <<<"$o")"); lo+=("$(jq .others_tps <<<"$o")")
done
printf '| rbee | %s | %.0f | %.1f |\n' "$rn" "$(printf '%s\n' "${rt[@]}" | median)" "$(printf '%s\n' "${ro[@]}" | median)"
printf '| llama.cpp | %s | %.0f | %.1f |\n' "$ln" "$(printf '%s\n' "${lt[@]}" | median)" "$(printf '%s\n' "${lo[@]}" | median)"

echo
echo "## Follow-up turn of a conversation, rbee ($threads thread(s), median of $runs)"
echo "| history tokens | follow-up prompt tokens | TTFT with prefix reuse ms | TTFT without ms | speed-up |"
echo "|---|---|---|---|---|"
a=(); b=(); h=0; f=0
for _ in $(seq "$runs"); do
  o="$(python3 bench/throughput.py reuse "$w" "$m" "$threads" "$tmp/1500.txt")"
  h="$(jq .history_tokens <<<"$o")"; f="$(jq .follow_up_tokens <<<"$o")"
  a+=("$(jq .reuse_ttft_ms <<<"$o")"); b+=("$(jq .no_reuse_ttft_ms <<<"$o")")
done
x="$(printf '%s\n' "${a[@]}" | median)"; y="$(printf '%s\n' "${b[@]}" | median)"
printf '| %s | %s | %.0f | %.0f | %s× |\n' "$h" "$f" "$x" "$y" "$(ratio "$y" "$x")"
echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), threads=$threads, runs=$runs, load average at end: $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%F)"
