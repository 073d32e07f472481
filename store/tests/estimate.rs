//! The memory estimate against peak RSS measured on the real test models (skipped with a note
//! when they are not fetched). The measured figures are `rbee-worker --json`'s `peak_rss_bytes`
//! (release build, `--threads 1`, this machine, 2026-11-30; how in BENCHMARKS.md): the test
//! keeps the estimate honest when the model of what the worker holds changes.
use std::path::PathBuf;

use rbee_store::estimate::{estimate_in_use, MemoryEstimate};
use rbee_store::gguf::GgufHeader;
use rbee_store::{estimate, DeviceSpec, RunShape};

fn model(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/models")
        .join(name);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "skipped: {} missing (assets/fetch-model.sh fetches it)",
            p.display()
        );
        None
    }
}

fn cpu(keep_quant: bool) -> RunShape {
    RunShape {
        device: DeviceSpec::Cpu,
        context: None,
        parallel: 1,
        keep_quant,
        // Measured on a CPU with AVX512-VNNI (the worker pads and candle repacks).
        repack: true,
        // and runs the worker's own kernel (AVX2, FMA, F16C).
        qmm: true,
    }
}

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

/// (model, keep quant, prompt tokens, measured peak RSS in bytes): `rbee-worker` in protocol
/// mode as the agent runs it (hello, one `generate` of 8 tokens, VmHWM after `done`),
/// `--threads 1`, on a CPU with AVX512-VNNI, measured with `bench/peak_rss.py` (2026-11-30,
/// about 18:31 UTC, after the load's allocator change and quantised embedding lookups; Gemma 3
/// at 18:08, its path unchanged since). SmolLM2 on the worker's own kernel (its Q4_1
/// and Q8_0 matrices packed at their size, so `--keep-quant` changes nothing); Gemma 3 on
/// candle's kernels (Q8_0 widths padded, candle's repacked copies).
const MEASURED: [(&str, bool, u32, u64); 8] = [
    (SMOL, false, 7, 166_531_072),
    (SMOL, false, 758, 227_590_144),
    (SMOL, true, 7, 166_690_816),
    (SMOL, true, 758, 227_917_824),
    (GEMMA, false, 13, 1_662_365_696),
    (GEMMA, false, 1032, 1_662_570_496),
    (GEMMA, true, 13, 1_338_482_688),
    (GEMMA, true, 1032, 1_338_630_144),
];

#[test]
fn estimates_are_within_15_percent_of_measured_peak_rss() {
    for (m, keep, tokens, measured) in MEASURED {
        let Some(p) = model(m) else { continue };
        let h = GgufHeader::read(&p).unwrap();
        // SmolLM2 reads its prompt in 512-token chunks; Gemma 3 in one pass.
        let chunk = if m == SMOL { 512 } else { tokens };
        let e = estimate_in_use(&h, cpu(keep), tokens + 8, chunk);
        let ratio = e.total() as f64 / measured as f64;
        println!(
            "{m} keep_quant={keep} tokens={tokens}: estimate {} measured {measured} ratio {ratio:.3}",
            e.total()
        );
        assert!((0.85..=1.15).contains(&ratio), "{m}: {e:?}");
    }
}

/// Four slots at once: `rbee-worker --parallel 4 --ctx 2048 --threads 2` in protocol mode, four
/// distinct prompts of 1 190–1 199 tokens generating 32 tokens each, all batched (VmHWM after all
/// done; `bench/peak_rss.py WORKER MODEL 1186 4 -- --parallel 4 --ctx 2048 --threads 2`).
#[test]
fn four_slots_in_use_are_within_15_percent() {
    let Some(p) = model(SMOL) else { return };
    let h = GgufHeader::read(&p).unwrap();
    let shape = RunShape {
        parallel: 4,
        context: Some(2048),
        ..cpu(false)
    };
    let e = estimate_in_use(&h, shape, 1199 + 32, 512);
    let measured = 589_930_496u64;
    let ratio = e.total() as f64 / measured as f64;
    println!(
        "4 slots: estimate {} measured {measured} ratio {ratio:.3}; {e:?}",
        e.total()
    );
    assert!((0.85..=1.15).contains(&ratio), "{e:?}");
    // The full-context figure admission reserves covers what was measured (within the 5 % of
    // allocator slack the model leaves out).
    let full = estimate(&p, shape).unwrap().unwrap();
    assert!(full.total() as f64 >= 0.95 * measured as f64, "{full:?}");
}

#[test]
fn the_full_context_figure_covers_kv_and_slots() {
    let Some(p) = model(SMOL) else { return };
    let one = estimate(&p, cpu(false)).unwrap().unwrap();
    let four = estimate(
        &p,
        RunShape {
            parallel: 4,
            ..cpu(false)
        },
    )
    .unwrap()
    .unwrap();
    // SmolLM2: 30 layers × 3 KV heads × 64 × 2 × 4 bytes per position, 8192 positions.
    assert_eq!(one.context, 8192);
    assert_eq!(one.kv_cache, 30 * 3 * 64 * 2 * 4 * 8192);
    assert_eq!(four.kv_cache, 4 * one.kv_cache);
    assert!(four.total() > one.total());
    let short = estimate(
        &p,
        RunShape {
            context: Some(1000),
            ..cpu(false)
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(short.context, 1000);
    assert_eq!(short.kv_cache, 30 * 3 * 64 * 2 * 4 * 1024);
    // A context beyond the file's is the file's.
    let long = estimate(
        &p,
        RunShape {
            context: Some(1 << 20),
            ..cpu(false)
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(long.context, 8192);
    // On a GPU nothing is re-encoded and the runtime is the CUDA context.
    let gpu = estimate(
        &p,
        RunShape {
            device: DeviceSpec::Cuda(0),
            ..cpu(false)
        },
    )
    .unwrap()
    .unwrap();
    assert_eq!(gpu.load_transient, 0);
    // The CPU looks rows up in the file's table (Q8_0, 34 bytes per 32 values); a GPU holds it
    // as f32, 4 bytes a value.
    assert!(
        gpu.weights > one.weights + 49_152 * 576 * 2,
        "{gpu:?} against {one:?}"
    );
    println!("{}", four.describe());
}

#[test]
fn not_a_gguf_file_is_not_estimated_and_a_corrupt_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        estimate(dir.path(), cpu(false)).unwrap(),
        None::<MemoryEstimate>
    );
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\0\0\0").unwrap();
    let e = estimate(&bad, cpu(false)).unwrap_err();
    assert!(e.to_string().contains("not a readable GGUF file"), "{e}");
}
