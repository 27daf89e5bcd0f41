//! One recipient device's session.
//!
//! Wire: the client sends `Hello{provider, token, user, device_id}` and gets
//! `Welcome{max_unacked}`; the server pushes `Deliver{delivery_tag,
//! envelope}` (the tag is the store sequence); the client answers
//! `Ack{delivery_tags}`. At most `MAX_UNACKED` deliveries are outstanding.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use axum::extract::ws::WebSocket;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use async_nats::jetstream::stream::LastRawMessageErrorKind;

use interop_bus::subjects::{delivery_acked, delivery_queued};
use interop_bus::{pipeline, recipient_key};
use interop_proto::limits::{MAX_DEVICE_ID_BYTES, MAX_FRAME_BYTES, MAX_UNACKED};
use interop_proto::v1::{
    client_frame, server_frame, Deliver, Envelope, ReceiptStatus, RejectCode, SenderInfo,
    ServerFrame, Welcome,
};
use interop_proto::Address;
use interop_service::ws::{self, close, Incoming, Outbound};

use crate::Shared;

fn valid_device_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DEVICE_ID_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

struct Session {
    provider: String,
    /// The credential the session authenticated with; revoking it closes
    /// the session.
    credential: String,
    user: Address,
    cursor_key: String,
    /// Last acked store sequence with nothing un-acked before it.
    cursor: u64,
    /// Delivered, not yet acked: sequence → the envelope (without content)
    /// if it needs a `delivered` receipt.
    unacked: BTreeMap<u64, Option<Envelope>>,
    /// Highest sequence delivered in this session.
    last_delivered: u64,
    /// The session's place among its provider's connections.
    _slot: interop_service::edge::ConnectionSlot,
}

pub(crate) async fn serve(
    socket: WebSocket,
    shared: Arc<Shared>,
    peer: interop_service::tls::Peer,
) {
    let (sink, mut stream) = socket.split();
    let (out, writer) = ws::spawn_writer(sink);
    if let Some(session) = hello(&mut stream, &out, &shared, &peer).await {
        let user = session.user.redacted().to_string();
        info!(%user, "Recipient connected to delivery.");
        shared.metrics.sessions.inc();
        if let Err(e) = deliver(session, &mut stream, &out, &shared).await {
            warn!(%user, error = %e, "Session ended by an error.");
            ws::push(
                &out,
                Outbound::Close(close::GOING_AWAY, "temporary server error; reconnect"),
            )
            .await;
        }
        shared.metrics.sessions.dec();
        debug!(%user, "Recipient disconnected from delivery.");
    }
    drop(out);
    writer.await.ok();
}

