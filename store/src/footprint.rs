//! What a worker holds, by part: the types and constants the estimates share
//! ([`crate::estimate`] for GGUF files, [`crate::estimate_st`] for safetensors directories).
use crate::DeviceSpec;

/// Fixed runtime cost of a CPU worker: code, tokenizer, thread stacks, allocator, I/O buffers
/// (measured: 23.8 MB for SmolLM2's 49 152-entry vocabulary, 25.5 MB for Gemma 3's 262 144).
pub const CPU_RUNTIME_BASE: u64 = 24 << 20;
/// Prompt tokens per forward pass assumed for the activations (`rbee-worker --prefill-chunk`).
pub const PREFILL_CHUNK: u64 = 512;
/// Device memory a CUDA worker needs beyond its tensors: context, cuBLAS workspace, kernels.
/// Not measured here (no GPU): NVIDIA's figures for a CUDA 13 context with cuBLAS on Ampere and
/// Hopper are 300–500 MiB; the upper end is reserved.
pub const CUDA_RUNTIME: u64 = 512 << 20;

/// How a worker will run the model: device, context and slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunShape {
    /// Where the weights go.
    pub device: DeviceSpec,
    /// Context per sequence asked for (`--ctx`); `None` or 0: the file's.
    pub context: Option<u32>,
    /// Sequences served at once (`--parallel`), at least 1.
    pub parallel: u32,
    /// `--keep-quant` / `RBEE_WORKER_KEEP_QUANT`: no re-encode on CPU.
    pub keep_quant: bool,
    /// The CPU runs candle's repacked AVX512-VNNI kernels (the worker then pads Q8_0 matrices to
    /// widths of 256 and candle keeps a repacked copy of each): [`crate::estimate::host_repacks`].
    pub repack: bool,
    /// The CPU runs the worker's own quantized kernel (x86-64 with AVX2, FMA and F16C): the
    /// batched decoder keeps Q4_0, Q4_1 and Q8_0 matrices packed at their file size, with no
    /// re-encode, padding or copies: [`crate::estimate::host_qmm`].
    pub qmm: bool,
}

/// The estimate, by part, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemoryEstimate {
    /// Weights as held on the device after loading (re-encoded, padded, embedding table
    /// dequantised).
    pub weights: u64,
    /// Repacked copies of the matrices candle's AVX512-VNNI kernels run, made at the first
    /// request and kept.
    pub packed: u64,
    /// Extra memory held only while loading (the re-encoded copy, conversion buffers).
    pub load_transient: u64,
    /// KV cache at full context for every slot.
    pub kv_cache: u64,
    /// The smaller KV buffers each global layer's cache grew out of (256, 512, … positions):
    /// freed, but kept by the worker's allocator (which never returns memory), so still resident.
    pub kv_growth: u64,
    /// Attention scores of a prompt pass at full context.
    pub activations: u64,
    /// Dense f32 copies of the block weights the batched decoder makes for prompt chunks on
    /// CPU (kept when they fit its budget, else one matrix at a time).
    pub dense_copies: u64,
    /// Rotary tables, tokenizer, code and buffers (CUDA context on a GPU).
    pub runtime: u64,
    /// The context the figure is for (tokens per sequence).
    pub context: u32,
    /// The slots the figure is for.
    pub parallel: u32,
}

impl MemoryEstimate {
    /// The most the worker will hold at once: weights, the larger of the load transient and
    /// the full KV cache, and the runtime.
    pub fn total(&self) -> u64 {
        // Measured: KV buffers and activations reuse what loading freed; the dense copies (made
        // at the first prompt chunk) do not.
        let serving = self.kv_cache + self.kv_growth + self.activations;
        self.weights
            + self.packed
            + self.dense_copies
            + self.load_transient.max(serving)
            + self.runtime
    }

    /// One line for people: `1.2 GiB (weights 256 MiB, KV cache 1.4 GiB for 4 × 8192 tokens, …)`.
    pub fn describe(&self) -> String {
        use rbee_proto::fmt::bytes;
        format!(
            "{} (weights {}, repacked {}, KV cache {} (+{} outgrown) for {} × {} tokens, activations {}, dense copies {}, load transient {}, runtime {})",
            bytes(self.total()),
            bytes(self.weights),
            bytes(self.packed),
            bytes(self.kv_cache),
            bytes(self.kv_growth),
            self.parallel,
            self.context,
            bytes(self.activations),
            bytes(self.dense_copies),
            bytes(self.load_transient),
            bytes(self.runtime),
        )
    }
}
