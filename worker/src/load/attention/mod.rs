//! Attention over a KV cache kept in place, shared by rbee's own decoders (gemma3, llama).
use candle_core::{CpuStorage, Device, Layout, Shape, Tensor};

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
                self.reserve(t)?;
                self.k.slice_set(k, 2, self.len)?;
                self.v.slice_set(v, 2, self.len)?;
                self.len += t;
            }
        }
        Ok(())
    }

    /// Room for `t` more entries in an appending cache: the buffers double when full.
    fn reserve(&mut self, t: usize) -> candle_core::Result<()> {
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
    if mask.is_none() && b == 1 && q.device().is_cpu() {
        let one = OneToken {
            heads,
            kv_heads,
            scale: scale as f32,
        };
        let rows = OneTokenRows {
            one,
            caches: vec![(keys, values)],
        };
        return rows.run(q)?.reshape((b, t, heads * head_dim));
    }
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

/// A decode step's new keys and values (`[1, kv_heads, rows, d]`, f32 on the CPU), row `r` at
/// `positions[r]` of `caches[r]` (appending caches, made on first use); every row's cached keys
/// and values after it. Each row is copied into its cache in place, two ops per row (a row's
/// narrow, copy and `slice_set` were six, a tenth of a 4-stream decode step's ops).
pub(crate) fn append_rows(
    caches: &mut [&mut Option<KvCache>],
    positions: &[usize],
    k: &Tensor,
    v: &Tensor,
) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
    let (k, v) = (k.contiguous()?, v.contiguous()?);
    let mut views = Vec::with_capacity(caches.len());
    for (r, (cache, &pos)) in caches.iter_mut().zip(positions).enumerate() {
        let c = match cache {
            Some(c) => c,
            None => cache.insert(KvCache::new(&k.narrow(2, r, 1)?, 256, None)?),
        };
        if c.ring.is_some() {
            candle_core::bail!("a sliding-window cache is not appended a row at a time");
        }
        if c.len != pos {
            candle_core::bail!("a token at {pos} after {} cached ones", c.len);
        }
        c.reserve(1)?;
        c.k.inplace_op2(&k, &CopyRow { row: r, to: c.len })?;
        c.v.inplace_op2(&v, &CopyRow { row: r, to: c.len })?;
        c.len += 1;
        views.push(c.view()?);
    }
    Ok(views)
}

/// Row `row` of every head of a `[1, heads, rows, d]` source into entry `to` of a cache.
struct CopyRow {
    row: usize,
    to: usize,
}

impl candle_core::InplaceOp2 for CopyRow {
    fn name(&self) -> &'static str {
        "rbee-kv-copy-row"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dl: &Layout,
        src: &CpuStorage,
        sl: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(dst), CpuStorage::F32(src)) = (dst, src) else {
            candle_core::bail!("kv cache: f32 expected");
        };
        let (_, heads, cap, d) = dl.shape().dims4()?;
        let (_, sh, rows, sd) = sl.shape().dims4()?;
        let (ds, ss) = (dl.stride(), sl.stride());
        if sh != heads || sd != d || self.row >= rows || self.to >= cap || ds[3] != 1 || ss[3] != 1
        {
            candle_core::bail!("kv cache: a row of [1, {heads}, _, {d}] expected");
        }
        for h in 0..heads {
            let from = sl.start_offset() + h * ss[1] + self.row * ss[2];
            let at = dl.start_offset() + h * ds[1] + self.to * ds[2];
            dst[at..at + d].copy_from_slice(&src[from..from + d]);
        }
        Ok(())
    }
}

/// [`OneToken`] for several sequences at once (a decode step's rows, each with its own cache):
/// one op instead of one per sequence. `q`: `[1, heads, rows, d]`; the result `[rows, heads·d]`.
pub(crate) struct OneTokenRows {
    pub(crate) one: OneToken,
    /// Each row's cached keys and values (`[1, kv_heads, len, d]`, on the CPU).
    pub(crate) caches: Vec<(Tensor, Tensor)>,
}

impl OneTokenRows {
    /// The attention rows (`[rows, heads·d]`) for the queries `q`.
    pub(crate) fn run(&self, q: &Tensor) -> candle_core::Result<Tensor> {
        q.contiguous()?.apply_op1_no_bwd(self)
    }
}

