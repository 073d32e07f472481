//! Every family in the table, through the real loader, on tiny random-weight GGUF files built
//! here with the tensor names and metadata that family's files carry (no small real model of
//! qwen2, qwen3 or phi3 ships in a registry). Checks: the file loads as its family, decoding
//! token by token with the KV cache gives the logits of a full recompute, and an architecture
//! outside the table is refused naming it and the supported list. Qwen2 and Qwen3 run batched
//! in the real worker binary like llama: seeded requests give the same text alone or together.
mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rbee_proto::{ErrorCode, SamplingParams};
use rbee_worker::chat::{message, Role};
use rbee_worker::load::{self, Family, LoadedModel};
use rbee_worker::Engine;

const DIM: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = DIM / HEADS;
const FF: usize = 128;
const LAYERS: usize = 2;

/// A byte-level BPE vocabulary: the 256 byte characters, one merge, and control tokens.
fn vocab() -> (Vec<String>, Vec<i32>) {
    let mut chars: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    chars.sort();
    let mut tokens: Vec<String> = chars.iter().map(|c| c.to_string()).collect();
    let mut types = vec![1; tokens.len()];
    tokens.push("he".into());
    types.push(1);
    for special in ["<s>", "</s>", "<|im_end|>"] {
        tokens.push(special.into());
        types.push(3);
    }
    (tokens, types)
}

/// Deterministic small weights of `shape` (candle order: rows, cols).
fn weights(shape: &[usize], seed: u64) -> QTensor {
    let n: usize = shape.iter().product();
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let data: Vec<f32> = (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
        })
        .collect();
    let t = Tensor::from_vec(data, shape, &Device::Cpu).unwrap();
    QTensor::quantize(&t, GgmlDType::F32).unwrap()
}

fn ones(n: usize) -> QTensor {
    let t = Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap();
    QTensor::quantize(&t, GgmlDType::F32).unwrap()
}

/// Tensor names and shapes of one block of `family`.
fn block(family: Family) -> Vec<(&'static str, Vec<usize>)> {
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    let mut t = vec![
        ("attn_norm.weight", vec![DIM]),
        ("ffn_norm.weight", vec![DIM]),
        ("attn_output.weight", vec![DIM, q]),
        ("ffn_down.weight", vec![DIM, FF]),
    ];
    match family {
        Family::Phi3 => {
            t.push(("attn_qkv.weight", vec![q + 2 * kv, DIM]));
            t.push(("ffn_up.weight", vec![2 * FF, DIM]));
        }
        _ => {
            t.extend([
                ("attn_q.weight", vec![q, DIM]),
                ("attn_k.weight", vec![kv, DIM]),
                ("attn_v.weight", vec![kv, DIM]),
                ("ffn_gate.weight", vec![FF, DIM]),
                ("ffn_up.weight", vec![FF, DIM]),
            ]);
        }
    }
    match family {
        Family::Qwen2 => t.extend([
            ("attn_q.bias", vec![q]),
            ("attn_k.bias", vec![kv]),
            ("attn_v.bias", vec![kv]),
        ]),
        Family::Qwen3 => t.extend([
            ("attn_q_norm.weight", vec![HEAD_DIM]),
            ("attn_k_norm.weight", vec![HEAD_DIM]),
        ]),
        Family::Gemma3 => t.extend([
            ("attn_q_norm.weight", vec![HEAD_DIM]),
            ("attn_k_norm.weight", vec![HEAD_DIM]),
            ("post_attention_norm.weight", vec![DIM]),
            ("post_ffw_norm.weight", vec![DIM]),
        ]),
        Family::Llama | Family::Phi3 => {}
    }
    t
}

/// Write a tiny model of `arch` (a family's name, or any other architecture) to `dir`.
fn tiny_gguf(dir: &Path, arch: &str, family: Family) -> PathBuf {
    tiny_gguf_with(dir, arch, family, None, 256)
}

