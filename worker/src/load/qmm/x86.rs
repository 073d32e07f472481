//! The kernel's x86 code: input quantization and the tiles on 256- and 512-bit registers.
use std::arch::x86_64::*;

use half::f16;

use super::{Format, Packed, QuantX, BLOCK, TILE};

/// Output rows of a 256-bit record.
const ROWS: usize = 8;
/// How far ahead of use (bytes, along the packed weights, which a matmul reads front to back)
/// the kernel asks the memory for them. The hardware's own prefetching left a batched step
/// waiting on the weights' loads; 10 KiB ahead took a 4-stream step on SmolLM2 from about
/// 800 to 880 tok/s (8 KiB–20 KiB measured alike, 2.5 KiB less well).
const PREFETCH: usize = 10 << 10;

/// Ask for the `len` bytes at `PREFETCH` past `r` (past the end of the weights is harmless:
/// a prefetch never faults).
#[inline(always)]
unsafe fn prefetch(r: *const u8, len: usize) {
    let ahead = r.wrapping_add(PREFETCH);
    for line in (0..len).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line) as *const i8);
    }
}

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

/// Where `R` input rows from `r0` keep their quants, scales and sums (`QuantX`), indexed by
/// block in the tiles without bounds checks (`QuantX` holds `rows × kb` blocks; `r0 + R <=
/// rows`). `u` (the quants + 128, for VNNI's unsigned operand against signed Q8 weights) only
/// when `unsigned`, else null.
struct Inputs<const R: usize> {
    q: [*const i8; R],
    u: [*const u8; R],
    d: [*const f32; R],
    s: [*const f32; R],
}

impl<const R: usize> Inputs<R> {
    #[inline(always)]
    unsafe fn new(q: &QuantX, r0: usize, unsigned: bool) -> Self {
        let kb = q.kb;
        Self {
            q: std::array::from_fn(|j| q.q.as_ptr().add((r0 + j) * kb * BLOCK)),
            u: std::array::from_fn(|j| match unsigned {
                true => q.u.as_ptr().add((r0 + j) * kb * BLOCK),
                false => std::ptr::null(),
            }),
            d: std::array::from_fn(|j| q.d.as_ptr().add((r0 + j) * kb)),
            s: std::array::from_fn(|j| q.s.as_ptr().add((r0 + j) * kb)),
        }
    }
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
    let format = if Q4 { Format::Q4 } else { Format::Q8 };
    let (rec, scales) = (format.record(ROWS), format.scales(ROWS));
    let base = p.data.as_ptr().add(g * kb * rec);
    let nib = _mm256_set1_epi8(0x0f);
    let Inputs {
        q: xq,
        u: xu,
        d: xd,
        s: xs,
    } = Inputs::<R>::new(q, r0, D::BIASED && !Q4);
    let mut tot = [_mm256_setzero_ps(); R];
    for b in 0..kb {
        let r = base.add(b * rec);
        let at = b * BLOCK;
        prefetch(r, rec);
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
            _mm256_cvtph_ps(_mm_loadu_si128(r.add(scales) as *const __m128i))
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
                let sums = _mm_loadu_si128(r.add(scales + 2 * ROWS) as *const __m128i);
                let sums = _mm256_cvtepi16_epi32(sums);
                let bias = _mm256_slli_epi32(sums, 7);
                for a in acc.iter_mut() {
                    *a = _mm256_sub_epi32(*a, bias);
                }
            }
            _mm256_cvtph_ps(_mm_loadu_si128(r.add(scales) as *const __m128i))
        };
        for j in 0..R {
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(*xd[j].add(b)));
            tot[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[j]), scale, tot[j]);
        }
        if Q4 {
            let mw = _mm256_cvtph_ps(_mm_loadu_si128(r.add(scales + 2 * ROWS) as *const __m128i));
            for j in 0..R {
                tot[j] = _mm256_fmadd_ps(mw, _mm256_set1_ps(*xs[j].add(b)), tot[j]);
            }
        }
    }
    for (j, t) in tot.iter().enumerate() {
        _mm256_storeu_ps(dst.add((r0 + j) * p.n + g * ROWS), *t);
    }
}

/// A kernel's tile: `R` input rows from `r0` against group `g` of a record's output rows.
trait Tile {
    unsafe fn tile<const R: usize, const Q4: bool>(
        p: &Packed,
        g: usize,
        q: &QuantX,
        r0: usize,
        dst: *mut f32,
    );
}

/// 256-bit registers and 8-row records, with `D`'s integer dot step.
struct Ymm<D>(std::marker::PhantomData<D>);

impl<D: Dot> Tile for Ymm<D> {
    #[inline(always)]
    unsafe fn tile<const R: usize, const Q4: bool>(
        p: &Packed,
        g: usize,
        q: &QuantX,
        r0: usize,
        dst: *mut f32,
    ) {
        tile::<D, R, Q4>(p, g, q, r0, dst)
    }
}

/// 512-bit registers and 16-row records (VNNI).
struct Zmm;

