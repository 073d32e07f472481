//! Model references, their resolution to files, and loading with candle.
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{llama, quantized_llama};
use tokenizers::Tokenizer;

use crate::device::device_name;
use rbee_proto::ModelSummary;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("model not found: {0}")]
    NotFound(String),
    #[error("corrupt or unreadable model {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("unsupported model {path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("device: {0}")]
    Device(String),
    #[error("invalid model reference `{0}`: use a .gguf file, a safetensors directory, or hf:ORG/REPO[@REVISION][:FILE]")]
    BadReference(String),
}

/// What `--model` accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// A local `.gguf` file or a directory with config.json, tokenizer.json and *.safetensors.
    Path(PathBuf),
    /// `hf:ORG/REPO[@REVISION][:FILE]`, resolved through the Hugging Face cache.
    Hub {
        repo: String,
        revision: Option<String>,
        file: Option<String>,
    },
}

impl ModelRef {
    pub fn parse(s: &str) -> Result<Self, LoadError> {
        match rbee_proto::types::HubRef::parse(s) {
            Some(Ok(h)) => Ok(ModelRef::Hub {
                repo: h.repo,
                revision: h.revision,
                file: h.file,
            }),
            Some(Err(_)) => Err(LoadError::BadReference(s.into())),
            None if s.trim().is_empty() => Err(LoadError::BadReference(s.into())),
            None => Ok(ModelRef::Path(PathBuf::from(s))),
        }
    }
}

/// Files a model reference resolved to.
#[derive(Debug, Clone)]
pub enum ModelFiles {
    Gguf {
        file: PathBuf,
        tokenizer: Option<PathBuf>,
    },
    Safetensors {
        config: PathBuf,
        tokenizer: PathBuf,
        weights: Vec<PathBuf>,
    },
}

impl ModelFiles {
    pub fn total_bytes(&self) -> u64 {
        let size = |p: &PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        match self {
            ModelFiles::Gguf { file, .. } => size(file),
            ModelFiles::Safetensors { weights, .. } => weights.iter().map(size).sum(),
        }
    }
}

/// Resolve a reference to files on disk, downloading through hf-hub when allowed.
pub fn resolve(r: &ModelRef) -> Result<ModelFiles, LoadError> {
    match r {
        ModelRef::Path(p) => resolve_path(p),
        ModelRef::Hub {
            repo,
            revision,
            file,
        } => resolve_hub(repo, revision.as_deref(), file.as_deref()),
    }
}

