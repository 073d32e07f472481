//! What a worker will hold in memory for a model, estimated from the file's metadata before it
//! is spawned, so admission can refuse (or reserve) with figures close to the real ones.
//!
//! The model follows what `rbee-worker` does when it loads a GGUF file:
//!
//! - **weights as loaded**: every matrix at its file type, except that on CPU Q4_1, Q5_0 and
//!   Q5_1 matrices (rows a multiple of 32) are re-encoded as Q8_0 (34 bytes per 32 values;
//!   `--keep-quant` turns it off); 1-D tensors (norms, biases) as f32; the embedding table for
//!   lookups at the file's type (the batched decoder on a CPU, which dequantises only the rows it
//!   looks up), else as f32 (f16 for gemma3), plus its quantised form kept as the output
//!   projection when the file has no `output.weight`;
//! - **load transient**: on CPU with a re-encode, the re-encoded copy of the whole file lives in
//!   memory while the network is built from it; gemma3's f16 table passes through f32 (while
//!   loading, the worker's allocator returns large freed blocks to the system, so nothing freed
//!   during the load stays resident beyond these);
//! - **KV cache**: per layer `kv_heads × head_dim × 2 × 4 bytes` (f32) per position and slot,
//!   for `context` positions rounded up to a power of two (the cache doubles when full) on global
//!   layers and `sliding_window` positions on gemma3's sliding layers, times `parallel` slots;
//!   it grows as it is used, so the full figure is reached only at full context; on candle's
//!   kernels the smaller buffers it grew out of stay resident (the worker's allocator keeps
//!   freed memory), about as much again (measured: 4 slots at 1 420 tokens hold 1.53 GB,
//!   0.37 GB more than without), on the worker's own kernel they are reused;
//! - **activations** of the prompt pass: attention scores and their softmax, about
//!   `3 × heads × chunk × context × 4` bytes with the prompt taken in chunks of
//!   [`PREFILL_CHUNK`] tokens (measured: 85 MB for a 900-token SmolLM2 prompt in one pass).
//!   Families off the batched decoder (gemma3, phi3, candle's) read a prompt in one pass, so a
//!   prompt longer than [`PREFILL_CHUNK`] needs more than this estimate counts;
//! - **rbee's own kernel** (batched decoder on an x86-64 CPU with AVX2, FMA and F16C,
//!   [`host_qmm`]): Q4_0, Q4_1 and Q8_0 matrices with rows a multiple of 8 and widths a
//!   multiple of 32 are packed at 20 (Q4) or 36 (Q8) bytes per 32 values and replace the file's
//!   copy: no re-encode, padding, repacked or dense copy for them;
//! - **padding and repacked copies** (batched decoder on a CPU with AVX512-VNNI,
//!   [`host_repacks`]): Q8_0 matrices padded to widths of 256 (their f32 passes, the largest
//!   kept by the allocator, count as load transient), and candle's repacked copy of every Q8_0 /
//!   Q4_K matrix it runs, made at the first request and kept;
//! - **dense copies** (batched decoder on CPU, matrices not repacked): f32 copies for prompt
//!   chunks, kept when they fit `RBEE_DENSE_CACHE_MB` (1 GiB), else one matrix at a time;
//! - **runtime**: rotary tables (`context × head_dim × 4` bytes per rotary base) and a fixed
//!   base for code, tokenizer, threads and buffers (measured on CPU, see BENCHMARKS.md); on a
//!   GPU the CUDA context and cuBLAS workspace.
//!
//! The worker's peak is `weights + repacked + dense copies + max(load transient, KV cache +
//! activations) + runtime`: KV buffers reuse what loading freed, the dense copies were measured
//! not to. The figures are calibrated on a CPU with AVX512-VNNI against the peak RSS of the
//! worker in protocol mode: SmolLM2-135M Q4_1 and Gemma 3 270M Q4_K_M, with and without the
//! re-encode, short and 900-token prompts, and 4 SmolLM2 slots at 1 420 tokens (0.90–1.00,
//! `tests/estimate.rs`); a CPU without VNNI (dense copies instead) was calibrated on the
//! worker before repacking (within 5 %) but not re-measured since; the GPU runtime
//! figure is an assumption until measured on hardware.
use std::path::Path;

