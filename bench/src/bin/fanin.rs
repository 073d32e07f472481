//! `fanin`: one dashboard process following many agents. Starts `loadgen` as a child process
//! (so only the dashboard's own CPU is measured), runs the dashboard's real session/update/view
//! code headless against it (`rbee_bench::fanin`), and prints a markdown table row.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use ratatui::backend::{CrosstermBackend, TestBackend};
use ratatui::layout::Rect;
use ratatui::{Terminal, TerminalOptions, Viewport};
use rbee_bench::fanin::{self, DashOptions, DashReport, ScreenChoice};
use rbee_bench::loadgen::{LoadConfig, LoadGen};
use rbee_bench::measure::{self, ms, percentile};
use rbee_proto::config::NodeConfig;
use rbee_tui::nodes::config::NodeTarget;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    /// ratatui's `TestBackend`: cells copied into a buffer.
    Test,
    /// `CrosstermBackend` writing its escape sequences into `io::sink()`: the real terminal
    /// backend's work, minus the terminal.
    Ansi,
}

#[derive(Parser, Debug)]
#[command(about = "Fan-in benchmark: one headless dashboard following many fake agents")]
struct Args {
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Simulated workers per agent.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Per worker: heartbeats per second, each carrying this tokens/s.
    #[arg(long, default_value_t = 50.0)]
    tokens_per_s: f64,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Seconds to connect and settle before measuring.
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Telemetry samples per second per agent.
    #[arg(long, default_value_t = 1.0)]
    telemetry_hz: f64,
    /// Seconds between worker state changes on each agent (0: none).
    #[arg(long, default_value_t = 5.0)]
    state_every: f64,
    /// GPUs per simulated node.
    #[arg(long, default_value_t = 8)]
    gpus: u32,
    /// Headless terminal size.
    #[arg(long, default_value_t = 200)]
    width: u16,
    #[arg(long, default_value_t = 50)]
    height: u16,
    #[arg(long, value_enum, default_value = "test")]
    backend: BackendChoice,
    /// Screen shown while measured.
    #[arg(long, value_enum, default_value = "nodes")]
    screen: ScreenChoice,
    /// Keep a prompt streaming (Token frames at --tokens-per-s) on the first node.
    #[arg(long)]
    prompt: bool,
    /// Run the load generator inside this process (its CPU is then counted too).
    #[arg(long)]
    in_process: bool,
    /// The `loadgen` binary (default: next to this one).
    #[arg(long)]
    loadgen: Option<PathBuf>,
    /// Write the last frame as text here.
    #[arg(long)]
    screen_out: Option<PathBuf>,
    /// Print the table header before the row.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    header: bool,
}

struct ChildGen {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.agents == 0 || args.seconds <= 0.0 || args.tokens_per_s <= 0.0 {
        bail!("--agents, --seconds and --tokens-per-s must be positive");
    }
    let load_avg_before = measure::loadavg();
    let dir = tempfile::Builder::new().prefix("rbee-fanin-").tempdir()?;
    let token_file = dir.path().join("token");
    let token = random_token()?;
    std::fs::write(&token_file, format!("{token}\n"))?;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;

    let cfg = LoadConfig {
        agents: args.agents,
        workers: args.workers,
        tokens_per_s: args.tokens_per_s,
        telemetry_hz: args.telemetry_hz,
        state_change_every: Duration::from_secs_f64(args.state_every.max(0.0)),
        gpus: args.gpus,
        token,
    };
    let offered = cfg.offered_events_per_s();

