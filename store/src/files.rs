//! Which files a model needs, and how big it is.
//!
//! A model is either one GGUF file (weights, tokenizer vocabulary and chat template inside; a
//! `tokenizer.json` beside it wins over the embedded vocabulary), or a safetensors directory:
//! `config.json`, `tokenizer.json` and the weights (`model.safetensors`, or the shards that
//! `model.safetensors.index.json` names), plus optional files that carry the chat template and
//! generation defaults.
use std::path::{Path, PathBuf};

use crate::StoreError;

/// Files a safetensors model directory cannot do without.
pub const REQUIRED_DIR_FILES: [&str; 2] = ["config.json", "tokenizer.json"];
/// The index naming the weight shards of a sharded safetensors model.
pub const SHARD_INDEX: &str = "model.safetensors.index.json";
/// Files a model directory may carry; used when present (chat template, special tokens,
/// generation defaults).
pub const OPTIONAL_DIR_FILES: [&str; 3] = [
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
];
/// The tokenizer file looked for beside a GGUF file (and in its hub repository).
pub const TOKENIZER_JSON: &str = "tokenizer.json";

/// The files a model reference resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFiles {
    /// One GGUF file.
    Gguf {
        /// The weights, with metadata.
        file: PathBuf,
        /// A `tokenizer.json` found beside it, preferred over the vocabulary in the file.
        tokenizer: Option<PathBuf>,
    },
    /// A safetensors model directory.
    Safetensors {
        /// The directory itself.
        dir: PathBuf,
        /// `config.json`.
        config: PathBuf,
        /// `tokenizer.json`.
        tokenizer: PathBuf,
        /// The weight files, sorted.
        weights: Vec<PathBuf>,
        /// Optional files present in the directory (see [`OPTIONAL_DIR_FILES`]).
        extras: Vec<PathBuf>,
    },
}

fn is_gguf(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()) == Some("gguf")
}