/// [`tiny_gguf`] with a chat template in its metadata.
fn tiny_gguf_with(
    dir: &Path,
    arch: &str,
    family: Family,
    template: Option<&str>,
    context: u32,
) -> PathBuf {
    let (tokens, types) = vocab();
    let vocab_len = tokens.len();
    let a = |k: &str| format!("{arch}.{k}");
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(format!("tiny-{arch}"))),
        (a("context_length"), Value::U32(context)),
        (a("embedding_length"), Value::U32(DIM as u32)),
        (a("block_count"), Value::U32(LAYERS as u32)),
        (a("feed_forward_length"), Value::U32(FF as u32)),
        (a("attention.head_count"), Value::U32(HEADS as u32)),
        (a("attention.head_count_kv"), Value::U32(KV_HEADS as u32)),
        (a("attention.key_length"), Value::U32(HEAD_DIM as u32)),
        (a("attention.value_length"), Value::U32(HEAD_DIM as u32)),
        (a("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (a("attention.sliding_window"), Value::U32(6)),
        (a("rope.dimension_count"), Value::U32(HEAD_DIM as u32)),
        (a("rope.freq_base"), Value::F32(10_000.0)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().cloned().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.iter().map(|t| Value::I32(*t)).collect()),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(vec![Value::String("h e".into())]),
        ),
        (
            "tokenizer.ggml.bos_token_id".into(),
            Value::U32(vocab_len as u32 - 3),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(vocab_len as u32 - 2),
        ),
    ];
    md.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)));
    if let Some(t) = template {
        md.push(("tokenizer.chat_template".into(), Value::String(t.into())));
    }
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), weights(&[vocab_len, DIM], 1)),
        ("output_norm.weight".into(), ones(DIM)),
        ("output.weight".into(), weights(&[vocab_len, DIM], 2)),
    ];
    for layer in 0..LAYERS {
        for (i, (name, shape)) in block(family).into_iter().enumerate() {
            let t = if shape.len() == 1 && name.contains("norm") {
                ones(shape[0])
            } else {
                weights(&shape, (layer * 100 + i) as u64 + 3)
            };
            tensors.push((format!("blk.{layer}.{name}"), t));
        }
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let path = dir.join(format!("tiny-{arch}.gguf"));
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
    path
}

fn load(path: &Path) -> LoadedModel {
    load::load_ref(path.to_str().unwrap(), "cpu", &mut |_, _| {})
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn every_family_loads_and_decodes_incrementally_like_a_full_recompute() {
    let dir = tempfile::tempdir().unwrap();
    for family in Family::ALL {
        let path = tiny_gguf(dir.path(), family.name(), family);
        let mut m = load(&path);
        assert_eq!(m.family, family);
        assert_eq!(m.summary.architecture, family.name());
        assert_eq!(m.summary.name, format!("tiny-{}", family.name()));
        assert_eq!(m.summary.context_length, 256, "{}", family.name());
        // BOS first (add_bos_token), then "hello world, hello bees" in byte-level tokens.
        let mut ids = vec![m.bos.expect("add_bos_token is set")];
        ids.extend(
            m.tokenizer
                .encode("hello world, hello bees", false)
                .unwrap()
                .get_ids(),
        );
        assert!(
            ids.len() > 12,
            "long enough to cross gemma3's sliding window of 8"
        );
        let full = m.forward(&ids, 0).unwrap();
        m.reset().unwrap();
        // Prompts shorter and longer than gemma3's sliding window of 6, then token by token.
        for split in [5, 9] {
            m.reset().unwrap();
            let mut last = m.forward(&ids[..split], 0).unwrap();
            for (pos, id) in ids.iter().enumerate().skip(split) {
                last = m.forward(&[*id], pos).unwrap();
            }
            let d = max_abs_diff(&full, &last);
            let name = family.name();
            assert!(
                d < 1e-3,
                "{name}: incremental after {split} differs from full by {d}"
            );
        }
        // A second prompt after reset starts clean.
        m.reset().unwrap();
        let again = m.forward(&ids, 0).unwrap();
        assert!(max_abs_diff(&full, &again) < 1e-5, "{}", family.name());
        assert!(m.eos_tokens.contains(&(ids[0] + 1)), "</s> ends generation");
        assert!(m.chat.is_err(), "no template in the file");
    }
}

#[test]
fn other_architectures_are_refused_naming_them_and_the_supported_list() {
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf(dir.path(), "falcon", Family::Llama);
    let e = load::load_ref(path.to_str().unwrap(), "cpu", &mut |_, _| {})
        .err()
        .unwrap()
        .to_string();
    assert!(e.starts_with("unsupported model"), "{e}");
    assert!(
        e.contains("architecture `falcon`; this worker runs llama, qwen2, qwen3, gemma3, phi3"),
        "{e}"
    );
}

#[test]
fn a_template_that_fails_is_a_clear_error_and_the_engine_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let template = "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}\
        {{ raise_exception('System role not supported') }}{% endif %}{{ m.content }}{% endfor %}";
    let path = tiny_gguf_with(dir.path(), "llama", Family::Llama, Some(template), 256);
    let mut engine = Engine::new(load(&path));
    assert_eq!(engine.model.chat_template_source(), Some("gguf"));
    let params = SamplingParams {
        temperature: 0.0,
        max_tokens: 3,
        ..Default::default()
    };
    let sys = [message(Role::System, "be brief"), message(Role::User, "hi")];
    let e = engine
        .chat(&sys, &params, &|| None, &mut |_| {})
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::BadRequest);
    let text = e.to_string();
    assert!(text.contains("System role not supported"), "{text}");
    assert!(text.contains("chat template (gguf)"), "{text}");
    // The same engine still answers: a chat the template accepts, and a completion.
    let ok = [message(Role::User, "hello")];
    // The template writes the BOS itself: it is not added a second time.
    let rendered = engine.render_chat(&ok).unwrap();
    assert_eq!(rendered, "<s>hello");
    let ids = engine.prompt_tokens(&rendered).unwrap();
    assert_eq!(
        ids.iter().filter(|&&t| Some(t) == engine.model.bos).count(),
        1,
        "{ids:?}"
    );
    let (_, usage) = engine.chat(&ok, &params, &|| None, &mut |_| {}).unwrap();
    assert_eq!(usage.prompt_tokens as usize, ids.len());
    let (_, usage) = engine
        .generate("hello", &params, &|| None, &mut |_| {})
        .unwrap();
    assert_eq!(
        usage.prompt_tokens as usize,
        ids.len(),
        "BOS added once to a completion too"
    );
}

