//! Property tests of the wire protocol: every message of both links survives encode → decode
//! unchanged, and the decoders never panic, whatever bytes arrive.
//!
//! The `covers_*` functions match every variant without a wildcard: adding a message variant
//! without teaching these strategies about it fails to compile here.
use proptest::prelude::*;
use rbee_proto::frame::{decode, decode_line, encode, FrameError};
use rbee_proto::session::{
    AuditEntry, ClientIdentity, ClientMsg, Event, GpuProcess, GpuTelemetry, ModelEntry, NodeStatus,
    Reply, Request, ServerMsg, SpawnSpec, Telemetry, WorkerInfo,
};
use rbee_proto::worker::{FromWorker, ToWorker};
use rbee_proto::{
    ChatMessage, ErrorCode, FinishReason, ModelSummary, ProtoError, Role, SamplingParams, Usage,
    WorkerState, MAX_FRAME_BYTES,
};
use serde::{de::DeserializeOwned, Serialize};

// ---------------------------------------------------------------- leaves

/// Any finite f64, both signs, from subnormal to huge (JSON has no NaN or infinity).
fn f64_() -> impl Strategy<Value = f64> {
    prop_oneof![
        prop::num::f64::NORMAL,
        prop::num::f64::SUBNORMAL,
        prop::num::f64::ZERO,
        (0u32..10_000).prop_map(|n| n as f64 / 100.0),
    ]
}

fn f32_() -> impl Strategy<Value = f32> {
    prop_oneof![
        prop::num::f32::NORMAL,
        prop::num::f32::SUBNORMAL,
        prop::num::f32::ZERO,
        (0u32..1000).prop_map(|n| n as f32 / 1000.0),
    ]
}

/// Text with quotes, backslashes, control characters, non-ASCII and astral-plane characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_ ]{0,12}",
        any::<String>(),
        Just("\"\\\n\r\t\u{0}\u{7f}é漢🐝".to_string()),
    ]
}

fn opt<T: std::fmt::Debug + Clone>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<T>> {
    prop::option::of(s)
}

fn list<T: std::fmt::Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Vec<T>> {
    prop::collection::vec(s, 0..3)
}

fn worker_id() -> impl Strategy<Value = String> {
    prop_oneof!["w[0-9]{1,4}", text()]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::BadFrame),
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::VersionMismatch),
        Just(ErrorCode::Unauthorized),
        Just(ErrorCode::NotFound),
        Just(ErrorCode::Busy),
        Just(ErrorCode::Cancelled),
        Just(ErrorCode::DeadlineExceeded),
        Just(ErrorCode::PromptTooLong),
        Just(ErrorCode::ModelLoad),
        Just(ErrorCode::InsufficientMemory),
        Just(ErrorCode::InsufficientDisk),
        Just(ErrorCode::WorkerGone),
        Just(ErrorCode::ShuttingDown),
        Just(ErrorCode::Internal),
    ]
}

fn finish_reason() -> impl Strategy<Value = FinishReason> {
    prop_oneof![
        Just(FinishReason::Eos),
        Just(FinishReason::Length),
        Just(FinishReason::Stop),
        Just(FinishReason::ContextFull)
    ]
}

fn worker_state() -> impl Strategy<Value = WorkerState> {
    prop_oneof![
        Just(WorkerState::Starting),
        Just(WorkerState::Loading),
        Just(WorkerState::Ready),
        Just(WorkerState::Busy),
        Just(WorkerState::Stopping),
        Just(WorkerState::Exited),
        Just(WorkerState::Crashed),
        Just(WorkerState::BackingOff),
        Just(WorkerState::Failed),
    ]
}

prop_compose! {
    fn sampling()(
        temperature in f64_(), top_k in opt(any::<usize>()), top_p in opt(f64_()), repeat_penalty in f32_(),
        repeat_last_n in any::<usize>(), max_tokens in any::<u32>(), stop in list(text()), seed in any::<u64>(),
        ignore_eos in any::<bool>(),
    ) -> SamplingParams {
        SamplingParams { temperature, top_k, top_p, repeat_penalty, repeat_last_n, max_tokens, stop, seed, ignore_eos }
    }
}

