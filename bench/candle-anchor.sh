#!/usr/bin/env bash
# Build candle's own `quantized` example from the crates.io sources of candle-examples 0.11.1 (the
# candle version rbee uses) into target/bench/candle-anchor, with this repo's compiler flags.
# Nothing from it is committed. Prints the binary's path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/target/bench/candle-anchor"
bin="$dir/target/release/candle-quantized"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$dir/src" "$dir/.cargo"
cp "$root/.cargo/config.toml" "$dir/.cargo/config.toml"
cat > "$dir/Cargo.toml" <<'TOML'
[package]
name = "candle-quantized"
version = "0.0.0"
edition = "2021"
publish = false
[workspace]
[dependencies]
candle = { package = "candle-core", version = "=0.11.1" }
candle-transformers = "=0.11.1"
candle-examples = "=0.11.1"
tokenizers = { version = "0.23", default-features = false, features = ["onig"] }
clap = { version = "4", features = ["derive"] }
anyhow = "1"
tracing-chrome = "0.7"
tracing-subscriber = "0.3"
[profile.release]
lto = "thin"
codegen-units = 4
TOML
echo "fn main() {}" > "$dir/src/main.rs"
(cd "$dir" && cargo fetch -q >&2)
src="$(cd "$dir" && cargo metadata --format-version 1 | python3 -c 'import json,sys; print([p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="candle-examples"][0])')"
cp "$(dirname "$src")/examples/quantized/main.rs" "$dir/src/main.rs"
(cd "$dir" && cargo build --release -q >&2)
echo "$bin"
