//! Publishing accepted sends to `interop.v1.ingest.accepted`, gathered
//! (docs/adr/0019).
//!
//! One task per ingest process publishes for every connection. While a
//! publish waits for JetStream's ack, the sends that arrive meanwhile wait
//! too, and leave together as one stream message (an `AcceptedBatch`,
//! header `Interop-Batch`) as soon as the ack is in. Nothing waits for a
//! timer: on a quiet gateway every send leaves alone, at once; under load a
//! batch holds what arrived during one store round trip. A batch that is
//! full ([`MAX_BATCH`] messages or [`MAX_BATCH_BYTES`]) leaves without
//! waiting, with at most [`MAX_IN_FLIGHT`] publishes unacknowledged.
//!
//! - A send gathered alone keeps the single shape (a bare `PipelineMessage`,
//!   `Nats-Msg-Id` = its message id), as does every re-send of a client
//!   message id (JetStream drops it if the first try was stored alone). A
//!   batch's `Nats-Msg-Id` is its own, so a re-send of a send stored in a
//!   batch is stored again; routing's store write is deduplicated by
//!   message id, so it is delivered once all the same.
//! - Publishes leave in the order the sends were handed over (each
//!   connection hands them over in arrival order), so per-connection order
//!   is kept.
//! - Each send is answered `Accepted` only after the stream message holding
//!   it was acknowledged: nothing acknowledged can be lost. A send not
//!   stored by its deadline is refused `UNAVAILABLE` (retryable; the re-send
//!   gets the same message id).
//! - Nothing is published while the NATS connection is down: the client
//!   would buffer it and write it at the reconnection, so a send refused
//!   meanwhile would be stored after all, ahead of the re-sends of the
//!   sends before it. The sends wait for the connection until their
//!   deadline, then are refused.

use std::collections::HashMap;

use async_nats::jetstream::{self, context::PublishAckFuture};
use async_nats::HeaderMap;
use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use interop_bus::pipeline::BATCH_HEADER;
use interop_bus::subjects::INGEST_ACCEPTED;
use interop_proto::v1::TraceContext;

use crate::metrics::IngestMetrics;

/// Messages in one batch at most.
pub const MAX_BATCH: usize = 64;
/// Payload bytes in one batch at most (a frame is at most 128 KiB, so any
/// one send fits; NATS's default message limit is 1 MiB).
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Publishes awaiting JetStream's ack at most; only full batches leave
/// while another is unacknowledged.
pub const MAX_IN_FLIGHT: usize = 8;
/// Sends waiting to be gathered at most; a connection handing over one more
/// waits (the client's own in-flight limit applies before that).
const QUEUE: usize = 4 * MAX_BATCH;

/// Whether the stream message holding a send was stored (else why not).
pub(crate) type Stored = Result<(), String>;

/// One send handed over for publishing.
pub(crate) struct Queued {
    pub(crate) message_id: String,
    /// The encoded `PipelineMessage`.
    pub(crate) payload: Bytes,
    /// A re-send of a client message id: published alone, deduplicated.
    pub(crate) resend: bool,
    /// The send's trace context (W3C fields).
    pub(crate) trace: HashMap<String, String>,
    /// When the send is refused if not stored.
    pub(crate) deadline: Instant,
    pub(crate) reply: oneshot::Sender<Stored>,
}

/// A handle to the publishing task; cheap to clone.
#[derive(Clone)]
pub(crate) struct Publisher {
    queue: mpsc::Sender<Queued>,
}

impl Publisher {
    /// Starts the task on `js`.
    pub(crate) fn start(js: jetstream::Context, metrics: IngestMetrics) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(js, rx, metrics));
        Self { queue }
    }

    /// Hands `q` over; `false` when the task is gone (shutting down).
    pub(crate) async fn hand_over(&self, q: Queued) -> bool {
        self.queue.send(q).await.is_ok()
    }
}

/// The next stream message to publish, taken from the front of `pending`:
/// a re-send alone, else the longest run of first sends that fits a batch.
fn take_next(pending: &mut Vec<Queued>) -> Vec<Queued> {
    let mut n = 0;
    let mut bytes = 0;
    for q in pending.iter() {
        if n > 0 && (q.resend || n == MAX_BATCH || bytes + q.payload.len() > MAX_BATCH_BYTES) {
            break;
        }
        n += 1;
        bytes += q.payload.len();
        if q.resend {
            break;
        }
    }
    pending.drain(..n).collect()
}

