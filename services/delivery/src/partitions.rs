//! Which provider session owns which partition (docs/adr/0031).
//!
//! Every open provider session, on any delivery replica, writes a heartbeat
//! (`interop.v1.delivery.provider.members.<provider>.<session>`) and reads
//! everyone else's. From the sessions alive, each one computes the same
//! assignment (rendezvous hashing: a session joining or leaving moves only
//! the partitions it takes or gives), and takes a partition only through
//! its **lease** (`interop.v1.delivery.provider.leases.<provider>.<n>`),
//! written compare-and-set on the subject's last sequence: so a partition
//! has one owner at a time even while sessions disagree on who is alive. An
//! owner renews its leases; one that stops (crash, a cut connection) loses
//! them when they run out, and the partition's new owner reads on from the
//! partition's cursor. A session giving a partition away stores its cursor
//! first and then marks the lease released, so the next owner starts at
//! once.
//!
//! Records are text: a heartbeat is `<expires ms>` or `left`; a lease is
//! `<owner session> <expires ms>` or `released`. Times are the writer's wall
//! clock: replicas' clocks must agree within a few seconds (less than
//! [`LEASE_TTL`] minus [`RENEW_EVERY`]).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::LastRawMessageErrorKind;

use interop_bus::subjects::{provider_lease, provider_member};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a lease holds without renewal.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(10);
/// How often an owner renews its leases and a session writes its heartbeat.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How long a heartbeat counts a session alive.
pub(crate) const MEMBER_TTL: Duration = Duration::from_secs(8);

fn now_ms() -> i64 {
    interop_proto::now_ms()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The session that should own `partition` among `alive` (none when no
/// session is alive): the highest hash of (session, partition).
pub(crate) fn owner_of(partition: u32, alive: &BTreeSet<String>) -> Option<&str> {
    alive
        .iter()
        .max_by_key(|s| {
            let h = interop_bus::recipient_key(&format!("{s}:{partition}"));
            u64::from_str_radix(&h[..16], 16).unwrap_or(0)
        })
        .map(String::as_str)
}

/// The partitions `me` should own among `alive` (`me` counts as alive).
pub(crate) fn wanted(me: &str, alive: &BTreeSet<String>, partitions: u32) -> BTreeSet<u32> {
    let mut alive = alive.clone();
    alive.insert(me.to_owned());
    (0..partitions)
        .filter(|&p| owner_of(p, &alive) == Some(me))
        .collect()
}

/// What a heartbeat record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Member {
    AliveUntil(i64),
    Left,
}

impl Member {
    pub(crate) fn parse(payload: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(payload).ok()?;
        if s == "left" {
            return Some(Self::Left);
        }
        s.parse().ok().map(Self::AliveUntil)
    }
}

/// The sessions alive according to heartbeats `members` (session id →
/// record) at `now_ms`.
pub(crate) fn alive(members: &HashMap<String, Member>, now_ms: i64) -> BTreeSet<String> {
    members
        .iter()
        .filter(|(_, m)| matches!(m, Member::AliveUntil(t) if *t > now_ms))
        .map(|(s, _)| s.clone())
        .collect()
}

/// What a lease record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lease {
    Held { owner: String, until_ms: i64 },
    Released,
}

impl Lease {
    pub(crate) fn parse(payload: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(payload).ok()?;
        if s == "released" {
            return Some(Self::Released);
        }
        let (owner, until) = s.split_once(' ')?;
        Some(Self::Held {
            owner: owner.to_owned(),
            until_ms: until.parse().ok()?,
        })
    }

    fn encode(&self) -> String {
        match self {
            Self::Held { owner, until_ms } => format!("{owner} {until_ms}"),
            Self::Released => "released".to_owned(),
        }
    }

    /// Whether `me` may take a partition whose lease is this at `now_ms`.
    pub(crate) fn free_for(&self, me: &str, now_ms: i64) -> bool {
        match self {
            Self::Released => true,
            Self::Held { owner, until_ms } => owner == me || *until_ms <= now_ms,
        }
    }
}

/// One provider session's hold on the coordination stream.
pub(crate) struct Leases {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    provider: String,
    session: String,
}

impl Leases {
    pub(crate) fn new(
        js: jetstream::Context,
        stream: jetstream::stream::Stream,
        provider: &str,
        session: &str,
    ) -> Self {
        Self {
            js,
            stream,
            provider: provider.to_owned(),
            session: session.to_owned(),
        }
    }