impl Tile for Zmm {
    #[inline(always)]
    unsafe fn tile<const R: usize, const Q4: bool>(
        p: &Packed,
        g: usize,
        q: &QuantX,
        r0: usize,
        dst: *mut f32,
    ) {
        tile16::<R, Q4>(p, g, q, r0, dst)
    }
}

#[inline(always)]
unsafe fn groups_of<T: Tile, const Q4: bool>(
    p: &Packed,
    range: std::ops::Range<usize>,
    q: &QuantX,
    dst: *mut f32,
) {
    for g in range {
        let mut r0 = 0;
        while r0 + TILE <= q.rows {
            T::tile::<TILE, Q4>(p, g, q, r0, dst);
            r0 += TILE;
        }
        match q.rows - r0 {
            1 => T::tile::<1, Q4>(p, g, q, r0, dst),
            2 => T::tile::<2, Q4>(p, g, q, r0, dst),
            3 => T::tile::<3, Q4>(p, g, q, r0, dst),
            _ => {}
        }
    }
}

#[inline(always)]
unsafe fn groups<T: Tile>(p: &Packed, range: std::ops::Range<usize>, q: &QuantX, dst: *mut f32) {
    match p.format {
        Format::Q4 => groups_of::<T, true>(p, range, q, dst),
        Format::Q8 => groups_of::<T, false>(p, range, q, dst),
    }
}

/// [`tile`] on 512-bit registers and 16-row records (VNNI only): `R` input rows from `r0`
/// against group `g` of sixteen output rows. Each lane runs the same integer and float steps
/// in the same order as on 256-bit registers, so the results are the same bits.
#[inline(always)]
unsafe fn tile16<const R: usize, const Q4: bool>(
    p: &Packed,
    g: usize,
    q: &QuantX,
    r0: usize,
    dst: *mut f32,
) {
    const ROWS16: usize = 16;
    let kb = q.kb;
    let format = if Q4 { Format::Q4 } else { Format::Q8 };
    let rec = format.record(ROWS16);
    let scales = format.scales(ROWS16);
    let base = p.data.as_ptr().add(g * kb * rec);
    let nib = _mm512_set1_epi8(0x0f);
    let Inputs {
        q: xq,
        u: xu,
        d: xd,
        s: xs,
    } = Inputs::<R>::new(q, r0, !Q4);
    let mut tot = [_mm512_setzero_ps(); R];
    for b in 0..kb {
        let r = base.add(b * rec);
        let at = b * BLOCK;
        prefetch(r, rec);
        let mut acc = [_mm512_setzero_si512(); R];
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(r.add(scales) as *const __m256i));
        if Q4 {
            for c in 0..4 {
                let raw = _mm512_loadu_si512(r.add(64 * c) as *const __m512i);
                let lo = _mm512_and_si512(raw, nib);
                let hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nib);
                for j in 0..R {
                    let x = bcast16(xq[j].add(at + 4 * c));
                    acc[j] = _mm512_dpbusd_epi32(acc[j], lo, x);
                    let x = bcast16(xq[j].add(at + 16 + 4 * c));
                    acc[j] = _mm512_dpbusd_epi32(acc[j], hi, x);
                }
            }
        } else {
            for c in 0..8 {
                let w = _mm512_loadu_si512(r.add(64 * c) as *const __m512i);
                for j in 0..R {
                    acc[j] = _mm512_dpbusd_epi32(acc[j], bcast16(xu[j].add(at + 4 * c)), w);
                }
            }
            // The unsigned operand was x + 128: take 128 × Σw back off.
            let sums = _mm256_loadu_si256(r.add(scales + 32) as *const __m256i);
            let bias = _mm512_slli_epi32(_mm512_cvtepi16_epi32(sums), 7);
            for a in acc.iter_mut() {
                *a = _mm512_sub_epi32(*a, bias);
            }
        }
        for j in 0..R {
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(*xd[j].add(b)));
            tot[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[j]), scale, tot[j]);
        }
        if Q4 {
            let mw = _mm512_cvtph_ps(_mm256_loadu_si256(r.add(scales + 32) as *const __m256i));
            for j in 0..R {
                tot[j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*xs[j].add(b)), tot[j]);
            }
        }
    }
    for (j, t) in tot.iter().enumerate() {
        _mm512_storeu_ps(dst.add((r0 + j) * p.n + g * ROWS16), *t);
    }
}

/// The four bytes at `p`, in every lane of a 512-bit register.
#[inline(always)]
unsafe fn bcast16<T>(p: *const T) -> __m512i {
    _mm512_set1_epi32((p as *const i32).read_unaligned())
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn groups_zmm(
    p: &Packed,
    range: std::ops::Range<usize>,
    q: &QuantX,
    dst: *mut f32,
) {
    groups::<Zmm>(p, range, q, dst)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn groups_vnni(
    p: &Packed,
    range: std::ops::Range<usize>,
    q: &QuantX,
    dst: *mut f32,
) {
    groups::<Ymm<Vnni>>(p, range, q, dst)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn groups_avx2(
    p: &Packed,
    range: std::ops::Range<usize>,
    q: &QuantX,
    dst: *mut f32,
) {
    groups::<Ymm<Avx2>>(p, range, q, dst)
}
