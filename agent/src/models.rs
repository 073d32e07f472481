//! The model store: which models a node can serve, and the rule that spawn requests may only name
//! files inside it.
use std::path::{Path, PathBuf};

use rbee_proto::session::ModelEntry;
use rbee_proto::{ErrorCode, ProtoError};

/// Resolve `path` and refuse it unless it lies inside one of `dirs`.
pub fn check_allowed(path: &Path, dirs: &[PathBuf]) -> Result<PathBuf, ProtoError> {
    let real = path.canonicalize().map_err(|e| {
        ProtoError::new(
            ErrorCode::NotFound,
            format!("model `{}` not found: {e}", path.display()),
        )
    })?;
    let inside = dirs
        .iter()
        .filter_map(|d| d.canonicalize().ok())
        .any(|d| real.starts_with(&d));
    if !inside {
        let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(ProtoError::new(
            ErrorCode::BadRequest,
            format!(
                "model `{}` is outside the model store ({})",
                path.display(),
                list.join(", ")
            ),
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
                .filter_map(|e| std::fs::metadata(e.path()).ok().map(|m| m.len())) // follows cache symlinks
                .sum()
        })
        .unwrap_or(0)
}

/// Every `*.gguf` file and safetensors directory directly inside the model dirs.
pub fn list(dirs: &[PathBuf]) -> Vec<ModelEntry> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
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

/// Models complete in a Hugging Face cache (`HF_HOME`/hub layout) at the revision `main` points
/// to: each `*.gguf` file as `hf:ORG/REPO:FILE`, a llama safetensors snapshot as `hf:ORG/REPO`.
pub fn list_hf_cache(hub_dir: &Path) -> Vec<ModelEntry> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(hub_dir) else {
        return out;
    };
    let mut repos: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    repos.sort();
    for dir in repos {
        let Some(repo) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("models--"))
            .map(|n| n.replacen("--", "/", 1))
        else {
            continue;
        };
        let Ok(commit) = std::fs::read_to_string(dir.join("refs/main")) else {
            continue;
        };
        let snap = dir.join("snapshots").join(commit.trim());
        let Ok(files) = std::fs::read_dir(&snap) else {
            continue;
        };
        let mut files: Vec<PathBuf> = files.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in &files {
            let Some(name) = f.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".gguf") && f.is_file() {
                out.push(ModelEntry {
                    name: name.trim_end_matches(".gguf").to_string(),
                    reference: format!("hf:{repo}:{name}"),
                    size_bytes: model_size(f),
                    format: "gguf".into(),
                });
            }
        }
        let weights = model_size(&snap);
        if snap.join("config.json").is_file()
            && snap.join("tokenizer.json").is_file()
            && weights > 0
        {
            out.push(ModelEntry {
                name: repo.rsplit('/').next().unwrap_or(&repo).to_string(),
                reference: format!("hf:{repo}"),
                size_bytes: weights,
                format: "safetensors".into(),
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
        let sneaky = store
            .path()
            .join("../")
            .join(other.path().file_name().unwrap())
            .join("b.gguf");
        assert!(check_allowed(&sneaky, &dirs).is_err());
        assert_eq!(
            check_allowed(&store.path().join("zz.gguf"), &dirs)
                .unwrap_err()
                .code,
            ErrorCode::NotFound
        );
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
        assert_eq!(
            (l[0].name.as_str(), l[0].format.as_str(), l[0].size_bytes),
            ("llama", "safetensors", 3)
        );
        assert_eq!(
            (l[1].name.as_str(), l[1].format.as_str(), l[1].size_bytes),
            ("m", "gguf", 4)
        );
    }

    #[test]
    fn lists_complete_models_of_an_hf_cache() {
        let hub = tempfile::tempdir().unwrap();
        let repo = hub.path().join("models--org--tiny");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        let snap = repo.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("m.Q8_0.gguf"), b"12345").unwrap();
        // Another snapshot than `main` points to is not listed.
        std::fs::create_dir_all(repo.join("snapshots/old")).unwrap();
        std::fs::write(repo.join("snapshots/old/stale.gguf"), b"1").unwrap();
        let l = list_hf_cache(hub.path());
        assert_eq!(l.len(), 1, "{l:?}");
        assert_eq!(
            (l[0].reference.as_str(), l[0].size_bytes),
            ("hf:org/tiny:m.Q8_0.gguf", 5)
        );
        assert!(list_hf_cache(&hub.path().join("missing")).is_empty());
    }
}
