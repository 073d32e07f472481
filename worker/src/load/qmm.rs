//! rbee's own quantized matmul on x86 CPUs, for the 4- and 8-bit formats most small GGUF files
//! use (Q4_0, Q4_1, Q8_0), with the weights as compact as the file's.
//!
//! candle has no SIMD kernel for Q4_1 and needs Q8_0 widths padded to 256 for its fast one, so
//! the worker used to read 2.3× the bytes llama.cpp reads per token on SmolLM2. Here the weights
//! keep the file's bits, repacked eight output rows at a time: one block of 32 inputs for eight
//! rows is one record (Q4: 128 bytes of nibbles, then the eight scales and eight offsets as f16;
//! Q8: 256 bytes, the eight scales, and each row's sum of quants). Byte `4i..4i + 4` of every
//! 32-byte line belongs to row `i`, so one `vpdpbusd` (or `vpmaddubsw` + `vpmaddwd` without VNNI)
//! against four inputs broadcast to every lane advances all eight rows by four products: each
//! weight is loaded once per step however many rows the step has, and the eight sums land in the
//! eight lanes of one register, ready to be stored.
//!
//! The inputs are quantized to 8 bits per block of 32 (scale, and scale × sum of quants for the
//! Q4 offset), as llama.cpp does for these formats. A row's result never depends on which other
//! rows share the call: the integer dot products are exact and the float steps run in one fixed
//! order per row, so a seeded request gives the same text alone or batched.
use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use half::f16;

/// Inputs per block: one scale per 32 inputs per row in every format handled here.
const BLOCK: usize = 32;
/// Output rows packed together (one 256-bit register of f32 or i32 lanes).
const ROWS: usize = 8;
/// Input rows computed together against one record, sharing its load and unpacking.
const TILE: usize = 4;

/// The packed weight formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// 4-bit unsigned quants with a scale and an offset per block (Q4_1; Q4_0 with offset −8·d).
    Q4,
    /// 8-bit signed quants with a scale per block (Q8_0).
    Q8,
}

impl Format {
    /// Bytes of one record (eight rows × one block).
    const fn record(self) -> usize {
        match self {
            Format::Q4 => 128 + 16 + 16,
            Format::Q8 => 256 + 16 + 16,
        }
    }

    /// Bytes these weights take packed, for a `[n, k]` matrix.
    pub fn bytes(self, n: usize, k: usize) -> usize {
        n / ROWS * (k / BLOCK) * self.record()
    }

    fn of(t: GgmlDType) -> Option<Self> {
        match t {
            GgmlDType::Q4_0 | GgmlDType::Q4_1 => Some(Format::Q4),
            GgmlDType::Q8_0 => Some(Format::Q8),
            _ => None,
        }
    }
}

/// Which instructions the kernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    /// AVX512-VNNI on 256-bit registers (`vpdpbusd ymm`).
    Vnni,
    /// AVX2: `vpmaddubsw` then `vpmaddwd`.
    Avx2,
}

fn isa() -> Option<Isa> {
    // The same detection admission's estimate makes for this node.
    if !rbee_store::estimate::host_qmm() || std::env::var_os("RBEE_NO_QMM").is_some() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512vnni")
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        return Some(Isa::Vnni);
    }
    Some(Isa::Avx2)
}

/// Whether this machine runs the kernel (x86-64 with AVX2, FMA and F16C). Elsewhere the worker
/// keeps candle's kernels (and its Q8_0 re-encoding of Q4_1).
pub fn available() -> bool {
    isa().is_some()
}

/// Whether a `[n, k]` matrix of type `t` would be packed here.
pub fn packs(t: GgmlDType, n: usize, k: usize) -> bool {
    Format::of(t).is_some() && n.is_multiple_of(ROWS) && k.is_multiple_of(BLOCK) && k > 0
}

/// A weight matrix (`[n, k]`, out × in) packed for the kernel.
pub struct Packed {
    format: Format,
    isa: Isa,
    n: usize,
    k: usize,
    data: Vec<u8>,
}

