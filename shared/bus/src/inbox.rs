//! Which JetStream stream holds which part of the per-recipient store
//! (docs/adr/0032).
//!
//! The store's subjects carry one of 64 partitions
//! (`interop.v1.delivery.queued.<provider>.<partition>.<key>`,
//! [`crate::recipient_path`]). With `--inbox-partitions` P = 1 (the
//! default) one stream, `INTEROP_INBOX`, holds them all, exactly as before
//! partitions existed. With P > 1 there are P streams,
//! `INTEROP_INBOX_0` … `INTEROP_INBOX_<P-1>`; stream `i` holds the
//! partitions `n` with `n % P == i` (one subject
//! `interop.v1.delivery.queued.*.<n>.*` per partition). P divides 64, so
//! every stream holds as many partitions. The layout before partitions
//! (`interop.v1.delivery.queued.<key>`, docs/adr/0031) is a subject of
//! stream 0.
//!
//! A user's store subject, and a partition, lie in one stream: store
//! sequences are per stream, so a device's cursor, a provider partition's
//! cursor and a `MarkRead` tag (all sequences) keep their meaning; two
//! users in different streams may have messages with the same sequence.
//!
//! Publishers address subjects only and need none of this. Readers hold a
//! stream handle: [`InboxStreams`] holds all P.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream};
use futures_util::TryStreamExt;
use interop_proto::limits::PARTITIONS;

use crate::subjects::{
    store_subject_key, DELIVERY_QUEUED_ALL, DELIVERY_QUEUED_LEGACY, DELIVERY_QUEUED_PREFIX,
    STREAM_INBOX,
};
use crate::BusError;

/// How many streams hold the store: a divisor of the 64 partitions
/// (1, 2, 4, 8, 16, 32 or 64). The type cannot hold another value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InboxPartitions(u32);

/// A store stream count that does not divide the 64 partitions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--inbox-partitions must divide {PARTITIONS} (1, 2, 4, 8, 16, 32 or 64), got {0}")]
pub struct InvalidPartitions(pub u64);

impl Default for InboxPartitions {
    fn default() -> Self {
        Self::ONE
    }
}

impl std::fmt::Display for InboxPartitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl InboxPartitions {
    /// One stream, `INTEROP_INBOX`: the layout of every deployment so far.
    pub const ONE: Self = Self(1);

    /// `p` streams, if `p` divides [`PARTITIONS`].
    pub fn new(p: u64) -> Result<Self, InvalidPartitions> {
        match u32::try_from(p) {
            Ok(n) if n >= 1 && PARTITIONS.is_multiple_of(n) => Ok(Self(n)),
            _ => Err(InvalidPartitions(p)),
        }
    }

    /// P.
    pub fn get(self) -> u32 {
        self.0
    }

    /// How many streams (P).
    pub fn streams(self) -> usize {
        self.0 as usize
    }

    /// The index of the stream holding `partition`.
    pub fn index_of_partition(self, partition: u32) -> usize {
        (partition % self.0) as usize
    }

    /// The name of stream `index`: `INTEROP_INBOX` when P = 1, else
    /// `INTEROP_INBOX_<index>`.
    pub fn stream_name(self, index: usize) -> String {
        if self.0 == 1 {
            STREAM_INBOX.to_owned()
        } else {
            format!("{STREAM_INBOX}_{index}")
        }
    }

    /// Every stream's name, by index.
    pub fn stream_names(self) -> Vec<String> {
        (0..self.streams()).map(|i| self.stream_name(i)).collect()
    }

    /// The stream holding `partition`.
    pub fn stream_of_partition(self, partition: u32) -> String {
        self.stream_name(self.index_of_partition(partition))
    }

    /// The index of the stream holding the store subject `subject` (either
    /// layout: one before partitions is in stream 0); `None` if it is no
    /// store subject.
    pub fn index_of_subject(self, subject: &str) -> Option<usize> {
        store_subject_key(subject)?;
        match crate::store::store_partition(subject) {
            Some((_, partition)) => Some(self.index_of_partition(partition)),
            None => Some(0),
        }
    }