/// A config.json every family's config reader accepts (each takes the fields it knows).
fn tiny_config(model_type: &str, vocab_len: usize) -> serde_json::Value {
    // Gemma 3's sliding layers see 6 positions, fewer than the test sequence; Qwen's window is
    // off (`use_sliding_window: false`) and as large as the context, as in their real configs.
    let window = if model_type.starts_with("gemma") {
        6
    } else {
        256
    };
    serde_json::json!({
        "model_type": model_type,
        "vocab_size": vocab_len, "hidden_size": DIM, "intermediate_size": FF,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM, "attention_bias": false, "max_position_embeddings": 256,
        "sliding_window": window, "sliding_window_pattern": 2, "max_window_layers": LAYERS,
        "use_sliding_window": false, "tie_word_embeddings": false, "rope_theta": 10000.0,
        "rope_local_base_freq": 10000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu",
        "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": HEAD_DIM,
        "final_logit_softcapping": null, "attn_logit_softcapping": null, "rope_scaling": null,
        "bos_token_id": vocab_len - 3, "eos_token_id": vocab_len - 2,
    })
}

/// The byte-level tokenizer of [`vocab`] as a tokenizer.json, BOS added by its post-processor.
fn tiny_tokenizer_json(path: &Path) {
    use tokenizers::models::bpe::BPE;
    use tokenizers::processors::template::TemplateProcessing;
    let (tokens, types) = vocab();
    let v: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(v, vec![("h".into(), "e".into())])
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(
        tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true),
    ));
    tok.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    let specials: Vec<tokenizers::AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| **t == 3)
        .map(|(s, _)| tokenizers::AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(specials).unwrap();
    let bos = (tokens.len() - 3) as u32;
    tok.with_post_processor(Some(
        TemplateProcessing::builder()
            .try_single("<s> $A")
            .unwrap()
            .special_tokens(vec![("<s>", bos)])
            .build()
            .unwrap(),
    ));
    tok.save(path, false).unwrap();
}

