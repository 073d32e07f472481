//! Loading a safetensors model directory with candle's full-precision model of its family,
//! with its chat template from `chat_template.jinja` or `tokenizer_config.json`.
use std::path::Path;

use candle_core::{DType, Device};
use rbee_proto::ModelSummary;
use rbee_store::ModelFiles;
use tokenizers::Tokenizer;

use super::{device, end_tokens, tokenizer, Family, LoadedModel, Network};
use crate::chat::{ChatTemplate, TemplateSource};
use crate::error::LoadError;

fn read_json(path: &Path) -> Result<serde_json::Value, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::corrupt(path, e))?;
    serde_json::from_str(&text).map_err(|e| LoadError::corrupt(path, e))
}

/// A special token in tokenizer_config.json: a string, or an object with `content`.
fn token_text(v: &serde_json::Value) -> String {
    v.as_str()
        .or_else(|| v["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The template text in tokenizer_config.json: a string, or a list of named templates (the
/// one named `default`).
fn config_template(cfg: &serde_json::Value) -> Option<String> {
    let t = &cfg["chat_template"];
    t.as_str().map(str::to_string).or_else(|| {
        t.as_array()?
            .iter()
            .find(|x| x["name"] == "default")
            .and_then(|x| x["template"].as_str().map(str::to_string))
    })
}

/// The chat template of a directory: `chat_template.jinja` first (as transformers does), then
/// tokenizer_config.json.
fn chat_template(files: &ModelFiles) -> Result<ChatTemplate, String> {
    let cfg = files
        .extra("tokenizer_config.json")
        .and_then(|p| read_json(p).ok())
        .unwrap_or_default();
    let (bos, eos) = (token_text(&cfg["bos_token"]), token_text(&cfg["eos_token"]));
    if let Some(p) = files.extra("chat_template.jinja") {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        return ChatTemplate::new(text, TemplateSource::JinjaFile, bos, eos);
    }
    match config_template(&cfg) {
        Some(text) => ChatTemplate::new(text, TemplateSource::TokenizerConfig, bos, eos),
        None => Err(
            "this model has no chat template (neither chat_template.jinja nor a \
                     chat_template in tokenizer_config.json): it does completion only"
                .into(),
        ),
    }
}

/// The BOS the tokenizer puts before every text, if it does (its post-processor decides).
fn leading_bos(tok: &Tokenizer) -> Option<u32> {
    let empty = tok.encode("", true).ok()?;
    empty.get_ids().first().copied()
}

/// The family of a config.json (`model_type`), or a refusal naming it and the supported list.
fn family_of(raw: &serde_json::Value, config_path: &Path) -> Result<Family, LoadError> {
    let model_type = raw["model_type"].as_str().unwrap_or("");
    let arch = raw["architectures"][0].as_str().unwrap_or("");
    Family::from_model_type(model_type)
        .or_else(|| (arch == "LlamaForCausalLM").then_some(Family::Llama))
        .ok_or_else(|| LoadError::Unsupported {
            path: config_path.into(),
            reason: format!(
                "architecture `{arch}` / model_type `{model_type}`; this worker runs {}",
                Family::supported()
            ),
        })
}

/// Token ids in `v`: a number or a list of numbers.
fn ids(v: &serde_json::Value) -> Vec<u32> {
    match v {
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        v => v.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
    }
}

/// Load `config.json`, `tokenizer.json` and the weights onto `device`.
pub fn load(
    files: &ModelFiles,
    device: &Device,
    progress: &mut dyn FnMut(&str, f32),
) -> Result<LoadedModel, LoadError> {
    let ModelFiles::Safetensors {
        dir,
        config: config_path,
        tokenizer: tokenizer_path,
        weights,
        ..
    } = files
    else {
        unreachable!("safetensors::load is only called for directories")
    };
    progress("reading config", 0.05);
    let raw = read_json(config_path)?;
    let family = family_of(&raw, config_path)?;
    // Every id that ends a turn: config.json's and generation_config.json's.
    let mut declared = ids(&raw["eos_token_id"]);
    if let Some(gen) = files
        .extra("generation_config.json")
        .and_then(|p| read_json(p).ok())
    {
        declared.extend(ids(&gen["eos_token_id"]));
    }
    let context_length = raw["max_position_embeddings"].as_u64().unwrap_or(2048) as u32;
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
    let network = Network::from_safetensors(family, raw, vb, device)
        .map_err(|e| LoadError::corrupt(dir, e))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| family.name().into());
    progress("ready", 1.0);
    let chat = chat_template(files);
    let summary = ModelSummary {
        name,
        architecture: family.name().into(),
        context_length,
        memory_bytes: files.total_bytes(),
        device: device::name(device),
        family: family.name().into(),
        parallel: 1,
        chat_template: chat.as_ref().ok().map(|t| t.source.as_str().into()),
    };
    Ok(LoadedModel {
        network,
        family,
        eos_tokens: end_tokens(&tokenizer, &declared),
        bos: leading_bos(&tokenizer),
        tokenizer: std::sync::Arc::new(tokenizer),
        chat,
        summary,
        device: device.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::{message, Role};

    fn files_with(dir: &Path, extras: &[(&str, &str)]) -> ModelFiles {
        for (name, text) in extras {
            std::fs::write(dir.join(name), text).unwrap();
        }
        ModelFiles::Safetensors {
            dir: dir.into(),
            config: dir.join("config.json"),
            tokenizer: dir.join("tokenizer.json"),
            weights: vec![dir.join("model.safetensors")],
            extras: extras.iter().map(|(n, _)| dir.join(n)).collect(),
        }
    }

    #[test]
    fn templates_come_from_the_jinja_file_first_then_tokenizer_config() {
        let d = tempfile::tempdir().unwrap();
        let cfg = r#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>",
            "chat_template": [{"name": "tool_use", "template": "T"},
                              {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"}]}"#;
        let hi = [message(Role::User, "hi")];
        let t = chat_template(&files_with(d.path(), &[("tokenizer_config.json", cfg)])).unwrap();
        assert_eq!(t.source, TemplateSource::TokenizerConfig);
        assert_eq!(t.render(&hi, true).unwrap(), "<s>hi</s>");
        let both = files_with(
            d.path(),
            &[
                ("tokenizer_config.json", cfg),
                ("chat_template.jinja", "[{{ messages[0].role }}]"),
            ],
        );
        let t = chat_template(&both).unwrap();
        assert_eq!(t.source, TemplateSource::JinjaFile);
        assert_eq!(t.render(&hi, true).unwrap(), "[user]");
    }

    #[test]
    fn a_directory_without_a_template_says_it_does_completion_only() {
        let d = tempfile::tempdir().unwrap();
        let e =
            chat_template(&files_with(d.path(), &[("tokenizer_config.json", "{}")])).unwrap_err();
        assert!(
            e.contains("no chat template") && e.contains("completion only"),
            "{e}"
        );
    }
}
