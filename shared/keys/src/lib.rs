//! # interop-keys: the key directory
//!
//! Users' devices publish their public keys here through ingest, and other
//! users' apps fetch them to set up end-to-end-encrypted sessions (Olm, the
//! Signal protocol, MLS). The gateway never holds a private key, and the key
//! bytes are opaque to it (docs/adr/0025).
//!
//! ## Where it lives
//!
//! - **Long-term keys** of a user's devices (identity, signing, signed
//!   prekey, last-resort prekeys, the last-resort KeyPackage): one message
//!   per user in the stream `INTEROP_KEYS_DEVICES`, subject
//!   `interop.v1.keys.devices.<user key>` (the SHA-256-derived key subjects
//!   use; never the address), the last one kept, value `StoredDevices`
//!   (protobuf). Writes are compare-and-set on the subject's last sequence
//!   (`Nats-Expected-Last-Subject-Sequence`), so two replicas publishing at
//!   once cannot lose a device. (A stream rather than a KV bucket: async-nats
//!   0.51 cannot create a bucket on nats-server 2.9, ADR 3.)
//! - **One-time prekeys and KeyPackages**: one message per key in the stream
//!   `INTEROP_KEYS_POOL`, subject `interop.v1.keys.pool.<user key>.<device>.
//!   <otk|kp>`. A fetch **claims** a key by deleting its message: JetStream
//!   deletes a message once, through the stream's leader, so exactly one
//!   fetcher gets each key, whichever directory replica it runs in and
//!   across a leader change (a delete that lost the race fails and the
//!   fetcher takes the next key). An empty pool means the last-resort key.
//!   Claims of one pool in one instance are coalesced: one batch claim at a
//!   time reads a key for each waiting fetch and removes them (a purge of
//!   the pool's prefix for a batch), so an instance's fetches do not race
//!   each other.
//! - **A cache of users' devices per instance**, for fetches only: kept at
//!   most [`DEVICE_CACHE_TTL`], dropped when a write of the user goes by
//!   (a core-NATS subscription to the devices' subjects).
//!
//! Both are replicated like the pipeline's streams (`--stream-replicas`).
//! Redis holds nothing of the directory.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt};
use prost::Message as _;
use tokio::sync::oneshot;
use tracing::warn;

use interop_bus::subjects::{
    keys_pool, KEYS_DEVICES_ALL, KEYS_DEVICES_PREFIX, STREAM_KEYS_DEVICES, STREAM_KEYS_POOL,
};
use interop_proto::keys::{
    check_publish, KeyRejection, LOW_KEY_PACKAGES, LOW_ONE_TIME_PREKEYS, MAX_DEVICES_PER_USER,
    MAX_KEY_PACKAGES_PER_DEVICE, MAX_ONE_TIME_PREKEYS_PER_DEVICE,
};
use interop_proto::v1::{
    Bundle, DeviceKeyPackage, PublicKey, PublishKeys, RejectCode, StoredDevice, StoredDevices,
};

/// The pool of one-time prekeys.
const OTK: &str = "otk";
/// The pool of MLS KeyPackages.
const KP: &str = "kp";
/// Tries at a compare-and-set of a user's entry before giving up (another
/// writer won each time).
const CAS_ATTEMPTS: usize = 16;
/// Keys one batch claim takes at most (for as many waiting fetches).
const MAX_BATCH: usize = 32;
/// From this many keys on, a batch claim removes them with one prefix purge
/// instead of a delete each: each removal is the expensive request, and a
/// filtered purge costs about four deletes on nats-server 2.9
/// (docs/benchmarks.md).
const PURGE_FROM: usize = 4;
/// Read-and-remove rounds a batch claim makes before it gives up as
/// unavailable (not with the last-resort key): each round that gets nothing
/// means another claimer took keys, so this is reached only under a storm
/// of claimers on one device while keys keep arriving.
const CLAIM_ROUNDS: usize = 1_000;

/// A claim waiting for its key.
type Waiter = oneshot::Sender<Result<Claimed, KeysError>>;
/// A claimed key and its sequence in the pool stream.
type Key = (Bytes, u64);

/// What a claim got.
struct Claimed {
    /// `None` when the pool was empty.
    key: Option<Bytes>,
    /// The key's sequence in the pool stream (0 without a key).
    sequence: u64,
    /// The claim saw the pool empty after it (nothing left to count).
    emptied: bool,
}

