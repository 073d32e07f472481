//! Gemma 3 from a GGUF file, written for rbee.
//!
//! candle-transformers 0.11.1 has a quantized gemma3, but it gates the MLP with SiLU where Gemma
//! uses GELU (tanh), stops masking the sliding window once decoding goes token by token, and
//! precomputes rotary tables for 131 072 positions in every layer (2.4 GB for an 18-layer model).
//! This one follows the architecture: embeddings scaled by √dim; per block RMS norms before and
//! after attention and MLP; per-head RMS norms on queries and keys; NeoX rotary embeddings with
//! the local base on sliding layers and the global base on every `sliding_window_type`-th; a
//! GELU-gated MLP; sliding layers see only the last `sliding_window` positions, in the prompt pass
//! and while decoding alike; the output projection tied to the embeddings unless the file has its
//! own.
use std::io::{Read, Seek};

use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{DType, Device, Module, Tensor};

use super::attention::{attend, one_at_a_time, KvCache};

/// Layers `n·type − 1` attend globally; the others through the sliding window.
const DEFAULT_SLIDING_WINDOW_TYPE: usize = 6;
const DEFAULT_ROPE_BASE: f32 = 1_000_000.0;
const DEFAULT_ROPE_BASE_LOCAL: f32 = 10_000.0;

/// Precomputed rotary tables for one base.
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(
        head_dim: usize,
        base: f32,
        positions: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let inv: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / base.powf(2.0 * i as f32 / head_dim as f32))
            .collect();
        let inv = Tensor::new(inv.as_slice(), device)?.reshape((1, head_dim / 2))?;
        let pos = Tensor::arange(0u32, positions as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((positions, 1))?;
        let angles = pos.matmul(&inv)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }

    /// Rotate `x` (`[b, heads, t, d]`) for positions `pos..pos + t`.
    fn apply(&self, x: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        let t = x.dim(2)?;
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)
    }
}

/// One transformer block and its KV cache.
struct Block {
    attn_norm: Tensor,
    q: QMatMul,
    k: QMatMul,
    v: QMatMul,
    q_norm: Tensor,
    k_norm: Tensor,
    out: QMatMul,
    post_attn_norm: Tensor,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    post_ffn_norm: Tensor,
    /// `Some(w)`: attends to the last `w` positions only.
    window: Option<usize>,
    global_rope: bool,
    /// Keys and values of the positions this block can still attend to.
    cache: Option<KvCache>,
}

/// Shapes and constants every block shares.
struct Dims {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
    scale: f64,
}

/// Gemma 3's network from a GGUF file.
pub struct Gemma3 {
    embed: Tensor,
    embed_scale: f64,
    blocks: Vec<Block>,
    norm: Tensor,
    output: QMatMul,
    dims: Dims,
    rope_local: Rope,
    rope_global: Rope,
}

fn md_u32(ct: &gguf_file::Content, key: &str) -> candle_core::Result<u32> {
    ct.metadata
        .get(&format!("gemma3.{key}"))
        .ok_or_else(|| candle_core::Error::msg(format!("GGUF metadata has no `gemma3.{key}`")))?
        .to_u32()
}

fn md_f32(ct: &gguf_file::Content, key: &str) -> Option<f32> {
    ct.metadata
        .get(&format!("gemma3.{key}"))
        .and_then(|v| v.to_f32().ok())
}

impl Block {
    fn attention(
        &mut self,
        x: &Tensor,
        pos: usize,
        rope: &Rope,
        d: &Dims,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let heads = |m: &QMatMul, n: usize| -> candle_core::Result<Tensor> {
            m.forward(x)?.reshape((b, t, n, d.head_dim))
        };
        let q = candle_nn::ops::rms_norm(&heads(&self.q, d.heads)?, &self.q_norm, d.eps)?;
        let k = candle_nn::ops::rms_norm(&heads(&self.k, d.kv_heads)?, &self.k_norm, d.eps)?;
        let v = heads(&self.v, d.kv_heads)?.transpose(1, 2)?;
        let q = rope.apply(&q.transpose(1, 2)?, pos)?;
        let k = rope.apply(&k.transpose(1, 2)?, pos)?;
        let y = attend(
            &q,
            &k,
            &v,
            &mut self.cache,
            self.window,
            pos,
            (d.heads, d.kv_heads, d.head_dim, d.scale),
        )?;
        self.out.forward(&y)
    }

