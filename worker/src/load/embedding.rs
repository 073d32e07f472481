//! The token embedding table of rbee's own decoder. On the CPU its rows stay at the file's type
//! and only the rows a step looks up are dequantised: the table as f32 was the largest thing a
//! small model held (SmolLM2: 113 MB of f32 for a 30 MB Q8_0 table, 45 % of the worker; Llama
//! 3.2 1B: 1 GB). Elsewhere (a GPU) the f32 table stays on the device.
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// A `[rows, dim]` embedding table.
pub enum Embedding {
    /// The file's bytes, one row after another, dequantised on lookup.
    Quantized {
        /// The rows' type.
        t: GgmlDType,
        /// `rows` rows of `dim` values at that type.
        raw: Vec<u8>,
        /// Vocabulary size.
        rows: usize,
        /// Values per row.
        dim: usize,
    },
    /// Dequantised once.
    Dense(Tensor),
}

impl Embedding {
    /// The table `q` (`[rows, dim]`) for `device`.
    pub fn new(q: &QTensor, device: &Device) -> candle_core::Result<Self> {
        let (rows, dim) = q.shape().dims2()?;
        let t = q.dtype();
        let quantized = !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        if device.is_cpu() && quantized && dim.is_multiple_of(t.block_size()) {
            let raw = q.data()?.into_owned();
            if raw.len() == rows * dim / t.block_size() * t.type_size() {
                return Ok(Self::Quantized { t, raw, rows, dim });
            }
        }
        Ok(Self::Dense(q.dequantize(device)?))
    }

    /// The rows of `ids` (`[ids, dim]`, f32).
    pub fn lookup(&self, ids: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(table) => table.index_select(&Tensor::new(ids, device)?, 0),
            Self::Quantized { t, raw, rows, dim } => {
                let row = dim / t.block_size() * t.type_size();
                let mut picked = Vec::with_capacity(ids.len() * row);
                for &id in ids {
                    let id = id as usize;
                    if id >= *rows {
                        candle_core::bail!("token id {id} outside the vocabulary ({rows})");
                    }
                    picked.extend_from_slice(&raw[id * row..(id + 1) * row]);
                }
                qtensor_from_ggml(*t, &picked, vec![ids.len(), *dim], &Device::Cpu)?
                    .dequantize(&Device::Cpu)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_looked_up_match_the_dequantised_table() {
        let dev = Device::Cpu;
        let v: Vec<f32> = (0..40 * 64)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let dense = Tensor::from_vec(v, (40, 64), &dev).unwrap();
        for t in [GgmlDType::Q8_0, GgmlDType::Q4_1, GgmlDType::Q4K] {
            let dim = if t == GgmlDType::Q4K { 256 } else { 64 };
            let table = if dim == 64 {
                dense.clone()
            } else {
                dense.reshape((10, 256)).unwrap()
            };
            let q = QTensor::quantize(&table, t).unwrap();
            let e = Embedding::new(&q, &dev).unwrap();
            assert!(
                matches!(e, Embedding::Quantized { .. }),
                "{t:?} stays quantized"
            );
            let ids = [3u32, 0, 9, 3];
            let got = e.lookup(&ids, &dev).unwrap().to_vec2::<f32>().unwrap();
            let want = q
                .dequantize(&dev)
                .unwrap()
                .index_select(&Tensor::new(&ids[..], &dev).unwrap(), 0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(got, want, "{t:?}");
            let err = e.lookup(&[99], &dev).unwrap_err().to_string();
            assert!(err.contains("outside the vocabulary"), "{err}");
        }
    }
}
