//! One provider connection: `Hello` first, then pipelined frames.
//!
//! Frames are prepared concurrently (validation, one Redis round trip),
//! published in the order they arrived, and answered as their JetStream acks
//! come back. At most `MAX_IN_FLIGHT` frames are in progress (a
//! `Transaction` counts as its items); past that the connection is not
//! read, which pushes back on the client through TCP.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::ws::WebSocket;
use futures_util::stream::{FuturesOrdered, FuturesUnordered};
use futures_util::StreamExt;
use prost::Message as _;
use tokio::sync::mpsc;
use tracing::{debug, info};

use interop_edge::tls::Peer;
use interop_edge::ws::{self, close, Incoming, Outbound};
use interop_edge::Admitted;
use interop_proto::limits::{MAX_CIPHERTEXT_BYTES, MAX_FRAME_BYTES, MAX_TEXT_BYTES};
use interop_proto::v1::{server_frame, ServerFrame, Welcome};

use crate::send::{self, Prepared};
use crate::{transaction, Shared};

/// Frames of one connection in progress at once, a transaction's items
/// each counted (checked before a frame is read, so a transaction read
/// just under it may take the count up to 255 over).
pub const MAX_IN_FLIGHT: usize = 512;
/// Bytes of frames of one connection in progress at once (their encoded
/// size); past it the connection is not read until answers go out. With
/// [`MAX_IN_FLIGHT`] this bounds what a connection holds in memory.
pub const MAX_IN_FLIGHT_BYTES: usize = 4 * 1024 * 1024;

pub(crate) async fn serve(socket: WebSocket, shared: Arc<Shared>, peer: Peer) {
    shared.metrics.connections.inc();
    serve_inner(socket, &shared, &peer).await;
    shared.metrics.connections.dec();
}

async fn serve_inner(socket: WebSocket, shared: &Arc<Shared>, peer: &Peer) {
    let (sink, mut stream) = socket.split();
    let (out, writer) = ws::spawn_writer(sink);
    let Some(admitted) = hello(&mut stream, &out, shared, peer).await else {
        drop(out);
        writer.await.ok();
        return;
    };
    let (provider, credential) = (&admitted.provider, &admitted.credential);
    info!(%provider, %credential, "Provider connected to ingest.");
    frames(&mut stream, &out, shared, provider, credential).await;
    drop(out);
    writer.await.ok();
    debug!(%provider, "Provider disconnected from ingest.");
}

async fn send_out(shared: &Shared, out: &mpsc::Sender<Outbound>, frame: ServerFrame) {
    shared.metrics.count(&frame);
    ws::push(out, Outbound::frame(frame)).await;
}

/// Waits for a successful `Hello`; returns who it authenticated and its
/// connection slot.
async fn hello(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Outbound>,
    shared: &Shared,
    peer: &Peer,
) -> Option<Admitted> {
    let (request_id, h) = ws::read_hello(stream, out, &shared.shutdown).await?;
    let registry = shared.providers.borrow().clone();
    let admitted = match shared.edge.admit(&registry, peer, &h).await {
        Ok(a) => a,
        Err(refusal) => {
            debug!(code = ?refusal.code, "Hello refused.");
            shared
                .metrics
                .rejected
                .get_or_create(&crate::metrics::CodeLabel {
                    code: refusal.code.as_str_name(),
                })
                .inc();
            ws::refuse(out, request_id, &refusal).await;
            return None;
        }
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
            max_transaction_items: interop_proto::limits::MAX_TRANSACTION_ITEMS as u32,
            ..Welcome::default()
        })),
    };
    send_out(shared, out, welcome).await;
    Some(admitted)
}

/// What a frame in progress holds of its connection's budgets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Weight {
    /// Frames ([`MAX_IN_FLIGHT`]): a transaction's items.
    frames: usize,
    /// Encoded bytes ([`MAX_IN_FLIGHT_BYTES`]).
    bytes: usize,
}

/// What a connection has in progress, against its budgets.
#[derive(Debug, Default)]
struct InFlight(Weight);

impl InFlight {
    fn take(&mut self, w: Weight) {
        self.0.frames += w.frames;
        self.0.bytes += w.bytes;
    }

    fn release(&mut self, w: Weight) {
        self.0.frames -= w.frames;
        self.0.bytes -= w.bytes;
    }

    /// Whether another frame may be read.
    fn has_room(&self) -> bool {
        self.0.frames < MAX_IN_FLIGHT && self.0.bytes < MAX_IN_FLIGHT_BYTES
    }
}

/// A frame being prepared or stored, with its weight (for the budgets).
type PrepareFuture = Pin<Box<dyn Future<Output = (Weight, Prepared)> + Send>>;
type AnswerFuture = Pin<Box<dyn Future<Output = (Weight, ServerFrame)> + Send>>;

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
    let mut in_flight = InFlight::default();
    let mut close_with: Option<(u16, &'static str)> = None;
    loop {
        if !reading && preparing.is_empty() && storing.is_empty() {
            break;
        }
        let can_read = reading && in_flight.has_room();
        tokio::select! {
            biased;
            Some((weight, prepared)) = preparing.next(), if !preparing.is_empty() => {
                // Published here, in arrival order.
                match prepared {
                    Prepared::Answer(frame) => {
                        in_flight.release(weight);
                        send_out(shared, out, *frame).await;
                    }
                    Prepared::Publish(p) => {
                        let answer = send::publish(shared.clone(), p).await;
                        storing.push(Box::pin(async move { (weight, answer.await) }));
                    }
                    Prepared::Transaction { request_id, items } => {
                        let answer = transaction::publish(shared.clone(), request_id, items).await;
                        storing.push(Box::pin(async move { (weight, answer.await) }));
                    }
                }
            }
            Some((weight, answer)) = storing.next(), if !storing.is_empty() => {
                in_flight.release(weight);
                send_out(shared, out, answer).await;
            }
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
                        let weight = Weight {
                            frames: transaction::weight(&frame),
                            bytes: frame.encoded_len(),
                        };
                        in_flight.take(weight);
                        let prepare = transaction::prepare_frame(shared.clone(), provider.to_owned(), frame);
                        preparing.push_back(Box::pin(async move { (weight, prepare.await) }));
                    }
                    Incoming::Reject(r) => {
                        let weight = Weight { frames: 1, bytes: 0 };
                        in_flight.take(weight);
                        preparing.push_back(Box::pin(async move { (weight, Prepared::Answer(Box::new(r))) }));
                    }
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
        ws::push(out, Outbound::close(code, reason)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_frames_and_bytes_and_frees_them() {
        let mut f = InFlight::default();
        assert!(f.has_room());
        // A full transaction and then some lone frames fill the frame budget.
        let tx = Weight {
            frames: 256,
            bytes: 1000,
        };
        f.take(tx);
        assert!(f.has_room());
        f.take(Weight {
            frames: 255,
            bytes: 10,
        });
        assert!(f.has_room(), "511 of 512");
        let lone = Weight {
            frames: 1,
            bytes: 10,
        };
        f.take(lone);
        assert!(!f.has_room(), "512 of 512");
        f.release(tx);
        assert!(f.has_room());
        // Bytes alone stop reading too.
        f.take(Weight {
            frames: 1,
            bytes: MAX_IN_FLIGHT_BYTES,
        });
        assert!(!f.has_room());
    }
}
