//! Erasing one user (`interop erase-user`, the admin API's
//! `POST /admin/v1/erasures`): everything the gateway holds about one
//! address, in Redis and in JetStream. The design and its limits are in
//! docs/adr/0013; docs/security.md ("Privacy and retention") lists what
//! is kept and for how long.
//!
//! Order (so that nothing new reaches the user while their data goes):
//! 1. Redis (`interop_state::erase`): consent first (without it nothing is
//!    admitted to them: fail closed), contacts, reputation, counters,
//!    idempotency and rate-limit keys, group memberships; other users'
//!    accepted/declined answers about them (their blocks stay).
//! 2. The pipeline streams (`INTEROP_INGEST`, `INTEROP_MEDIA`): messages
//!    from or to them that are still on their way. An ingest batch (one
//!    stream message holding several accepted messages, docs/adr/0019)
//!    holding only theirs goes whole; one that also holds others' messages
//!    is split: a new batch of the others' messages (with their traces, in
//!    order) is published and acknowledged first, then the original is
//!    deleted, so what other senders were told was accepted is never lost.
//! 3. The offline store (`INTEROP_INBOX`, or every `INTEROP_INBOX_<i>`
//!    with `--inbox-partitions` above 1): their own store subject
//!    (`interop.v1.delivery.queued.<provider>.<partition>.<key>`, or the
//!    layout before partitions: what they received, receipts about
//!    what they sent), every message they sent that sits in another user's
//!    store (1:1 and group copies, their receipts and reactions), other
//!    members' reactions to their group messages, and the gateway's group
//!    notices (`GroupChange`) that name them (as added, removed, made admin
//!    or a member). A notice naming them that is still in the pipeline goes
//!    too, so the other members are not told of that change.
//! 4. `INTEROP_QUARANTINE`: entries from or to them.
//! 5. Media: every blob referenced by what was deleted, or recorded as sent
//!    by them (`interop:media:sent:<key>`), loses the grants of the
//!    recipients whose messages went; a blob nobody may download any more is
//!    deleted from the object store (data and metadata, no marker left).
//! 6. Their device cursors (`interop.v1.delivery.acked.<key>.>`).
//!
//! Messages are removed one by one with JetStream's message delete, which
//! overwrites the stored message (no `no_erase`). Other users' messages are
//! never touched, except reactions to the user's group messages (they point
//! at a message that no longer exists) and other users' messages in a split
//! ingest batch (stored again, in a new batch). Replies of others keep their
//! `in_reply_to` (an opaque id): the reply is theirs.
//!
//! Idempotent: erasing again finds nothing (counts are zero, except
//! `blocks_kept`). Cost: one pass over each stream and over the Redis
//! keyspace; docs/security.md has a measurement.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy, stream::Stream};
use async_nats::HeaderMap;
use base64::engine::general_purpose::URL_SAFE;
use base64::Engine as _;
use futures_util::StreamExt as _;
use prost::Message as _;
use tracing::info;

use interop_bus::pipeline::{decode_batch, is_batch, BATCH_HEADER};
use interop_bus::recipient_key;
use interop_bus::subjects::{
    store_subject_key, DELIVERY_ACKED_PREFIX, MEDIA_BUCKET, STREAM_CURSORS, STREAM_INBOX,
    STREAM_INGEST, STREAM_MEDIA, STREAM_QUARANTINE,
};
use interop_proto::v1::{envelope::Content, AcceptedBatch, Envelope, PipelineMessage};
use interop_proto::Address;
use interop_state::{erase, keys, media, StateError};