impl candle_core::CustomOp1 for OneTokenRows {
    fn name(&self) -> &'static str {
        "rbee-one-token-attention-rows"
    }

    fn cpu_fwd(&self, sq: &CpuStorage, lq: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, heads, rows, d) = lq.shape().dims4()?;
        let CpuStorage::F32(qdata) = sq else {
            candle_core::bail!("attention: f32 expected");
        };
        let Some((qs, qe)) = lq.contiguous_offsets() else {
            candle_core::bail!("attention: contiguous queries expected");
        };
        let q = &qdata[qs..qe];
        if heads != self.one.heads || rows != self.caches.len() {
            candle_core::bail!("attention: one cache per row expected");
        }
        let guards: Vec<_> = self
            .caches
            .iter()
            .map(|(k, v)| (k.storage_and_layout(), v.storage_and_layout()))
            .collect();
        let mut views = Vec::with_capacity(rows);
        for ((ks, kl), (vs, vl)) in &guards {
            let (candle_core::Storage::Cpu(ks), candle_core::Storage::Cpu(vs)) = (&**ks, &**vs)
            else {
                candle_core::bail!("attention: CPU caches expected");
            };
            let (k, v) = (View::new(ks, kl)?, View::new(vs, vl)?);
            if k.d != d || v.d != d || k.n != v.n {
                candle_core::bail!("attention: keys and values must match the queries' width");
            }
            views.push((k, v));
        }
        let kvh = self.one.kv_heads;
        let rep = heads / kvh;
        let span = rep * d;
        let mut out = vec![0f32; rows * heads * d];
        let at = out.as_mut_ptr() as usize;
        // One (row, key head) per work item.
        let items = |range: std::ops::Range<usize>| {
            let mut qs = vec![0f32; span];
            for item in range {
                let (r, g) = (item / kvh, item % kvh);
                for (i, h) in (g * rep..(g + 1) * rep).enumerate() {
                    let from = (h * rows + r) * d;
                    qs[i * d..(i + 1) * d].copy_from_slice(&q[from..from + d]);
                }
                // SAFETY: item (r, g) alone writes `out[(r·heads + g·rep)·d..][..span]`.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        (at as *mut f32).add((r * heads + g * rep) * d),
                        span,
                    )
                };
                let (k, v) = &views[r];
                self.one.heads_of(&qs, k.head(0, g), v.head(0, g), d, o);
            }
        };
        candle_core::utils::barrier_pool().execute_chunked(rows * kvh, items);
        Ok((CpuStorage::F32(out), Shape::from((rows, heads * d))))
    }
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

/// One new token's attention over the whole cache on the CPU, in one pass per query head: its
/// scores against every cached key, their softmax, the weighted sum of the values, reading the
/// cache in place. candle's path (a batched matmul over a strided view of the cache) spent most
/// of its time packing the cached keys and values for gemm: at 1 000 tokens of context, half of
/// a decode step.
pub(crate) struct OneToken {
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) scale: f32,
}

/// A `[b, h, n, d]` f32 tensor's data and layout, read where its rows are contiguous.
struct View<'a> {
    data: &'a [f32],
    start: usize,
    stride: [usize; 2],
    n: usize,
    d: usize,
}

impl<'a> View<'a> {
    fn new(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<Self> {
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("attention: f32 expected");
        };
        let (_, _, n, d) = l.shape().dims4()?;
        let st = l.stride();
        if st[3] != 1 || (n > 1 && st[2] != d) {
            candle_core::bail!("attention: rows of one head must be contiguous");
        }
        Ok(Self {
            data,
            start: l.start_offset(),
            stride: [st[0], st[1]],
            n,
            d,
        })
    }

    /// Every row of head `h` of batch entry `b`, one after the other (`n × d`).
    fn head(&self, b: usize, h: usize) -> &'a [f32] {
        let at = self.start + b * self.stride[0] + h * self.stride[1];
        &self.data[at..at + self.n * self.d]
    }
}

/// `a · b`, in eight lanes (vectorised; one fixed order, so one fixed result).
#[inline(always)]
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
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The one-token attention's inner loops for head widths known at compile time, on AVX2 + FMA
/// (the release build's baseline on x86, `.cargo/config.toml`): written with intrinsics because
/// the compiler vectorised the plain loops across key rows (a gather per lane).
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
pub(crate) mod simd;

/// [`simd`]'s scores and weighing on 512-bit registers, for CPUs with AVX-512 (chosen at run
/// time: the release build's baseline is AVX2). A key row of width 64 is four registers, so eight
/// keys at a time keep both FMA units busy without waiting on one chain; the values are weighed
/// two rows at a time for the same reason. On AVX2 the score chains (four keys, eight FMAs deep)
/// waited on latency: a 4-stream decode step spent 15 % of its time here at 100 tokens of
/// context.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
pub(crate) mod simd512;