/// Why a directory operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The request is refused (a typed code for the provider); nothing was
    /// stored.
    #[error("{}: {}", .0.code.as_str_name(), .0.detail)]
    Rejected(KeyRejection),
    /// JetStream did not answer or failed: retry later.
    #[error("the key directory is unavailable: {0}")]
    Unavailable(String),
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> KeysError {
    KeysError::Unavailable(format!("{what}: {e}"))
}

fn rejected(code: RejectCode, detail: impl Into<String>) -> KeysError {
    KeysError::Rejected(KeyRejection::new(code, detail))
}

/// Unclaimed keys in a device's pools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub one_time_prekeys: u32,
    pub key_packages: u32,
}

/// Which pool of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    OneTimePrekeys,
    KeyPackages,
}

/// A device pool a fetch left low (under [`LOW_ONE_TIME_PREKEYS`] or
/// [`LOW_KEY_PACKAGES`]) or empty: its owner should publish more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowPool {
    pub device_id: String,
    pub pool: Pool,
    /// Unclaimed keys left.
    pub left: u32,
    /// What the device has published so far (its highest one-time prekey
    /// id, or its count of KeyPackages): a notice about this pool is sent
    /// once per generation (a top-up starts a new one).
    pub generation: u64,
}

/// What a fetch handed out, and the pools it left low.
#[derive(Debug, Clone, Default)]
pub struct Fetched<T> {
    pub items: Vec<T>,
    pub low: Vec<LowPool>,
}

/// The key directory, over one JetStream context. Any number of instances
/// (ingest replicas) may serve the same directory at once.
#[derive(Clone)]
pub struct KeyDirectory {
    js: jetstream::Context,
    devices: stream::Stream,
    pool: stream::Stream,
    /// Claims waiting per pool subject; a pool is here while a driver runs
    /// its claims.
    claims: Arc<Mutex<HashMap<String, Vec<Waiter>>>>,
    /// Users' devices as fetches last read them (see [`DeviceCache`]).
    cache: Arc<DeviceCache>,
}

/// How long a fetch may use a user's devices read before, in one instance:
/// the bound on serving a changed or erased device list if this instance
/// missed the change's notification (a dropped NATS connection loses
/// them). Normally a write drops the copy as soon as its notification
/// arrives.
pub const DEVICE_CACHE_TTL: Duration = Duration::from_secs(1);
/// After a change notification for a user, reads of their devices are not
/// kept for this long: on a replicated stream the notification can arrive
/// before the write is stored on the replica a read asks.
const DEVICE_CACHE_SETTLE: Duration = Duration::from_millis(250);
/// Users kept at most; beyond it, the cache is cleared.
const DEVICE_CACHE_USERS: usize = 100_000;

/// Each instance's copy of users' devices for fetches (ADR 25). Every write
/// of a user's devices (publish, remove_device, and erase_user, which
/// writes an empty list before purging) is a message on
/// `interop.v1.keys.devices.<user key>`; each instance subscribes to those
/// subjects with core NATS and drops the user's copy when one arrives.
/// Publishes, removals and device lists read the stream itself.
#[derive(Default)]
struct DeviceCache {
    entries: Mutex<HashMap<String, CachedDevices>>,
    /// Bumped by every change notification: a read that started before one
    /// is not kept.
    changes: AtomicU64,
}

enum CachedDevices {
    Read(Arc<StoredDevices>, Instant),
    /// A change arrived at this instant: not cached until it settles.
    Changed(Instant),
}

impl DeviceCache {
    fn get(&self, subject: &str) -> Option<Arc<StoredDevices>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(subject) {
            Some(CachedDevices::Read(d, at)) if at.elapsed() < DEVICE_CACHE_TTL => Some(d.clone()),
            _ => None,
        }
    }

    fn keep(&self, subject: &str, devices: Arc<StoredDevices>, changes_before: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if self.changes.load(Ordering::SeqCst) != changes_before {
            return;
        }
        if let Some(CachedDevices::Changed(at)) = entries.get(subject) {
            if at.elapsed() < DEVICE_CACHE_SETTLE {
                return;
            }
        }
        if entries.len() >= DEVICE_CACHE_USERS {
            entries.clear();
        }
        entries.insert(
            subject.to_owned(),
            CachedDevices::Read(devices, Instant::now()),
        );
    }

    fn changed(&self, subject: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        self.changes.fetch_add(1, Ordering::SeqCst);
        entries.insert(subject.to_owned(), CachedDevices::Changed(Instant::now()));
    }
}