    fn forward(
        &mut self,
        x: &Tensor,
        pos: usize,
        rope: &Rope,
        d: &Dims,
    ) -> candle_core::Result<Tensor> {
        let h = candle_nn::ops::rms_norm(x, &self.attn_norm, d.eps)?;
        let h = self.attention(&h, pos, rope, d)?;
        let x = (x + candle_nn::ops::rms_norm(&h, &self.post_attn_norm, d.eps)?)?;
        let h = candle_nn::ops::rms_norm(&x, &self.ffn_norm, d.eps)?;
        let h = (self.gate.forward(&h)?.gelu()? * self.up.forward(&h)?)?;
        let h = self.down.forward(&h)?;
        x + candle_nn::ops::rms_norm(&h, &self.post_ffn_norm, d.eps)?
    }
}

/// The hyper-parameters of a Gemma 3 model, from GGUF metadata or config.json.
pub struct Shape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Blocks.
    pub layers: usize,
    /// Width of the residual stream.
    pub dim: usize,
    /// Positions a sliding layer sees.
    pub window: usize,
    /// Every `every`-th layer is global.
    pub every: usize,
    /// RMS norm epsilon.
    pub eps: f32,
    /// Rotary base of global layers.
    pub rope_base: f32,
    /// Rotary base of sliding layers.
    pub rope_base_local: f32,
    /// Attention scores are multiplied by `1/√query_pre_attn_scalar`.
    pub query_pre_attn_scalar: f64,
}

/// Where the weights come from, under GGUF names (`blk.N.attn_q`, `output_norm` …).
pub trait Weights {
    /// A projection matrix.
    fn matmul(&mut self, name: &str) -> candle_core::Result<QMatMul>;
    /// A norm's weight, as the model multiplies by it (GGUF files store Gemma's `1 + w`).
    fn norm(&mut self, name: &str) -> candle_core::Result<Tensor>;
    /// The embedding table (for lookups) and the output projection (tied to it unless the
    /// model has its own).
    fn embedding(&mut self) -> candle_core::Result<(Tensor, QMatMul)>;
}

/// Weights read from a GGUF file.
struct GgufWeights<'a, R> {
    ct: &'a gguf_file::Content,
    r: &'a mut R,
    device: &'a Device,
}

impl<R: Read + Seek> Weights for GgufWeights<'_, R> {
    fn matmul(&mut self, name: &str) -> candle_core::Result<QMatMul> {
        QMatMul::from_qtensor(
            self.ct
                .tensor(self.r, &format!("{name}.weight"), self.device)?,
        )
    }
    fn norm(&mut self, name: &str) -> candle_core::Result<Tensor> {
        self.ct
            .tensor(self.r, &format!("{name}.weight"), self.device)?
            .dequantize(self.device)
    }
    fn embedding(&mut self) -> candle_core::Result<(Tensor, QMatMul)> {
        let q = self.ct.tensor(self.r, "token_embd.weight", self.device)?;
        let table = q.dequantize_f16(self.device)?;
        let output = match self.ct.tensor(self.r, "output.weight", self.device) {
            Ok(t) => QMatMul::from_qtensor(t)?,
            Err(_) => QMatMul::from_qtensor(q)?,
        };
        Ok((table, output))
    }
}

/// Weights of a safetensors directory, under the transformers names.
pub struct HfWeights<'a> {
    /// The mapped files.
    pub vb: candle_nn::VarBuilder<'a>,
    /// Whether `lm_head.weight` exists (else the output is tied to the embeddings).
    pub own_output: bool,
    /// The vocabulary size.
    pub vocab: usize,
    /// Width of the MLP.
    pub ff: usize,
    /// The model's shape (every tensor's size follows from it).
    pub shape: &'a Shape,
}

