//! rbee against llama.cpp on the same files: Gemma 3 270M (the SentencePiece tokenizer rebuilt
//! from the GGUF vocabulary, greedy completion, logits step by step) and SmolLM2-135M-Instruct
//! (logits step by step). The expected ids were produced by
//! llama.cpp (llama-cpp-python 0.3.36: `Llama.tokenize(text, add_bos=True)`, then greedy
//! `sample(temp=0)` / `eval`, logits of each step, 2 threads) — worker/tests/llama_cpp.py prints
//! them again.
mod common;

use common::gemma_path;
use rbee_proto::SamplingParams;
use rbee_worker::load;
use rbee_worker::Engine;

fn engine() -> Engine {
    Engine::new(load::load_ref(gemma_path().to_str().unwrap(), "cpu", &mut |_, _| {}).unwrap())
}

#[test]
fn gemma_tokenizer_matches_llama_cpp() {
    let e = engine();
    let cases: [(&str, &[u32]); 5] = [
        ("The capital of France is", &[2, 818, 5279, 529, 7001, 563]),
        ("Hello world", &[2, 9259, 1902]),
        (
            "  two  spaces\nand a newline\n\n",
            &[2, 138, 13498, 138, 35220, 107, 624, 496, 100837, 108],
        ),
        (
            "héllo → 世界 🐝",
            &[2, 236754, 7869, 844, 16130, 84679, 236743, 247894],
        ),
        (
            "don't stop-believing, 1234567!",
            &[
                2, 13246, 236789, 236745, 4721, 236772, 8145, 48638, 236764, 236743, 236770,
                236778, 236800, 236812, 236810, 236825, 236832, 236888,
            ],
        ),
    ];
    for (text, want) in cases {
        assert_eq!(e.prompt_tokens(text).unwrap(), want, "{text:?}");
    }
}

/// llama.cpp's greedy path from a prompt: at each step its five likeliest next tokens and their
/// logits, the first of which it then feeds back.
struct Path {
    prompt: &'static str,
    ids: &'static [u32],
    steps: &'static [([u32; 5], [f32; 5])],
}

/// Below this margin between llama.cpp's first and second choice, the two are a tie for our
/// purposes: different kernels (candle's vs ggml's) round differently.
const TIE: f32 = 0.1;
/// SmolLM2's logits sit further from llama.cpp's (up to 0.63 on these prompts, the same with
/// candle's own quantized llama), so choices closer than this count as ties.
const SMOL_TIE: f32 = 0.7;
/// How far a logit may be from llama.cpp's (they are around 15–26). Calibrated on a reference
/// pair: candle's own quantized llama against llama.cpp on SmolLM2 differs by up to 0.63 on these
/// prompts; rbee's gemma3 differs by up to 0.59 and 0.56 (kernels and rounding, not the model:
/// every step with a clear first choice picks llama.cpp's).
const LOGIT_TOLERANCE: f32 = 1.0;

