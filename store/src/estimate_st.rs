//! The memory estimate for a safetensors model directory, from the tensor headers and
//! `config.json` (no weights read).
//!
//! `rbee-worker` maps the files and converts every tensor to f32 on CPU, bf16 on a GPU; the
//! KV cache is kept in that type; the mapped files count while they are read. Unlike the GGUF
//! estimate this one is **not calibrated** (no safetensors model among the test models): it
//! counts what the worker must hold, with the same runtime base and activation model.
use std::fs::File;
use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::footprint::{MemoryEstimate, RunShape, CPU_RUNTIME_BASE, CUDA_RUNTIME, PREFILL_CHUNK};
use crate::{DeviceSpec, ModelFiles, StoreError};

/// Largest safetensors JSON header read (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

fn bad(path: &Path, msg: impl std::fmt::Display) -> StoreError {
    StoreError::BadRequest(format!("{}: {msg}", path.display()))
}

/// Elements of every tensor in one safetensors file.
fn elements(path: &Path) -> Result<u64, StoreError> {
    let mut f = File::open(path).map_err(|e| bad(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(path, e))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        return Err(bad(path, format!("header of {n} bytes")));
    }
    let mut head = vec![0u8; n as usize];
    f.read_exact(&mut head).map_err(|e| bad(path, e))?;
    let v: Value = serde_json::from_slice(&head).map_err(|e| bad(path, e))?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad(path, "header is not an object"))?;
    Ok(obj
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, t)| {
            t["shape"]
                .as_array()
                .map_or(0, |s| s.iter().map(|d| d.as_u64().unwrap_or(0)).product())
        })
        .sum())
}

/// A number from `config.json`, or from its `text_config` (multimodal configs nest it).
fn num(cfg: &Value, key: &str) -> Option<u64> {
    cfg[key]
        .as_u64()
        .or_else(|| cfg["text_config"][key].as_u64())
}

/// The estimate for the safetensors directory `files`.
pub fn estimate_dir(files: &ModelFiles, shape: RunShape) -> Result<MemoryEstimate, StoreError> {
    let ModelFiles::Safetensors {
        config, weights, ..
    } = files
    else {
        return Err(StoreError::BadRequest("not a safetensors directory".into()));
    };
    let text = std::fs::read_to_string(config).map_err(|e| bad(config, e))?;
    let cfg: Value = serde_json::from_str(&text).map_err(|e| bad(config, e))?;
    let elem = match shape.device {
        DeviceSpec::Cpu => 4,
        DeviceSpec::Cuda(_) => 2,
    };
    let mut params = 0;
    for w in weights {
        params += elements(w)?;
    }
    let mapped: u64 = files.total_bytes();
    let layers = num(&cfg, "num_hidden_layers").unwrap_or(0);
    let heads = num(&cfg, "num_attention_heads").unwrap_or(1).max(1);
    let kv_heads = num(&cfg, "num_key_value_heads").unwrap_or(heads);
    let head_dim =
        num(&cfg, "head_dim").unwrap_or_else(|| num(&cfg, "hidden_size").unwrap_or(0) / heads);
    let file_ctx = num(&cfg, "max_position_embeddings").unwrap_or(2048).max(1) as u32;
    let context = match shape.context {
        Some(c) if c > 0 => c.min(file_ctx),
        _ => file_ctx,
    };
    let ctx = u64::from(context);
    // These families serve one sequence and read a prompt in one pass (see estimate.rs).
    let kv_cache = layers * kv_heads * head_dim * 2 * elem * ctx.next_power_of_two();
    let activations = 3 * heads * ctx.min(PREFILL_CHUNK) * ctx * 4;
    let runtime = ctx * head_dim * 4
        + match shape.device {
            DeviceSpec::Cpu => CPU_RUNTIME_BASE,
            DeviceSpec::Cuda(_) => CUDA_RUNTIME,
        };
    Ok(MemoryEstimate {
        weights: params * elem,
        packed: 0,
        load_transient: mapped,
        kv_cache,
        kv_growth: 0,
        activations,
        dense_copies: 0,
        runtime,
        context,
        parallel: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_directory_is_estimated_from_its_headers_and_config() {
        let dir = tempfile::tempdir().unwrap();
        let head = br#"{"a":{"dtype":"BF16","shape":[4,8],"data_offsets":[0,64]},"__metadata__":{"format":"pt"}}"#;
        let mut file = (head.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(head);
        file.extend_from_slice(&[0u8; 64]);
        std::fs::write(dir.path().join("model.safetensors"), &file).unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type":"llama","num_hidden_layers":2,"num_attention_heads":4,
                "num_key_value_heads":2,"hidden_size":32,"max_position_embeddings":1000}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
        let files = ModelFiles::from_dir(dir.path()).unwrap();
        let shape = RunShape {
            device: DeviceSpec::Cpu,
            context: None,
            parallel: 4,
            keep_quant: false,
            repack: false,
            qmm: false,
        };
        let e = estimate_dir(&files, shape).unwrap();
        assert_eq!(e.weights, 32 * 4, "32 bf16 values held as f32");
        assert_eq!(e.context, 1000);
        assert_eq!(e.parallel, 1);
        assert_eq!(e.kv_cache, 2 * 2 * 8 * 2 * 4 * 1024);
        let gpu = estimate_dir(
            &files,
            RunShape {
                device: DeviceSpec::Cuda(0),
                ..shape
            },
        )
        .unwrap();
        assert_eq!(gpu.weights, 32 * 2);
    }
}