impl OneToken {
    /// The query heads `qs` (`rep × d`) of one key head over its `keys` and `values`, into `out`.
    fn heads_of(&self, qs: &[f32], keys: &[f32], values: &[f32], d: usize, out: &mut [f32]) {
        #[cfg(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        ))]
        match d {
            64 => self.group_fixed::<64>(qs, keys, values, out),
            128 => self.group_fixed::<128>(qs, keys, values, out),
            _ => self.group(qs, keys, values, d, out),
        }
        #[cfg(not(all(
            target_arch = "x86_64",
            target_feature = "avx2",
            target_feature = "fma"
        )))]
        self.group(qs, keys, values, d, out);
    }

    /// [`OneToken::group`] for the common head widths (64: SmolLM2, Llama 3.2, Qwen2.5 small;
    /// 128: most 7–8B models) on AVX2 + FMA.
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    fn group_fixed<const D: usize>(
        &self,
        qs: &[f32],
        keys: &[f32],
        values: &[f32],
        out: &mut [f32],
    ) {
        let rep = qs.len() / D;
        let n = keys.len() / D;
        let mut scores = vec![0f32; rep * n];
        let wide = simd512::available();
        match wide {
            // SAFETY: the CPU has AVX-512F.
            true => unsafe { simd512::scores::<D>(qs, keys, self.scale, &mut scores) },
            false => simd::scores::<D>(qs, keys, self.scale, &mut scores),
        }
        let sums: Vec<f32> = scores.chunks_exact_mut(n).map(simd::softmax_exp).collect();
        match wide {
            // SAFETY: as above.
            true => unsafe { simd512::weigh::<D>(&scores, values, &sums, out) },
            false => simd::weigh::<D>(&scores, values, &sums, out),
        }
    }

    /// The query heads that share key head `g` of batch entry `b` (`qs`, `rep × d`) into `out`
    /// (`rep × d`): each cached key and value row is read once for all of them.
    fn group(&self, qs: &[f32], keys: &[f32], values: &[f32], d: usize, out: &mut [f32]) {
        let rep = qs.len() / d;
        let n = keys.len() / d;
        let mut scores = vec![0f32; rep * n];
        let mut sums = Vec::with_capacity(rep);
        for (j, k) in keys.chunks_exact(d).enumerate() {
            for (r, q) in qs.chunks_exact(d).enumerate() {
                scores[r * n + j] = dot(q, k) * self.scale;
            }
        }
        for row in scores.chunks_exact_mut(n) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
            let mut sum = 0f32;
            for s in row.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            sums.push(sum);
        }
        out.fill(0.0);
        for (j, v) in values.chunks_exact(d).enumerate() {
            for (r, o) in out.chunks_exact_mut(d).enumerate() {
                let p = scores[r * n + j];
                for (o, x) in o.iter_mut().zip(v) {
                    *o += p * x;
                }
            }
        }
        for (o, s) in out.chunks_exact_mut(d).zip(&sums) {
            let inv = 1.0 / s;
            o.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 2000) as f32
                    / 1000.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn one_token_attention_matches_the_matmul_path() {
        // SmolLM2's heads, Gemma 3 270M's, and a single cached position.
        for shape in [
            (9, 3, 64, 300),
            (8, 2, 128, 45),
            (4, 1, 256, 37),
            (4, 1, 256, 1),
        ] {
            one_token_case(shape);
        }
    }

    /// The 256- and 512-bit loops agree (the one-token test above runs only the wider one on
    /// a CPU with AVX-512): odd key counts and counts off the eight-key step included.
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    #[test]
    fn both_register_widths_give_the_same_attention() {
        if !simd512::available() {
            return;
        }
        fn case<const D: usize>(rep: usize, n: usize) {
            let (qs, keys, values) = (seq(rep * D, 4), seq(n * D, 5), seq(n * D, 6));
            let (mut narrow, mut wide) = (vec![0f32; rep * n], vec![0f32; rep * n]);
            simd::scores::<D>(&qs, &keys, 0.3, &mut narrow);
            // SAFETY: AVX-512F is present (checked above).
            unsafe { simd512::scores::<D>(&qs, &keys, 0.3, &mut wide) };
            let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4);
            assert!(close(&narrow, &wide), "scores, D {D}, n {n}");
            let sums: Vec<f32> = narrow.chunks_exact_mut(n).map(simd::softmax_exp).collect();
            let (mut a, mut b) = (vec![0f32; rep * D], vec![0f32; rep * D]);
            simd::weigh::<D>(&narrow, &values, &sums, &mut a);
            // SAFETY: as above.
            unsafe { simd512::weigh::<D>(&narrow, &values, &sums, &mut b) };
            assert!(close(&a, &b), "weighing, D {D}, n {n}");
        }
        for n in [1, 7, 8, 45, 300] {
            case::<64>(3, n);
            case::<128>(4, n);
        }
    }

    fn one_token_case((heads, kv_heads, d, n): (usize, usize, usize, usize)) {
        let dev = Device::Cpu;
        let q = Tensor::from_vec(seq(heads * d, 1), (1, heads, 1, d), &dev).unwrap();
        // A cache buffer larger than what is used, viewed as attend does.
        let k = Tensor::from_vec(seq(kv_heads * 512 * d, 2), (1, kv_heads, 512, d), &dev).unwrap();
        let v = Tensor::from_vec(seq(kv_heads * 512 * d, 3), (1, kv_heads, 512, d), &dev).unwrap();
        let (k, v) = (k.narrow(2, 0, n).unwrap(), v.narrow(2, 0, n).unwrap());
        let scale = 0.125f32 * 3.0;
        let one = OneToken {
            heads,
            kv_heads,
            scale,
        };
        let rows = OneTokenRows {
            one,
            caches: vec![(k.clone(), v.clone())],
        };
        let ours = rows
            .run(&q)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let qg = q.reshape((1, kv_heads, heads / kv_heads, d)).unwrap();
        let s = (qg.matmul(&k.t().unwrap()).unwrap() * f64::from(scale)).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
        let want = p
            .matmul(&v)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let worst = ours
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "largest difference {worst}");
    }
}