pub use crate::footprint::{
    MemoryEstimate, RunShape, CPU_RUNTIME_BASE, CUDA_RUNTIME, PREFILL_CHUNK,
};
use crate::gguf::{bytes_as, GgufHeader, TensorInfo};
use crate::{DeviceSpec, StoreError};

/// Whether the worker runs this file on its own batched decoder (dense llama, qwen2, qwen3
/// GGUF): several slots, prompts read in chunks, dense weight copies for prompt chunks.
pub fn batched(h: &GgufHeader) -> bool {
    matches!(h.architecture(), "llama" | "qwen2" | "qwen3")
        && h.arch_int("expert_count").unwrap_or(0) == 0
}

/// The worker's `--parallel` when a spawn gives none: its default of 4 slots on the batched
/// decoder, 1 for the other families (which serve one sequence whatever is asked).
pub fn default_parallel(h: &GgufHeader) -> u32 {
    if batched(h) {
        4
    } else {
        1
    }
}

/// Whether this CPU runs candle's repacked AVX512-VNNI kernels (AVX512F and AVX512-VNNI), as
/// the worker on this node will find: the agent and its workers share the machine.
pub fn host_repacks() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs the worker's own quantized kernel (`worker/src/load/qmm/`): x86-64
/// with AVX2, FMA and F16C.
pub fn host_qmm() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx2") && has!("fma") && has!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the worker packs `t` for its own kernel: a weight matrix of the batched decoder on a
/// CPU that runs it, Q4_0, Q4_1 or Q8_0, rows a multiple of 8, widths of 32 (`packs` in
/// worker/src/load/qmm/mod.rs).
fn qmm_packed(h: &GgufHeader, t: &TensorInfo, shape: &RunShape) -> bool {
    let matrix = t.name == "output.weight"
        || (t.name == "token_embd.weight" && h.tensor("output.weight").is_none())
        || (t.name.starts_with("blk.") && t.name.ends_with(".weight"));
    shape.qmm
        && shape.device == DeviceSpec::Cpu
        && batched(h)
        && matrix
        && matches!(t.ggml_type, 2 | 3 | 8)
        && matches!(t.dims.as_slice(), [k, n] if k % 32 == 0 && *k > 0 && n % 8 == 0)
}

/// What the batched decoder's matrices (every block matrix and the output projection) cost
/// beyond their loaded size on CPU.
#[derive(Default)]
struct Linears {
    /// Padding Q8_0 widths to a multiple of 256 (added to the weights).
    padding: u64,
    /// The f32 passes of the largest padded matrix, which the allocator keeps.
    pad_slack: u64,
    /// Repacked copies candle makes at the first request.
    packed: u64,
    /// f32 copies of the matrices that are not repacked, for prompt chunks.
    dense: u64,
    /// The largest of those.
    largest_dense: u64,
}

/// Width multiple candle's repacked Q8_0 kernel needs (`REPACK_K` in worker/src/load/linear.rs).
const REPACK_K: u64 = 256;

fn linears(h: &GgufHeader, shape: &RunShape) -> Linears {
    let mut l = Linears::default();
    if !batched(h) || shape.device != DeviceSpec::Cpu {
        return l;
    }
    let output = if h.tensor("output.weight").is_some() {
        "output.weight"
    } else {
        "token_embd.weight"
    };
    let matrices = h.tensors.iter().filter(|t| {
        t.dims.len() == 2
            && (t.name == output || (t.name.starts_with("blk.") && t.name.ends_with(".weight")))
    });
    for t in matrices.filter(|t| !qmm_packed(h, t, shape)) {
        let (k, n) = (t.dims[0], t.dims[1]);
        let ty = if re_encoded(h, t, shape) {
            8
        } else {
            t.ggml_type
        };
        let mut kp = k;
        if shape.repack && ty == 8 && k % REPACK_K != 0 {
            kp = k.div_ceil(REPACK_K) * REPACK_K;
            l.padding += bytes_as(8, n * kp) - bytes_as(8, n * k);
            l.pad_slack = l.pad_slack.max((n * k + n * kp) * 4 * 9 / 10);
        }
        if shape.repack && matches!(ty, 8 | 12) && kp % REPACK_K == 0 && n % 16 == 0 {
            l.packed += bytes_as(ty, n * kp);
        } else if t.name != output {
            l.dense += n * k * 4;
            l.largest_dense = l.largest_dense.max(n * k * 4);
        }
    }
    l
}