/// How long one JetStream request or one scanned message may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// What was removed (the admin API's answer).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Erased {
    /// Messages in the user's own store (received messages, receipts).
    pub inbox_messages: u64,
    /// Messages in other users' stores: sent by the user (and their
    /// receipts and reactions), and reactions to the user's group messages.
    pub messages_in_other_stores: u64,
    /// Quarantined messages from or to the user.
    pub quarantined: u64,
    /// Messages from or to the user still in the pipeline streams.
    pub in_pipeline: u64,
    /// Device cursors.
    pub cursors: u64,
    /// Media blobs deleted from the object store.
    pub media_blobs: u64,
    /// Download grants removed (of blobs that stay for other recipients, or
    /// that were deleted).
    pub media_grants: u64,
    /// Records of what users decided deleted from the user-state stream
    /// (their consent record, their answers, others' accepted and declined
    /// answers about them; docs/adr/0028).
    pub user_records: u64,
    /// Redis keys deleted.
    pub redis_keys: u64,
    /// Groups the user was removed from.
    pub groups: u64,
    /// Other users' accepted/declined answers about the user, removed.
    pub contact_entries: u64,
    /// Other users' blocks of the user, kept (the blocker's protection).
    pub blocks_kept: u64,
    /// Other users' lists of who fetched their keys the user was removed
    /// from (they get no key notices about the user's keys any more).
    pub key_watches: u64,
    /// The user's devices removed from the key directory, with their
    /// unclaimed one-time prekeys and KeyPackages.
    pub key_devices: u64,
}

/// Why an erasure stopped. It is safe to run again: every step is
/// idempotent.
#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error(transparent)]
    Redis(#[from] StateError),
    #[error("stream {stream}: {detail}")]
    Stream { stream: String, detail: String },
    #[error(transparent)]
    Announce(#[from] interop_bus::admissions::AnnounceError),
}

fn stream_error(stream: &str, e: impl std::fmt::Display) -> ErasureError {
    ErasureError::Stream {
        stream: stream.to_owned(),
        detail: e.to_string(),
    }
}

/// The media ids an envelope references (main and thumbnail).
fn media_ids(env: &Envelope) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(Content::Media(m)) = &env.content {
        if !m.media_id.is_empty() {
            out.push(m.media_id.clone());
        }
        if let Some(t) = &m.thumbnail {
            if !t.media_id.is_empty() {
                out.push(t.media_id.clone());
            }
        }
    }
    out
}

/// A group notice that names `a` (added, removed, made admin, or a member).
fn names(env: &Envelope, a: &str) -> bool {
    match &env.content {
        Some(Content::GroupChange(c)) => [&c.added, &c.removed, &c.new_admins, &c.members]
            .iter()
            .any(|list| list.iter().any(|m| m == a)),
        _ => false,
    }
}

fn is_receipt(env: &Envelope) -> bool {
    matches!(env.content, Some(Content::Receipt(_)))
}

fn decode(payload: &[u8]) -> Option<Envelope> {
    PipelineMessage::decode(payload).ok()?.envelope
}

/// One stored message, as a scan sees it.
struct Seen {
    seq: u64,
    subject: String,
    env: Option<Envelope>,
}

/// Every message of a limits stream, in order, through an ordered consumer
/// (fast: no request per message). Messages stored after the scan started
/// may be seen or not.
async fn scan_limits(
    js: &jetstream::Context,
    name: &str,
    mut visit: impl FnMut(Seen),
) -> Result<(), ErasureError> {
    let stream = js
        .get_stream(name)
        .await
        .map_err(|e| stream_error(name, e))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| stream_error(name, e))?;
    let mut left = consumer.cached_info().num_pending;
    if left == 0 {
        return Ok(());
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| stream_error(name, e))?;
    while left > 0 {
        let msg = tokio::time::timeout(STEP_TIMEOUT, messages.next())
            .await
            .map_err(|_| stream_error(name, "timed out reading"))?
            .ok_or_else(|| stream_error(name, "the scan ended early"))?
            .map_err(|e| stream_error(name, e))?;
        let info = msg.info().map_err(|e| stream_error(name, e))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        visit(Seen {
            seq,
            subject: msg.subject.to_string(),
            env: decode(&msg.payload),
        });
        left = pending;
    }
    Ok(())
}

/// One stored message of a work-queue stream, as a scan sees it.
struct Queued {
    seq: u64,
    subject: String,
    /// What it holds: an ingest batch (docs/adr/0019), or one message as a
    /// batch of one. Empty if it does not decode (its stage dead-letters
    /// it).
    held: AcceptedBatch,
}

