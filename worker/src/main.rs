use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rbee_proto::worker::FromWorker;
use rbee_proto::{ErrorCode, SamplingParams, PROTOCOL_VERSION};
use rbee_worker::chat::{message, Role};
use rbee_worker::load::{self, LoadedModel};
use rbee_worker::serve::{send, serve, ServeOptions, Sink};
use rbee_worker::{Engine, LoadError};

/// `--version`: the release and the backends this build runs (the agent reads it to learn
/// whether a `rbee-worker-cuda` beside it is really a CUDA build).
const VERSION: &str = if cfg!(feature = "cuda") {
    concat!(env!("CARGO_PKG_VERSION"), " (backends: cpu, cuda)")
} else {
    concat!(env!("CARGO_PKG_VERSION"), " (backends: cpu)")
};

/// Serve one LLM with candle. With `--prompt`, generate once and print; otherwise speak the rbee
/// worker protocol on stdin/stdout (what `rbee-agent` does with it).
#[derive(Parser, Debug)]
#[command(version = VERSION, about)]
struct Args {
    /// A .gguf file, a safetensors model directory, or hf:ORG/REPO[@REVISION][:FILE].
    #[arg(long, short)]
    model: String,
    /// cpu, or cuda:N (needs a build with the `cuda` feature).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CPU threads for the matmuls, 1 to 4096 (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Generate once from this prompt (completion: the text as it is), print the text to
    /// stdout and timings to stderr.
    #[arg(long, short, conflicts_with = "chat")]
    prompt: Option<String>,
    /// Ask the model this question in a conversation rendered with its own chat template; print
    /// the answer to stdout and timings to stderr.
    #[arg(long)]
    chat: Option<String>,
    /// With --chat: the system prompt that opens the conversation.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 1.1)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Stop when this text appears (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[arg(long, default_value_t = 299_792_458)]
    seed: u64,
    /// Heartbeat period in protocol mode.
    #[arg(long, default_value_t = 2000)]
    heartbeat_ms: u64,
    /// Longest a generated token waits to be sent, in protocol mode (0: each step's tokens at
    /// once). Tokens made meanwhile leave together: fewer writes, and fewer wake-ups of the agent
    /// and its clients; a request's first text and its end are never held.
    #[arg(long, default_value_t = 20)]
    stream_interval_ms: u64,
    /// Generate requests that may wait in the queue, beyond the busy slots, before the answer
    /// is `busy`.
    #[arg(long, default_value_t = 8)]
    queue: usize,
    /// Sequences served at once (continuous batching) on models with the batched forward (dense
    /// llama, qwen2, qwen3 GGUF); others serve one.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Tokens of context per sequence (prompt and answer); at most, and by default, what the
    /// model's metadata gives.
    #[arg(long)]
    ctx: Option<u32>,
    /// Prompt tokens read per step (tuning: smaller chunks keep other streams flowing, larger
    /// ones read a prompt faster).
    #[arg(long, default_value_t = rbee_worker::generate::DEFAULT_CHUNK)]
    prefill_chunk: usize,
    /// Write the model's tokenizer as tokenizer.json to this path and exit.
    #[arg(long)]
    export_tokenizer: Option<std::path::PathBuf>,
    /// Keep the file's quantization on CPU instead of re-encoding slow formats (Q4_1, Q5_x) as Q8_0
    /// where candle's kernels run them (rbee's own x86 kernel keeps Q4_0/Q4_1/Q8_0 as they are).
    #[arg(long)]
    keep_quant: bool,
    /// Keep generating past the end-of-sequence token (benchmarks: fixed-length runs).
    #[arg(long)]
    ignore_eos: bool,
    /// Print timings as one JSON object on stderr (with --prompt).
    #[arg(long)]
    json: bool,
}

/// Most `--threads` accepted: beyond this the thread pool cannot start (10⁹ aborts).
const MAX_THREADS: usize = 4096;

fn main() {
    let args = Args::parse();
    if let Some(t) = args.threads.filter(|t| !(1..=MAX_THREADS).contains(t)) {
        refuse_at_start(
            &args,
            &format!("--threads {t}: must be from 1 to {MAX_THREADS}"),
        );
    }
    if args.keep_quant {
        std::env::set_var("RBEE_WORKER_KEEP_QUANT", "1");
    }
    // candle's CPU kernels size their pool from this before first use. Left unset, candle counts
    // physical cores, not the CPUs this process may use: one thread on a 2-vCPU machine, 45
    // instead of 53 tok/s on the test model. So "all cores" (the documented default) is explicit.
    let threads = args.threads.or_else(|| {
        let set = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0);
        match set {
            Some(_) => None,
            None => std::thread::available_parallelism().ok().map(|n| n.get()),
        }
    });
    if let Some(t) = threads {
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    load::serving_allocator();
    rbee_host::logging::init_stderr();
    let code = if one_shot_mode(&args) {
        // On a thread of the pool, as the protocol's generator runs (see `serve`).
        match rayon::scope(|_| one_shot(&args)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("rbee-worker: {e:#}");
                1
            }
        }
    } else {
        protocol(&args)
    };
    std::process::exit(code);
}

/// Whether this run answers once for a person (`--prompt`, `--chat`, `--export-tokenizer`)
/// rather than speaking the protocol to an agent.
fn one_shot_mode(args: &Args) -> bool {
    args.prompt.is_some() || args.chat.is_some() || args.export_tokenizer.is_some()
}

