//! Which build a binary is: a hash of the executable's bytes, so two binaries answer the same id
//! exactly when they are the same file, whatever version number they carry. `rbee-agent
//! --version` says it (and its worker's), and the SSH bring-up compares it with this machine's
//! binaries to decide whether a node needs the new ones.
use std::io::Read;
use std::path::Path;

/// FNV-1a (64 bit) of the file at `path`, as 16 hex digits.
pub fn file_id(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(format!("{h:016x}"))
}

/// The build id of the running executable (`unknown` when it cannot be read).
pub fn this_binary() -> String {
    std::env::current_exe()
        .and_then(|p| file_id(&p))
        .unwrap_or_else(|_| "unknown".into())
}

/// The build id a `--version` line carries (`… build 0123456789abcdef …`), if any.
pub fn id_in(version_line: &str, key: &str) -> Option<String> {
    let mut words =
        version_line.split(|c: char| c.is_whitespace() || c == ',' || c == ')' || c == '(');
    while let Some(w) = words.next() {
        if w == key {
            return words
                .find(|w| !w.is_empty())
                .filter(|w| w.len() == 16 && w.chars().all(|c| c.is_ascii_hexdigit()))
                .map(String::from);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_per_content_and_read_back_from_a_version_line() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"one binary").unwrap();
        std::fs::write(&b, b"one binary").unwrap();
        assert_eq!(file_id(&a).unwrap(), file_id(&b).unwrap());
        std::fs::write(&b, b"another binary").unwrap();
        assert_ne!(file_id(&a).unwrap(), file_id(&b).unwrap());
        let id = file_id(&a).unwrap();
        let line = format!("rbee-agent 0.1.0 (protocol 3, build {id}, worker 00ff00ff00ff00ff)");
        assert_eq!(id_in(&line, "build").as_deref(), Some(id.as_str()));
        assert_eq!(id_in(&line, "worker").as_deref(), Some("00ff00ff00ff00ff"));
        assert_eq!(id_in("rbee-agent 0.1.0 (protocol 3)", "build"), None);
        assert_ne!(this_binary(), "unknown");
    }
}