/// Whether the batch at the front of `pending` is full: [`MAX_BATCH`]
/// messages, [`MAX_BATCH_BYTES`], or up to a re-send (which leaves alone).
fn front_is_full(pending: &[Queued]) -> bool {
    let mut bytes = 0;
    for (i, q) in pending.iter().enumerate() {
        if q.resend {
            return true;
        }
        bytes += q.payload.len();
        if i + 1 == MAX_BATCH || bytes >= MAX_BATCH_BYTES {
            return true;
        }
    }
    false
}

/// How often the task looks at the connection again while it is down and
/// sends wait.
const RECHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// Answers the sends of `pending` whose deadline passed (their connection
/// refused them already) instead of publishing them: a send refused
/// `UNAVAILABLE` is not stored after all.
fn drop_expired(pending: &mut Vec<Queued>, reason: &str) {
    let now = Instant::now();
    if pending.iter().all(|q| q.deadline > now) {
        return;
    }
    let (expired, live): (Vec<Queued>, Vec<Queued>) = std::mem::take(pending)
        .into_iter()
        .partition(|q| q.deadline <= now);
    *pending = live;
    for q in expired {
        q.reply.send(Err(reason.to_owned())).ok();
    }
}

async fn run(js: jetstream::Context, mut rx: mpsc::Receiver<Queued>, metrics: IngestMetrics) {
    let mut pending: Vec<Queued> = Vec::new();
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    let client = js.client();
    loop {
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        drop_expired(
            &mut pending,
            if connected {
                "not stored in time"
            } else {
                "not connected to NATS"
            },
        );
        // Publish what waits when nothing is unacknowledged, or when it
        // is a full batch and the window has room.
        while connected
            && !pending.is_empty()
            && in_flight.len() < MAX_IN_FLIGHT
            && (in_flight.is_empty() || front_is_full(&pending))
        {
            let batch = take_next(&mut pending);
            metrics.batch_messages.observe(batch.len() as f64);
            let acked = publish(&js, batch).await;
            in_flight.push(acked);
        }
        if !open && pending.is_empty() && in_flight.is_empty() {
            return;
        }
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            q = rx.recv(), if open && pending.len() < QUEUE => match q {
                Some(q) => {
                    pending.push(q);
                    while pending.len() < QUEUE {
                        match rx.try_recv() {
                            Ok(q) => pending.push(q),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            () = tokio::time::sleep(RECHECK), if !connected && !pending.is_empty() => {}
        }
    }
}

/// `batch` as an `AcceptedBatch`, from the messages as they were encoded
/// (an embedded message is encoded like a bytes field: no second encoding).
fn encode_batch(batch: &[Queued]) -> Bytes {
    let mut buf = BytesMut::with_capacity(batch.iter().map(|q| q.payload.len() + 8).sum());
    for q in batch {
        prost::encoding::bytes::encode(1, &q.payload, &mut buf);
    }
    for q in batch {
        let trace = TraceContext {
            fields: q.trace.clone(),
        };
        prost::encoding::message::encode(2, &trace, &mut buf);
    }
    buf.freeze()
}

/// Writes one stream message holding `batch` (the caller calls this in
/// order) and returns the wait for its ack, which answers every send in it.
async fn publish(
    js: &jetstream::Context,
    batch: Vec<Queued>,
) -> impl std::future::Future<Output = ()> {
    // The latest deadline: each send's own is enforced where it waits for
    // its answer (`send::publish`).
    let deadline = batch
        .iter()
        .map(|q| q.deadline)
        .max()
        .unwrap_or_else(Instant::now);
    let mut headers = HeaderMap::new();
    let payload = if let [one] = batch.as_slice() {
        headers.insert("Nats-Msg-Id", one.message_id.as_str());
        for (k, v) in &one.trace {
            headers.insert(k.as_str(), v.as_str());
        }
        one.payload.clone()
    } else {
        headers.insert(
            "Nats-Msg-Id",
            format!("batch-{}", uuid::Uuid::now_v7()).as_str(),
        );
        headers.insert(BATCH_HEADER, batch.len().to_string().as_str());
        encode_batch(&batch)
    };
    let message = jetstream::message::PublishMessage::build()
        .payload(payload)
        .headers(headers);
    // Writing waits only when the client's buffer is full (NATS slow or
    // down); bounded by the batch's deadline.
    let sent: Result<PublishAckFuture, String> =
        match tokio::time::timeout_at(deadline, js.send_publish(INGEST_ACCEPTED, message)).await {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(e)) => Err(format!("cannot publish: {e}")),
            Err(_) => Err("the NATS connection did not take the publish in time".to_owned()),
        };
    async move {
        let stored: Stored = match sent {
            Ok(ack) => match tokio::time::timeout_at(deadline, ack).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("JetStream refused a publish: {e}")),
                Err(_) => Err("JetStream did not ack in time".to_owned()),
            },
            Err(e) => Err(e),
        };
        for q in batch {
            // The connection may have gone; its answer has nowhere to go.
            q.reply.send(stored.clone()).ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(bytes: usize, resend: bool) -> Queued {
        Queued {
            message_id: String::new(),
            payload: Bytes::from(vec![0u8; bytes]),
            resend,
            trace: HashMap::new(),
            deadline: Instant::now(),
            reply: oneshot::channel().0,
        }
    }

    fn sizes(pending: &mut Vec<Queued>) -> Vec<usize> {
        let mut out = Vec::new();
        while !pending.is_empty() {
            out.push(take_next(pending).len());
        }
        out
    }

    #[tokio::test]
    async fn a_batch_decodes_to_its_messages_and_traces_in_order() {
        use interop_proto::v1::{AcceptedBatch, Envelope, PipelineMessage};
        use prost::Message as _;
        let pms: Vec<PipelineMessage> = (0..3)
            .map(|i| PipelineMessage {
                envelope: Some(Envelope {
                    message_id: format!("m{i}"),
                    ..Default::default()
                }),
                sender_provider: "p".into(),
                ..Default::default()
            })
            .collect();
        let batch: Vec<Queued> = pms
            .iter()
            .enumerate()
            .map(|(i, pm)| {
                let mut q = queued(0, false);
                q.payload = Bytes::from(pm.encode_to_vec());
                q.trace = HashMap::from([("traceparent".to_owned(), format!("t{i}"))]);
                q
            })
            .collect();
        let decoded = AcceptedBatch::decode(encode_batch(&batch)).expect("decodes");
        assert_eq!(decoded.messages, pms);
        let traces: Vec<&str> = decoded
            .traces
            .iter()
            .map(|t| t.fields["traceparent"].as_str())
            .collect();
        assert_eq!(traces, ["t0", "t1", "t2"]);
    }

    #[tokio::test]
    async fn a_send_past_its_deadline_is_answered_not_published() {
        let (reply, mut answer) = oneshot::channel();
        let expired = Queued {
            reply,
            ..queued(1, false)
        };
        let mut live = queued(2, false);
        live.deadline = Instant::now() + std::time::Duration::from_secs(60);
        let mut pending = vec![expired, live];
        drop_expired(&mut pending, "not stored in time");
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].payload.len(), 2);
        assert!(matches!(answer.try_recv(), Ok(Err(_))));
    }

    #[tokio::test]
    async fn batches_stop_at_the_count_the_bytes_and_every_resend() {
        let mut p: Vec<Queued> = (0..MAX_BATCH + 1).map(|_| queued(10, false)).collect();
        assert!(front_is_full(&p));
        assert_eq!(sizes(&mut p), vec![MAX_BATCH, 1]);

        let mut p: Vec<Queued> = (0..MAX_BATCH).map(|_| queued(10, false)).collect();
        assert!(front_is_full(&p), "exactly MAX_BATCH is full");
        assert_eq!(sizes(&mut p), vec![MAX_BATCH]);
        let p: Vec<Queued> = (0..MAX_BATCH - 1).map(|_| queued(10, false)).collect();
        assert!(!front_is_full(&p), "one less waits for the ack");

        // Bytes: exactly the limit fits (and is full), one byte more does not.
        let half = MAX_BATCH_BYTES / 2;
        let mut p = vec![queued(half, false), queued(half, false)];
        assert!(front_is_full(&p));
        assert_eq!(sizes(&mut p), vec![2]);
        let p = vec![queued(half, false), queued(half - 1, false)];
        assert!(!front_is_full(&p));
        let mut p = vec![queued(half, false), queued(half + 1, false)];
        assert!(front_is_full(&p));
        assert_eq!(sizes(&mut p), vec![1, 1]);
        // A send larger than the limit still leaves, alone.
        let mut p = vec![queued(MAX_BATCH_BYTES + 1, false), queued(1, false)];
        assert_eq!(sizes(&mut p), vec![1, 1]);

        // A re-send leaves alone, in its place.
        let mut p = vec![
            queued(1, false),
            queued(1, false),
            queued(1, true),
            queued(1, false),
        ];
        assert!(front_is_full(&p));
        assert_eq!(sizes(&mut p), vec![2, 1, 1]);
    }
}
