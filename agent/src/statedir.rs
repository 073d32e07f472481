//! The agent's state directory: the single-instance lock, the session token, the desired-state
//! file and the audit log all live here.
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use rbee_proto::session::SpawnSpec;
use rbee_proto::statedir as names;
use serde::{Deserialize, Serialize};

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another agent holds the lock.
    #[error("another rbee-agent{pid} already uses state dir {dir}; stop it first or pick another --state-dir")]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// ` (pid N)` of the holder, when it wrote one.
        pid: String,
    },
    /// A file in the state directory could not be read or written.
    #[error("state dir {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    #[error("desired-state file {path} is corrupt ({reason}); it was kept as {kept}")]
    /// The desired-state file does not parse; it was moved aside.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        reason: String,
        /// Where the bad file was kept.
        kept: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.into(),
        source,
    }
}

/// Holds the exclusive lock for as long as the agent lives.
pub struct StateDir {
    /// The directory.
    pub root: PathBuf,
    _lock: File,
}

/// What the operator asked for: the workers that should run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    /// Workers in the order they were spawned.
    pub workers: Vec<DesiredWorker>,
}

/// One worker that should run: its id (kept across restarts) and what it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredWorker {
    /// The worker id, e.g. `w3`.
    pub id: String,
    /// Model, device, threads.
    pub spec: SpawnSpec,
}

impl StateDir {
    /// Create (if needed) and lock `root`. Fails if another agent holds it.
    pub fn open(root: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(root.join(names::WORKER_LOGS)).map_err(io(root))?;
        let lock_path = root.join(names::LOCK);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        // SAFETY: flock on a descriptor we own; no memory is shared.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let mut pid = String::new();
            let _ = lock.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(StateError::Locked {
                dir: root.into(),
                pid: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            });
        }
        lock.set_len(0).map_err(io(&lock_path))?;
        write!(lock, "{}", std::process::id()).map_err(io(&lock_path))?;
        Ok(Self {
            root: root.into(),
            _lock: lock,
        })
    }

    /// The session token file.
    pub fn token_path(&self) -> PathBuf {
        self.root.join(names::TOKEN)
    }

    /// The audit log.
    pub fn audit_path(&self) -> PathBuf {
        self.root.join(names::AUDIT)
    }

    /// The stderr log of one worker.
    pub fn log_path(&self, worker: &str) -> PathBuf {
        self.root
            .join(names::WORKER_LOGS)
            .join(format!("{worker}.log"))
    }

    /// The file naming the address the agent listens on.
    pub fn addr_path(&self) -> PathBuf {
        self.root.join(names::ADDR)
    }

    /// Read the session token, creating a random one (mode 0600) on first start.
    /// Returns the token and whether it was just created.
    pub fn token(&self) -> Result<(String, bool), StateError> {
        let path = self.token_path();
        if let Ok(t) = std::fs::read_to_string(&path) {
            let t = t.trim().to_string();
            if !t.is_empty() {
                return Ok((t, false));
            }
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| StateError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_atomic(&path, token.as_bytes(), 0o600)?;
        Ok((token, true))
    }

    /// Load the desired state; a corrupt file is moved aside (never silently dropped).
    pub fn load_desired(&self) -> Result<Desired, StateError> {
        let path = self.root.join(names::DESIRED);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Desired::default()),
            Err(e) => return Err(StateError::Io { path, source: e }),
        };
        serde_json::from_str(&text).map_err(|e| {
            let kept = path.with_extension(format!("corrupt-{}", rbee_proto::now_millis()));
            let _ = std::fs::rename(&path, &kept);
            StateError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
                kept,
            }
        })
    }

    /// Replace the desired state on disk (atomically).
    pub fn save_desired(&self, desired: &Desired) -> Result<(), StateError> {
        let text = serde_json::to_vec_pretty(desired).expect("desired state serializes");
        write_atomic(&self.root.join(names::DESIRED), &text, 0o600)
    }
}

/// Write via a temporary file, fsync, rename, fsync the directory: readers see old or new, never half.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _a = StateDir::open(dir.path()).unwrap();
        let e = StateDir::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("already uses state dir"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
    }

    #[test]
    fn token_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        let (t1, created) = s.token().unwrap();
        assert!(created);
        assert_eq!(t1.len(), 64);
        let (t2, created) = s.token().unwrap();
        assert!(!created);
        assert_eq!(t1, t2);
        let mode = std::fs::metadata(s.token_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn desired_round_trips_and_corruption_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        let d = Desired {
            workers: vec![DesiredWorker {
                id: "w1".into(),
                spec: SpawnSpec {
                    model: "m.gguf".into(),
                    device: "cpu".into(),
                    threads: None,
                },
            }],
        };
        s.save_desired(&d).unwrap();
        assert_eq!(s.load_desired().unwrap(), d);
        std::fs::write(dir.path().join(names::DESIRED), "{not json").unwrap();
        let e = s.load_desired().unwrap_err().to_string();
        assert!(e.contains("kept as"), "{e}");
        assert_eq!(s.load_desired().unwrap(), Desired::default());
    }
}