async fn hello(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Outbound>,
    shared: &Shared,
    peer: &interop_service::tls::Peer,
) -> Option<Session> {
    let (request_id, h) = ws::read_hello(stream, out, &shared.shutdown).await?;
    let admitted = crate::auth::admit(shared, peer, request_id, &h, out).await?;
    let credential = admitted.credential;
    if h.user.is_empty() {
        ws::refuse_hello(
            out,
            request_id,
            RejectCode::MissingField,
            "hello.user is required for delivery",
        )
        .await;
        return None;
    }
    let user = match Address::parse(&h.user) {
        Ok(u) => u,
        Err(e) => {
            ws::refuse_hello(
                out,
                request_id,
                RejectCode::InvalidAddress,
                &format!("user: {e}"),
            )
            .await;
            return None;
        }
    };
    if user.provider() != h.provider {
        ws::refuse_hello(
            out,
            request_id,
            RejectCode::SenderNotOwned,
            "user must be a user of the authenticated provider",
        )
        .await;
        return None;
    }
    let device = if h.device_id.is_empty() {
        "default".to_owned()
    } else {
        h.device_id
    };
    if !valid_device_id(&device) {
        ws::refuse_hello(
            out,
            request_id,
            RejectCode::MalformedFrame,
            "device_id must be 1-64 of [A-Za-z0-9_-]",
        )
        .await;
        return None;
    }
    let cursor_key = delivery_acked(&recipient_key(user.as_str()), &device);
    let cursor = match shared
        .cursors
        .get_last_raw_message_by_subject(&cursor_key)
        .await
    {
        Ok(m) => std::str::from_utf8(&m.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
        Err(e) => {
            warn!(error = %e, "Cannot read a delivery cursor.");
            ws::push(
                out,
                Outbound::frame(ws::rejected(
                    request_id,
                    "",
                    RejectCode::Unavailable,
                    "storage unavailable; retry",
                    1000,
                )),
            )
            .await;
            ws::push(
                out,
                Outbound::Close(close::GOING_AWAY, "storage unavailable"),
            )
            .await;
            return None;
        }
    };
    let welcome = ServerFrame {
        request_id,
        frame: Some(server_frame::Frame::Welcome(Welcome {
            session_id: uuid::Uuid::now_v7().to_string(),
            max_frame_bytes: MAX_FRAME_BYTES as u32,
            max_text_bytes: 0,
            max_ciphertext_bytes: 0,
            max_unacked: MAX_UNACKED as u32,
        })),
    };
    ws::push(out, Outbound::frame(welcome)).await;
    Some(Session {
        provider: h.provider,
        credential,
        user,
        cursor_key,
        cursor,
        unacked: BTreeMap::new(),
        last_delivered: cursor,
        _slot: admitted.slot,
    })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn deliver(
    mut s: Session,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Outbound>,
    shared: &Shared,
) -> Result<(), BoxError> {
    let deliver_policy = if s.cursor == 0 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: s.cursor + 1,
        }
    };
    let consumer = shared
        .inbox
        .create_consumer(pull::OrderedConfig {
            filter_subject: delivery_queued(&recipient_key(s.user.as_str())),
            deliver_policy,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut registry = shared.providers.clone();
    loop {
        let can_deliver = s.unacked.len() < MAX_UNACKED;
        tokio::select! {
            () = shared.shutdown.cancelled() => {
                ws::push(out, Outbound::Close(close::GOING_AWAY, "server shutting down")).await;
                return Ok(());
            }
            changed = registry.changed() => {
                if changed.is_err() || !registry.borrow().has_credential(&s.provider, &s.credential) {
                    info!(provider = %s.provider, credential = %s.credential, "Closing a session whose credential was revoked.");
                    ws::push(out, Outbound::Close(close::POLICY_VIOLATION, "credential revoked")).await;
                    return Ok(());
                }
            }
            msg = stream.next() => match ws::classify(msg) {
                Incoming::Frame(frame) => match frame.frame {
                    Some(client_frame::Frame::Ack(ack)) => on_ack(&mut s, &ack.delivery_tags, shared).await?,
                    _ => {
                        ws::push(out, Outbound::frame(ws::rejected(
                            frame.request_id,
                            "",
                            RejectCode::UnsupportedFrame,
                            "delivery accepts Ack frames only",
                            0,
                        ))).await;
                    }
                },
                Incoming::Reject(r) => { ws::push(out, Outbound::frame(r)).await; }
                Incoming::Close(code, reason) => {
                    ws::push(out, Outbound::Close(code, reason)).await;
                    return Ok(());
                }
                Incoming::End => return Ok(()),
                Incoming::Ignore => {}
            },
            next = messages.next(), if can_deliver => {
                let Some(next) = next else { return Err("store consumer ended".into()) };
                let msg = next?;
                let seq = msg.info()?.stream_sequence;
                let Ok(mut pm) = pipeline::decode(&msg.payload) else {
                    warn!(seq, "Skipping an undecodable stored message.");
                    s.unacked.insert(seq, None);
                    on_ack(&mut s, &[seq], shared).await?;
                    continue;
                };
                let Some(mut env) = pm.envelope.take() else { continue };
                let span = tracing::info_span!("deliver", otel.name = "delivery deliver", stream_seq = seq);
                interop_bus::trace::set_parent_from(&span, msg.headers.as_ref());
                span.in_scope(|| tracing::debug!(seq, "Delivering a message."));
                if env.accepted_at_ms > 0 {
                    let age_ms = interop_proto::now_ms().saturating_sub(env.accepted_at_ms).max(0);
                    shared.metrics.end_to_end_seconds.observe(age_ms as f64 / 1000.0);
                }
                shared.metrics.delivered.inc();
                env.sender_info = sender_info(shared, &env.from);
                let receipt_for = (!pipeline::is_receipt(&env)).then(|| Envelope {
                    content: None,
                    sender_info: None,
                    ..env.clone()
                });
                s.unacked.insert(seq, receipt_for);
                s.last_delivered = s.last_delivered.max(seq);
                let frame = ServerFrame {
                    request_id: 0,
                    frame: Some(server_frame::Frame::Deliver(Deliver {
                        delivery_tag: seq,
                        envelope: Some(env),
                        // Where routing filed it (requests, or the user's inbox).
                        inbox: pm.route.as_ref().map_or(0, |r| r.inbox),
                    })),
                };
                if out.send(Outbound::frame(frame)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Always filled: from the registry, or (a provider removed since) with
/// the provider id alone and encryption UNSPECIFIED.
fn sender_info(shared: &Shared, from: &str) -> Option<SenderInfo> {
    let provider = from.split(':').next().unwrap_or_default();
    let info = shared.providers.borrow().get(provider).map(|p| SenderInfo {
        provider: p.id.clone(),
        display_name: p.display_name.clone(),
        privacy_policy_url: p.privacy_policy_url.clone(),
        provider_encryption: p.encryption.as_proto() as i32,
    });
    Some(info.unwrap_or_else(|| SenderInfo {
        provider: provider.to_owned(),
        display_name: provider.to_owned(),
        ..Default::default()
    }))
}

async fn on_ack(s: &mut Session, tags: &[u64], shared: &Shared) -> Result<(), BoxError> {
    let mut receipts = Vec::new();
    for tag in tags {
        // Unknown tags (acked twice, or never delivered) are ignored.
        let Some(entry) = s.unacked.remove(tag) else {
            continue;
        };
        shared.metrics.acked.inc();
        if let Some(original) = entry {
            receipts.push(pipeline::receipt_to_sender(
                &original,
                ReceiptStatus::Delivered,
                RejectCode::Unspecified,
                "",
            ));
        }
    }
    for r in receipts {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", r.msg_id.as_str());
        interop_bus::trace::inject_current(&mut headers);
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(r.payload)
            .headers(headers);
        let ack = shared.js.send_publish(r.subject, publish).await?;
        shared.metrics.receipts.inc();
        tokio::spawn(async move {
            if let Err(e) = ack.await {
                warn!(error = %e, "A delivered receipt was not stored.");
            }
        });
    }
    let new_cursor = match s.unacked.keys().next() {
        Some(first) => first.saturating_sub(1).max(s.cursor),
        None => s.last_delivered,
    };
    if new_cursor > s.cursor {
        s.cursor = new_cursor;
        // Awaited: the cursor must be stored before more acks move it on.
        shared
            .js
            .publish(s.cursor_key.clone(), new_cursor.to_string().into())
            .await?
            .await?;
    }
    Ok(())
}