prop_compose! {
    fn usage()(
        prompt_tokens in any::<u32>(), generated_tokens in any::<u32>(), time_to_first_token_ms in f64_(),
        prompt_tokens_per_s in f64_(), decode_tokens_per_s in f64_(), total_ms in f64_(),
    ) -> Usage {
        Usage { prompt_tokens, generated_tokens, time_to_first_token_ms, prompt_tokens_per_s, decode_tokens_per_s, total_ms }
    }
}

prop_compose! {
    fn model_summary()(name in text(), architecture in text(), context_length in any::<u32>(), memory_bytes in any::<u64>(), device in text()) -> ModelSummary {
        ModelSummary { name, architecture, context_length, memory_bytes, device, ..Default::default() }
    }
}

prop_compose! {
    fn spawn_spec()(model in text(), device in text(), threads in opt(any::<usize>())) -> SpawnSpec {
        SpawnSpec { model, device, threads, ..Default::default() }
    }
}

prop_compose! {
    fn model_entry()(name in text(), reference in text(), size_bytes in any::<u64>(), format in text()) -> ModelEntry {
        ModelEntry { name, reference, size_bytes, format }
    }
}

prop_compose! {
    fn worker_info()(
        (id, model, device, state, pid, restarts, last_exit) in
            (worker_id(), text(), text(), worker_state(), opt(any::<u32>()), any::<u32>(), opt(text())),
        (summary, heartbeat_age_ms, tokens_per_s, rss_bytes, vram_bytes, in_flight, detail) in
            (opt(model_summary()), opt(any::<u64>()), f64_(), any::<u64>(), any::<u64>(), any::<u32>(), text()),
    ) -> WorkerInfo {
        WorkerInfo { id, model, device, state, pid, restarts, last_exit, summary, heartbeat_age_ms, tokens_per_s, rss_bytes, vram_bytes, in_flight, detail }
    }
}

prop_compose! {
    fn gpu_process()(pid in any::<u32>(), used_bytes in any::<u64>(), worker in opt(worker_id())) -> GpuProcess {
        GpuProcess { pid, used_bytes, worker }
    }
}

prop_compose! {
    fn gpu()(
        (index, name, mem_total_bytes, mem_used_bytes) in (any::<u32>(), text(), any::<u64>(), any::<u64>()),
        (utilization_percent, temperature_c, power_watts, processes) in (any::<u32>(), any::<u32>(), f32_(), list(gpu_process())),
    ) -> GpuTelemetry {
        GpuTelemetry { index, name, mem_total_bytes, mem_used_bytes, utilization_percent, temperature_c, power_watts, processes }
    }
}

prop_compose! {
    fn telemetry()(
        at in any::<u64>(), cpu_percent in f32_(), mem_total_bytes in any::<u64>(), mem_used_bytes in any::<u64>(),
        disk_free_bytes in any::<u64>(), gpus in list(gpu()), gpu_status in text(),
    ) -> Telemetry {
        Telemetry { at, cpu_percent, mem_total_bytes, mem_used_bytes, disk_free_bytes, gpus, gpu_status, backends: vec![] }
    }
}

prop_compose! {
    fn node_status()(node in text(), agent_version in text(), telemetry in telemetry(), workers in list(worker_info())) -> NodeStatus {
        NodeStatus { node, agent_version, telemetry, workers }
    }
}

prop_compose! {
    fn audit_entry()(at in any::<u64>(), action in text(), peer in opt(text()), who in opt(text()), worker in opt(worker_id()), detail in text()) -> AuditEntry {
        AuditEntry { at, action, peer, who, worker, detail }
    }
}

prop_compose! {
    fn client_identity()(tool in text(), os_user in text(), host in text(), ssh_user in opt(text()), ssh_key in opt(text())) -> ClientIdentity {
        ClientIdentity { tool, os_user, host, ssh_user, ssh_key }
    }
}

