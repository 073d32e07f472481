//! The agent's state directory: the single-instance lock, the session token, the desired-state
//! file and the audit log all live here.
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// The token file could be read or swapped by someone else, or the token is guessable.
    #[error("session token {path}: {reason}")]
    Insecure {
        /// The token file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The desired-state file does not parse; it was moved aside.
    #[error("desired-state file {path} is corrupt ({reason}); it was kept as {kept}")]
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
    /// Create (if needed) and lock `root`. Fails if another agent holds it. The directory and
    /// its `logs/` are made private (0700): they hold the token, the audit log and worker logs.
    pub fn open(root: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(root.join(names::WORKER_LOGS)).map_err(io(root))?;
        for dir in [root.to_path_buf(), root.join(names::WORKER_LOGS)] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(&dir))?;
        }
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
    /// Returns the token and whether it was just created. An existing token file must be a
    /// regular file (not a symlink), readable by its owner only, and hold at least
    /// [`MIN_TOKEN_CHARS`] characters; anything else is refused with the fix in the message.
    pub fn token(&self) -> Result<(String, bool), StateError> {
        let path = self.token_path();
        if let Some(t) = read_existing_token(&path)? {
            return Ok((t, false));
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

/// Shortest session token accepted from an existing token file (a generated one has 64).
pub const MIN_TOKEN_CHARS: usize = 32;

/// The token in an existing token file; `None` when there is none (or it is empty) and one
/// should be created.
fn read_existing_token(path: &Path) -> Result<Option<String>, StateError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let insecure = |reason: String| StateError::Insecure {
        path: path.into(),
        reason,
    };
    if meta.file_type().is_symlink() {
        return Err(insecure(
            "is a symbolic link; the token must be a regular file in the state directory \
             (remove the link and the agent creates a new token)"
                .into(),
        ));
    }
    if !meta.is_file() {
        return Err(insecure("is not a regular file".into()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(insecure(format!(
            "is readable or writable by others (mode {mode:04o}); run `chmod 600 {}`",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.chars().count() < MIN_TOKEN_CHARS {
        return Err(insecure(format!(
            "holds {} characters, fewer than {MIN_TOKEN_CHARS}; delete the file and the agent \
             creates a new random token",
            t.chars().count()
        )));
    }
    Ok(Some(t.to_string()))
}

/// Write via a temporary file, fsync, rename, fsync the directory: readers see old or new, never
/// half. Each call has its own temporary file (created exclusively, never through a link), so
/// concurrent writers cannot interleave inside one; the last rename wins. Errors name `path`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
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
                    ..Default::default()
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

    #[test]
    fn weak_or_exposed_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        let path = s.token_path();
        let long = "x".repeat(MIN_TOKEN_CHARS);
        let write = |text: &str, mode: u32| {
            let _ = std::fs::remove_file(&path);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write(&long, 0o644);
        let e = s.token().unwrap_err().to_string();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        write("a", 0o600);
        let e = s.token().unwrap_err().to_string();
        assert!(e.contains("holds 1 characters, fewer than 32"), "{e}");
        write(&long, 0o600);
        assert_eq!(s.token().unwrap(), (long.clone(), false));
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, &long).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let e = s.token().unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }

    #[test]
    fn state_dir_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _s = StateDir::open(&root).unwrap();
        for d in [root.clone(), root.join(names::WORKER_LOGS)] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
    }

    #[test]
    fn concurrent_atomic_writes_never_show_a_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        let texts: Vec<String> = (0..4).map(|i| format!("{i}").repeat(50_000 + i)).collect();
        write_atomic(&path, texts[0].as_bytes(), 0o600).unwrap();
        std::thread::scope(|sc| {
            for t in &texts {
                let path = &path;
                sc.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(path, t.as_bytes(), 0o600).unwrap();
                    }
                });
            }
            sc.spawn(|| {
                for _ in 0..500 {
                    let got = std::fs::read_to_string(&path).unwrap();
                    assert!(texts.contains(&got), "a torn read of {} bytes", got.len());
                }
            });
        });
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
    }
}
