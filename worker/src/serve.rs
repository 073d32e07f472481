//! The stdio side of the agent ⇄ worker protocol.
//!
//! Three threads: the reader parses stdin frames (answering bad ones at once, handling `Cancel` and
//! `Shutdown` without waiting for the model), the generator runs up to `parallel` requests at once
//! (continuous batching, [`crate::generate::batch`]) taking new ones from a bounded queue between
//! steps, and the heartbeat thread proves life. All frames leave through one locked stdout, one
//! line each.
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbee_proto::frame::{decode, encode};
use rbee_proto::worker::{FromWorker, ToWorker};
use rbee_proto::{
    now_millis, ChatMessage, ErrorCode, RequestId, SamplingParams, UnixMillis, PROTOCOL_VERSION,
};

use crate::generate::batch::{Event, Job as Run, Scheduler};
use crate::generate::{Engine, GenerateError, Interrupt};

/// Where frames go: stdout in production, a buffer in tests.
pub type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

/// Write one frame as one line and flush; a closed stdout is ignored (the reader sees EOF).
pub fn send(sink: &Sink, msg: &FromWorker) {
    write(sink, msg, true);
}

/// Write one frame as one line, flushed now or (tokens) with the rest of its step's frames: one
/// write for every sequence's token instead of one each.
fn write(sink: &Sink, msg: &FromWorker, flush: bool) {
    let line = encode(msg);
    let mut out = sink.lock().unwrap_or_else(|p| p.into_inner());
    // A closed stdout means the agent is gone; the reader sees EOF and ends the process.
    let _ = writeln!(out, "{line}").and_then(|_| if flush { out.flush() } else { Ok(()) });
}

/// Send what a step left buffered.
fn flush(sink: &Sink) {
    let _ = sink.lock().unwrap_or_else(|p| p.into_inner()).flush();
}

/// What a request asks to continue.
enum Input {
    /// A completion prompt, as it is.
    Prompt(String),
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<ChatMessage>),
}

struct Job {
    id: RequestId,
    input: Input,
    params: SamplingParams,
    deadline: Option<UnixMillis>,
}

/// State shared by the reader, the generator and the heartbeat.
#[derive(Default)]
pub struct Shared {
    /// Running requests and their cancel flags.
    current: Mutex<HashMap<RequestId, Arc<AtomicBool>>>,
    cancelled_queued: Mutex<HashSet<RequestId>>,
    queued_ids: Mutex<HashSet<RequestId>>,
    /// Requests waiting for the generator.
    pub queued: AtomicU32,
    /// Requests generating now (slots in use, 0 to `parallel`).
    pub in_flight: AtomicU32,
    /// Text pieces sent since start.
    pub tokens_generated: AtomicU64,
    last_tps_bits: AtomicU64,
    /// Set once stdin ends or `Shutdown` arrives.
    pub shutdown: AtomicBool,
}

impl Shared {
    /// Decode speed of the last finished request.
    pub fn last_tokens_per_s(&self) -> f64 {
        f64::from_bits(self.last_tps_bits.load(Ordering::Relaxed))
    }
}

/// How the protocol loop behaves.
pub struct ServeOptions {
    /// Requests that may wait before new ones are answered `busy`.
    pub queue_depth: usize,
    /// Period of `Heartbeat` frames.
    pub heartbeat: Duration,
    /// Longest a generated token waits before it is sent: tokens of the steps in between leave
    /// together. A request's first text and its end always leave at once.
    pub stream_interval: Duration,
}

/// Read frames from `input` until EOF or `Shutdown`; hand generations to a thread that owns the
/// engine. Returns when everything has stopped.
pub fn serve(engine: Engine, input: impl BufRead + Send + 'static, sink: Sink, opts: ServeOptions) {
    let shared = Arc::new(Shared::default());
    let (tx, rx) = sync_channel::<Job>(opts.queue_depth.max(1));

    let hb = {
        let (shared, sink) = (shared.clone(), sink.clone());
        std::thread::spawn(move || heartbeat_loop(&shared, &sink, opts.heartbeat))
    };
    let gen = {
        let (shared, sink) = (shared.clone(), sink.clone());
        // The generator runs on a thread of rayon's pool: the candle ops that split their work
        // with rayon (norms, rotary embeddings, softmax) then run on it or beside it, instead
        // of waking a pool thread and sleeping until it is done, twice per op (with one thread
        // that was a fifth of a decode step, in futex and scheduler time).
        let every = opts.stream_interval;
        std::thread::spawn(move || {
            rayon::scope(|_| generate_loop(engine, rx, &shared, &sink, every))
        })
    };
    read_loop(input, &tx, &shared, &sink);
    shared.shutdown.store(true, Ordering::SeqCst);
    for flag in shared.current.lock().unwrap().values() {
        flag.store(true, Ordering::SeqCst);
    }
    drop(tx);
    let _ = gen.join();
    let _ = hb.join();
}