/// Stdout as the protocol's sink, after the `Hello` every protocol run starts with.
fn hello() -> Sink {
    // Buffered: the token frames of the steps within `--stream-interval-ms` leave in one write
    // (`serve` flushes then, and after every other frame).
    let sink: Sink = Arc::new(Mutex::new(Box::new(std::io::BufWriter::new(
        std::io::stdout(),
    ))));
    send(
        &sink,
        &FromWorker::Hello {
            protocol_version: PROTOCOL_VERSION,
            pid: std::process::id(),
        },
    );
    sink
}

/// Exit with the model-load code (3) and `why`: on stderr, and in protocol mode also as the
/// `model_load` error the agent shows once (a load failure, not a crash to restart).
fn refuse_at_start(args: &Args, why: &str) -> ! {
    eprintln!("rbee-worker: {why}");
    if !one_shot_mode(args) {
        let sink = hello();
        send(
            &sink,
            &FromWorker::Error {
                id: None,
                code: ErrorCode::ModelLoad,
                message: why.to_string(),
            },
        );
    }
    std::process::exit(3);
}

fn params(args: &Args) -> SamplingParams {
    SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repeat_penalty: args.repeat_penalty,
        repeat_last_n: args.repeat_last_n,
        max_tokens: args.max_tokens,
        stop: args.stop.clone(),
        seed: args.seed,
        ignore_eos: args.ignore_eos,
    }
}

fn load(args: &Args, progress: &mut dyn FnMut(&str, f32)) -> Result<LoadedModel, LoadError> {
    let mut loaded = load::load_ref(&args.model, &args.device, progress)?;
    if let Some(ctx) = args.ctx.filter(|c| *c > 0) {
        let model = &mut loaded.summary.context_length;
        if ctx > *model {
            tracing::warn!(
                asked = ctx,
                held = *model,
                "--ctx is beyond the model's own context; held to it"
            );
        }
        *model = (*model).min(ctx);
    }
    Ok(loaded)
}

/// The engine the arguments ask for: `--parallel` slots where the model batches, the chunk size.
fn engine(args: &Args, loaded: LoadedModel) -> Engine {
    let mut engine = Engine::with_parallel(loaded, args.parallel.max(1));
    if engine.chunk != usize::MAX {
        engine.chunk = args.prefill_chunk.max(1);
    }
    engine
}

fn one_shot(args: &Args) -> anyhow::Result<()> {
    params(args)
        .validate()
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let loaded = load(args, &mut |_, _| {})?;
    if let Some(path) = &args.export_tokenizer {
        loaded
            .tokenizer
            .save(path, false)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("writing {}", path.display()))?;
        return Ok(());
    }
    let mut engine = engine(args, loaded);
    let mut out = std::io::stdout().lock();
    let mut emit = |t: &str| {
        let _ = out.write_all(t.as_bytes());
        let _ = out.flush();
    };
    let result = match &args.chat {
        Some(question) => {
            let mut messages = Vec::new();
            if let Some(system) = &args.system {
                messages.push(message(Role::System, system.clone()));
            }
            messages.push(message(Role::User, question.clone()));
            engine.chat(&messages, &params(args), &|| None, &mut emit)
        }
        None => {
            let prompt = args.prompt.as_deref().unwrap_or_default();
            engine.generate(prompt, &params(args), &|| None, &mut emit)
        }
    };
    let (finish, usage) = result.map_err(|e| anyhow::anyhow!("{e}"))?;
    let _ = writeln!(out);
    if args.json {
        eprintln!(
            "{}",
            serde_json::json!({"finish_reason": finish, "usage": usage, "peak_rss_bytes": rbee_host::proc::own_peak_rss_bytes()})
        );
    } else {
        eprintln!(
            "{} prompt tokens ({:.1} tok/s), {} generated ({:.1} tok/s), first token after {:.0} ms, finish: {:?}",
            usage.prompt_tokens,
            usage.prompt_tokens_per_s,
            usage.generated_tokens,
            usage.decode_tokens_per_s,
            usage.time_to_first_token_ms,
            finish
        );
    }
    Ok(())
}

fn protocol(args: &Args) -> i32 {
    let sink = hello();
    let loaded = load(args, &mut |stage, progress| {
        send(
            &sink,
            &FromWorker::Loading {
                stage: stage.into(),
                progress,
            },
        );
    });
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(model = %args.model, "load failed: {e}");
            send(
                &sink,
                &FromWorker::Error {
                    id: None,
                    code: ErrorCode::ModelLoad,
                    message: e.to_string(),
                },
            );
            return 3;
        }
    };
    let engine = engine(args, loaded);
    let mut summary = engine.model.summary.clone();
    summary.parallel = u32::try_from(engine.parallel()).unwrap_or(u32::MAX);
    tracing::info!(model = %summary.name, device = %summary.device, parallel = engine.parallel(),
        batching = Engine::batches(&engine.model), ctx = summary.context_length, "ready");
    send(&sink, &FromWorker::Ready { model: summary });
    let stdin = std::io::BufReader::new(std::io::stdin());
    serve(
        engine,
        stdin,
        sink,
        ServeOptions {
            queue_depth: args.queue,
            heartbeat: Duration::from_millis(args.heartbeat_ms),
            stream_interval: Duration::from_millis(args.stream_interval_ms),
        },
    );
    0
}
