//! The model store: which models a node can serve, and the rule that spawn requests may only name
//! files inside it.
use std::path::{Path, PathBuf};

use rbee_proto::session::ModelEntry;
use rbee_proto::{ErrorCode, ProtoError};

/// Resolve `path` and refuse it unless it lies inside one of `dirs`.
pub fn check_allowed(path: &Path, dirs: &[PathBuf]) -> Result<PathBuf, ProtoError> {
    let real = path.canonicalize().map_err(|e| {
        ProtoError::new(ErrorCode::NotFound, format!("model `{}` not found: {e}", path.display()))
    })?;
    let inside = dirs.iter().filter_map(|d| d.canonicalize().ok()).any(|d| real.starts_with(&d));
    if !inside {
        let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(ProtoError::new(
            ErrorCode::BadRequest,
            format!("model `{}` is outside the model store ({})", path.display(), list.join(", ")),
        ));
    }
    Ok(real)
}

/// Bytes of weights: the file, or the safetensors files of a directory.
pub fn model_size(path: &Path) -> u64 {
    if path.is_file() {
        return std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    }
    std::fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("safetensors"))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .sum()
        })
        .unwrap_or(0)
}

/// Every `*.gguf` file and safetensors directory directly inside the model dirs.
pub fn list(dirs: &[PathBuf]) -> Vec<ModelEntry> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else { continue };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let format = if p.is_file() && p.extension().and_then(|e| e.to_str()) == Some("gguf") {
                "gguf"
            } else if p.is_dir() && p.join("config.json").is_file() {
                "safetensors"
            } else {
                continue;
            };
            let name = name.strip_suffix(".gguf").unwrap_or(&name).to_string();
            out.push(ModelEntry {
                name,
                reference: p.display().to_string(),
                size_bytes: model_size(&p),
                format: format.into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_store_are_refused() {
        let store = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(store.path().join("a.gguf"), b"x").unwrap();
        std::fs::write(other.path().join("b.gguf"), b"x").unwrap();
        let dirs = vec![store.path().to_path_buf()];
        assert!(check_allowed(&store.path().join("a.gguf"), &dirs).is_ok());
        let e = check_allowed(&other.path().join("b.gguf"), &dirs).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("outside the model store"));
        let sneaky = store.path().join("../").join(other.path().file_name().unwrap()).join("b.gguf");
        assert!(check_allowed(&sneaky, &dirs).is_err());
        assert_eq!(check_allowed(&store.path().join("zz.gguf"), &dirs).unwrap_err().code, ErrorCode::NotFound);
    }

    #[test]
    fn lists_gguf_and_safetensors_dirs() {
        let store = tempfile::tempdir().unwrap();
        std::fs::write(store.path().join("m.gguf"), b"1234").unwrap();
        std::fs::write(store.path().join("notes.txt"), b"x").unwrap();
        let d = store.path().join("llama");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("config.json"), b"{}").unwrap();
        std::fs::write(d.join("model.safetensors"), b"123").unwrap();
        let l = list(&[store.path().into()]);
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].name.as_str(), l[0].format.as_str(), l[0].size_bytes), ("llama", "safetensors", 3));
        assert_eq!((l[1].name.as_str(), l[1].format.as_str(), l[1].size_bytes), ("m", "gguf", 4));
    }
}
