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
pub(super) fn weigh<const D: usize>(probs: &[f32], values: &[f32], sums: &[f32], out: &mut [f32]) {
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