/// Every message of a work-queue stream, read by sequence (a work queue
/// takes no second consumer that overlaps its stage's).
async fn scan_work_queue(
    js: &jetstream::Context,
    name: &str,
    mut visit: impl FnMut(Queued),
) -> Result<(), ErasureError> {
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|e| stream_error(name, e))?;
    let state = stream
        .info()
        .await
        .map_err(|e| stream_error(name, e))?
        .state
        .clone();
    if state.messages == 0 {
        return Ok(());
    }
    for seq in state.first_sequence..=state.last_sequence {
        match tokio::time::timeout(STEP_TIMEOUT, stream.get_raw_message(seq)).await {
            Err(_) => return Err(stream_error(name, "timed out reading")),
            // Taken by its stage meanwhile, or deleted.
            Ok(Err(_)) => continue,
            Ok(Ok(m)) => visit(Queued {
                seq,
                subject: m.subject.to_string(),
                held: if is_batch(Some(&m.headers)) {
                    decode_batch(&m.payload).unwrap_or_default()
                } else {
                    AcceptedBatch {
                        messages: PipelineMessage::decode(&*m.payload).into_iter().collect(),
                        traces: Vec::new(),
                    }
                },
            }),
        }
    }
    Ok(())
}

/// Deletes (erases) message `seq` of `stream`; false if it was not there.
async fn delete(stream: &Stream, name: &str, seq: u64) -> Result<bool, ErasureError> {
    match tokio::time::timeout(STEP_TIMEOUT, stream.delete_message(seq)).await {
        Err(_) => Err(stream_error(name, "timed out deleting")),
        Ok(Ok(deleted)) => Ok(deleted),
        // Gone already (aged out, taken by its stage, a second erasure).
        Ok(Err(_)) => Ok(false),
    }
}

/// Deletes (erases) the messages `seqs` of `stream`; returns how many were
/// there.
async fn delete_all(stream: &Stream, name: &str, seqs: &[u64]) -> Result<u64, ErasureError> {
    let mut n = 0;
    for &seq in seqs {
        if delete(stream, name, seq).await? {
            n += 1;
        }
    }
    Ok(n)
}

/// A stored pipeline message holding some of the user's messages.
struct Doomed {
    seq: u64,
    /// How many of the user's messages it holds.
    theirs: u64,
    /// A batch that also holds others' messages: those, to publish again on
    /// `subject` before the original goes.
    keep: Option<(String, AcceptedBatch)>,
}

impl Doomed {
    /// What erasing the messages `involves` does to `m`; `None`: it stays.
    fn of(m: Queued, involves: impl Fn(&Envelope) -> bool) -> Option<Self> {
        let (theirs, others) = split(m.held, involves);
        (theirs > 0).then(|| Self {
            seq: m.seq,
            theirs,
            keep: (!others.messages.is_empty()).then_some((m.subject, others)),
        })
    }
}

/// How many messages of `batch` `involves`, and a batch of the others, in
/// order, each with its trace (traces may be fewer than messages: those
/// that have none keep none).
fn split(batch: AcceptedBatch, involves: impl Fn(&Envelope) -> bool) -> (u64, AcceptedBatch) {
    let mut traces = batch.traces.into_iter();
    let mut theirs = 0;
    let mut others = AcceptedBatch::default();
    for pm in batch.messages {
        let trace = traces.next();
        if pm.envelope.as_ref().is_some_and(&involves) {
            theirs += 1;
        } else {
            others.messages.push(pm);
            others.traces.extend(trace);
        }
    }
    (theirs, others)
}

/// Publishes `batch` on `subject` as a new batch (a fresh message id: it is
/// no duplicate of the original) and awaits JetStream's ack. A batch of
/// one too: routing takes both shapes.
async fn republish(
    js: &jetstream::Context,
    name: &str,
    subject: &str,
    batch: &AcceptedBatch,
) -> Result<(), ErasureError> {
    let mut headers = HeaderMap::new();
    headers.insert(BATCH_HEADER, batch.messages.len().to_string());
    headers.insert(
        NATS_MESSAGE_ID,
        format!("erasure-{}", uuid::Uuid::now_v7()).as_str(),
    );
    let payload = batch.encode_to_vec().into();
    tokio::time::timeout(STEP_TIMEOUT, async {
        js.publish_with_headers(subject.to_owned(), headers, payload)
            .await?
            .await
    })
    .await
    .map_err(|_| stream_error(name, "timed out publishing"))?
    .map_err(|e| stream_error(name, e))?;
    Ok(())
}

async fn get_stream(js: &jetstream::Context, name: &str) -> Result<Stream, ErasureError> {
    js.get_stream(name).await.map_err(|e| stream_error(name, e))
}

