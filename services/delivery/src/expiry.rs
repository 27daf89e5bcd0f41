//! The expiry sweeper: when a message ages past the offline retention
//! (`--inbox-max-age-secs`) and no device of its recipient has acked it, the
//! sender gets an `EXPIRED` receipt.
//!
//! Every delivery instance runs it on one shared durable consumer
//! (`delivery-expiry`) over the whole store, so each stored message is
//! looked at by one instance; with several store streams
//! (`--inbox-partitions`, docs/adr/0032) each stream has its own consumer
//! of that name and its own sweeper (a message's sequence and its
//! recipient's cursors are of one stream). A message that is not due yet is handed back
//! with a delay until it is (`nak` with delay), so the consumer holds at most
//! `max_ack_pending` messages, the oldest, at a time. A due message is
//! checked against its recipient's device cursors (`INTEROP_CURSORS`): if no
//! cursor is at or past it, the `EXPIRED` receipt is published
//! (`Nats-Msg-Id` `receipt-EXPIRED-…`), and only after JetStream acked that
//! publish is the message acked: at least once, deduplicated. The store
//! keeps messages a grace period longer than the retention
//! ([`interop_bus::streams::inbox_grace`]) so the sweeper sees them before
//! JetStream deletes them; delivery sessions stop delivering a message once
//! it is past the retention, so a message ends either delivered or expired.
//!
//! The per-recipient count limit (`--inbox-max-per-recipient`) never
//! pushes a message out: a full store refuses new ones (docs/adr/0027).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use interop_bus::subjects::{CONSUMER_EXPIRY, DELIVERY_QUEUED_ALL};
use interop_bus::{pipeline, BusError};
use interop_proto::v1::{ReceiptStatus, RejectCode};

use crate::Shared;

/// Messages the sweeper holds at once (all not yet due, or being handled).
const MAX_IN_HAND: i64 = 1024;

pub(crate) async fn consumer(
    inbox: &jetstream::stream::Stream,
) -> Result<async_nats::jetstream::consumer::PullConsumer, BusError> {
    interop_bus::streams::create_consumer(
        inbox,
        pull::Config {
            durable_name: Some(CONSUMER_EXPIRY.to_owned()),
            description: Some("interop delivery expiry sweeper".to_owned()),
            filter_subject: DELIVERY_QUEUED_ALL.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            // A message is handed back until it is due: no delivery limit.
            max_deliver: -1,
            max_ack_pending: MAX_IN_HAND,
            ..Default::default()
        },
    )
    .await
}

/// Runs the sweeper until `shutdown`.
pub(crate) async fn run(
    shared: Arc<Shared>,
    consumer: async_nats::jetstream::consumer::PullConsumer,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        let messages = consumer
            .stream()
            .max_messages_per_batch(256)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "Expiry sweeper cannot pull; retrying.");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return,
                next = messages.next() => next,
            };
            match next {
                Some(Ok(msg)) => {
                    let kind = match handle(&shared, &msg).await {
                        Ok(kind) => kind,
                        Err(e) => {
                            warn!(error = %e, "Expiry check failed; will retry.");
                            AckKind::Nak(Some(Duration::from_secs(1)))
                        }
                    };
                    if let Err(e) = msg.ack_with(kind).await {
                        debug!(error = %e, "Expiry ack not sent; the message comes back.");
                    }
                }
                Some(Err(e)) => debug!(error = %e, "Expiry pull reported an error."),
                None => break,
            }
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn handle(shared: &Shared, msg: &jetstream::Message) -> Result<AckKind, BoxError> {
    let info = msg.info()?;
    let seq = info.stream_sequence;
    let stored_ms = crate::session::unix_ms(info.published.unix_timestamp_nanos());
    let retention_ms = i64::try_from(shared.retention.as_millis()).unwrap_or(i64::MAX);
    let due_ms = stored_ms.saturating_add(retention_ms);
    let now = interop_proto::now_ms();
    if now < due_ms {
        // Back when it is due (plus a little, for clock granularity).
        let wait = Duration::from_millis(u64::try_from(due_ms - now).unwrap_or(0) + 50);
        return Ok(AckKind::Nak(Some(wait)));
    }
    let Ok(pm) = pipeline::decode(&msg.payload) else {
        return Ok(AckKind::Ack);
    };
    let Some(env) = pm.envelope else {
        return Ok(AckKind::Ack);
    };
    let key = interop_bus::subjects::store_subject_key(msg.subject.as_str()).unwrap_or_default();
    // The same rule as for `DELIVERED` receipts.
    if !crate::session::needs_delivered_receipt(&env, key) {
        return Ok(AckKind::Ack);
    }
    // A device of the recipient, or the provider session reading its
    // partition, got past it.
    let furthest =
        interop_bus::store::furthest_cursor(&shared.cursors, msg.subject.as_str(), key).await?;
    if furthest >= seq {
        return Ok(AckKind::Ack);
    }
    let original = interop_proto::v1::Envelope {
        content: None,
        ..env
    };
    let r = pipeline::receipt_to_sender(
        &original,
        ReceiptStatus::Expired,
        RejectCode::Unspecified,
        "not delivered within the offline retention",
    );
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", r.msg_id.as_str());
    let publish = jetstream::message::PublishMessage::build()
        .payload(r.payload)
        .headers(headers);
    // Awaited: the input is acked only once the receipt is stored. Into
    // the sender's store only if it is not full of undelivered messages
    // (docs/adr/0027).
    let stored = match interop_bus::store::admit(&shared.js, &r.subject).await? {
        Some(_admitted) => shared
            .js
            .send_publish(r.subject.clone(), publish)
            .await?
            .await
            .map(|_| ())
            .map_err(BoxError::from),
        None => Err(Box::new(interop_bus::store::Full) as BoxError),
    };
    if let Err(e) = stored {
        if !interop_bus::store::is_full(&*e) {
            return Err(e);
        }
        // Counted again (their devices may have read meanwhile) twice
        // before it is dropped.
        if interop_bus::store::room(&shared.js, &r.subject).await? > 0 || info.delivered < 3 {
            return Ok(AckKind::Nak(Some(Duration::from_millis(200))));
        }
        warn!(seq, "An EXPIRED receipt was dropped: its recipient's store is full of undelivered messages.");
        return Ok(AckKind::Ack);
    }
    shared.metrics.expired.inc();
    debug!(seq, "A message expired undelivered; the sender was told.");
    Ok(AckKind::Ack)
}
