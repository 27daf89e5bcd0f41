//! Growing the store's partition count on a system that holds messages
//! (docs/adr/0032, docs/deploy.md "Store partitions"): from the layout of P
//! streams found on the server to P' = k·P (`--inbox-partitions`), moving
//! what each partition holds to the stream that holds it under P'.
//!
//! Run by `delivery --grow-store` while nothing reads or writes the store:
//! routing, media-transcoding and delivery stopped (ingest may run: sends
//! wait in `INTEROP_INGEST`; a key notice it writes straight to a moving
//! partition during the move is refused and logged, as at any refusal).
//! Idempotent: a run that stopped half-way is run again.
//!
//! 1. What an earlier version stored under the layout before partitions is
//!    moved first ([`crate::legacy_store::migrate`]); if some of it cannot
//!    be, nothing is changed.
//! 2. The streams P' no longer has (`INTEROP_INBOX` when P = 1) keep their
//!    messages but take a reserved subject nobody writes to
//!    (`interop.v1.delivery.queued._moving_.<stream>.x`); the streams both
//!    layouts have (`INTEROP_INBOX_<i>`, i < P) keep their messages and take
//!    the subjects of P' (fewer partitions: the others move out).
//! 3. Each new stream is created with a reserved subject, its sequences
//!    made to start above the last sequence of every store stream (a purge
//!    up to there, on nats-server 2.9 as later), and only then given its
//!    subjects. So a cursor (a device's, a provider partition's) written
//!    against the old stream is below every message of the new one: the
//!    reader gets everything moved, nothing is skipped.
//! 4. Each old stream is read in order (an ordered consumer), and each
//!    message of a partition that moves is stored again, with
//!    its headers and `Nats-Msg-Id` `moved-<stream>-<seq>`, under the same
//!    subject (so in the new stream); a message every reader of its
//!    recipient has acked (every device cursor, and the provider
//!    partition's cursor if there is one, at or past it, each known to be
//!    about this recipient) is not copied. Once every copy is acked, the
//!    moved partitions are purged from the old stream, or
//! 5. the stream is deleted if P' does not have it.
//!
//! Copies get new, higher sequences (in order per recipient): a device
//! whose cursor was below an original gets the copy (the same server id:
//! clients drop what they had), and their retention starts again at the
//! move. Shrinking P is not supported: 2.9 keeps a stream's republish, and
//! a stream holding all of `interop.v1.delivery.queued.*.*.*` (P = 1)
//! cannot coexist with any stream still holding moved messages.

use std::collections::{BTreeMap, HashMap};

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy, stream};
use futures_util::{StreamExt, TryStreamExt};

use crate::inbox::{is_store_stream, InboxPartitions};
use crate::legacy_store::copy_headers;
use crate::store::{is_full, store_partition};
use crate::streams::{inbox_stream, StreamSettings};
use crate::subjects::{
    partition_cursor, store_subject_key, DELIVERY_ACKED_PREFIX, DELIVERY_QUEUED_ALL,
    DELIVERY_QUEUED_PREFIX, STREAM_CURSORS, STREAM_INBOX,
};
use crate::BusError;

/// Copies whose acks may be awaited at once.
const IN_FLIGHT: usize = 1024;

/// What one [`grow_store`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrowReport {
    /// P found on the server (0: no store yet, nothing to move).
    pub from: u32,
    /// P now.
    pub to: u32,
    /// Streams created.
    pub created: Vec<String>,
    /// Streams removed (emptied).
    pub removed: Vec<String>,
    /// Partitions read out of a stream that no longer holds them.
    pub partitions_moved: u64,
    /// Messages stored again in their new stream (a copy an earlier run had
    /// stored is not counted).
    pub copied: u64,
    /// Messages every reader of their recipient had acked: removed, not
    /// copied.
    pub skipped_acked: u64,
}

/// The reserved subject a stream that P' no longer has keeps until it is
/// emptied: matches the republish source (nats-server 2.9 wants them to
/// overlap), overlaps no store subject of P' > 1.
fn moving_subject(stream: &str) -> String {
    format!("{DELIVERY_QUEUED_PREFIX}._moving_.{stream}.x")
}

