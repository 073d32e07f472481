//! A quantized weight matrix used two ways. A few rows (decode steps) go through candle's
//! quantized matmul, which reads the compact weights once and is bound by memory. Many rows (a
//! prompt chunk) go through a dequantised f32 copy and candle's gemm-backed matmul, which is
//! bound by arithmetic: on SmolLM2 Q8_0 with a 1 024-token prompt, one thread, that took prompt
//! processing from 129 to 189 tok/s (294 with the allocator kept from returning memory to the
//! kernel, see `main.rs`).
use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

/// Rows of prompt from which the dense path is taken when the dense copy is not kept (making it
/// costs a pass over the weights); with the copy kept, every prompt row takes it.
pub const MANY_ROWS: usize = 32;

/// One weight matrix (`[out, in]`), quantized, with its dense copy made on first need.
pub struct Linear {
    q: QMatMul,
    weights: Arc<QTensor>,
    /// The dequantised weights, kept once made when `keep` allows.
    dense: Option<Tensor>,
    keep: bool,
}

impl Linear {
    /// Wrap `weights`; `keep` holds the dequantised copy for later chunks (small models) instead
    /// of making it anew for each chunk (large ones, where it would double the memory).
    pub fn new(weights: QTensor, keep: bool) -> candle_core::Result<Self> {
        let weights = Arc::new(weights);
        Ok(Self {
            q: QMatMul::from_arc(weights.clone())?,
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
        rows >= MANY_ROWS && self.weights.device().is_cpu() && matches!(self.q, QMatMul::QTensor(_))
    }

    /// `x` (`[rows, in]`) times the weights transposed: `[rows, out]`. `prompt`: the rows are
    /// prompt tokens (the dense path may be taken); decode rows always take the quantized one.
    /// The choice never depends on other rows, so neither does a row's result.
    pub fn forward(&mut self, x: &Tensor, prompt: bool) -> candle_core::Result<Tensor> {
        let rows = x.dim(0)?;
        if !(prompt && self.dense_path(rows)) {
            return self.q.forward(x);
        }
        let w = match &self.dense {
            Some(w) => w.clone(),
            None => {
                let w = self.weights.dequantize(&self.weights.device())?;
                if self.keep {
                    self.dense = Some(w.clone());
                }
                w
            }
        };
        x.to_dtype(DType::F32)?.matmul(&w.t()?)
    }
}