// ---------------------------------------------------------------- session link

fn chat_message() -> impl Strategy<Value = ChatMessage> {
    (
        prop_oneof![Just(Role::System), Just(Role::User), Just(Role::Assistant)],
        text(),
    )
        .prop_map(|(role, content)| ChatMessage { role, content })
}

fn request() -> BoxedStrategy<Request> {
    prop_oneof![
        Just(Request::ListModels),
        spawn_spec().prop_map(Request::Spawn),
        worker_id().prop_map(|worker| Request::Kill { worker }),
        worker_id().prop_map(|worker| Request::Restart { worker }),
        Just(Request::ListWorkers),
        (opt(worker_id()), opt(text()), text(), sampling()).prop_map(
            |(worker, model, prompt, params)| Request::Infer {
                worker,
                model,
                prompt,
                params
            }
        ),
        (
            opt(worker_id()),
            opt(text()),
            prop::collection::vec(chat_message(), 0..4),
            sampling()
        )
            .prop_map(|(worker, model, messages, params)| Request::Chat {
                worker,
                model,
                messages,
                params
            }),
        any::<u64>().prop_map(|request| Request::Cancel { request }),
        (worker_id(), any::<usize>())
            .prop_map(|(worker, lines)| Request::TailLog { worker, lines }),
        (opt(worker_id()), any::<usize>(), opt(any::<u64>())).prop_map(|(worker, lines, after)| {
            Request::ReadLog {
                worker,
                lines,
                after,
            }
        }),
        Just(Request::Subscribe),
        Just(Request::Status),
        Just(Request::Ping),
        text().prop_map(|model| Request::Pull { model }),
        Just(Request::Metrics),
    ]
    .boxed()
}

fn client_msg() -> BoxedStrategy<ClientMsg> {
    prop_oneof![
        (any::<u32>(), text(), opt(client_identity())).prop_map(
            |(protocol_version, client, identity)| ClientMsg::Hello {
                protocol_version,
                client,
                identity
            }
        ),
        (
            any::<u64>(),
            opt(any::<u64>()),
            opt(any::<u64>()),
            request()
        )
            .prop_map(|(id, deadline, timeout_ms, body)| ClientMsg::Request {
                id,
                deadline,
                timeout_ms,
                body
            }),
    ]
    .boxed()
}

fn reply() -> BoxedStrategy<Reply> {
    prop_oneof![
        list(model_entry()).prop_map(|models| Reply::Models { models }),
        worker_info().prop_map(|worker| Reply::Spawned { worker }),
        worker_id().prop_map(|worker| Reply::Killed { worker }),
        worker_id().prop_map(|worker| Reply::Restarted { worker }),
        list(worker_info()).prop_map(|workers| Reply::Workers { workers }),
        (worker_id(), finish_reason(), usage()).prop_map(|(worker, finish_reason, usage)| {
            Reply::InferDone {
                worker,
                finish_reason,
                usage,
            }
        }),
        any::<u64>().prop_map(|request| Reply::Cancelled { request }),
        (worker_id(), list(text())).prop_map(|(worker, lines)| Reply::Log { worker, lines }),
        (list(text()), any::<u64>(), any::<u64>()).prop_map(|(lines, next, skipped)| {
            Reply::LogLines {
                lines,
                next,
                skipped,
            }
        }),
        Just(Reply::Subscribed),
        node_status().prop_map(|status| Reply::Status { status }),
        any::<u64>().prop_map(|agent_time| Reply::Pong { agent_time }),
        (text(), text(), any::<u64>()).prop_map(|(model, path, downloaded_bytes)| Reply::Pulled {
            model,
            path,
            downloaded_bytes
        }),
        text().prop_map(|text| Reply::Metrics { text }),
    ]
    .boxed()
}

