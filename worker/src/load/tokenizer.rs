//! Tokenizers: from a `tokenizer.json`, or rebuilt from the vocabulary a GGUF file embeds.
use std::path::Path;

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::Vocab;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{
    NormalizerWrapper, Prepend, Replace, Sequence as NormalizerSequence,
};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::LoadError;

/// GGUF token type of ordinary vocabulary pieces.
const GGUF_TOKEN_NORMAL: i32 = 1;
/// GGUF token type of control tokens (`<|im_start|>`, `</s>` …).
const GGUF_TOKEN_CONTROL: i32 = 3;
/// GGUF token type of tokens a model's authors added whole (Gemma's runs of newlines …).
const GGUF_TOKEN_USER_DEFINED: i32 = 4;

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

/// Rebuild the tokenizer a GGUF file describes: byte-level BPE (`tokenizer.ggml.model = gpt2`:
/// SmolLM, Qwen, Llama 3 …) or SentencePiece BPE (`llama`: Gemma, Phi-3, Llama 2, Mistral …).
pub fn from_gguf(ct: &gguf_file::Content) -> Result<Tokenizer, LoadError> {
    let kind = md(ct, "tokenizer.ggml.model")?
        .to_string()
        .map_err(|e| LoadError::Tokenizer(e.to_string()))?
        .clone();
    let tokens = strings(md(ct, "tokenizer.ggml.tokens")?, "tokenizer.ggml.tokens")?;
    let types: Vec<i32> = match ct.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| LoadError::Tokenizer(e.to_string()))?
            .iter()
            .map(|x| x.to_i32().unwrap_or(GGUF_TOKEN_NORMAL))
            .collect(),
        None => Vec::new(),
    };
    let mut tok = match kind.as_str() {
        "gpt2" => byte_level(ct, &tokens)?,
        "llama" => sentencepiece(ct, &tokens, &types)?,
        _ => {
            return Err(LoadError::Tokenizer(format!(
                "GGUF tokenizer type `{kind}` cannot be rebuilt (gpt2 and llama can); put a \
                 tokenizer.json beside the model file"
            )))
        }
    };
    add_gguf_specials(&mut tok, &tokens, &types)?;
    Ok(tok)
}

fn vocab_of(tokens: &[String]) -> Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect()
}

/// Byte-level BPE from the file's vocabulary and merges.
fn byte_level(ct: &gguf_file::Content, tokens: &[String]) -> Result<Tokenizer, LoadError> {
    let merges = strings(md(ct, "tokenizer.ggml.merges")?, "tokenizer.ggml.merges")?;
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
        .vocab_and_merges(vocab_of(tokens), merges)
        .build()
        .map_err(|e| LoadError::Tokenizer(format!("BPE from GGUF: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tok)
}

/// SentencePiece BPE: merges rebuilt from the pieces' scores (a piece made of two pieces is
/// merged with the priority of its score), bytes the vocabulary lacks fall back to `<0xNN>`
/// tokens, spaces are `▁`.
fn sentencepiece(
    ct: &gguf_file::Content,
    tokens: &[String],
    types: &[i32],
) -> Result<Tokenizer, LoadError> {
    let scores: Vec<f32> = match ct.metadata.get("tokenizer.ggml.scores") {
        Some(v) => v
            .to_vec()
            .map_err(|e| LoadError::Tokenizer(e.to_string()))?
            .iter()
            .map(|x| x.to_f32().unwrap_or(0.0))
            .collect(),
        None => vec![0.0; tokens.len()],
    };
    let vocab = vocab_of(tokens);
    let normal = |i: usize| types.get(i).is_none_or(|t| *t == GGUF_TOKEN_NORMAL);
    // (score of the merged piece, left id, right id)
    let mut merges: Vec<(f32, u32, u32)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate().filter(|(i, _)| normal(*i)) {
        for (cut, _) in piece.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (vocab.get(&piece[..cut]), vocab.get(&piece[cut..])) {
                if normal(l as usize) && normal(r as usize) {
                    merges.push((scores.get(i).copied().unwrap_or(0.0), l, r));
                }
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<(String, String)> = merges
        .into_iter()
        .map(|(_, l, r)| (tokens[l as usize].clone(), tokens[r as usize].clone()))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) =
        md_u32(ct, "tokenizer.ggml.unknown_token_id").and_then(|i| tokens.get(i as usize))
    {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = builder
        .build()
        .map_err(|e| LoadError::Tokenizer(format!("SentencePiece BPE from GGUF: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    let space = Replace::new(" ", "▁").map_err(|e| LoadError::Tokenizer(e.to_string()))?;
    let add_prefix = ct
        .metadata
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(true);
    let normalizer: NormalizerWrapper = if add_prefix {
        NormalizerSequence::new(vec![Prepend::new("▁".into()).into(), space.into()]).into()
    } else {
        space.into()
    };
    tok.with_normalizer(Some(normalizer))
        .map_err(|e| LoadError::Tokenizer(e.to_string()))?;
    let unspace = Replace::new("▁", " ").map_err(|e| LoadError::Tokenizer(e.to_string()))?;
    tok.with_decoder(Some(DecoderSequence::new(vec![
        unspace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ])));
    Ok(tok)
}

fn md_u32(ct: &gguf_file::Content, key: &str) -> Option<u32> {
    ct.metadata.get(key).and_then(|v| v.to_u32().ok())
}

/// Control tokens become special tokens (matched whole, hidden when decoding); user-defined
/// ones become added tokens matched whole in the raw text.
fn add_gguf_specials(
    tok: &mut Tokenizer,
    tokens: &[String],
    types: &[i32],
) -> Result<(), LoadError> {
    let of_type = |want: i32, special: bool| -> Vec<AddedToken> {
        types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == want)
            .map(|(i, _)| AddedToken::from(tokens[i].clone(), special).normalized(false))
            .collect()
    };
    tok.add_special_tokens(of_type(GGUF_TOKEN_CONTROL, true))
        .map_err(|e| LoadError::Tokenizer(format!("special tokens from GGUF: {e}")))?;
    tok.add_tokens(of_type(GGUF_TOKEN_USER_DEFINED, false))
        .map_err(|e| LoadError::Tokenizer(format!("user-defined tokens from GGUF: {e}")))?;
    Ok(())
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
