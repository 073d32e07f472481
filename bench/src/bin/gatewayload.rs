//! Client side of `bench/gateway.sh`: streaming chat requests against `rbee-tui serve`, as an
//! application sends them (HTTP/1.1, SSE), measured at the client.
//!
//! * `single`: RUNS sequential requests of a fixed length (`ignore_eos`); one line per run with
//!   the client-observed decode tokens/s (first token to last, as `rbee-tui infer --json`
//!   computes it for a direct session) and the time to first token.
//! * `load`: CLIENTS concurrent clients, each sending one request after the other for SECONDS;
//!   every request must end with `data: [DONE]` or be refused with 429/503. Prints one JSON
//!   object: counts by outcome, requests/s, TTFT p50/p99.
//!
//! The HTTP client is deliberately plain (one request per connection, `Connection: close`,
//! the response read to its end): it measures the gateway, not a client library.
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rbee_bench::measure::{ms, percentile};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// The gateway, `HOST:PORT`.
    #[arg(long)]
    addr: String,
    /// The model to ask for.
    #[arg(long)]
    model: String,
    /// Tokens per request (generated to the end: `ignore_eos`).
    #[arg(long, default_value_t = 32)]
    tokens: u32,
    /// `chat` (`/v1/chat/completions`) or `completions` (`/v1/completions`, the prompt as is:
    /// the same work as `rbee-tui infer --prompt`).
    #[arg(long, default_value = "chat")]
    endpoint: String,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Sequential runs, one line each.
    Single {
        #[arg(long, default_value_t = 1)]
        runs: u32,
    },
    /// Concurrent clients for a while.
    Load {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

/// How one request ended, as the client saw it.
#[derive(Debug)]
enum Outcome {
    /// Complete answer: time to first token, decode tok/s, completion tokens.
    Ok {
        ttft: Duration,
        decode_tok_s: f64,
        tokens: u32,
    },
    /// Refused with this status (429 or 503 are the allowed refusals).
    Refused(u16),
    /// Anything else: an error event, a cut stream, a connection failure.
    Lost(String),
    /// No end within the client's limit.
    Hung,
}

async fn one(addr: &str, path: &str, body: &str, limit: Duration) -> Outcome {
    match tokio::time::timeout(limit, request(addr, path, body)).await {
        Ok(o) => o,
        Err(_) => Outcome::Hung,
    }
}

async fn request(addr: &str, path: &str, body: &str) -> Outcome {
    let t0 = Instant::now();
    let mut s = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Outcome::Lost(format!("connect: {e}")),
    };
    let _ = s.set_nodelay(true);
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = s.write_all(req.as_bytes()).await {
        return Outcome::Lost(format!("write: {e}"));
    }
    let mut seen = Vec::with_capacity(16 * 1024);
    let mut buf = vec![0u8; 16 * 1024];
    let (mut first, mut last) = (None, None);
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Outcome::Lost(format!("read: {e}")),
        };
        let now = Instant::now();
        let piece = &buf[..n];
        if has_token(piece) {
            first.get_or_insert(now);
            last = Some(now);
        }
        seen.extend_from_slice(piece);
    }
    let text = String::from_utf8_lossy(&seen);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != 200 {
        return match status {
            429 | 503 => Outcome::Refused(status),
            _ => Outcome::Lost(format!(
                "status {status}: {}",
                text.lines().last().unwrap_or("")
            )),
        };
    }
    if !text.contains("data: [DONE]") {
        return Outcome::Lost(format!(
            "no [DONE]: {}",
            text.lines().rev().nth(1).unwrap_or("")
        ));
    }
    let tokens = text
        .split("\"completion_tokens\":")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let (Some(f), Some(l)) = (first, last) else {
        return Outcome::Lost("no content".into());
    };
    let decode = if tokens > 1 && l > f {
        f64::from(tokens - 1) / (l - f).as_secs_f64()
    } else {
        0.0
    };
    Outcome::Ok {
        ttft: f - t0,
        decode_tok_s: decode,
        tokens,
    }
}

/// Whether this piece of the response carries generated text: a chat delta's `"content":` or a
/// completion chunk's non-empty `"text":"…"` (the closing chunks carry neither).
fn has_token(piece: &[u8]) -> bool {
    let chat = b"\"content\":";
    let text = b"\"text\":\"";
    piece.windows(chat.len()).any(|w| w == chat)
        || piece
            .windows(text.len() + 1)
            .any(|w| &w[..text.len()] == text && w[text.len()] != b'"')
}

