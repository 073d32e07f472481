//! The model families this worker runs, in one table, and the network of each.
//!
//! Every GGUF family goes through candle-transformers' quantized implementation of it; the
//! family is chosen by `general.architecture`. Anything else is refused at load, naming the
//! architecture and this list.
use std::io::{Read, Seek};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::llama::Variant;
use candle_transformers::models::{
    llama, phi3, quantized_llama, quantized_phi3, quantized_qwen2, quantized_qwen3, qwen2, qwen3,
};

/// A model family: one architecture, one implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Llama 2/3.x, Mistral, SmolLM … (`llama`).
    Llama,
    /// Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen (`qwen2`).
    Qwen2,
    /// Qwen3 (`qwen3`).
    Qwen3,
    /// Gemma 3 (`gemma3`).
    Gemma3,
    /// Phi-3, Phi-3.5 (`phi3`).
    Phi3,
}

impl Family {
    /// Every family, in the order the refusal lists them.
    pub const ALL: [Family; 5] = [
        Family::Llama,
        Family::Qwen2,
        Family::Qwen3,
        Family::Gemma3,
        Family::Phi3,
    ];

    /// The architecture name GGUF metadata (`general.architecture`) uses, and `Ready` reports.
    pub fn name(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma3 => "gemma3",
            Family::Phi3 => "phi3",
        }
    }

    /// The family of a GGUF architecture, if this worker runs it.
    pub fn from_arch(arch: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == arch)
    }

    /// The family of a safetensors model's `model_type` (config.json), if this worker runs it.
    pub fn from_model_type(model_type: &str) -> Option<Family> {
        match model_type {
            "llama" | "mistral" => Some(Family::Llama),
            "qwen2" => Some(Family::Qwen2),
            "qwen3" => Some(Family::Qwen3),
            "gemma3" | "gemma3_text" => Some(Family::Gemma3),
            "phi3" => Some(Family::Phi3),
            _ => None,
        }
    }

    /// `llama, qwen2, …`: what a refusal offers instead.
    pub fn supported() -> String {
        Family::ALL.map(Family::name).join(", ")
    }

    /// Whether `ct` runs on rbee's own decoder ([`super::llama`]) rather than candle's.
    pub fn own_decoder(self, ct: &gguf_file::Content) -> bool {
        match self {
            Family::Llama => super::llama::covers(ct, Variant::Llama),
            Family::Qwen2 => super::llama::covers(ct, Variant::Qwen2),
            Family::Qwen3 => super::llama::covers(ct, Variant::Qwen3),
            _ => false,
        }
    }

    /// The longest context the worker offers, whatever the file claims: quantized phi3
    /// allocates its KV cache for the whole context at the first token (Phi-3-mini-128k: over
    /// 100 GB), so it is held to 4 096; llama files on candle's implementation (mixture of
    /// experts) end at its rotary table, 4 096 positions.
    pub fn max_context(self, ct: &gguf_file::Content) -> usize {
        match self {
            Family::Llama if !super::llama::covers(ct, Variant::Llama) => {
                quantized_llama::MAX_SEQ_LEN
            }
            Family::Phi3 => 4096,
            _ => usize::MAX,
        }
    }
}

/// The network, whichever family and format it came from.
pub enum Network {
    /// Quantized dense llama, qwen2 or qwen3 (rbee's own decoder, see [`super::llama`]).
    Llama(super::llama::Llama),
    /// Quantized llama-family files that decoder does not cover (mixture of experts, partial
    /// rotary dimensions), on candle's implementation.
    LlamaCandle(quantized_llama::ModelWeights),
    /// Quantized Qwen2 files rbee's decoder does not cover, on candle's implementation.
    Qwen2(quantized_qwen2::ModelWeights),
    /// Quantized Qwen3 files rbee's decoder does not cover, on candle's implementation.
    Qwen3(quantized_qwen3::ModelWeights),
    /// Gemma 3, from GGUF or safetensors (rbee's own implementation, see [`super::gemma3`]).
    Gemma3(super::gemma3::Gemma3),
    /// Quantized Phi-3.
    Phi3(quantized_phi3::ModelWeights),
    /// Full-precision Qwen2 from safetensors.
    Qwen2Full(qwen2::ModelForCausalLM),
    /// Full-precision Qwen3 from safetensors.
    Qwen3Full(qwen3::ModelForCausalLM),
    /// Full-precision Phi-3 from safetensors.
    Phi3Full(phi3::Model),
    /// A full-precision llama model from safetensors, with its KV cache.
    LlamaFull {
        /// The weights.
        model: llama::Llama,
        /// The KV cache, rebuilt by [`Network::reset`].
        cache: llama::Cache,
        /// What the cache is rebuilt from.
        config: llama::Config,
        /// The activations' precision.
        dtype: DType,
    },
}

