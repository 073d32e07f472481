//! The process-launch seam: how a worker process is started, signalled and waited for.
//!
//! The lifecycle only sees a [`Launched`] worker: three pipes and a [`WorkerProcess`] handle. The
//! real [`ProcessLauncher`] starts `rbee-worker` in its own process group; tests put a scripted
//! stand-in behind the same trait so crash loops, the breaker and hang detection run on paused
//! time in milliseconds.
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use futures_util::future::BoxFuture;
use rbee_proto::session::SpawnSpec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::process::{Child, Command};

/// A signal the lifecycle sends to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Please exit (SIGTERM to the process group).
    Term,
    /// Exit now (SIGKILL to the process group).
    Kill,
}

/// A running worker as the lifecycle needs it: something to wait for and to signal.
pub trait WorkerProcess: Send {
    /// Resolves when the process has exited. Cancel-safe: it may be polled again after a
    /// timeout or a `select!` dropped an earlier call.
    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>>;
    /// Deliver `signal` to the worker (and whatever it started).
    fn signal(&self, signal: Signal);
}

/// A started worker: its pid, its three pipes and the handle to follow it.
pub struct Launched {
    /// The operating-system pid, when there is one.
    pub pid: Option<u32>,
    /// Frames to the worker go here (one JSON line each).
    pub stdin: Box<dyn AsyncWrite + Send + Unpin>,
    /// Frames from the worker, one JSON line each.
    pub stdout: Box<dyn AsyncRead + Send + Unpin>,
    /// The worker's log, kept in memory and on disk.
    pub stderr: Box<dyn AsyncRead + Send + Unpin>,
    /// Wait for and signal the process.
    pub process: Box<dyn WorkerProcess>,
}

/// Starts worker processes for the lifecycle.
pub trait Launcher: Send + Sync {
    /// Start one worker for `spec`. The error text is shown to the operator as the exit reason.
    fn launch(&self, spec: &SpawnSpec) -> io::Result<Launched>;
}

/// The real launcher: `rbee-worker` with piped stdio, in its own process group, killed with the
/// agent.
pub struct ProcessLauncher {
    /// Path of the `rbee-worker` binary.
    pub worker_bin: PathBuf,
    /// Passed as `--heartbeat-ms`.
    pub heartbeat_ms: u64,
    /// Passed as `--queue`.
    pub queue: usize,
}

impl ProcessLauncher {
    /// The binary for `spec`: `rbee-worker-cuda` beside `rbee-worker` for a `cuda:N` device
    /// when it is installed (admission refuses `cuda:N` otherwise), `rbee-worker` else.
    fn binary(&self, spec: &SpawnSpec) -> PathBuf {
        let cuda = super::admission::cuda_worker_path(&self.worker_bin);
        if spec.device.trim().starts_with("cuda") && cuda.is_file() {
            cuda
        } else {
            self.worker_bin.clone()
        }
    }

    fn command(&self, spec: &SpawnSpec) -> Command {
        let mut cmd = Command::new(self.binary(spec));
        cmd.arg("--model")
            .arg(&spec.model)
            .arg("--device")
            .arg(&spec.device);
        cmd.arg("--heartbeat-ms").arg(self.heartbeat_ms.to_string());
        cmd.arg("--queue").arg(self.queue.to_string());
        if let Some(t) = spec.threads {
            cmd.arg("--threads").arg(t.to_string());
        }
        if let Some(p) = spec.parallel {
            cmd.arg("--parallel").arg(p.to_string());
        }
        if let Some(c) = spec.ctx {
            cmd.arg("--ctx").arg(c.to_string());
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.kill_on_drop(true);
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL this child when
        // the agent dies, so no worker outlives its agent even after `kill -9`.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        cmd
    }
}

impl Launcher for ProcessLauncher {
    fn launch(&self, spec: &SpawnSpec) -> io::Result<Launched> {
        let mut child = self.command(spec).spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot start {}: {e}", self.binary(spec).display()),
            )
        })?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        Ok(Launched {
            pid: child.id(),
            stdin: Box::new(stdin),
            stdout: Box::new(stdout),
            stderr: Box::new(stderr),
            process: Box::new(RealProcess { child }),
        })
    }
}

/// A child process in its own process group.
struct RealProcess {
    child: Child,
}

impl WorkerProcess for RealProcess {
    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>> {
        Box::pin(self.child.wait())
    }

    fn signal(&self, signal: Signal) {
        let sig = match signal {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling the worker's own process group (created with process_group(0)).
            unsafe {
                libc::kill(-(pid as i32), sig);
            }
        }
    }
}

/// How an exit reads in `last_exit` and in the errors of requests that were still running.
pub fn describe_status(s: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!(
            "killed by signal {sig}{}",
            match sig {
                9 => " (SIGKILL)",
                15 => " (SIGTERM)",
                11 => " (SIGSEGV)",
                6 => " (SIGABRT)",
                _ => "",
            }
        ),
        _ => "unknown exit".into(),
    }
}
