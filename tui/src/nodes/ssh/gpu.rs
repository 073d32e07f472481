//! GPUs at bring-up (`nodes add`): find the node's NVIDIA GPUs without needing CUDA there
//! (`nvidia-smi`, else `/proc/driver/nvidia/gpus`), and install the CUDA worker that matches them
//! when this machine has one (`scripts/build-cuda.sh` builds `rbee-worker-cuda-sm80` / `-sm90`
//! beside `rbee-worker`), plus the CUDA runtime libraries from the build's `cuda-lib/` when the
//! node has no CUDA 13 runtime of its own. Nothing here fails a bring-up: a node whose GPUs cannot
//! be served still serves on CPU, and the returned note says why and what to do.
//!
//! On the node: `<remote_dir>/bin/rbee-worker-cuda` (the agent runs it for `cuda:N`, see
//! agent/README.md) and `<remote_dir>/bin/cuda-lib/` (its RUNPATH).
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::conn::SshConn;
use super::remote;
use super::SshOptions;

/// The runtime libraries a CUDA worker needs besides the driver's `libcuda.so.1`.
pub const CUDA_LIBS: [&str; 4] = [
    "libcudart.so.13",
    "libcublas.so.13",
    "libcublasLt.so.13",
    "libcurand.so.10",
];

/// One NVIDIA GPU as the node reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteGpu {
    /// Product name.
    pub name: String,
    /// Memory on the card, when `nvidia-smi` told.
    pub memory_mib: Option<u64>,
    /// Compute capability (`9.0` → `(9, 0)`), when `nvidia-smi` told.
    pub compute_cap: Option<(u32, u32)>,
}

/// Parse one `gpu=` line: `NAME[, MEMORY_MIB[, MAJOR.MINOR]]`.
pub fn parse_gpu(line: &str) -> RemoteGpu {
    let mut parts: Vec<&str> = line.split(',').map(str::trim).collect();
    let cc = parts.last().and_then(|p| {
        let (a, b) = p.split_once('.')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    });
    if cc.is_some() {
        parts.pop();
    }
    let memory_mib = parts.last().and_then(|p| p.parse().ok());
    if memory_mib.is_some() {
        parts.pop();
    }
    RemoteGpu {
        name: parts.join(", "),
        memory_mib,
        compute_cap: cc,
    }
}

/// Prints `arch=`, one `gpu=` line per GPU, `cuda_worker=` (the installed CUDA worker's
/// `--version`, when there is one) and `cuda_libs=` (`system`, `bundled` or `none`).
pub fn probe_script(remote_dir: Option<&str>) -> String {
    let libs = CUDA_LIBS.join(" ");
    remote::prelude(remote_dir)
        + &format!(
            r#"echo "arch=$(uname -m)"
n=0
if command -v nvidia-smi >/dev/null 2>&1; then
  q=$(nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits 2>/dev/null) ||
    q=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits 2>/dev/null) || q=""
  if [ -n "$q" ]; then
    printf '%s\n' "$q" | while IFS= read -r l; do [ -n "$l" ] && echo "gpu=$l"; done
    n=1
  fi
fi
if [ "$n" = 0 ]; then
  for f in /proc/driver/nvidia/gpus/*/information; do
    [ -r "$f" ] && echo "gpu=$(sed -n 's/^Model:[[:space:]]*//p' "$f")"
  done
fi
if [ -e "$D/bin/rbee-worker-cuda" ]; then
  echo "cuda_worker=$("$D/bin/rbee-worker-cuda" --version 2>&1 | head -n 1)"
fi
have() {{ ldconfig -p 2>/dev/null | grep -q "$1"; }}
sys=1; own=1
for l in {libs}; do
  have "$l" || sys=0
  [ -e "$D/bin/cuda-lib/$l" ] || own=0
done
if [ "$sys" = 1 ]; then echo cuda_libs=system; elif [ "$own" = 1 ]; then echo cuda_libs=bundled; else echo cuda_libs=none; fi
"#
        )
}

