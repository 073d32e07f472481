//! Why a model could not be loaded.
use std::path::{Path, PathBuf};

use rbee_store::StoreError;

/// Every failure between `--model` and a model ready to generate.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The reference, its files, or the hub (see [`StoreError`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The files are there but cannot be read as the model they claim to be.
    #[error("corrupt or unreadable model {path}: {reason}")]
    Corrupt {
        /// The file at fault.
        path: PathBuf,
        /// What the reader said.
        reason: String,
    },
    /// A well-formed model this worker cannot serve (its architecture, a format).
    #[error("unsupported model {path}: {reason}")]
    Unsupported {
        /// The model file or config.
        path: PathBuf,
        /// What is not supported, and what is.
        reason: String,
    },
    /// The tokenizer cannot be built.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The device cannot be opened (the message names it).
    #[error("{0}")]
    Device(String),
}

impl LoadError {
    /// A reader's failure on `path`.
    pub fn corrupt(path: &Path, e: impl std::fmt::Display) -> Self {
        LoadError::Corrupt {
            path: path.into(),
            reason: e.to_string(),
        }
    }
}
