//! A quantized weight matrix used two ways. A few rows (decode steps) go through candle's
//! quantized matmul, which reads the compact weights once and is bound by memory. Many rows (a
//! prompt chunk) go through a dequantised f32 copy and candle's gemm-backed matmul where candle's
//! generic quantized kernel would run them: on SmolLM2 Q8_0 with a 1 024-token prompt, one
//! thread, that took prompt processing from 129 to 189 tok/s (294 with the allocator kept from
//! returning memory to the kernel, see `main.rs`). Where candle's repacked AVX512-VNNI kernel
//! applies (Q8_0 widths padded to a multiple of 256 here), it is faster still for both.
//!
//! Q4_0, Q4_1 and Q8_0 matrices on an x86 CPU with AVX2 take neither: they run on rbee's own
//! kernel ([`super::qmm`]) for every row count, at the file's size.
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

use super::qmm::Packed;

/// Rows of a prompt chunk from which the dense path is taken (below it the quantized kernel is
/// as fast, and making a dense copy that is not kept costs a pass over the weights).
pub const MANY_ROWS: usize = 32;

/// candle's fastest CPU kernel for Q8_0 (weights repacked for AVX512-VNNI `vpdpbusd`) needs the
/// input width to be a multiple of this; other widths fall back to a generic dot product that
/// took half of every decode step on SmolLM2 (576 wide).
const REPACK_K: usize = 256;

/// Whether this CPU runs candle's repacked Q8_0 kernel (the detection admission's estimate
/// makes for this node).
fn vnni() -> bool {
    rbee_store::estimate::host_repacks()
}

/// `weights` (`[out, in]`, Q8_0 on CPU) with zero columns appended up to a multiple of
/// [`REPACK_K`], and how many were appended; `None` where that would not help.
fn padded(weights: &QTensor) -> candle_core::Result<Option<(QTensor, usize)>> {
    let (_, k) = weights.shape().dims2()?;
    if weights.dtype() != GgmlDType::Q8_0
        || !weights.device().is_cpu()
        || k.is_multiple_of(REPACK_K)
        || !vnni()
        || std::env::var_os("RBEE_NO_PAD").is_some()
    {
        return Ok(None);
    }
    let pad = REPACK_K - k % REPACK_K;
    let dense = weights
        .dequantize(&weights.device())?
        .pad_with_zeros(1, 0, pad)?;
    Ok(Some((QTensor::quantize(&dense, GgmlDType::Q8_0)?, pad)))
}

/// One weight matrix (`[out, in]`): packed for rbee's kernel, or through candle.
pub enum Linear {
    /// On rbee's kernel.
    Packed(Arc<Packed>),
    /// On candle's kernels.
    Candle(CandleLinear),
}

impl Linear {
    /// Wrap `weights`; `keep` (candle's path) holds the dequantised copy for later chunks (small
    /// models) instead of making it anew for each chunk (large ones, where it would double the
    /// memory).
    pub fn new(weights: QTensor, keep: bool) -> candle_core::Result<Self> {
        match Packed::new(&weights)? {
            Some(p) => Ok(Linear::Packed(Arc::new(p))),
            None => Ok(Linear::Candle(CandleLinear::new(weights, keep)?)),
        }
    }

    /// `x` (`[rows, in]`) times the weights transposed: `[rows, out]`. `prompt`: the rows are
    /// prompt tokens (candle's path may take its dense copy); decode rows always take the
    /// quantized one. The choice never depends on other rows, so neither does a row's result.
    pub fn forward(&mut self, x: &Tensor, prompt: bool) -> candle_core::Result<Tensor> {
        match self {
            Linear::Packed(p) => p.forward(x),
            Linear::Candle(c) => c.forward(x, prompt),
        }
    }
}

/// Matrices applied to the same input (q, k and v; gate and up): stacked into one on rbee's
/// kernel when every part is packed alike (one quantization of the input, one pass, one
/// dispatch to the threads instead of one per part), else kept apart.
pub enum Fused<const N: usize> {
    /// One stacked matrix and each part's output width.
    One(Arc<Packed>, [usize; N]),
    /// The parts.
    Parts([Linear; N]),
}

impl<const N: usize> Fused<N> {
    /// Stack `parts` where they allow it.
    pub fn new(parts: [Linear; N]) -> Self {
        let packed: Vec<&Packed> = parts
            .iter()
            .filter_map(|l| match l {
                Linear::Packed(p) => Some(p.as_ref()),
                Linear::Candle(_) => None,
            })
            .collect();
        if packed.len() == N {
            if let Some(one) = Packed::concat(&packed) {
                let widths = std::array::from_fn(|i| packed[i].rows());
                return Fused::One(Arc::new(one), widths);
            }
        }
        Fused::Parts(parts)
    }