/// The path for `--endpoint`.
fn path(endpoint: &str) -> &'static str {
    if endpoint == "completions" {
        "/v1/completions"
    } else {
        "/v1/chat/completions"
    }
}

/// A streamed request of exactly `tokens` tokens; `n` varies the prompt.
fn body(endpoint: &str, model: &str, tokens: u32, n: u64) -> String {
    if endpoint == "completions" {
        return format!(
            "{{\"model\":\"{model}\",\"prompt\":\"Tell me a story about bee number {n}.\",\
             \"max_tokens\":{tokens},\"temperature\":0,\"ignore_eos\":true,\"stream\":true,\
             \"stream_options\":{{\"include_usage\":true}}}}"
        );
    }
    format!(
        "{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Tell me a story about bee number {n}.\"}}],\
         \"max_tokens\":{tokens},\"temperature\":0,\"ignore_eos\":true,\"stream\":true,\
         \"stream_options\":{{\"include_usage\":true}}}}"
    )
}

async fn single(args: &Args, runs: u32) {
    for i in 0..runs {
        let b = body(&args.endpoint, &args.model, args.tokens, u64::from(i));
        match one(&args.addr, path(&args.endpoint), &b, Duration::from_secs(600)).await {
            Outcome::Ok {
                ttft,
                decode_tok_s,
                tokens,
            } => println!(
                "{{\"decode_tokens_per_s\":{decode_tok_s:.3},\"ttft_ms\":{:.1},\"tokens\":{tokens}}}",
                ms(ttft)
            ),
            other => {
                eprintln!("gatewayload: run {i}: {other:?}");
                std::process::exit(1);
            }
        }
    }
}

async fn load(args: &Args, clients: usize, seconds: u64) {
    let end = Instant::now() + Duration::from_secs(seconds);
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (addr, model, tokens) = (args.addr.clone(), args.model.clone(), args.tokens);
        let endpoint = args.endpoint.clone();
        tasks.spawn(async move {
            let mut out = Vec::new();
            let mut n = 0u64;
            while Instant::now() < end {
                let b = body(&endpoint, &model, tokens, (c as u64) << 32 | n);
                let o = one(&addr, path(&endpoint), &b, Duration::from_secs(300)).await;
                if let Outcome::Refused(_) = o {
                    // Retry-After is at least a second; a client that honours it waits.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                out.push(o);
                n += 1;
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.expect("client task"));
    }
    let elapsed = t0.elapsed();
    let mut ttft: Vec<Duration> = Vec::new();
    let (mut ok, mut r429, mut r503, mut lost, mut hung, mut tokens) = (0, 0, 0, 0, 0, 0u64);
    let mut first_loss = String::new();
    for o in &all {
        match o {
            Outcome::Ok {
                ttft: t, tokens: n, ..
            } => {
                ok += 1;
                tokens += u64::from(*n);
                ttft.push(*t);
            }
            Outcome::Refused(429) => r429 += 1,
            Outcome::Refused(_) => r503 += 1,
            Outcome::Lost(why) => {
                lost += 1;
                if first_loss.is_empty() {
                    first_loss = why.clone();
                }
            }
            Outcome::Hung => hung += 1,
        }
    }
    ttft.sort();
    let p = |q| {
        if ttft.is_empty() {
            0.0
        } else {
            ms(percentile(&ttft, q))
        }
    };
    println!(
        "{{\"clients\":{clients},\"seconds\":{:.1},\"requests\":{},\"ok\":{ok},\"refused_429\":{r429},\
         \"refused_503\":{r503},\"lost\":{lost},\"hung\":{hung},\"ok_per_s\":{:.3},\"tokens_per_s\":{:.1},\
         \"ttft_p50_ms\":{:.0},\"ttft_p99_ms\":{:.0},\"first_loss\":{:?}}}",
        elapsed.as_secs_f64(),
        all.len(),
        ok as f64 / elapsed.as_secs_f64(),
        tokens as f64 / elapsed.as_secs_f64(),
        p(50.0),
        p(99.0),
        first_loss,
    );
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        match args.mode {
            Mode::Single { runs } => single(&args, runs).await,
            Mode::Load { clients, seconds } => load(&args, clients, seconds).await,
        }
    });
}