    // The generator: a child process, or a runtime of its own in here.
    let mut child = None;
    let mut in_proc = None;
    let urls = if args.in_process {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("loadgen")
            .enable_all()
            .build()?;
        let lg = rt.block_on(LoadGen::start(cfg.clone()))?;
        let urls = lg.urls.clone();
        in_proc = Some((rt, lg));
        urls
    } else {
        let (c, urls) = spawn_loadgen(&args, &token_file)?;
        child = Some(c);
        urls
    };
    let targets: Vec<NodeTarget> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            NodeTarget::Remote(NodeConfig {
                name: format!("gpu{i:03}"),
                url: url.clone(),
                token_file: token_file.clone(),
                ..Default::default()
            })
        })
        .collect();
    let report = dashboard(&args, targets)?;
    let peak_rss = rbee_host::proc::own_peak_rss_bytes();

    let gen_stats = match child {
        Some(c) => stop_loadgen(c),
        None => in_proc
            .map(|(rt, lg)| {
                let s = format!("stats {} (in process)", lg.counters.summary());
                drop(lg);
                rt.shutdown_timeout(Duration::from_secs(1));
                s
            })
            .unwrap_or_default(),
    };
    if let Some(p) = &args.screen_out {
        std::fs::write(p, &report.screen).with_context(|| format!("writing {}", p.display()))?;
    }
    print_report(
        &args,
        &report,
        offered,
        peak_rss,
        &gen_stats,
        &load_avg_before,
    );
    if report.connected_at_start < report.nodes {
        eprintln!(
            "fanin: warning: only {}/{} nodes were connected when measuring began",
            report.connected_at_start, report.nodes
        );
    }
    Ok(())
}

/// The dashboard over `targets` on a runtime built as `rbee-tui`'s main builds it, drawing into
/// the chosen backend.
fn dashboard(args: &Args, targets: Vec<NodeTarget>) -> anyhow::Result<DashReport> {
    let opts = DashOptions {
        warmup: Duration::from_secs_f64(args.warmup),
        measure: Duration::from_secs_f64(args.seconds),
        screen: args.screen,
        prompt: args.prompt,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (w, h) = (args.width, args.height);
    let report = match args.backend {
        BackendChoice::Test => {
            let mut t = Terminal::new(TestBackend::new(w, h))?;
            rt.block_on(fanin::run(&mut t, targets, &opts))?
        }
        BackendChoice::Ansi => {
            let options = TerminalOptions {
                viewport: Viewport::Fixed(Rect::new(0, 0, w, h)),
            };
            let mut t = Terminal::with_options(CrosstermBackend::new(std::io::sink()), options)?;
            rt.block_on(fanin::run(&mut t, targets, &opts))?
        }
    };
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(report)
}

fn random_token() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn spawn_loadgen(
    args: &Args,
    token_file: &std::path::Path,
) -> anyhow::Result<(ChildGen, Vec<String>)> {
    let bin = match &args.loadgen {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this binary")?
            .join("loadgen"),
    };
    // It stops by itself well after we are done, or as soon as we close its stdin (or die).
    let bound = args.warmup + args.seconds + 60.0;
    let mut child = Command::new(&bin)
        .args(["--agents", &args.agents.to_string()])
        .args(["--workers", &args.workers.to_string()])
        .args(["--tokens-per-s", &args.tokens_per_s.to_string()])
        .args(["--telemetry-hz", &args.telemetry_hz.to_string()])
        .args(["--state-every", &args.state_every.to_string()])
        .args(["--gpus", &args.gpus.to_string()])
        .args(["--seconds", &format!("{bound}")])
        .arg("--token-file")
        .arg(token_file)
        .arg("--stdin-control")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (build it: cargo build --release -p rbee-bench)",
                bin.display()
            )
        })?;
    let mut stdout = BufReader::new(child.stdout.take().context("loadgen stdout")?);
    let mut urls = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line)? == 0 {
            let _ = child.kill();
            let status = child.wait()?;
            bail!("loadgen ended before it was ready ({status})");
        }
        match line.trim().split_once(' ') {
            Some(("agent", url)) => urls.push(url.to_string()),
            _ if line.trim() == "ready" => break,
            _ => {}
        }
    }
    if urls.len() != args.agents {
        bail!(
            "loadgen announced {} agents, wanted {}",
            urls.len(),
            args.agents
        );
    }
    Ok((ChildGen { child, stdout }, urls))
}

