//! Per-operator tokens, beside the node token: `rbee-agent token add NAME` gives an operator a
//! token of their own, the audit log names them (`operator NAME`) on every entry of their
//! sessions, and `token revoke NAME` takes it back. They live in `<state>/operators.json` (0600),
//! which the agent reads at each login, so adding and revoking work on a running agent (a
//! session already open stays open until it ends).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::statedir::write_atomic;

/// The file, in the state directory.
pub const FILE: &str = "operators.json";

/// Characters of a new operator token (hex of 24 random bytes).
const TOKEN_HEX_CHARS: usize = 48;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Operators {
    /// Name → token.
    tokens: BTreeMap<String, String>,
}

/// The operators file of the state directory `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

fn load(file: &Path) -> anyhow::Result<Operators> {
    match std::fs::read_to_string(file) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not valid: {e}", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Operators::default()),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", file.display())),
    }
}

/// Hold an exclusive lock (a `.operators.lock` beside `file`) while `f` reads, changes and
/// writes the file, so two `token add` run at once both land instead of the last write
/// dropping the other's token (which its operator was already shown).
fn locked<T>(file: &Path, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let lock_path = file.with_file_name(".operators.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", lock_path.display()))?;
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!("cannot lock {}: {e}", lock_path.display());
    }
    let out = f();
    drop(lock);
    out
}

fn save(file: &Path, ops: &Operators) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(ops)?;
    write_atomic(file, text.as_bytes(), 0o600)?;
    Ok(())
}

/// Give operator `name` a new token; the token is returned (shown once, never again). A name
/// already holding one is refused: revoke it first.
pub fn add(file: &Path, name: &str) -> anyhow::Result<String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if !valid {
        anyhow::bail!("operator name `{name}`: use 1 to 64 letters, digits, `-`, `_`, `.` or `@`");
    }
    locked(file, || {
        let mut ops = load(file)?;
        if ops.tokens.contains_key(name) {
            anyhow::bail!(
                "operator {name} already has a token; `rbee-agent token revoke {name}` first"
            );
        }
        let mut bytes = [0u8; TOKEN_HEX_CHARS / 2];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        ops.tokens.insert(name.into(), token.clone());
        save(file, &ops)?;
        Ok(token)
    })
}

/// Take operator `name`'s token back; false when there was none.
pub fn revoke(file: &Path, name: &str) -> anyhow::Result<bool> {
    locked(file, || {
        let mut ops = load(file)?;
        let had = ops.tokens.remove(name).is_some();
        if had {
            save(file, &ops)?;
        }
        Ok(had)
    })
}

/// The operators holding a token, by name.
pub fn list(file: &Path) -> anyhow::Result<Vec<String>> {
    check_private(file)?;
    Ok(load(file)?.tokens.into_keys().collect())
}

/// Refuse a file others may read or replace, as the node token is: the tokens in it are
/// passwords. The error says the fix.
fn check_private(file: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::symlink_metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("cannot read {}: {e}", file.display()),
    };
    if !meta.is_file() {
        anyhow::bail!(
            "{} is not a regular file (a link?); remove it and add the tokens again",
            file.display()
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "{} is readable or writable by others (mode {mode:04o}); run `chmod 600 {}`",
            file.display(),
            file.display()
        );
    }
    Ok(())
}

/// The operator whose token `given` is (compared in constant time), if any. A file that cannot
/// be read or that others may read admits nobody (and is logged, naming the fix); a token
/// shorter than the node token's minimum (a hand-edited file) is never matched.
pub fn lookup(file: &Path, given: &str) -> Option<String> {
    let ops = match check_private(file).and_then(|()| load(file)) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!("operator tokens ignored: {e}");
            return None;
        }
    };
    let mut found = None;
    for (name, token) in &ops.tokens {
        if token.chars().count() < crate::statedir::MIN_TOKEN_CHARS {
            tracing::warn!(
                "operator {name}'s token is too short to be accepted; \
                 `rbee-agent token revoke {name}` then `token add {name}`"
            );
            continue;
        }
        if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            found = Some(name.clone());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_are_added_found_listed_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let f = path(dir.path());
        let alice = add(&f, "alice").unwrap();
        let bob = add(&f, "bob").unwrap();
        assert_eq!(alice.len(), TOKEN_HEX_CHARS);
        assert_ne!(alice, bob);
        assert!(add(&f, "alice").is_err(), "one token per name");
        assert!(add(&f, "a b").is_err());
        assert_eq!(lookup(&f, &alice).as_deref(), Some("alice"));
        assert_eq!(lookup(&f, "nope"), None);
        assert_eq!(list(&f).unwrap(), ["alice", "bob"]);
        assert!(revoke(&f, "alice").unwrap());
        assert!(!revoke(&f, "alice").unwrap());
        assert_eq!(lookup(&f, &alice), None);
        assert_eq!(lookup(&f, &bob).as_deref(), Some("bob"));
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn an_exposed_file_or_a_short_token_admits_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let f = path(dir.path());
        let bob = add(&f, "bob").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(lookup(&f, &bob), None);
        let e = list(&f).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&f, &bob).as_deref(), Some("bob"));
        // Hand-edited: an empty token must not let an empty bearer in.
        std::fs::write(&f, r#"{"tokens":{"eve":""}}"#).unwrap();
        assert_eq!(lookup(&f, ""), None);
    }
}
