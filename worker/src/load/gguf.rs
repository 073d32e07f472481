//! Loading a GGUF file: header checks, metadata, tokenizer, weights.
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use candle_transformers::models::quantized_llama;
use rbee_proto::ModelSummary;

use super::{device, requantise, tokenizer, LoadedModel, Network};
use crate::error::LoadError;

/// Refuse a file whose tensors reach past its end, before candle reads there.
fn check_not_truncated(
    ct: &gguf_file::Content,
    file_len: u64,
    path: &Path,
) -> Result<(), LoadError> {
    for (name, info) in &ct.tensor_infos {
        let bytes =
            info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let end = ct.tensor_data_offset + info.offset + bytes as u64;
        if end > file_len {
            return Err(LoadError::corrupt(
                path,
                format!("tensor `{name}` ends at byte {end} but the file has {file_len} bytes (truncated?)"),
            ));
        }
    }
    Ok(())
}

fn md_string(ct: &gguf_file::Content, key: &str) -> Option<String> {
    ct.metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .cloned()
}

fn md_u32(ct: &gguf_file::Content, key: &str) -> Option<u32> {
    ct.metadata.get(key).and_then(|v| v.to_u32().ok())
}

/// Load a GGUF file (with an optional `tokenizer.json` beside it) onto `device`.
pub fn load(
    path: &Path,
    tokenizer_path: Option<&Path>,
    device: &Device,
    progress: &mut dyn FnMut(&str, f32),
) -> Result<LoadedModel, LoadError> {
    progress("reading header", 0.05);
    let mut f = File::open(path).map_err(|e| {
        LoadError::Store(rbee_store::StoreError::NotFound(format!(
            "{}: {e}",
            path.display()
        )))
    })?;
    let ct = gguf_file::Content::read(&mut f).map_err(|e| LoadError::corrupt(path, e))?;
    let file_len = f.metadata().map(|m| m.len()).unwrap_or(0);
    check_not_truncated(&ct, file_len, path)?;
    let arch = md_string(&ct, "general.architecture").unwrap_or_else(|| "unknown".into());
    if arch != "llama" {
        return Err(LoadError::Unsupported {
            path: path.into(),
            reason: format!("architecture `{arch}`; this worker serves the llama family"),
        });
    }
    let name = md_string(&ct, "general.name").unwrap_or_else(|| {
        path.file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    });
    let context_length = md_u32(&ct, "llama.context_length")
        .unwrap_or(2048)
        .min(quantized_llama::MAX_SEQ_LEN as u32);
    let mut eos_tokens: Vec<u32> = md_u32(&ct, "tokenizer.ggml.eos_token_id")
        .into_iter()
        .collect();
    progress("tokenizer", 0.1);
    let tokenizer = match tokenizer_path {
        Some(t) => tokenizer::from_file(t)?,
        None => tokenizer::from_gguf(&ct)?,
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
    let weights = if device.is_cpu() && !keep && requantise::needed(&ct) {
        let (ct2, mut cursor) = requantise::requantise(&ct, &mut f, path)?;
        quantized_llama::ModelWeights::from_gguf(ct2, &mut cursor, device)
    } else {
        quantized_llama::ModelWeights::from_gguf(ct, &mut f, device)
    }
    .map_err(|e| LoadError::corrupt(path, e))?;
    progress("ready", 1.0);
    Ok(LoadedModel {
        network: Network::Quantized(weights),
        tokenizer: std::sync::Arc::new(tokenizer),
        eos_tokens,
        summary: ModelSummary {
            name,
            architecture: arch,
            context_length,
            memory_bytes: file_len,
            device: device::name(device),
        },
        device: device.clone(),
    })
}
