//! A recipient's store (one subject per recipient, in `INTEROP_INBOX` or
//! the `INTEROP_INBOX_<i>` holding its partition) holds at most its count
//! limit (`--inbox-max-per-recipient`, the stream's per-subject limit);
//! past it JetStream removes the subject's **oldest** message on each write
//! (`discard: old`), a removal it does in place for about 0.06 ms
//! (docs/adr/0027, "Decision, amended"). That oldest must be a message a
//! device already took, so every publisher into a store first asks
//! [`admit`]:
//! 1. the store's **undelivered** messages (those after the furthest cursor
//!    of the recipient's devices) plus this process's own unacknowledged
//!    publishes into it are counted, at most every [`budget_max`]
//!    publishes per store and process;
//! 2. below [`undelivered_limit`] (the limit less an eighth, [`headroom`])
//!    the publish goes ahead; the headroom covers other processes
//!    publishing into the same store between their counts, so the message
//!    JetStream removes is always a delivered one;
//! 3. at it the store is full: a message's sender gets a `FAILED` receipt
//!    with code `RECIPIENT_STORE_FULL` ([`full_store_receipt`]); a receipt
//!    or a gateway notice into a full store is dropped, logged and counted
//!    (who would be told is the owner of the full store, who reads
//!    nothing).
//!
//! Nothing is purged on the message path: a subject-filtered purge on
//! nats-server 2.9 reads the subject's blocks across the whole stream with
//! the stream's lock held (a 37.5 s purge in the one-hour soak).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::TryStreamExt;
use interop_proto::v1::{envelope, ReceiptStatus, RejectCode};

use crate::handling::Outgoing;
use crate::pipeline;
use crate::subjects::{DELIVERY_ACKED_PREFIX, STREAM_CURSORS};