/// The reserved subject a new stream has until its sequences are set.
fn new_subject(stream: &str) -> String {
    format!("{DELIVERY_QUEUED_PREFIX}._new_.{stream}.x")
}

fn error(name: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Stream {
        name: name.to_owned(),
        source: e.to_string().into(),
    }
}

/// The layout P of `found` (name, subjects) if it is one of P's, fully.
fn layout_of(found: &[(String, Vec<String>)]) -> Option<InboxPartitions> {
    [1u64, 2, 4, 8, 16, 32, 64]
        .into_iter()
        .filter_map(|p| InboxPartitions::new(p).ok())
        .find(|p| {
            found.len() == p.streams()
                && (0..p.streams()).all(|i| {
                    found.iter().any(|(name, subjects)| {
                        *name == p.stream_name(i) && *subjects == p.subjects(i)
                    })
                })
        })
}

/// Grows the store to `settings.inbox_partitions` (see the module
/// documentation). A store already of that layout, or none at all, is
/// left as it is (the services create it). Fails, changing nothing, if the
/// store found is of a P that does not divide the new one, or is larger,
/// or holds legacy messages that cannot be moved.
pub async fn grow_store(
    js: &jetstream::Context,
    settings: &StreamSettings,
) -> Result<GrowReport, BusError> {
    let to = settings.inbox_partitions;
    let mut report = GrowReport {
        to: to.get(),
        ..GrowReport::default()
    };
    let found = store_streams(js).await?;
    if found.is_empty() {
        return Ok(report);
    }
    let named: Vec<(String, Vec<String>)> = found
        .iter()
        .map(|i| (i.config.name.clone(), i.config.subjects.clone()))
        .collect();
    // A fresh start: the store is one whole layout. Or a run that stopped
    // half-way: the streams carry the reserved subjects or those of `to`.
    let from = match layout_of(&named) {
        Some(p) => {
            if p == to {
                report.from = p.get();
                return Ok(report);
            }
            if p.get() > to.get() || !to.get().is_multiple_of(p.get()) {
                return Err(error(
                    STREAM_INBOX,
                    format!(
                        "the store has {} streams; --inbox-partitions {} is not a multiple of it (only growing is supported)",
                        p.get(),
                        to.get()
                    ),
                ));
            }
            // Legacy messages first, with the layout that holds them.
            let legacy = crate::legacy_store::migrate(js, p).await?;
            if legacy.left_in_place > 0 {
                return Err(error(
                    &p.legacy_stream(),
                    format!(
                        "{} messages are still in the layout before partitions (see delivery's log); nothing changed",
                        legacy.left_in_place
                    ),
                ));
            }
            Some(p)
        }
        None => {
            let resumable = named.iter().all(|(name, subjects)| {
                *subjects == [moving_subject(name)]
                    || *subjects == [new_subject(name)]
                    || to
                        .stream_names()
                        .iter()
                        .position(|n| n == name)
                        .is_some_and(|i| *subjects == to.subjects(i))
            });
            if !resumable {
                return Err(error(
                    STREAM_INBOX,
                    format!(
                        "the store's streams are of no layout this can grow from: {:?}",
                        named.iter().map(|(n, _)| n).collect::<Vec<_>>()
                    ),
                ));
            }
            None
        }
    };
    report.from = from.map_or(0, InboxPartitions::get);
    let target = to.stream_names();
    tracing::info!(
        from = report.from,
        to = to.get(),
        "Growing the store's streams."
    );

    // 2. Streams `to` does not have take a reserved subject; those it has,
    // its subjects.
    for info in &found {
        let name = &info.config.name;
        let subjects = match target.iter().position(|n| n == name) {
            Some(i) if info.config.subjects != [new_subject(name)] => to.subjects(i),
            Some(_) => continue,
            None => vec![moving_subject(name)],
        };
        if info.config.subjects != subjects {
            let config = stream::Config {
                subjects,
                ..info.config.clone()
            };
            js.update_stream(config).await.map_err(|e| error(name, e))?;
        }
    }
    // 3. New streams, their sequences above every store stream's.
    let floor = store_streams(js)
        .await?
        .iter()
        .map(|i| i.state.last_sequence)
        .max()
        .unwrap_or(0);
    for (i, name) in target.iter().enumerate() {
        let existing = found.iter().find(|f| f.config.name == *name);
        let real = inbox_stream(settings, i);
        match existing {
            Some(info) if info.config.subjects != [new_subject(name)] => continue,
            Some(_) => {}
            None => {
                js.create_stream(stream::Config {
                    subjects: vec![new_subject(name)],
                    ..real.clone()
                })
                .await
                .map_err(|e| error(name, e))?;
                report.created.push(name.clone());
            }
        }
        let created = js
            .get_stream_no_info(name)
            .await
            .map_err(|e| error(name, e))?;
        created
            .purge()
            .sequence(floor + 1)
            .await
            .map_err(|e| error(name, e))?;
        settle_sequence(js, &created, name).await?;
        js.update_stream(real).await.map_err(|e| error(name, e))?;
    }

    // 4. Every partition out of a stream that no longer holds it; 5. the
    // streams `to` does not have go once emptied.
    for info in store_streams(js).await? {
        let name = info.config.name.clone();
        if info.state.messages == 0 && target.contains(&name) {
            continue;
        }
        let stream = js
            .get_stream_no_info(&name)
            .await
            .map_err(|e| error(&name, e))?;
        let keeps = target.contains(&name);
        move_out(js, &stream, &name, to, keeps, &mut report).await?;
        if !keeps {
            js.delete_stream(&name).await.map_err(|e| error(&name, e))?;
            report.removed.push(name);
        }
    }
    tracing::info!(
        from = report.from,
        to = report.to,
        partitions_moved = report.partitions_moved,
        copied = report.copied,
        skipped_acked = report.skipped_acked,
        "The store's streams have grown."
    );
    Ok(report)
}

