//! Pulling `hf:` models into the node's Hugging Face cache (the same cache `rbee-worker` and every
//! other HF tool reads), with progress events and a disk-space check before the first byte.
//!
//! The endpoint, cache location and token come from the usual variables (`HF_ENDPOINT`,
//! `HF_HOME`, the cached token), exactly as hf-hub reads them.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hf_hub::api::sync::{Api, ApiBuilder};
use hf_hub::{Cache, Repo, RepoType};
use rbee_proto::session::Event;
use rbee_proto::types::HubRef;
use rbee_proto::{ErrorCode, ProtoError};
use tokio::sync::broadcast;

use crate::supervisor::human_bytes;

/// How often progress events go out while bytes arrive.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// What a finished pull reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Pulled {
    /// The GGUF file, or the snapshot directory of a safetensors model.
    pub path: PathBuf,
    pub downloaded_bytes: u64,
}

/// One file of the model and what it takes to have it.
#[derive(Debug)]
struct Wanted {
    name: String,
    size: u64,
    cached: Option<PathBuf>,
}

fn err(code: ErrorCode, message: impl Into<String>) -> ProtoError {
    ProtoError::new(code, message)
}

/// Download what `model` needs that the cache lacks. Blocking: run it on a blocking thread.
pub fn pull(model: &str, events: &broadcast::Sender<Event>) -> Result<Pulled, ProtoError> {
    let hub = match HubRef::parse(model) {
        Some(Ok(h)) => h,
        Some(Err(why)) => return Err(err(ErrorCode::BadRequest, why)),
        None => {
            return Err(err(
                ErrorCode::BadRequest,
                format!("`{model}` is not an hf:ORG/REPO[@REVISION][:FILE] reference"),
            ))
        }
    };
    let cache = Cache::from_env();
    let mut builder = ApiBuilder::from_cache(cache.clone()).with_progress(false);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder
        .build()
        .map_err(|e| err(ErrorCode::Internal, format!("hub client: {e}")))?;
    let repo = Repo::with_revision(
        hub.repo.clone(),
        RepoType::Model,
        hub.revision().to_string(),
    );
    let wanted = plan(&api, &cache, &repo, &hub, model)?;

    let missing: u64 = wanted
        .iter()
        .filter(|w| w.cached.is_none())
        .map(|w| w.size)
        .sum();
    let cache_dir = cache.path().clone();
    if missing > 0 {
        let free = free_bytes(&cache_dir);
        if missing > free {
            return Err(err(
                ErrorCode::InsufficientDisk,
                format!(
                    "{model} needs {} to download but only {} is free in {}",
                    human_bytes(missing),
                    human_bytes(free),
                    cache_dir.display()
                ),
            ));
        }
    }

    let mut progress = Reporter {
        model: model.to_string(),
        file: String::new(),
        events: events.clone(),
        done_before: 0,
        current: 0,
        total: missing,
        last_sent: None,
    };
    let mut paths = Vec::new();
    for w in &wanted {
        if let Some(p) = &w.cached {
            paths.push(p.clone());
            continue;
        }
        progress.file = w.name.clone();
        progress.current = 0;
        let path = api
            .repo(repo.clone())
            .download_with_progress(&w.name, &mut progress)
            .map_err(|e| {
                err(
                    ErrorCode::ModelLoad,
                    format!("{model}: downloading `{}` failed: {e}", w.name),
                )
            })?;
        progress.done_before += w.size;
        paths.push(path);
    }
    progress.file = String::new();
    progress.current = 0;
    progress.send(true);
    let path = match &hub.file {
        Some(_) => paths[0].clone(),
        None => paths[0].parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    Ok(Pulled {
        path,
        downloaded_bytes: missing,
    })
}

/// The files the model needs, their sizes from the hub, and which the cache already has.
fn plan(
    api: &Api,
    cache: &Cache,
    repo: &Repo,
    hub: &HubRef,
    model: &str,
) -> Result<Vec<Wanted>, ProtoError> {
    let info: serde_json::Value = api
        .repo(repo.clone())
        .info_request()
        .query("blobs", "true")
        .call()
        .map_err(|e| {
            err(
                ErrorCode::NotFound,
                format!("{model}: the hub did not answer for {}: {e}", hub.repo),
            )
        })?
        .into_json()
        .map_err(|e| {
            err(
                ErrorCode::Internal,
                format!("{model}: unreadable repository info: {e}"),
            )
        })?;
    let siblings: Vec<(String, u64)> = info["siblings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    let name = s["rfilename"].as_str()?.to_string();
                    let size = s["size"]
                        .as_u64()
                        .or_else(|| s["lfs"]["size"].as_u64())
                        .unwrap_or(0);
                    Some((name, size))
                })
                .collect()
        })
        .unwrap_or_default();
    let has = |n: &str| siblings.iter().any(|(s, _)| s == n);
    let names: Vec<String> = match &hub.file {
        Some(f) => {
            if !f.ends_with(".gguf") {
                return Err(err(
                    ErrorCode::BadRequest,
                    format!("{model}: FILE must be a .gguf file"),
                ));
            }
            if !has(f) {
                return Err(err(
                    ErrorCode::NotFound,
                    format!("{model}: {} has no file `{f}`", hub.repo),
                ));
            }
            let mut v = vec![f.clone()];
            if has("tokenizer.json") {
                v.push("tokenizer.json".into());
            }
            v
        }
        None => {
            let mut v: Vec<String> = ["config.json", "tokenizer.json"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            if let Some(missing) = v.iter().find(|n| !has(n)) {
                return Err(err(
                    ErrorCode::NotFound,
                    format!(
                        "{model}: {} has no `{missing}`; is it a llama-family model?",
                        hub.repo
                    ),
                ));
            }
            let mut weights: Vec<String> = siblings
                .iter()
                .map(|(n, _)| n.clone())
                .filter(|n| n.ends_with(".safetensors") || n == "model.safetensors.index.json")
                .filter(|n| !n.contains('/'))
                .collect();
            if !weights.iter().any(|n| n.ends_with(".safetensors")) {
                return Err(err(
                    ErrorCode::NotFound,
                    format!("{model}: {} has no *.safetensors weights", hub.repo),
                ));
            }
            weights.sort();
            v.extend(weights);
            v
        }
    };
    let cache_repo = cache.repo(repo.clone());
    Ok(names
        .into_iter()
        .map(|name| {
            let size = siblings
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| *s)
                .unwrap_or(0);
            let cached = cache_repo.get(&name);
            Wanted { name, size, cached }
        })
        .collect())
}

