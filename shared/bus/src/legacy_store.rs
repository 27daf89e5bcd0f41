//! Moves what an earlier version stored in the per-recipient store
//! (`INTEROP_INBOX`) under the layout before provider partitions,
//! `interop.v1.delivery.queued.<key>`, to the current one,
//! `interop.v1.delivery.queued.<provider>.<partition>.<key>`
//! ([`crate::recipient_path`]), losing nothing (docs/adr/0031).
//!
//! [`migrate`] runs at every delivery start: with nothing stored under the
//! legacy layout it costs one request (a stream info filtered to the
//! legacy subjects). Otherwise, one legacy subject (one recipient) after
//! the other, in store order:
//!
//! - a message every device of the recipient acked (its sequence at or
//!   below the lowest of the recipient's device cursors, `INTEROP_CURSORS`)
//!   is not copied, only removed (`skipped_acked`); a recipient without any
//!   cursor has all its messages copied. Cursors are per recipient and
//!   device, not per subject, and store sequences are shared by both
//!   layouts: a device that acked messages stored under the current layout
//!   has a cursor past legacy messages it never got. So a cursor counts
//!   only if the message at its sequence is still there and on this legacy
//!   subject (an earlier version's session set it); any other cursor counts
//!   as nothing acked (the messages are copied: a duplicate at worst,
//!   never a loss);
//! - any other message is stored again, payload and headers as they were,
//!   on its owner's current store subject. The owner is whichever of the
//!   envelope's `to` and `from` has the legacy subject's key (receipts and
//!   copies for a sender's own devices live in the sender's store). The copy
//!   has `Nats-Msg-Id` `legacy-<old sequence>` (replacing the original id;
//!   `Nats-Expected-*` headers are dropped), so two delivery replicas
//!   migrating at once store it once (within the store's duplicate window,
//!   2 minutes; a subject is handled in batches, each removed as soon as its
//!   copies are stored, to stay well inside it);
//! - the originals are removed only after JetStream acked their copies (a
//!   purge of the subject up to the last handled sequence; one by one past
//!   a message left in place);
//! - a message that does not decode, or whose owner cannot be told (neither
//!   address has the key), is left in place, logged with only the key and
//!   its sequence, and counted (`left_in_place`); so is a message whose
//!   owner's store is full of undelivered messages (`store::admit`,
//!   docs/adr/0027) even when counted again, together with the rest of that subject (so that order is
//!   kept). A later run tries them again; nothing is ever removed uncopied.
//!
//! With more than one store stream (`--inbox-partitions`, docs/adr/0032)
//! the legacy layout is a subject of stream 0, and only messages whose
//! owner's partition is in stream 0 too are moved: device cursors set on
//! the legacy subject are sequences of stream 0, which say nothing about
//! another stream's. The others are left in place, logged and counted
//! (`left_in_place`). A store made before partitions is `INTEROP_INBOX`,
//! which only P = 1 uses (every service refuses a store of another P), so
//! this is a safeguard, not a path: run with P = 1 until the move is done.
//!
//! Copies get new, higher store sequences: every device of the recipient
//! whose cursor was below the original gets the message again, and so does
//! a device that had taken it while another had not (the same server
//! message id: clients drop duplicates). Their order among the recipient's
//! legacy messages is kept; they come after whatever was already stored
//! under the current layout. A copy's store time is that of the migration:
//! the offline retention (and the expiry sweeper's `EXPIRED`) counts from
//! it again.

use std::collections::HashMap;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use async_nats::jetstream::{self, stream::LastRawMessageErrorKind, stream::Stream};
use bytes::Bytes;
use futures_util::TryStreamExt;

use crate::subjects::{
    delivery_queued, store_subject_key, DELIVERY_ACKED_PREFIX, DELIVERY_QUEUED_LEGACY,
    STREAM_CURSORS, STREAM_INBOX,
};
use crate::{pipeline, recipient_key, recipient_path, store, BusError, InboxPartitions};

/// Messages of one legacy subject read, copied and removed at a time.
const BATCH: usize = 256;