/// This machine's `rbee-worker`, as the bring-up uploads it.
fn local_worker() -> PathBuf {
    match std::env::var_os("RBEE_WORKER_BIN") {
        Some(w) if !w.is_empty() => PathBuf::from(w),
        _ => crate::nodes::local::LocalOptions::from_env()
            .map(|o| o.agent_bin)
            .unwrap_or_else(|_| PathBuf::from("rbee-agent"))
            .with_file_name("rbee-worker"),
    }
}

/// The CUDA worker builds to look for beside `worker` for GPUs of compute capability `cc`, best
/// first: the `-smNN` build of that architecture family, then a plain `rbee-worker-cuda`.
pub fn cuda_candidates(worker: &Path, cc: Option<(u32, u32)>) -> Vec<PathBuf> {
    let mut names = Vec::new();
    match cc {
        Some((8, _)) => names.push("rbee-worker-cuda-sm80".to_string()),
        Some((9, 0)) => names.push("rbee-worker-cuda-sm90".to_string()),
        Some((major, minor)) => names.push(format!("rbee-worker-cuda-sm{major}{minor}")),
        None => {}
    }
    names.push("rbee-worker-cuda".into());
    names.iter().map(|n| worker.with_file_name(n)).collect()
}

/// What the bring-up found and did about the node's GPUs: `None` on a node without NVIDIA GPUs,
/// else a line for `nodes add` to print.
pub async fn deliver(conn: &SshConn, opts: &SshOptions) -> Option<String> {
    let probe = match conn
        .exec_kv("probing GPUs", &probe_script(opts.remote_dir.as_deref()))
        .await
    {
        Ok(kv) => kv,
        Err(e) => return Some(format!("could not look for GPUs ({e}); serving on CPU")),
    };
    let gpus: Vec<RemoteGpu> = probe.all("gpu").iter().map(|l| parse_gpu(l)).collect();
    if gpus.is_empty() {
        return None;
    }
    let found = describe(&gpus);
    if probe.get("arch").map(remote::normalize_arch) != Some(std::env::consts::ARCH) {
        return Some(format!(
            "{found}; not installing a CUDA worker for another architecture"
        ));
    }
    match probe.get("cuda_worker") {
        Some(v)
            if v.contains("backends")
                && v.contains("cuda")
                && probe.get("cuda_libs") != Some("none") =>
        {
            return Some(format!("{found}; its CUDA worker is installed"));
        }
        // A CUDA worker without its libraries: installed again below, with them.
        Some(v) if v.contains("backends") && v.contains("cuda") => {}
        // Installed but it does not start (a driver or library missing): uploading it again
        // would not help.
        Some(v) => {
            return Some(format!(
                "{found}; its CUDA worker does not start ({v}): the node serves on CPU"
            ))
        }
        None => {}
    }
    let cc = gpus.iter().filter_map(|g| g.compute_cap).max();
    let worker = local_worker();
    let candidates = cuda_candidates(&worker, cc);
    let Some(local) = candidates.iter().find(|p| p.is_file()) else {
        let names: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        let cap = cc.map_or("80 90".to_string(), |(a, b)| format!("{a}{b}"));
        return Some(format!(
            "{found}, but this machine has no CUDA worker to install ({} not found): the node serves on CPU; \
             build one with `scripts/build-cuda.sh {cap}` and the next connection to the node installs it",
            names.join(", ")
        ));
    };
    Some(install(conn, opts, &found, local, probe.get("cuda_libs")).await)
}

fn describe(gpus: &[RemoteGpu]) -> String {
    let names: Vec<String> = gpus
        .iter()
        .map(|g| match (g.memory_mib, g.compute_cap) {
            (Some(m), Some((a, b))) => format!("{} ({} GiB, sm_{a}{b})", g.name, m / 1024),
            (Some(m), None) => format!("{} ({} GiB)", g.name, m / 1024),
            _ => g.name.clone(),
        })
        .collect();
    format!("{} NVIDIA GPU(s): {}", gpus.len(), names.join("; "))
}