const GEMMA_PATHS: [Path; 2] = [
    Path {
        prompt: "The capital of France is",
        ids: &[2, 818, 5279, 529, 7001, 563],
        steps: &[
            (
                [506, 496, 9079, 886, 3224],
                [18.999, 18.492, 18.324, 18.103, 17.701],
            ),
            (
                [5279, 3207, 1346, 7488, 236743],
                [17.198, 15.374, 15.238, 15.041, 14.809],
            ),
            (
                [529, 3207, 532, 528, 236764],
                [22.387, 19.747, 17.683, 16.833, 16.504],
            ),
            (
                [506, 7001, 496, 31703, 24687],
                [19.452, 18.786, 17.077, 16.292, 15.81],
            ),
            (
                [2891, 3640, 7830, 15305, 9145],
                [16.056, 16.025, 15.988, 15.585, 15.534],
            ),
            (
                [529, 236761, 236764, 3224, 2760],
                [19.665, 19.359, 19.119, 17.787, 17.598],
            ),
            (
                [7001, 506, 31703, 14145, 66333],
                [19.02, 18.386, 16.821, 16.436, 16.389],
            ),
            (
                [236761, 236764, 563, 532, 528],
                [20.97, 20.102, 18.721, 18.685, 17.479],
            ),
            (
                [1030, 669, 108, 107, 1174],
                [21.482, 20.917, 20.252, 19.92, 19.673],
            ),
            (
                [563, 815, 691, 236858, 236789],
                [23.999, 21.694, 21.436, 20.621, 20.473],
            ),
            (
                [506, 5628, 496, 992, 886],
                [19.954, 19.387, 18.884, 18.156, 17.975],
            ),
            (
                [7488, 5279, 1855, 1346, 236743],
                [17.001, 16.967, 16.564, 16.535, 16.503],
            ),
            (
                [3207, 532, 2891, 529, 7830],
                [20.648, 18.589, 18.071, 17.629, 17.101],
            ),
            (
                [528, 532, 529, 580, 236764],
                [23.062, 20.386, 20.382, 19.472, 19.215],
            ),
            (
                [7001, 506, 3879, 4695, 49566],
                [25.919, 25.602, 23.745, 22.421, 22.092],
            ),
            (
                [236761, 532, 236764, 607, 684],
                [22.234, 22.12, 21.811, 20.812, 19.091],
            ),
        ],
    },
    Path {
        prompt: "Once upon a time, there was a little bee who",
        ids: &[
            2, 14946, 3324, 496, 990, 236764, 993, 691, 496, 2268, 32737, 1015,
        ],
        steps: &[
            (
                [691, 1053, 11742, 5048, 9312],
                [20.691, 20.081, 19.971, 19.647, 19.266],
            ),
            (
                [496, 1401, 2462, 834, 506],
                [21.421, 21.401, 20.13, 20.003, 19.974],
            ),
            (
                [2268, 3103, 26476, 1401, 32737],
                [22.963, 22.474, 21.638, 20.878, 20.788],
            ),
            (
                [3103, 13181, 72313, 26476, 3953],
                [18.676, 18.274, 17.98, 17.907, 17.589],
            ),
            (
                [529, 17462, 72313, 1133, 13181],
                [21.632, 21.175, 20.576, 20.53, 20.505],
            ),
            (
                [496, 614, 4326, 13007, 2317],
                [26.071, 23.759, 23.554, 23.31, 23.222],
            ),
            (
                [26476, 32737, 199369, 4381, 9615],
                [19.396, 19.191, 18.429, 18.38, 18.25],
            ),
            (
                [32737, 236761, 236764, 236888, 528],
                [24.914, 24.847, 22.794, 22.453, 21.609],
            ),
            (
                [236761, 236888, 236764, 532, 528],
                [24.069, 22.14, 22.13, 21.122, 20.328],
            ),
            (
                [2625, 108, 138, 107, 1452],
                [24.35, 22.836, 22.786, 21.752, 21.536],
            ),
            (
                [691, 1053, 5048, 1093, 11742],
                [21.943, 20.926, 19.895, 19.57, 19.283],
            ),
            (
                [496, 506, 1401, 834, 2462],
                [21.288, 20.974, 20.72, 19.966, 19.855],
            ),
            (
                [2268, 26476, 3103, 1401, 4148],
                [23.159, 21.946, 21.918, 21.913, 21.52],
            ),
            (
                [3103, 26476, 32737, 13181, 9380],
                [21.447, 19.191, 17.924, 17.536, 17.523],
            ),
            (
                [529, 1133, 496, 13181, 6538],
                [22.149, 20.118, 19.698, 19.535, 18.728],
            ),
            (
                [496, 614, 506, 4326, 784],
                [25.728, 22.993, 21.777, 21.429, 20.504],
            ),
        ],
    },
];

