//! The node's model store: its model directories plus the Hugging Face cache. Listing, the rule
//! that spawn requests may only name files inside the store, and name resolution: every form
//! `models list` prints (NAME, file name, REF) names the same model.
use std::path::{Path, PathBuf};

use rbee_proto::session::ModelEntry;

use crate::files::model_size;
use crate::reference::HubRef;
use crate::{hub, StoreError};

/// Where a node keeps models.
#[derive(Debug, Clone)]
pub struct Store {
    /// Directories whose `*.gguf` files and safetensors directories are served.
    pub dirs: Vec<PathBuf>,
    /// The Hugging Face cache's hub directory (`models--ORG--REPO` inside).
    pub hub_dir: PathBuf,
}

/// A model the store resolved a name to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// What the worker is started with: a canonical path inside the store, or an `hf:` ref.
    pub reference: String,
    /// Bytes of weights, 0 when unknown (an `hf:` model not yet in the cache).
    pub size_bytes: u64,
}

impl Store {
    /// The store of `dirs` and the environment's Hugging Face cache.
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        Self {
            dirs,
            hub_dir: hub::hub_dir(),
        }
    }

    /// Every model of the store: the model directories first, then the HF cache.
    pub fn list(&self) -> Vec<ModelEntry> {
        let mut out = list_dirs(&self.dirs);
        out.extend(hub::list_hf_cache(&self.hub_dir));
        out
    }

    /// Resolve what a person typed (a NAME, file name or REF that `models list` prints, an
    /// `hf:` reference, or a path inside the store) to the model to start.
    pub fn find(&self, model: &str) -> Result<Found, StoreError> {
        if let Some(hub) = HubRef::parse(model) {
            hub.map_err(StoreError::BadReference)?;
            return Ok(Found {
                reference: model.to_string(),
                size_bytes: hub::cached_size(model).unwrap_or(0),
            });
        }
        // A bare name (no separator) is looked up in the listing first; a path never is.
        if !model.contains('/') {
            let mut hits: Vec<ModelEntry> = self
                .list()
                .into_iter()
                .filter(|e| answers_to(e, model))
                .collect();
            hits.dedup_by(|a, b| a.reference == b.reference);
            match hits.len() {
                0 => {}
                1 => return self.found_entry(hits.remove(0)),
                _ => {
                    return Err(StoreError::Ambiguous {
                        name: model.to_string(),
                        candidates: hits.into_iter().map(|e| e.reference).collect(),
                    })
                }
            }
        }
        let path = check_allowed(Path::new(model), &self.dirs).map_err(|e| match e {
            // A bare name is a name first: one no model answers to is not found, wherever
            // (and whether) a file of that name exists in the working directory.
            StoreError::OutsideStore { .. } if !model.contains('/') => StoreError::Missing(
                format!("model `{model}` not found: no model of the store answers to that name"),
            ),
            e => e,
        })?;
        Ok(Found {
            size_bytes: model_size(&path),
            reference: path.display().to_string(),
        })
    }

    fn found_entry(&self, e: ModelEntry) -> Result<Found, StoreError> {
        if e.reference.starts_with("hf:") {
            return Ok(Found {
                reference: e.reference,
                size_bytes: e.size_bytes,
            });
        }
        let path = check_allowed(Path::new(&e.reference), &self.dirs)?;
        Ok(Found {
            reference: path.display().to_string(),
            size_bytes: e.size_bytes,
        })
    }
}

/// Whether `name` is one of the forms under which `models list` shows `e`.
fn answers_to(e: &ModelEntry, name: &str) -> bool {
    if e.name == name || e.reference == name {
        return true;
    }
    let file = e
        .reference
        .rsplit(['/', ':'])
        .next()
        .unwrap_or(&e.reference);
    file == name
}