impl KeyDirectory {
    /// The directory on the streams `interop_bus::ensure_streams` made.
    pub async fn open(js: jetstream::Context) -> Result<Self, KeysError> {
        let devices = interop_bus::open_stream(&js, STREAM_KEYS_DEVICES)
            .await
            .map_err(|e| unavailable("opening the key directory's devices stream", e))?;
        let pool = interop_bus::open_stream(&js, STREAM_KEYS_POOL)
            .await
            .map_err(|e| unavailable("opening the key pool stream", e))?;
        // Subscribed before the first read, so no change is missed after.
        let changes = js
            .client()
            .subscribe(KEYS_DEVICES_ALL)
            .await
            .map_err(|e| unavailable("subscribing to device changes", e))?;
        let cache = Arc::new(DeviceCache::default());
        tokio::spawn(watch_device_changes(changes, Arc::downgrade(&cache)));
        Ok(Self {
            js,
            devices,
            pool,
            claims: Arc::default(),
            cache,
        })
    }

    fn devices_subject(user: &str) -> String {
        format!("{KEYS_DEVICES_PREFIX}.{}", interop_bus::recipient_key(user))
    }

    /// A user's devices and the subject's last sequence (0: none yet).
    async fn load(&self, user: &str) -> Result<(StoredDevices, u64), KeysError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        match self
            .devices
            .direct_get_last_for_subject(Self::devices_subject(user))
            .await
        {
            Ok(m) => {
                let devices = StoredDevices::decode(m.payload)
                    .map_err(|e| unavailable("decoding a user's devices", e))?;
                Ok((devices, m.sequence))
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok((StoredDevices::default(), 0)),
            Err(e) => Err(unavailable("reading a user's devices", e)),
        }
    }

