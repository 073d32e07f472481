//! Tokenizers: from a `tokenizer.json`, or rebuilt from the vocabulary a GGUF file embeds.
use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::LoadError;

/// GGUF token type of control tokens (`<|im_start|>`, `</s>` …).
const GGUF_TOKEN_CONTROL: i32 = 3;

/// Read a `tokenizer.json`.
pub fn from_file(path: &Path) -> Result<Tokenizer, LoadError> {
    Tokenizer::from_file(path).map_err(|e| LoadError::Tokenizer(format!("{}: {e}", path.display())))
}

fn md<'a>(ct: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value, LoadError> {
    ct.metadata
        .get(key)
        .ok_or_else(|| LoadError::Tokenizer(format!("GGUF metadata has no `{key}`")))
}

fn strings(v: &gguf_file::Value, key: &str) -> Result<Vec<String>, LoadError> {
    let arr = v
        .to_vec()
        .map_err(|e| LoadError::Tokenizer(format!("`{key}`: {e}")))?;
    arr.iter()
        .map(|x| {
            x.to_string()
                .cloned()
                .map_err(|e| LoadError::Tokenizer(format!("`{key}`: {e}")))
        })
        .collect()
}

/// Rebuild a byte-level BPE tokenizer (`tokenizer.ggml.model = gpt2`, used by SmolLM, Qwen,
/// Llama 3 …) from GGUF metadata: vocabulary, merges and control tokens.
pub fn from_gguf(ct: &gguf_file::Content) -> Result<Tokenizer, LoadError> {
    let kind = md(ct, "tokenizer.ggml.model")?
        .to_string()
        .map_err(|e| LoadError::Tokenizer(e.to_string()))?
        .clone();
    if kind != "gpt2" {
        return Err(LoadError::Tokenizer(format!(
            "GGUF tokenizer type `{kind}` cannot be rebuilt; put a tokenizer.json beside the model file"
        )));
    }
    let tokens = strings(md(ct, "tokenizer.ggml.tokens")?, "tokenizer.ggml.tokens")?;
    let merges = strings(md(ct, "tokenizer.ggml.merges")?, "tokenizer.ggml.merges")?;
    let types: Vec<i32> = match ct.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| LoadError::Tokenizer(e.to_string()))?
            .iter()
            .map(|x| x.to_i32().unwrap_or(1))
            .collect(),
        None => Vec::new(),
    };
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .map(|m| {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| LoadError::Tokenizer(format!("malformed merge `{m}`")))?;
            Ok((a.to_string(), b.to_string()))
        })
        .collect::<Result<_, LoadError>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| LoadError::Tokenizer(format!("BPE from GGUF: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == GGUF_TOKEN_CONTROL)
        .map(|(i, _)| AddedToken::from(tokens[i].clone(), true))
        .collect();
    tok.add_special_tokens(specials)
        .map_err(|e| LoadError::Tokenizer(format!("special tokens from GGUF: {e}")))?;
    Ok(tok)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny byte-level BPE tokenizer built in memory, for tests that need one.
    pub fn tiny_tokenizer() -> Tokenizer {
        let mut vocab: tokenizers::models::bpe::Vocab = Default::default();
        // Every byte as a token, as byte-level BPE does, then a couple of merges.
        let bytes = ByteLevel::alphabet();
        let mut chars: Vec<char> = bytes.into_iter().collect();
        chars.sort();
        for (i, c) in chars.iter().enumerate() {
            vocab.insert(c.to_string(), i as u32);
        }
        let n = vocab.len() as u32;
        vocab.insert("he".into(), n);
        vocab.insert("<eos>".into(), n + 1);
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, vec![("h".into(), "e".into())])
            .build()
            .unwrap();
        let mut tok = Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        tok.add_special_tokens([AddedToken::from("<eos>", true)])
            .unwrap();
        tok
    }
}