fn event() -> BoxedStrategy<Event> {
    prop_oneof![
        worker_info().prop_map(|worker| Event::WorkerState { worker }),
        (worker_id(), model_summary(), any::<u64>()).prop_map(
            |(worker, model, spawn_to_ready_ms)| Event::WorkerReady {
                worker,
                model,
                spawn_to_ready_ms
            }
        ),
        (worker_id(), f64_(), any::<u64>(), any::<u32>()).prop_map(
            |(worker, tokens_per_s, rss_bytes, in_flight)| Event::Heartbeat {
                worker,
                tokens_per_s,
                rss_bytes,
                in_flight
            }
        ),
        telemetry().prop_map(|telemetry| Event::Telemetry { telemetry }),
        audit_entry().prop_map(|entry| Event::Audit { entry }),
        (worker_id(), text()).prop_map(|(worker, line)| Event::Log { worker, line }),
        (text(), text(), any::<u64>(), any::<u64>()).prop_map(
            |(model, file, downloaded_bytes, total_bytes)| {
                Event::PullProgress {
                    model,
                    file,
                    downloaded_bytes,
                    total_bytes,
                }
            }
        ),
    ]
    .boxed()
}

fn server_msg() -> BoxedStrategy<ServerMsg> {
    prop_oneof![
        (any::<u32>(), text(), text()).prop_map(|(protocol_version, agent_version, node)| {
            ServerMsg::Welcome {
                protocol_version,
                agent_version,
                node,
            }
        }),
        (any::<u64>(), reply()).prop_map(|(id, body)| ServerMsg::Reply { id, body }),
        (any::<u64>(), text()).prop_map(|(id, text)| ServerMsg::Token { id, text }),
        (opt(any::<u64>()), error_code(), text())
            .prop_map(|(id, code, message)| ServerMsg::Error { id, code, message }),
        event().prop_map(|event| ServerMsg::Event { event }),
    ]
    .boxed()
}

// ---------------------------------------------------------------- worker link

fn to_worker() -> BoxedStrategy<ToWorker> {
    prop_oneof![
        any::<u32>().prop_map(|protocol_version| ToWorker::Hello { protocol_version }),
        (any::<u64>(), text(), sampling(), opt(any::<u64>())).prop_map(
            |(id, prompt, params, deadline)| ToWorker::Generate {
                id,
                prompt,
                params,
                deadline
            }
        ),
        (
            any::<u64>(),
            prop::collection::vec(chat_message(), 0..4),
            sampling(),
            opt(any::<u64>())
        )
            .prop_map(|(id, messages, params, deadline)| ToWorker::Chat {
                id,
                messages,
                params,
                deadline
            }),
        any::<u64>().prop_map(|id| ToWorker::Cancel { id }),
        Just(ToWorker::Shutdown),
    ]
    .boxed()
}

fn from_worker() -> BoxedStrategy<FromWorker> {
    prop_oneof![
        (any::<u32>(), any::<u32>()).prop_map(|(protocol_version, pid)| FromWorker::Hello {
            protocol_version,
            pid
        }),
        (text(), f32_()).prop_map(|(stage, progress)| FromWorker::Loading { stage, progress }),
        model_summary().prop_map(|model| FromWorker::Ready { model }),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            f64_(),
            any::<u64>()
        )
            .prop_map(
                |(seq, in_flight, queued, tokens_generated, last_tokens_per_s, rss_bytes)| {
                    FromWorker::Heartbeat {
                        seq,
                        in_flight,
                        queued,
                        tokens_generated,
                        last_tokens_per_s,
                        rss_bytes,
                    }
                }
            ),
        (any::<u64>(), text()).prop_map(|(id, text)| FromWorker::Token { id, text }),
        (any::<u64>(), finish_reason(), usage()).prop_map(|(id, finish_reason, usage)| {
            FromWorker::Done {
                id,
                finish_reason,
                usage,
            }
        }),
        (opt(any::<u64>()), error_code(), text())
            .prop_map(|(id, code, message)| FromWorker::Error { id, code, message }),
    ]
    .boxed()
}

// ---------------------------------------------------------------- exhaustiveness guards