    /// Writes `devices` if the user's last write is still `revision` (0:
    /// there is none); `Ok(false)` if another writer came first.
    async fn store(
        &self,
        user: &str,
        devices: &StoredDevices,
        revision: u64,
    ) -> Result<bool, KeysError> {
        use async_nats::jetstream::context::PublishErrorKind;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            revision.to_string().as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(
                Self::devices_subject(user),
                headers,
                // With the address: key transparency commits under it.
                StoredDevices {
                    user: user.to_owned(),
                    ..devices.clone()
                }
                .encode_to_vec()
                .into(),
            )
            .await
            .map_err(|e| unavailable("writing a user's devices", e))?;
        match ack.await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
            Err(e) => Err(unavailable("writing a user's devices", e)),
        }
    }

    /// A user's devices for a fetch: this instance's copy if it has a
    /// fresh one ([`DeviceCache`]), else read.
    async fn devices_for_fetch(&self, user: &str) -> Result<Arc<StoredDevices>, KeysError> {
        let subject = Self::devices_subject(user);
        if let Some(d) = self.cache.get(&subject) {
            return Ok(d);
        }
        let before = self.cache.changes.load(Ordering::SeqCst);
        let devices = Arc::new(self.load(user).await?.0);
        self.cache.keep(&subject, devices.clone(), before);
        Ok(devices)
    }

    /// A user's devices as stored.
    pub async fn devices(&self, user: &str) -> Result<Vec<StoredDevice>, KeysError> {
        Ok(self.load(user).await?.0.devices)
    }

    /// Unclaimed keys in a device's pools.
    pub async fn pool_counts(&self, user: &str, device_id: &str) -> Result<PoolCounts, KeysError> {
        let ukey = interop_bus::recipient_key(user);
        let filter = format!(
            "{}.>",
            keys_pool(&ukey, device_id, "x").trim_end_matches(".x")
        );
        let mut subjects = self
            .pool
            .info_with_subjects(&filter)
            .await
            .map_err(|e| unavailable("counting a device's keys", e))?;
        let mut counts = PoolCounts::default();
        while let Some((subject, n)) = subjects
            .try_next()
            .await
            .map_err(|e| unavailable("counting a device's keys", e))?
        {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            if subject.ends_with(".otk") {
                counts.one_time_prekeys = n;
            } else if subject.ends_with(".kp") {
                counts.key_packages = n;
            }
        }
        Ok(counts)
    }

    /// Publishes or replaces a device's keys and adds to its pools. `user`
    /// must be the checked owner of the publish (the endpoint checks
    /// ownership and opt-in). Refused without storing anything for: a
    /// malformed publish, a one-time prekey id not above every id the device
    /// published before (`KEY_ID_REUSED`: a replay), a pool or the user's
    /// device list over its limit (`TOO_MANY_KEYS`).
    pub async fn publish(&self, user: &str, p: &PublishKeys) -> Result<PoolCounts, KeysError> {
        check_publish(p).map_err(KeysError::Rejected)?;
        // check_publish made sure the device is there.
        let Some(keys) = p.device.clone() else {
            return Err(rejected(RejectCode::MissingField, "device is missing"));
        };
        let ukey = interop_bus::recipient_key(user);
        for _ in 0..CAS_ATTEMPTS {
            let (mut stored, revision) = self.load(user).await?;
            let existing = stored.devices.iter().position(|d| {
                d.keys
                    .as_ref()
                    .is_some_and(|k| k.device_id == keys.device_id)
            });
            if existing.is_none() && stored.devices.len() >= MAX_DEVICES_PER_USER {
                return Err(rejected(
                    RejectCode::TooManyKeys,
                    format!("a user has at most {MAX_DEVICES_PER_USER} devices"),
                ));
            }
            let previous = existing
                .map(|i| stored.devices[i].clone())
                .unwrap_or_default();
            if let Some(first) = p.one_time_prekeys.first() {
                if existing.is_some() && first.key_id <= previous.max_one_time_prekey_id {
                    return Err(rejected(
                        RejectCode::KeyIdReused,
                        format!(
                            "one-time prekey ids must be above {}, the highest this device published",
                            previous.max_one_time_prekey_id
                        ),
                    ));
                }
            }
            let counts = if existing.is_some() {
                self.pool_counts(user, &keys.device_id).await?
            } else {
                PoolCounts::default()
            };
            let otks = counts.one_time_prekeys as usize + p.one_time_prekeys.len();
            let kps = counts.key_packages as usize + p.key_packages.len();
            if otks > MAX_ONE_TIME_PREKEYS_PER_DEVICE || kps > MAX_KEY_PACKAGES_PER_DEVICE {
                return Err(rejected(
                    RejectCode::TooManyKeys,
                    format!(
                        "a device holds at most {MAX_ONE_TIME_PREKEYS_PER_DEVICE} one-time prekeys and {MAX_KEY_PACKAGES_PER_DEVICE} key packages"
                    ),
                ));
            }
            // The pools first: a key is in the pool before the device's
            // entry says it was published. A retry republishes with the same
            // message ids, which the stream drops as duplicates.
            let mut acks = Vec::new();
            for k in &p.one_time_prekeys {
                let id = format!("otk.{ukey}.{}.{}", keys.device_id, k.key_id);
                acks.push(
                    self.publish_pool(
                        &keys_pool(&ukey, &keys.device_id, OTK),
                        id,
                        k.encode_to_vec(),
                    )
                    .await?,
                );
            }
            for (i, kp) in p.key_packages.iter().enumerate() {
                let n = previous.key_packages_published + i as u64 + 1;
                let id = format!("kp.{ukey}.{}.{n}", keys.device_id);
                acks.push(
                    self.publish_pool(&keys_pool(&ukey, &keys.device_id, KP), id, kp.to_vec())
                        .await?,
                );
            }
            for ack in acks {
                ack.await.map_err(|e| unavailable("storing a key", e))?;
            }
            let updated = StoredDevice {
                keys: Some(keys.clone()),
                max_one_time_prekey_id: p
                    .one_time_prekeys
                    .last()
                    .map_or(previous.max_one_time_prekey_id, |k| k.key_id),
                key_packages_published: previous.key_packages_published
                    + p.key_packages.len() as u64,
                updated_at_ms: interop_proto::now_ms(),
            };
            match existing {
                Some(i) => stored.devices[i] = updated,
                None => stored.devices.push(updated),
            }
            if self.store(user, &stored, revision).await? {
                return Ok(PoolCounts {
                    one_time_prekeys: u32::try_from(otks).unwrap_or(u32::MAX),
                    key_packages: u32::try_from(kps).unwrap_or(u32::MAX),
                });
            }
        }
        Err(KeysError::Unavailable(
            "the user's devices changed too often at once; retry".into(),
        ))
    }

    async fn publish_pool(
        &self,
        subject: &str,
        msg_id: String,
        payload: Vec<u8>,
    ) -> Result<jetstream::context::PublishAckFuture, KeysError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        self.js
            .publish_with_headers(subject.to_owned(), headers, payload.into())
            .await
            .map_err(|e| unavailable("storing a key", e))
    }

    /// Claims one key of a pool: it is deleted from the pool, so no other
    /// fetcher gets it. `None` when the pool is empty.
    ///
    /// Concurrent claims of one pool in this instance are coalesced: one
    /// batch claim runs at a time per pool and takes a key for each claim
    /// that waited for it ([`claim_batch`](Self::claim_batch)), so they do
    /// not race each other for the first key.
    async fn claim(&self, subject: &str) -> Result<Claimed, KeysError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
            match claims.get_mut(subject) {
                Some(waiting) => {
                    waiting.push(tx);
                    false
                }
                None => {
                    claims.insert(subject.to_owned(), vec![tx]);
                    true
                }
            }
        };
        if start {
            // A task of its own, so a caller that gives up (a closed
            // connection) does not strand the claims queued behind it.
            tokio::spawn(self.clone().drive_claims(subject.to_owned()));
        }
        rx.await
            .map_err(|_| KeysError::Unavailable("a key claim was interrupted".into()))?
    }

    /// Runs batch claims of one pool for the claims queued in this instance
    /// until none is left.
    async fn drive_claims(self, subject: String) {
        // If this ends other than by finding no claim queued (a panic), the
        // pool's queue is removed, so a later claim starts a new driver;
        // queued claims then see their sender dropped and fail as
        // unavailable. The normal end removes it under the same lock that
        // saw it empty, so no claim queued meanwhile is dropped.
        struct Abort<'a> {
            claims: &'a Mutex<HashMap<String, Vec<Waiter>>>,
            subject: &'a str,
            armed: bool,
        }
        impl Drop for Abort<'_> {
            fn drop(&mut self) {
                if self.armed {
                    self.claims
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(self.subject);
                }
            }
        }
        let mut abort = Abort {
            claims: &self.claims,
            subject: &subject,
            armed: true,
        };
        // Keys claimed for waiters that left before they were answered:
        // handed to the next waiters.
        let mut spare: Vec<Key> = Vec::new();
        loop {
            let batch: Vec<Waiter> = {
                let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
                let Some(waiting) = claims.get_mut(&subject) else {
                    abort.armed = false;
                    return;
                };
                waiting.retain(|w| !w.is_closed());
                if waiting.is_empty() {
                    claims.remove(&subject);
                    abort.armed = false;
                    if !spare.is_empty() {
                        warn!(
                            keys = spare.len(),
                            "Claimed keys whose fetchers left are lost; the owner's pool count shows it."
                        );
                    }
                    return;
                }
                let n = waiting.len().min(MAX_BATCH);
                waiting.drain(..n).collect()
            };
            let wanted = batch.len().saturating_sub(spare.len());
            let (mut keys, outcome) = if wanted == 0 {
                (Vec::new(), Ok(false))
            } else {
                self.claim_batch(&subject, wanted).await
            };
            keys.splice(0..0, spare.drain(..));
            let mut keys = keys.into_iter();
            for w in batch {
                let answer = match (keys.next(), &outcome) {
                    (Some((k, sequence)), outcome) => Ok(Claimed {
                        key: Some(k),
                        sequence,
                        emptied: keys.len() == 0 && outcome == &Ok(true),
                    }),
                    (None, Ok(_)) => Ok(Claimed {
                        key: None,
                        sequence: 0,
                        emptied: true,
                    }),
                    (None, Err(e)) => Err(KeysError::Unavailable(e.clone())),
                };
                if let Err(Ok(Claimed {
                    key: Some(k),
                    sequence,
                    ..
                })) = w.send(answer)
                {
                    spare.push((k, sequence));
                }
            }
            spare.extend(keys);
        }
    }

    /// Claims up to `n` keys of a pool in as few writes as it can: reads
    /// the pool's first keys (direct gets, which any replica answers), then
    /// removes them, which JetStream does once, through the stream's leader:
    ///
    /// - fewer than [`PURGE_FROM`]: deleted one by one in pool order; each
    ///   delete that succeeds is this claim's key, one that fails was taken
    ///   by another claimer.
    /// - more: one purge of the pool's messages below the last key read
    ///   (`purge` with the pool's subject as filter and a sequence), which
    ///   answers how many it removed.
    ///
    /// Every claimer removes only a prefix of a pool (a delete here is of
    /// the pool's first key: the keys before it are gone), and the stream's
    /// limits drop its oldest keys, so a pool is always a suffix of the keys
    /// published to it: of the keys a purge's claim read, the purge removed
    /// the last `purged` (the others were gone already), and those are this
    /// claim's. Keys published meanwhile have higher sequences and are not
    /// touched. (So no other code may delete a pool key out of order: not
    /// the single-key claims before this, during a rolling upgrade.)
    ///
    /// A claim that got fewer than `n` reads again from the pool's start, so
    /// it gives up only when the pool is empty. What it got, and whether it
    /// saw the pool empty after (if it got fewer than `n`, it did: the rest
    /// get the last-resort key), or the error that stopped it (a key whose
    /// removal is unknown is not handed out).
    async fn claim_batch(&self, subject: &str, n: usize) -> (Vec<Key>, Result<bool, String>) {
        use async_nats::jetstream::stream::{DeleteMessageErrorKind, DirectGetErrorKind};
        let mut got = Vec::with_capacity(n);
        for _ in 0..CLAIM_ROUNDS {
            let want = n - got.len();
            let mut read = Vec::with_capacity(want);
            let mut from = None;
            while read.len() < want {
                match self.pool.direct_get_next_for_subject(subject, from).await {
                    Ok(m) => {
                        from = Some(m.sequence + 1);
                        read.push(m);
                    }
                    Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                    Err(e) => return (got, Err(format!("reading a key pool: {e}"))),
                }
            }
            let Some(last) = read.last() else {
                return (got, Ok(true));
            };
            let short = read.len() < want;
            let mut lost = false;
            if read.len() < PURGE_FROM {
                for m in read {
                    match self.pool.delete_message(m.sequence).await {
                        Ok(true) => got.push((m.payload, m.sequence)),
                        // Another claimer took it ("no message found").
                        Ok(false) => lost = true,
                        Err(e) if matches!(e.kind(), DeleteMessageErrorKind::JetStream(_)) => {
                            lost = true
                        }
                        Err(e) => return (got, Err(format!("claiming a key: {e}"))),
                    }
                }
            } else {
                let purged = match self
                    .pool
                    .purge()
                    .filter(subject)
                    .sequence(last.sequence + 1)
                    .await
                {
                    Ok(r) => r.purged as usize,
                    Err(e) => return (got, Err(format!("claiming keys: {e}"))),
                };
                if purged > read.len() {
                    // Cannot happen while every claimer removes prefixes; if
                    // it does, these keys cannot be told from another's.
                    warn!(
                        purged,
                        read = read.len(),
                        "A claim purged more keys than it read; handing none of them out."
                    );
                    continue;
                }
                lost = purged < read.len();
                let first = read.len() - purged;
                got.extend(read.drain(first..).map(|m| (m.payload, m.sequence)));
            }
            if got.len() == n || (short && !lost) {
                // All wanted, or the pool ran out at the read and all of it
                // was this claim's.
                return (got, Ok(short && !lost));
            }
        }
        (
            got,
            Err("claims of this pool kept losing to other claimers; retry".into()),
        )
    }

    /// Keys of a pool after `sequence` (a claimed key's: a pool is a suffix,
    /// so these are all it has left), counted up to `limit` by reading them
    /// (direct gets): a stream info with a subject filter is far slower on
    /// nats-server 2.9, and made a storm that drained its pools collapse
    /// (docs/benchmarks.md).
    async fn count_after(
        &self,
        subject: &str,
        sequence: u64,
        limit: usize,
    ) -> Result<usize, KeysError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let mut from = sequence + 1;
        for n in 0..limit {
            match self
                .pool
                .direct_get_next_for_subject(subject, Some(from))
                .await
            {
                Ok(m) => from = m.sequence + 1,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(n),
                Err(e) => return Err(unavailable("counting a key pool", e)),
            }
        }
        Ok(limit)
    }

    /// Counts a pool after a claim that may have left it low; `Some` when
    /// it did.
    async fn check_low(
        &self,
        user: &str,
        device_id: &str,
        pool: Pool,
        generation: u64,
    ) -> Result<Option<LowPool>, KeysError> {
        let counts = self.pool_counts(user, device_id).await?;
        let (left, low) = match pool {
            Pool::OneTimePrekeys => (counts.one_time_prekeys, LOW_ONE_TIME_PREKEYS),
            Pool::KeyPackages => (counts.key_packages, LOW_KEY_PACKAGES),
        };
        Ok(((left as usize) < low).then(|| LowPool {
            device_id: device_id.to_owned(),
            pool,
            left,
            generation,
        }))
    }

    /// A bundle for each device of `user` (or those named), each claiming
    /// one one-time prekey, and the pools the claims left low.
    /// `UNKNOWN_DEVICE` if a named device is not there.
    ///
    /// A pool the claim saw empty is reported as is. Otherwise counting it
    /// costs requests (reading up to [`LOW_ONE_TIME_PREKEYS`] keys after
    /// the claimed one), so it is counted only when the claimed key was
    /// among the last [`LOW_ONE_TIME_PREKEYS`] the device published (claims
    /// go in pool order).
    pub async fn fetch_bundles(
        &self,
        user: &str,
        device_ids: &[String],
    ) -> Result<Fetched<Bundle>, KeysError> {
        let stored = self.devices_for_fetch(user).await?;
        let devices = &stored.devices;
        let chosen: Vec<&StoredDevice> = if device_ids.is_empty() {
            devices.iter().collect()
        } else {
            let mut chosen = Vec::new();
            for id in device_ids {
                let d = devices
                    .iter()
                    .find(|d| d.keys.as_ref().is_some_and(|k| &k.device_id == id))
                    .ok_or_else(|| rejected(RejectCode::UnknownDevice, "no such device"))?;
                chosen.push(d);
            }
            chosen
        };
        let ukey = interop_bus::recipient_key(user);
        let mut out = Fetched {
            items: Vec::with_capacity(chosen.len()),
            low: Vec::new(),
        };
        for d in chosen {
            let Some(keys) = d.keys.clone() else { continue };
            let claimed = self.claim(&keys_pool(&ukey, &keys.device_id, OTK)).await?;
            let one_time_prekey = match claimed.key {
                Some(bytes) => Some(
                    PublicKey::decode(bytes)
                        .map_err(|e| unavailable("decoding a one-time prekey", e))?,
                ),
                None => None,
            };
            let generation = u64::from(d.max_one_time_prekey_id);
            let near_end = one_time_prekey
                .as_ref()
                .is_none_or(|k| u64::from(k.key_id) + LOW_ONE_TIME_PREKEYS as u64 > generation);
            if claimed.emptied {
                // Nothing left: no count needed.
                out.low.push(LowPool {
                    device_id: keys.device_id.clone(),
                    pool: Pool::OneTimePrekeys,
                    left: 0,
                    generation,
                });
            } else if near_end {
                let subject = keys_pool(&ukey, &keys.device_id, OTK);
                let left = self
                    .count_after(&subject, claimed.sequence, LOW_ONE_TIME_PREKEYS)
                    .await?;
                if left < LOW_ONE_TIME_PREKEYS {
                    out.low.push(LowPool {
                        device_id: keys.device_id.clone(),
                        pool: Pool::OneTimePrekeys,
                        left: u32::try_from(left).unwrap_or(u32::MAX),
                        generation,
                    });
                }
            }
            out.items.push(Bundle {
                device: Some(keys),
                one_time_prekey,
            });
        }
        Ok(out)
    }

    /// One KeyPackage for each device of `user`, claimed, or the device's
    /// last-resort KeyPackage when its pool is empty (devices with neither
    /// are left out), and the pools the claims left low (KeyPackages are
    /// fetched far less often than bundles, so each claim counts its pool).
    pub async fn fetch_key_packages(
        &self,
        user: &str,
    ) -> Result<Fetched<DeviceKeyPackage>, KeysError> {
        let ukey = interop_bus::recipient_key(user);
        let mut out = Fetched::default();
        for d in &self.devices_for_fetch(user).await?.devices {
            let Some(keys) = d.keys.clone() else { continue };
            let claimed = self.claim(&keys_pool(&ukey, &keys.device_id, KP)).await?;
            if claimed.emptied && (claimed.key.is_some() || d.key_packages_published > 0) {
                out.low.push(LowPool {
                    device_id: keys.device_id.clone(),
                    pool: Pool::KeyPackages,
                    left: 0,
                    generation: d.key_packages_published,
                });
            } else if claimed.key.is_some() || d.key_packages_published > 0 {
                if let Some(low) = self
                    .check_low(
                        user,
                        &keys.device_id,
                        Pool::KeyPackages,
                        d.key_packages_published,
                    )
                    .await?
                {
                    out.low.push(low);
                }
            }
            let (key_package, last_resort) = match claimed.key {
                Some(kp) => (kp, false),
                None if !keys.last_resort_key_package.is_empty() => {
                    (keys.last_resort_key_package.clone(), true)
                }
                None => continue,
            };
            out.items.push(DeviceKeyPackage {
                user: user.to_owned(),
                device_id: keys.device_id.clone(),
                key_package,
                last_resort,
            });
        }
        Ok(out)
    }

    /// Removes a device and its unclaimed keys; the user's devices after.
    pub async fn remove_device(
        &self,
        user: &str,
        device_id: &str,
    ) -> Result<Vec<StoredDevice>, KeysError> {
        let ukey = interop_bus::recipient_key(user);
        for _ in 0..CAS_ATTEMPTS {
            let (mut stored, revision) = self.load(user).await?;
            let before = stored.devices.len();
            stored
                .devices
                .retain(|d| d.keys.as_ref().is_none_or(|k| k.device_id != device_id));
            if stored.devices.len() == before {
                return Err(rejected(RejectCode::UnknownDevice, "no such device"));
            }
            if self.store(user, &stored, revision).await? {
                for kind in [OTK, KP] {
                    self.pool
                        .purge()
                        .filter(keys_pool(&ukey, device_id, kind))
                        .await
                        .map_err(|e| unavailable("purging a device's keys", e))?;
                }
                return Ok(stored.devices);
            }
        }
        Err(KeysError::Unavailable(
            "the user's devices changed too often at once; retry".into(),
        ))
    }

    /// Erases everything of `user` (their erasure, docs/security.md): the
    /// devices' entry and every pool.
    pub async fn erase_user(&self, user: &str) -> Result<(), KeysError> {
        let ukey = interop_bus::recipient_key(user);
        // An empty device list first: a write every instance is told of
        // (a purge is not), so none goes on fetching from its copy, and no
        // fetch finds a device whose keys are gone.
        self.js
            .publish(
                Self::devices_subject(user),
                StoredDevices {
                    user: user.to_owned(),
                    ..Default::default()
                }
                .encode_to_vec()
                .into(),
            )
            .await
            .map_err(|e| unavailable("erasing a user's devices", e))?
            .await
            .map_err(|e| unavailable("erasing a user's devices", e))?;
        self.pool
            .purge()
            .filter(format!(
                "{}.{ukey}.>",
                interop_bus::subjects::KEYS_POOL_PREFIX
            ))
            .await
            .map_err(|e| unavailable("purging a user's keys", e))?;
        self.devices
            .purge()
            .filter(Self::devices_subject(user))
            .await
            .map_err(|e| unavailable("purging a user's devices", e))?;
        Ok(())
    }
}