/// The durable consumers of the services that must be stopped while the
/// store grows (routing, media-transcoding, delivery's expiry sweeper)
/// that have pull requests waiting, i.e. are being read by a running
/// service (or one stopped less than 30 s ago, until its requests expire);
/// `"<stream>/<consumer>"` each.
pub async fn readers_running(js: &jetstream::Context) -> Result<Vec<String>, BusError> {
    use crate::subjects::{
        CONSUMER_EXPIRY, CONSUMER_MEDIA_TRANSCODING, CONSUMER_ROUTING, STREAM_INGEST, STREAM_MEDIA,
    };
    let mut pairs = vec![
        (STREAM_INGEST.to_owned(), CONSUMER_ROUTING),
        (STREAM_MEDIA.to_owned(), CONSUMER_MEDIA_TRANSCODING),
    ];
    for info in store_streams(js).await? {
        pairs.push((info.config.name, CONSUMER_EXPIRY));
    }
    let mut running = Vec::new();
    for (stream, consumer) in pairs {
        let Ok(s) = js.get_stream_no_info(&stream).await else {
            continue;
        };
        if let Ok(info) = s.consumer_info(consumer).await {
            if info.num_waiting > 0 {
                running.push(format!("{stream}/{consumer}"));
            }
        }
    }
    Ok(running)
}

/// After a purge past its last sequence, a replicated stream's leader on
/// nats-server 2.9 refuses the next publish ("expected sequence does not
/// match store") and then corrects itself: one message is stored on the
/// reserved subject (tried again until it is) and purged, so the stream's
/// first real message is taken at once. Its sequence stays above the
/// floor.
async fn settle_sequence(
    js: &jetstream::Context,
    stream: &stream::Stream<()>,
    name: &str,
) -> Result<(), BusError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let stored = js
            .publish(new_subject(name), bytes::Bytes::new())
            .await
            .map_err(|e| error(name, e))?
            .await;
        match stored {
            Ok(_) => break,
            Err(e) if tries < 20 => {
                tracing::debug!(stream = name, error = %e, "The new stream did not take its first message yet.");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(error(name, e)),
        }
    }
    stream.purge().await.map_err(|e| error(name, e))?;
    Ok(())
}

/// The store streams on the server, with their configs and states.
async fn store_streams(js: &jetstream::Context) -> Result<Vec<stream::Info>, BusError> {
    let mut found: Vec<stream::Info> = js
        .streams()
        .try_filter(|info| std::future::ready(is_store_stream(&info.config.name)))
        .try_collect()
        .await
        .map_err(|e| error(STREAM_INBOX, e))?;
    found.sort_by_key(|i| (i.config.name.len(), i.config.name.clone()));
    Ok(found)
}

