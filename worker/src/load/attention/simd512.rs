use std::arch::x86_64::*;

/// Whether this CPU runs them.
pub(crate) fn available() -> bool {
    static HAS: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::arch::is_x86_feature_detected!("avx512f"));
    *HAS
}

/// The sum of a register's two halves.
#[inline(always)]
unsafe fn halves(v: __m512) -> __m256 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    _mm256_add_ps(_mm512_castps512_ps256(v), hi)
}

/// As [`super::simd::scores`].
///
/// # Safety
/// The CPU has AVX-512F ([`available`]).
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn scores<const D: usize>(qs: &[f32], keys: &[f32], scale: f32, out: &mut [f32]) {
    const { assert!(D == 64 || D == 128) };
    let n = keys.len() / D;
    let sc = _mm256_set1_ps(scale);
    for (q, row) in qs.chunks_exact(D).zip(out.chunks_exact_mut(n)) {
        let qv: [__m512; 8] = std::array::from_fn(|c| match c < D / 16 {
            true => _mm512_loadu_ps(q.as_ptr().add(16 * c)),
            false => _mm512_setzero_ps(),
        });
        let mut oct = keys.chunks_exact(8 * D);
        let mut at = 0;
        for k8 in oct.by_ref() {
            let mut acc = [_mm512_setzero_ps(); 8];
            for (c, qc) in qv.iter().enumerate().take(D / 16) {
                for (i, a) in acc.iter_mut().enumerate() {
                    let k = _mm512_loadu_ps(k8.as_ptr().add(i * D + 16 * c));
                    *a = _mm512_fmadd_ps(*qc, k, *a);
                }
            }
            let h = acc.map(|a| halves(a));
            // Lanes of (0,1,2,3 | 0,1,2,3) and (4,5,6,7 | 4,5,6,7), then one per key.
            let a = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
            let b = _mm256_hadd_ps(_mm256_hadd_ps(h[4], h[5]), _mm256_hadd_ps(h[6], h[7]));
            let s = _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(a, b),
                _mm256_permute2f128_ps::<0x31>(a, b),
            );
            _mm256_storeu_ps(row.as_mut_ptr().add(at), _mm256_mul_ps(s, sc));
            at += 8;
        }
        for (s, k) in row[at..].iter_mut().zip(oct.remainder().chunks_exact(D)) {
            let mut a = _mm512_setzero_ps();
            for (c, qc) in qv.iter().enumerate().take(D / 16) {
                a = _mm512_fmadd_ps(*qc, _mm512_loadu_ps(k.as_ptr().add(16 * c)), a);
            }
            *s = _mm512_reduce_add_ps(a) * scale;
        }
    }
}

/// As [`super::simd::weigh`].
///
/// # Safety
/// The CPU has AVX-512F ([`available`]).
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn weigh<const D: usize>(
    probs: &[f32],
    values: &[f32],
    sums: &[f32],
    out: &mut [f32],
) {
    const { assert!(D == 64 || D == 128) };
    let n = values.len() / D;
    for ((p, o), sum) in probs.chunks_exact(n).zip(out.chunks_exact_mut(D)).zip(sums) {
        // Even and odd value rows in their own registers: two chains per output register.
        let mut acc = [[_mm512_setzero_ps(); 8]; 2];
        let mut pairs = p.chunks_exact(2).zip(values.chunks_exact(2 * D));
        for (pp, vv) in pairs.by_ref() {
            for (half, acc) in acc.iter_mut().enumerate() {
                let pv = _mm512_set1_ps(pp[half]);
                let v = vv.as_ptr().add(half * D);
                for (c, a) in acc.iter_mut().enumerate().take(D / 16) {
                    *a = _mm512_fmadd_ps(pv, _mm512_loadu_ps(v.add(16 * c)), *a);
                }
            }
        }
        if n % 2 == 1 {
            let pv = _mm512_set1_ps(p[n - 1]);
            let v = values.as_ptr().add((n - 1) * D);
            for (c, a) in acc[0].iter_mut().enumerate().take(D / 16) {
                *a = _mm512_fmadd_ps(pv, _mm512_loadu_ps(v.add(16 * c)), *a);
            }
        }
        let inv = _mm512_set1_ps(1.0 / sum);
        let [even, odd] = acc;
        for (c, (e, o2)) in even.iter().zip(odd).enumerate().take(D / 16) {
            let a = _mm512_add_ps(*e, o2);
            _mm512_storeu_ps(o.as_mut_ptr().add(16 * c), _mm512_mul_ps(a, inv));
        }
    }
}
