//! The dense decoder families (llama — Llama 2/3.x, Mistral, SmolLM —, qwen2 and qwen3) from a
//! GGUF file, written for rbee.
//!
//! Same arithmetic as candle-transformers' quantized llama, qwen2 and qwen3 (RMS norms, rotary
//! embeddings — interleaved on llama's GGUF-permuted projections, NeoX halves on Qwen's —, Qwen2's
//! q/k/v biases, Qwen3's per-head q/k norms, SwiGLU MLP, output tied to the embeddings unless the
//! file has its own), but attention runs on [`super::attention`]: keys and values written in
//! place instead of the whole cache copied at every token, and grouped-query heads without
//! copying keys. At 1 000 tokens of context that copying was most of a decode step's memory
//! traffic. Files this decoder does not cover (mixture of experts, partial rotary dimensions)
//! stay on candle's implementation.
use std::io::{Read, Seek};

use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{DType, Device, Module, Tensor};

use super::attention::{attend, one_at_a_time, KvCache};

const DEFAULT_ROPE_BASE: f32 = 10_000.0;

/// Which dense family a file is: names its metadata and picks the variations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `llama.*`: interleaved rotary embeddings.
    Llama,
    /// `qwen2.*`: NeoX rotary embeddings, biases on q/k/v.
    Qwen2,
    /// `qwen3.*`: NeoX rotary embeddings, per-head RMS norms on q and k.
    Qwen3,
}

impl Variant {
    fn prefix(self) -> &'static str {
        match self {
            Variant::Llama => "llama",
            Variant::Qwen2 => "qwen2",
            Variant::Qwen3 => "qwen3",
        }
    }
}

fn md<'a>(ct: &'a gguf_file::Content, v: Variant, key: &str) -> Option<&'a gguf_file::Value> {
    ct.metadata.get(&format!("{}.{key}", v.prefix()))
}

fn md_u32(ct: &gguf_file::Content, v: Variant, key: &str) -> candle_core::Result<u32> {
    md(ct, v, key)
        .ok_or_else(|| {
            candle_core::Error::msg(format!("GGUF metadata has no `{}.{key}`", v.prefix()))
        })?
        .to_u32()
}

/// The width of one attention head.
fn head_dim(ct: &gguf_file::Content, v: Variant) -> usize {
    let heads = md_u32(ct, v, "attention.head_count").unwrap_or(0) as usize;
    let dim = md_u32(ct, v, "embedding_length").unwrap_or(0) as usize;
    match (v, md_u32(ct, v, "attention.key_length")) {
        (Variant::Qwen3, Ok(k)) => k as usize,
        _ if heads > 0 && dim.is_multiple_of(heads) => dim / heads,
        _ => 0,
    }
}

/// Whether this decoder covers the file: dense (no experts), rotary over whole heads.
pub fn covers(ct: &gguf_file::Content, v: Variant) -> bool {
    let experts = md(ct, v, "expert_count")
        .and_then(|x| x.to_u32().ok())
        .unwrap_or(0);
    let hd = head_dim(ct, v);
    let rope = md_u32(ct, v, "rope.dimension_count").map_or(hd, |r| r as usize);
    experts == 0 && hd > 0 && rope == hd
}

struct Block {
    attn_norm: Tensor,
    q: QMatMul,
    k: QMatMul,
    v: QMatMul,
    /// Qwen2's biases on q, k and v.
    bias: Option<[Tensor; 3]>,
    /// Qwen3's per-head norms on q and k.
    qk_norm: Option<[Tensor; 2]>,
    out: QMatMul,
    ffn_norm: Tensor,
    gate: QMatMul,
    up: QMatMul,
    down: QMatMul,
    cache: Option<KvCache>,
}

/// A llama-family network from a GGUF file.
pub struct Llama {
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
    variant: Variant,
}

/// Rotary tables for `positions` positions: `θᵢ = base^(−2i/d)`, divided by the file's
/// per-dimension factors (`rope_freqs.weight`, Llama 3.1's long-context scaling) when present.
fn rope_tables(
    head_dim: usize,
    base: f32,
    factors: Option<Vec<f32>>,
    positions: usize,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..head_dim / 2)
        .map(|i| {
            let f = factors
                .as_ref()
                .and_then(|f| f.get(i))
                .copied()
                .unwrap_or(1.0);
            1.0 / base.powf(2.0 * i as f32 / head_dim as f32) / f
        })
        .collect();
    let inv = Tensor::new(inv.as_slice(), device)?.reshape((1, head_dim / 2))?;
    let pos = Tensor::arange(0u32, positions as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?;
    let angles = pos.matmul(&inv)?;
    Ok((angles.cos()?, angles.sin()?))
}