/// Moves what `stream` (named `name`) holds of partitions that `to` puts
/// in another stream there (see the module documentation): reads the
/// whole stream in order (an ordered consumer filtered to
/// `interop.v1.delivery.queued.*.*.*`, which JetStream takes however
/// narrow the stream's subjects are now), copies the moving messages, and
/// once every copy is stored removes them: a purge per moving partition
/// when the stream stays (`keeps`), the whole stream otherwise (by the
/// caller).
async fn move_out(
    js: &jetstream::Context,
    stream: &stream::Stream<()>,
    name: &str,
    to: InboxPartitions,
    keeps: bool,
    report: &mut GrowReport,
) -> Result<(), BusError> {
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: DELIVERY_QUEUED_ALL.to_owned(),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| error(name, e))?;
    let mut left = consumer.cached_info().num_pending;
    if left == 0 {
        return Ok(());
    }
    let mut messages = consumer.messages().await.map_err(|e| error(name, e))?;
    // What every reader of a recipient acked, by subject.
    let mut acked: HashMap<String, u64> = HashMap::new();
    // The last sequence read of each moving partition.
    let mut moving: BTreeMap<u32, u64> = BTreeMap::new();
    let mut acks = Vec::with_capacity(IN_FLIGHT);
    let (mut copied, mut skipped) = (0u64, 0u64);
    while left > 0 {
        let msg = messages
            .next()
            .await
            .ok_or_else(|| error(name, "the stream's read ended early"))?
            .map_err(|e| error(name, e))?;
        let info = msg.info().map_err(|e| error(name, e))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        left = pending;
        let subject = msg.subject.to_string();
        let Some((_, partition)) = store_partition(&subject) else {
            continue;
        };
        if to.stream_of_partition(partition) == name {
            continue;
        }
        moving.insert(partition, seq);
        let floor = match acked.get(&subject) {
            Some(f) => *f,
            None => {
                let f = readers_floor(js, stream, name, &subject).await?;
                acked.insert(subject.clone(), f);
                f
            }
        };
        if seq <= floor {
            skipped += 1;
            continue;
        }
        let headers = copy_headers(
            msg.headers
                .as_ref()
                .unwrap_or(&async_nats::HeaderMap::new()),
            format!("moved-{name}-{seq}"),
        );
        // Not counted first (`store::admit`, ADR 27): nothing else writes
        // the store during the move, and a subject's copies are at most
        // what its old stream held, under the same per-subject limit, so
        // they fit. A rerun after the duplicate window copies again: the
        // oldest JetStream then removes are the first run's copies, each
        // also stored again after them.
        let ack = js
            .publish_with_headers(subject, headers, msg.payload.clone())
            .await
            .map_err(|e| error(name, e))?;
        acks.push(ack);
        if acks.len() >= IN_FLIGHT {
            copied += settle(name, &mut acks).await?;
        }
    }
    copied += settle(name, &mut acks).await?;
    // Every copy is stored: the originals go (what was skipped too).
    if keeps {
        for (partition, last) in &moving {
            stream
                .purge()
                .filter(format!("{DELIVERY_QUEUED_PREFIX}.*.{partition}.*"))
                .sequence(last + 1)
                .await
                .map_err(|e| error(name, e))?;
        }
    }
    report.partitions_moved += moving.len() as u64;
    report.copied += copied;
    report.skipped_acked += skipped;
    tracing::info!(
        stream = name,
        partitions = moving.len(),
        copied,
        skipped_acked = skipped,
        "Moved what a store stream held of partitions it no longer holds."
    );
    Ok(())
}

/// Awaits the acks in flight; how many were new copies (not duplicates of
/// an earlier run's).
async fn settle(
    name: &str,
    acks: &mut Vec<jetstream::context::PublishAckFuture>,
) -> Result<u64, BusError> {
    let mut stored = 0;
    for ack in acks.drain(..) {
        match ack.await {
            Ok(ack) => stored += u64::from(!ack.duplicate),
            Err(e) if is_full(&e) => {
                return Err(error(
                    name,
                    "a recipient's store in the new stream is at its count limit; run again once it is read",
                ))
            }
            Err(e) => return Err(error(name, e)),
        }
    }
    Ok(stored)
}

