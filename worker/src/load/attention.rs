//! Attention over a KV cache kept in place, shared by rbee's own decoders (gemma3, llama).
use candle_core::{DType, Device, Storage, Tensor};

/// Keys and values in preallocated buffers (`[b, kv_heads, capacity, d]`), written in place:
/// no copy of the whole cache per token. Global layers append and double their buffers when
/// full; sliding layers keep a ring of `window` slots, position `p` in slot `p % window`, which
/// holds exactly the positions the next query may see.
pub(crate) struct KvCache {
    k: Tensor,
    v: Tensor,
    /// Entries written (at most the capacity for a ring).
    pub(crate) len: usize,
    /// `Some(window)`: a ring of that many slots.
    ring: Option<usize>,
}

impl KvCache {
    fn new(like: &Tensor, capacity: usize, ring: Option<usize>) -> candle_core::Result<Self> {
        let (b, h, _, d) = like.dims4()?;
        let k = Tensor::zeros((b, h, capacity, d), like.dtype(), like.device())?;
        Ok(Self {
            v: k.zeros_like()?,
            k,
            len: 0,
            ring,
        })
    }

    fn capacity(&self) -> usize {
        self.k.dim(2).unwrap_or(0)
    }

    /// Write `k`, `v` (`[b, kv_heads, t, d]`, contiguous) for positions `pos..pos + t`.
    fn append(&mut self, k: &Tensor, v: &Tensor, pos: usize) -> candle_core::Result<()> {
        let t = k.dim(2)?;
        match self.ring {
            Some(w) => {
                // Only the last `w` positions can be seen again.
                let skip = t.saturating_sub(w);
                for i in skip..t {
                    let slot = (pos + i) % w;
                    self.k
                        .slice_set(&k.narrow(2, i, 1)?.contiguous()?, 2, slot)?;
                    self.v
                        .slice_set(&v.narrow(2, i, 1)?.contiguous()?, 2, slot)?;
                }
                self.len = (self.len + t).min(w);
            }
            None => {
                if self.len + t > self.capacity() {
                    let cap = (self.len + t).next_power_of_two().max(2 * self.capacity());
                    let mut grown = KvCache::new(&self.k, cap, None)?;
                    grown
                        .k
                        .slice_set(&self.k.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    grown
                        .v
                        .slice_set(&self.v.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    grown.len = self.len;
                    *self = grown;
                }
                self.k.slice_set(k, 2, self.len)?;
                self.v.slice_set(v, 2, self.len)?;
                self.len += t;
            }
        }
        Ok(())
    }

    /// Keep the first `n` entries of an appending cache (a prefix reused by the next request).
    pub(crate) fn truncate(&mut self, n: usize) {
        if self.ring.is_none() {
            self.len = self.len.min(n);
        }
    }

    /// Every cached key and value (`[b, kv_heads, len, d]`).
    fn view(&self) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.k.narrow(2, 0, self.len)?,
            self.v.narrow(2, 0, self.len)?,
        ))
    }
}

/// A sliding-window or causal mask for queries at `q_pos..q_pos + t` over keys at
/// `k_pos..k_pos + n`: 0 where attention is allowed, −∞ elsewhere.
pub(crate) fn mask(
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

/// Causal (and, with `window`, sliding-window) attention of `q` (`[b, heads, t, d]`) over `k`,
/// `v` (`[b, kv_heads, t, d]`, positions `pos..pos + t`) and what `cache` holds, which it then
/// updates. Several new tokens after cached ones (a prompt chunk, the rest of a prompt whose
/// prefix is cached) are allowed on an appending cache, not on a ring. Grouped-query attention
/// without copying keys: the query heads that share a key head are stacked as rows of one
/// matrix. Returns `[b, t, heads * d]`.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cache: &mut Option<KvCache>,
    window: Option<usize>,
    pos: usize,
    (heads, kv_heads, head_dim, scale): (usize, usize, usize, f64),
) -> candle_core::Result<Tensor> {
    let (b, _, t, _) = q.dims4()?;
    let (k, v) = (k.contiguous()?, v.contiguous()?);
    let fresh = cache.as_ref().is_none_or(|c| c.len == 0);
    if t > 1 && !fresh && window.is_some() {
        candle_core::bail!("a multi-token step on a sliding window must start on an empty cache");
    }
    let c = match cache {
        Some(c) => c,
        None => cache.insert(KvCache::new(&k, window.unwrap_or(256), window)?),
    };
    if window.is_none() && c.len != pos {
        candle_core::bail!("tokens at {pos} after {} cached ones", c.len);
    }
    c.append(&k, &v, pos)?;
    // A prompt on an empty cache attends to itself (masked); a chunk after cached tokens to
    // everything cached up to itself (masked); a single new token to the whole cache, which
    // holds exactly what it may see.
    let (keys, values, mask) = match (t > 1, fresh) {
        (true, true) => {
            let m = mask(t, pos, t, pos, window, q.device())?;
            (k, v, Some(m))
        }
        (true, false) => {
            let (keys, values) = c.view()?;
            let m = mask(t, pos, c.len, 0, None, q.device())?;
            (keys, values, Some(m))
        }
        (false, _) => {
            if let Some(out) = one_token_cpu(q, c, (heads, kv_heads, head_dim, scale))? {
                return Ok(out);
            }
            let (keys, values) = c.view()?;
            (keys, values, None)
        }
    };
    let rep = heads / kv_heads;
    let n = keys.dim(2)?;
    let qg = q.contiguous()?.reshape((b, kv_heads, rep * t, head_dim))?;
    let mut scores = (qg.matmul(&keys.t()?)? * scale)?;
    if let Some(m) = mask {
        scores = scores
            .reshape((b, kv_heads, rep, t, n))?
            .broadcast_add(&m)?
            .reshape((b, kv_heads, rep * t, n))?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs
        .matmul(&values)?
        .reshape((b, heads, t, head_dim))?
        .transpose(1, 2)?
        .reshape((b, t, heads * head_dim))
}

/// `a · b`, in eight lanes the compiler keeps in one vector register.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Whether [`one_token_cpu`] is used (`RBEE_FAST_ATTN=1`). Off by default: its sums run in a
/// different order than candle's matmul, and on the small test models that rounding difference
/// grows over a few tokens past the tolerance of the step-by-step comparison with llama.cpp
/// (logits 1.2 apart instead of 0.6), though each step agrees with the matmul path to 1e-6.
fn fast_attention_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("RBEE_FAST_ATTN").is_ok_and(|v| v == "1"))
}