/// Resolve `path` and refuse it unless it lies inside one of `dirs`. Returns the canonical path.
///
/// Whether the path is inside is decided before its existence is looked at, from where it
/// would be (`.` and `..` resolved by name, then the longest existing parent canonicalized), so
/// a path outside the store is refused with the same message whether it exists or not: spawn
/// errors reveal nothing about files outside the store. Only then does a missing model inside
/// the store answer "not found", and a symlink inside the store that leads out is refused.
pub fn check_allowed(path: &Path, dirs: &[PathBuf]) -> Result<PathBuf, StoreError> {
    let outside = || StoreError::OutsideStore {
        model: path.display().to_string(),
        dirs: dirs.iter().map(|d| d.display().to_string()).collect(),
    };
    let roots: Vec<PathBuf> = dirs.iter().filter_map(|d| d.canonicalize().ok()).collect();
    let inside = |p: &Path| roots.iter().any(|d| p.starts_with(d));
    if !inside(&would_be(path)) {
        return Err(outside());
    }
    let real = path
        .canonicalize()
        .map_err(|e| StoreError::Missing(format!("model `{}` not found: {e}", path.display())))?;
    if !inside(&real) {
        return Err(outside());
    }
    Ok(real)
}

/// Where `path` lies, without asking whether it exists: made absolute, `.` and `..` resolved
/// by name, then its longest existing parent replaced by that parent's canonical path.
fn would_be(path: &Path) -> PathBuf {
    use std::path::Component;
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut lexical = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let mut missing = Vec::new();
    let mut base = lexical.as_path();
    loop {
        if let Ok(real) = base.canonicalize() {
            return missing.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                base = parent;
            }
            _ => return lexical,
        }
    }
}

