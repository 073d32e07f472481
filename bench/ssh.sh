#!/usr/bin/env bash
# SSH node benchmarks, in one run on this machine (needs root and openssh-server: it starts its
# own sshd on a loopback port, and the "node" is a temp dir here):
#  1. cold node: time from `nodes add --ssh` (host key, upload of rbee-agent + rbee-worker, start)
#     to the first ready worker (`workers spawn --wait`), and each part;
#  2. tokens/s seen by the client through the SSH tunnel vs a direct loopback session to the same
#     agent and the same worker, same prompt and fixed length, interleaved runs (target ≥ 0.97×).
# Usage: bench/ssh.sh [RUNS]. BIN=target/debug uses already built binaries instead of a release
# build. Prints markdown.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"; cd "$root"
runs="${1:-5}"; tokens=128
model="$(assets/fetch-model.sh)"
if [ -z "${BIN:-}" ]; then
  [ -n "${RBEE_BENCH_NO_BUILD:-}" ] || cargo build --release -q -p rbee-worker -p rbee-agent -p rbee-tui
  BIN=target/release
fi
bin="$(cd "$BIN" && pwd)"
[ -x /usr/sbin/sshd ] || { echo "bench/ssh.sh: needs /usr/sbin/sshd (apt-get install openssh-server)" >&2; exit 1; }
tmp="$(mktemp -d)"
cleanup() {
  [ -f "$tmp/tui.toml" ] && "$bin/rbee-tui" --config "$tmp/tui.toml" nodes stop node >/dev/null 2>&1 || true
  [ -f "$tmp/sshd.pid" ] && kill "$(cat "$tmp/sshd.pid")" 2>/dev/null || true
  sleep 0.5; rm -rf "$tmp"
}
trap cleanup EXIT

# sshd on a free loopback port, with its own host key and the benchmark's client key.
mkdir -p /run/sshd "$tmp/home/.ssh"
ssh-keygen -q -t ed25519 -N '' -f "$tmp/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$tmp/id_ed25519"
cp "$tmp/id_ed25519.pub" "$tmp/authorized_keys"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$tmp/sshd_config" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $tmp/host_key
PidFile $tmp/sshd.pid
AuthorizedKeysFile $tmp/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
EOF
/usr/sbin/sshd -f "$tmp/sshd_config" -E "$tmp/sshd.log"
for _ in $(seq 100); do [ -s "$tmp/sshd.pid" ] && break; sleep 0.05; done

export HOME="$tmp/home" RBEE_AGENT_BIN="$bin/rbee-agent" RBEE_WORKER_BIN="$bin/rbee-worker"
unset SSH_AUTH_SOCK XDG_CONFIG_HOME RBEE_KNOWN_HOSTS
tui() { "$bin/rbee-tui" --config "$tmp/tui.toml" --timeout 300 "$@"; }
now() { date +%s.%N; }
ms() { echo "($2 - $1) * 1000" | bc; }

# 1. Cold node.
t0=$(now)
added="$(tui nodes add node --ssh "root@127.0.0.1:$port" --identity "$tmp/id_ed25519" --accept-new-host-key \
  --remote-dir "$tmp/node" --model-dir "$(dirname "$model")" --json)"
t1=$(now)
wid="$(tui workers spawn --node node --model "$model" --wait)"
t2=$(now)
[ "$(jq -r .agent.installed <<<"$added")" = true ] || { echo "bench/ssh.sh: the node was not cold: $added" >&2; exit 1; }
t3=$(now); tui workers list --node node --json >/dev/null; t4=$(now)
size=$(( $(stat -c %s "$bin/rbee-agent") + $(stat -c %s "$bin/rbee-worker") ))

# 2. The same agent reached directly on loopback, as a second node.
addr="$(cat "$tmp/node/agent/agent.addr")"
tui nodes add direct --url "ws://$addr" --token-file "$tmp/node/agent/token" >/dev/null
prompt="Once upon a time, in a small village at the edge of a great forest, there lived a beekeeper named"
tui infer --node node --worker "$wid" --prompt "warm up" --max-tokens 8 >/dev/null 2>&1
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
direct=(); tunnel=(); dttft=(); tttft=()
for _ in $(seq "$runs"); do
  d="$(tui infer --node direct --worker "$wid" --prompt "$prompt" --max-tokens $tokens --temperature 0 --ignore-eos --json)"
  direct+=("$(jq .client.decode_tokens_per_s <<<"$d")"); dttft+=("$(jq .client.request_to_first_token_ms <<<"$d")")
  s="$(tui infer --node node --worker "$wid" --prompt "$prompt" --max-tokens $tokens --temperature 0 --ignore-eos --json)"
  tunnel+=("$(jq .client.decode_tokens_per_s <<<"$s")"); tttft+=("$(jq .client.request_to_first_token_ms <<<"$s")")
done
md=$(printf '%s\n' "${direct[@]}" | median); mt=$(printf '%s\n' "${tunnel[@]}" | median)

echo "binaries: \`$BIN\`; node: loopback sshd (OpenSSH $(/usr/sbin/sshd -V 2>&1 | head -1 | awk '{print $1}'))"
echo
echo "| measure | value |"; echo "|---|---|"
echo "| cold node: \`nodes add --ssh\` → first ready worker | $(printf %.0f "$(ms "$t0" "$t2")") ms |"
echo "| … \`nodes add\`: connect, host key, upload $(( size >> 20 )) MiB, start agent, open session | $(printf %.0f "$(ms "$t0" "$t1")") ms |"
echo "| … \`workers spawn --wait\` through the tunnel | $(printf %.0f "$(ms "$t1" "$t2")") ms |"
echo "| warm command through SSH (\`workers list\`: connect, probe, session, reply) | $(printf %.0f "$(ms "$t3" "$t4")") ms |"
echo "| direct loopback session, client decode tok/s (median of $runs, $tokens tokens) | $(printf %.1f "$md") |"
echo "| through the SSH tunnel, client decode tok/s | $(printf %.1f "$mt") |"
echo "| ratio tunnel / direct (target ≥ 0.97) | $(echo "scale=4; $mt / $md" | bc) |"
echo "| per run (tok/s), direct · tunnel | $(printf '%.1f ' "${direct[@]}")· $(printf '%.1f ' "${tunnel[@]}") |"
echo "| request → first token, direct / tunnel (median) | $(printf %.0f "$(printf '%s\n' "${dttft[@]}" | median)") / $(printf %.0f "$(printf '%s\n' "${tttft[@]}" | median)") ms |"
