//! rbee's own quantized matmul on x86 CPUs, for the 4- and 8-bit formats most small GGUF files
//! use (Q4_0, Q4_1, Q8_0), with the weights as compact as the file's.
//!
//! candle has no SIMD kernel for Q4_1 and needs Q8_0 widths padded to 256 for its fast one, so
//! the worker used to read 2.3× the bytes llama.cpp reads per token on SmolLM2. Here the weights
//! keep the file's bits, repacked a register's worth of output rows at a time (8 rows of i32 on
//! 256-bit registers, 16 on 512-bit ones): one block of 32 inputs for those rows is one record
//! (Q4: the nibbles, then each row's scale and offset as f16; Q8: the quants, the scales, and each
//! row's sum of quants). Byte `4i..4i + 4` of every line (one register wide) belongs to row `i`,
//! so one `vpdpbusd` (or `vpmaddubsw` + `vpmaddwd` without VNNI) against four inputs broadcast to
//! every lane advances all the record's rows by four products: each weight is loaded once per
//! step however many rows the step has, and the sums land in the lanes of one register, ready to
//! be stored.
//!
//! The inputs are quantized to 8 bits per block of 32 (scale, and scale × sum of quants for the
//! Q4 offset), as llama.cpp does for these formats. A row's result never depends on which other
//! rows share the call: the integer dot products are exact and the float steps run in one fixed
//! order per row, so a seeded request gives the same text alone or batched.
use std::borrow::Cow;
use std::sync::Arc;

use arena::{Region, ARENA};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use half::f16;

/// Inputs per block: one scale per 32 inputs per row in every format handled here.
const BLOCK: usize = 32;
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
    /// Bytes of one row's block in a record: its quants, its scale and its offset or sum (f16 or
    /// i16 each).
    const fn per_row(self) -> usize {
        match self {
            Format::Q4 => BLOCK / 2 + 4,
            Format::Q8 => BLOCK + 4,
        }
    }

    /// Where a record of `rows` rows keeps the scales (the offsets or sums follow them).
    const fn scales(self, rows: usize) -> usize {
        (self.per_row() - 4) * rows
    }

    /// Bytes of one record (`rows` rows × one block).
    const fn record(self, rows: usize) -> usize {
        self.per_row() * rows
    }

    /// Bytes these weights take packed, for a `[n, k]` matrix.
    pub fn bytes(self, n: usize, k: usize) -> usize {
        n * (k / BLOCK) * self.per_row()
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
    /// AVX512-VNNI on 512-bit registers, 16 rows per record (`vpdpbusd zmm`). Half the
    /// instructions per output row of [`Isa::Vnni`]: on CPUs with full-width 512-bit units the
    /// integer products run twice as fast, and everywhere the per-row scale steps and input
    /// broadcasts halve. A batched step is bound by them, not by memory.
    Zmm,
    /// AVX512-VNNI on 256-bit registers, 8 rows per record (`vpdpbusd ymm`): matrices whose
    /// rows are not a multiple of 16 on the same CPUs.
    Vnni,
    /// AVX2: `vpmaddubsw` then `vpmaddwd`, 8 rows per record.
    Avx2,
}

impl Isa {
    /// Output rows per record: the i32 lanes of one register.
    const fn rows(self) -> usize {
        match self {
            Isa::Zmm => 16,
            Isa::Vnni | Isa::Avx2 => 8,
        }
    }