/// What one [`migrate`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Legacy subjects (recipients) found holding messages.
    pub subjects: u64,
    /// Messages this call stored under the current layout (and removed from
    /// the legacy one). A copy another migration had already stored is
    /// removed but not counted.
    pub copied: u64,
    /// Messages every device of their recipient had acked: removed, not
    /// copied.
    pub skipped_acked: u64,
    /// Messages left under the legacy layout: undecodable, owner unknown, or
    /// the owner's store full.
    pub left_in_place: u64,
}

/// Moves every message stored under the legacy layout to its recipient's
/// current store subject (see the module documentation). Safe to run
/// concurrently from several replicas and again after a failure: a copy is
/// stored once, an original removed only once its copy is stored.
pub async fn migrate(
    js: &jetstream::Context,
    partitions: InboxPartitions,
) -> Result<MigrationReport, BusError> {
    let inbox = js
        .get_stream_no_info(partitions.legacy_stream())
        .await
        .map_err(inbox_error)?;
    let mut subjects: Vec<String> = inbox
        .info_with_subjects(DELIVERY_QUEUED_LEGACY)
        .await
        .map_err(inbox_error)?
        .map_ok(|(subject, _)| subject)
        .try_collect()
        .await
        .map_err(inbox_error)?;
    let mut report = MigrationReport::default();
    if subjects.is_empty() {
        return Ok(report);
    }
    subjects.sort_unstable();
    for subject in &subjects {
        let Some(key) = store_subject_key(subject) else {
            continue;
        };
        report.subjects += 1;
        migrate_subject(js, partitions, &inbox, subject, key, &mut report).await?;
    }
    let MigrationReport {
        subjects,
        copied,
        skipped_acked,
        left_in_place,
    } = report;
    if copied + skipped_acked > 0 {
        tracing::info!(
            subjects,
            copied,
            skipped_acked,
            left_in_place,
            "Moved messages an earlier version stored into the current store layout."
        );
    } else if left_in_place > 0 {
        tracing::warn!(
            subjects,
            left_in_place,
            "Messages an earlier version stored are still in the legacy store layout (see the warnings above)."
        );
    }
    Ok(report)
}

/// One message to store again.
struct Republish {
    seq: u64,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

/// How storing a copy ended.
enum Outcome {
    Stored { duplicate: bool },
    Full,
    Failed(BusError),
    NotSent,
}

/// Handles one legacy subject, `BATCH` messages at a time.
async fn migrate_subject(
    js: &jetstream::Context,
    partitions: InboxPartitions,
    inbox: &Stream<()>,
    subject: &str,
    key: &str,
    report: &mut MigrationReport,
) -> Result<(), BusError> {
    let acked = lowest_cursor(js, inbox, subject, key).await?;
    // The first sequence of this subject that must stay (left in place, or
    // not handled because of an error): a purge never reaches it.
    let mut first_kept: Option<u64> = None;
    // The owner's store stayed full: the rest stays too, in order.
    let mut blocked = false;
    let mut next = 1u64;
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        let mut end = false;
        while batch.len() < BATCH {
            match inbox.get_first_raw_message_by_subject(subject, next).await {
                Ok(m) => {
                    next = m.sequence + 1;
                    batch.push(m);
                }
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                    end = true;
                    break;
                }
                Err(e) => return Err(inbox_error(e)),
            }
        }
        let mut done: Vec<u64> = Vec::with_capacity(batch.len());
        let mut kept: Vec<u64> = Vec::new();
        let mut copies: Vec<Republish> = Vec::with_capacity(batch.len());
        for m in batch {
            let seq = m.sequence;
            if blocked {
                kept.push(seq);
                continue;
            }
            let Ok(pm) = pipeline::decode(&m.payload) else {
                tracing::warn!(
                    key,
                    seq,
                    "A legacy store message does not decode; left in place."
                );
                kept.push(seq);
                continue;
            };
            if seq <= acked {
                report.skipped_acked += 1;
                done.push(seq);
                continue;
            }
            let owner = pm.envelope.as_ref().and_then(|env| {
                [&env.to, &env.from]
                    .into_iter()
                    .find(|address| recipient_key(address) == key)
            });
            let Some(owner) = owner else {
                tracing::warn!(
                    key,
                    seq,
                    "A legacy store message names no address with its store's key; left in place."
                );
                kept.push(seq);
                continue;
            };
            let subject = delivery_queued(&recipient_path(owner));
            if partitions.index_of_subject(&subject) != Some(0) {
                tracing::warn!(
                    key,
                    seq,
                    "A legacy store message belongs in another store stream than the legacy layout's; left in place (move it with --inbox-partitions 1)."
                );
                kept.push(seq);
                continue;
            }
            copies.push(Republish {
                seq,
                subject,
                headers: copy_headers(&m.headers, format!("legacy-{seq}")),
                payload: m.payload,
            });
        }
        let outcomes = store_copies(js, &copies).await;
        let mut error = None;
        for (copy, outcome) in copies.iter().zip(outcomes) {
            match outcome {
                Outcome::Stored { duplicate } => {
                    report.copied += u64::from(!duplicate);
                    done.push(copy.seq);
                }
                Outcome::Full => {
                    if !blocked {
                        tracing::warn!(
                            key,
                            seq = copy.seq,
                            "The recipient's store is full of undelivered messages: this legacy store message and the rest of its subject are left in place."
                        );
                    }
                    blocked = true;
                    kept.push(copy.seq);
                }
                Outcome::Failed(e) => {
                    first_kept = Some(first_kept.map_or(copy.seq, |k| k.min(copy.seq)));
                    error.get_or_insert(e);
                }
                Outcome::NotSent => {
                    first_kept = Some(first_kept.map_or(copy.seq, |k| k.min(copy.seq)));
                }
            }
        }
        report.left_in_place += kept.len() as u64;
        if let Some(&k) = kept.iter().min() {
            first_kept = Some(first_kept.map_or(k, |f| f.min(k)));
        }
        remove(inbox, subject, done, first_kept).await?;
        if let Some(e) = error {
            return Err(e);
        }
        if end {
            return Ok(());
        }
    }
}