/// Media to reconsider: id → (recipient keys whose grants go, sender keys
/// whose "sent" index names it).
type MediaRefs = BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>;

/// Erases everything the gateway holds about `address` (see the crate doc).
pub async fn erase_user(
    js: &jetstream::Context,
    redis: &redis::aio::ConnectionManager,
    address: &Address,
) -> Result<Erased, ErasureError> {
    let a = address.as_str();
    let key = recipient_key(a);
    let mut out = Erased::default();

    // 1. What users decided, in the stream first (a read meanwhile would
    // cache it again from there), then Redis.
    let records = interop_state::Records::open(js.clone(), redis.clone()).await?;
    let (removed, _) = records.erase_user(a).await?;
    out.user_records = removed;
    let r = erase::erase_user(&records, a).await?;
    out.redis_keys = r.keys;
    out.groups = r.groups;
    out.contact_entries = r.contact_entries;
    out.blocks_kept = r.blocks_kept;
    out.key_watches = r.key_watches;
    // Other users' answers about them went too, so what many recipients
    // admit changed: every delivery session asks again (docs/adr/0018).
    interop_bus::admissions::announce_all(&js.client()).await?;

    let involves = |env: &Envelope| env.from == a || env.to == a || names(env, a);
    let mut media_refs = MediaRefs::new();

    // 2. The pipeline streams. Counted: the user's messages, not the stream
    // messages (batches) that held them.
    for name in [STREAM_INGEST, STREAM_MEDIA] {
        let mut doomed = Vec::new();
        scan_work_queue(js, name, |m| doomed.extend(Doomed::of(m, involves))).await?;
        let stream = get_stream(js, name).await?;
        for d in doomed {
            // Others' messages in a split batch are stored again before the
            // original goes. If routing took the original meanwhile, they
            // are routed twice: harmless, as for a batch routing retries
            // (the store write is deduplicated by message id, routing's
            // state writes are idempotent).
            if let Some((subject, others)) = &d.keep {
                republish(js, name, subject, others).await?;
            }
            if delete(&stream, name, d.seq).await? {
                out.in_pipeline += d.theirs;
            }
        }
    }

    // 3. The offline store: every store stream on the server, whatever
    // `--inbox-partitions` made it (docs/adr/0032; a user's own store is in
    // one of them, what they sent in any). Sequences are per stream.
    let mut sent_ids = BTreeSet::new();
    // One-to-one messages they received (group message ids are shared with
    // the other members' copies, which stay).
    let mut received_ids = BTreeSet::new();
    let store_streams = interop_bus::inbox::existing_store_streams(js)
        .await
        .map_err(|e| stream_error(STREAM_INBOX, e))?;
    let mut doomed_in_store = Vec::with_capacity(store_streams.len());
    for name in &store_streams {
        let mut own = Vec::new();
        let mut elsewhere = Vec::new();
        // Reactions in group copies: (seq, target message id).
        let mut group_reactions = Vec::new();
        scan_limits(js, name, |m| {
            // Either store layout (docs/adr/0031).
            let in_own = store_subject_key(&m.subject) == Some(key.as_str());
            let Some(env) = m.env else {
                if in_own {
                    own.push(m.seq);
                }
                return;
            };
            if in_own || env.from == a {
                if in_own && env.group_id.is_empty() && !is_receipt(&env) {
                    received_ids.insert(env.message_id.clone());
                }
                let to_key = recipient_key(&env.to);
                for id in media_ids(&env) {
                    let (to, from) = media_refs.entry(id).or_default();
                    to.insert(to_key.clone());
                    from.insert(recipient_key(&env.from));
                }
                if env.from == a {
                    sent_ids.insert(env.message_id.clone());
                }
                if in_own {
                    own.push(m.seq);
                } else {
                    elsewhere.push(m.seq);
                }
            } else if names(&env, a) {
                elsewhere.push(m.seq);
            } else if !env.group_id.is_empty() {
                if let Some(Content::Reaction(r)) = &env.content {
                    group_reactions.push((m.seq, r.target_message_id.clone()));
                }
            }
        })
        .await?;
        doomed_in_store.push((name, own, elsewhere, group_reactions));
    }
    // Reactions to their group messages are known once every stream was
    // read (the message and a reaction to it may be in different streams).
    for (name, own, mut elsewhere, group_reactions) in doomed_in_store {
        elsewhere.extend(
            group_reactions
                .into_iter()
                .filter(|(_, target)| sent_ids.contains(target))
                .map(|(seq, _)| seq),
        );
        let inbox = get_stream(js, name).await?;
        out.inbox_messages += delete_all(&inbox, name, &own).await?;
        out.messages_in_other_stores += delete_all(&inbox, name, &elsewhere).await?;
    }

    // Other senders' idempotency keys that name messages to them.
    out.redis_keys += erase::forget_message_ids(redis, &received_ids).await?;

    // 4. The quarantine.
    let mut doomed = Vec::new();
    scan_limits(js, STREAM_QUARANTINE, |m| {
        if let Some(env) = m.env.as_ref().filter(|e| involves(e)) {
            doomed.push(m.seq);
            if env.from == a {
                for id in media_ids(env) {
                    media_refs.entry(id).or_default();
                }
            }
        }
    })
    .await?;
    let quarantine = get_stream(js, STREAM_QUARANTINE).await?;
    out.quarantined = delete_all(&quarantine, STREAM_QUARANTINE, &doomed).await?;

    // 5. Media.
    let sent_key = keys::media_sent(&key);
    let mut conn = redis.clone();
    let sent: Vec<String> = redis::cmd("SMEMBERS")
        .arg(&sent_key)
        .query_async(&mut conn)
        .await
        .map_err(StateError::from)?;
    for id in sent {
        media_refs.entry(id).or_default();
    }
    let blobs = MediaBlobs::open(js).await?;
    for (id, (to, from)) in &media_refs {
        let mut keys: Vec<&str> = to.iter().map(String::as_str).collect();
        keys.push(&key);
        let (removed, left) = media::revoke(redis, id, &keys).await?;
        out.media_grants += removed;
        if left > 0 {
            continue;
        }
        if blobs.delete(id).await? {
            out.media_blobs += 1;
        }
        // Other senders' indexes no longer need to name a deleted blob.
        for sender in from.iter().filter(|k| **k != key) {
            let _removed: u64 = redis::cmd("SREM")
                .arg(keys::media_sent(sender))
                .arg(id)
                .query_async(&mut conn)
                .await
                .map_err(StateError::from)?;
        }
    }
    let deleted: u64 = redis::cmd("DEL")
        .arg(&sent_key)
        .query_async(&mut conn)
        .await
        .map_err(StateError::from)?;
    out.redis_keys += deleted;

    // 6. Device cursors, last: a session still open during the erasure may
    // have moved one.
    let cursors = get_stream(js, STREAM_CURSORS).await?;
    out.cursors = tokio::time::timeout(
        STEP_TIMEOUT,
        cursors
            .purge()
            .filter(format!("{DELIVERY_ACKED_PREFIX}.{key}.>")),
    )
    .await
    .map_err(|_| stream_error(STREAM_CURSORS, "timed out purging"))?
    .map_err(|e| stream_error(STREAM_CURSORS, e))?
    .purged;

    // 7. The key directory: the user's devices and their unclaimed keys.
    let directory = interop_keys::KeyDirectory::open(js.clone())
        .await
        .map_err(|e| stream_error(interop_bus::subjects::STREAM_KEYS_DEVICES, e))?;
    out.key_devices = directory
        .devices(a)
        .await
        .map_err(|e| stream_error(interop_bus::subjects::STREAM_KEYS_DEVICES, e))?
        .len() as u64;
    directory
        .erase_user(a)
        .await
        .map_err(|e| stream_error(interop_bus::subjects::STREAM_KEYS_POOL, e))?;

    info!(
        user = %address.redacted(),
        inbox = out.inbox_messages,
        elsewhere = out.messages_in_other_stores,
        media = out.media_blobs,
        keys = out.redis_keys,
        "User erased."
    );
    Ok(out)
}

