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

/// Wait (until `deadline`) for `Hello` and answer it. `Ok(true)` when the session may go on.
pub(super) async fn greet(
    sink: &mut SplitSink<Ws, Message>,
    source: &mut SplitStream<Ws>,
    peer: SocketAddr,
    shared: &Shared,
    deadline: tokio::time::Instant,
) -> anyhow::Result<bool> {
    let first = tokio::time::timeout_at(deadline, source.next()).await;
    let hello = match first {
        Ok(Some(Ok(Message::Text(t)))) => decode::<ClientMsg>(&t),
        _ => return Ok(false),
    };
    let (code, message) = match hello {
        Ok(ClientMsg::Hello {
            protocol_version,
            client,
        }) if protocol_version == PROTOCOL_VERSION => {
            tracing::info!(%peer, %client, "session started");
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