    /// The stream holding the store subject `subject`, if it is one.
    pub fn stream_of_subject(self, subject: &str) -> Option<String> {
        self.index_of_subject(subject).map(|i| self.stream_name(i))
    }

    /// The stream holding the store of the recipient `address`.
    pub fn stream_of_address(self, address: &str) -> String {
        self.stream_of_key(&crate::recipient_key(address))
    }

    /// The stream holding the store of the recipient whose key is `key`.
    pub fn stream_of_key(self, key: &str) -> String {
        self.stream_of_partition(crate::partition_of_key(key))
    }

    /// The partitions stream `index` holds, in order.
    pub fn partitions_of(self, index: usize) -> impl Iterator<Item = u32> {
        let p = self.0;
        (0..PARTITIONS).filter(move |n| (n % p) as usize == index)
    }

    /// The subjects of stream `index`: with P = 1 today's two
    /// ([`DELIVERY_QUEUED_ALL`] and the legacy layout); with P > 1 one per
    /// partition it holds, and the legacy layout on stream 0.
    pub fn subjects(self, index: usize) -> Vec<String> {
        let mut subjects = if self.0 == 1 {
            vec![DELIVERY_QUEUED_ALL.to_owned()]
        } else {
            self.partitions_of(index)
                .map(|n| format!("{DELIVERY_QUEUED_PREFIX}.*.{n}.*"))
                .collect()
        };
        if index == 0 {
            subjects.push(DELIVERY_QUEUED_LEGACY.to_owned());
        }
        subjects
    }

    /// The stream holding the layout before partitions (stream 0).
    pub fn legacy_stream(self) -> String {
        self.stream_name(0)
    }
}

/// Whether `name` is a store stream of some layout: `INTEROP_INBOX` or
/// `INTEROP_INBOX_<digits>`.
pub fn is_store_stream(name: &str) -> bool {
    match name.strip_prefix(STREAM_INBOX) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('_')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// The store streams that exist on the server, whatever layout made them
/// (for tools that must see everything: the erasure, inspections), by
/// name.
pub async fn existing_store_streams(js: &jetstream::Context) -> Result<Vec<String>, BusError> {
    let mut names: Vec<String> = js
        .stream_names()
        .try_filter(|name| std::future::ready(is_store_stream(name)))
        .try_collect()
        .await
        .map_err(|e| BusError::Stream {
            name: STREAM_INBOX.to_owned(),
            source: Box::new(e),
        })?;
    names.sort_unstable_by_key(|n| (n.len(), n.clone()));
    Ok(names)
}

/// The stream that holds the store subject `subject` on the server, asked
/// of the server (one JetStream API request), whatever the layout.
/// Publishers, which address subjects only, use it where they must name
/// the stream (a count of a store's undelivered messages, `store::admit`).
pub async fn stream_holding(js: &jetstream::Context, subject: &str) -> Result<String, BusError> {
    js.stream_by_subject(subject)
        .await
        .map_err(|e| BusError::Stream {
            name: STREAM_INBOX.to_owned(),
            source: Box::new(e),
        })
}

/// Handles on every stream of the store, for readers (delivery sessions,
/// provider sessions, the expiry sweeper).
#[derive(Clone)]
pub struct InboxStreams {
    partitions: InboxPartitions,
    streams: Vec<Stream>,
}

impl InboxStreams {
    /// Opens the store's P streams (each with a stream info request); they
    /// must exist ([`crate::ensure_streams`]).
    pub async fn open(
        js: &jetstream::Context,
        partitions: InboxPartitions,
    ) -> Result<Self, BusError> {
        let mut streams = Vec::with_capacity(partitions.streams());
        for name in partitions.stream_names() {
            streams.push(crate::open_stream(js, &name).await?);
        }
        Ok(Self {
            partitions,
            streams,
        })
    }

    /// The layout.
    pub fn partitions(&self) -> InboxPartitions {
        self.partitions
    }

    /// The stream holding `partition`.
    pub fn for_partition(&self, partition: u32) -> &Stream {
        &self.streams[self.partitions.index_of_partition(partition)]
    }

    /// The stream holding the recipient whose key is `key`.
    pub fn for_key(&self, key: &str) -> &Stream {
        self.for_partition(crate::partition_of_key(key))
    }

    /// The stream holding the store subject `subject`; `None` if it is no
    /// store subject.
    pub fn for_subject(&self, subject: &str) -> Option<&Stream> {
        self.partitions
            .index_of_subject(subject)
            .map(|i| &self.streams[i])
    }

    /// The stream holding the layout before partitions.
    pub fn legacy(&self) -> &Stream {
        &self.streams[0]
    }

    /// Every stream, by index.
    pub fn all(&self) -> &[Stream] {
        &self.streams
    }
}

/// Where one replicated stream is led: its leader and the peers that could
/// lead it (the leader and its current, online followers), by server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub leader: String,
    pub peers: Vec<String>,
}