/// Every `*.gguf` file and safetensors directory (one with a `config.json`) directly inside
/// the model dirs.
pub fn list_dirs(dirs: &[PathBuf]) -> Vec<ModelEntry> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_proto::ErrorCode;

    #[test]
    fn paths_outside_the_store_are_refused() {
        let store = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(store.path().join("a.gguf"), b"x").unwrap();
        std::fs::write(other.path().join("b.gguf"), b"x").unwrap();
        let dirs = vec![store.path().to_path_buf()];
        assert!(check_allowed(&store.path().join("a.gguf"), &dirs).is_ok());
        let e = check_allowed(&other.path().join("b.gguf"), &dirs).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest);
        assert!(e.to_string().contains("outside the model store"));
        let sneaky = store
            .path()
            .join("../")
            .join(other.path().file_name().unwrap())
            .join("b.gguf");
        assert!(check_allowed(&sneaky, &dirs).is_err());
        let e = check_allowed(&store.path().join("zz.gguf"), &dirs).unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound);
        assert!(e.to_string().starts_with("model `"), "{e}");
    }

    #[test]
    fn outside_paths_answer_alike_whether_they_exist_or_not() {
        let store = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("b.gguf"), b"x").unwrap();
        std::os::unix::fs::symlink(other.path().join("b.gguf"), store.path().join("l.gguf"))
            .unwrap();
        let dirs = vec![store.path().to_path_buf()];
        let o = other.path().display().to_string();
        let s = store.path().display().to_string();
        let oname = other.path().file_name().unwrap().to_string_lossy();
        // Pairs of (existing, missing) outside paths, each spelled several ways.
        for (there, absent) in [
            (format!("{o}/b.gguf"), format!("{o}/nope.gguf")),
            (
                format!("{s}/../{oname}/b.gguf"),
                format!("{s}/../{oname}/nope.gguf"),
            ),
            (
                format!("{s}/no/such/../../../{oname}/b.gguf"),
                format!("{s}/no/such/../../../{oname}/nope.gguf"),
            ),
            ("/etc/passwd".into(), "/etc/passwd-nope".into()),
        ] {
            let a = check_allowed(Path::new(&there), &dirs).unwrap_err();
            let b = check_allowed(Path::new(&absent), &dirs).unwrap_err();
            assert!(matches!(a, StoreError::OutsideStore { .. }), "{there}: {a}");
            assert!(
                matches!(b, StoreError::OutsideStore { .. }),
                "{absent}: {b}"
            );
            assert_eq!(a.code(), b.code());
            assert_eq!(
                a.to_string().replace(&there, "P"),
                b.to_string().replace(&absent, "P"),
                "the answers must not differ but for the path"
            );
        }
        // A symlink inside the store that leads out is refused too.
        let e = check_allowed(&store.path().join("l.gguf"), &dirs).unwrap_err();
        assert!(matches!(e, StoreError::OutsideStore { .. }), "{e}");
    }

    #[test]
    fn hub_references_that_leave_the_cache_are_refused_at_parse() {
        let (_root, store) = sample();
        for (r, part) in [
            ("hf:org/tiny:/etc/passwd", "file"),
            ("hf:org/tiny:../../../../etc/passwd", "file"),
            ("hf:org/tiny:snap\\..\\x.gguf", "file"),
            ("hf:org/tiny:c.gguf\0", "file"),
            ("hf:org/tiny@../../x:c.gguf", "revision"),
            ("hf:org/tiny@/abs:c.gguf", "revision"),
        ] {
            let e = store.find(r).unwrap_err();
            assert_eq!(e.code(), ErrorCode::BadRequest, "{r}: {e}");
            assert!(
                e.to_string().contains(&format!("the {part} part")),
                "{r}: {e}"
            );
            assert!(crate::ModelRef::parse(r).is_err(), "{r}");
        }
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
        let l = list_dirs(&[store.path().into()]);
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

    /// A store of two dirs (both holding `dup.gguf`) and an HF cache holding `org/tiny:c.gguf`.
    fn sample() -> (tempfile::TempDir, Store) {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join("a"), root.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("Model.Q4_1.gguf"), b"1234").unwrap();
        std::fs::write(a.join("dup.gguf"), b"1").unwrap();
        std::fs::write(b.join("dup.gguf"), b"12").unwrap();
        let repo = root.path().join("hub/models--org--tiny");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "c0").unwrap();
        std::fs::create_dir_all(repo.join("snapshots/c0")).unwrap();
        std::fs::write(repo.join("snapshots/c0/c.gguf"), b"123").unwrap();
        let store = Store {
            dirs: vec![a, b],
            hub_dir: root.path().join("hub"),
        };
        (root, store)
    }

    #[test]
    fn every_listed_form_names_the_same_model() {
        let (root, store) = sample();
        let want = root
            .path()
            .join("a/Model.Q4_1.gguf")
            .canonicalize()
            .unwrap();
        let listed = store.list();
        let entry = listed.iter().find(|e| e.name == "Model.Q4_1").unwrap();
        for form in ["Model.Q4_1", "Model.Q4_1.gguf", entry.reference.as_str()] {
            let f = store.find(form).unwrap();
            assert_eq!(f.reference, want.display().to_string(), "{form}");
            assert_eq!(f.size_bytes, 4, "{form}");
        }
        for form in ["c", "c.gguf", "hf:org/tiny:c.gguf"] {
            assert_eq!(
                store.find(form).unwrap().reference,
                "hf:org/tiny:c.gguf",
                "{form}"
            );
        }
    }

    #[test]
    fn ambiguous_and_unknown_names_are_refused_clearly() {
        let (_root, store) = sample();
        let e = store.find("dup").unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadRequest);
        let StoreError::Ambiguous { candidates, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(candidates.len(), 2, "{e}");
        assert!(
            e.to_string().contains("a/dup.gguf") && e.to_string().contains("b/dup.gguf"),
            "{e}"
        );
        let e = store.find("nothing-like-it").unwrap_err();
        assert_eq!(e.code(), ErrorCode::NotFound);
        assert!(
            e.to_string()
                .starts_with("model `nothing-like-it` not found"),
            "{e}"
        );
        let e = store.find("/etc/passwd").unwrap_err();
        assert!(matches!(e, StoreError::OutsideStore { .. }), "{e}");
        assert_eq!(
            store.find("hf:bad").unwrap_err().code(),
            ErrorCode::BadRequest
        );
    }
}
