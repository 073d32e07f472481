//! The session handshake: the first frame must be `Hello` with our protocol version; the agent
//! answers `Welcome`, or an error naming both versions and closes.
use std::net::SocketAddr;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rbee_proto::frame::{decode, encode};
use rbee_proto::session::{ClientMsg, ServerMsg};
use rbee_proto::{ErrorCode, PROTOCOL_VERSION};
use tokio_tungstenite::tungstenite::Message;

use super::auth::Ws;
use super::shared::Shared;

/// What the greeting knows of an authenticated connection.
pub(super) struct Greeting {
    /// The client's address.
    pub peer: SocketAddr,
    /// The token it presented (`node token`, `operator NAME`).
    pub token: String,
    /// When the handshake must be over.
    pub deadline: tokio::time::Instant,
}

/// Wait (until the deadline) for `Hello` and answer it. `Ok(true)` when the session may go on;
/// then `auth_ok` is in the audit log naming who the client says it is and the token it used,
/// and every later entry of the session names them too.
pub(super) async fn greet(
    sink: &mut SplitSink<Ws, Message>,
    source: &mut SplitStream<Ws>,
    g: Greeting,
    shared: &Shared,
) -> anyhow::Result<bool> {
    let Greeting {
        peer,
        token,
        deadline,
    } = g;
    let first = tokio::time::timeout_at(deadline, source.next()).await;
    let hello = match first {
        Ok(Some(Ok(Message::Text(t)))) => decode::<ClientMsg>(&t),
        _ => return Ok(false),
    };
    let (code, message) = match hello {
        Ok(ClientMsg::Hello {
            protocol_version,
            client,
            identity,
        }) if protocol_version == PROTOCOL_VERSION => {
            let said = match &identity {
                Some(id) => id.summary(),
                None => client,
            };
            let who = format!("{} with {token}", said_safely(&said));
            tracing::info!(%peer, %who, "session started");
            shared.audit.session_started(&peer.to_string(), who);
            shared.audit.record(
                "auth_ok",
                Some(peer.to_string()),
                None,
                "session authenticated",
            );
            sink.send(Message::text(encode(&ServerMsg::Welcome {
                protocol_version: PROTOCOL_VERSION,
                agent_version: env!("CARGO_PKG_VERSION").into(),
                node: shared.node.clone(),
            })))
            .await?;
            return Ok(true);
        }
        Ok(ClientMsg::Hello {
            protocol_version, ..
        }) => {
            let msg = format!("version mismatch: client speaks protocol {protocol_version}, agent speaks protocol {PROTOCOL_VERSION}");
            shared.metrics.error("version_mismatch");
            shared
                .audit
                .record("session_refused", Some(peer.to_string()), None, msg.clone());
            (ErrorCode::VersionMismatch, msg)
        }
        Ok(_) => (ErrorCode::BadFrame, "the first frame must be hello".into()),
        Err(e) => (ErrorCode::BadFrame, format!("bad hello: {}", e.message)),
    };
    let refusal = ServerMsg::Error {
        id: None,
        code,
        message,
    };
    sink.send(Message::text(encode(&refusal))).await?;
    let _ = sink.close().await;
    Ok(false)
}

/// Longest self-description of a client the agent records (every audit entry of the session
/// carries it).
const MAX_WHO_CHARS: usize = 200;

/// What a client says it is, as the agent's log and audit log record it: control characters made
/// visible (a newline in a host name would otherwise forge a line of `agent.log`, say naming
/// another operator) and cut to [`MAX_WHO_CHARS`], saying so.
fn said_safely(said: &str) -> String {
    let shown = rbee_proto::fmt::printable(said);
    match shown.char_indices().nth(MAX_WHO_CHARS) {
        Some((cut, _)) => format!("{}… (cut)", &shown[..cut]),
        None => shown.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_clients_self_description_cannot_forge_log_lines_or_grow_the_audit_log() {
        let forged = "eve@host\n2026-11-30T00:00:00Z  INFO session started who=alice";
        let safe = super::said_safely(forged);
        assert!(!safe.contains('\n') && safe.contains("\\x0a"), "{safe}");
        let long = super::said_safely(&"é".repeat(10_000));
        assert_eq!(
            long.chars().count(),
            super::MAX_WHO_CHARS + "… (cut)".chars().count()
        );
    }
}
