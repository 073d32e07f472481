//! From a model reference to a network ready to run: resolving files (through `rbee-store`),
//! opening the device, building the tokenizer, the chat template and the weights.
//!
//! - [`network`]: the family table and each family's network.
//! - [`gguf`]: GGUF files (quantized), with [`requantise`] for formats slow on CPU.
//! - [`guard`]: a strict scan of a GGUF header (bounds, memory, alignment) before candle parses it.
//! - [`gemma3`]: rbee's own Gemma 3 decoder (GGUF and safetensors).
//! - [`llama`]: rbee's own llama-family decoder for GGUF files.
//! - [`attention`]: attention over a KV cache kept in place, for rbee's own decoders.
//! - [`safetensors`]: safetensors directories (full precision).
//! - [`tokenizer`]: `tokenizer.json`, or one rebuilt from a GGUF vocabulary.
//! - [`device`]: `cpu` / `cuda:N` to a candle device.
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rbee_proto::ModelSummary;
use rbee_store::{ModelFiles, ModelRef};
use tokenizers::Tokenizer;

use crate::chat::ChatTemplate;
use crate::error::LoadError;
pub use network::{Family, Network};

pub mod attention;
pub mod device;
pub mod embedding;
pub mod gemma3;
pub mod gguf;
pub mod guard;
pub mod linear;
pub mod llama;
pub mod network;
pub mod qmm;
pub mod requantise;
pub mod safetensors;
pub mod tokenizer;

/// Tokens that end an assistant's turn in the families served, hidden from the text. Each one
/// found in the vocabulary ends generation, besides the model's declared end-of-sequence ids.
pub const END_OF_TURN: [&str; 8] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
];

/// A model ready to generate.
pub struct LoadedModel {
    /// The network and its state.
    pub network: Network,
    /// Which family it runs as.
    pub family: Family,
    /// Text ⇄ tokens (shared with the generation loop's detokenizer).
    pub tokenizer: Arc<Tokenizer>,
    /// Tokens that end generation (end of sequence and end of turn).
    pub eos_tokens: Vec<u32>,
    /// The beginning-of-sequence token every prompt starts with, when the model wants one.
    pub bos: Option<u32>,
    /// The chat template, or why this model cannot chat (completion only).
    pub chat: Result<ChatTemplate, String>,
    /// What `Ready` reports.
    pub summary: ModelSummary,
    /// Where the tensors live.
    pub device: Device,
}

impl LoadedModel {
    /// Logits of the last position for `tokens` placed at `pos`.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> candle_core::Result<Tensor> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = self.network.forward(&input, pos)?;
        // [1, vocab] or [1, 1, vocab] depending on the implementation: one row of logits.
        logits.flatten_all()?.to_dtype(DType::F32)
    }

    /// Forget the KV cache before an unrelated prompt.
    pub fn reset(&mut self) -> candle_core::Result<()> {
        self.network.reset(&self.device)
    }

    /// Where the chat template came from, if the model has one that compiled.
    pub fn chat_template_source(&self) -> Option<&'static str> {
        self.chat.as_ref().ok().map(|t| t.source.as_str())
    }
}

/// The declared end ids plus every [`END_OF_TURN`] token the vocabulary has, each once.
pub fn end_tokens(tokenizer: &Tokenizer, declared: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    let found = END_OF_TURN.iter().filter_map(|t| tokenizer.token_to_id(t));
    for id in declared.iter().copied().chain(found) {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
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
    loading_allocator();
    let model = match files {
        ModelFiles::Gguf { file, tokenizer } => {
            gguf::load(file, tokenizer.as_deref(), device, progress)
        }
        ModelFiles::Safetensors { .. } => safetensors::load(files, device, progress),
    };
    serving_allocator();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: releases only free heap pages. What the load freed goes back to the system.
    unsafe {
        libc::malloc_trim(0);
    }
    model
}

/// glibc's allocator while serving: freed memory stays in the process for the next step. Each
/// forward pass allocates and frees the same large activations (attention scores of a prompt
/// chunk: tens of MB); glibc served those with fresh `mmap`s, and page faults, zeroing and
/// `munmap` took a fifth of prompt processing (perf, SmolLM2, 1 024-token prompt). So blocks up
/// to 32 MiB (glibc's ceiling for the threshold) come from the heap, which is never trimmed on
/// its own. Set at start-up and again after each load.
pub fn serving_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// glibc's allocator while loading: blocks of 1 MiB and more get mappings of their own, given
/// back when freed. Loading reads each tensor, converts or repacks it and frees the file's copy;
/// served from the heap, those copies stayed resident beside the packed weights (which live in
/// their own mappings, `qmm::arena`, and never reuse them): SmolLM2's peak was 314 MB instead of
/// 250, Gemma 3's 2,053 instead of 1,662.
fn loading_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
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