/// The worker's budget for dense f32 copies of the block weights (`RBEE_DENSE_CACHE_MB`,
/// default 1 024 MiB), read from this process's environment, which the workers inherit.
fn dense_budget() -> u64 {
    std::env::var("RBEE_DENSE_CACHE_MB")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1024)
        << 20
}

/// Estimate for the model at `path`: a GGUF file, or a safetensors directory
/// ([`crate::estimate_st`], not calibrated); `Ok(None)` for anything else.
pub fn estimate(path: &Path, shape: RunShape) -> Result<Option<MemoryEstimate>, StoreError> {
    if path.is_dir() {
        return match crate::ModelFiles::from_dir(path) {
            Ok(files) => crate::estimate_st::estimate_dir(&files, shape).map(Some),
            Err(_) => Ok(None),
        };
    }
    if path.extension().is_none_or(|e| e != "gguf") {
        return Ok(None);
    }
    Ok(Some(estimate_header(&GgufHeader::read(path)?, shape)))
}

/// ggml types that the worker re-encodes as Q8_0 on CPU (what its own kernel packs stays).
fn re_encoded(h: &GgufHeader, t: &TensorInfo, shape: &RunShape) -> bool {
    shape.device == DeviceSpec::Cpu
        && !shape.keep_quant
        && matches!(t.ggml_type, 3 | 6 | 7)
        && t.dims.first().is_some_and(|d| d % 32 == 0)
        && !qmm_packed(h, t, shape)
}

/// Bytes of `t` as the worker holds it, before any dequantisation.
fn as_loaded(h: &GgufHeader, t: &TensorInfo, shape: &RunShape) -> u64 {
    if qmm_packed(h, t, shape) {
        // Q4: 16 bytes of nibbles and two f16 per 32 values; Q8: 32 bytes, f16 scale, i16 sum.
        let per_block = if t.ggml_type == 8 { 36 } else { 20 };
        return t.elements() / 32 * per_block;
    }
    let ty = if re_encoded(h, t, shape) {
        8
    } else {
        t.ggml_type
    };
    bytes_as(ty, t.elements())
}

/// The estimate from a header already read: the peak at full context.
pub fn estimate_header(h: &GgufHeader, shape: RunShape) -> MemoryEstimate {
    estimate_at(h, shape, None)
}

/// What the worker holds once `tokens` positions of every slot are in use, the prompt having
/// been taken `chunk` tokens per pass: the figure to compare with a measured peak RSS.
pub fn estimate_in_use(h: &GgufHeader, shape: RunShape, tokens: u32, chunk: u32) -> MemoryEstimate {
    estimate_at(h, shape, Some((tokens, chunk)))
}