#[allow(dead_code)]
fn covers_session(c: &ClientMsg, r: &Request, s: &ServerMsg, p: &Reply, e: &Event) {
    match c {
        ClientMsg::Hello { .. } | ClientMsg::Request { .. } => {}
    }
    match r {
        Request::ListModels
        | Request::Spawn(_)
        | Request::Kill { .. }
        | Request::Restart { .. }
        | Request::ListWorkers
        | Request::Infer { .. }
        | Request::Chat { .. }
        | Request::Cancel { .. }
        | Request::TailLog { .. }
        | Request::ReadLog { .. }
        | Request::Subscribe
        | Request::Status
        | Request::Ping
        | Request::Pull { .. }
        | Request::Metrics => {}
    }
    match s {
        ServerMsg::Welcome { .. }
        | ServerMsg::Reply { .. }
        | ServerMsg::Token { .. }
        | ServerMsg::Error { .. }
        | ServerMsg::Event { .. } => {}
    }
    match p {
        Reply::Models { .. }
        | Reply::Spawned { .. }
        | Reply::Killed { .. }
        | Reply::Restarted { .. }
        | Reply::Workers { .. }
        | Reply::InferDone { .. }
        | Reply::Cancelled { .. }
        | Reply::Log { .. }
        | Reply::LogLines { .. }
        | Reply::Subscribed
        | Reply::Status { .. }
        | Reply::Pong { .. }
        | Reply::Pulled { .. }
        | Reply::Metrics { .. } => {}
    }
    match e {
        Event::WorkerState { .. }
        | Event::WorkerReady { .. }
        | Event::Heartbeat { .. }
        | Event::Telemetry { .. }
        | Event::Audit { .. }
        | Event::Log { .. }
        | Event::PullProgress { .. } => {}
    }
}

#[allow(dead_code)]
fn covers_worker(t: &ToWorker, f: &FromWorker, c: ErrorCode) {
    match t {
        ToWorker::Hello { .. }
        | ToWorker::Generate { .. }
        | ToWorker::Chat { .. }
        | ToWorker::Cancel { .. }
        | ToWorker::Shutdown => {}
    }
    match f {
        FromWorker::Hello { .. }
        | FromWorker::Loading { .. }
        | FromWorker::Ready { .. }
        | FromWorker::Heartbeat { .. }
        | FromWorker::Token { .. }
        | FromWorker::Done { .. }
        | FromWorker::Error { .. } => {}
    }
    match c {
        ErrorCode::BadFrame
        | ErrorCode::BadRequest
        | ErrorCode::VersionMismatch
        | ErrorCode::Unauthorized
        | ErrorCode::NotFound
        | ErrorCode::Busy
        | ErrorCode::Cancelled
        | ErrorCode::DeadlineExceeded
        | ErrorCode::PromptTooLong
        | ErrorCode::ModelLoad
        | ErrorCode::InsufficientMemory
        | ErrorCode::InsufficientDisk
        | ErrorCode::WorkerGone
        | ErrorCode::ShuttingDown
        | ErrorCode::Internal => {}
    }
}

// ---------------------------------------------------------------- properties

/// encode → decode gives the same value, and the frame is one line.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    msg: &T,
) -> Result<(), TestCaseError> {
    let frame = encode(msg);
    prop_assert!(!frame.contains('\n'), "a frame must be one line: {frame}");
    let back: T = decode(&frame).map_err(|e| TestCaseError::fail(format!("{e} for {frame}")))?;
    prop_assert_eq!(&back, msg);
    // And as a worker stdout line, with the newline cut off as the agent does.
    let back: T = decode_line(frame.as_bytes())
        .map_err(|e| TestCaseError::fail(format!("{e} for {frame}")))?;
    prop_assert_eq!(&back, msg);
    Ok(())
}

/// A decode error never panics, and the id it names is the frame's own.
fn check_error(text: &str, r: Result<impl Sized, FrameError>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        if let Some(id) = e.id {
            let v: serde_json::Value =
                serde_json::from_str(text).expect("an id is only recovered from JSON");
            prop_assert_eq!(v.get("id").and_then(|v| v.as_u64()), Some(id));
        }
        prop_assert!(e.message.len() <= rbee_proto::frame::MAX_ERROR_MESSAGE_BYTES + 64);
    }
    Ok(())
}