/// A safetensors directory of `family` with random weights under its real tensor names (the
/// names come from building candle's model of that family on a VarMap).
fn tiny_safetensors(root: &Path, family: Family) -> PathBuf {
    let dir = root.join(format!("tiny-{}", family.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let vocab_len = vocab().0.len();
    let model_type = if family == Family::Gemma3 {
        "gemma3_text"
    } else {
        family.name()
    };
    let config = tiny_config(model_type, vocab_len);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    tiny_tokenizer_json(&dir.join("tokenizer.json"));
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu);
    load::Network::from_safetensors(family, config, vb, &Device::Cpu).unwrap();
    for (i, (name, var)) in varmap.data().lock().unwrap().iter().enumerate() {
        let shape = var.shape().dims().to_vec();
        let fresh = if name.contains("norm") {
            Tensor::ones(shape.as_slice(), candle_core::DType::F32, &Device::Cpu).unwrap()
        } else {
            weights(&shape, i as u64 + 7)
                .dequantize(&Device::Cpu)
                .unwrap()
        };
        var.set(&fresh).unwrap();
    }
    varmap.save(dir.join("model.safetensors")).unwrap();
    dir
}

#[test]
fn every_family_loads_from_safetensors_and_decodes_incrementally_like_a_full_recompute() {
    let root = tempfile::tempdir().unwrap();
    for family in Family::ALL {
        let dir = tiny_safetensors(root.path(), family);
        let mut m = load(&dir);
        assert_eq!(m.family, family);
        assert_eq!(m.summary.family, family.name());
        assert_eq!(m.summary.chat_template, None);
        let bos = m.bos.expect("the tokenizer's post-processor adds <s>");
        let ids: Vec<u32> = std::iter::once(bos)
            .chain(
                m.tokenizer
                    .encode("hello world, hello bees", false)
                    .unwrap()
                    .get_ids()
                    .iter()
                    .copied(),
            )
            .collect();
        let full = m.forward(&ids, 0).unwrap();
        m.reset().unwrap();
        for split in [4, 9] {
            m.reset().unwrap();
            let mut last = m.forward(&ids[..split], 0).unwrap();
            for (pos, id) in ids.iter().enumerate().skip(split) {
                last = m.forward(&[*id], pos).unwrap();
            }
            let d = max_abs_diff(&full, &last);
            let name = family.name();
            assert!(
                d < 1e-3,
                "{name}: incremental after {split} differs from full by {d}"
            );
        }
        assert!(m.eos_tokens.contains(&(bos + 1)), "{}", family.name());
    }
    // A model_type outside the table is refused naming it.
    let dir = root.path().join("tiny-falcon");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        tiny_config("falcon", 10).to_string(),
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    std::fs::write(dir.join("model.safetensors"), "").unwrap();
    let e = load::load_ref(dir.to_str().unwrap(), "cpu", &mut |_, _| {})
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model_type `falcon`; this worker runs llama, qwen2"),
        "{e}"
    );
}

