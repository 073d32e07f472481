//! The shell side of bring-up: small POSIX `sh` scripts run on the node through SSH exec
//! channels, each printing `key=value` lines that the functions here parse. Layout on the node:
//!
//! ```text
//! <remote_dir>/bin/rbee-agent, rbee-worker    installed binaries
//! <remote_dir>/agent/                         the agent's state dir (token, agent.lock, agent.addr,
//!                                             agent.log, desired workers, audit log, worker logs)
//! <remote_dir>/models/                        a model directory the agent always serves
//! <remote_dir>/agent.toml                     optional agent config, used when present
//! <remote_dir>/bringup.lock                   serialises concurrent bring-ups (flock)
//! ```
//!
//! Single instance: whether an agent runs is read from the pid the agent writes into its
//! `agent.lock` while holding the lock; starting one is serialised with `flock` on
//! `bringup.lock`, and the agent's own lock refuses a second agent whatever happens.
use std::collections::HashMap;

use rbee_proto::statedir;

/// Quote `s` for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Shell words that set `D` (absolute remote dir), `S` (state dir) and the agent's files in it
/// (`L` lock, `A` address, `K` token, `G` log), the agent's systemd user unit `U` (one per remote
/// dir) in `UD`, and define `alive PID`, `running` and `systemd_user` (a user manager answers;
/// `RBEE_NO_SYSTEMD` set on the node says no). `~/x` and relative paths are under the login
/// user's home.
pub fn prelude(remote_dir: Option<&str>) -> String {
    let d = match remote_dir {
        None => r#""$HOME/.local/share/rbee""#.to_string(),
        Some("~") => r#""$HOME""#.to_string(),
        Some(d) => match d.strip_prefix("~/") {
            Some(rest) => format!(r#""$HOME"/{}"#, sh_quote(rest)),
            None => sh_quote(d),
        },
    };
    format!(
        r#"set -u
D={d}
case "$D" in /*) ;; *) D="$HOME/$D" ;; esac
S="$D/agent"
L="$S/{lock}"; A="$S/{addr}"; K="$S/{token}"; G="$S/{log}"
alive() {{
  [ -n "$1" ] && kill -0 "$1" 2>/dev/null && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
}}
running() {{
  p=$(cat "$L" 2>/dev/null) || p=""
  alive "$p" && grep -q rbee-agent "/proc/$p/cmdline" 2>/dev/null
}}
U="rbee-agent-$(printf %s "$D" | cksum | cut -d' ' -f1).service"
UD="${{XDG_CONFIG_HOME:-$HOME/.config}}/systemd/user"
systemd_user() {{
  [ -z "${{RBEE_NO_SYSTEMD:-}}" ] && command -v systemctl >/dev/null 2>&1 \
    && systemctl --user show-environment >/dev/null 2>&1
}}
"#,
        lock = statedir::LOCK,
        addr = statedir::ADDR,
        token = statedir::TOKEN,
        log = statedir::AGENT_LOG,
    )
}

/// What the node is and whether an agent is installed and running there.
pub fn probe_script(remote_dir: Option<&str>) -> String {
    prelude(remote_dir)
        + r#"echo "os=$(uname -s)"
echo "arch=$(uname -m)"
if grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo 2>/dev/null; then echo avx2=1; else echo avx2=0; fi
echo "dir=$D"
B=""
if [ -x "$D/bin/rbee-agent" ] && [ -x "$D/bin/rbee-worker" ]; then B="$D/bin/rbee-agent"; fi
echo "bin=$B"
if [ -n "$B" ]; then echo "version=$("$B" --version 2>/dev/null | head -n 1)"; fi
X="$D"; while [ ! -d "$X" ]; do X=$(dirname "$X"); done
echo "free_kb=$(df -Pk "$X" 2>/dev/null | awk 'NR==2 {print $4}')"
if running; then
  echo "pid=$p"
  echo "addr=$(cat "$A" 2>/dev/null)"
  echo "token=$(cat "$K" 2>/dev/null)"
  tr '\0' '\n' < "/proc/$p/cmdline" 2>/dev/null | sed 's/^/arg=/'
  echo "supervisor=$(cat "$S/supervisor" 2>/dev/null)"
fi
"#
}

/// Receive one binary on stdin and move it into place atomically. `size` guards against a
/// short upload.
pub fn upload_script(remote_dir: Option<&str>, name: &str, size: u64) -> String {
    prelude(remote_dir)
        + &format!(
            r#"mkdir -p "$D/bin" || exit 20
T="$D/bin/.{name}.part.$$"
trap 'rm -f "$T"' EXIT
cat > "$T" || exit 21
n=$(wc -c < "$T")
[ "$n" -eq {size} ] || {{ echo "received $n of {size} bytes" >&2; exit 22; }}
chmod 755 "$T" && mv -f "$T" "$D/bin/{name}" || exit 23
"#
        )
}

/// The installed agent's `--version` line.
pub fn version_script(remote_dir: Option<&str>) -> String {
    prelude(remote_dir) + r#""$D/bin/rbee-agent" --version"#
}

/// Start the agent unless one runs (stopping it first when `restart`), then wait for its address
/// and token. Prints `pid=`, `addr=`, `token=` (and `started=` when this call started it), or
/// `failed=1`/`timeout=1` with the last lines of the agent's log as `log=` lines.
pub fn start_script(
    remote_dir: Option<&str>,
    bin: &str,
    model_dirs: &[String],
    restart: bool,
) -> String {
    let mut extra = String::new();
    for m in model_dirs {
        extra.push_str(&format!(" --model-dir {}", sh_quote(m)));
    }
    prelude(remote_dir)
        + &format!(
            r#"B={bin}
mkdir -p "$S" "$D/models" || exit 10
if command -v flock >/dev/null 2>&1; then
  exec 9>"$D/bringup.lock"
  flock -w 60 9 || {{ echo "error=another bring-up holds $D/bringup.lock"; exit 11; }}
fi
if [ {restart} = 1 ] && running; then
  if systemd_user; then systemctl --user stop "$U" 2>/dev/null; fi
  kill -TERM "$p"
  i=0; while running && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done
  running && kill -KILL "$p"
  sleep 0.2
fi
sp=""
if ! running; then
  rm -f "$A"
  set -- --listen 127.0.0.1:0 --state-dir "$S" --model-dir "$D/models"{extra}
  if [ -f "$D/agent.toml" ]; then set -- "$@" --config "$D/agent.toml"; fi
  cd "$S" || exit 10
  if systemd_user; then
{systemd}
  else
    RBEE_AGENT_LOG_FILE="$G" setsid "$B" "$@" </dev/null >>"$G" 2>&1 9>&- &
    sp=$!
    echo "detached (no systemd user manager; it stays down if it dies until the next bring-up)" >"$S/supervisor"
  fi
  echo "started=$sp"
fi
echo "supervisor=$(cat "$S/supervisor" 2>/dev/null)"
i=0
while :; do
  if [ -s "$A" ] && [ -s "$K" ] && running; then
    echo "pid=$p"; echo "addr=$(cat "$A")"; echo "token=$(cat "$K")"; exit 0
  fi
  if ! alive "$sp" && ! running; then
    echo "failed=1"; echo "log_file=$G"; tail -n 5 "$G" 2>/dev/null | sed 's/^/log=/'; exit 12
  fi
  i=$((i+1))
  if [ $i -ge 300 ]; then
    echo "timeout=1"; echo "log_file=$G"; tail -n 5 "$G" 2>/dev/null | sed 's/^/log=/'; exit 13
  fi
  sleep 0.1
done
"#,
            bin = sh_quote(bin),
            restart = u8::from(restart),
            systemd = SYSTEMD_START,
        )
}

/// Inside `start_script`, with the agent's arguments in `$@`: write `$S/agent.sh` (the command
/// line, quoted) and the unit `$UD/$U` running it (restart on failure, wanted by the user's
/// default target; lingering asked for so it survives logout and reboot), then (re)start it.
const SYSTEMD_START: &str = r#"    q() { printf "'%s'" "$(printf %s "$1" | sed "s/'/'\\\\''/g")"; }
    {
      echo '#!/bin/sh'
      printf 'cd %s || exit 1\n' "$(q "$S")"
      printf 'RBEE_AGENT_LOG_FILE=%s exec %s' "$(q "$G")" "$(q "$B")"
      for a in "$@"; do printf ' %s' "$(q "$a")"; done
      printf ' </dev/null >>%s 2>&1\n' "$(q "$G")"
    } >"$S/agent.sh" && chmod 700 "$S/agent.sh" || exit 10
    mkdir -p "$UD" || exit 10
    x=$(printf %s "$S/agent.sh" | sed 's/%/%%/g; s/\\/\\\\/g; s/"/\\"/g')
    printf '[Unit]\nDescription=rbee node agent (%s)\n\n[Service]\nExecStart=/bin/sh "%s"\nRestart=on-failure\nRestartSec=2\nKillMode=mixed\nTimeoutStopSec=20\n\n[Install]\nWantedBy=default.target\n' "$x" "$x" >"$UD/$U" || exit 10
    systemctl --user daemon-reload && systemctl --user enable "$U" >/dev/null 2>&1
    systemctl --user restart "$U" || { echo "error=systemctl --user restart $U failed"; exit 14; }
    sp=$(systemctl --user show -p MainPID --value "$U" 2>/dev/null)
    if loginctl enable-linger "$(id -un)" >/dev/null 2>&1; then ln=" (lingering: survives logout and reboot)"; else ln=" (no lingering: stops at logout)"; fi
    echo "systemd user unit $U$ln" >"$S/supervisor""#;

/// Stop the agent and its workers: SIGTERM (the agent stops its workers), SIGKILL after 15 s,
/// then report which of them are still alive (`left=`, empty when all are gone).
pub fn stop_script(remote_dir: Option<&str>) -> String {
    prelude(remote_dir)
        + r#"if ! running; then echo "running=0"; exit 0; fi
kids=$(grep -l "^PPid:[[:space:]]*$p\$" /proc/[0-9]*/status 2>/dev/null | sed 's#^/proc/\([0-9]*\)/status$#\1#' | tr '\n' ' ')
echo "pid=$p"
echo "workers=$kids"
alive_of() {
  left=""
  for q in "$@"; do
    if alive "$q"; then left="$left $q"; fi
  done
}
if systemd_user && [ -f "$UD/$U" ]; then
  systemctl --user disable "$U" >/dev/null 2>&1
  systemctl --user stop "$U" 2>/dev/null
fi
kill -TERM "$p" 2>/dev/null
i=0
while :; do
  alive_of $p $kids
  [ -z "$left" ] && break
  i=$((i+1)); [ $i -ge 150 ] && break
  sleep 0.1
done
if [ -n "$left" ]; then
  kill -KILL $left 2>/dev/null
  sleep 0.5
  alive_of $p $kids
fi
echo "left=$left"
"#
}

/// `key=value` lines; repeated keys keep every value in order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KeyValues(HashMap<String, Vec<String>>);

impl KeyValues {
    /// Read a script's output; lines without `=` are ignored.
    pub fn parse(text: &str) -> Self {
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                m.entry(k.trim().to_string())
                    .or_default()
                    .push(v.trim_end().to_string());
            }
        }
        Self(m)
    }

    /// The last value of `key`, if present and not empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .and_then(|v| v.last())
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> &[String] {
        self.0.get(key).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The last value of `key` as whitespace-separated pids.
    pub fn pids(&self, key: &str) -> Vec<u32> {
        self.get(key)
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The protocol version in `rbee-agent X.Y.Z (protocol N)`.
pub fn protocol_of(version_line: &str) -> Option<u32> {
    let rest = version_line.split("(protocol ").nth(1)?;
    rest.split(')').next()?.trim().parse().ok()
}

/// `uname -m` in Rust's spelling (`std::env::consts::ARCH`).
pub fn normalize_arch(uname_m: &str) -> &str {
    match uname_m {
        "amd64" | "x86_64" => "x86_64",
        "arm64" | "aarch64" | "armv8l" => "aarch64",
        "i386" | "i486" | "i586" | "i686" => "x86",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        let nasty = "a b'c\"$HOME`x`";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", sh_quote(nasty)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), nasty);
    }

    #[test]
    fn prelude_expands_home_and_relative_dirs() {
        let run = |dir: Option<&str>| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(prelude(dir) + "echo \"$D|$S\"")
                .env("HOME", "/home/u")
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        assert_eq!(
            run(None),
            "/home/u/.local/share/rbee|/home/u/.local/share/rbee/agent"
        );
        assert_eq!(run(Some("~/x y")), "/home/u/x y|/home/u/x y/agent");
        assert_eq!(run(Some("rel")), "/home/u/rel|/home/u/rel/agent");
        assert_eq!(run(Some("/abs")), "/abs|/abs/agent");
    }

    #[test]
    fn the_systemd_wrapper_and_unit_keep_awkward_paths_intact() {
        // No systemctl on PATH: the block writes the wrapper and the unit, then stops at the
        // restart; the wrapper, run, must hand the agent its arguments exactly.
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path().join("st'ate dir %h");
        std::fs::create_dir_all(&s).unwrap();
        let ud = dir.path().join("units");
        let script = format!(
            "S={}; G=\"$S/agent.log\"; B=/bin/echo; UD={}; U=u.service\nset -- --model-dir \"it's here\" --x '$HOME'\n{SYSTEMD_START}",
            sh_quote(s.to_str().unwrap()),
            sh_quote(ud.to_str().unwrap()),
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("PATH", "/usr/bin:/bin")
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("error=systemctl"));
        let ran = std::process::Command::new("sh")
            .arg(s.join("agent.sh"))
            .status()
            .unwrap();
        assert!(ran.success());
        let log = std::fs::read_to_string(s.join("agent.log")).unwrap();
        assert_eq!(log, "--model-dir it's here --x $HOME\n");
        let unit = std::fs::read_to_string(ud.join("u.service")).unwrap();
        let exec = format!("ExecStart=/bin/sh \"{}/agent.sh\"", s.display()).replace('%', "%%");
        assert!(unit.contains(&exec), "{unit}");
        assert!(unit.contains("Restart=on-failure"), "{unit}");
    }

    #[test]
    fn key_values() {
        let kv = KeyValues::parse("a=1\nlog=x=y\nlog=z\nempty=\nnoise\nw=3 4 x\n");
        assert_eq!(kv.get("a"), Some("1"));
        assert_eq!(kv.all("log"), ["x=y", "z"]);
        assert_eq!(kv.get("empty"), None);
        assert_eq!(kv.pids("w"), vec![3, 4]);
    }

    #[test]
    fn versions_and_arches() {
        assert_eq!(protocol_of("rbee-agent 0.1.0 (protocol 1)"), Some(1));
        assert_eq!(protocol_of("rbee-agent 0.1.0"), None);
        assert_eq!(normalize_arch("amd64"), "x86_64");
        assert_eq!(normalize_arch("arm64"), "aarch64");
        assert_eq!(normalize_arch("riscv64"), "riscv64");
    }

    #[test]
    fn probe_runs_locally() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("not/yet");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(probe_script(Some(d.to_str().unwrap())))
            .output()
            .unwrap();
        let kv = KeyValues::parse(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(kv.get("os"), Some("Linux"));
        assert_eq!(kv.get("bin"), None);
        assert!(kv.get("free_kb").unwrap().parse::<u64>().unwrap() > 0);
        assert_eq!(kv.get("pid"), None);
    }
}
