//! `chat`: talk with a model through its chat template. With `--prompt`, one turn streamed to
//! stdout (or one JSON object) and exit; without, a conversation read line by line from stdin
//! like `ollama run`: the whole history goes with every turn, Ctrl-C cancels the running answer
//! and stays, `/clear` starts over (the system turn is kept), `/bye` or end of input leaves.
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use rbee_client::ClientError;
use rbee_proto::session::{Reply, Request, WorkerInfo};
use rbee_proto::{ChatMessage, ErrorCode, ProtoError, Role, SamplingParams, WorkerState};

use super::args::ChatArgs;
use super::conn::{open, Session};
use super::infer::{generate, report};
use super::out::Out;
use crate::nodes::config::NodeTarget;
use crate::nodes::error::TuiError;

/// What `/help` prints in a conversation.
const HELP: &str = "/clear  start a new conversation (the system turn is kept)\n\
                    /bye    leave (so does Ctrl-D)\n\
                    Ctrl-C  cancel the answer being written\n";

/// Run `chat` on the selected node.
pub(super) async fn run(
    target: &NodeTarget,
    args: ChatArgs,
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    let s = open(target, timeout).await?;
    let params = args.sampling.params();
    let mut history = Vec::new();
    if let Some(system) = &args.system {
        history.push(message(Role::System, system));
    }
    let Some(prompt) = &args.prompt else {
        return converse(&s, &args.model, history, &params, timeout, out).await;
    };
    history.push(message(Role::User, prompt));
    let route = route(&s, &args.model, timeout).await?;
    let g = generate(&s, request(&route, &history, &params), timeout, out)
        .await
        .map_err(|e| with_spawn_hint(e, &args.model))?;
    report(&s, g, out)
}

fn message(role: Role, content: &str) -> ChatMessage {
    ChatMessage {
        role,
        content: content.to_string(),
    }
}

fn request(route: &Route, history: &[ChatMessage], params: &SamplingParams) -> Request {
    Request::Chat {
        worker: route.worker.clone(),
        model: route.worker.is_none().then(|| route.model.clone()),
        messages: history.to_vec(),
        params: params.clone(),
    }
}

/// Where a turn goes: a worker found here, or the model name for the agent to route.
struct Route {
    model: String,
    worker: Option<String>,
}

/// The last path component of a model reference (`/m/x.gguf` → `x.gguf`).
fn file_name(reference: &str) -> &str {
    reference.rsplit(['/', '\\']).next().unwrap_or(reference)
}

/// A serving worker of `model` in any of the forms `models list` prints (NAME, file name, REF):
/// the agent routes by the reference a worker was spawned with, so the name is looked up in the
/// node's models first. `None` leaves the routing (and its "no ready worker" answer) to the agent.
async fn route(s: &Session, model: &str, timeout: Duration) -> Result<Route, TuiError> {
    let refs: Vec<String> = match s.ask(Request::ListModels, timeout).await? {
        Reply::Models { models } => models
            .into_iter()
            .filter(|e| e.name == model || e.reference == model || file_name(&e.reference) == model)
            .map(|e| e.reference)
            .collect(),
        other => return Err(s.unexpected("list models", other)),
    };
    let serves = |w: &WorkerInfo| {
        w.state.is_serving()
            && (w.model == model
                || file_name(&w.model) == model
                || refs
                    .iter()
                    .any(|r| *r == w.model || file_name(r) == file_name(&w.model)))
    };
    let workers = s.workers(timeout).await?;
    let worker = workers
        .iter()
        .filter(|w| serves(w))
        .min_by_key(|w| w.state != WorkerState::Ready)
        .map(|w| w.id.clone());
    Ok(Route {
        model: model.to_string(),
        worker,
    })
}

/// "No ready worker serves M" gets the command that starts one.
fn with_spawn_hint(e: TuiError, model: &str) -> TuiError {
    match e {
        TuiError::Request {
            node,
            what,
            source: ClientError::Agent(pe),
        } if pe.code == ErrorCode::NotFound => {
            let message = format!(
                "{}; start one with `rbee-tui workers spawn --node {node} --model {model} --wait`",
                pe.message
            );
            TuiError::Request {
                node,
                what,
                source: ClientError::Agent(ProtoError::new(pe.code, message)),
            }
        }
        e => e,
    }
}

/// Lines from stdin, read on a thread of their own so Ctrl-C can be heard while waiting; the
/// channel closes at end of input.
fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The interactive conversation: a `>>> ` prompt when stdin is a terminal, each answer streamed
/// to stdout and its usage line on stderr (or one JSON object per turn with `--json`).
async fn converse(
    s: &Session,
    model: &str,
    mut history: Vec<ChatMessage>,
    params: &SamplingParams,
    timeout: Duration,
    out: Out,
) -> Result<(), TuiError> {
    let tty = std::io::stdin().is_terminal();
    let kept = history.len();
    let mut lines = stdin_lines();
    let mut stdout = std::io::stdout();
    loop {
        if tty {
            write!(stdout, ">>> ")
                .and_then(|()| stdout.flush())
                .map_err(TuiError::Output)?;
        }
        let line = tokio::select! {
            line = lines.recv() => line,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("\nUse Ctrl-D or /bye to leave.");
                continue;
            }
        };
        let Some(line) = line else {
            if tty {
                writeln!(stdout).map_err(TuiError::Output)?;
            }
            return Ok(());
        };
        match line.trim() {
            "" => continue,
            "/bye" => return Ok(()),
            "/clear" => {
                history.truncate(kept);
                eprintln!("new conversation");
                continue;
            }
            "/?" | "/help" => {
                eprint!("{HELP}");
                continue;
            }
            _ => {}
        }
        history.push(message(Role::User, line.trim_end()));
        let route = route(s, model, timeout).await?;
        match generate(s, request(&route, &history, params), timeout, out).await {
            Ok(g) => {
                let text = g.text.clone();
                if !out.json && !stdout.is_terminal() {
                    writeln!(stdout).map_err(TuiError::Output)?;
                }
                report(s, g, out)?;
                history.push(message(Role::Assistant, &text));
            }
            Err(TuiError::Interrupted) => {
                // The answer was cancelled on the agent; the question goes with it.
                history.pop();
                writeln!(stdout).map_err(TuiError::Output)?;
                eprintln!("cancelled");
            }
            Err(e @ TuiError::Request { .. }) if history.len() > kept + 1 => {
                // A failed turn later in a conversation is said and the conversation goes on.
                history.pop();
                eprintln!("rbee-tui: {e}");
            }
            Err(e) => return Err(with_spawn_hint(e, model)),
        }
    }
}