impl HfWeights<'_> {
    /// The size of the tensor a GGUF-style `name` stands for.
    fn dims(&self, name: &str) -> Vec<usize> {
        let s = self.shape;
        let (q, kv) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
        match name.rsplit('.').next().unwrap_or(name) {
            "attn_q" => vec![q, s.dim],
            "attn_k" | "attn_v" => vec![kv, s.dim],
            "attn_output" => vec![s.dim, q],
            "ffn_gate" | "ffn_up" => vec![self.ff, s.dim],
            "ffn_down" => vec![s.dim, self.ff],
            "attn_q_norm" | "attn_k_norm" => vec![s.head_dim],
            _ => vec![s.dim],
        }
    }

    fn get(&self, name: &str) -> candle_core::Result<Tensor> {
        let hf = format!("{}.weight", hf_name(name));
        self.vb.get(self.dims(name), &hf)?.to_dtype(DType::F32)
    }
}

/// The transformers name of a GGUF-style Gemma 3 tensor name.
fn hf_name(name: &str) -> String {
    let Some(rest) = name.strip_prefix("blk.") else {
        return "model.norm".into();
    };
    let (layer, part) = rest.split_once('.').unwrap_or((rest, ""));
    let part = match part {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "post_attention_norm" => "post_attention_layernorm",
        "ffn_norm" => "pre_feedforward_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "post_ffw_norm" => "post_feedforward_layernorm",
        other => other,
    };
    format!("model.layers.{layer}.{part}")
}

impl Weights for HfWeights<'_> {
    fn matmul(&mut self, name: &str) -> candle_core::Result<QMatMul> {
        Ok(QMatMul::Tensor(self.get(name)?))
    }
    fn norm(&mut self, name: &str) -> candle_core::Result<Tensor> {
        // transformers' Gemma norms multiply by `1 + w`; GGUF files store the sum.
        self.get(name)? + 1.0
    }
    fn embedding(&mut self) -> candle_core::Result<(Tensor, QMatMul)> {
        let size = (self.vocab, self.shape.dim);
        let table = self
            .vb
            .get(size, "model.embed_tokens.weight")?
            .to_dtype(DType::F32)?;
        let output = if self.own_output {
            self.vb.get(size, "lm_head.weight")?.to_dtype(DType::F32)?
        } else {
            table.clone()
        };
        Ok((table, QMatMul::Tensor(output)))
    }
}

impl Shape {
    /// The shape a GGUF file's `gemma3.*` metadata describes.
    pub fn from_gguf(ct: &gguf_file::Content) -> candle_core::Result<Self> {
        let head_dim = md_u32(ct, "attention.key_length")? as usize;
        Ok(Self {
            heads: md_u32(ct, "attention.head_count")? as usize,
            kv_heads: md_u32(ct, "attention.head_count_kv")? as usize,
            head_dim,
            layers: md_u32(ct, "block_count")? as usize,
            dim: md_u32(ct, "embedding_length")? as usize,
            window: md_u32(ct, "attention.sliding_window")? as usize,
            every: md_u32(ct, "attention.sliding_window_type")
                .map_or(DEFAULT_SLIDING_WINDOW_TYPE, |n| n as usize),
            eps: md_f32(ct, "attention.layer_norm_rms_epsilon").unwrap_or(1e-6),
            rope_base: md_f32(ct, "rope.freq_base").unwrap_or(DEFAULT_ROPE_BASE),
            rope_base_local: md_f32(ct, "rope.local_freq_base").unwrap_or(DEFAULT_ROPE_BASE_LOCAL),
            query_pre_attn_scalar: head_dim as f64,
        })
    }

    /// The shape a transformers config.json describes.
    pub fn from_config(c: &serde_json::Value) -> candle_core::Result<Self> {
        let n = |k: &str| {
            c[k].as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| candle_core::Error::msg(format!("config.json has no `{k}`")))
        };
        let f = |k: &str, d: f64| c[k].as_f64().unwrap_or(d);
        let head_dim = n("head_dim")?;
        Ok(Self {
            heads: n("num_attention_heads")?,
            kv_heads: n("num_key_value_heads")?,
            head_dim,
            layers: n("num_hidden_layers")?,
            dim: n("hidden_size")?,
            window: n("sliding_window")?,
            every: n("sliding_window_pattern").unwrap_or(DEFAULT_SLIDING_WINDOW_TYPE),
            eps: f("rms_norm_eps", 1e-6) as f32,
            rope_base: f("rope_theta", DEFAULT_ROPE_BASE as f64) as f32,
            rope_base_local: f("rope_local_base_freq", DEFAULT_ROPE_BASE_LOCAL as f64) as f32,
            query_pre_attn_scalar: f("query_pre_attn_scalar", head_dim as f64),
        })
    }
}