/// Publishes the copies (all sent before any ack is awaited), and returns
/// how each ended, in order. Copies refused by a full store are tried again
/// one by one, in order, once room was made; the first still refused
/// blocks the rest.
async fn store_copies(js: &jetstream::Context, copies: &[Republish]) -> Vec<Outcome> {
    let mut sent = Vec::with_capacity(copies.len());
    let mut send_error = None;
    for c in copies {
        // A store full of undelivered messages takes no copy (store.rs).
        let admitted = match store::admit(js, &c.subject).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                sent.push(None);
                continue;
            }
            Err(e) => {
                send_error = Some(BusError::Stream {
                    name: STREAM_INBOX.to_owned(),
                    source: e,
                });
                break;
            }
        };
        match js
            .publish_with_headers(c.subject.clone(), c.headers.clone(), c.payload.clone())
            .await
        {
            Ok(ack) => sent.push(Some((ack, admitted))),
            Err(e) => {
                send_error = Some(inbox_error(e));
                break;
            }
        }
    }
    let mut outcomes = Vec::with_capacity(copies.len());
    for s in sent {
        outcomes.push(match s {
            None => Outcome::Full,
            Some((ack, _admitted)) => match ack.await {
                Ok(ack) => Outcome::Stored {
                    duplicate: ack.duplicate,
                },
                Err(e) if store::is_full(&e) => Outcome::Full,
                Err(e) => Outcome::Failed(inbox_error(e)),
            },
        });
    }
    if let Some(e) = send_error {
        outcomes.push(Outcome::Failed(e));
    }
    outcomes.resize_with(copies.len(), || Outcome::NotSent);
    let Some(first_full) = outcomes.iter().position(|o| matches!(o, Outcome::Full)) else {
        return outcomes;
    };
    // The recipient's devices may have read meanwhile: counted again, then
    // the refused copies go again, in order.
    if let Err(e) = store::room_now(js, &copies[first_full].subject).await {
        outcomes[first_full] = Outcome::Failed(BusError::Stream {
            name: STREAM_INBOX.to_owned(),
            source: e,
        });
        return outcomes;
    }
    let mut blocked = false;
    for (c, outcome) in copies.iter().zip(outcomes.iter_mut()).skip(first_full) {
        if !matches!(outcome, Outcome::Full) || blocked {
            continue;
        }
        let admitted = match store::admit(js, &c.subject).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                blocked = true;
                continue;
            }
            Err(e) => {
                *outcome = Outcome::Failed(BusError::Stream {
                    name: STREAM_INBOX.to_owned(),
                    source: e,
                });
                continue;
            }
        };
        let stored = match js
            .publish_with_headers(c.subject.clone(), c.headers.clone(), c.payload.clone())
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => {
                *outcome = Outcome::Failed(inbox_error(e));
                continue;
            }
        };
        drop(admitted);
        *outcome = match stored {
            Ok(ack) => Outcome::Stored {
                duplicate: ack.duplicate,
            },
            Err(e) if store::is_full(&e) => {
                blocked = true;
                Outcome::Full
            }
            Err(e) => Outcome::Failed(inbox_error(e)),
        };
    }
    outcomes
}