    /// Writes this session's heartbeat (alive for [`MEMBER_TTL`]), or that
    /// it left.
    pub(crate) async fn heartbeat(&self, left: bool) -> Result<(), BoxError> {
        let payload = if left {
            "left".to_owned()
        } else {
            (now_ms() + ms(MEMBER_TTL)).to_string()
        };
        self.js
            .publish(
                provider_member(&self.provider, &self.session),
                payload.into(),
            )
            .await?
            .await?;
        Ok(())
    }

    /// Writes `lease` over the subject's last sequence `expected` (0: no
    /// record yet); the new sequence, or `None` when another writer came
    /// first.
    async fn write(
        &self,
        partition: u32,
        lease: &Lease,
        expected: u64,
    ) -> Result<Option<u64>, BoxError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(
                provider_lease(&self.provider, partition),
                headers,
                lease.encode().into(),
            )
            .await?;
        match ack.await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn held(&self) -> Lease {
        Lease::Held {
            owner: self.session.clone(),
            until_ms: now_ms() + ms(LEASE_TTL),
        }
    }

    /// Takes `partition` if its lease is free (never written, released, run
    /// out, or already this session's); the lease's sequence, or `None`.
    pub(crate) async fn acquire(&self, partition: u32) -> Result<Option<u64>, BoxError> {
        let subject = provider_lease(&self.provider, partition);
        let expected = match self.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => {
                let free = Lease::parse(&m.payload)
                    .map(|l| l.free_for(&self.session, now_ms()))
                    // An unreadable record: whoever wrote it is not us.
                    .unwrap_or(true);
                if !free {
                    return Ok(None);
                }
                m.sequence
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => 0,
            Err(e) => return Err(e.into()),
        };
        self.write(partition, &self.held(), expected).await
    }

    /// Renews a lease this session holds at sequence `seq`; `None` when it
    /// is no longer this session's (it ran out and another took it).
    pub(crate) async fn renew(&self, partition: u32, seq: u64) -> Result<Option<u64>, BoxError> {
        self.write(partition, &self.held(), seq).await
    }

    /// Gives a partition back (its cursor stored first by the caller).
    pub(crate) async fn release(&self, partition: u32, seq: u64) -> Result<(), BoxError> {
        self.write(partition, &Lease::Released, seq).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn every_partition_has_one_owner_and_a_join_moves_only_what_it_takes() {
        let two = set(&["a", "b"]);
        let (a, b) = (wanted("a", &two, 64), wanted("b", &two, 64));
        assert!(a.is_disjoint(&b));
        assert_eq!(a.len() + b.len(), 64);
        // Neither gets (nearly) nothing.
        assert!(a.len() > 16 && b.len() > 16, "{} {}", a.len(), b.len());
        let three = set(&["a", "b", "c"]);
        let (a3, b3, c3) = (
            wanted("a", &three, 64),
            wanted("b", &three, 64),
            wanted("c", &three, 64),
        );
        assert_eq!(a3.len() + b3.len() + c3.len(), 64);
        // a and b keep what they had unless c took it.
        assert!(a3.is_subset(&a) && b3.is_subset(&b));
        assert!(c3.iter().all(|p| a.contains(p) || b.contains(p)));
        // Alone, a session wants everything (even before its own heartbeat
        // is read back).
        assert_eq!(wanted("a", &BTreeSet::new(), 64).len(), 64);
    }

    #[test]
    fn heartbeats_and_leases_read_back_and_run_out() {
        assert_eq!(Member::parse(b"left"), Some(Member::Left));
        assert_eq!(Member::parse(b"123"), Some(Member::AliveUntil(123)));
        assert_eq!(Member::parse(b"x"), None);
        let members = HashMap::from([
            ("a".to_owned(), Member::AliveUntil(2_000)),
            ("b".to_owned(), Member::AliveUntil(500)),
            ("c".to_owned(), Member::Left),
        ]);
        assert_eq!(alive(&members, 1_000), set(&["a"]));

        let held = Lease::Held {
            owner: "a".into(),
            until_ms: 1_000,
        };
        assert_eq!(Lease::parse(held.encode().as_bytes()), Some(held.clone()));
        assert_eq!(Lease::parse(b"released"), Some(Lease::Released));
        assert!(held.free_for("a", 0));
        assert!(!held.free_for("b", 999));
        assert!(held.free_for("b", 1_000));
        assert!(Lease::Released.free_for("b", 0));
    }
}