fn read_loop(input: impl BufRead, tx: &SyncSender<Job>, shared: &Shared, sink: &Sink) {
    for line in input.lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let msg = match decode::<ToWorker>(&line) {
            Ok(m) => m,
            Err(e) => {
                send(
                    sink,
                    &FromWorker::Error {
                        id: e.id,
                        code: ErrorCode::BadFrame,
                        message: e.message,
                    },
                );
                continue;
            }
        };
        match msg {
            ToWorker::Hello { protocol_version } if protocol_version != PROTOCOL_VERSION => {
                send(sink, &FromWorker::Error {
                    id: None,
                    code: ErrorCode::VersionMismatch,
                    message: format!("agent speaks protocol {protocol_version}, worker speaks {PROTOCOL_VERSION}"),
                });
                return;
            }
            ToWorker::Hello { .. } => {}
            ToWorker::Generate {
                id,
                prompt,
                params,
                deadline,
            } => enqueue(
                Job {
                    id,
                    input: Input::Prompt(prompt),
                    params,
                    deadline,
                },
                tx,
                shared,
                sink,
            ),
            ToWorker::Chat {
                id,
                messages,
                params,
                deadline,
            } => enqueue(
                Job {
                    id,
                    input: Input::Chat(messages),
                    params,
                    deadline,
                },
                tx,
                shared,
                sink,
            ),
            ToWorker::Cancel { id } => cancel(id, shared, sink),
            ToWorker::Shutdown => break,
        }
    }
}

/// Queue a job, or answer `busy` when the queue is full; parameters no sampler can honour are
/// refused first, naming the field (the same rule the agent applies).
fn enqueue(job: Job, tx: &SyncSender<Job>, shared: &Shared, sink: &Sink) {
    if let Err(e) = job.params.validate() {
        send(
            sink,
            &FromWorker::Error {
                id: Some(job.id),
                code: e.code,
                message: e.message,
            },
        );
        return;
    }
    shared.queued_ids.lock().unwrap().insert(job.id);
    shared.queued.fetch_add(1, Ordering::SeqCst);
    if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) = tx.try_send(job) {
        shared.queued.fetch_sub(1, Ordering::SeqCst);
        shared.queued_ids.lock().unwrap().remove(&job.id);
        send(
            sink,
            &FromWorker::Error {
                id: Some(job.id),
                code: ErrorCode::Busy,
                message: "worker queue is full; retry later".into(),
            },
        );
    }
}

/// Stop the running request `id`, or mark a queued one so it never starts.
fn cancel(id: RequestId, shared: &Shared, sink: &Sink) {
    let current = shared.current.lock().unwrap();
    match current.get(&id) {
        Some(flag) => flag.store(true, Ordering::SeqCst),
        _ if shared.queued_ids.lock().unwrap().contains(&id) => {
            shared.cancelled_queued.lock().unwrap().insert(id);
        }
        _ => send(
            sink,
            &FromWorker::Error {
                id: Some(id),
                code: ErrorCode::NotFound,
                message: format!("no request {id} is running or queued"),
            },
        ),
    }
}