/// `used`: `(positions in use, prompt tokens per pass)`; `None`: the full context in
/// [`PREFILL_CHUNK`] chunks.
fn estimate_at(h: &GgufHeader, shape: RunShape, used: Option<(u32, u32)>) -> MemoryEstimate {
    let gemma = h.architecture() == "gemma3";
    let own_output = h.tensor("output.weight").is_some();
    let any_re_encoded = h.tensors.iter().any(|t| re_encoded(h, t, &shape));
    let (mut weights, mut load_transient, mut file_as_loaded) = (0u64, 0u64, 0u64);
    for t in &h.tensors {
        let q = as_loaded(h, t, &shape);
        file_as_loaded += q;
        weights += if t.name == "token_embd.weight" {
            let table = match t.ggml_type {
                _ if gemma => t.elements() * 2,
                // The batched decoder on a CPU looks rows up in the file's quantised table.
                0 | 1 | 30 => t.elements() * 4,
                _ if batched(h) && shape.device == DeviceSpec::Cpu => q,
                _ => t.elements() * 4,
            };
            if gemma {
                // The f32 pass on the way to f16.
                load_transient += t.elements() * 4;
            }
            table + if own_output { 0 } else { q }
        } else if t.dims.len() <= 1 {
            t.elements() * 4
        } else {
            // f16/bf16 matrices become f32 dense matmuls.
            match t.ggml_type {
                0 | 1 | 30 => t.elements() * 4,
                _ => q,
            }
        };
    }
    if any_re_encoded {
        // The re-encoded file in memory.
        load_transient += file_as_loaded;
    }
    let file_ctx = h.arch_int("context_length").unwrap_or(2048).max(1) as u32;
    let context = match shape.context {
        Some(c) if c > 0 => c.min(file_ctx),
        _ => file_ctx,
    };
    // Families without the batched decoder serve one sequence whatever is asked.
    let parallel = if batched(h) { shape.parallel.max(1) } else { 1 };
    let ctx = u64::from(context);
    let (positions, chunk) = match used {
        Some((t, c)) => (u64::from(t.min(context)), u64::from(c.max(1))),
        None => (ctx, PREFILL_CHUNK),
    };
    let kv_cache = kv_bytes(h, positions, gemma, false) * u64::from(parallel);
    // On candle's kernels about half of the outgrown buffers stay resident (measured, 4 slots at
    // 1 420 tokens); on the worker's own kernel none do (4 slots at 1 218 tokens: 656 MB
    // measured, 4 % under the estimate without them): the allocator hands them out again.
    let own_kernel = h.tensors.iter().any(|t| qmm_packed(h, t, &shape));
    let kv_growth = match own_kernel {
        true => 0,
        false => kv_bytes(h, positions, gemma, true) * u64::from(parallel) / 2,
    };
    let head_dim = head_dim(h);
    let heads = h.arch_int("attention.head_count").unwrap_or(1).max(1);
    let activations = 3 * heads * positions.min(chunk) * positions * 4;
    let lin = linears(h, &shape);
    weights += lin.padding;
    load_transient += lin.pad_slack;
    let dense_copies = match positions >= 32 {
        false => 0,
        true if lin.dense <= dense_budget() => lin.dense,
        true => lin.largest_dense,
    };
    let rope_bases = if gemma { 2 } else { 1 };
    let mut runtime = ctx * head_dim * 4 * rope_bases;
    runtime += match shape.device {
        DeviceSpec::Cpu => CPU_RUNTIME_BASE,
        DeviceSpec::Cuda(_) => CUDA_RUNTIME,
    };
    MemoryEstimate {
        weights,
        packed: lin.packed,
        load_transient,
        kv_cache,
        kv_growth,
        activations,
        dense_copies,
        runtime,
        context,
        parallel,
    }
}

fn head_dim(h: &GgufHeader) -> u64 {
    let heads = h.arch_int("attention.head_count").unwrap_or(1).max(1);
    h.arch_int("attention.key_length")
        .unwrap_or_else(|| h.arch_int("embedding_length").unwrap_or(0) / heads)
}

/// KV bytes of one sequence at `positions` positions; with `outgrown`, the bytes of the smaller
/// buffers its global layers grew out of instead.
fn kv_bytes(h: &GgufHeader, positions: u64, gemma: bool, outgrown: bool) -> u64 {
    let layers = h.arch_int("block_count").unwrap_or(0);
    let heads = h.arch_int("attention.head_count").unwrap_or(1).max(1);
    let kv_heads = h.arch_int("attention.head_count_kv").unwrap_or(heads);
    let per_position = kv_heads * head_dim(h) * 2 * 4;
    // Global layers start with room for 256 positions and double when full.
    let global = positions.next_power_of_two().max(256);
    let window = h.arch_int("attention.sliding_window").filter(|_| gemma);
    let every = h
        .arch_int("attention.sliding_window_type")
        .unwrap_or(6)
        .max(1);
    (0..layers)
        .map(|i| match window {
            // gemma3: every `every`-th layer is global, the others slide over `window` positions.
            // A ring never grows.
            Some(_) if (i + 1) % every != 0 && outgrown => 0,
            Some(w) if (i + 1) % every != 0 => w.min(global),
            // 256 + 512 + … + global / 2 = global − 256.
            _ if outgrown => global - 256,
            _ => global,
        })
        .map(|positions| positions * per_position)
        .sum()
}