/// The sequence (of `stream`) up to which every reader of the recipient
/// of `subject` has acked: the lowest of their device cursors and of their
/// provider partition's cursor, each counted only if the message at it is
/// still in `stream` and the recipient's (a device cursor) or the
/// partition's (the partition cursor); 0 when there is no reader, or one
/// whose cursor does not count.
async fn readers_floor(
    js: &jetstream::Context,
    stream: &stream::Stream<()>,
    name: &str,
    subject: &str,
) -> Result<u64, BusError> {
    let (Some(key), Some((provider, partition))) =
        (store_subject_key(subject), store_partition(subject))
    else {
        return Ok(0);
    };
    let cursors = js
        .get_stream_no_info(STREAM_CURSORS)
        .await
        .map_err(|e| error(STREAM_CURSORS, e))?;
    let mut readers: Vec<(String, bool)> = cursors
        .info_with_subjects(format!("{DELIVERY_ACKED_PREFIX}.{key}.*"))
        .await
        .map_err(|e| error(STREAM_CURSORS, e))?
        .map_ok(|(s, _)| (s, true))
        .try_collect()
        .await
        .map_err(|e| error(STREAM_CURSORS, e))?;
    readers.push((partition_cursor(provider, partition), false));
    let mut lowest: Option<u64> = None;
    for (cursor_subject, device) in readers {
        let cursor: u64 = match cursors
            .get_last_raw_message_by_subject(&cursor_subject)
            .await
        {
            Ok(m) => std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => continue,
            Err(e) => return Err(error(STREAM_CURSORS, e)),
        };
        let counts = cursor > 0
            && match stream.get_raw_message(cursor).await {
                Ok(m) if device => m.subject.as_str() == subject,
                Ok(m) => store_partition(&m.subject) == Some((provider, partition)),
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => false,
                Err(e) => return Err(error(name, e)),
            };
        let cursor = if counts { cursor } else { 0 };
        lowest = Some(lowest.map_or(cursor, |l: u64| l.min(cursor)));
        if lowest == Some(0) {
            break;
        }
    }
    Ok(lowest.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_subjects_overlap_no_store_subject_of_more_than_one_stream() {
        let matches = |pattern: &str, subject: &str| {
            let (p, s): (Vec<&str>, Vec<&str>) =
                (pattern.split('.').collect(), subject.split('.').collect());
            p.len() == s.len() && p.iter().zip(&s).all(|(p, s)| *p == "*" || p == s)
        };
        for p in [2u64, 4, 8, 16, 32, 64] {
            let layout = InboxPartitions::new(p).unwrap();
            for i in 0..layout.streams() {
                for s in layout.subjects(i) {
                    assert!(!matches(&s, &moving_subject(STREAM_INBOX)), "{s}");
                    assert!(!matches(&s, &new_subject(&layout.stream_name(i))), "{s}");
                }
            }
        }
        // Both match the republish source (nats-server 2.9 checks that).
        assert!(matches(
            crate::subjects::DELIVERY_QUEUED_ALL,
            &moving_subject("X")
        ));
        assert!(matches(
            crate::subjects::DELIVERY_QUEUED_ALL,
            &new_subject("X")
        ));
    }

    #[test]
    fn a_whole_layout_is_recognised() {
        let of = |p: u64| {
            let l = InboxPartitions::new(p).unwrap();
            (0..l.streams())
                .map(|i| (l.stream_name(i), l.subjects(i)))
                .collect::<Vec<_>>()
        };
        for p in [1u64, 2, 4, 8, 16, 32, 64] {
            assert_eq!(layout_of(&of(p)).map(|l| u64::from(l.get())), Some(p));
        }
        // Part of one, or a mixture, is none.
        assert_eq!(layout_of(&of(4)[..3]), None);
        let mut mixed = of(4);
        mixed[1].1 = InboxPartitions::new(8).unwrap().subjects(1);
        assert_eq!(layout_of(&mixed), None);
    }
}