/// The 32 quant values of block `b` of row `r` and the block's scale and offset (f16 bits), from
/// a file's bytes.
fn block_of(t: GgmlDType, raw: &[u8], kb: usize, r: usize, b: usize) -> ([i16; BLOCK], u16, u16) {
    let mut v = [0i16; BLOCK];
    let size = t.type_size();
    let at = &raw[(r * kb + b) * size..(r * kb + b + 1) * size];
    let d = u16::from_le_bytes([at[0], at[1]]);
    match t {
        GgmlDType::Q8_0 => {
            for (j, x) in v.iter_mut().enumerate() {
                *x = i16::from(at[2 + j] as i8);
            }
            (v, d, 0)
        }
        GgmlDType::Q4_0 | GgmlDType::Q4_1 => {
            let (m, qs) = if t == GgmlDType::Q4_1 {
                (u16::from_le_bytes([at[2], at[3]]), &at[4..20])
            } else {
                // value = d·(q − 8) = d·q + (−8·d); times a power of two is exact in f16.
                (
                    f16::from_f32(-8.0 * f16::from_bits(d).to_f32()).to_bits(),
                    &at[2..18],
                )
            };
            for (j, &q) in qs.iter().enumerate() {
                v[j] = i16::from(q & 0x0f);
                v[j + 16] = i16::from(q >> 4);
            }
            (v, d, m)
        }
        _ => unreachable!("packs() admits only Q4_0, Q4_1 and Q8_0"),
    }
}

impl Packed {
    /// Repack `weights` (`[n, k]`, on the CPU), or `None` where the kernel does not apply.
    pub fn new(weights: &QTensor) -> candle_core::Result<Option<Self>> {
        let (n, k) = weights.shape().dims2()?;
        let t = weights.dtype();
        let (Some(isa), Some(format)) = (isa(), Format::of(t)) else {
            return Ok(None);
        };
        if !weights.device().is_cpu() || !packs(t, n, k) {
            return Ok(None);
        }
        let raw: Cow<'_, [u8]> = weights.data()?;
        let kb = k / BLOCK;
        let rec = format.record();
        let mut data = vec![0u8; format.bytes(n, k)];
        for (gb, out) in data.chunks_exact_mut(rec).enumerate() {
            let (g, b) = (gb / kb, gb % kb);
            let mut sums = [0i16; ROWS];
            let scales = match format {
                Format::Q4 => 128,
                Format::Q8 => 256,
            };
            for i in 0..ROWS {
                let (v, d, m) = block_of(t, &raw, kb, g * ROWS + i, b);
                out[scales + 2 * i..scales + 2 * i + 2].copy_from_slice(&d.to_le_bytes());
                match format {
                    Format::Q4 => {
                        out[144 + 2 * i..146 + 2 * i].copy_from_slice(&m.to_le_bytes());
                        for c in 0..4 {
                            for tt in 0..4 {
                                let lo = v[4 * c + tt] as u8;
                                let hi = v[16 + 4 * c + tt] as u8;
                                out[32 * c + 4 * i + tt] = lo | (hi << 4);
                            }
                        }
                    }
                    Format::Q8 => {
                        for j in 0..8 {
                            for tt in 0..4 {
                                out[32 * j + 4 * i + tt] = v[4 * j + tt] as i8 as u8;
                            }
                        }
                        sums[i] = v.iter().sum();
                    }
                }
            }
            if format == Format::Q8 {
                for (i, s) in sums.iter().enumerate() {
                    out[272 + 2 * i..274 + 2 * i].copy_from_slice(&s.to_le_bytes());
                }
            }
        }
        Ok(Some(Self {
            format,
            isa,
            n,
            k,
            data,
        }))
    }