fn resolve_path(p: &Path) -> Result<ModelFiles, LoadError> {
    let meta =
        std::fs::metadata(p).map_err(|e| LoadError::NotFound(format!("{}: {e}", p.display())))?;
    if meta.is_file() {
        if p.extension().and_then(|e| e.to_str()) != Some("gguf") {
            return Err(LoadError::Unsupported {
                path: p.into(),
                reason: "a model file must be .gguf (or pass a safetensors directory)".into(),
            });
        }
        let beside = [
            p.with_extension("tokenizer.json"),
            p.with_file_name("tokenizer.json"),
        ];
        let tokenizer = beside.into_iter().find(|t| t.is_file());
        return Ok(ModelFiles::Gguf {
            file: p.into(),
            tokenizer,
        });
    }
    let config = p.join("config.json");
    let tokenizer = p.join("tokenizer.json");
    let mut weights: Vec<PathBuf> = std::fs::read_dir(p)
        .map_err(|e| LoadError::NotFound(format!("{}: {e}", p.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.extension().and_then(|e| e.to_str()) == Some("safetensors"))
        .collect();
    weights.sort();
    let mut missing = Vec::new();
    if !config.is_file() {
        missing.push("config.json");
    }
    if !tokenizer.is_file() {
        missing.push("tokenizer.json");
    }
    if weights.is_empty() {
        missing.push("*.safetensors");
    }
    if !missing.is_empty() {
        return Err(LoadError::NotFound(format!(
            "{} is not a model directory: missing {}",
            p.display(),
            missing.join(", ")
        )));
    }
    Ok(ModelFiles::Safetensors {
        config,
        tokenizer,
        weights,
    })
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false)
}

fn resolve_hub(
    repo: &str,
    revision: Option<&str>,
    file: Option<&str>,
) -> Result<ModelFiles, LoadError> {
    let cache = hf_hub::Cache::from_env();
    let hub_repo = hf_hub::Repo::with_revision(
        repo.to_string(),
        hf_hub::RepoType::Model,
        revision.unwrap_or("main").to_string(),
    );
    let api = if offline() {
        None
    } else {
        let mut b = hf_hub::api::sync::ApiBuilder::from_cache(cache.clone()).with_progress(false);
        if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
            b = b.with_endpoint(endpoint);
        }
        b.build().ok()
    };
    let fetch = |name: &str| -> Result<PathBuf, LoadError> {
        if let Some(p) = cache.repo(hub_repo.clone()).get(name) {
            return Ok(p);
        }
        let why = match &api {
            None => "HF_HUB_OFFLINE=1 and the file is not cached".to_string(),
            Some(api) => match api.repo(hub_repo.clone()).get(name) {
                Ok(p) => return Ok(p),
                Err(e) => format!("download failed: {e}"),
            },
        };
        Err(LoadError::NotFound(format!(
            "hf:{repo}: `{name}` ({why}); cache: {}",
            cache.path().join(hub_repo.folder_name()).display()
        )))
    };
    match file {
        Some(f) if f.ends_with(".gguf") => {
            let file = fetch(f)?;
            let tokenizer = fetch("tokenizer.json").ok();
            Ok(ModelFiles::Gguf { file, tokenizer })
        }
        Some(f) => Err(LoadError::Unsupported {
            path: f.into(),
            reason: "FILE must be a .gguf".into(),
        }),
        None => {
            let config = fetch("config.json")?;
            let tokenizer = fetch("tokenizer.json")?;
            let weights = match fetch("model.safetensors") {
                Ok(w) => vec![w],
                Err(single) => {
                    let index = fetch("model.safetensors.index.json").map_err(|_| single)?;
                    let text = std::fs::read_to_string(&index).map_err(|e| LoadError::Corrupt {
                        path: index.clone(),
                        reason: e.to_string(),
                    })?;
                    let v: serde_json::Value =
                        serde_json::from_str(&text).map_err(|e| LoadError::Corrupt {
                            path: index.clone(),
                            reason: e.to_string(),
                        })?;
                    let mut names: Vec<String> = v["weight_map"]
                        .as_object()
                        .map(|m| {
                            m.values()
                                .filter_map(|x| x.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default();
                    names.sort();
                    names.dedup();
                    names.iter().map(|n| fetch(n)).collect::<Result<_, _>>()?
                }
            };
            Ok(ModelFiles::Safetensors {
                config,
                tokenizer,
                weights,
            })
        }
    }
}

/// The network, whichever format it came from.
pub enum Network {
    Quantized(quantized_llama::ModelWeights),
    Llama {
        model: llama::Llama,
        cache: llama::Cache,
        config: llama::Config,
        dtype: DType,
    },
}

/// A model ready to generate.
pub struct LoadedModel {
    pub network: Network,
    pub tokenizer: Tokenizer,
    pub eos_tokens: Vec<u32>,
    pub summary: ModelSummary,
    pub device: Device,
}

impl LoadedModel {
    /// Logits of the last position for `tokens` placed at `pos`.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> candle_core::Result<Tensor> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = match &mut self.network {
            Network::Quantized(m) => m.forward(&input, pos)?,
            Network::Llama { model, cache, .. } => model.forward(&input, pos, cache)?,
        };
        logits.squeeze(0)?.to_dtype(DType::F32)
    }

    /// Forget the KV cache before an unrelated prompt.
    pub fn reset(&mut self) -> candle_core::Result<()> {
        match &mut self.network {
            Network::Quantized(m) => m.clear_kv_cache(),
            Network::Llama {
                cache,
                config,
                dtype,
                ..
            } => {
                *cache = llama::Cache::new(true, *dtype, config, &self.device)?;
            }
        }
        Ok(())
    }
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> LoadError {
    LoadError::Corrupt {
        path: path.into(),
        reason: e.to_string(),
    }
}

/// Load resolved files onto a device. `progress` hears (stage, fraction).
pub fn load(
    files: &ModelFiles,
    device: &Device,
    progress: &mut dyn FnMut(&str, f32),
) -> Result<LoadedModel, LoadError> {
    match files {
        ModelFiles::Gguf { file, tokenizer } => {
            load_gguf(file, tokenizer.as_deref(), device, progress)
        }
        ModelFiles::Safetensors {
            config,
            tokenizer,
            weights,
        } => load_safetensors(config, tokenizer, weights, device, progress),
    }
}

fn load_gguf(
    path: &Path,
    tokenizer: Option<&Path>,
    device: &Device,
    progress: &mut dyn FnMut(&str, f32),
) -> Result<LoadedModel, LoadError> {
    progress("reading header", 0.05);
    let mut f =
        File::open(path).map_err(|e| LoadError::NotFound(format!("{}: {e}", path.display())))?;
    let ct = gguf_file::Content::read(&mut f).map_err(|e| corrupt(path, e))?;
    let file_len = f.metadata().map(|m| m.len()).unwrap_or(0);
    // A truncated file is caught here, before candle reads past the end.
    for (name, info) in &ct.tensor_infos {
        let bytes =
            info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let end = ct.tensor_data_offset + info.offset + bytes as u64;
        if end > file_len {
            return Err(corrupt(path, format!("tensor `{name}` ends at byte {end} but the file has {file_len} bytes (truncated?)")));
        }
    }
    let arch = ct
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    if arch != "llama" {
        return Err(LoadError::Unsupported {
            path: path.into(),
            reason: format!("architecture `{arch}`; this worker serves the llama family"),
        });
    }
    let name = ct
        .metadata
        .get("general.name")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_else(|| {
            path.file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        });
    let context_length = ct
        .metadata
        .get("llama.context_length")
        .and_then(|v| v.to_u32().ok())
        .unwrap_or(2048)
        .min(quantized_llama::MAX_SEQ_LEN as u32);
    let mut eos_tokens: Vec<u32> = ct
        .metadata
        .get("tokenizer.ggml.eos_token_id")
        .and_then(|v| v.to_u32().ok())
        .into_iter()
        .collect();
    progress("tokenizer", 0.1);
    let tokenizer = match tokenizer {
        Some(t) => crate::tokenizer::from_file(t)?,
        None => crate::tokenizer::from_gguf(&ct)?,
    };
    for t in ["<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>"] {
        if let Some(id) = tokenizer.token_to_id(t) {
            if !eos_tokens.contains(&id) {
                eos_tokens.push(id);
            }
        }
    }
    progress("loading weights", 0.2);
    let keep = std::env::var_os("RBEE_WORKER_KEEP_QUANT").is_some();
    let weights = if device.is_cpu() && !keep && needs_requant(&ct) {
        // Formats without SIMD kernels in candle (Q4_1, Q5_x) are re-encoded once as Q8_0, which
        // has them; Q8_0 represents those values almost exactly and decodes several times faster.
        let (ct2, mut cursor) = requantize(&ct, &mut f, path)?;
        quantized_llama::ModelWeights::from_gguf(ct2, &mut cursor, device)
            .map_err(|e| corrupt(path, e))?
    } else {
        quantized_llama::ModelWeights::from_gguf(ct, &mut f, device)
            .map_err(|e| corrupt(path, e))?
    };
    progress("ready", 1.0);
    Ok(LoadedModel {
        network: Network::Quantized(weights),
        tokenizer,
        eos_tokens,
        summary: ModelSummary {
            name,
            architecture: arch,
            context_length,
            memory_bytes: file_len,
            device: device_name(device),
        },
        device: device.clone(),
    })
}

/// Quantized formats whose CPU matmul has no SIMD path in candle.
fn slow_on_cpu(t: GgmlDType) -> bool {
    matches!(t, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

fn needs_requant(ct: &gguf_file::Content) -> bool {
    ct.tensor_infos.values().any(|t| slow_on_cpu(t.ggml_dtype))
}

/// Re-encode slow tensors as Q8_0 into an in-memory GGUF with the same metadata.
fn requantize(
    ct: &gguf_file::Content,
    f: &mut File,
    path: &Path,
) -> Result<(gguf_file::Content, std::io::Cursor<Vec<u8>>), LoadError> {
    let mut tensors = Vec::with_capacity(ct.tensor_infos.len());
    for name in ct.tensor_infos.keys() {
        let q = ct
            .tensor(f, name, &Device::Cpu)
            .map_err(|e| corrupt(path, e))?;
        let q = if slow_on_cpu(q.dtype()) && q.shape().dims().last().is_some_and(|d| d % 32 == 0) {
            let dense = q.dequantize(&Device::Cpu).map_err(|e| corrupt(path, e))?;
            QTensor::quantize(&dense, GgmlDType::Q8_0).map_err(|e| corrupt(path, e))?
        } else {
            q
        };
        tensors.push((name.clone(), q));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> =
        ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &metadata, &tensor_refs).map_err(|e| corrupt(path, e))?;
    buf.set_position(0);
    let ct2 = gguf_file::Content::read(&mut buf).map_err(|e| corrupt(path, e))?;
    Ok((ct2, buf))
}

fn load_safetensors(
    config_path: &Path,
    tokenizer_path: &Path,
    weights: &[PathBuf],
    device: &Device,
    progress: &mut dyn FnMut(&str, f32),
) -> Result<LoadedModel, LoadError> {
    progress("reading config", 0.05);
    let text = std::fs::read_to_string(config_path).map_err(|e| corrupt(config_path, e))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| corrupt(config_path, e))?;
    let arch = raw["architectures"][0].as_str().unwrap_or("").to_string();
    let model_type = raw["model_type"].as_str().unwrap_or("").to_string();
    if model_type != "llama" && arch != "LlamaForCausalLM" {
        return Err(LoadError::Unsupported {
            path: config_path.into(),
            reason: format!("architecture `{arch}` / model_type `{model_type}`; this worker serves the llama family"),
        });
    }
    let cfg: llama::LlamaConfig =
        serde_json::from_value(raw.clone()).map_err(|e| corrupt(config_path, e))?;
    let eos_tokens = match &cfg.eos_token_id {
        Some(llama::LlamaEosToks::Single(t)) => vec![*t],
        Some(llama::LlamaEosToks::Multiple(v)) => v.clone(),
        None => Vec::new(),
    };
    let context_length = cfg.max_position_embeddings as u32;
    let config = cfg.into_config(false);
    progress("tokenizer", 0.1);
    let tokenizer = crate::tokenizer::from_file(tokenizer_path)?;
    let dtype = if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };
    progress("loading weights", 0.2);
    // SAFETY: the files are memory-mapped read-only; rbee does not modify model files while a
    // worker runs, and an external truncation would be an operator error that candle reports.
    let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(weights, dtype, device) }
        .map_err(|e| corrupt(&weights[0], e))?;
    let model = llama::Llama::load(vb, &config).map_err(|e| corrupt(&weights[0], e))?;
    let cache =
        llama::Cache::new(true, dtype, &config, device).map_err(|e| corrupt(config_path, e))?;
    let memory_bytes: u64 = weights
        .iter()
        .map(|w| std::fs::metadata(w).map(|m| m.len()).unwrap_or(0))
        .sum();
    let name = config_path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "llama".into());
    progress("ready", 1.0);
    Ok(LoadedModel {
        network: Network::Llama {
            model,
            cache,
            config,
            dtype,
        },
        tokenizer,
        eos_tokens,
        summary: ModelSummary {
            name,
            architecture: "llama".into(),
            context_length,
            memory_bytes,
            device: device_name(device),
        },
        device: device.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_references_parse() {
        assert_eq!(
            ModelRef::parse("hf:HuggingFaceTB/SmolLM2-135M@v1:model.gguf").unwrap(),
            ModelRef::Hub {
                repo: "HuggingFaceTB/SmolLM2-135M".into(),
                revision: Some("v1".into()),
                file: Some("model.gguf".into())
            }
        );
        assert_eq!(
            ModelRef::parse("hf:a/b").unwrap(),
            ModelRef::Hub {
                repo: "a/b".into(),
                revision: None,
                file: None
            }
        );
        for bad in ["hf:", "hf:a", "hf:a/b/c", "hf:a/b@", "hf:a/b:", ""] {
            assert!(ModelRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn offline_missing_repo_names_repo_and_cache() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("HF_HOME", dir.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
        let r = ModelRef::parse("hf:nobody/nothing").unwrap();
        let e = resolve(&r).unwrap_err().to_string();
        assert!(e.contains("hf:nobody/nothing"), "{e}");
        assert!(e.contains("models--nobody--nothing"), "{e}");
    }

    #[test]
    fn offline_cached_file_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("hub/models--org--m/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(dir.path().join("hub/models--org--m/refs")).unwrap();
        std::fs::write(dir.path().join("hub/models--org--m/refs/main"), "abc123").unwrap();
        std::fs::write(snap.join("m.gguf"), b"x").unwrap();
        let cache = hf_hub::Cache::new(dir.path().join("hub"));
        let repo =
            hf_hub::Repo::with_revision("org/m".into(), hf_hub::RepoType::Model, "main".into());
        assert_eq!(cache.repo(repo).get("m.gguf"), Some(snap.join("m.gguf")));
    }

    #[test]
    fn missing_and_wrong_files_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let e = resolve(&ModelRef::Path(dir.path().join("nope.gguf")))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("model not found"), "{e}");
        let e = resolve(&ModelRef::Path(dir.path().into()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing config.json, tokenizer.json, *.safetensors"),
            "{e}"
        );
        let txt = dir.path().join("m.bin");
        std::fs::write(&txt, b"hello").unwrap();
        let e = resolve(&ModelRef::Path(txt)).unwrap_err().to_string();
        assert!(e.contains("must be .gguf"), "{e}");
    }

    #[test]
    fn corrupt_gguf_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.gguf");
        std::fs::write(&f, b"GGUF\x03\x00\x00\x00garbage").unwrap();
        let files = resolve(&ModelRef::Path(f)).unwrap();
        let e = load(&files, &Device::Cpu, &mut |_, _| {})
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("corrupt or unreadable model"), "{e}");
    }
}
