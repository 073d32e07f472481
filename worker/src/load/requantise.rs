//! Re-encoding quantized formats that candle has no fast CPU kernel for.
//!
//! Q4_1 and Q5_x have no SIMD matmul in candle; re-encoded once as Q8_0 (which has one) they
//! decode several times faster, and Q8_0 represents their values almost exactly.
use std::fs::File;
use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::Device;

use crate::error::LoadError;

/// Quantized formats whose CPU matmul has no SIMD path in candle.
fn slow_on_cpu(t: GgmlDType) -> bool {
    matches!(t, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

/// Whether a tensor of type `t` and shape `dims` is worth re-encoding on CPU. `own`: the
/// network is rbee's own decoder, whose kernel ([`super::qmm`]) runs the 4-bit formats at their
/// size where it applies; what it packs stays as the file has it.
fn worth(t: GgmlDType, dims: &[usize], own: bool) -> bool {
    let packed = match dims {
        [n, k] => own && super::qmm::available() && super::qmm::packs(t, *n, *k),
        _ => false,
    };
    slow_on_cpu(t) && !packed
}

/// Whether `ct` holds a tensor worth re-encoding on CPU (`own`: see [`worth`]).
pub fn needed(ct: &gguf_file::Content, own: bool) -> bool {
    ct.tensor_infos
        .values()
        .any(|t| worth(t.ggml_dtype, t.shape.dims(), own))
}

/// Re-encode slow tensors as Q8_0 into an in-memory GGUF with the same metadata.
pub fn requantise(
    ct: &gguf_file::Content,
    f: &mut File,
    path: &Path,
    own: bool,
) -> Result<(gguf_file::Content, Cursor<Vec<u8>>), LoadError> {
    let corrupt = |e: candle_core::Error| LoadError::corrupt(path, e);
    let mut tensors = Vec::with_capacity(ct.tensor_infos.len());
    for name in ct.tensor_infos.keys() {
        let q = ct.tensor(f, name, &Device::Cpu).map_err(corrupt)?;
        let q = if worth(q.dtype(), q.shape().dims(), own)
            && q.shape().dims().last().is_some_and(|d| d % 32 == 0)
        {
            let dense = q.dequantize(&Device::Cpu).map_err(corrupt)?;
            QTensor::quantize(&dense, GgmlDType::Q8_0).map_err(corrupt)?
        } else {
            q
        };
        tensors.push((name.clone(), q));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> =
        ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &metadata, &tensor_refs).map_err(corrupt)?;
    buf.set_position(0);
    let ct2 = gguf_file::Content::read(&mut buf).map_err(corrupt)?;
    Ok((ct2, buf))
}