    /// Matrices with the same input width and format stacked as one (`[Σn, k]`): the records
    /// are grouped by eight output rows, so the parts' data simply follow each other. `None`
    /// when they do not match.
    pub fn concat(parts: &[&Packed]) -> Option<Self> {
        let first = parts.first()?;
        if parts
            .iter()
            .any(|p| p.k != first.k || p.format != first.format || p.isa != first.isa)
        {
            return None;
        }
        Some(Self {
            format: first.format,
            isa: first.isa,
            n: parts.iter().map(|p| p.n).sum(),
            k: first.k,
            data: parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
        })
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Bytes the packed weights take.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// `x` (`[rows, k]`) times these weights transposed: `[rows, n]`.
    pub fn forward(self: &Arc<Self>, x: &Tensor) -> candle_core::Result<Tensor> {
        x.to_dtype(candle_core::DType::F32)?
            .contiguous()?
            .apply_op1_no_bwd(&Op(self.clone()))
    }

    /// The matmul on plain slices: `x` holds `rows` rows of `k`; `dst` receives `rows` rows of `n`.
    fn matmul(&self, x: &[f32], rows: usize, dst: &mut [f32]) {
        let unsigned = self.format == Format::Q8 && self.isa == Isa::Vnni;
        let q = QuantX::new(x, rows, self.k, unsigned);
        let groups = self.n / ROWS;
        let dst_at = dst.as_mut_ptr() as usize;
        let run = |range: std::ops::Range<usize>| {
            // SAFETY: each group writes only its own eight columns of `dst` (sized rows × n by the
            // caller), and `isa` was detected on this machine.
            unsafe { self.groups(range, &q, dst_at as *mut f32) }
        };
        let pool = candle_core::utils::barrier_pool();
        pool.execute_chunked(groups, run);
    }

    /// Every input row against groups `range` of eight output rows.
    ///
    /// # Safety
    /// `dst` points at `rows × n` floats; the CPU has the features of `self.isa`.
    unsafe fn groups(&self, range: std::ops::Range<usize>, q: &QuantX, dst: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        match self.isa {
            Isa::Vnni => x86::groups_vnni(self, range, q, dst),
            Isa::Avx2 => x86::groups_avx2(self, range, q, dst),
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (range, q, dst);
    }
}

/// Input rows quantized to 8 bits per block of 32.
struct QuantX {
    rows: usize,
    /// Blocks per row.
    kb: usize,
    /// The quants, row-major.
    q: Vec<i8>,
    /// The quants + 128, for VNNI's unsigned operand against signed Q8 weights.
    u: Vec<u8>,
    /// Per block: scale.
    d: Vec<f32>,
    /// Per block: scale × sum of the quants (meets a Q4 block's offset).
    s: Vec<f32>,
}

impl QuantX {
    /// Quantize `rows` rows of `k` (`unsigned`: also keep the quants + 128, for Q8 on VNNI).
    fn new(x: &[f32], rows: usize, k: usize, unsigned: bool) -> Self {
        let kb = k / BLOCK;
        let mut q = vec![0i8; rows * k];
        let mut d = vec![0f32; rows * kb];
        let mut s = vec![0f32; rows * kb];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the kernel (the only user) runs only where AVX2 and FMA were detected.
        unsafe {
            x86::quantize(x, &mut q, &mut d, &mut s)
        };
        let u = match unsigned {
            true => q.iter().map(|&v| (v as u8) ^ 0x80).collect(),
            false => Vec::new(),
        };
        Self {
            rows,
            kb,
            q,
            u,
            d,
            s,
        }
    }
}

/// The kernel as a candle op on the input tensor.
struct Op(Arc<Packed>);

impl CustomOp1 for Op {
    fn name(&self) -> &'static str {
        "rbee-qmm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = &self.0;
        let CpuStorage::F32(x) = s else {
            candle_core::bail!("rbee-qmm: f32 input expected");
        };
        let (rows, k) = l.shape().dims2()?;
        if k != p.k {
            candle_core::bail!("rbee-qmm: input width {k}, weights {}", p.k);
        }
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("rbee-qmm: contiguous input expected");
        };
        let mut dst = vec![0f32; rows * p.n];
        p.matmul(&x[start..end], rows, &mut dst);
        Ok((CpuStorage::F32(dst), Shape::from((rows, p.n))))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{Format, Packed, QuantX, BLOCK, ROWS, TILE};

    /// The integer dot step, per instruction set.
    trait Dot {
        /// Whether Q8 sums come out biased by 128 × Σw (VNNI's unsigned operand is x + 128).
        const BIASED: bool;
        /// `acc` + per lane Σ₄ w·x, `w` unsigned (0..15), `x` signed.
        unsafe fn q4(acc: __m256i, w: __m256i, x: __m256i) -> __m256i;
        /// `acc` + per lane Σ₄ w·x, `w` signed; `xu` is x + 128.
        unsafe fn q8(acc: __m256i, w: __m256i, x: __m256i, xu: __m256i) -> __m256i;
    }

    struct Vnni;
    struct Avx2;

    impl Dot for Vnni {
        const BIASED: bool = true;
        #[inline(always)]
        unsafe fn q4(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(acc, w, x)
        }
        #[inline(always)]
        unsafe fn q8(acc: __m256i, w: __m256i, _x: __m256i, xu: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(acc, xu, w)
        }
    }

    impl Dot for Avx2 {
        const BIASED: bool = false;
        #[inline(always)]
        unsafe fn q4(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
            let pairs = _mm256_maddubs_epi16(w, x);
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
        #[inline(always)]
        unsafe fn q8(acc: __m256i, w: __m256i, x: __m256i, _xu: __m256i) -> __m256i {
            // |w| · (x with w's sign): the same products, with an unsigned left operand.
            let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }

    /// Each block of 32 values of `x` to 8 bits: quants into `q`, scale (max |x| / 127) into `d`,
    /// scale × sum of the quants into `s`. Rounding to nearest, ties to even; the scale and the
    /// sum kept at f16 precision, exactly as llama.cpp's Q8_1 and Q8_0 activations (which took
    /// SmolLM2's largest logit difference from llama.cpp on its test prompts from 1.07 to 0.50).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantize(x: &[f32], q: &mut [i8], d: &mut [f32], s: &mut [f32]) {
        let sign = _mm256_set1_ps(-0.0);
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        // Explicit rounding: the conversion alone follows MXCSR, which other code may have set.
        const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        let blocks = x.chunks_exact(BLOCK).zip(q.chunks_exact_mut(BLOCK));
        for ((xs, qs), (d, s)) in blocks.zip(d.iter_mut().zip(s.iter_mut())) {
            // No closures here: they would not inherit this function's target features.
            let p = xs.as_ptr();
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
            );
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
            let scale = amax / 127.0;
            *d = f16::from_f32(scale).to_f32();
            let inv = _mm256_set1_ps(if amax > 0.0 { 1.0 / scale } else { 0.0 });
            let i = [
                _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v[0], inv))),
                _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v[1], inv))),
                _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v[2], inv))),
                _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(v[3], inv))),
            ];
            let sum = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
            let sum = _mm_add_epi32(
                _mm256_castsi256_si128(sum),
                _mm256_extracti128_si256(sum, 1),
            );
            let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b01_00_11_10));
            let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b10_11_00_01));
            *s = f16::from_f32(scale * _mm_cvtsi128_si32(sum) as f32).to_f32();
            // 32 → 16 → 8 bits pack within 128-bit lanes; the permute restores the order.
            let w = _mm256_packs_epi32(i[0], i[1]);
            let z = _mm256_packs_epi32(i[2], i[3]);
            let b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w, z), order);
            _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, b);
        }
    }

    /// The four bytes at `p`, in every lane.
    #[inline(always)]
    unsafe fn bcast<T>(p: *const T) -> __m256i {
        _mm256_set1_epi32((p as *const i32).read_unaligned())
    }

    /// `R` input rows from `r0` against one group of eight output rows; `Q4`: the weights'
    /// format (a constant, so the block loop has no branch on it).
    #[inline(always)]
    unsafe fn tile<D: Dot, const R: usize, const Q4: bool>(
        p: &Packed,
        g: usize,
        q: &QuantX,
        r0: usize,
        dst: *mut f32,
    ) {
        let kb = q.kb;
        let rec = if Q4 { Format::Q4 } else { Format::Q8 }.record();
        let base = p.data.as_ptr().add(g * kb * rec);
        let nib = _mm256_set1_epi8(0x0f);
        // Each input row's quants, scales and sums, indexed by block without bounds checks
        // (`QuantX` holds `rows × kb` blocks; `r0 + R <= rows`).
        let xq: [*const i8; R] = std::array::from_fn(|j| q.q.as_ptr().add((r0 + j) * kb * BLOCK));
        let xu: [*const u8; R] = std::array::from_fn(|j| match D::BIASED && !Q4 {
            true => q.u.as_ptr().add((r0 + j) * kb * BLOCK),
            false => std::ptr::null(),
        });
        let xd: [*const f32; R] = std::array::from_fn(|j| q.d.as_ptr().add((r0 + j) * kb));
        let xs: [*const f32; R] = std::array::from_fn(|j| q.s.as_ptr().add((r0 + j) * kb));
        let mut tot = [_mm256_setzero_ps(); R];
        for b in 0..kb {
            let r = base.add(b * rec);
            let at = b * BLOCK;
            let mut acc = [_mm256_setzero_si256(); R];
            let dw = if Q4 {
                for c in 0..4 {
                    let raw = _mm256_loadu_si256(r.add(32 * c) as *const __m256i);
                    let lo = _mm256_and_si256(raw, nib);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), nib);
                    for j in 0..R {
                        acc[j] = D::q4(acc[j], lo, bcast(xq[j].add(at + 4 * c)));
                        acc[j] = D::q4(acc[j], hi, bcast(xq[j].add(at + 16 + 4 * c)));
                    }
                }
                _mm256_cvtph_ps(_mm_loadu_si128(r.add(128) as *const __m128i))
            } else {
                for c in 0..8 {
                    let w = _mm256_loadu_si256(r.add(32 * c) as *const __m256i);
                    for j in 0..R {
                        let xu = match D::BIASED {
                            true => bcast(xu[j].add(at + 4 * c)),
                            false => _mm256_setzero_si256(),
                        };
                        acc[j] = D::q8(acc[j], w, bcast(xq[j].add(at + 4 * c)), xu);
                    }
                }
                if D::BIASED {
                    let sums = _mm256_cvtepi16_epi32(_mm_loadu_si128(r.add(272) as *const __m128i));
                    let bias = _mm256_slli_epi32(sums, 7);
                    for a in acc.iter_mut() {
                        *a = _mm256_sub_epi32(*a, bias);
                    }
                }
                _mm256_cvtph_ps(_mm_loadu_si128(r.add(256) as *const __m128i))
            };
            for j in 0..R {
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*xd[j].add(b)));
                tot[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[j]), scale, tot[j]);
            }
            if Q4 {
                let mw = _mm256_cvtph_ps(_mm_loadu_si128(r.add(144) as *const __m128i));
                for j in 0..R {
                    tot[j] = _mm256_fmadd_ps(mw, _mm256_set1_ps(*xs[j].add(b)), tot[j]);
                }
            }
        }
        for (j, t) in tot.iter().enumerate() {
            _mm256_storeu_ps(dst.add((r0 + j) * p.n + g * ROWS), *t);
        }
    }

    #[inline(always)]
    unsafe fn groups_of<D: Dot, const Q4: bool>(
        p: &Packed,
        range: std::ops::Range<usize>,
        q: &QuantX,
        dst: *mut f32,
    ) {
        for g in range {
            let mut r0 = 0;
            while r0 + TILE <= q.rows {
                tile::<D, TILE, Q4>(p, g, q, r0, dst);
                r0 += TILE;
            }
            match q.rows - r0 {
                1 => tile::<D, 1, Q4>(p, g, q, r0, dst),
                2 => tile::<D, 2, Q4>(p, g, q, r0, dst),
                3 => tile::<D, 3, Q4>(p, g, q, r0, dst),
                _ => {}
            }
        }
    }

    #[inline(always)]
    unsafe fn groups<D: Dot>(p: &Packed, range: std::ops::Range<usize>, q: &QuantX, dst: *mut f32) {
        match p.format {
            Format::Q4 => groups_of::<D, true>(p, range, q, dst),
            Format::Q8 => groups_of::<D, false>(p, range, q, dst),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn groups_vnni(
        p: &Packed,
        range: std::ops::Range<usize>,
        q: &QuantX,
        dst: *mut f32,
    ) {
        groups::<Vnni>(p, range, q, dst)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn groups_avx2(
        p: &Packed,
        range: std::ops::Range<usize>,
        q: &QuantX,
        dst: *mut f32,
    ) {
        groups::<Avx2>(p, range, q, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A `[n, k]` matrix of type `t` from a fixed pseudo-random sequence, with its packing.
    fn weights(t: GgmlDType, n: usize, k: usize, seed: u64) -> (QTensor, Packed) {
        let mut state = seed;
        let v: Vec<f32> = (0..n * k)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        let dense = Tensor::from_vec(v, (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&dense, t).unwrap();
        let p = Packed::new(&q).unwrap().expect("packed on this machine");
        (q, p)
    }

    fn input(rows: usize, k: usize) -> Vec<f32> {
        (0..rows * k)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 3.0)
            .collect()
    }

    #[test]
    fn matches_the_dequantised_product_for_every_format() {
        if !available() {
            return;
        }
        for t in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (n, k, rows) = (24, 96, 5);
            let (q, p) = weights(t, n, k, 7);
            let w = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let x = input(rows, k);
            let qx = QuantX::new(&x, rows, k, false);
            let mut y = vec![0f32; rows * n];
            p.matmul(&x, rows, &mut y);
            for r in 0..rows {
                for (o, wrow) in w.iter().enumerate() {
                    // The reference: the quantized input, dequantised, against the weights. A
                    // Q4 offset meets the block's sum of inputs, kept at f16 precision (as
                    // llama.cpp keeps it): allow for that rounding (2⁻¹¹ of it) too.
                    let (mut want, mut mag, mut sums) = (0f64, 0f64, 0f64);
                    for (i, wv) in wrow.iter().enumerate() {
                        let xv =
                            f64::from(qx.q[r * k + i]) * f64::from(qx.d[r * qx.kb + i / BLOCK]);
                        want += xv * f64::from(*wv);
                        mag += (xv * f64::from(*wv)).abs();
                    }
                    for (b, ws) in wrow.chunks_exact(BLOCK).enumerate() {
                        let wmax = ws.iter().fold(0f32, |a, v| a.max(v.abs()));
                        sums += f64::from(wmax) * f64::from(qx.s[r * qx.kb + b]).abs();
                    }
                    let got = f64::from(y[r * n + o]);
                    assert!(
                        (got - want).abs() <= 1e-4 * mag + 1e-3 * sums + 1e-5,
                        "{t:?} row {r} col {o}: {got} against {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_whatever_rides_with_it() {
        if !available() {
            return;
        }
        for t in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (n, k) = (16, 64);
            let (_, p) = weights(t, n, k, 11);
            let x = input(9, k);
            let mut all = vec![0f32; 9 * n];
            p.matmul(&x, 9, &mut all);
            for r in 0..9 {
                let mut one = vec![0f32; n];
                p.matmul(&x[r * k..(r + 1) * k], 1, &mut one);
                assert_eq!(one, all[r * n..(r + 1) * n], "{t:?} row {r}");
            }
        }
    }

    #[test]
    fn vnni_and_avx2_give_the_same_bits() {
        if isa() != Some(Isa::Vnni) {
            return;
        }
        for t in [GgmlDType::Q4_0, GgmlDType::Q8_0] {
            let (n, k) = (32, 128);
            let (_, mut p) = weights(t, n, k, 3);
            let x = input(6, k);
            let mut a = vec![0f32; 6 * n];
            p.matmul(&x, 6, &mut a);
            p.isa = Isa::Avx2;
            let mut b = vec![0f32; 6 * n];
            p.matmul(&x, 6, &mut b);
            assert_eq!(a, b, "{t:?}");
        }
    }

    #[test]
    fn inputs_are_quantized_per_block_of_32_to_nearest() {
        if !available() {
            return;
        }
        let mut x = input(3, 64);
        x[40..72].fill(0.0); // a block of zeros: scale 0, quants 0
        let q = QuantX::new(&x, 3, 64, true);
        for (b, xs) in x.chunks_exact(BLOCK).enumerate() {
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            let scale = amax / 127.0;
            assert_eq!(q.d[b], f16::from_f32(scale).to_f32());
            let inv = if amax > 0.0 { 1.0 / scale } else { 0.0 };
            let want: Vec<i8> = xs
                .iter()
                .map(|v| (v * inv).round_ties_even() as i8)
                .collect();
            assert_eq!(q.q[b * BLOCK..(b + 1) * BLOCK], want[..], "block {b}");
            let sum: i32 = want.iter().map(|&v| i32::from(v)).sum();
            assert_eq!(q.s[b], f16::from_f32(scale * sum as f32).to_f32());
            assert_eq!(q.u[b * BLOCK], (want[0] as u8) ^ 0x80);
        }
    }

    #[test]
    fn shapes_it_cannot_pack_are_left_to_candle() {
        assert!(!packs(GgmlDType::Q4_1, 12, 64), "rows not a multiple of 8");
        assert!(!packs(GgmlDType::Q4K, 16, 256), "k-quants stay with candle");
        assert!(packs(GgmlDType::Q8_0, 16, 64));
    }
}