impl Network {
    /// Build `family`'s quantized network from a GGUF file's tensors, for prompts of up to
    /// `context` tokens.
    pub fn from_gguf<R: Read + Seek>(
        family: Family,
        ct: gguf_file::Content,
        reader: &mut R,
        context: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        Ok(match family {
            Family::Llama if super::llama::covers(&ct, Variant::Llama) => Network::Llama(
                super::llama::Llama::from_gguf(Variant::Llama, &ct, reader, context, device)?,
            ),
            Family::Qwen2 if super::llama::covers(&ct, Variant::Qwen2) => Network::Llama(
                super::llama::Llama::from_gguf(Variant::Qwen2, &ct, reader, context, device)?,
            ),
            Family::Qwen3 if super::llama::covers(&ct, Variant::Qwen3) => Network::Llama(
                super::llama::Llama::from_gguf(Variant::Qwen3, &ct, reader, context, device)?,
            ),
            Family::Llama => Network::LlamaCandle(quantized_llama::ModelWeights::from_gguf(
                ct, reader, device,
            )?),
            Family::Qwen2 => Network::Qwen2(quantized_qwen2::ModelWeights::from_gguf(
                ct, reader, device,
            )?),
            Family::Qwen3 => Network::Qwen3(quantized_qwen3::ModelWeights::from_gguf(
                ct, reader, device,
            )?),
            Family::Gemma3 => Network::Gemma3(super::gemma3::Gemma3::from_gguf(
                &ct, reader, context, device,
            )?),
            Family::Phi3 => Network::Phi3(quantized_phi3::ModelWeights::from_gguf(
                false, ct, reader, device,
            )?),
        })
    }

    /// Build `family`'s full-precision network from a safetensors model's config.json and
    /// weights.
    pub fn from_safetensors(
        family: Family,
        config: serde_json::Value,
        vb: VarBuilder,
        device: &Device,
    ) -> candle_core::Result<Self> {
        fn cfg<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> candle_core::Result<T> {
            serde_json::from_value(v).map_err(candle_core::Error::msg)
        }
        Ok(match family {
            Family::Llama => {
                let dtype = vb.dtype();
                let config = cfg::<llama::LlamaConfig>(config)?.into_config(false);
                let model = llama::Llama::load(vb, &config)?;
                let cache = llama::Cache::new(true, dtype, &config, device)?;
                Network::LlamaFull {
                    model,
                    cache,
                    config,
                    dtype,
                }
            }
            Family::Qwen2 => Network::Qwen2Full(qwen2::ModelForCausalLM::new(&cfg(config)?, vb)?),
            Family::Qwen3 => Network::Qwen3Full(qwen3::ModelForCausalLM::new(&cfg(config)?, vb)?),
            Family::Gemma3 => {
                // rbee's decoder: candle's full-precision gemma3 fails on a prompt longer than
                // the sliding window (its rotating cache cannot take it).
                let shape = super::gemma3::Shape::from_config(&config)?;
                let n = |k: &str| config[k].as_u64().unwrap_or(0) as usize;
                let mut weights = super::gemma3::HfWeights {
                    own_output: vb.contains_tensor("lm_head.weight"),
                    vb,
                    vocab: n("vocab_size"),
                    ff: n("intermediate_size"),
                    shape: &shape,
                };
                let positions = match n("max_position_embeddings") {
                    0 => 8192,
                    p => p,
                };
                Network::Gemma3(super::gemma3::Gemma3::build(
                    &shape,
                    &mut weights,
                    positions,
                    device,
                )?)
            }
            Family::Phi3 => Network::Phi3Full(phi3::Model::new(&cfg(config)?, vb)?),
        })
    }

    /// Logits of the last position of `input` (`[1, n]` token ids) placed at `pos`.
    pub fn forward(&mut self, input: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        match self {
            Network::Llama(m) => m.forward(input, pos),
            Network::LlamaCandle(m) => m.forward(input, pos),
            Network::Qwen2(m) => m.forward(input, pos),
            Network::Qwen3(m) => m.forward(input, pos),
            Network::Gemma3(m) => m.forward(input, pos),
            Network::Phi3(m) => m.forward(input, pos),
            Network::Qwen2Full(m) => m.forward(input, pos),
            Network::Qwen3Full(m) => m.forward(input, pos),
            Network::Phi3Full(m) => m.forward(input, pos),
            Network::LlamaFull { model, cache, .. } => model.forward(input, pos, cache),
        }
    }

    /// Forget the KV cache before an unrelated prompt. (Phi-3 drops its own when a forward pass
    /// starts at position 0.)
    pub fn reset(&mut self, device: &Device) -> candle_core::Result<()> {
        match self {
            Network::Llama(m) => m.clear_kv_cache(),
            Network::LlamaCandle(m) => m.clear_kv_cache(),
            Network::Qwen2(m) => m.clear_kv_cache(),
            Network::Qwen3(m) => m.clear_kv_cache(),
            Network::Gemma3(m) => m.clear_kv_cache(),
            Network::Phi3(_) => {}
            Network::Qwen2Full(m) => m.clear_kv_cache(),
            Network::Qwen3Full(m) => m.clear_kv_cache(),
            Network::Phi3Full(m) => m.clear_kv_cache(),
            Network::LlamaFull {
                cache,
                config,
                dtype,
                ..
            } => *cache = llama::Cache::new(true, *dtype, config, device)?,
        }
        Ok(())
    }
}
