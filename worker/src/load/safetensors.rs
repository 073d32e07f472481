//! Loading a safetensors model directory (llama family) with candle's full-precision model.
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_transformers::models::llama;
use rbee_proto::ModelSummary;

use super::{device, tokenizer, LoadedModel, Network};
use crate::error::LoadError;

/// Load `config.json`, `tokenizer.json` and the weights onto `device`.
pub fn load(
    config_path: &Path,
    tokenizer_path: &Path,
    weights: &[PathBuf],
    device: &Device,
    progress: &mut dyn FnMut(&str, f32),
) -> Result<LoadedModel, LoadError> {
    progress("reading config", 0.05);
    let corrupt_cfg = |e: &dyn std::fmt::Display| LoadError::corrupt(config_path, e);
    let text = std::fs::read_to_string(config_path).map_err(|e| corrupt_cfg(&e))?;
    let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| corrupt_cfg(&e))?;
    let arch = raw["architectures"][0].as_str().unwrap_or("").to_string();
    let model_type = raw["model_type"].as_str().unwrap_or("").to_string();
    if model_type != "llama" && arch != "LlamaForCausalLM" {
        return Err(LoadError::Unsupported {
            path: config_path.into(),
            reason: format!("architecture `{arch}` / model_type `{model_type}`; this worker serves the llama family"),
        });
    }
    let cfg: llama::LlamaConfig = serde_json::from_value(raw).map_err(|e| corrupt_cfg(&e))?;
    let eos_tokens = match &cfg.eos_token_id {
        Some(llama::LlamaEosToks::Single(t)) => vec![*t],
        Some(llama::LlamaEosToks::Multiple(v)) => v.clone(),
        None => Vec::new(),
    };
    let context_length = cfg.max_position_embeddings as u32;
    let config = cfg.into_config(false);
    progress("tokenizer", 0.1);
    let tokenizer = tokenizer::from_file(tokenizer_path)?;
    let dtype = if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };
    progress("loading weights", 0.2);
    // SAFETY: the files are memory-mapped read-only; rbee does not modify model files while a
    // worker runs, and an external truncation would be an operator error that candle reports.
    let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(weights, dtype, device) }
        .map_err(|e| LoadError::corrupt(&weights[0], e))?;
    let model = llama::Llama::load(vb, &config).map_err(|e| LoadError::corrupt(&weights[0], e))?;
    let cache = llama::Cache::new(true, dtype, &config, device).map_err(|e| corrupt_cfg(&e))?;
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
        tokenizer: std::sync::Arc::new(tokenizer),
        eos_tokens,
        summary: ModelSummary {
            name,
            architecture: "llama".into(),
            context_length,
            memory_bytes,
            device: device::name(device),
        },
        device: device.clone(),
    })
}
