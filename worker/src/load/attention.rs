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

/// One new token's key and value (`[1, kv_heads, 1, d]`) at `pos` appended to an appending
/// cache (made on first use); every cached key and value after it (`[1, kv_heads, len, d]`).
pub(crate) fn append_one(
    cache: &mut Option<KvCache>,
    k: &Tensor,
    v: &Tensor,
    pos: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (k, v) = (k.contiguous()?, v.contiguous()?);
    let c = match cache {
        Some(c) => c,
        None => cache.insert(KvCache::new(&k, 256, None)?),
    };
    if c.len != pos {
        candle_core::bail!("a token at {pos} after {} cached ones", c.len);
    }
    c.append(&k, &v, pos)?;
    c.view()
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
pub(crate) mod simd {
    use std::arch::x86_64::*;

    /// Most eight-lane registers an output row takes (head width 128).
    const MAX_LANES: usize = 16;

    #[inline(always)]
    fn hsum(v: __m256) -> f32 {
        // SAFETY: AVX2 is enabled at compile time (the module's cfg).
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }
    }

    /// `q · k` for four key rows at once, partial sums in eight lanes each.
    #[inline(always)]
    fn dot4<const D: usize>(q: &[f32], k: [&[f32]; 4]) -> [__m256; 4] {
        // SAFETY: AVX2 and FMA are enabled at compile time; every slice holds D floats.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            for c in 0..D / 8 {
                let qv = _mm256_loadu_ps(q.as_ptr().add(8 * c));
                for (a, k) in acc.iter_mut().zip(k) {
                    *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.as_ptr().add(8 * c)), *a);
                }
            }
            acc
        }
    }

    /// Scores of the query rows (`qs`, `rep × D`) against every key row: `rep × n`. Four keys
    /// at a time, their eight-lane sums reduced together by a tree of horizontal adds.
    pub(super) fn scores<const D: usize>(qs: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
        assert!(D.is_multiple_of(16) && D / 8 <= MAX_LANES);
        let n = keys.len() / D;
        for (q, row) in qs.chunks_exact(D).zip(out.chunks_exact_mut(n)) {
            let mut quads = keys.chunks_exact(4 * D);
            let mut at = 0;
            for kq in quads.by_ref() {
                let k = [0, 1, 2, 3].map(|i| &kq[i * D..(i + 1) * D]);
                let a = dot4::<D>(q, k);
                // SAFETY: as above; `row[at..at + 4]` exists (four keys were read).
                unsafe {
                    let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
                    let s4 = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
                    _mm_storeu_ps(row.as_mut_ptr().add(at), _mm_mul_ps(s4, _mm_set1_ps(scale)));
                }
                at += 4;
            }
            for (s, k) in row[at..].iter_mut().zip(quads.remainder().chunks_exact(D)) {
                let a = dot4::<D>(q, [k, k, k, k]);
                *s = hsum(a[0]) * scale;
            }
        }
    }

    /// `e^(x − max)` over `row` in place, returning the sum: a degree-6 polynomial on the
    /// fraction after taking out powers of two (Cephes' `expf`, within 2 ulp).
    pub(super) fn softmax_exp(row: &mut [f32]) -> f32 {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
        let mut chunks = row.chunks_exact_mut(8);
        // SAFETY: AVX2 and FMA are enabled at compile time; chunks hold eight floats.
        let mut sum = unsafe {
            let (m, mut acc) = (_mm256_set1_ps(max), _mm256_setzero_ps());
            for c in chunks.by_ref() {
                let e = exp(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                acc = _mm256_add_ps(acc, e);
            }
            hsum(acc)
        };
        for s in chunks.into_remainder() {
            *s = (*s - max).exp();
            sum += *s;
        }
        sum
    }

    #[inline(always)]
    pub(crate) unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_max_ps(
            _mm256_min_ps(x, _mm256_set1_ps(88.376_26)),
            _mm256_set1_ps(-87.336_55),
        );
        let fx = _mm256_floor_ps(_mm256_fmadd_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        ));
        let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
        let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), x);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(
            y,
            _mm256_mul_ps(x, x),
            _mm256_add_ps(x, _mm256_set1_ps(1.0)),
        );
        let pow2 = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
    }

    /// `out` (`rep × D`) = each row of `probs` (`rep × n`, unnormalised) times the value rows,
    /// over its sum; the output row stays in registers across the values.
    pub(super) fn weigh<const D: usize>(
        probs: &[f32],
        values: &[f32],
        sums: &[f32],
        out: &mut [f32],
    ) {
        assert!(D.is_multiple_of(16) && D / 8 <= MAX_LANES);
        let n = values.len() / D;
        for ((p, o), sum) in probs.chunks_exact(n).zip(out.chunks_exact_mut(D)).zip(sums) {
            // SAFETY: AVX2 and FMA are enabled at compile time; rows hold D floats.
            unsafe {
                let mut acc = [_mm256_setzero_ps(); MAX_LANES];
                for (p, v) in p.iter().zip(values.chunks_exact(D)) {
                    let p = _mm256_set1_ps(*p);
                    for (c, a) in acc.iter_mut().enumerate().take(D / 8) {
                        *a = _mm256_fmadd_ps(p, _mm256_loadu_ps(v.as_ptr().add(8 * c)), *a);
                    }
                }
                let inv = _mm256_set1_ps(1.0 / sum);
                for (c, a) in acc.iter().enumerate().take(D / 8) {
                    _mm256_storeu_ps(o.as_mut_ptr().add(8 * c), _mm256_mul_ps(*a, inv));
                }
            }
        }
    }
}

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
        simd::scores::<D>(qs, keys, self.scale, &mut scores);
        let sums: Vec<f32> = scores.chunks_exact_mut(n).map(simd::softmax_exp).collect();
        simd::weigh::<D>(&scores, values, &sums, out);
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