#[test]
fn a_huge_phi3_context_is_held_to_what_the_implementation_can_allocate() {
    // Phi-3-mini-128k claims 131 072 positions; candle's phi3 would allocate its KV cache for all
    // of them at the first token.
    let dir = tempfile::tempdir().unwrap();
    let path = tiny_gguf_with(dir.path(), "phi3", Family::Phi3, None, 131_072);
    let mut m = load(&path);
    assert_eq!(m.summary.context_length, 4096);
    let ids = m
        .tokenizer
        .encode("hello", false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_eq!(m.forward(&ids, 0).unwrap().dims(), &[vocab().0.len()]);
}

/// candle's own quantized network of `family` on `path`, for comparison.
fn candle_logits(family: Family, path: &Path, ids: &[u32]) -> (Tensor, Tensor) {
    use candle_transformers::models::{quantized_llama, quantized_qwen2, quantized_qwen3};
    let mut f = std::fs::File::open(path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let dev = Device::Cpu;
    let input = |ids: &[u32]| Tensor::new(ids, &dev).unwrap().unsqueeze(0).unwrap();
    let split = ids.len() / 2;
    macro_rules! run {
        ($m:expr) => {{
            let mut m = $m;
            let full = m.forward(&input(ids), 0).unwrap();
            m.clear_kv_cache();
            let mut last = m.forward(&input(&ids[..split]), 0).unwrap();
            for (pos, id) in ids.iter().enumerate().skip(split) {
                last = m.forward(&input(&[*id]), pos).unwrap();
            }
            (full.flatten_all().unwrap(), last.flatten_all().unwrap())
        }};
    }
    match family {
        Family::Llama => run!(quantized_llama::ModelWeights::from_gguf(ct, &mut f, &dev).unwrap()),
        Family::Qwen2 => run!(quantized_qwen2::ModelWeights::from_gguf(ct, &mut f, &dev).unwrap()),
        Family::Qwen3 => run!(quantized_qwen3::ModelWeights::from_gguf(ct, &mut f, &dev).unwrap()),
        _ => unreachable!(),
    }
}

#[test]
fn rbee_dense_decoder_gives_candles_logits_for_llama_qwen2_qwen3() {
    let dir = tempfile::tempdir().unwrap();
    for family in [Family::Llama, Family::Qwen2, Family::Qwen3] {
        let path = tiny_gguf(dir.path(), family.name(), family);
        let mut m = load(&path);
        assert!(
            matches!(m.network, load::Network::Llama(_)),
            "{}",
            family.name()
        );
        let ids: Vec<u32> = m
            .tokenizer
            .encode("hello world, hello bees", false)
            .unwrap()
            .get_ids()
            .to_vec();
        let (want_full, want_last) = candle_logits(family, &path, &ids);
        m.reset().unwrap();
        let full = m.forward(&ids, 0).unwrap();
        m.reset().unwrap();
        let split = ids.len() / 2;
        let mut last = m.forward(&ids[..split], 0).unwrap();
        for (pos, id) in ids.iter().enumerate().skip(split) {
            last = m.forward(&[*id], pos).unwrap();
        }
        let (d_full, d_last) = (
            max_abs_diff(&full, &want_full),
            max_abs_diff(&last, &want_last),
        );
        // candle's qwen3 computes its rotary frequencies in f64, the others in f32 as rbee
        // does: 5e-4 apart on qwen3, under 1e-4 on llama and qwen2.
        assert!(
            d_full < 1e-3 && d_last < 1e-3,
            "{}: {d_full} {d_last}",
            family.name()
        );
    }
}

/// Qwen2 and Qwen3 take the batched forward too (SmolLM2 covers llama in batching.rs): the real
/// worker binary reports three slots, and three seeded requests sent at once give the texts
/// they give one at a time.
#[test]
fn qwen2_and_qwen3_batch_and_give_the_same_text_alone_or_together() {
    use rbee_proto::worker::{FromWorker, ToWorker};
    let dir = tempfile::tempdir().unwrap();
    for (arch, family) in [("qwen2", Family::Qwen2), ("qwen3", Family::Qwen3)] {
        let path = tiny_gguf(dir.path(), arch, family);
        let mut w = common::Proto::start_on(&path, &["--parallel", "3"]);
        let ready = w.ready_summary();
        assert_eq!(
            (ready.family.as_str(), ready.parallel),
            (arch, 3),
            "{ready:?}"
        );
        let prompts = ["hello there", "he he he", "a b c d e f"];
        let params = |seed: u64| SamplingParams {
            temperature: 0.9,
            max_tokens: 12,
            seed,
            ignore_eos: true,
            ..Default::default()
        };
        let send = |w: &mut common::Proto, id: u64, i: usize| {
            w.send(&ToWorker::Generate {
                id,
                prompt: prompts[i].into(),
                params: params(i as u64 + 1),
                deadline: None,
            });
        };
        let mut alone = Vec::new();
        for i in 0..3 {
            send(&mut w, i as u64, i);
            let (text, end) = w.collect(i as u64);
            assert!(matches!(end, FromWorker::Done { .. }), "{arch}: {end:?}");
            alone.push(text);
        }
        for i in 0..3 {
            send(&mut w, 10 + i as u64, i);
        }
        let mut together = vec![String::new(); 3];
        let mut ended = 0;
        while ended < 3 {
            match w.next() {
                FromWorker::Token { id, text } => together[(id - 10) as usize].push_str(&text),
                FromWorker::Done { .. } => ended += 1,
                other => panic!("{arch}: unexpected {other:?}"),
            }
        }
        assert!(alone.iter().all(|t| !t.is_empty()), "{arch}: {alone:?}");
        assert_eq!(alone, together, "{arch}: batched text differs from alone");
    }
}
