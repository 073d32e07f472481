//! Loading a GGUF file: header checks, family, metadata, tokenizer, chat template, weights.
use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use rbee_proto::ModelSummary;
use tokenizers::Tokenizer;

use super::{device, end_tokens, requantise, tokenizer, Family, LoadedModel, Network};
use crate::chat::{ChatTemplate, TemplateSource};
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

/// The family of the file, or a refusal naming its architecture and the supported ones.
pub fn family_of(ct: &gguf_file::Content, path: &Path) -> Result<Family, LoadError> {
    let arch = md_string(ct, "general.architecture").unwrap_or_else(|| "unknown".into());
    Family::from_arch(&arch).ok_or_else(|| LoadError::Unsupported {
        path: path.into(),
        reason: format!(
            "architecture `{arch}`; this worker runs {}",
            Family::supported()
        ),
    })
}

/// The context the worker offers: the file's, within what the implementation holds.
fn context_length(ct: &gguf_file::Content, family: Family) -> u32 {
    md_u32(ct, &format!("{}.context_length", family.name()))
        .map_or(2048, |n| n as usize)
        .min(family.max_context(ct)) as u32
}

/// What the file says about special tokens: the BOS to prepend (if the model wants one), the
/// ids that end generation, and the chat template (or why there is none).
struct Specials {
    bos: Option<u32>,
    eos_tokens: Vec<u32>,
    chat: Result<ChatTemplate, String>,
}

fn specials(ct: &gguf_file::Content, tok: &Tokenizer) -> Specials {
    let text_of = |key: &str| {
        md_u32(ct, key)
            .and_then(|id| tok.id_to_token(id))
            .unwrap_or_default()
    };
    // llama.cpp's default: SentencePiece vocabularies start with BOS, byte-level ones do not.
    let add_bos = ct
        .metadata
        .get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or_else(|| md_string(ct, "tokenizer.ggml.model").as_deref() == Some("llama"));
    let declared: Vec<u32> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
        .iter()
        .filter_map(|k| md_u32(ct, k))
        .collect();
    let chat = match md_string(ct, "tokenizer.chat_template") {
        Some(text) => ChatTemplate::new(
            text,
            TemplateSource::Gguf,
            text_of("tokenizer.ggml.bos_token_id"),
            text_of("tokenizer.ggml.eos_token_id"),
        ),
        None => Err(
            "this model has no chat template (no tokenizer.chat_template in the GGUF file): it \
             does completion only"
                .into(),
        ),
    };
    Specials {
        bos: if add_bos {
            md_u32(ct, "tokenizer.ggml.bos_token_id")
        } else {
            None
        },
        eos_tokens: end_tokens(tok, &declared),
        chat,
    }
}

/// Load a GGUF file (with an optional `tokenizer.json` beside it) onto `device`.
pub fn load(
    path: &Path,
    tokenizer_path: Option<&Path>,
    device: &Device,
    progress: &mut dyn FnMut(&str, f32),
) -> Result<LoadedModel, LoadError> {
    progress("reading header", 0.05);
    let started = std::time::Instant::now();
    super::guard::check_file(path).map_err(|e| LoadError::corrupt(path, e))?;
    let mut f = File::open(path).map_err(|e| {
        LoadError::Store(rbee_store::StoreError::NotFound(format!(
            "{}: {e}",
            path.display()
        )))
    })?;
    let mut ct = gguf_file::Content::read(&mut f).map_err(|e| LoadError::corrupt(path, e))?;
    let file_len = f.metadata().map(|m| m.len()).unwrap_or(0);
    check_not_truncated(&ct, file_len, path)?;
    let family = family_of(&ct, path)?;
    let name = md_string(&ct, "general.name").unwrap_or_else(|| {
        path.file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    });
    let context_length = context_length(&ct, family);
    // The implementations size their tables and caches from this key: give them the context
    // actually offered.
    ct.metadata.insert(
        format!("{}.context_length", family.name()),
        gguf_file::Value::U32(context_length),
    );
    progress("tokenizer", 0.1);
    let tokenizer = match tokenizer_path {
        Some(t) => tokenizer::from_file(t)?,
        None => tokenizer::from_gguf(&ct)?,
    };
    tracing::debug!(elapsed = ?started.elapsed(), vocab = tokenizer.get_vocab_size(true), "tokenizer built");
    let specials = specials(&ct, &tokenizer);
    progress("loading weights", 0.2);
    let keep = std::env::var_os("RBEE_WORKER_KEEP_QUANT").is_some();
    let own = family.own_decoder(&ct);
    let network = if device.is_cpu() && !keep && requantise::needed(&ct, own) {
        let (ct2, mut cursor) = requantise::requantise(&ct, &mut f, path, own)?;
        Network::from_gguf(family, ct2, &mut cursor, context_length as usize, device)
    } else {
        Network::from_gguf(family, ct, &mut f, context_length as usize, device)
    }
    .map_err(|e| LoadError::corrupt(path, e))?;
    tracing::debug!(elapsed = ?started.elapsed(), "weights loaded");
    progress("ready", 1.0);
    let summary = ModelSummary {
        name,
        architecture: family.name().into(),
        context_length,
        memory_bytes: file_len,
        device: device::name(device),
        family: family.name().into(),
        parallel: 1,
        chat_template: specials
            .chat
            .as_ref()
            .ok()
            .map(|t| t.source.as_str().into()),
    };
    Ok(LoadedModel {
        network,
        family,
        tokenizer: std::sync::Arc::new(tokenizer),
        eos_tokens: specials.eos_tokens,
        bos: specials.bos,
        chat: specials.chat,
        summary,
        device: device.clone(),
    })
}