/// Drops a user's cached devices whenever a write of them goes by, until
/// the directory is gone.
async fn watch_device_changes(
    mut changes: async_nats::Subscriber,
    cache: std::sync::Weak<DeviceCache>,
) {
    while let Some(m) = changes.next().await {
        let Some(cache) = cache.upgrade() else { return };
        cache.changed(m.subject.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_devices_expire_and_a_change_is_not_overwritten_by_an_older_read() {
        let cache = DeviceCache::default();
        let devices = Arc::new(StoredDevices::default());
        // A read is served until DEVICE_CACHE_TTL has passed, not after.
        cache.keep("u", devices.clone(), 0);
        assert!(cache.get("u").is_some());
        if let Some(CachedDevices::Read(_, at)) = cache.entries.lock().unwrap().get_mut("u") {
            *at -= DEVICE_CACHE_TTL;
        }
        assert!(cache.get("u").is_none());
        // A read that started before a change is not kept.
        let before = cache.changes.load(Ordering::SeqCst);
        cache.changed("v");
        cache.keep("u", devices.clone(), before);
        assert!(cache.get("u").is_none());
        // Nor is one of a user changed less than DEVICE_CACHE_SETTLE ago,
        // though it started after the change.
        cache.changed("u");
        let after = cache.changes.load(Ordering::SeqCst);
        cache.keep("u", devices.clone(), after);
        assert!(cache.get("u").is_none());
        if let Some(CachedDevices::Changed(at)) = cache.entries.lock().unwrap().get_mut("u") {
            *at -= DEVICE_CACHE_SETTLE;
        }
        cache.keep("u", devices, after);
        assert!(cache.get("u").is_some());
    }
}