/// Which stream to step down so that the store streams' leaders spread
/// over the servers: one led by a server leading the most of them, with a
/// peer that leads at least two fewer (the new leader is one of its
/// followers, which JetStream picks). `None` when no such move exists
/// (every server that could take one leads as many, or one fewer).
pub fn stream_to_step_down(streams: &BTreeMap<String, Leadership>) -> Option<String> {
    let mut led: BTreeMap<&str, usize> = BTreeMap::new();
    for l in streams.values() {
        for p in &l.peers {
            led.entry(p.as_str()).or_default();
        }
        *led.entry(l.leader.as_str()).or_default() += 1;
    }
    let most = led.values().copied().max()?;
    streams
        .iter()
        .filter(|(_, l)| led.get(l.leader.as_str()) == Some(&most))
        .find(|(_, l)| {
            l.peers
                .iter()
                .any(|p| *p != l.leader && led.get(p.as_str()).is_some_and(|n| n + 2 <= most))
        })
        .map(|(name, _)| name.clone())
}

/// The leaderships of `names`; `None` if a stream has no leader now (an
/// election is under way) or does not answer.
async fn leaderships(
    js: &jetstream::Context,
    names: &[String],
) -> Option<BTreeMap<String, Leadership>> {
    let mut out = BTreeMap::new();
    for name in names {
        let info = js.get_stream(name).await.ok()?.get_info().await.ok()?;
        let cluster = info.cluster?;
        let leader = cluster.leader?;
        let mut peers = vec![leader.clone()];
        peers.extend(
            cluster
                .replicas
                .into_iter()
                .filter(|r| r.current && !r.offline)
                .map(|r| r.name),
        );
        out.insert(name.clone(), Leadership { leader, peers });
    }
    Some(out)
}