impl Llama {
    /// Read the network from a GGUF file ([`covers`] must hold); `positions` bounds the
    /// rotary tables (the context).
    pub fn from_gguf<R: Read + Seek>(
        variant: Variant,
        ct: &gguf_file::Content,
        r: &mut R,
        positions: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let v = variant;
        let heads = md_u32(ct, v, "attention.head_count")? as usize;
        let kv_heads = md_u32(ct, v, "attention.head_count_kv")? as usize;
        let layers = md_u32(ct, v, "block_count")? as usize;
        let head_dim = head_dim(ct, v);
        let eps = md(ct, v, "attention.layer_norm_rms_epsilon")
            .ok_or_else(|| candle_core::Error::msg("GGUF metadata has no rms epsilon"))?
            .to_f32()?;
        let base = md(ct, v, "rope.freq_base")
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(DEFAULT_ROPE_BASE);
        let mut get = |name: &str| ct.tensor(r, name, device);
        let factors = match get("rope_freqs.weight") {
            Ok(t) => Some(t.dequantize(device)?.to_vec1::<f32>()?),
            Err(_) => None,
        };
        let embed_q = get("token_embd.weight")?;
        let embed = embed_q.dequantize(device)?;
        let output = match get("output.weight") {
            Ok(t) => QMatMul::from_qtensor(t)?,
            Err(_) => QMatMul::from_qtensor(embed_q)?,
        };
        let norm = get("output_norm.weight")?.dequantize(device)?;
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let mut t = |n: &str| get(&format!("blk.{i}.{n}"));
            let bias = match v {
                Variant::Qwen2 => Some([
                    t("attn_q.bias")?.dequantize(device)?,
                    t("attn_k.bias")?.dequantize(device)?,
                    t("attn_v.bias")?.dequantize(device)?,
                ]),
                _ => None,
            };
            let qk_norm = match v {
                Variant::Qwen3 => Some([
                    t("attn_q_norm.weight")?.dequantize(device)?,
                    t("attn_k_norm.weight")?.dequantize(device)?,
                ]),
                _ => None,
            };
            let mut t = |n: &str| get(&format!("blk.{i}.{n}.weight"));
            blocks.push(Block {
                attn_norm: t("attn_norm")?.dequantize(device)?,
                q: QMatMul::from_qtensor(t("attn_q")?)?,
                k: QMatMul::from_qtensor(t("attn_k")?)?,
                v: QMatMul::from_qtensor(t("attn_v")?)?,
                bias,
                qk_norm,
                out: QMatMul::from_qtensor(t("attn_output")?)?,
                ffn_norm: t("ffn_norm")?.dequantize(device)?,
                gate: QMatMul::from_qtensor(t("ffn_gate")?)?,
                up: QMatMul::from_qtensor(t("ffn_up")?)?,
                down: QMatMul::from_qtensor(t("ffn_down")?)?,
                cache: None,
            });
        }
        let (cos, sin) = rope_tables(head_dim, base, factors, positions, device)?;
        Ok(Self {
            embed,
            blocks,
            norm,
            output,
            cos,
            sin,
            heads,
            kv_heads,
            head_dim,
            eps,
            variant,
        })
    }

    fn block(&mut self, i: usize, x: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (hd, eps, heads, kv_heads) = (self.head_dim, self.eps, self.heads, self.kv_heads);
        let variant = self.variant;
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let blk = &mut self.blocks[i];
        let h = candle_nn::ops::rms_norm(x, &blk.attn_norm, eps)?;
        // Project, add the bias, split into heads ([b, t, n, d]), norm each head.
        let split = |m: &QMatMul, which: usize, n: usize| -> candle_core::Result<Tensor> {
            let mut y = m.forward(&h)?;
            if let Some(bias) = &blk.bias {
                y = y.broadcast_add(&bias[which])?;
            }
            let y = y.reshape((b, t, n, hd))?;
            match &blk.qk_norm {
                Some(norms) if which < 2 => {
                    candle_nn::ops::rms_norm(&y.contiguous()?, &norms[which], eps)
                }
                _ => Ok(y),
            }
        };
        let rope = |x: Tensor| -> candle_core::Result<Tensor> {
            let x = x.transpose(1, 2)?.contiguous()?;
            match variant {
                Variant::Llama => candle_nn::rotary_emb::rope_i(&x, &cos, &sin),
                Variant::Qwen2 | Variant::Qwen3 => candle_nn::rotary_emb::rope(&x, &cos, &sin),
            }
        };
        let q = rope(split(&blk.q, 0, heads)?)?;
        let k = rope(split(&blk.k, 1, kv_heads)?)?;
        let v = split(&blk.v, 2, kv_heads)?.transpose(1, 2)?.contiguous()?;
        let scale = 1.0 / (hd as f64).sqrt();
        let y = attend(
            &q,
            &k,
            &v,
            &mut blk.cache,
            None,
            pos,
            (heads, kv_heads, hd, scale),
        )?;
        let x = (x + blk.out.forward(&y)?)?;
        let h = candle_nn::ops::rms_norm(&x, &blk.ffn_norm, eps)?;
        let h = (candle_nn::ops::silu(&blk.gate.forward(&h)?)? * blk.up.forward(&h)?)?;
        x + blk.down.forward(&h)?
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
        let mut x = self.embed.index_select(&ids, 0)?.reshape((b, t, ()))?;
        for i in 0..self.blocks.len() {
            x = self.block(i, &x, pos)?;
        }
        let last = x.narrow(1, t - 1, 1)?.squeeze(1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.eps)?;
        self.output.forward(&last)
    }

    /// Forget every layer's KV cache (the buffers stay allocated for the next request).
    pub fn clear_kv_cache(&mut self) {
        for b in &mut self.blocks {
            if let Some(c) = &mut b.cache {
                c.len = 0;
            }
        }
    }
}
