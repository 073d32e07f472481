//! API keys: read from the key file, checked in constant time against `Authorization: Bearer`.
//!
//! The file holds one key per line, `ID SECRET` (the id is what the audit names) or just
//! `SECRET` (its id is then `key-N`, N counting keys from 1). Blank lines and lines starting with
//! `#` are skipped.
use std::path::{Path, PathBuf};

/// Why the key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// It could not be read.
    #[error("cannot read API key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// It was read but a line is not usable.
    #[error("API key file {path}, line {line}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// It holds no key.
    #[error("API key file {0} holds no key")]
    Empty(PathBuf),
}

/// The accepted keys.
#[derive(Clone)]
pub struct ApiKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids only: a key never reaches a log.
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("ApiKeys").field("ids", &ids).finish()
    }
}

/// Shortest secret accepted: anything shorter is guessable.
const MIN_SECRET: usize = 16;

impl ApiKeys {
    /// Read the key file.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Keys from the file's text (`path` for the errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, KeyFileError> {
        let mut keys = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let invalid = |message: &str| KeyFileError::Invalid {
                path: path.into(),
                line: i + 1,
                message: message.into(),
            };
            let mut words = line.split_whitespace();
            let (id, secret) = match (words.next(), words.next(), words.next()) {
                (Some(secret), None, _) => (format!("key-{}", keys.len() + 1), secret),
                (Some(id), Some(secret), None) => (id.to_string(), secret),
                _ => return Err(invalid("expected `ID SECRET` or `SECRET`")),
            };
            if secret.len() < MIN_SECRET {
                return Err(invalid(&format!(
                    "key `{id}` is shorter than {MIN_SECRET} characters"
                )));
            }
            if keys.iter().any(|(k, _): &(String, Vec<u8>)| *k == id) {
                return Err(invalid(&format!("key id `{id}` appears twice")));
            }
            keys.push((id, secret.as_bytes().to_vec()));
        }
        if keys.is_empty() {
            return Err(KeyFileError::Empty(path.into()));
        }
        Ok(Self { keys })
    }

    /// The id of the key an `Authorization` header carries, or why it is refused.
    pub fn check(&self, authorization: Option<&str>) -> Result<String, &'static str> {
        let Some(value) = authorization else {
            return Err("missing API key: send `Authorization: Bearer <key>`");
        };
        let Some(given) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        else {
            return Err("the Authorization header must be `Bearer <key>`");
        };
        let given = given.trim().as_bytes();
        // Every key is compared in full, so the time taken says nothing about which matched.
        let mut found = None;
        for (id, secret) in &self.keys {
            if constant_time_eq(given, secret) {
                found = Some(id);
            }
        }
        found.cloned().ok_or("invalid API key")
    }
}

/// Equal in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_secrets() {
        let keys = ApiKeys::parse(
            "# team keys\nalice sk-aaaaaaaaaaaaaaaaaaaa\n\nsk-bbbbbbbbbbbbbbbbbbbb\n",
            Path::new("k"),
        )
        .unwrap();
        assert_eq!(
            keys.check(Some("Bearer sk-aaaaaaaaaaaaaaaaaaaa")),
            Ok("alice".into())
        );
        assert_eq!(
            keys.check(Some("Bearer sk-bbbbbbbbbbbbbbbbbbbb")),
            Ok("key-2".into())
        );
        assert!(keys.check(Some("Bearer sk-cccccccccccccccccccc")).is_err());
        assert!(keys.check(None).is_err());
        assert!(keys.check(Some("Basic xyz")).is_err());
        assert!(!format!("{keys:?}").contains("sk-"));
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(matches!(
            ApiKeys::parse("# none\n", Path::new("k")),
            Err(KeyFileError::Empty(_))
        ));
        let e = ApiKeys::parse("a short\n", Path::new("k")).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        let e = ApiKeys::parse("a b c\n", Path::new("k")).unwrap_err();
        assert!(e.to_string().contains("ID SECRET"), "{e}");
    }
}
