//! Why a model cannot be found, resolved, listed or pulled.
use std::path::PathBuf;

use rbee_proto::{ErrorCode, ProtoError};

/// Every failure of the model store, each mapped to one wire [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A local path or cached model is not there (the message names it).
    #[error("model not found: {0}")]
    NotFound(String),
    /// Something named in the message is missing; the message is complete as it is.
    #[error("{0}")]
    Missing(String),
    /// The reference does not parse; the message shows the accepted forms.
    #[error("{0}")]
    BadReference(String),
    /// The request cannot be served as asked (wrong file type for `FILE`, bad device …).
    #[error("{0}")]
    BadRequest(String),
    /// The files exist but are not a model rbee can load.
    #[error("unsupported model {path}: {reason}")]
    Unsupported {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file of the model cannot be read or parsed.
    #[error("corrupt or unreadable model {path}: {reason}")]
    Corrupt {
        /// The unreadable file.
        path: PathBuf,
        /// The reader's complaint.
        reason: String,
    },
    /// A path outside every model directory: spawn requests may only name files inside them.
    #[error("model `{model}` is outside the model store ({})", dirs.join(", "))]
    OutsideStore {
        /// What was asked for.
        model: String,
        /// The model directories.
        dirs: Vec<String>,
    },
    /// A name that several models of the store answer to.
    #[error("model name `{name}` is ambiguous; use one of: {}", candidates.join(", "))]
    Ambiguous {
        /// What was asked for.
        name: String,
        /// References of every model it could mean.
        candidates: Vec<String>,
    },
    /// A pull would not fit on the disk holding the cache.
    #[error("{model} needs {} to download but only {} is free in {}", rbee_proto::fmt::bytes(*.needed), rbee_proto::fmt::bytes(*.free), dir.display())]
    InsufficientDisk {
        /// The reference pulled.
        model: String,
        /// Bytes still to download.
        needed: u64,
        /// Bytes free on the cache's filesystem.
        free: u64,
        /// The cache directory.
        dir: PathBuf,
    },
    /// A download started and failed.
    #[error("{0}")]
    Download(String),
    /// The hub client could not be built (bad endpoint, TLS…).
    #[error("{0}")]
    HubClient(String),
}

impl StoreError {
    /// The wire code a client sees for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::NotFound(_) | StoreError::Missing(_) => ErrorCode::NotFound,
            StoreError::BadReference(_)
            | StoreError::BadRequest(_)
            | StoreError::Unsupported { .. }
            | StoreError::OutsideStore { .. }
            | StoreError::Ambiguous { .. } => ErrorCode::BadRequest,
            StoreError::Corrupt { .. } | StoreError::Download(_) => ErrorCode::ModelLoad,
            StoreError::InsufficientDisk { .. } => ErrorCode::InsufficientDisk,
            StoreError::HubClient(_) => ErrorCode::Internal,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<StoreError> for ProtoError {
    fn from(e: StoreError) -> Self {
        ProtoError::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_their_wire_code_and_a_complete_message() {
        let e = StoreError::InsufficientDisk {
            model: "hf:o/r:m.gguf".into(),
            needed: 3 << 30,
            free: 1 << 30,
            dir: "/cache/hub".into(),
        };
        let p: ProtoError = e.into();
        assert_eq!(p.code, ErrorCode::InsufficientDisk);
        assert_eq!(
            p.message,
            "hf:o/r:m.gguf needs 3.0 GiB to download but only 1.0 GiB is free in /cache/hub"
        );
        let e = StoreError::Ambiguous {
            name: "m".into(),
            candidates: vec!["/a/m.gguf".into(), "/b/m.gguf".into()],
        };
        assert_eq!(e.code(), ErrorCode::BadRequest);
        assert_eq!(
            e.to_string(),
            "model name `m` is ambiguous; use one of: /a/m.gguf, /b/m.gguf"
        );
    }
}