/// Run queued jobs, up to the engine's `parallel` at once, until the queue closes and every
/// running one has ended. Token frames leave at most `every` after they were made (each write
/// wakes the agent and, through it, the client: at hundreds of tokens per second on a CPU node
/// those wake-ups take cores from the generation), a request's first text at once.
fn generate_loop(
    mut engine: Engine,
    rx: Receiver<Job>,
    shared: &Shared,
    sink: &Sink,
    every: Duration,
) {
    let tokenizer = engine.model.tokenizer.clone();
    let mut scheduler = Scheduler::new(&tokenizer, engine.chunk);
    // Requests that have sent text; a new one's first text is sent without waiting.
    let mut started = HashSet::new();
    let first = std::cell::Cell::new(false);
    let mut on = |e: Event<'_>| {
        match &e {
            Event::Text(id, _) => first.set(first.get() | started.insert(*id)),
            Event::Done(id, _) => {
                started.remove(id);
            }
        }
        on_event(e, shared, sink)
    };
    let mut sent = std::time::Instant::now();
    let mut open = true;
    loop {
        // New requests join between steps; with nothing running, wait for one.
        while open && scheduler.has_room(&engine) {
            let job = if scheduler.idle() {
                rx.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                rx.try_recv()
            };
            match job {
                Ok(job) => admit(&mut engine, &mut scheduler, job, shared, &mut on, sink),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if scheduler.idle() {
            if open {
                continue;
            }
            break;
        }
        scheduler.step(&mut engine, &mut on);
        if first.replace(false) || sent.elapsed() >= every {
            flush(sink);
            sent = std::time::Instant::now();
        }
        shared
            .in_flight
            .store(scheduler.active() as u32, Ordering::SeqCst);
    }
}

/// Take a job off the queue: refuse it (shutdown, cancelled while queued, a chat the model
/// cannot render) or start it in a slot.
fn admit(
    engine: &mut Engine,
    scheduler: &mut Scheduler<'_>,
    job: Job,
    shared: &Shared,
    on: &mut dyn FnMut(Event<'_>),
    sink: &Sink,
) {
    shared.queued.fetch_sub(1, Ordering::SeqCst);
    shared.queued_ids.lock().unwrap().remove(&job.id);
    let refusal = if shared.shutdown.load(Ordering::SeqCst) {
        Some((ErrorCode::ShuttingDown, "worker is stopping"))
    } else if shared.cancelled_queued.lock().unwrap().remove(&job.id) {
        Some((ErrorCode::Cancelled, "cancelled before it started"))
    } else {
        None
    };
    if let Some((code, message)) = refusal {
        let (id, message) = (Some(job.id), message.into());
        return send(sink, &FromWorker::Error { id, code, message });
    }
    let prompt = match &job.input {
        Input::Prompt(prompt) => engine.prompt_tokens(prompt),
        Input::Chat(messages) => engine
            .render_chat(messages)
            .and_then(|text| engine.prompt_tokens(&text)),
    };
    let prompt = match prompt {
        Ok(p) => p,
        Err(e) => return on(Event::Done(job.id, Err(e))),
    };
    let flag = Arc::new(AtomicBool::new(false));
    shared.current.lock().unwrap().insert(job.id, flag.clone());
    let deadline = job.deadline;
    let stop = move || -> Option<Interrupt> {
        if flag.load(Ordering::Relaxed) {
            return Some(Interrupt::Cancelled);
        }
        match deadline {
            Some(d) if now_millis() >= d => Some(Interrupt::DeadlineExceeded),
            _ => None,
        }
    };
    let run = Run {
        id: job.id,
        prompt,
        params: job.params,
        stop: Box::new(stop),
    };
    scheduler.admit(engine, run, on);
    shared
        .in_flight
        .store(scheduler.active() as u32, Ordering::SeqCst);
}

/// Turn the scheduler's events into frames: text as `Token`, the end as `Done` or `Error`.
fn on_event(event: Event<'_>, shared: &Shared, sink: &Sink) {
    let (id, result) = match event {
        Event::Text(id, text) => {
            shared.tokens_generated.fetch_add(1, Ordering::Relaxed);
            let text = text.to_string();
            return write(sink, &FromWorker::Token { id, text }, false);
        }
        Event::Done(id, result) => (id, result),
    };
    shared.current.lock().unwrap().remove(&id);
    let frame = match result {
        Ok((finish_reason, usage)) => {
            shared
                .last_tps_bits
                .store(usage.decode_tokens_per_s.to_bits(), Ordering::Relaxed);
            FromWorker::Done {
                id,
                finish_reason,
                usage,
            }
        }
        Err(e) => {
            let stopping = shared.shutdown.load(Ordering::SeqCst)
                && matches!(e, GenerateError::Interrupted(..));
            let (code, message) = if stopping {
                (ErrorCode::ShuttingDown, "worker is stopping".to_string())
            } else {
                (e.code(), e.to_string())
            };
            FromWorker::Error {
                id: Some(id),
                code,
                message,
            }
        }
    };
    send(sink, &frame);
}

fn heartbeat_loop(shared: &Shared, sink: &Sink, every: Duration) {
    let mut seq = 0u64;
    let tick = Duration::from_millis(50).min(every);
    // Wall-clock deadlines: on a loaded machine each sleep overshoots, and summing ticks made the
    // interval stretch until the agent took a healthy worker for a hung one.
    let mut next = std::time::Instant::now() + every;
    while !shared.shutdown.load(Ordering::SeqCst) {
        std::thread::sleep(tick);
        let now = std::time::Instant::now();
        if now < next {
            continue;
        }
        next = now + every;
        seq += 1;
        send(
            sink,
            &FromWorker::Heartbeat {
                seq,
                in_flight: shared.in_flight.load(Ordering::SeqCst),
                queued: shared.queued.load(Ordering::SeqCst),
                tokens_generated: shared.tokens_generated.load(Ordering::Relaxed),
                last_tokens_per_s: shared.last_tokens_per_s(),
                rss_bytes: rbee_host::proc::own_rss_bytes(),
            },
        );
    }
}
