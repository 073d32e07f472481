//! From a model reference to a network ready to run: resolving files (through `rbee-store`),
//! opening the device, building the tokenizer and loading the weights.
//!
//! - [`gguf`]: GGUF files (quantized), with [`requantise`] for formats slow on CPU.
//! - [`safetensors`]: safetensors directories (full precision).
//! - [`tokenizer`]: `tokenizer.json`, or one rebuilt from a GGUF vocabulary.
//! - [`device`]: `cpu` / `cuda:N` to a candle device.
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{llama, quantized_llama};
use rbee_proto::ModelSummary;
use rbee_store::{ModelFiles, ModelRef};
use tokenizers::Tokenizer;

use crate::error::LoadError;

pub mod device;
pub mod gguf;
pub mod requantise;
pub mod safetensors;
pub mod tokenizer;

/// The network, whichever format it came from.
pub enum Network {
    /// A quantized llama-family model from a GGUF file.
    Quantized(quantized_llama::ModelWeights),
    /// A full-precision llama model from safetensors, with its KV cache.
    Llama {
        /// The weights.
        model: llama::Llama,
        /// The KV cache, rebuilt by [`LoadedModel::reset`].
        cache: llama::Cache,
        /// What the cache is rebuilt from.
        config: llama::Config,
        /// The activations' precision.
        dtype: DType,
    },
}

/// A model ready to generate.
pub struct LoadedModel {
    /// The network and its state.
    pub network: Network,
    /// Text ⇄ tokens (shared with the generation loop's detokenizer).
    pub tokenizer: Arc<Tokenizer>,
    /// Tokens that end generation.
    pub eos_tokens: Vec<u32>,
    /// What `Ready` reports.
    pub summary: ModelSummary,
    /// Where the tensors live.
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

/// Resolve `model` (a path or `hf:` reference), open `device` and load. `progress` hears
/// (stage, fraction).
pub fn load_ref(
    model: &str,
    device: &str,
    progress: &mut dyn FnMut(&str, f32),
) -> Result<LoadedModel, LoadError> {
    let device = device::open(device)?;
    let r = ModelRef::parse(model)?;
    progress("resolving", 0.0);
    let files = match &r {
        ModelRef::Path(p) => ModelFiles::from_path(p)?,
        ModelRef::Hub(h) => rbee_store::hub::resolve(h)?,
    };
    load(&files, &device, progress)
}

/// Load resolved files onto a device. `progress` hears (stage, fraction).
pub fn load(
    files: &ModelFiles,
    device: &Device,
    progress: &mut dyn FnMut(&str, f32),
) -> Result<LoadedModel, LoadError> {
    match files {
        ModelFiles::Gguf { file, tokenizer } => {
            gguf::load(file, tokenizer.as_deref(), device, progress)
        }
        ModelFiles::Safetensors {
            config,
            tokenizer,
            weights,
            ..
        } => safetensors::load(config, tokenizer, weights, device, progress),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_gguf_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.gguf");
        std::fs::write(&f, b"GGUF\x03\x00\x00\x00garbage").unwrap();
        let e = load_ref(f.to_str().unwrap(), "cpu", &mut |_, _| {})
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("corrupt or unreadable model"), "{e}");
    }
}
