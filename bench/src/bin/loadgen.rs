//! `loadgen`: N fake agents on 127.0.0.1 (see `rbee_bench::loadgen`). Prints `agent URL` per
//! agent, then `ready`; runs for `--seconds` (or until stdin closes, with `--stdin-control`), then
//! prints one `stats …` line and exits.
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rbee_bench::loadgen::{LoadConfig, LoadGen};
use rbee_bench::measure::CpuTime;

/// Longest run allowed: the generator always stops by itself.
const MAX_SECONDS: f64 = 3600.0;

#[derive(Parser, Debug)]
#[command(
    about = "Fake rbee agents on loopback that push worker heartbeats, telemetry and state changes"
)]
struct Args {
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Simulated workers per agent.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Heartbeats per second per worker (each carries this tokens/s), and Token frames per second
    /// of an Infer.
    #[arg(long, default_value_t = 50.0)]
    tokens_per_s: f64,
    /// Telemetry samples per second per agent.
    #[arg(long, default_value_t = 1.0)]
    telemetry_hz: f64,
    /// Seconds between worker state changes on each agent (0: none).
    #[arg(long, default_value_t = 5.0)]
    state_every: f64,
    /// GPUs per simulated node.
    #[arg(long, default_value_t = 8)]
    gpus: u32,
    /// Stop after this many seconds (at most 3600).
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// File holding the bearer token every agent requires.
    #[arg(long)]
    token_file: PathBuf,
    /// Also stop when stdin reaches end of file (the parent process closed it or died).
    #[arg(long)]
    stdin_control: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(args.seconds > 0.0 && args.seconds <= MAX_SECONDS) {
        bail!("--seconds must be in (0, {MAX_SECONDS}]");
    }
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("cannot read token file {}", args.token_file.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!("token file {} is empty", args.token_file.display());
    }
    let cfg = LoadConfig {
        agents: args.agents,
        workers: args.workers,
        tokens_per_s: args.tokens_per_s,
        telemetry_hz: args.telemetry_hz,
        state_change_every: Duration::from_secs_f64(args.state_every.max(0.0)),
        gpus: args.gpus,
        token,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let t0 = Instant::now();
    let counters = rt.block_on(async {
        let lg = LoadGen::start(cfg).await?;
        {
            let mut out = std::io::stdout().lock();
            for url in &lg.urls {
                writeln!(out, "agent {url}")?;
            }
            writeln!(out, "ready")?;
            out.flush()?;
        }
        let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
        if args.stdin_control {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
                let _ = eof_tx.send(());
            });
        } else {
            std::mem::forget(eof_tx);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(args.seconds)) => {}
            _ = eof_rx => {}
        }
        anyhow::Ok(lg.counters.clone())
        // `lg` drops here: every agent stops and every session closes.
    })?;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = CpuTime::of_self();
    println!(
        "stats {} wall_s={wall:.1} cpu_s={:.1} cpu_pct={:.0}",
        counters.summary(),
        cpu.total().as_secs_f64(),
        cpu.total().as_secs_f64() / wall * 100.0
    );
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