/// The same for SmolLM2-135M-Instruct (Q4_1, llama family).
const SMOL_PATHS: [Path; 2] = [
    Path {
        prompt: "The capital of France is",
        ids: &[504, 3575, 282, 4649, 314],
        steps: &[
            (
                [7042, 260, 4528, 1315, 5145],
                [17.344, 14.804, 13.208, 13.149, 13.121],
            ),
            (
                [30, 28, 284, 365, 595],
                [25.557, 24.347, 22.948, 21.461, 21.327],
            ),
            (
                [198, 378, 7042, 2, 669],
                [18.136, 16.738, 16.405, 15.935, 15.881],
            ),
            (
                [198, 29, 26, 504, 34],
                [30.865, 29.376, 29.025, 28.588, 28.013],
            ),
            (
                [504, 788, 1348, 2068, 38634],
                [34.413, 33.488, 33.434, 33.269, 33.093],
            ),
            (
                [1797, 2988, 2240, 805, 6330],
                [14.392, 14.062, 13.831, 13.757, 13.75],
            ),
            (
                [1918, 8378, 6950, 5514, 2496],
                [19.098, 16.992, 16.142, 15.657, 13.687],
            ),
            (
                [553, 314, 28, 282, 597],
                [20.349, 19.665, 18.757, 17.799, 17.725],
            ),
            (
                [253, 216, 787, 354, 260],
                [25.451, 23.644, 23.118, 22.7, 22.559],
            ),
            (
                [2155, 3575, 2719, 4543, 13407],
                [19.619, 18.293, 17.847, 17.223, 17.079],
            ),
            (
                [282, 8553, 5183, 5359, 4723],
                [29.817, 24.34, 23.705, 23.616, 23.575],
            ),
            (
                [4723, 216, 1130, 690, 563],
                [26.865, 25.011, 24.713, 24.236, 23.665],
            ),
            (
                [216, 4475, 1876, 582, 827],
                [26.404, 19.184, 18.397, 18.388, 18.384],
            ),
            (
                [35, 34, 40, 33, 37],
                [38.225, 29.868, 28.761, 28.598, 27.172],
            ),
            (
                [33, 34, 35, 30, 36],
                [30.153, 29.964, 29.703, 27.713, 26.945],
            ),
            (
                [33, 34, 36, 35, 30],
                [29.005, 27.933, 27.879, 27.851, 27.803],
            ),
        ],
    },
    Path {
        prompt: "Once upon a time, there was a little bee who",
        ids: &[6403, 1980, 253, 655, 28, 665, 436, 253, 1838, 11426, 617],
        steps: &[
            (
                [761, 436, 4161, 5732, 3683],
                [23.858, 23.85, 23.297, 22.905, 22.068],
            ),
            (
                [253, 787, 719, 915, 3590],
                [26.594, 24.975, 24.249, 24.147, 23.722],
            ),
            (
                [1767, 2066, 1035, 1732, 5717],
                [18.114, 17.958, 17.405, 16.965, 16.656],
            ),
            (
                [1763, 970, 10274, 41292, 2288],
                [18.395, 18.328, 18.183, 17.952, 17.763],
            ),
            (
                [338, 30, 1217, 816, 42],
                [26.364, 25.721, 25.582, 25.07, 25.003],
            ),
            (
                [856, 4573, 436, 1135, 1041],
                [18.776, 18.731, 18.441, 18.212, 17.699],
            ),
            (
                [724, 919, 3015, 963, 1363],
                [22.281, 21.697, 21.589, 21.069, 20.585],
            ),
            (
                [874, 701, 1272, 357, 260],
                [18.668, 17.504, 16.913, 16.613, 16.494],
            ),
            (
                [1042, 281, 351, 2915, 10682],
                [20.52, 19.774, 19.427, 19.137, 19.069],
            ),
            (
                [260, 874, 253, 8450, 1114],
                [20.546, 19.889, 19.064, 19.051, 18.843],
            ),
            (
                [3468, 1450, 11426, 768, 6243],
                [16.365, 15.293, 14.921, 14.846, 14.682],
            ),
            (
                [8525, 5504, 1379, 4897, 10172],
                [19.043, 18.763, 17.95, 17.624, 17.518],
            ),
            (
                [30, 288, 327, 281, 816],
                [27.528, 25.549, 24.458, 24.089, 23.433],
            ),
            (
                [2306, 1249, 378, 198, 669],
                [18.728, 18.598, 18.371, 18.314, 18.187],
            ),
            (
                [761, 804, 436, 736, 856],
                [27.129, 26.687, 26.551, 25.969, 24.928],
            ),
            (
                [253, 787, 719, 288, 451],
                [26.397, 24.724, 24.671, 24.549, 24.151],
            ),
        ],
    },
];