/// One new token's attention over everything `c` holds (already appended), read in place on
/// CPU: `Some([1, 1, heads * d])`, or `None` where this does not apply (switched off, other
/// devices, other precisions, several sequences in one tensor). candle's batched matmul packs
/// all cached keys and values for every head group at every token: at 1 100 tokens of context
/// that was half a millisecond per layer (one thread), more than the layer's weights took.
fn one_token_cpu(
    q: &Tensor,
    c: &KvCache,
    shape: (usize, usize, usize, f64),
) -> candle_core::Result<Option<Tensor>> {
    if !fast_attention_on() {
        return Ok(None);
    }
    one_token_unchecked(q, c, shape)
}

/// [`one_token_cpu`] whatever the switch says.
fn one_token_unchecked(
    q: &Tensor,
    c: &KvCache,
    (heads, kv_heads, d, scale): (usize, usize, usize, f64),
) -> candle_core::Result<Option<Tensor>> {
    if !q.device().is_cpu()
        || q.dtype() != DType::F32
        || c.k.dtype() != DType::F32
        || q.dim(0)? != 1
    {
        return Ok(None);
    }
    let q = q.flatten_all()?.to_vec1::<f32>()?;
    let (cap, n, rep) = (c.capacity(), c.len, heads / kv_heads);
    let (ks, kl) = c.k.storage_and_layout();
    let (vs, vl) = c.v.storage_and_layout();
    let (Storage::Cpu(ks), Storage::Cpu(vs)) = (&*ks, &*vs) else {
        return Ok(None);
    };
    if !kl.is_contiguous() || !vl.is_contiguous() {
        return Ok(None);
    }
    let keys = &ks.as_slice::<f32>()?[kl.start_offset()..];
    let values = &vs.as_slice::<f32>()?[vl.start_offset()..];
    let mut out = vec![0f32; heads * d];
    let mut w = vec![0f32; n];
    for h in 0..heads {
        let base = (h / rep) * cap * d;
        let qh = &q[h * d..(h + 1) * d];
        let mut max = f32::NEG_INFINITY;
        for (j, wj) in w.iter_mut().enumerate() {
            *wj = dot(qh, &keys[base + j * d..base + (j + 1) * d]) * scale as f32;
            max = max.max(*wj);
        }
        let mut sum = 0f32;
        for wj in w.iter_mut() {
            *wj = (*wj - max).exp();
            sum += *wj;
        }
        let o = &mut out[h * d..(h + 1) * d];
        for (j, wj) in w.iter().enumerate() {
            let p = wj / sum;
            for (ox, vx) in o.iter_mut().zip(&values[base + j * d..base + (j + 1) * d]) {
                *ox += p * vx;
            }
        }
    }
    Ok(Some(Tensor::from_vec(
        out,
        (1, 1, heads * d),
        &Device::Cpu,
    )?))
}

/// Several new tokens after earlier ones, through `step` one at a time (prompts start on an
/// empty cache, so generation never takes this path); the logits of the last.
pub(crate) fn one_at_a_time(
    input: &Tensor,
    pos: usize,
    mut step: impl FnMut(&Tensor, usize) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let (_, t) = input.dims2()?;
    let mut last = None;
    for i in 0..t {
        last = Some(step(&input.narrow(1, i, 1)?, pos + i)?);
    }
    last.ok_or_else(|| candle_core::Error::msg("empty input"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_token_in_place_matches_the_matmul_path() {
        let dev = Device::Cpu;
        let (heads, kv, d) = (9, 3, 64);
        let mut cache = None;
        let prompt = |h| Tensor::randn(0f32, 1., (1, h, 13, d), &dev).unwrap();
        let (k, v) = (prompt(kv), prompt(kv));
        attend(
            &prompt(heads),
            &k,
            &v,
            &mut cache,
            None,
            0,
            (heads, kv, d, 0.125),
        )
        .unwrap();
        for pos in 13..300 {
            let k = Tensor::randn(0f32, 1., (1, kv, 1, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1., (1, kv, 1, d), &dev).unwrap();
            let q = Tensor::randn(0f32, 1., (1, heads, 1, d), &dev).unwrap();
            attend(&q, &k, &v, &mut cache, None, pos, (heads, kv, d, 0.125)).unwrap();
            let c = cache.as_ref().unwrap();
            let fast = one_token_unchecked(&q, c, (heads, kv, d, 0.125))
                .unwrap()
                .unwrap();
            let (keys, values) = c.view().unwrap();
            let qg = q.reshape((1, kv, heads / kv, d)).unwrap();
            let s = (qg.matmul(&keys.t().unwrap()).unwrap() * 0.125).unwrap();
            let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
            let slow = p
                .matmul(&values.contiguous().unwrap())
                .unwrap()
                .reshape((1, 1, heads * d))
                .unwrap();
            let diff = (fast - slow).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-4, "position {pos}");
        }
    }
}