impl Gemma3 {
    /// Read the network from a GGUF file; `positions` bounds the rotary tables (the context).
    pub fn from_gguf<R: Read + Seek>(
        ct: &gguf_file::Content,
        r: &mut R,
        positions: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let shape = Shape::from_gguf(ct)?;
        Self::build(
            &shape,
            &mut GgufWeights { ct, r, device },
            positions,
            device,
        )
    }

    /// Build the network of `shape` from `w`; `positions` bounds the rotary tables.
    pub fn build(
        shape: &Shape,
        w: &mut dyn Weights,
        positions: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let (embed, output) = w.embedding()?;
        let mut blocks = Vec::with_capacity(shape.layers);
        for i in 0..shape.layers {
            let n = |part: &str| format!("blk.{i}.{part}");
            let global = (i + 1) % shape.every == 0;
            blocks.push(Block {
                attn_norm: w.norm(&n("attn_norm"))?,
                q: w.matmul(&n("attn_q"))?,
                k: w.matmul(&n("attn_k"))?,
                v: w.matmul(&n("attn_v"))?,
                q_norm: w.norm(&n("attn_q_norm"))?,
                k_norm: w.norm(&n("attn_k_norm"))?,
                out: w.matmul(&n("attn_output"))?,
                post_attn_norm: w.norm(&n("post_attention_norm"))?,
                ffn_norm: w.norm(&n("ffn_norm"))?,
                gate: w.matmul(&n("ffn_gate"))?,
                up: w.matmul(&n("ffn_up"))?,
                down: w.matmul(&n("ffn_down"))?,
                post_ffn_norm: w.norm(&n("post_ffw_norm"))?,
                window: (!global).then_some(shape.window),
                global_rope: global,
                cache: None,
            });
        }
        let hd = shape.head_dim;
        Ok(Self {
            embed,
            embed_scale: (shape.dim as f64).sqrt(),
            blocks,
            norm: w.norm("output_norm")?,
            output,
            rope_local: Rope::new(hd, shape.rope_base_local, positions, device)?,
            rope_global: Rope::new(hd, shape.rope_base, positions, device)?,
            dims: Dims {
                heads: shape.heads,
                kv_heads: shape.kv_heads,
                head_dim: hd,
                eps: shape.eps,
                scale: 1.0 / shape.query_pre_attn_scalar.sqrt(),
            },
        })
    }

    /// Logits (`[b, vocab]`) of the last position of `input` (`[b, t]` ids) placed at `pos`.
    pub fn forward(&mut self, input: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        let (b, t) = input.dims2()?;
        let cached = self
            .blocks
            .iter()
            .any(|bl| bl.cache.as_ref().is_some_and(|c| c.len > 0));
        if t > 1 && cached {
            return one_at_a_time(input, pos, |x, p| self.forward(x, p));
        }
        let ids = input.flatten_all()?;
        let mut x = self
            .embed
            .index_select(&ids, 0)?
            .to_dtype(DType::F32)?
            .reshape((b, t, ()))?;
        x = (x * self.embed_scale)?;
        for block in &mut self.blocks {
            let rope = if block.global_rope {
                &self.rope_global
            } else {
                &self.rope_local
            };
            x = block.forward(&x, pos, rope, &self.dims)?;
        }
        let last = x.narrow(1, t - 1, 1)?.squeeze(1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.dims.eps)?;
        self.output.forward(&last)
    }

    /// Forget every layer's KV cache.
    pub fn clear_kv_cache(&mut self) {
        // The buffers stay allocated for the next request.
        for b in &mut self.blocks {
            if let Some(c) = &mut b.cache {
                c.len = 0;
            }
        }
    }
}