/// Close its stdin, collect its `stats` line, wait for it (killing it after 5 s).
fn stop_loadgen(mut g: ChildGen) -> String {
    drop(g.child.stdin.take());
    let mut stats = String::new();
    let mut line = String::new();
    while g.stdout.read_line(&mut line).unwrap_or(0) > 0 {
        if line.starts_with("stats ") {
            stats = line.trim().to_string();
        }
        line.clear();
    }
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match g.child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = g.child.kill();
                let _ = g.child.wait();
                break;
            }
        }
    }
    stats
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn print_report(
    args: &Args,
    r: &DashReport,
    offered: f64,
    peak_rss: u64,
    gen_stats: &str,
    load_before: &str,
) {
    let p50 = percentile(&r.frames, 50.0);
    let p99 = percentile(&r.frames, 99.0);
    let max = r.frames.last().copied().unwrap_or_default();
    let lag99 = r
        .telemetry_lag_ms
        .get(((r.telemetry_lag_ms.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0);
    let applied = r.per_s(r.agent_events());
    let cpu = r.cpu_percent();
    let mark = |ok: bool| if ok { "✓" } else { "✗" };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "machine: {} CPUs, {}; {} UTC; load average {} before, {} after; backend {:?} {}×{}, screen {:?}{}{}",
        measure::nproc(),
        measure::cpu_model(),
        measure::utc_date(),
        load_before,
        measure::loadavg(),
        args.backend,
        args.width,
        args.height,
        args.screen,
        if args.prompt { ", prompt streaming" } else { "" },
        if args.in_process { ", generator in process (its CPU counted)" } else { ", generator in a child process" },
    );
    let _ = writeln!(out);
    if args.header {
        let _ = writeln!(
            out,
            "| agents × workers × tok/s | measured s | events/s offered | events/s applied | dashboard CPU % of one core (< 25) | user / sys % | frame p50 ms | frame p99 ms (< 16) | frame max ms | frames/s | telemetry age p99 ms | max queued actions | peak RSS MiB |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    let wall = r.wall.as_secs_f64();
    let _ = writeln!(
        out,
        "| {}×{}×{} | {:.1} | {:.0} | {:.0} ({:.1} %) | {:.1} {} | {:.1} / {:.1} | {:.2} | {:.2} {} | {:.2} | {:.1} | {} | {} | {:.1} |",
        args.agents,
        args.workers,
        args.tokens_per_s,
        wall,
        offered,
        applied,
        applied / offered * 100.0,
        cpu,
        mark(cpu < 25.0),
        r.cpu.user.as_secs_f64() / wall * 100.0,
        r.cpu.system.as_secs_f64() / wall * 100.0,
        ms(p50),
        ms(p99),
        mark(ms(p99) < 16.0),
        ms(max),
        r.frames.len() as f64 / wall,
        lag99,
        r.max_backlog,
        mib(peak_rss),
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "nodes connected {}/{} at start, {}/{} at end; workers shown {}; applied/s: heartbeats {:.0}, telemetry {:.1}, worker states {:.1}, other events {:.1}, replies {:.1}, prompt tokens {:.1} ({} prompts done); all actions {:.0}/s",
        r.connected_at_start,
        r.nodes,
        r.connected_at_end,
        r.nodes,
        r.workers_at_end,
        r.per_s(r.heartbeats),
        r.per_s(r.telemetry),
        r.per_s(r.worker_states),
        r.per_s(r.other_events),
        r.per_s(r.replies),
        r.per_s(r.prompt_tokens),
        r.prompts_done,
        r.per_s(r.actions),
    );
    if !gen_stats.is_empty() {
        let _ = writeln!(out, "loadgen: {gen_stats}");
    }
}
