//! A recipient's store (one subject per recipient, in `INTEROP_INBOX` or
//! the `INTEROP_INBOX_<i>` holding its partition) at its
//! count limit (`--inbox-max-per-recipient`): JetStream refuses the
//! message (`discard: new` per subject, docs/adr/0027) rather than drop the
//! oldest without a word. The publisher then
//! 1. makes room: removes the messages of that subject a device of the
//!    recipient has acked already ([`make_room`]: they were delivered, their
//!    senders have their `DELIVERED` receipts), and stores the message again;
//! 2. if no room can be made (everything in the store is undelivered), the
//!    store is full: a message's sender gets a `FAILED` receipt with code
//!    `RECIPIENT_STORE_FULL` ([`full_store_receipt`]); a receipt or a
//!    gateway notice into a full store is dropped, logged and counted (who
//!    would be told is the owner of the full store, who reads nothing).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::TryStreamExt;
use interop_proto::v1::{envelope, ReceiptStatus, RejectCode};

use crate::handling::Outgoing;
use crate::pipeline;
use crate::subjects::{DELIVERY_ACKED_PREFIX, STREAM_CURSORS};

/// What JetStream answers a publish into a subject at its count limit
/// (`discard_new_per_subject`; nats-server 2.9 and later, error code 10077).
pub const FULL: &str = "maximum messages per subject exceeded";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether `e` (or an error it wraps) is JetStream refusing a message for a
/// subject at its count limit.
pub fn is_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if is_full_message(&e.to_string()) {
            return true;
        }
        next = e.source();
    }
    false
}

/// Whether an error's text is JetStream's refusal at a subject's count limit.
pub fn is_full_message(text: &str) -> bool {
    text.contains(FULL)
}

/// Whether `subject` is a recipient's store.
pub fn is_store_subject(subject: &str) -> bool {
    store_key(subject).is_some()
}

fn store_key(subject: &str) -> Option<&str> {
    crate::subjects::store_subject_key(subject)
}

/// Subjects where [`make_room`] found nothing to remove, and when: it is
/// not asked again for them for [`NO_ROOM_FOR`], so a store that stays full
/// costs one refusal per message, not a cursor read and a purge each.
static NO_ROOM: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);
const NO_ROOM_FOR: Duration = Duration::from_secs(2);
const NO_ROOM_MAX: usize = 10_000;

/// Removes from the store subject `subject` every message at or before the
/// furthest cursor of the recipient's devices (`INTEROP_CURSORS`): the
/// messages a device took and acked (the rule `DELIVERED` and `EXPIRED`
/// receipts follow). One purge frees what was delivered since the store was
/// last full, so a full store costs one purge per that many messages, not
/// one per message. Returns how many were removed (0: all undelivered).
///
/// For a receipt or notice; a subject found without room is not looked at
/// again for 2 s (see `NO_ROOM`). A message from a sender uses
/// [`make_room_now`], which always looks: within those 2 s the recipient
/// may have acked, and refusing the message would be wrong.
pub async fn make_room(js: &jetstream::Context, subject: &str) -> Result<u64, BoxError> {
    make_room_with(js, subject, true).await
}

/// [`make_room`], looking at the cursors even if no room was found for this
/// subject a moment ago.
pub async fn make_room_now(js: &jetstream::Context, subject: &str) -> Result<u64, BoxError> {
    make_room_with(js, subject, false).await
}

async fn make_room_with(
    js: &jetstream::Context,
    subject: &str,
    remembered: bool,
) -> Result<u64, BoxError> {
    let Some(key) = store_key(subject) else {
        return Ok(0);
    };
    if remembered {
        let guard = NO_ROOM.lock().expect("the no-room cache is never poisoned");
        if let Some(at) = guard.as_ref().and_then(|m| m.get(subject)) {
            if at.elapsed() < NO_ROOM_FOR {
                return Ok(0);
            }
        }
    }
    let cursors = js.get_stream_no_info(STREAM_CURSORS).await?;
    let furthest = furthest_cursor(&cursors, subject, key).await?;
    let purged = if furthest == 0 {
        0
    } else {
        // The stream holding it, asked of the server: publishers know
        // subjects only, not how many streams hold the store (docs/adr/0032).
        let name = crate::inbox::stream_holding(js, subject).await?;
        let inbox = js.get_stream_no_info(name).await?;
        inbox
            .purge()
            .filter(subject)
            .sequence(furthest + 1)
            .await?
            .purged
    };
    let mut guard = NO_ROOM.lock().expect("the no-room cache is never poisoned");
    let map = guard.get_or_insert_with(HashMap::new);
    if purged == 0 {
        if map.len() >= NO_ROOM_MAX {
            map.retain(|_, at| at.elapsed() < NO_ROOM_FOR);
        }
        if map.len() < NO_ROOM_MAX {
            map.insert(subject.to_owned(), Instant::now());
        }
    } else {
        map.remove(subject);
    }
    Ok(purged)
}

