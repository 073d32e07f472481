//! The Hugging Face cache (`HF_HOME`/hub layout), shared with every other HF tool: resolving
//! `hf:` references, their sizes, and listing what is complete in it.
//!
//! Endpoint, cache location, token and offline mode come from the usual variables
//! (`HF_ENDPOINT`, `HF_HOME`, the cached token, `HF_HUB_OFFLINE`), as hf-hub reads them.
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};
use rbee_proto::session::ModelEntry;

use crate::files::{model_size, ModelFiles, REQUIRED_DIR_FILES, TOKENIZER_JSON};
use crate::reference::HubRef;
use crate::{PullPlan, StoreError};

/// The cache the environment names (`HF_HOME`, else `~/.cache/huggingface`).
pub fn cache() -> Cache {
    Cache::from_env()
}

/// The hub directory of the environment's cache (`…/hub`), where `models--ORG--REPO` live.
pub fn hub_dir() -> PathBuf {
    cache().path().clone()
}

/// Whether `HF_HUB_OFFLINE` forbids downloads.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false)
}

/// A hub client on `cache`, honouring `HF_ENDPOINT`.
pub fn api(cache: &Cache) -> Result<Api, StoreError> {
    let mut b = ApiBuilder::from_cache(cache.clone()).with_progress(false);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        b = b.with_endpoint(endpoint);
    }
    b.build()
        .map_err(|e| StoreError::HubClient(format!("hub client: {e}")))
}

/// hf-hub's handle on the repository at the revision asked for.
pub fn repo(hub: &HubRef) -> Repo {
    Repo::with_revision(
        hub.repo.clone(),
        RepoType::Model,
        hub.revision().to_string(),
    )
}

/// The model's files when they are complete in `cache`, without any network.
pub fn cached(cache: &Cache, hub: &HubRef) -> Option<ModelFiles> {
    let cr = cache.repo(repo(hub));
    match &hub.file {
        Some(f) => Some(ModelFiles::Gguf {
            file: cr.get(f).filter(|p| p.is_file())?,
            tokenizer: cr.get(TOKENIZER_JSON),
        }),
        None => {
            let config = cr.get(REQUIRED_DIR_FILES[0])?;
            ModelFiles::from_dir(config.parent()?).ok()
        }
    }
}

/// Bytes of weights of an `hf:` model complete in the environment's cache; `None` when it is
/// not (a worker then resolves it itself, and admission cannot know its size yet).
pub fn cached_size(model: &str) -> Option<u64> {
    let hub = HubRef::parse(model)?.ok()?;
    cached(&cache(), &hub)
        .map(|f| f.total_bytes())
        .filter(|s| *s > 0)
}

/// Resolve an `hf:` reference to files: from the cache, else downloaded (unless offline).
pub fn resolve(hub: &HubRef) -> Result<ModelFiles, StoreError> {
    let cache = cache();
    if let Some(files) = cached(&cache, hub) {
        return Ok(files);
    }
    let model = crate::ModelRef::Hub(hub.clone()).to_string();
    if offline() {
        return Err(StoreError::NotFound(format!(
            "{model} is not complete in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids \
             downloading it; cache: {}",
            cache.path().join(repo(hub).folder_name()).display()
        )));
    }
    let plan = PullPlan::new(&model)?;
    plan.check_disk()?;
    plan.fetch(&mut |_| {})
}

/// Models complete in a Hugging Face cache's hub directory at the revision `main` points to:
/// each `*.gguf` file as `hf:ORG/REPO:FILE`, a safetensors snapshot as `hf:ORG/REPO`.
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
        list_snapshot(&repo, &snap, &mut out);
    }
    out
}

fn list_snapshot(repo: &str, snap: &Path, out: &mut Vec<ModelEntry>) {
    let Ok(files) = std::fs::read_dir(snap) else {
        return;
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
    if let Ok(files) = ModelFiles::from_dir(snap) {
        out.push(ModelEntry {
            name: repo.rsplit('/').next().unwrap_or(repo).to_string(),
            reference: format!("hf:{repo}"),
            size_bytes: files.total_bytes(),
            format: "safetensors".into(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache holding `files` in the snapshot `main` points to.
    fn cache_with(files: &[(&str, &[u8])]) -> (tempfile::TempDir, PathBuf) {
        let hub = tempfile::tempdir().unwrap();
        let repo = hub.path().join("models--org--tiny");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123").unwrap();
        let snap = repo.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        for (n, b) in files {
            std::fs::write(snap.join(n), b).unwrap();
        }
        (hub, snap)
    }

    #[test]
    fn lists_complete_models_of_an_hf_cache() {
        let (hub, _) = cache_with(&[("m.Q8_0.gguf", b"12345")]);
        let repo = hub.path().join("models--org--tiny");
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

    #[test]
    fn safetensors_snapshot_is_listed_only_when_complete() {
        let (hub, snap) = cache_with(&[("config.json", b"{}"), ("model.safetensors", b"123")]);
        assert!(
            list_hf_cache(hub.path()).is_empty(),
            "no tokenizer.json yet"
        );
        std::fs::write(snap.join("tokenizer.json"), b"{}").unwrap();
        let l = list_hf_cache(hub.path());
        assert_eq!(
            (l[0].name.as_str(), l[0].reference.as_str(), l[0].size_bytes),
            ("tiny", "hf:org/tiny", 3)
        );
        let cache = Cache::new(hub.path().into());
        let hub_ref = HubRef::parse("hf:org/tiny").unwrap().unwrap();
        assert_eq!(cached(&cache, &hub_ref).unwrap().total_bytes(), 3);
    }

    #[test]
    fn offline_cached_file_resolves() {
        let (hub, snap) = cache_with(&[("m.gguf", b"x")]);
        let cache = Cache::new(hub.path().into());
        let hub_ref = HubRef::parse("hf:org/tiny:m.gguf").unwrap().unwrap();
        assert_eq!(
            cached(&cache, &hub_ref),
            Some(ModelFiles::Gguf {
                file: snap.join("m.gguf"),
                tokenizer: None
            })
        );
        let other = HubRef::parse("hf:org/tiny:n.gguf").unwrap().unwrap();
        assert_eq!(cached(&cache, &other), None);
    }

    #[test]
    fn offline_missing_repo_names_repo_and_cache() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("HF_HOME", dir.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
        let hub_ref = HubRef::parse("hf:nobody/nothing").unwrap().unwrap();
        let e = resolve(&hub_ref).unwrap_err();
        assert_eq!(e.code(), rbee_proto::ErrorCode::NotFound);
        let e = e.to_string();
        assert!(e.contains("hf:nobody/nothing"), "{e}");
        assert!(e.contains("models--nobody--nothing"), "{e}");
    }
}
