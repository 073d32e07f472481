//! A log file that rotates by size: `name` is written, and when the next line would take it past
//! the limit it becomes `name.1` (`name.1` becomes `name.2` …, the oldest beyond `keep` goes) and
//! a fresh `name` is started. A line is always written whole into one file with one `write`, so
//! rotation never splits or loses the line being written, and a reader of the files, oldest
//! first, sees every line kept exactly once.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// How big a log may grow and how many rotated files are kept beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The size past which the file is rotated before the next line (a single line longer than
    /// this still goes whole into a file of its own).
    pub max_bytes: u64,
    /// Rotated files kept (`name.1` … `name.keep`); 0 keeps none (the file is truncated).
    pub keep: usize,
}

impl Default for Rotation {
    /// 8 MiB, three rotated files.
    fn default() -> Self {
        Rotation {
            max_bytes: 8 << 20,
            keep: 3,
        }
    }
}

/// An append-only, private (0600) log file rotated by size. Writes go straight to the file (no
/// buffer), one `write_all` per line.
pub struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    file: File,
    len: u64,
    stderr: bool,
}

impl RotatingFile {
    /// Open (or create) the log at `path`, appending to what is there.
    pub fn open(path: &Path, rotation: Rotation) -> std::io::Result<Self> {
        let file = open_append(path)?;
        let len = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.into(),
            rotation,
            file,
            len,
            stderr: false,
        })
    }

    /// Also point this process's stderr at the file, now and after every rotation, so what is
    /// written to stderr outside the logger (a panic message) lands in the current file too.
    pub fn follow_with_stderr(mut self) -> std::io::Result<Self> {
        self.stderr = true;
        self.redirect_stderr()?;
        Ok(self)
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Make what was written durable.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }

    /// Write `line` (which should end with its newline), rotating first when it would take the
    /// file past the limit.
    pub fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.len > 0 && self.len + line.len() as u64 > self.rotation.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.len += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let keep = self.rotation.keep;
        if keep == 0 {
            self.file.set_len(0)?;
            self.len = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(rotated(&self.path, keep));
        for i in (1..keep).rev() {
            let _ = std::fs::rename(rotated(&self.path, i), rotated(&self.path, i + 1));
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))?;
        self.file = open_append(&self.path)?;
        self.len = 0;
        if self.stderr {
            self.redirect_stderr()?;
        }
        Ok(())
    }

    fn redirect_stderr(&self) -> std::io::Result<()> {
        // SAFETY: dup2 onto fd 2 of a descriptor we own; it only replaces what fd 2 refers to.
        if unsafe { libc::dup2(self.file.as_raw_fd(), 2) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// `name.N`, the N-th rotated file of the log at `path`.
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The log's files, oldest first (`name.keep` … `name.1`, `name`), those that exist.
pub fn files_oldest_first(path: &Path, keep: usize) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = (1..=keep).rev().map(|i| rotated(path, i)).collect();
    files.push(path.into());
    files.retain(|p| p.exists());
    files
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(path: &Path, keep: usize) -> Vec<String> {
        files_oldest_first(path, keep)
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .lines()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn every_line_is_kept_whole_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let rotation = Rotation {
            max_bytes: 1000,
            keep: 1000,
        };
        let mut f = RotatingFile::open(&path, rotation).unwrap();
        for i in 0..10_000 {
            f.write_line(format!("line {i:05} {}\n", "x".repeat(i % 37)).as_bytes())
                .unwrap();
        }
        let lines = read_all(&path, 1000);
        assert_eq!(lines.len(), 10_000);
        for (i, l) in lines.iter().enumerate() {
            assert!(l.starts_with(&format!("line {i:05} ")), "{l}");
        }
        for p in files_oldest_first(&path, 1000) {
            assert!(
                std::fs::metadata(&p).unwrap().len() <= 1000,
                "{}",
                p.display()
            );
        }
    }

    #[test]
    fn only_keep_rotated_files_stay_and_a_long_line_gets_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let rotation = Rotation {
            max_bytes: 100,
            keep: 2,
        };
        let mut f = RotatingFile::open(&path, rotation).unwrap();
        for i in 0..50 {
            f.write_line(format!("{i:02} ........\n").as_bytes())
                .unwrap();
        }
        let big = format!("{}\n", "y".repeat(5000));
        f.write_line(big.as_bytes()).unwrap();
        f.write_line(b"after\n").unwrap();
        assert!(!rotated(&path, 3).exists());
        assert_eq!(std::fs::read_to_string(rotated(&path, 1)).unwrap(), big);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "after\n");
        let older = std::fs::read_to_string(rotated(&path, 2)).unwrap();
        assert!(older.ends_with("49 ........\n"), "{older}");
    }
}