    /// The instruction sets this machine runs, best first (detected once: every matrix of a
    /// load asks).
    fn detected() -> &'static [Isa] {
        static DETECTED: std::sync::LazyLock<Vec<Isa>> = std::sync::LazyLock::new(Isa::detect);
        &DETECTED
    }

    fn detect() -> Vec<Isa> {
        // The same detection admission's estimate makes for this node.
        if !rbee_store::estimate::host_qmm() || std::env::var_os("RBEE_NO_QMM").is_some() {
            return Vec::new();
        }
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512vnni") && has!("avx512f") && has!("avx512bw") {
                all.push(Isa::Zmm);
            }
            if has!("avx512vnni") && has!("avx512vl") {
                all.push(Isa::Vnni);
            }
        }
        all.push(Isa::Avx2);
        // `RBEE_QMM_ISA=avx2|vnni256`: the narrower paths on a CPU that has more, to measure them
        // (`bench/worker.sh`) where no such CPU is at hand.
        match std::env::var("RBEE_QMM_ISA").as_deref() {
            Ok("avx2") => all.retain(|i| *i == Isa::Avx2),
            Ok("vnni256") => all.retain(|i| *i != Isa::Zmm),
            Ok(other) => tracing::warn!(
                "RBEE_QMM_ISA={other} is not a kernel path (avx2 or vnni256); using the best"
            ),
            Err(_) => {}
        }
        all
    }

    /// The best of `detected` for `n` output rows.
    fn for_rows(detected: &[Isa], n: usize) -> Option<Isa> {
        detected
            .iter()
            .copied()
            .find(|i| n.is_multiple_of(i.rows()))
    }
}

fn isa() -> Option<Isa> {
    Isa::detected().first().copied()
}

/// Whether this machine runs the kernel (x86-64 with AVX2, FMA and F16C). Elsewhere the worker
/// keeps candle's kernels (and its Q8_0 re-encoding of Q4_1).
pub fn available() -> bool {
    isa().is_some()
}

/// Whether a `[n, k]` matrix of type `t` would be packed here (every instruction set takes
/// rows in eights).
pub fn packs(t: GgmlDType, n: usize, k: usize) -> bool {
    Format::of(t).is_some() && n.is_multiple_of(8) && k.is_multiple_of(BLOCK) && k > 0
}

