//! The pull plan: which files of an `hf:` model to download, how many bytes that is, whether
//! they fit on the disk, and the download itself into the Hugging Face cache.
use std::path::{Path, PathBuf};

use hf_hub::api::sync::Api;
use hf_hub::{Cache, Repo};

use crate::files::{
    ModelFiles, OPTIONAL_DIR_FILES, REQUIRED_DIR_FILES, SHARD_INDEX, TOKENIZER_JSON,
};
use crate::reference::HubRef;
use crate::{hub, StoreError};

/// One file of the model and what it takes to have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    /// Name inside the repository.
    pub name: String,
    /// Bytes, as the hub reports them.
    pub size: u64,
    /// Where the cache already holds it.
    pub cached: Option<PathBuf>,
}

/// Progress of a download: the file being fetched and the bytes of the whole pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullProgress {
    /// The file being downloaded; empty once all are done.
    pub file: String,
    /// Bytes downloaded so far, over every file of the pull.
    pub downloaded_bytes: u64,
    /// Bytes the pull downloads in all (files already cached not counted).
    pub total_bytes: u64,
}

/// What pulling one `hf:` model takes. Built by asking the hub for the repository's files.
pub struct PullPlan {
    model: String,
    hub: HubRef,
    cache: Cache,
    api: Api,
    repo: Repo,
    /// The files the model needs, in download order (the GGUF file or config first).
    pub files: Vec<PlannedFile>,
}

impl PullPlan {
    /// Ask the hub which files `model` (an `hf:` reference) needs and which the cache lacks.
    pub fn new(model: &str) -> Result<Self, StoreError> {
        let hub = match HubRef::parse(model) {
            Some(Ok(h)) => h,
            Some(Err(why)) => return Err(StoreError::BadReference(why)),
            None => {
                return Err(StoreError::BadReference(format!(
                    "`{model}` is not an hf:ORG/REPO[@REVISION][:FILE] reference"
                )))
            }
        };
        if let Some(f) = &hub.file {
            if !f.ends_with(".gguf") {
                return Err(StoreError::BadRequest(format!(
                    "{model}: FILE must be a .gguf file"
                )));
            }
        }
        let cache = hub::cache();
        let api = hub::api(&cache)?;
        let repo = hub::repo(&hub);
        let siblings = siblings(&api, &repo, &hub, model)?;
        let names = needed_files(&siblings, &hub, model)?;
        let cache_repo = cache.repo(repo.clone());
        let files = names
            .into_iter()
            .map(|name| PlannedFile {
                size: siblings
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(0, |(_, s)| *s),
                cached: cache_repo.get(&name),
                name,
            })
            .collect();
        Ok(Self {
            model: model.to_string(),
            hub,
            cache,
            api,
            repo,
            files,
        })
    }

    /// Bytes still to download.
    pub fn missing_bytes(&self) -> u64 {
        self.files
            .iter()
            .filter(|f| f.cached.is_none())
            .map(|f| f.size)
            .sum()
    }

    /// The cache's hub directory the files land in.
    pub fn cache_dir(&self) -> &Path {
        self.cache.path()
    }

    /// Refuse a pull that would not fit on the cache's filesystem, before the first byte.
    pub fn check_disk(&self) -> Result<(), StoreError> {
        let needed = self.missing_bytes();
        if needed == 0 {
            return Ok(());
        }
        let free = free_bytes(self.cache_dir());
        if needed > free {
            return Err(StoreError::InsufficientDisk {
                model: self.model.clone(),
                needed,
                free,
                dir: self.cache_dir().to_path_buf(),
            });
        }
        Ok(())
    }

    /// Download the missing files, reporting progress; returns the model's files in the cache.
    /// Blocking.
    pub fn fetch(&self, progress: &mut dyn FnMut(PullProgress)) -> Result<ModelFiles, StoreError> {
        let mut reporter = Reporter {
            progress,
            file: String::new(),
            done_before: 0,
            current: 0,
            total: self.missing_bytes(),
        };
        let mut paths = Vec::new();
        for f in &self.files {
            if let Some(p) = &f.cached {
                paths.push(p.clone());
                continue;
            }
            reporter.file = f.name.clone();
            reporter.current = 0;
            let path = self
                .api
                .repo(self.repo.clone())
                .download_with_progress(&f.name, &mut reporter)
                .map_err(|e| {
                    StoreError::Download(format!(
                        "{}: downloading `{}` failed: {e}",
                        self.model, f.name
                    ))
                })?;
            reporter.done_before += f.size;
            paths.push(path);
        }
        reporter.file.clear();
        reporter.current = 0;
        reporter.report();
        match &self.hub.file {
            Some(_) => Ok(ModelFiles::Gguf {
                file: paths[0].clone(),
                tokenizer: paths.get(1).cloned(),
            }),
            None => ModelFiles::from_dir(paths[0].parent().unwrap_or(Path::new("."))),
        }
    }
}