fn file_size(p: &Path) -> u64 {
    // metadata() follows symlinks, so HF cache pointers count their blobs.
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

impl ModelFiles {
    /// The files of a local model: a `.gguf` file or a safetensors directory.
    pub fn from_path(p: &Path) -> Result<Self, StoreError> {
        let meta = std::fs::metadata(p)
            .map_err(|e| StoreError::NotFound(format!("{}: {e}", p.display())))?;
        if !meta.is_file() {
            return Self::from_dir(p);
        }
        if !is_gguf(p) {
            return Err(StoreError::Unsupported {
                path: p.into(),
                reason: "a model file must be .gguf (or pass a safetensors directory)".into(),
            });
        }
        let beside = [
            p.with_extension(TOKENIZER_JSON),
            p.with_file_name(TOKENIZER_JSON),
        ];
        Ok(ModelFiles::Gguf {
            file: p.into(),
            tokenizer: beside.into_iter().find(|t| t.is_file()),
        })
    }

    /// The files of a safetensors model directory; names every missing required file.
    pub fn from_dir(dir: &Path) -> Result<Self, StoreError> {
        let listing: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| StoreError::NotFound(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        let mut missing: Vec<String> = REQUIRED_DIR_FILES
            .iter()
            .filter(|n| !dir.join(n).is_file())
            .map(|n| n.to_string())
            .collect();
        let (weights, absent) = weights_in(dir, &listing)?;
        missing.extend(absent);
        if !missing.is_empty() {
            return Err(StoreError::NotFound(format!(
                "{} is not a model directory: missing {}",
                dir.display(),
                missing.join(", ")
            )));
        }
        let extras = OPTIONAL_DIR_FILES
            .iter()
            .map(|n| dir.join(n))
            .filter(|p| p.is_file())
            .collect();
        Ok(ModelFiles::Safetensors {
            dir: dir.into(),
            config: dir.join(REQUIRED_DIR_FILES[0]),
            tokenizer: dir.join(REQUIRED_DIR_FILES[1]),
            weights,
            extras,
        })
    }

    /// Bytes of weights (what admission compares with free memory).
    pub fn total_bytes(&self) -> u64 {
        match self {
            ModelFiles::Gguf { file, .. } => file_size(file),
            ModelFiles::Safetensors { weights, .. } => weights.iter().map(|w| file_size(w)).sum(),
        }
    }

    /// The optional file `name` (one of [`OPTIONAL_DIR_FILES`]) when the model has it.
    pub fn extra(&self, name: &str) -> Option<&Path> {
        match self {
            ModelFiles::Gguf { .. } => None,
            ModelFiles::Safetensors { extras, .. } => extras
                .iter()
                .find(|p| p.file_name().and_then(|n| n.to_str()) == Some(name))
                .map(PathBuf::as_path),
        }
    }

    /// The GGUF file, or the directory of a safetensors model.
    pub fn path(&self) -> &Path {
        match self {
            ModelFiles::Gguf { file, .. } => file,
            ModelFiles::Safetensors { dir, .. } => dir,
        }
    }
}

/// The weight files of a directory and the names of those missing: the shards its index names,
/// or every `*.safetensors` file when there is no index (`*.safetensors` missing when none).
fn weights_in(dir: &Path, listing: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<String>), StoreError> {
    let index = dir.join(SHARD_INDEX);
    if index.is_file() {
        let (present, missing): (Vec<String>, Vec<String>) = shard_names(&index)?
            .into_iter()
            .partition(|n| dir.join(n).is_file());
        return Ok((present.iter().map(|n| dir.join(n)).collect(), missing));
    }
    let mut w: Vec<PathBuf> = listing
        .iter()
        .filter(|f| f.extension().and_then(|e| e.to_str()) == Some("safetensors"))
        .cloned()
        .collect();
    w.sort();
    let missing = if w.is_empty() {
        vec!["*.safetensors".to_string()]
    } else {
        Vec::new()
    };
    Ok((w, missing))
}

/// The shard file names a `model.safetensors.index.json` names, sorted, each once.
pub fn shard_names(index: &Path) -> Result<Vec<String>, StoreError> {
    let text = std::fs::read_to_string(index).map_err(|e| StoreError::corrupt(index, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| StoreError::corrupt(index, e))?;
    let mut names: Vec<String> = v["weight_map"]
        .as_object()
        .ok_or_else(|| StoreError::corrupt(index, "no `weight_map` object"))?
        .values()
        .filter_map(|x| x.as_str().map(String::from))
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(StoreError::corrupt(index, "the index names no weight file"));
    }
    Ok(names)
}

/// Bytes of weights at `path`: the file, or the `*.safetensors` files of a directory (0 when
/// there is nothing). Follows HF cache symlinks to their blobs.
pub fn model_size(path: &Path) -> u64 {
    if path.is_file() {
        return file_size(path);
    }
    std::fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("safetensors"))
                .map(|e| file_size(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_wrong_files_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let e = ModelFiles::from_path(&dir.path().join("nope.gguf"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("model not found"), "{e}");
        let e = ModelFiles::from_path(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("missing config.json, tokenizer.json, *.safetensors"),
            "{e}"
        );
        let txt = dir.path().join("m.bin");
        std::fs::write(&txt, b"hello").unwrap();
        let e = ModelFiles::from_path(&txt).unwrap_err().to_string();
        assert!(e.contains("must be .gguf"), "{e}");
    }

    #[test]
    fn gguf_finds_its_tokenizer_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m.gguf");
        std::fs::write(&m, b"1234").unwrap();
        let f = ModelFiles::from_path(&m).unwrap();
        assert_eq!(
            f,
            ModelFiles::Gguf {
                file: m.clone(),
                tokenizer: None
            }
        );
        assert_eq!(f.total_bytes(), 4);
        std::fs::write(dir.path().join("tokenizer.json"), b"{}").unwrap();
        let ModelFiles::Gguf { tokenizer, .. } = ModelFiles::from_path(&m).unwrap() else {
            panic!()
        };
        assert_eq!(tokenizer, Some(dir.path().join("tokenizer.json")));
    }

    #[test]
    fn sharded_directory_needs_every_shard_of_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for n in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::write(d.join(n), b"{}").unwrap();
        }
        std::fs::write(
            d.join(SHARD_INDEX),
            r#"{"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors", "c": "m-1.safetensors"}}"#,
        )
        .unwrap();
        std::fs::write(d.join("m-1.safetensors"), b"12").unwrap();
        let e = ModelFiles::from_dir(d).unwrap_err().to_string();
        assert!(e.ends_with("missing m-2.safetensors"), "{e}");
        std::fs::write(d.join("m-2.safetensors"), b"345").unwrap();
        let f = ModelFiles::from_dir(d).unwrap();
        assert_eq!(f.total_bytes(), 5);
        assert_eq!(
            f.extra("tokenizer_config.json"),
            Some(d.join("tokenizer_config.json").as_path())
        );
        assert_eq!(f.extra("chat_template.jinja"), None);
        assert_eq!(model_size(d), 5);
    }
}
