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

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

use super::attention::{append_rows, attend, KvCache, OneToken, OneTokenRows};
use super::embedding::Embedding;
use super::linear::{Fused, Linear};

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
    /// q, k and v.
    qkv: Fused<3>,
    /// Qwen2's biases on q, k and v.
    bias: Option<[Tensor; 3]>,
    /// Qwen3's per-head norms on q and k.
    qk_norm: Option<[Tensor; 2]>,
    out: Linear,
    ffn_norm: Tensor,
    /// gate and up.
    gate_up: Fused<2>,
    down: Linear,
}

/// One sequence's keys and values: a cache per layer, written in place.
#[derive(Default)]
pub struct SeqCache {
    layers: Vec<Option<KvCache>>,
}

impl SeqCache {
    /// Positions held (the same in every layer).
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(Option::as_ref)
            .map_or(0, |c| c.len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep the first `n` positions (a prefix the next request shares); the buffers stay.
    pub fn truncate(&mut self, n: usize) {
        for c in self.layers.iter_mut().flatten() {
            c.truncate(n);
        }
    }
}

/// One sequence's share of a batched step: its new tokens, placed at `pos` (= what its cache
/// holds).
pub struct Piece<'a> {
    /// The sequence's cache, extended by this step.
    pub cache: &'a mut SeqCache,
    /// The new tokens (one when decoding, a chunk when reading a prompt).
    pub tokens: &'a [u32],
    /// Position of the first new token.
    pub pos: usize,
    /// Whether these are prompt tokens (read through the dense weights when that pays) rather
    /// than a sampled token.
    pub prompt: bool,
}

/// Rows `start..start + len` of a step that go through one matmul together: every decode piece
/// in one group (candle's quantized kernel computes each row on its own), each prompt chunk in a
/// group of its own (gemm's blocking, hence its rounding, depends on the row count). A row's
/// arithmetic then never depends on which other sequences share the step, so a seeded request
/// gives the same text alone or batched.
#[derive(Clone, Copy)]
struct Group {
    start: usize,
    len: usize,
    prompt: bool,
}