/// The furthest any reader of the store `subject` (whose key is `key`) got:
/// the highest of its recipient's device cursors and of the cursor of the
/// provider partition it is in (provider sessions); 0 when none has read
/// it. Everything at or below it was delivered to someone who reads for
/// the recipient.
pub async fn furthest_cursor<I>(
    cursors: &jetstream::stream::Stream<I>,
    subject: &str,
    key: &str,
) -> Result<u64, BoxError> {
    let filter = format!("{DELIVERY_ACKED_PREFIX}.{key}.*");
    let mut subjects: Vec<String> = cursors
        .info_with_subjects(&filter)
        .await?
        .try_collect::<HashMap<String, usize>>()
        .await?
        .into_keys()
        .collect();
    if let Some((provider, partition)) = store_partition(subject) {
        subjects.push(crate::subjects::partition_cursor(provider, partition));
    }
    let mut furthest = 0u64;
    for cursor_subject in &subjects {
        match cursors
            .get_last_raw_message_by_subject(cursor_subject)
            .await
        {
            Ok(m) => {
                let cursor = std::str::from_utf8(&m.payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                furthest = furthest.max(cursor);
            }
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(furthest)
}

/// The provider and partition a store subject of the partitioned layout
/// names.
pub fn store_partition(subject: &str) -> Option<(&str, u32)> {
    let rest = subject
        .strip_prefix(crate::subjects::DELIVERY_QUEUED_PREFIX)?
        .strip_prefix('.')?;
    let mut tokens = rest.split('.');
    let (provider, partition, _key) = (tokens.next()?, tokens.next()?, tokens.next()?);
    if tokens.next().is_some() {
        return None;
    }
    Some((provider, partition.parse().ok()?))
}

/// What the sender of the message `out` (refused by a full store) is told:
/// a `FAILED` receipt with `RECIPIENT_STORE_FULL`. `None` when `out` is
/// no message from a sender — a receipt, a group notice, or a copy in its
/// sender's own store — or does not decode.
pub fn full_store_receipt(out: &Outgoing, limit: Option<i64>) -> Option<Outgoing> {
    let key = store_key(&out.subject)?;
    let pm = pipeline::decode(&out.payload).ok()?;
    let env = pm.envelope.as_ref()?;
    if pipeline::is_receipt(env)
        || pipeline::in_senders_store(env, key)
        || matches!(env.content, Some(envelope::Content::GroupChange(_)))
    {
        return None;
    }
    let detail = match limit {
        Some(n) => format!(
            "the recipient's store holds {n} undelivered messages, its limit; not stored (send again once they have read some)"
        ),
        None => "the recipient's store is full of undelivered messages; not stored (send again once they have read some)".to_owned(),
    };
    let original = interop_proto::v1::Envelope {
        content: None,
        ..env.clone()
    };
    Some(pipeline::receipt_to_sender(
        &original,
        ReceiptStatus::Failed,
        RejectCode::RecipientStoreFull,
        &detail,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subjects::delivery_queued;
    use bytes::Bytes;
    use prost::Message as _;

    fn out(subject: String, env: interop_proto::v1::Envelope) -> Outgoing {
        let pm = interop_proto::v1::PipelineMessage {
            envelope: Some(env),
            ..Default::default()
        };
        Outgoing {
            subject,
            msg_id: "m1".into(),
            payload: Bytes::from(pm.encode_to_vec()),
            trace: None,
        }
    }

    #[test]
    fn a_message_refused_by_a_full_store_becomes_a_failed_receipt_and_a_receipt_nothing() {
        let bob = crate::recipient_path("home:bob");
        let msg = interop_proto::v1::Envelope {
            message_id: "m1".into(),
            from: "signal:alice".into(),
            to: "home:bob".into(),
            content: Some(envelope::Content::Text(Default::default())),
            ..Default::default()
        };
        let r = full_store_receipt(&out(delivery_queued(&bob), msg.clone()), Some(3))
            .expect("the sender is told");
        assert_eq!(
            r.subject,
            delivery_queued(&crate::recipient_path("signal:alice"))
        );
        assert_eq!(r.msg_id, "receipt-RECEIPT_STATUS_FAILED-m1");
        let env = pipeline::decode(&r.payload).unwrap().envelope.unwrap();
        let Some(envelope::Content::Receipt(receipt)) = env.content else {
            panic!("a receipt")
        };
        assert_eq!(receipt.status(), ReceiptStatus::Failed);
        assert_eq!(receipt.code(), RejectCode::RecipientStoreFull);
        assert!(receipt.detail.contains('3'), "{}", receipt.detail);
        // A receipt, a group notice, a copy in the sender's own store: none.
        let receipt_env = pipeline::decode(&r.payload).unwrap().envelope.unwrap();
        assert!(full_store_receipt(&out(r.subject.clone(), receipt_env), None).is_none());
        let notice = interop_proto::v1::Envelope {
            content: Some(envelope::Content::GroupChange(Default::default())),
            ..msg.clone()
        };
        assert!(full_store_receipt(&out(delivery_queued(&bob), notice), None).is_none());
        let alice = crate::recipient_path("signal:alice");
        assert!(full_store_receipt(&out(delivery_queued(&alice), msg.clone()), None).is_none());
        // Not a store subject.
        assert!(
            full_store_receipt(&out("interop.v1.routing.quarantined".into(), msg), None).is_none()
        );
    }

    #[test]
    fn only_the_count_refusal_is_full() {
        assert!(is_full_message(
            "publish failed: maximum messages per subject exceeded (code 503, error code 10077)"
        ));
        assert!(!is_full_message("timed out: didn't receive ack in time"));
        assert!(is_store_subject(&delivery_queued("home.3.00ff")));
        assert_eq!(
            store_partition(&delivery_queued("home.3.00ff")),
            Some(("home", 3))
        );
        assert_eq!(store_partition("interop.v1.delivery.queued.00ff"), None);
        assert!(!is_store_subject("interop.v1.delivery.queued."));
        assert!(!is_store_subject("interop.v1.delivery.acked.00ff.phone"));
    }
}