/// The media object store's stream, for deleting one object without
/// leaving the "deleted" marker an object store delete writes (it names
/// the object).
struct MediaBlobs {
    stream: Option<Stream>,
}

impl MediaBlobs {
    async fn open(js: &jetstream::Context) -> Result<Self, ErasureError> {
        let name = format!("OBJ_{MEDIA_BUCKET}");
        // No media stream: media-transcoding never ran; nothing to delete.
        Ok(Self {
            stream: js.get_stream(&name).await.ok(),
        })
    }

    /// Deletes object `id` (its chunks and its metadata); false if there
    /// was none.
    async fn delete(&self, id: &str) -> Result<bool, ErasureError> {
        let Some(stream) = &self.stream else {
            return Ok(false);
        };
        let name = &stream.cached_info().config.name;
        let meta_subject = format!("$O.{MEDIA_BUCKET}.M.{}", URL_SAFE.encode(id));
        let meta = match tokio::time::timeout(
            STEP_TIMEOUT,
            stream.get_last_raw_message_by_subject(&meta_subject),
        )
        .await
        {
            Err(_) => return Err(stream_error(name, "timed out reading")),
            Ok(Err(_)) => return Ok(false),
            Ok(Ok(m)) => m,
        };
        let nuid = serde_json::from_slice::<serde_json::Value>(&meta.payload)
            .ok()
            .and_then(|v| v["nuid"].as_str().map(str::to_owned));
        let mut subjects = vec![meta_subject];
        if let Some(nuid) = nuid {
            subjects.insert(0, format!("$O.{MEDIA_BUCKET}.C.{nuid}"));
        }
        for subject in subjects {
            tokio::time::timeout(STEP_TIMEOUT, stream.purge().filter(subject))
                .await
                .map_err(|_| stream_error(name, "timed out purging"))?
                .map_err(|e| stream_error(name, e))?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use interop_proto::v1::TraceContext;

    use super::*;

    const USER: &str = "home:+4915112345678";

    fn pm(id: &str, from: &str, to: &str) -> PipelineMessage {
        PipelineMessage {
            envelope: Some(Envelope {
                message_id: id.to_owned(),
                from: from.to_owned(),
                to: to.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn trace(id: &str) -> TraceContext {
        TraceContext {
            fields: [("traceparent".to_owned(), id.to_owned())].into(),
        }
    }

    fn doomed(messages: Vec<PipelineMessage>, traces: Vec<TraceContext>) -> Option<Doomed> {
        let m = Queued {
            seq: 7,
            subject: "s".into(),
            held: AcceptedBatch { messages, traces },
        };
        Doomed::of(m, |env: &Envelope| env.from == USER || env.to == USER)
    }

    fn ids(batch: &AcceptedBatch) -> Vec<&str> {
        batch
            .messages
            .iter()
            .map(|pm| pm.envelope.as_ref().unwrap().message_id.as_str())
            .collect()
    }

    #[test]
    fn a_stored_message_goes_whole_when_all_it_holds_is_the_users() {
        let one = doomed(vec![pm("1", USER, "b")], Vec::new()).unwrap();
        assert_eq!((one.seq, one.theirs, one.keep.is_none()), (7, 1, true));
        let batch = doomed(vec![pm("1", USER, "b"), pm("2", "c", USER)], Vec::new()).unwrap();
        assert_eq!((batch.theirs, batch.keep.is_none()), (2, true));
        assert!(doomed(vec![pm("1", "b", "c")], Vec::new()).is_none());
        assert!(doomed(vec![pm("1", "b", "c"), pm("2", "c", "b")], Vec::new()).is_none());
        // Undecodable, or without envelope: not known to be theirs.
        assert!(doomed(Vec::new(), Vec::new()).is_none());
        assert!(doomed(vec![PipelineMessage::default()], Vec::new()).is_none());
    }

    #[test]
    fn a_mixed_batch_keeps_the_others_messages_with_their_traces_in_order() {
        let d = doomed(
            vec![
                pm("1", "b", "c"),
                pm("2", USER, "b"),
                pm("3", "c", "d"),
                pm("4", "d", "b"),
            ],
            // Fewer traces than messages: the last has none.
            vec![trace("1"), trace("2"), trace("3")],
        )
        .unwrap();
        assert_eq!(d.theirs, 1);
        let (subject, others) = d.keep.unwrap();
        assert_eq!(subject, "s");
        assert_eq!(ids(&others), ["1", "3", "4"]);
        assert_eq!(others.traces, [trace("1"), trace("3")]);
    }
}