/// A weight matrix (`[n, k]`, out × in) packed for the kernel.
pub struct Packed {
    format: Format,
    isa: Isa,
    n: usize,
    k: usize,
    data: Region,
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
        let (n, _) = weights.shape().dims2()?;
        match Isa::for_rows(Isa::detected(), n) {
            Some(isa) => Self::with(weights, isa),
            None => Ok(None),
        }
    }

    /// Repack `weights` for `isa`'s records.
    fn with(weights: &QTensor, isa: Isa) -> candle_core::Result<Option<Self>> {
        let (n, k) = weights.shape().dims2()?;
        let t = weights.dtype();
        let Some(format) = Format::of(t) else {
            return Ok(None);
        };
        let rows = isa.rows();
        if !weights.device().is_cpu() || !packs(t, n, k) || !n.is_multiple_of(rows) {
            return Ok(None);
        }
        let raw: Cow<'_, [u8]> = weights.data()?;
        let kb = k / BLOCK;
        // A line: four bytes (four quants, or eight nibbles) of each row.
        let line = 4 * rows;
        let scales = format.scales(rows);
        // The offsets (Q4) or sums of quants (Q8) follow the scales.
        let extra = scales + 2 * rows;
        let mut data = ARENA.region(format.bytes(n, k))?;
        for (gb, out) in data.chunks_exact_mut(format.record(rows)).enumerate() {
            let (g, b) = (gb / kb, gb % kb);
            for i in 0..rows {
                let (v, d, m) = block_of(t, &raw, kb, g * rows + i, b);
                out[scales + 2 * i..scales + 2 * i + 2].copy_from_slice(&d.to_le_bytes());
                let m = match format {
                    Format::Q4 => {
                        for c in 0..4 {
                            for tt in 0..4 {
                                let lo = v[4 * c + tt] as u8;
                                let hi = v[16 + 4 * c + tt] as u8;
                                out[line * c + 4 * i + tt] = lo | (hi << 4);
                            }
                        }
                        m
                    }
                    Format::Q8 => {
                        for j in 0..8 {
                            for tt in 0..4 {
                                out[line * j + 4 * i + tt] = v[4 * j + tt] as i8 as u8;
                            }
                        }
                        v.iter().sum::<i16>() as u16
                    }
                };
                out[extra + 2 * i..extra + 2 * i + 2].copy_from_slice(&m.to_le_bytes());
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

    /// Matrices with the same input width, format and records stacked as one (`[Σn, k]`): the
    /// records are grouped by output rows, so the parts' data simply follow each other. `None`
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
            data: Region::join(&parts.iter().map(|p| &p.data).collect::<Vec<_>>())
                .or_else(|| copy(parts))?,
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
        let unsigned = self.format == Format::Q8 && self.isa != Isa::Avx2;
        let q = QuantX::new(x, rows, self.k, unsigned);
        let groups = self.n / self.isa.rows();
        let dst_at = dst.as_mut_ptr() as usize;
        let run = |range: std::ops::Range<usize>| {
            // SAFETY: each group writes only its own columns of `dst` (sized rows × n by the
            // caller), and `isa` was detected on this machine.
            unsafe { self.groups(range, &q, dst_at as *mut f32) }
        };
        let pool = candle_core::utils::barrier_pool();
        pool.execute_chunked(groups, run);
    }

    /// Every input row against groups `range` of a record's output rows.
    ///
    /// # Safety
    /// `dst` points at `rows × n` floats; the CPU has the features of `self.isa`.
    unsafe fn groups(&self, range: std::ops::Range<usize>, q: &QuantX, dst: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        match self.isa {
            Isa::Zmm => x86::groups_zmm(self, range, q, dst),
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

/// The parts' data one after another in a new region (when they were not made in a row).
fn copy(parts: &[&Packed]) -> Option<Region> {
    let mut data = ARENA
        .region(parts.iter().map(|p| p.data.len()).sum())
        .ok()?;
    let mut at = 0;
    for p in parts {
        data[at..at + p.data.len()].copy_from_slice(&p.data);
        at += p.data.len();
    }
    Some(data)
}

mod arena;
#[cfg(target_arch = "x86_64")]
mod x86;

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
        for (t, isa) in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0]
            .into_iter()
            .flat_map(|t| Isa::detected().iter().map(move |&i| (t, i)))
        {
            let (n, k, rows) = (48, 96, 5);
            let (q, _) = weights(t, n, k, 7);
            let p = Packed::with(&q, isa).unwrap().expect("packs");
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
                        "{t:?} on {isa:?}, row {r} col {o}: {got} against {want}"
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
    fn every_instruction_set_gives_the_same_bits() {
        let all = Isa::detected();
        for t in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let (n, k) = (32, 128);
            let (q, _) = weights(t, n, k, 3);
            let x = input(6, k);
            let mut first: Option<(Isa, Vec<f32>)> = None;
            for &isa in all {
                let p = Packed::with(&q, isa).unwrap().expect("packs");
                let mut y = vec![0f32; 6 * n];
                p.matmul(&x, 6, &mut y);
                match &first {
                    Some((i, want)) => assert_eq!(&y, want, "{t:?}: {isa:?} against {i:?}"),
                    None => first = Some((isa, y)),
                }
            }
        }
    }

    #[test]
    fn rows_not_a_multiple_of_16_take_eight_row_records() {
        let all = Isa::detected();
        if all.first() != Some(&Isa::Zmm) {
            return;
        }
        assert_eq!(Isa::for_rows(all, 32), Some(Isa::Zmm));
        assert_eq!(Isa::for_rows(all, 24), Some(Isa::Vnni));
        // And they give what the 16-row machine's other matrices would: the dequantised product.
        let (q, p) = weights(GgmlDType::Q4_1, 24, 64, 5);
        assert_eq!(p.isa, Isa::Vnni);
        let x = input(2, 64);
        let (mut y, mut z) = (vec![0f32; 48], vec![0f32; 48]);
        p.matmul(&x, 2, &mut y);
        Packed::with(&q, Isa::Avx2)
            .unwrap()
            .unwrap()
            .matmul(&x, 2, &mut z);
        assert_eq!(y, z);
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