/// Spreads the store streams' leaders over the servers holding them
/// (docs/adr/0032): JetStream places each stream's leader at random, so 8
/// streams on 3 servers often have one leading 5 of them, and after a
/// server's loss and return its streams stay led by the others. While a
/// server leads at least two more store streams than another that could
/// lead one of them, one of its streams is asked to step down
/// (`$JS.API.STREAM.LEADER.STEPDOWN`, nats-server 2.9; a follower, picked
/// by JetStream, takes over after a short election: publishes to that
/// stream wait or are retried, sessions look at their stores), and the new
/// leader awaited; at most 4 step-downs per stream. Stops early when a
/// stream has no leader (an election is under way: next time). Returns
/// how many streams stepped down. With one stream or one replica there is
/// nothing to do.
pub async fn balance_leaders(
    js: &jetstream::Context,
    partitions: InboxPartitions,
) -> Result<u32, BusError> {
    let names = partitions.stream_names();
    if names.len() < 2 {
        return Ok(0);
    }
    let mut stepped = 0u32;
    for _ in 0..4 * names.len() {
        let Some(now) = leaderships(js, &names).await else {
            return Ok(stepped);
        };
        let Some(name) = stream_to_step_down(&now) else {
            return Ok(stepped);
        };
        let old = now[&name].leader.clone();
        let answer = js
            .client()
            .request(
                format!("$JS.API.STREAM.LEADER.STEPDOWN.{name}"),
                bytes::Bytes::new(),
            )
            .await
            .map_err(|e| BusError::Stream {
                name: name.clone(),
                source: Box::new(e),
            })?;
        if !std::str::from_utf8(&answer.payload).is_ok_and(|a| a.contains("\"success\":true")) {
            tracing::warn!(stream = %name, answer = %String::from_utf8_lossy(&answer.payload), "A store stream's leader did not step down.");
            return Ok(stepped);
        }
        stepped += 1;
        // The new leader, within 10 s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let leader = match js.get_stream(&name).await {
                Ok(s) => s.get_info().await.ok().and_then(|i| i.cluster?.leader),
                Err(_) => None,
            };
            if leader.is_some_and(|l| l != old) || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
    }
    Ok(stepped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subjects::delivery_queued;

    fn matches(pattern: &str, subject: &str) -> bool {
        let (p, s): (Vec<&str>, Vec<&str>) =
            (pattern.split('.').collect(), subject.split('.').collect());
        p.len() == s.len() && p.iter().zip(&s).all(|(p, s)| *p == "*" || p == s)
    }

    #[test]
    fn only_divisors_of_64_are_valid() {
        for p in [1, 2, 4, 8, 16, 32, 64] {
            assert_eq!(InboxPartitions::new(p).map(|p| p.get()), Ok(p as u32));
        }
        for p in [0, 3, 5, 6, 12, 48, 63, 65, 128, u64::from(u32::MAX) + 2] {
            assert_eq!(InboxPartitions::new(p), Err(InvalidPartitions(p)), "{p}");
        }
        assert_eq!(InboxPartitions::default(), InboxPartitions::ONE);
        let e = InboxPartitions::new(3).unwrap_err().to_string();
        assert!(e.contains("--inbox-partitions") && e.contains('3'), "{e}");
    }

    #[test]
    fn one_partition_is_todays_store() {
        let p = InboxPartitions::ONE;
        assert_eq!(p.stream_names(), [STREAM_INBOX]);
        assert_eq!(p.subjects(0), [DELIVERY_QUEUED_ALL, DELIVERY_QUEUED_LEGACY]);
        assert_eq!(p.legacy_stream(), STREAM_INBOX);
        assert_eq!(p.stream_of_address("home:bob"), STREAM_INBOX);
        for n in 0..PARTITIONS {
            assert_eq!(p.stream_of_partition(n), STREAM_INBOX);
        }
    }

    #[test]
    fn every_partition_and_subject_is_in_exactly_one_stream() {
        let users: Vec<String> = (0..2_000).map(|i| format!("home:u{i}")).collect();
        for p in [1u64, 2, 4, 8, 16, 32, 64] {
            let layout = InboxPartitions::new(p).unwrap();
            assert_eq!(layout.stream_names().len(), p as usize);
            // Each stream holds 64 / P partitions, each partition one stream.
            let mut owner = vec![None; PARTITIONS as usize];
            for i in 0..layout.streams() {
                let held: Vec<u32> = layout.partitions_of(i).collect();
                assert_eq!(held.len() as u32, PARTITIONS / layout.get());
                for n in held {
                    assert_eq!(owner[n as usize].replace(i), None, "P={p} n={n}");
                    assert_eq!(layout.index_of_partition(n), i);
                }
            }
            assert!(owner.iter().all(Option::is_some));
            // A recipient's store subject matches the subjects of its
            // stream and of no other; the helpers agree.
            for user in &users {
                let subject = delivery_queued(&crate::recipient_path(user));
                let holders: Vec<usize> = (0..layout.streams())
                    .filter(|&i| layout.subjects(i).iter().any(|s| matches(s, &subject)))
                    .collect();
                let i = layout.index_of_subject(&subject).unwrap();
                assert_eq!(holders, [i], "P={p} {subject}");
                assert_eq!(
                    layout.stream_of_subject(&subject).unwrap(),
                    layout.stream_name(i)
                );
                assert_eq!(layout.stream_of_address(user), layout.stream_name(i));
            }
            // The legacy layout is stream 0's.
            let legacy = format!(
                "{DELIVERY_QUEUED_PREFIX}.{}",
                crate::recipient_key("home:bob")
            );
            assert_eq!(layout.index_of_subject(&legacy), Some(0));
            assert!(layout.subjects(0).iter().any(|s| matches(s, &legacy)));
            assert!((1..layout.streams())
                .all(|i| !layout.subjects(i).iter().any(|s| matches(s, &legacy))));
            assert_eq!(
                layout.index_of_subject("interop.v1.delivery.acked.x.y"),
                None
            );
        }
    }

    fn led(leaders: &[(&str, &str)], nodes: &[&str]) -> BTreeMap<String, Leadership> {
        leaders
            .iter()
            .map(|(stream, leader)| {
                (
                    stream.to_string(),
                    Leadership {
                        leader: leader.to_string(),
                        peers: nodes.iter().map(|n| n.to_string()).collect(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_stream_steps_down_only_where_leaders_are_uneven() {
        let nodes = ["n0", "n1", "n2"];
        // 5, 2, 1: one of n1's.
        let uneven = led(
            &[
                ("s0", "n1"),
                ("s1", "n1"),
                ("s2", "n0"),
                ("s3", "n1"),
                ("s4", "n2"),
                ("s5", "n1"),
                ("s6", "n0"),
                ("s7", "n1"),
            ],
            &nodes,
        );
        let s = stream_to_step_down(&uneven).expect("uneven");
        assert_eq!(uneven[&s].leader, "n1");
        // 3, 3, 2 (as even as 8 on 3 gets): none.
        let even = led(
            &[
                ("s0", "n0"),
                ("s1", "n1"),
                ("s2", "n2"),
                ("s3", "n0"),
                ("s4", "n1"),
                ("s5", "n2"),
                ("s6", "n0"),
                ("s7", "n1"),
            ],
            &nodes,
        );
        assert_eq!(stream_to_step_down(&even), None);
        // 4, 4, 0 after a server came back: one of the 4s moves.
        let back = led(
            &[("s0", "n0"), ("s1", "n0"), ("s2", "n0"), ("s3", "n0")]
                .into_iter()
                .chain([("s4", "n1"), ("s5", "n1"), ("s6", "n1"), ("s7", "n1")])
                .collect::<Vec<_>>(),
            &nodes,
        );
        assert!(stream_to_step_down(&back).is_some());
        // A server that cannot take over (not a peer, or not current)
        // does not count: single replicas never step down.
        let single: BTreeMap<String, Leadership> = (0..8)
            .map(|i| {
                (
                    format!("s{i}"),
                    Leadership {
                        leader: "n0".into(),
                        peers: vec!["n0".into()],
                    },
                )
            })
            .collect();
        assert_eq!(stream_to_step_down(&single), None);
    }

    #[test]
    fn names_with_more_partitions_are_numbered() {
        let p = InboxPartitions::new(4).unwrap();
        assert_eq!(
            p.stream_names(),
            [
                "INTEROP_INBOX_0",
                "INTEROP_INBOX_1",
                "INTEROP_INBOX_2",
                "INTEROP_INBOX_3"
            ]
        );
        assert_eq!(p.stream_of_partition(6), "INTEROP_INBOX_2");
        assert_eq!(
            p.subjects(1),
            (0..16)
                .map(|k| format!("interop.v1.delivery.queued.*.{}.*", 4 * k + 1))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            p.stream_of_subject(&delivery_queued("home.13.00ff"))
                .as_deref(),
            Some("INTEROP_INBOX_1")
        );
        for name in ["INTEROP_INBOX", "INTEROP_INBOX_0", "INTEROP_INBOX_63"] {
            assert!(is_store_stream(name), "{name}");
        }
        for name in [
            "INTEROP_INBOXES",
            "INTEROP_INBOX_",
            "INTEROP_INBOX_x",
            "INTEROP_INGEST",
        ] {
            assert!(!is_store_stream(name), "{name}");
        }
    }
}
