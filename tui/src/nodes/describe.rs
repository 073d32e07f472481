//! How a request is named in messages ("kill w3 failed: …"): the dashboard's status line, the
//! CLI's errors and the gateway's logs say it the same way.
use rbee_proto::session::Request;

use crate::fmt::short_model;

/// Short human name of a request, for error messages ("kill w3 failed: …").
pub fn describe(request: &Request) -> String {
    match request {
        Request::ListModels => "list models".into(),
        Request::Spawn(s) => format!("spawn {} on {}", short_model(&s.model), s.device),
        Request::Kill { worker } => format!("kill {worker}"),
        Request::Restart { worker } => format!("restart {worker}"),
        Request::ListWorkers => "list workers".into(),
        Request::Infer { worker, model, .. } | Request::Chat { worker, model, .. } => {
            format!(
                "infer on {}",
                worker
                    .as_deref()
                    .or(model.as_deref())
                    .unwrap_or("any worker")
            )
        }
        Request::Cancel { request } => format!("cancel request {request}"),
        Request::TailLog { worker, .. } => format!("log of {worker}"),
        Request::ReadLog { worker, .. } => match worker {
            Some(w) => format!("log of {w}"),
            None => "agent log".into(),
        },
        Request::Subscribe => "subscribe".into(),
        Request::Status => "status".into(),
        Request::Ping => "ping".into(),
        Request::Pull { model } => format!("pull {model}"),
        Request::Metrics => "metrics".into(),
    }
}