/// What a full store's refusal says: JetStream's own words for a subject
/// at its count limit (`discard_new_per_subject`, error code 10077, what
/// stores of earlier versions answered), which [`Full`] repeats.
pub const FULL: &str = "maximum messages per subject exceeded";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A store full of undelivered messages refused a publish ([`admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{FULL}: the recipient's store is full of undelivered messages"
        )
    }
}

impl std::error::Error for Full {}

/// Whether `e` (or an error it wraps) is a store refusing a message for
/// its count limit.
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

/// Whether an error's text is a store's refusal at its count limit.
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

/// The part of a store's count limit `limit` kept free of undelivered
/// messages: an eighth (none under 8, a setting for tests).
pub fn headroom(limit: u64) -> u64 {
    limit / 8
}

/// How many undelivered messages a store of count limit `limit` takes
/// before it refuses: the limit less its [`headroom`].
pub fn undelivered_limit(limit: u64) -> u64 {
    limit - headroom(limit)
}

/// Publishes one process makes into one store between two counts of its
/// undelivered messages, at most: a 32nd of the headroom, so from a limit
/// of 1,024 up to 16 processes publishing into one store at once (each
/// with a budget taken on a count that does not see the others' since)
/// stay within it twice over; under it, one publish per count, and the
/// headroom covers as many processes as it has messages.
pub fn budget_max(limit: u64) -> u64 {
    (headroom(limit) / 32).max(1)
}

/// How long a store found full is taken as full without counting again
/// ([`admit`] and [`room`]; [`room_now`] always counts).
pub const NO_ROOM_FOR: Duration = Duration::from_secs(2);

/// Stores this process knows of, at most (about 250 bytes each); past it
/// those not in use are forgotten (which only costs a count when next
/// published into).
const KNOWN_MAX: usize = 20_000;

/// What a process knows of one store.
#[derive(Default)]
struct Known {
    /// Publishes it may make before counting again, and when it last found
    /// the store full. Held across a count, so one count runs at a time.
    state: tokio::sync::Mutex<Budget>,
    /// Its publishes admitted and not yet acknowledged (or failed).
    unacked: AtomicU64,
}

#[derive(Default)]
struct Budget {
    left: u64,
    full_at: Option<Instant>,
    /// The stream holding the store, its count limit (`None`: none), and
    /// when they were asked.
    holder: Option<(String, Option<u64>, Instant)>,
}

/// How long the stream holding a store and its limit are taken as known.
const HOLDER_FOR: Duration = Duration::from_secs(60);

/// Undelivered messages counted one by one (a get each) before a
/// consumer counts them instead.
const WALK_MAX: u64 = 16;

/// How long a count may take before it fails (the caller retries: the
/// stage publishes again in place after its wait). A count is a few
/// requests, milliseconds on a loaded 2-core machine; one that waits is
/// asking a stream with no leader, and would otherwise wait for the
/// JetStream context's request timeout (10 s seen in the fault suite's
/// `INTEROP_INBOX` leader kill) while the election is over in a few.
pub const COUNT_TIMEOUT: Duration = Duration::from_secs(2);

/// Per NATS cluster (its name; a server's id when it is none: tests run
/// several servers in one process) and store subject. Not per server of a
/// cluster: a client that moves to another node after a fault keeps what it
/// knew, rather than count every store again at once.
type KnownMap = HashMap<(String, String), Arc<Known>>;
static KNOWN: Mutex<Option<KnownMap>> = Mutex::new(None);

fn known(js: &jetstream::Context, subject: &str) -> Arc<Known> {
    let info = js.client().server_info();
    let server = info.cluster.unwrap_or(info.server_id);
    let mut guard = KNOWN.lock().expect("the store memory is never poisoned");
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() >= KNOWN_MAX {
        map.retain(|_, k| Arc::strong_count(k) > 1);
    }
    map.entry((server, subject.to_owned())).or_default().clone()
}

/// A publish [`admit`] let through, counted as this process's until it is
/// dropped: drop it once the publish is acknowledged or has failed.
#[must_use = "the publish counts as unacknowledged until this is dropped"]
pub struct Admitted(Option<Arc<Known>>);

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(k) = &self.0 {
            k.unacked.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Whether a message may be published into `subject` now: `None` when it
/// is a store full of undelivered messages (tell the sender, or drop a
/// receipt); any other subject is always admitted. Counts the store's
/// undelivered messages when this process's budget for it is spent (a few
/// JetStream requests, at most every [`budget_max`] publishes), or takes
/// the answer of a count in the last [`NO_ROOM_FOR`] that found it full.
pub async fn admit(js: &jetstream::Context, subject: &str) -> Result<Option<Admitted>, BoxError> {
    let Some(key) = store_key(subject) else {
        return Ok(Some(Admitted(None)));
    };
    let k = known(js, subject);
    let mut budget = k.state.lock().await;
    if budget.left == 0 {
        if budget.full_at.is_some_and(|at| at.elapsed() < NO_ROOM_FOR) {
            return Ok(None);
        }
        count(js, subject, key, &k, &mut budget).await?;
        if budget.left == 0 {
            return Ok(None);
        }
    }
    budget.left -= 1;
    k.unacked.fetch_add(1, Ordering::Relaxed);
    drop(budget);
    Ok(Some(Admitted(Some(k))))
}

/// How many more messages `subject` takes now (0: full of undelivered
/// messages), by a count of its undelivered messages, unless a count in
/// the last [`NO_ROOM_FOR`] found it full (then 0). For a receipt or
/// notice refused by a full store; a message from a sender uses
/// [`room_now`]: within those 2 s the recipient may have read, and
/// refusing the message would be wrong.
pub async fn room(js: &jetstream::Context, subject: &str) -> Result<u64, BoxError> {
    room_with(js, subject, true).await
}

/// [`room`], counting even if the store was found full a moment ago.
pub async fn room_now(js: &jetstream::Context, subject: &str) -> Result<u64, BoxError> {
    room_with(js, subject, false).await
}

async fn room_with(
    js: &jetstream::Context,
    subject: &str,
    remembered: bool,
) -> Result<u64, BoxError> {
    let Some(key) = store_key(subject) else {
        return Ok(0);
    };
    let k = known(js, subject);
    let mut budget = k.state.lock().await;
    if remembered && budget.full_at.is_some_and(|at| at.elapsed() < NO_ROOM_FOR) {
        return Ok(0);
    }
    count(js, subject, key, &k, &mut budget).await
}

/// Counts the undelivered messages of store `subject`, sets this
/// process's budget for it, and returns how many more it takes; fails
/// after [`COUNT_TIMEOUT`] (the budget then stays as it was).
async fn count(
    js: &jetstream::Context,
    subject: &str,
    key: &str,
    k: &Known,
    budget: &mut Budget,
) -> Result<u64, BoxError> {
    tokio::time::timeout(COUNT_TIMEOUT, count_within(js, subject, key, k, budget))
        .await
        .map_err(|_| format!("counting the store took over {COUNT_TIMEOUT:?}"))?
}

async fn count_within(
    js: &jetstream::Context,
    subject: &str,
    key: &str,
    k: &Known,
    budget: &mut Budget,
) -> Result<u64, BoxError> {
    // The stream holding it, asked of the server: publishers know subjects
    // only, not how many streams hold the store (docs/adr/0032).
    let (name, limit) = match &budget.holder {
        Some((name, limit, at)) if at.elapsed() < HOLDER_FOR => (name.clone(), *limit),
        _ => {
            let name = crate::inbox::stream_holding(js, subject).await?;
            let mut stream = js.get_stream(&name).await?;
            let limit = u64::try_from(stream.info().await?.config.max_messages_per_subject).ok();
            budget.holder = Some((name.clone(), limit, Instant::now()));
            (name, limit)
        }
    };
    let Some(limit) = limit else {
        // No limit (-1): nothing is ever removed; look again later.
        budget.left = 1024;
        budget.full_at = None;
        return Ok(u64::MAX);
    };
    let stream = js.get_stream_no_info(name).await?;
    let cursors = js.get_stream_no_info(STREAM_CURSORS).await?;
    let furthest = furthest_cursor(&cursors, subject, key).await?;
    let undelivered =
        undelivered(&stream, subject, furthest).await? + k.unacked.load(Ordering::Relaxed);
    let allowed = undelivered_limit(limit);
    let room = allowed.saturating_sub(undelivered);
    budget.left = room.min(budget_max(limit));
    budget.full_at = (room == 0).then(Instant::now);
    Ok(room)
}

/// How many messages of `subject` the stream holds after sequence `after`
/// (the furthest cursor): read one by one (the next of the subject, a get
/// the stream's leader answers from its per-subject index) while there are
/// at most [`WALK_MAX`], as for a recipient who reads; past that (one who
/// does not) counted by a consumer ([`stored_after`]), which in a cluster
/// goes through the meta leader.
async fn undelivered(
    stream: &jetstream::stream::Stream<()>,
    subject: &str,
    after: u64,
) -> Result<u64, BoxError> {
    use jetstream::stream::RawMessageErrorKind;
    let mut seq = after + 1;
    for walked in 0..=WALK_MAX {
        match stream.get_first_raw_message_by_subject(subject, seq).await {
            Ok(m) => seq = m.sequence + 1,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(walked),
            Err(e) => return Err(e.into()),
        }
    }
    stored_after(stream, subject, after).await
}

/// Where a consumer reading a store after sequence `after` starts: the
/// next sequence, or the beginning for 0 (a start sequence of 0 is not
/// one JetStream takes).
pub fn deliver_after(after: u64) -> jetstream::consumer::DeliverPolicy {
    use jetstream::consumer::DeliverPolicy;
    if after == 0 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: after + 1,
        }
    }
}

/// How many messages of `subject` the stream holds after sequence `after`:
/// the pending count of a consumer starting there (which JetStream works
/// out from its per-subject index and the blocks after `after`, or before
/// it, whichever are fewer), removed at once.
async fn stored_after(
    stream: &jetstream::stream::Stream<()>,
    subject: &str,
    after: u64,
) -> Result<u64, BoxError> {
    let deliver_policy = deliver_after(after);
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy,
            headers_only: true,
            ..Default::default()
        })
        .await?;
    let info = consumer.cached_info();
    // An ephemeral consumer goes by itself once idle; removed now so
    // counts do not pile up on the server.
    if let Err(e) = stream.delete_consumer(&info.name).await {
        tracing::debug!(error = %e, "A counting consumer was not removed; it expires.");
    }
    Ok(info.num_pending)
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
        assert!(is_full(&Full));
    }

    #[test]
    fn the_headroom_is_an_eighth_and_the_budget_a_32nd_of_it() {
        assert_eq!(undelivered_limit(10_000), 8_750);
        assert_eq!(budget_max(10_000), 39);
        // Small limits (tests): no headroom, one publish per count.
        assert_eq!(undelivered_limit(3), 3);
        assert_eq!(budget_max(3), 1);
        assert_eq!(undelivered_limit(8), 7);
        assert_eq!(budget_max(8), 1);
        // From a limit of 1,024, 16 processes, each with a whole budget
        // on a stale count, stay within the headroom twice over.
        for limit in [1_024, 3_000, 10_000, 100_000, 1 << 40] {
            assert!(16 * 2 * budget_max(limit) <= headroom(limit), "{limit}");
        }
    }
}