/// The repository's files with their sizes, from the hub's info with blobs.
fn siblings(
    api: &Api,
    repo: &Repo,
    hub: &HubRef,
    model: &str,
) -> Result<Vec<(String, u64)>, StoreError> {
    let info: serde_json::Value = api
        .repo(repo.clone())
        .info_request()
        .query("blobs", "true")
        .call()
        .map_err(|e| {
            StoreError::Missing(format!(
                "{model}: the hub did not answer for {}: {e}",
                hub.repo
            ))
        })?
        .into_json()
        .map_err(|e| StoreError::HubClient(format!("{model}: unreadable repository info: {e}")))?;
    Ok(info["siblings"]
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
        .unwrap_or_default())
}

/// Which of a repository's files the model needs: the GGUF file (and a `tokenizer.json` when
/// the repository has one), or the config, tokenizer, weights and optional extras of a
/// safetensors model.
pub fn needed_files(
    siblings: &[(String, u64)],
    hub: &HubRef,
    model: &str,
) -> Result<Vec<String>, StoreError> {
    let has = |n: &str| siblings.iter().any(|(s, _)| s == n);
    if let Some(f) = &hub.file {
        if !has(f) {
            return Err(StoreError::Missing(format!(
                "{model}: {} has no file `{f}`",
                hub.repo
            )));
        }
        let mut v = vec![f.clone()];
        if has(TOKENIZER_JSON) {
            v.push(TOKENIZER_JSON.into());
        }
        return Ok(v);
    }
    let mut v: Vec<String> = REQUIRED_DIR_FILES.iter().map(|s| s.to_string()).collect();
    if let Some(missing) = v.iter().find(|n| !has(n)) {
        return Err(StoreError::Missing(format!(
            "{model}: {} has no `{missing}`; is it a safetensors model of a supported family?",
            hub.repo
        )));
    }
    let mut weights: Vec<String> = siblings
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| n.ends_with(".safetensors") || n == SHARD_INDEX)
        .filter(|n| !n.contains('/'))
        .collect();
    if !weights.iter().any(|n| n.ends_with(".safetensors")) {
        return Err(StoreError::Missing(format!(
            "{model}: {} has no *.safetensors weights",
            hub.repo
        )));
    }
    weights.sort();
    v.extend(weights);
    v.extend(
        OPTIONAL_DIR_FILES
            .iter()
            .filter(|n| has(n))
            .map(|s| s.to_string()),
    );
    Ok(v)
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

/// Turns hf-hub's per-file progress into [`PullProgress`] over the whole pull.
struct Reporter<'a> {
    progress: &'a mut dyn FnMut(PullProgress),
    file: String,
    /// Bytes of files already finished.
    done_before: u64,
    /// Bytes of the current file.
    current: u64,
    total: u64,
}

impl Reporter<'_> {
    fn report(&mut self) {
        (self.progress)(PullProgress {
            file: self.file.clone(),
            downloaded_bytes: (self.done_before + self.current).min(self.total),
            total_bytes: self.total,
        });
    }
}

impl hf_hub::api::Progress for &mut Reporter<'_> {
    fn init(&mut self, _size: usize, _filename: &str) {
        self.current = 0;
        self.report();
    }
    fn update(&mut self, size: usize) {
        self.current += size as u64;
        self.report();
    }
    fn finish(&mut self) {
        self.report();
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
        for bad in ["hf:", "hf:a", "hf:a/b@", "/models/x.gguf", "hf:a/b:x.bin"] {
            let e = PullPlan::new(bad).err().unwrap();
            assert_eq!(e.code(), rbee_proto::ErrorCode::BadRequest, "{bad}: {e}");
        }
    }

    #[test]
    fn needed_files_of_gguf_and_safetensors_repos() {
        let sib = |names: &[&str]| -> Vec<(String, u64)> {
            names.iter().map(|n| (n.to_string(), 1)).collect()
        };
        let gguf = HubRef::parse("hf:o/r:m.gguf").unwrap().unwrap();
        assert_eq!(
            needed_files(&sib(&["m.gguf", "tokenizer.json", "x.gguf"]), &gguf, "m").unwrap(),
            ["m.gguf", "tokenizer.json"]
        );
        let e = needed_files(&sib(&["x.gguf"]), &gguf, "hf:o/r:m.gguf").unwrap_err();
        assert_eq!(e.to_string(), "hf:o/r:m.gguf: o/r has no file `m.gguf`");
        let st = HubRef::parse("hf:o/r").unwrap().unwrap();
        let repo = sib(&[
            "README.md",
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "model-2.safetensors",
            "model-1.safetensors",
            SHARD_INDEX,
            "onnx/model.safetensors",
        ]);
        assert_eq!(
            needed_files(&repo, &st, "m").unwrap(),
            [
                "config.json",
                "tokenizer.json",
                "model-1.safetensors",
                "model-2.safetensors",
                SHARD_INDEX,
                "tokenizer_config.json"
            ]
        );
        let e = needed_files(&sib(&["config.json", "model.safetensors"]), &st, "m").unwrap_err();
        assert!(e.to_string().contains("no `tokenizer.json`"), "{e}");
    }
}