/// Feed llama.cpp's greedy path to `e` and check each step's logits against it.
fn follow(mut e: Engine, paths: &[Path], tie: f32) {
    for path in paths {
        assert_eq!(
            e.prompt_tokens(path.prompt).unwrap(),
            path.ids,
            "{}",
            path.prompt
        );
        e.model.reset().unwrap();
        let mut logits = e.model.forward(path.ids, 0).unwrap();
        let mut worst = 0f32;
        for (step, (top, want)) in path.steps.iter().enumerate() {
            let ours: Vec<f32> = logits.to_vec1().unwrap();
            let argmax = (0..ours.len())
                .max_by(|&a, &b| ours[a].total_cmp(&ours[b]))
                .unwrap() as u32;
            if want[0] - want[1] >= tie {
                assert_eq!(argmax, top[0], "{:?} step {step}", path.prompt);
            } else {
                assert!(
                    top[..2].contains(&argmax),
                    "{:?} step {step}: near tie",
                    path.prompt
                );
            }
            for (id, w) in top.iter().zip(want) {
                let d = (ours[*id as usize] - w).abs();
                worst = worst.max(d);
                assert!(
                    d < LOGIT_TOLERANCE,
                    "{:?} step {step} token {id}: {} vs {w}",
                    path.prompt,
                    ours[*id as usize]
                );
            }
            logits = e.model.forward(&[top[0]], path.ids.len() + step).unwrap();
        }
        eprintln!(
            "{:?}: largest logit difference from llama.cpp {worst:.3}",
            path.prompt
        );
    }
}

#[test]
fn gemma_follows_llama_cpp_step_by_step() {
    follow(engine(), &GEMMA_PATHS, TIE);
}

#[test]
fn smollm2_follows_llama_cpp_step_by_step() {
    // The network as the file has it (Q4_1): on an x86 CPU with AVX2 the worker's own kernel
    // runs it so (largest difference 0.53 here); elsewhere candle's kernels would re-encode it
    // as Q8_0 for speed, which moves the logits by up to about 1 more, a different question.
    std::env::set_var("RBEE_WORKER_KEEP_QUANT", "1");
    let model = rbee_testkit::model_path();
    follow(
        Engine::new(load::load_ref(model.to_str().unwrap(), "cpu", &mut |_, _| {}).unwrap()),
        &SMOL_PATHS,
        SMOL_TIE,
    );
}

#[test]
fn gemma_greedy_completion_starts_like_llama_cpp() {
    let mut e = engine();
    let params = SamplingParams {
        temperature: 0.0,
        repeat_penalty: 1.0,
        max_tokens: 11,
        ..Default::default()
    };
    // llama.cpp: " the capital of the country of France. It is the largest city in France." The
    // twelfth token is a near tie (0.034 apart) that candle's kernels may break the other way.
    let mut text = String::new();
    e.generate("The capital of France is", &params, &|| None, &mut |t| {
        text.push_str(t)
    })
    .unwrap();
    assert_eq!(text, " the capital of the country of France. It is the");
}
