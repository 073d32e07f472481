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
    /// Cached keys and values (`[b, kv_heads, n, d]`) and the position of their first entry.
    cache: Option<(Tensor, Tensor, usize)>,
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

/// A sliding-window or causal mask for queries at `q_pos..q_pos + t` over keys at
/// `k_pos..k_pos + n`: 0 where attention is allowed, −∞ elsewhere.
fn mask(
    t: usize,
    q_pos: usize,
    n: usize,
    k_pos: usize,
    window: Option<usize>,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let w = window.unwrap_or(usize::MAX);
    let m: Vec<f32> = (0..t)
        .flat_map(|i| {
            let q = q_pos + i;
            (0..n).map(move |j| {
                let k = k_pos + j;
                if k <= q && q - k < w {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Tensor::from_vec(m, (t, n), device)
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
        // Sliding layers keep only what the next query can still see.
        let (k, v, k_pos) = match self.cache.take() {
            Some((ck, cv, start)) => {
                let keep = self.window.map_or(usize::MAX, |w| w.saturating_sub(1));
                let n = ck.dim(2)?;
                let (ck, cv, start) = if n > keep {
                    (
                        ck.narrow(2, n - keep, keep)?,
                        cv.narrow(2, n - keep, keep)?,
                        start + n - keep,
                    )
                } else {
                    (ck, cv, start)
                };
                (
                    Tensor::cat(&[&ck, &k], 2)?,
                    Tensor::cat(&[&cv, &v], 2)?,
                    start,
                )
            }
            None => (k.contiguous()?, v.contiguous()?, pos),
        };
        self.cache = Some((k.clone(), v.clone(), k_pos));
        let rep = d.heads / d.kv_heads;
        let k = candle_transformers::utils::repeat_kv(k, rep)?.contiguous()?;
        let v = candle_transformers::utils::repeat_kv(v, rep)?.contiguous()?;
        let n = k.dim(2)?;
        let mut scores = (q.contiguous()?.matmul(&k.t()?)? * d.scale)?;
        // One new position sees every cached one (the cache is already cut to the window).
        if t > 1 {
            let m = mask(t, pos, n, k_pos, self.window, x.device())?;
            scores = scores.broadcast_add(&m)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let y = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, d.heads * d.head_dim))?;
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

impl Gemma3 {
    /// Read the network from a GGUF file; `positions` bounds the rotary tables (the context).
    pub fn from_gguf<R: Read + Seek>(
        ct: &gguf_file::Content,
        r: &mut R,
        positions: usize,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let heads = md_u32(ct, "attention.head_count")? as usize;
        let kv_heads = md_u32(ct, "attention.head_count_kv")? as usize;
        let head_dim = md_u32(ct, "attention.key_length")? as usize;
        let layers = md_u32(ct, "block_count")? as usize;
        let dim = md_u32(ct, "embedding_length")? as usize;
        let window = md_u32(ct, "attention.sliding_window")? as usize;
        let every = md_u32(ct, "attention.sliding_window_type")
            .map_or(DEFAULT_SLIDING_WINDOW_TYPE, |n| n as usize);
        let eps = md_f32(ct, "attention.layer_norm_rms_epsilon").unwrap_or(1e-6);
        let dims = Dims {
            heads,
            kv_heads,
            head_dim,
            eps,
            scale: 1.0 / (head_dim as f64).sqrt(),
        };
        let mut get = |name: &str| ct.tensor(r, name, device);
        let embed_q = get("token_embd.weight")?;
        let embed = embed_q.dequantize_f16(device)?;
        let output = match get("output.weight") {
            Ok(t) => QMatMul::from_qtensor(t)?,
            Err(_) => QMatMul::from_qtensor(embed_q)?,
        };
        let norm = get("output_norm.weight")?.dequantize(device)?;
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let mut t = |n: &str| get(&format!("blk.{i}.{n}.weight"));
            let global = (i + 1) % every == 0;
            blocks.push(Block {
                attn_norm: t("attn_norm")?.dequantize(device)?,
                q: QMatMul::from_qtensor(t("attn_q")?)?,
                k: QMatMul::from_qtensor(t("attn_k")?)?,
                v: QMatMul::from_qtensor(t("attn_v")?)?,
                q_norm: t("attn_q_norm")?.dequantize(device)?,
                k_norm: t("attn_k_norm")?.dequantize(device)?,
                out: QMatMul::from_qtensor(t("attn_output")?)?,
                post_attn_norm: t("post_attention_norm")?.dequantize(device)?,
                ffn_norm: t("ffn_norm")?.dequantize(device)?,
                gate: QMatMul::from_qtensor(t("ffn_gate")?)?,
                up: QMatMul::from_qtensor(t("ffn_up")?)?,
                down: QMatMul::from_qtensor(t("ffn_down")?)?,
                post_ffn_norm: t("post_ffw_norm")?.dequantize(device)?,
                window: (!global).then_some(window),
                global_rope: global,
                cache: None,
            });
        }
        let base = md_f32(ct, "rope.freq_base").unwrap_or(DEFAULT_ROPE_BASE);
        let base_local = md_f32(ct, "rope.local_freq_base").unwrap_or(DEFAULT_ROPE_BASE_LOCAL);
        Ok(Self {
            embed,
            embed_scale: (dim as f64).sqrt(),
            blocks,
            norm,
            output,
            rope_local: Rope::new(head_dim, base_local, positions, device)?,
            rope_global: Rope::new(head_dim, base, positions, device)?,
            dims,
        })
    }

    /// Logits (`[b, vocab]`) of the last position of `input` (`[b, t]` ids) placed at `pos`.
    pub fn forward(&mut self, input: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        let (b, t) = input.dims2()?;
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
        for b in &mut self.blocks {
            b.cache = None;
        }
    }
}