/// Bytes of weights of an `hf:` model that is already complete in the cache; `None` when it is
/// not (the worker then resolves it itself, and admission cannot know its size yet).
pub fn cached_size(model: &str) -> Option<u64> {
    let hub = HubRef::parse(model)?.ok()?;
    let cache = Cache::from_env();
    let repo = cache.repo(Repo::with_revision(
        hub.repo.clone(),
        RepoType::Model,
        hub.revision().to_string(),
    ));
    match &hub.file {
        Some(f) => repo
            .get(f)
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len()),
        None => {
            let config = repo.get("config.json")?;
            Some(crate::models::model_size(config.parent()?)).filter(|s| *s > 0)
        }
    }
}

/// Free bytes on the filesystem that holds `dir` (or its nearest existing ancestor).
pub fn free_bytes(dir: &Path) -> u64 {
    let mut p = dir.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return 0;
        }
    }
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a valid C string.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return 0;
        }
        s.f_bavail as u64 * s.f_frsize as u64
    }
}

/// Turns hf-hub's per-file progress into `PullProgress` events over the whole pull.
struct Reporter {
    model: String,
    file: String,
    events: broadcast::Sender<Event>,
    /// Bytes of files already finished.
    done_before: u64,
    /// Bytes of the current file.
    current: u64,
    total: u64,
    last_sent: Option<Instant>,
}

impl Reporter {
    fn send(&mut self, force: bool) {
        if !force && self.last_sent.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.last_sent = Some(Instant::now());
        let _ = self.events.send(Event::PullProgress {
            model: self.model.clone(),
            file: self.file.clone(),
            downloaded_bytes: (self.done_before + self.current).min(self.total),
            total_bytes: self.total,
        });
    }
}

impl hf_hub::api::Progress for &mut Reporter {
    fn init(&mut self, _size: usize, _filename: &str) {
        self.current = 0;
        self.send(true);
    }
    fn update(&mut self, size: usize) {
        self.current += size as u64;
        self.send(false);
    }
    fn finish(&mut self) {
        self.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_bytes_walks_up_to_an_existing_directory() {
        let d = tempfile::tempdir().unwrap();
        let free = free_bytes(d.path());
        assert!(free > 0);
        let deep = d.path().join("a/b/c");
        // Same filesystem: within a few MiB of each other even while something writes.
        assert!(free_bytes(&deep).abs_diff(free) < 64 << 20);
    }

    #[test]
    fn malformed_references_are_refused_before_any_network() {
        let (tx, _rx) = broadcast::channel(4);
        for bad in ["hf:", "hf:a", "hf:a/b@", "/models/x.gguf"] {
            let e = pull(bad, &tx).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad}: {e}");
        }
    }
}
