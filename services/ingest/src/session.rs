//! One provider connection: `Hello` first, then pipelined frames.
//!
//! Frames are prepared concurrently (validation, one Redis round trip),
//! published in the order they arrived, and answered as their JetStream acks
//! come back. At most `MAX_IN_FLIGHT` frames are in progress; past that the
//! connection is not read, which pushes back on the client through TCP.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::ws::WebSocket;
use futures_util::stream::{FuturesOrdered, FuturesUnordered};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info};

use interop_proto::limits::{MAX_CIPHERTEXT_BYTES, MAX_FRAME_BYTES, MAX_TEXT_BYTES};
use interop_proto::v1::{server_frame, RejectCode, ServerFrame, Welcome};
use interop_service::ws::{self, close, Incoming, Outbound};

use crate::send::{self, Prepared};
use crate::Shared;

/// Frames of one connection in progress at once.
pub const MAX_IN_FLIGHT: usize = 512;

pub(crate) async fn serve(socket: WebSocket, shared: Arc<Shared>) {
    shared.metrics.connections.inc();
    serve_inner(socket, &shared).await;
    shared.metrics.connections.dec();
}

async fn serve_inner(socket: WebSocket, shared: &Arc<Shared>) {
    let (sink, mut stream) = socket.split();
    let (out, writer) = ws::spawn_writer(sink);
    let Some((provider, credential)) = hello(&mut stream, &out, shared).await else {
        drop(out);
        writer.await.ok();
        return;
    };
    info!(%provider, %credential, "Provider connected to ingest.");
    frames(&mut stream, &out, shared, &provider, &credential).await;
    drop(out);
    writer.await.ok();
    debug!(%provider, "Provider disconnected from ingest.");
}

async fn send_out(shared: &Shared, out: &mpsc::Sender<Outbound>, frame: ServerFrame) {
    shared.metrics.count(&frame);
    ws::push(out, Outbound::frame(frame)).await;
}

/// Waits for a successful `Hello`; returns the provider id.
async fn hello(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Outbound>,
    shared: &Shared,
) -> Option<(String, String)> {
    let (request_id, h) = ws::read_hello(stream, out, &shared.shutdown).await?;
    let credential = shared
        .providers
        .borrow()
        .authenticate_credential(&h.provider, &h.token)
        .map(|(_, credential)| credential);
    let Some(credential) = credential else {
        debug!("Authentication failed.");
        ws::refuse_hello(
            out,
            request_id,
            RejectCode::AuthFailed,
            "unknown provider or wrong token",
        )
        .await;
        return None;
    };
    let welcome = ServerFrame {
        request_id,
        frame: Some(server_frame::Frame::Welcome(Welcome {
            session_id: uuid::Uuid::now_v7().to_string(),
            max_frame_bytes: MAX_FRAME_BYTES as u32,
            max_text_bytes: MAX_TEXT_BYTES as u32,
            max_ciphertext_bytes: MAX_CIPHERTEXT_BYTES as u32,
            max_unacked: 0,
            max_group_members: interop_proto::limits::MAX_GROUP_MEMBERS as u32,
        })),
    };
    send_out(shared, out, welcome).await;
    Some((h.provider, credential))
}

type PrepareFuture = Pin<Box<dyn Future<Output = Prepared> + Send>>;
type AnswerFuture = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// Serves frames after `Hello` until the peer leaves or shutdown.
async fn frames(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Outbound>,
    shared: &Arc<Shared>,
    provider: &str,
    credential: &str,
) {
    let mut registry = shared.providers.clone();
    let mut preparing: FuturesOrdered<PrepareFuture> = FuturesOrdered::new();
    let mut storing: FuturesUnordered<AnswerFuture> = FuturesUnordered::new();
    let mut reading = true;
    let mut close_with: Option<(u16, &'static str)> = None;
    loop {
        if !reading && preparing.is_empty() && storing.is_empty() {
            break;
        }
        let can_read = reading && preparing.len() + storing.len() < MAX_IN_FLIGHT;
        tokio::select! {
            biased;
            Some(prepared) = preparing.next(), if !preparing.is_empty() => {
                // Published here, in arrival order.
                match prepared {
                    Prepared::Answer(frame) => send_out(shared, out, *frame).await,
                    Prepared::Publish(p) => {
                        let answer = send::publish(shared.clone(), p).await;
                        storing.push(Box::pin(answer));
                    }
                }
            }
            Some(answer) = storing.next(), if !storing.is_empty() => send_out(shared, out, answer).await,
            () = shared.shutdown.cancelled(), if reading => {
                reading = false;
                close_with = Some((close::GOING_AWAY, "server shutting down"));
            }
            changed = registry.changed(), if reading => {
                let revoked = changed.is_err() || !registry.borrow().has_credential(provider, credential);
                if revoked {
                    info!(%provider, %credential, "Closing a connection whose credential was revoked.");
                    reading = false;
                    close_with = Some((close::POLICY_VIOLATION, "credential revoked"));
                }
            }
            msg = stream.next(), if can_read => {
                match ws::classify(msg) {
                    Incoming::Frame(frame) => {
                        preparing.push_back(Box::pin(send::prepare(shared.clone(), provider.to_owned(), frame)));
                    }
                    Incoming::Reject(r) => preparing.push_back(Box::pin(async move { Prepared::Answer(Box::new(r)) })),
                    Incoming::Close(code, reason) => {
                        reading = false;
                        close_with = Some((code, reason));
                    }
                    Incoming::End => reading = false,
                    Incoming::Ignore => {}
                }
            }
        }
    }
    if let Some((code, reason)) = close_with {
        ws::push(out, Outbound::Close(code, reason)).await;
    }
}