/// Upload `local` as the node's `rbee-worker-cuda`, and the runtime libraries beside it when
/// the node has none; the line to print.
async fn install(
    conn: &SshConn,
    opts: &SshOptions,
    found: &str,
    local: &Path,
    node_libs: Option<&str>,
) -> String {
    if let Err(e) = put(conn, opts, local, "rbee-worker-cuda", 0o755).await {
        return format!("{found}; uploading the CUDA worker failed ({e}): the node serves on CPU");
    }
    let mut line = format!("{found}; installed the CUDA worker {}", local.display());
    if node_libs == Some("none") {
        let dir = local.with_file_name("cuda-lib");
        let missing: Vec<&str> = CUDA_LIBS
            .into_iter()
            .filter(|l| !dir.join(l).is_file())
            .collect();
        // Everything the build put there (it copies what the binary asks for, nvrtc included
        // when it does), not only the four every CUDA worker needs.
        let mut libs: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_file())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        libs.sort();
        for lib in &libs {
            let file = dir.join(lib);
            if let Err(e) = put(conn, opts, &file, &format!("cuda-lib/{lib}"), 0o644).await {
                return format!(
                    "{line}, but uploading {lib} failed ({e}): CUDA spawns will fail there"
                );
            }
        }
        line += &match missing.len() {
            0 => format!(" and the CUDA runtime libraries from {}", dir.display()),
            _ => format!(
                ", but the node has no CUDA 13 runtime and {} lacks {} (run scripts/build-cuda.sh): CUDA spawns will fail there",
                dir.display(),
                missing.join(", ")
            ),
        };
    }
    line
}

/// Send one file to `<remote_dir>/bin/<name>` atomically, checking its size.
async fn put(
    conn: &SshConn,
    opts: &SshOptions,
    path: &Path,
    name: &str,
    mode: u32,
) -> Result<(), String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let target = remote::sh_quote(name);
    let script = remote::prelude(opts.remote_dir.as_deref())
        + &format!(
            r#"F="$D/bin/"{target}
mkdir -p "$(dirname "$F")" || exit 20
T="$F.part.$$"
trap 'rm -f "$T"' EXIT
cat > "$T" || exit 21
[ "$(wc -c < "$T")" -eq {size} ] || {{ echo "short upload" >&2; exit 22; }}
chmod {mode:o} "$T" && mv -f "$T" "$F" || exit 23
"#
        );
    let limit = Duration::from_secs(60 + (size >> 22));
    let out = conn
        .exec(&format!("uploading {name}"), &script, Some(file), limit)
        .await
        .map_err(|e| e.to_string())?;
    if out.success() {
        Ok(())
    } else {
        Err(out.failure())
    }
}

#[cfg(test)]
mod tests {
    use super::remote::KeyValues;
    use super::*;

    #[test]
    fn gpu_lines_parse_with_and_without_the_optional_fields() {
        let g = parse_gpu("NVIDIA H100 80GB HBM3, 81559, 9.0");
        assert_eq!(g.name, "NVIDIA H100 80GB HBM3");
        assert_eq!(g.memory_mib, Some(81559));
        assert_eq!(g.compute_cap, Some((9, 0)));
        let g = parse_gpu("NVIDIA A100-SXM4-40GB, 40960");
        assert_eq!((g.memory_mib, g.compute_cap), (Some(40960), None));
        assert_eq!(parse_gpu("Tesla T4").name, "Tesla T4");
    }

    #[test]
    fn the_build_of_the_gpus_family_is_preferred() {
        let w = Path::new("/x/rbee-worker");
        let names = |cc| {
            cuda_candidates(w, cc)
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(Some((9, 0))),
            ["rbee-worker-cuda-sm90", "rbee-worker-cuda"]
        );
        assert_eq!(
            names(Some((8, 6))),
            ["rbee-worker-cuda-sm80", "rbee-worker-cuda"]
        );
        assert_eq!(names(None), ["rbee-worker-cuda"]);
    }

    #[test]
    fn probe_runs_locally() {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(probe_script(Some(dir.path().to_str().unwrap())))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let kv = KeyValues::parse(&String::from_utf8_lossy(&out.stdout));
        assert!(kv.get("arch").is_some());
        assert!(matches!(kv.get("cuda_libs"), Some("system" | "none")));
        assert!(kv.get("cuda_worker").is_none());
    }
}