/// Removes the handled originals `done` of `subject`: those before
/// `first_kept` (all when `None`) with one purge, the others one by one.
async fn remove(
    inbox: &Stream<()>,
    subject: &str,
    mut done: Vec<u64>,
    first_kept: Option<u64>,
) -> Result<(), BusError> {
    done.sort_unstable();
    let before = first_kept.map_or(done.len(), |k| done.partition_point(|&s| s < k));
    if let Some(&last) = done[..before].last() {
        inbox
            .purge()
            .filter(subject)
            .sequence(last + 1)
            .await
            .map_err(inbox_error)?;
    }
    for &seq in &done[before..] {
        if let Err(e) = inbox.delete_message(seq).await {
            // Another migration removed it already: fine.
            match inbox.get_raw_message(seq).await {
                Err(gone) if gone.kind() == LastRawMessageErrorKind::NoMessageFound => {}
                _ => return Err(inbox_error(e)),
            }
        }
    }
    Ok(())
}

/// The original's headers for its copy: all but its message id and any
/// `Nats-Expected-*` condition, with the message id `id`.
pub(crate) fn copy_headers(original: &HeaderMap, id: String) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in original.iter() {
        let n: &str = name.as_ref();
        if n.eq_ignore_ascii_case(NATS_MESSAGE_ID.as_ref())
            || n.to_ascii_lowercase().starts_with("nats-expected-")
        {
            continue;
        }
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(NATS_MESSAGE_ID, id);
    headers
}

/// The lowest cursor of the devices of recipient `key` that is known to
/// be about its legacy subject `subject` (every legacy message at or before
/// it was acked by all of them); 0 when a device's cursor is not (see the
/// module documentation) and when there is no cursor.
pub(crate) async fn lowest_cursor(
    js: &jetstream::Context,
    inbox: &Stream<()>,
    subject: &str,
    key: &str,
) -> Result<u64, BusError> {
    let cursors = js
        .get_stream_no_info(STREAM_CURSORS)
        .await
        .map_err(cursors_error)?;
    let devices: HashMap<String, usize> = cursors
        .info_with_subjects(format!("{DELIVERY_ACKED_PREFIX}.{key}.*"))
        .await
        .map_err(cursors_error)?
        .try_collect()
        .await
        .map_err(cursors_error)?;
    let mut lowest: Option<u64> = None;
    for device in devices.keys() {
        let cursor = match cursors.get_last_raw_message_by_subject(device).await {
            // An unreadable cursor counts as nothing acked.
            Ok(m) => std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
            // Removed since it was listed: the device is gone.
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
            Err(e) => return Err(cursors_error(e)),
        };
        let about_legacy = cursor > 0
            && match inbox.get_raw_message(cursor).await {
                Ok(m) => m.subject.as_str() == subject,
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => false,
                Err(e) => return Err(inbox_error(e)),
            };
        let cursor = if about_legacy { cursor } else { 0 };
        lowest = Some(lowest.map_or(cursor, |l| l.min(cursor)));
        if lowest == Some(0) {
            break;
        }
    }
    Ok(lowest.unwrap_or(0))
}

fn inbox_error(e: impl std::error::Error + Send + Sync + 'static) -> BusError {
    BusError::Stream {
        name: STREAM_INBOX.to_owned(),
        source: Box::new(e),
    }
}

fn cursors_error(e: impl std::error::Error + Send + Sync + 'static) -> BusError {
    BusError::Stream {
        name: STREAM_CURSORS.to_owned(),
        source: Box::new(e),
    }
}