    /// Each part's output for `x` (`[rows, in]`), through `project` where the parts are apart.
    pub fn forward(
        &mut self,
        x: &Tensor,
        mut project: impl FnMut(&mut Linear, &Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<[Tensor; N]> {
        match self {
            Fused::One(p, widths) => {
                let y = p.forward(x)?;
                let mut at = 0;
                let mut out = Vec::with_capacity(N);
                for w in widths.iter() {
                    out.push(y.narrow(1, at, *w)?);
                    at += w;
                }
                out.try_into()
                    .map_err(|_| candle_core::Error::msg("fused widths"))
            }
            Fused::Parts(parts) => {
                let out = parts
                    .iter_mut()
                    .map(|m| project(m, x))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                out.try_into()
                    .map_err(|_| candle_core::Error::msg("fused parts"))
            }
        }
    }
}

impl Fused<2> {
    /// SwiGLU over gate and up (`silu(gate) · up`, `[rows, w]`): on the stacked output in one
    /// pass (with a vectorised exp) where they are stacked, else with candle's ops.
    pub fn swiglu(
        &mut self,
        x: &Tensor,
        project: impl FnMut(&mut Linear, &Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        if let Fused::One(p, [gate, up]) = self {
            if gate == up {
                let w = *gate;
                return p.forward(x)?.apply_op1_no_bwd(&SwiGlu(w));
            }
        }
        let [gate, up] = self.forward(x, project)?;
        candle_nn::ops::silu(&gate)? * up
    }
}

/// One weight matrix (`[out, in]`) on candle's kernels, quantized, with its dense copy made on
/// first need.
pub struct CandleLinear {
    q: QMatMul,
    /// Zero columns appended to `q`'s weights (and so to its inputs).
    pad: usize,
    /// Whether `q` runs on candle's repacked AVX512-VNNI kernel, which beats the dense path on
    /// prompt chunks too (SmolLM2, 1 024-token prompt, one thread: about 1.6x), so no dense
    /// copy is made.
    repacked: bool,
    /// The weights as the file gave them, for the dense path; dropped when `repacked` (the
    /// dense path is never taken then).
    weights: Option<Arc<QTensor>>,
    /// The dequantised weights, kept once made when `keep` allows.
    dense: Option<Tensor>,
    keep: bool,
}

impl CandleLinear {
    fn new(weights: QTensor, keep: bool) -> candle_core::Result<Self> {
        let weights = Arc::new(weights);
        let (q, pad) = match padded(&weights)? {
            Some((p, pad)) => (QMatMul::from_qtensor(p)?, pad),
            None => (QMatMul::from_arc(weights.clone())?, 0),
        };
        let (n, k) = weights.shape().dims2()?;
        let repacked = weights.device().is_cpu()
            && vnni()
            && matches!(weights.dtype(), GgmlDType::Q8_0 | GgmlDType::Q4K)
            && (k + pad).is_multiple_of(REPACK_K)
            && n.is_multiple_of(16);
        let weights = (!repacked).then_some(weights);
        Ok(Self {
            q,
            pad,
            repacked,
            weights,
            dense: None,
            keep,
        })
    }

    /// Bytes an f32 copy of these weights takes.
    pub fn dense_bytes(weights: &QTensor) -> usize {
        weights.shape().elem_count() * 4
    }

    fn dense_path(&self, rows: usize) -> bool {
        rows >= MANY_ROWS
            && !self.repacked
            && self.weights.as_ref().is_some_and(|w| w.device().is_cpu())
            && matches!(self.q, QMatMul::QTensor(_))
    }

    fn forward(&mut self, x: &Tensor, prompt: bool) -> candle_core::Result<Tensor> {
        let rows = x.dim(0)?;
        if !(prompt && self.dense_path(rows)) {
            if self.pad > 0 {
                return self.q.forward(&x.pad_with_zeros(1, 0, self.pad)?);
            }
            return self.q.forward(x);
        }
        let w = match &self.dense {
            Some(w) => w.clone(),
            None => {
                let Some(weights) = &self.weights else {
                    return self.q.forward(x);
                };
                let w = weights.dequantize(&weights.device())?;
                if self.keep {
                    self.dense = Some(w.clone());
                }
                w
            }
        };
        x.to_dtype(DType::F32)?.matmul(&w.t()?)
    }
}

/// `silu(g) · u` over a `[rows, 2w]` tensor holding gate (`g`) then up (`u`) in each row.
struct SwiGlu(usize);

impl candle_core::CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "rbee-swiglu"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let w = self.0;
        let candle_core::CpuStorage::F32(y) = s else {
            candle_core::bail!("swiglu: f32 expected");
        };
        let (rows, width) = l.shape().dims2()?;
        let Some((start, end)) = l.contiguous_offsets().filter(|_| width == 2 * w) else {
            candle_core::bail!("swiglu: contiguous [rows, 2 × {w}] expected");
        };
        let mut out = vec![0f32; rows * w];
        for (row, o) in y[start..end]
            .chunks_exact(2 * w)
            .zip(out.chunks_exact_mut(w))
        {
            silu_mul(&row[..w], &row[w..], o);
        }
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from((rows, w)),
        ))
    }
}

/// `o = g / (1 + e^−g) · u`, element by element.
fn silu_mul(g: &[f32], u: &[f32], o: &mut [f32]) {
    let mut done = 0;
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        use std::arch::x86_64::*;
        for ((g, u), o) in g
            .chunks_exact(8)
            .zip(u.chunks_exact(8))
            .zip(o.chunks_exact_mut(8))
        {
            // SAFETY: AVX2 and FMA are enabled at compile time; each chunk holds eight floats.
            unsafe {
                let gv = _mm256_loadu_ps(g.as_ptr());
                let e = super::attention::simd::exp(_mm256_sub_ps(_mm256_setzero_ps(), gv));
                let s = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0), e));
                _mm256_storeu_ps(
                    o.as_mut_ptr(),
                    _mm256_mul_ps(s, _mm256_loadu_ps(u.as_ptr())),
                );
            }
            done += 8;
        }
    }
    for ((g, u), o) in g[done..].iter().zip(&u[done..]).zip(&mut o[done..]) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}
