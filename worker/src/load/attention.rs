//! Attention over a KV cache kept in place, shared by rbee's own decoders (gemma3, llama).
use candle_core::{Device, Tensor};

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