fn groups(pieces: &[Piece<'_>]) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    let mut start = 0;
    for p in pieces {
        let len = p.tokens.len();
        match out.last_mut() {
            Some(g) if !g.prompt && !p.prompt => g.len += len,
            _ => out.push(Group {
                start,
                len,
                prompt: p.prompt,
            }),
        }
        start += len;
    }
    out
}

/// `x` (`[rows, in]`) through `m`, group by group.
fn project(m: &mut Linear, x: &Tensor, groups: &[Group]) -> candle_core::Result<Tensor> {
    if let [g] = groups {
        return m.forward(x, g.prompt);
    }
    let parts = groups
        .iter()
        .map(|g| m.forward(&x.narrow(0, g.start, g.len)?, g.prompt))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

/// A llama-family network from a GGUF file.
pub struct Llama {
    embed: Embedding,
    blocks: Vec<Block>,
    norm: Tensor,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
    variant: Variant,
    /// The cache of [`Llama::forward`]'s one sequence (the batched path brings its own).
    own: SeqCache,
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
        let embed = Embedding::new(&embed_q, device)?;
        let output = match get("output.weight") {
            Ok(t) => Linear::new(t, false)?,
            Err(_) => Linear::new(embed_q, false)?,
        };
        let norm = get("output_norm.weight")?.dequantize(device)?;
        let keep = keep_dense(ct);
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
                qkv: Fused::new([
                    Linear::new(t("attn_q")?, keep)?,
                    Linear::new(t("attn_k")?, keep)?,
                    Linear::new(t("attn_v")?, keep)?,
                ]),
                bias,
                qk_norm,
                out: Linear::new(t("attn_output")?, keep)?,
                ffn_norm: t("ffn_norm")?.dequantize(device)?,
                gate_up: Fused::new([
                    Linear::new(t("ffn_gate")?, keep)?,
                    Linear::new(t("ffn_up")?, keep)?,
                ]),
                down: Linear::new(t("ffn_down")?, keep)?,
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
            own: SeqCache::default(),
        })
    }

    /// One block over every piece's rows (`x`: `[rows, hidden]`); `cos`/`sin` hold each row's
    /// rotary angles.
    fn block(
        &mut self,
        i: usize,
        x: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        pieces: &mut [Piece<'_>],
        groups: &[Group],
    ) -> candle_core::Result<Tensor> {
        let rows = x.dim(0)?;
        let (hd, eps, heads, kv_heads) = (self.head_dim, self.eps, self.heads, self.kv_heads);
        let variant = self.variant;
        let blk = &mut self.blocks[i];
        let h = candle_nn::ops::rms_norm(x, &blk.attn_norm, eps)?;
        let (bias, qk_norm) = (&blk.bias, &blk.qk_norm);
        // Project, add the bias, split into heads, norm each head, rotate: [1, n, rows, d].
        let [yq, yk, yv] = blk.qkv.forward(&h, |m, h| project(m, h, groups))?;
        let split = |y: Tensor, which: usize, n: usize| -> candle_core::Result<Tensor> {
            let mut y = y;
            if let Some(bias) = bias {
                y = y.broadcast_add(&bias[which])?;
            }
            let mut y = y.contiguous()?.reshape((1, rows, n, hd))?;
            if let Some(norms) = qk_norm.as_ref().filter(|_| which < 2) {
                y = candle_nn::ops::rms_norm(&y.contiguous()?, &norms[which], eps)?;
            }
            let y = y.transpose(1, 2)?.contiguous()?;
            match (which, variant) {
                (2, _) => Ok(y),
                (_, Variant::Llama) => candle_nn::rotary_emb::rope_i(&y, cos, sin),
                _ => candle_nn::rotary_emb::rope(&y, cos, sin),
            }
        };
        let q = split(yq, 0, heads)?;
        let k = split(yk, 1, kv_heads)?;
        let v = split(yv, 2, kv_heads)?;
        let scale = 1.0 / (hd as f64).sqrt();
        if q.device().is_cpu() && pieces.iter().all(|p| p.tokens.len() == 1) {
            // A decode step: each row's key and value into its cache, then one op for all rows.
            let positions: Vec<usize> = pieces.iter().map(|p| p.pos).collect();
            let mut layers: Vec<_> = pieces.iter_mut().map(|p| &mut p.cache.layers[i]).collect();
            let caches = append_rows(&mut layers, &positions, &k, &v)?;
            let one = OneToken {
                heads,
                kv_heads,
                scale: scale as f32,
            };
            let y = OneTokenRows { one, caches }.run(&q)?;
            return self.mlp(i, x, &y, groups);
        }
        let mut outs = Vec::with_capacity(pieces.len());
        let mut start = 0;
        for p in pieces.iter_mut() {
            let t = p.tokens.len();
            let c = &mut p.cache.layers[i];
            let (q, k, v) = (
                q.narrow(2, start, t)?,
                k.narrow(2, start, t)?,
                v.narrow(2, start, t)?,
            );
            outs.push(attend(
                &q,
                &k,
                &v,
                c,
                None,
                p.pos,
                (heads, kv_heads, hd, scale),
            )?);
            start += t;
        }
        let y = Tensor::cat(&outs, 1)?.squeeze(0)?;
        self.mlp(i, x, &y, groups)
    }

    /// The rest of block `i` after attention (`y`: `[rows, heads·d]`): output projection,
    /// residual, norm, SwiGLU MLP, residual.
    fn mlp(
        &mut self,
        i: usize,
        x: &Tensor,
        y: &Tensor,
        groups: &[Group],
    ) -> candle_core::Result<Tensor> {
        let eps = self.eps;
        let blk = &mut self.blocks[i];
        let x = (x + project(&mut blk.out, y, groups)?)?;
        let h = candle_nn::ops::rms_norm(&x, &blk.ffn_norm, eps)?;
        let h = blk.gate_up.swiglu(&h, |m, h| project(m, h, groups))?;
        x + project(&mut blk.down, &h, groups)?
    }

    /// One step over several sequences at once (continuous batching): every piece's new tokens
    /// go through each weight matrix together; rotary positions, attention and KV caches stay
    /// per sequence. Logits (`[pieces, vocab]`) of each piece's last token, in order.
    pub fn forward_batch(&mut self, pieces: &mut [Piece<'_>]) -> candle_core::Result<Tensor> {
        let device = self.cos.device().clone();
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut last = Vec::with_capacity(pieces.len());
        for p in pieces.iter_mut() {
            if p.tokens.is_empty() {
                candle_core::bail!("a piece without tokens");
            }
            if p.pos + p.tokens.len() > self.cos.dim(0)? {
                candle_core::bail!("positions past the context ({})", self.cos.dim(0)?);
            }
            if p.cache.layers.len() != self.blocks.len() {
                p.cache.layers = (0..self.blocks.len()).map(|_| None).collect();
            }
            ids.extend_from_slice(p.tokens);
            positions.extend((p.pos..p.pos + p.tokens.len()).map(|x| x as u32));
            last.push(ids.len() as u32 - 1);
        }
        let groups = groups(pieces);
        let positions = Tensor::new(positions.as_slice(), &device)?;
        let cos = self.cos.index_select(&positions, 0)?;
        let sin = self.sin.index_select(&positions, 0)?;
        let mut x = self.embed.lookup(&ids, &device)?;
        for i in 0..self.blocks.len() {
            x = self.block(i, &x, (&cos, &sin), pieces, &groups)?;
        }
        let last = x.index_select(&Tensor::new(last.as_slice(), &device)?, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, self.eps)?;
        self.output.forward(&last, false)
    }

    /// Logits (`[1, vocab]`) of the last position of `input` (`[1, t]` ids) placed at `pos`, on
    /// the network's own sequence (one-shot runs and the single-sequence path).
    pub fn forward(&mut self, input: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        let tokens = input.flatten_all()?.to_vec1::<u32>()?;
        let mut own = std::mem::take(&mut self.own);
        if pos < own.len() {
            own.truncate(pos);
        }
        let out = self.forward_batch(&mut [Piece {
            cache: &mut own,
            tokens: &tokens,
            pos,
            prompt: tokens.len() > 1,
        }]);
        self.own = own;
        out
    }

    /// Forget the own sequence's KV cache (the buffers stay allocated for the next request).
    pub fn clear_kv_cache(&mut self) {
        self.own.truncate(0);
    }

    /// Longest context the rotary tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }
}

/// Whether the dequantised copies of every block's weights fit the budget
/// (`RBEE_DENSE_CACHE_MB`, default 1 024 MiB) and are kept between prompt chunks.
fn keep_dense(ct: &gguf_file::Content) -> bool {
    let budget_mb = std::env::var("RBEE_DENSE_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1024);
    let bytes: usize = ct
        .tensor_infos
        .iter()
        .filter(|(name, _)| name.starts_with("blk.") && name.ends_with(".weight"))
        .map(|(_, info)| info.shape.elem_count() * 4)
        .sum();
    bytes <= budget_mb << 20
}
