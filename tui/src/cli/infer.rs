//! `infer`: stream one generation to stdout, its figures to stderr (or all of it as JSON).
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use rbee_client::{ClientError, Streamed};
use rbee_proto::session::{Reply, Request};
use rbee_proto::{FinishReason, SamplingParams, Usage, WorkerId};
use serde_json::json;

use super::args::InferArgs;
use super::conn::{open, Session};
use super::out::Out;
use crate::nodes::config::NodeTarget;
use crate::nodes::describe::describe;
use crate::nodes::error::TuiError;

/// A finished generation as this client saw it.
pub(super) struct Generated {
    pub(super) worker: WorkerId,
    pub(super) finish: FinishReason,
    pub(super) usage: Usage,
    pub(super) text: String,
    /// Arrival times at this client, for the relay benchmark (what a user sees, not what the
    /// worker did).
    sent_at: Instant,
    first_at: Option<Instant>,
    last_at: Instant,
}

/// Run `infer` on the selected node.
pub(super) async fn run(
    target: &NodeTarget,
    args: InferArgs,
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    let s = open(target, timeout).await?;
    let g = generate(&s, request(args), timeout, out).await?;
    report(&s, g, out)
}

fn request(args: InferArgs) -> Request {
    let params = SamplingParams {
        ignore_eos: args.ignore_eos,
        ..args.sampling.params()
    };
    Request::Infer {
        worker: args.worker,
        model: args.model,
        prompt: args.prompt,
        params,
    }
}

/// Send the request and stream its tokens to stdout (unless `--json`) until the final reply.
/// Ctrl-C cancels on the agent and ends with [`TuiError::Interrupted`].
pub(super) async fn generate(
    s: &Session,
    request: Request,
    timeout: Duration,
    out: Out,
) -> Result<Generated, TuiError> {
    let what = describe(&request);
    let req_err = |source| TuiError::Request {
        node: s.name.clone(),
        what: what.clone(),
        source,
    };
    let mut stream = s
        .client
        .start(request, Some(timeout))
        .await
        .map_err(req_err)?;
    let mut text = String::new();
    let sent_at = Instant::now();
    let mut first_at: Option<Instant> = None;
    let mut last_at = sent_at;
    let mut stdout = std::io::stdout();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    // Our own guard in case the agent never answers; its deadline normally ends the stream first.
    let guard = tokio::time::sleep(timeout + Duration::from_secs(5));
    tokio::pin!(guard);
    let (worker, finish, usage) = loop {
        tokio::select! {
            item = stream.next() => match item {
                Some(Streamed::Token(t)) => {
                    last_at = Instant::now();
                    first_at.get_or_insert(last_at);
                    if !out.json {
                        stdout.write_all(t.as_bytes()).and_then(|_| stdout.flush()).map_err(TuiError::Output)?;
                    }
                    text.push_str(&t);
                }
                Some(Streamed::Reply(Reply::InferDone { worker, finish_reason, usage })) => break (worker, finish_reason, usage),
                Some(Streamed::Reply(other)) => return Err(s.unexpected("infer", other)),
                Some(Streamed::Error(e)) => {
                    if interrupted {
                        return Err(TuiError::Interrupted);
                    }
                    return Err(req_err(ClientError::Agent(e)));
                }
                None => return Err(TuiError::SessionClosed { node: s.name.clone(), reason: "connection closed".into() }),
            },
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                let _ = stream.cancel().await;
                // Give the agent a moment to confirm, then leave regardless.
                guard.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(2));
            }
            _ = &mut guard => {
                if interrupted {
                    return Err(TuiError::Interrupted);
                }
                return Err(TuiError::Timeout { what: what.clone(), secs: timeout.as_secs() });
            }
        }
    };
    Ok(Generated {
        worker,
        finish,
        usage,
        text,
        sent_at,
        first_at,
        last_at,
    })
}

/// With `--json` the whole answer as one object; else a newline for a terminal and the `usage:`
/// line on stderr.
pub(super) fn report(s: &Session, g: Generated, out: Out) -> Result<(), TuiError> {
    let Generated {
        worker,
        finish,
        usage,
        text,
        sent_at,
        first_at,
        last_at,
    } = g;
    if out.json {
        let v = json!({
            "node": s.name,
            "worker": worker,
            "text": text,
            "finish_reason": finish,
            "usage": usage,
            "client": {
                "request_to_first_token_ms": first_at.map(|f| (f - sent_at).as_secs_f64() * 1e3),
                "decode_tokens_per_s": first_at
                    .filter(|f| last_at > *f && usage.generated_tokens > 1)
                    .map(|f| (usage.generated_tokens - 1) as f64 / (last_at - f).as_secs_f64()),
            },
        });
        return out.print("", v);
    }
    let mut stdout = std::io::stdout();
    if stdout.is_terminal() && !text.ends_with('\n') {
        let _ = writeln!(stdout);
    }
    eprintln!(
        "usage: worker={worker} finish={} prompt_tokens={} generated_tokens={} ttft_ms={:.0} decode_tok_s={:.1} total_ms={:.0}",
        serde_json::to_value(finish).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        usage.prompt_tokens,
        usage.generated_tokens,
        usage.time_to_first_token_ms,
        usage.decode_tokens_per_s,
        usage.total_ms
    );
    Ok(())
}