fn decode_everything(text: &str) -> Result<(), TestCaseError> {
    check_error(text, decode::<ClientMsg>(text))?;
    check_error(text, decode::<ServerMsg>(text))?;
    check_error(text, decode::<ToWorker>(text))?;
    check_error(text, decode::<FromWorker>(text))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn client_msg_round_trips(m in client_msg()) { round_trip(&m)?; }

    #[test]
    fn server_msg_round_trips(m in server_msg()) { round_trip(&m)?; }

    #[test]
    fn to_worker_round_trips(m in to_worker()) { round_trip(&m)?; }

    #[test]
    fn from_worker_round_trips(m in from_worker()) { round_trip(&m)?; }

    #[test]
    fn proto_error_round_trips(code in error_code(), message in text()) {
        round_trip(&ProtoError::new(code, message))?;
    }

    #[test]
    fn decode_never_panics_on_arbitrary_strings(s in any::<String>()) { decode_everything(&s)?; }

    #[test]
    fn decode_never_panics_on_json_like_strings(s in r#"[{}\[\]":,0-9a-z_ .\\-]{0,64}"#) { decode_everything(&s)?; }

    #[test]
    fn decode_line_never_panics_on_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&b).into_owned();
        check_error(&text, decode_line::<FromWorker>(&b))?;
        check_error(&text, decode_line::<ToWorker>(&b))?;
    }

    /// A frame cut short anywhere is refused, never half-applied.
    #[test]
    fn truncated_frames_are_refused(m in server_msg(), cut in any::<prop::sample::Index>()) {
        let frame = encode(&m);
        let mut at = cut.index(frame.len());
        while !frame.is_char_boundary(at) { at -= 1; }
        prop_assert!(decode::<ServerMsg>(&frame[..at]).is_err());
    }

    /// A frame with one byte changed never panics the decoder; the id it may name is the frame's.
    #[test]
    fn mutated_frames_never_panic(m in client_msg(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = encode(&m).into_bytes();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        decode_everything(&text)?;
    }

    /// A request the agent cannot understand is still answered under its own id.
    #[test]
    fn unknown_ops_keep_their_id(id in any::<u64>(), op in "[a-z_]{1,20}") {
        prop_assume!(!["list_models", "spawn", "kill", "restart", "list_workers", "infer", "cancel", "tail_log", "subscribe", "status", "ping", "pull"].contains(&op.as_str()));
        let e = decode::<ClientMsg>(&format!(r#"{{"type":"request","id":{id},"op":"{op}"}}"#)).unwrap_err();
        prop_assert_eq!(e.id, Some(id));
        prop_assert!(e.message.contains(&op));
    }
}

#[test]
fn frames_over_the_limit_are_refused_before_parsing() {
    let text = format!(
        r#"{{"type":"token","id":1,"text":"{}"}}"#,
        "a".repeat(MAX_FRAME_BYTES)
    );
    let e = decode::<FromWorker>(&text).unwrap_err();
    assert!(e.message.contains("exceeds the limit"), "{}", e.message);
    let e = decode_line::<FromWorker>(text.as_bytes()).unwrap_err();
    assert!(e.message.contains("exceeds the limit"), "{}", e.message);
    // Just under the limit is fine.
    let text = format!(
        r#"{{"type":"token","id":1,"text":"{}"}}"#,
        "a".repeat(MAX_FRAME_BYTES - 40)
    );
    assert!(decode::<FromWorker>(&text).is_ok());
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(decode::<ClientMsg>(&text)
        .unwrap_err()
        .message
        .starts_with("not JSON"));
    let text = format!(
        r#"{{"type":"request","id":3,"op":"ping","x":{}{}}}"#,
        "{\"a\":".repeat(50_000),
        "}".repeat(50_000)
    );
    assert!(decode::<ClientMsg>(&text).is_err());
}
