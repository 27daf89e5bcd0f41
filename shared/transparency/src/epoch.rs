//! Epochs: what the key directory changed, committed to the auditable key
//! directory, and each epoch's root hash published for anyone to read.
//!
//! The updates are read from the key directory's own stream
//! (`INTEROP_KEYS_DEVICES`, one message per write of a user's devices): an
//! epoch takes every write after the one the previous epoch reached (its
//! commit records that sequence), computes each written user's value (a
//! [`TransparencyValue`]: every device's identity keys, sorted by device
//! id), leaves out users whose value did not change, and publishes the rest
//! under their address. So any instance can publish the next epoch, and the
//! log's compare-and-set commit lets only one of two that try do so.
//!
//! Each epoch's root hash goes to `INTEROP_KT_ROOTS`
//! (`interop.v1.kt.roots`, one message per epoch, `Nats-Msg-Id`
//! `kt-epoch-<n>`), which holds no user data: an auditor with read access
//! to it alone checks the directory's history (`audit`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use akd::ecvrf::{VRFKeyStorage, VrfError};
use akd::storage::types::ValueStateRetrievalFlag;
use akd::storage::{Database, StorageManager};
use akd::{AkdLabel, AkdValue, AzksParallelismConfig, Directory, EpochHash};
use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use futures_util::StreamExt as _;
use interop_bus::subjects::{KEYS_DEVICES_ALL, KT_ROOTS, STREAM_KEYS_DEVICES};
use interop_proto::v1::{StoredDevices, TransparencyDevice, TransparencyProof, TransparencyValue};
use interop_proto::Message as _;
use tokio::sync::RwLock;

use crate::storage::{CommitMeta, JetStreamDatabase, READ_TIMEOUT, STALE};
use crate::Config;

/// Why an epoch was not published.
#[derive(Debug, thiserror::Error)]
pub enum KtError {
    #[error("key transparency: {0}")]
    Akd(#[from] akd::errors::AkdError),
    #[error("key transparency storage: {0}")]
    Storage(#[from] akd::errors::StorageError),
    #[error("key transparency: {0}")]
    Unavailable(String),
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> KtError {
    KtError::Unavailable(format!("{what}: {e}"))
}

/// The directory's VRF key: 32 secret bytes (an Ed25519 secret key), the
/// same for every replica and for the directory's whole life (a new key
/// makes every label a new one). Never logged.
#[derive(Clone)]
pub struct VrfKey(Arc<[u8; 32]>);

impl VrfKey {
    pub fn from_bytes(secret: [u8; 32]) -> Self {
        Self(Arc::new(secret))
    }

    /// The key in the file at `path`: 64 hex digits (surrounding
    /// whitespace allowed). The error says what is wrong, never the key.
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let bytes: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                format!(
                    "{}: the key transparency VRF key must be 64 hex digits (32 bytes)",
                    path.display()
                )
            })?;
        Ok(Self::from_bytes(bytes))
    }

    /// The public key every proof carries, which apps pin (not secret:
    /// publish it to the providers, e.g. in their client configuration).
    pub async fn public_key(&self) -> Result<Vec<u8>, KtError> {
        Ok(self
            .get_vrf_public_key()
            .await
            .map_err(|e| unavailable("deriving the VRF public key", e))?
            .as_bytes()
            .to_vec())
    }
}

impl std::fmt::Debug for VrfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VrfKey(..)")
    }
}

#[async_trait::async_trait]
impl VRFKeyStorage for VrfKey {
    async fn retrieve(&self) -> Result<Vec<u8>, VrfError> {
        Ok(self.0.to_vec())
    }
}

/// The auditable key directory the gateway runs.
pub type KtDirectory = Directory<Config, JetStreamDatabase, VrfKey>;

/// The value committed for a user with these devices.
pub fn value_of(devices: &StoredDevices) -> Vec<u8> {
    let mut out: Vec<TransparencyDevice> = devices
        .devices
        .iter()
        .filter_map(|d| d.keys.as_ref())
        .map(|k| TransparencyDevice {
            device_id: k.device_id.clone(),
            identity_key: k.identity_key.clone(),
            signing_key: k.signing_key.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    TransparencyValue { devices: out }.encode_to_vec()
}

/// One instance of the directory: its storage, akd over it, and what it
/// needs to publish epochs.
pub struct Transparency {
    js: jetstream::Context,
    vrf: VrfKey,
    inner: RwLock<Loaded>,
    /// Proofs made for the latest epoch, by user: (epoch, value, proof).
    /// A storm of fetches of one user's keys makes one proof an epoch.
    proofs: std::sync::Mutex<HashMap<String, CachedProof>>,
    /// Every epoch up to this one is known to have its root and its
    /// append-only proof published (checked at open, and again before an
    /// epoch is published when a later epoch was committed since).
    roots_published: AtomicU64,
    /// The loaded directory may be ahead of the log: an epoch was applied
    /// in memory and its commit failed (another instance committed first,
    /// an election, a lost ack), and the reload that followed failed too.
    /// Until a reload succeeds nothing is published or proved from it: it
    /// would take its uncommitted values for committed ones (an epoch never
    /// published, found by the cluster test) and prove values against a
    /// root nobody can audit.
    diverged: AtomicBool,
}

/// A proof made at an epoch for a user's value: (epoch, value, proof).
type CachedProof = (u64, Vec<u8>, TransparencyProof);

/// Most proofs kept (all dropped when full: they are remade on demand).
const MAX_CACHED_PROOFS: usize = 10_000;

/// The directory as loaded, and the task applying other instances' epochs
/// to it.
struct Loaded {
    db: JetStreamDatabase,
    dir: Arc<KtDirectory>,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl Transparency {
    /// Opens the directory (replaying its log) and publishes any epoch's
    /// root a previous publisher could not.
    pub async fn open(js: jetstream::Context, vrf: VrfKey) -> Result<Self, KtError> {
        let loaded = Self::load(&js, &vrf).await?;
        let t = Self {
            js,
            vrf,
            inner: RwLock::new(loaded),
            proofs: Default::default(),
            roots_published: AtomicU64::new(0),
            diverged: AtomicBool::new(false),
        };
        t.catch_up_roots().await?;
        Ok(t)
    }

    /// Replays the log into a new instance that then follows it.
    async fn load(js: &jetstream::Context, vrf: &VrfKey) -> Result<Loaded, KtError> {
        let db = JetStreamDatabase::open(js.clone()).await?;
        let dir = Directory::new(
            StorageManager::new_no_cache(db.clone()),
            vrf.clone(),
            AzksParallelismConfig::default(),
        )
        .await?;
        let follower = db.follow().await?;
        Ok(Loaded {
            db,
            dir: Arc::new(dir),
            follower,
        })
    }

    /// Replaces the loaded directory with one replayed from the log.
    async fn reload(&self) -> Result<(), KtError> {
        let loaded = Self::load(&self.js, &self.vrf).await?;
        *self.inner.write().await = loaded;
        self.diverged.store(false, Ordering::Release);
        Ok(())
    }

    /// Marks the loaded directory as possibly ahead of the log and reloads
    /// it; if the reload fails, the next operation tries again first.
    async fn diverged_reload(&self) -> Result<(), KtError> {
        self.diverged.store(true, Ordering::Release);
        self.reload().await
    }

    /// Reloads first if an earlier reload after a failed commit failed.
    async fn ensure_not_diverged(&self) -> Result<(), KtError> {
        if self.diverged.load(Ordering::Acquire) {
            self.reload().await?;
        }
        Ok(())
    }

    /// The directory as this instance last loaded it.
    pub async fn directory(&self) -> Arc<KtDirectory> {
        self.inner.read().await.dir.clone()
    }

    /// A proof that `user`'s value is `expected` (what the key directory
    /// holds for them now). If the directory has not committed it yet (keys
    /// published since the last epoch), an epoch is published first, on
    /// demand; if it still differs, the proof of what is committed is
    /// returned and the client refuses the keys that differ.
    pub async fn prove(
        &self,
        user: &str,
        expected: &[u8],
    ) -> Result<interop_proto::v1::TransparencyProof, KtError> {
        self.ensure_not_diverged().await?;
        let label = AkdLabel::from(user);
        let latest = self.epochs().await.last().map_or(0, |m| m.epoch);
        if let Some((epoch, value, proof)) = self
            .proofs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
        {
            if *epoch == latest && value == expected {
                return Ok(proof.clone());
            }
        }
        let current = {
            let inner = self.inner.read().await;
            inner
                .db
                .get_user_state(&label, ValueStateRetrievalFlag::MaxEpoch)
                .await
        };
        if !current.is_ok_and(|s| s.value.0 == expected) {
            self.publish_epoch().await?;
        }
        let dir = self.directory().await;
        let (proof, at) = dir.lookup(label).await?;
        let vrf = dir.get_public_key().await?;
        let wire = crate::proof::to_wire(&proof, at.epoch(), at.hash(), vrf.as_bytes())
            .map_err(|e| unavailable("encoding a lookup proof", e))?;
        let mut proofs = self.proofs.lock().unwrap_or_else(|p| p.into_inner());
        if proofs.len() >= MAX_CACHED_PROOFS {
            proofs.clear();
        }
        proofs.insert(
            user.to_owned(),
            (at.epoch(), expected.to_vec(), wire.clone()),
        );
        Ok(wire)
    }

    /// `user`'s complete key history, proved against the latest epoch (for
    /// the owner's apps: [`crate::proof::verify_history`]).
    pub async fn history(&self, user: &str) -> Result<interop_proto::v1::KeyHistory, KtError> {
        self.ensure_not_diverged().await?;
        let dir = self.directory().await;
        let (proof, at) = dir
            .key_history(&AkdLabel::from(user), akd::HistoryParams::Complete)
            .await?;
        let vrf = dir.get_public_key().await?;
        use protobuf::Message as _;
        Ok(interop_proto::v1::KeyHistory {
            user: user.to_owned(),
            epoch: at.epoch(),
            root_hash: at.hash().to_vec().into(),
            history_proof: akd::proto::specs::types::HistoryProof::from(&proof)
                .write_to_bytes()
                .map_err(|e| unavailable("encoding a history proof", e))?
                .into(),
            vrf_public_key: vrf.as_bytes().to_vec().into(),
        })
    }

    /// Every epoch committed so far.
    pub async fn epochs(&self) -> Vec<CommitMeta> {
        self.inner.read().await.db.epochs().await
    }

    /// Publishes the next epoch from the key directory's writes since the
    /// last one; `None` if no user's value changed. If another instance
    /// published first, this one reloads and tries again once.
    ///
    /// Committed epochs whose root or append-only proof are not published
    /// yet (a publisher, this one included, failed between its commit and
    /// them: an election, a lost ack) are published first, so a caller that
    /// retries a failed call leaves no epoch without its root.
    pub async fn publish_epoch(&self) -> Result<Option<EpochHash>, KtError> {
        self.ensure_not_diverged().await?;
        self.catch_up_roots().await?;
        let published = match self.try_publish_epoch().await {
            // Reloaded already (`try_publish_epoch`): try once more.
            Err(KtError::Storage(e)) if e.to_string().contains(STALE) => {
                self.try_publish_epoch().await?
            }
            other => other?,
        };
        if published.is_none() {
            // Nothing left to commit: the writes are in an epoch committed
            // since the check above (this instance's own, whose commit was
            // stored after its ack was lost, or another instance's), which
            // may lack its root.
            self.catch_up_roots().await?;
        }
        Ok(published)
    }

    async fn try_publish_epoch(&self) -> Result<Option<EpochHash>, KtError> {
        let inner = self.inner.write().await;
        let (db, dir) = (&inner.db, &inner.dir);
        let from = db.epochs().await.last().map_or(0, |m| m.devices_seq);
        let (writes, reached) = self.devices_after(from).await?;
        let mut updates = Vec::new();
        for (user, value) in writes {
            let label = AkdLabel::from(user.as_str());
            let current = db
                .get_user_state(&label, ValueStateRetrievalFlag::MaxEpoch)
                .await;
            if current.is_ok_and(|s| s.value.0 == value) {
                continue;
            }
            updates.push((label, AkdValue(value)));
        }
        if updates.is_empty() {
            return Ok(None);
        }
        db.begin_epoch().await;
        let hash = match dir.publish(updates).await {
            Ok(h) => h,
            Err(e) => {
                // Applied in memory but never committed: reload.
                drop(inner);
                self.diverged_reload().await?;
                return Err(e.into());
            }
        };
        let meta = CommitMeta {
            epoch: hash.epoch(),
            root: hash.hash().to_vec(),
            devices_seq: reached,
        };
        if let Err(e) = db.commit_epoch(meta.clone()).await {
            drop(inner);
            self.diverged_reload().await?;
            return Err(e.into());
        }
        drop(inner);
        self.publish_root(&meta).await?;
        if meta.epoch >= 2 {
            self.publish_audit_proof(meta.epoch).await?;
        }
        // Only if every epoch before is known published too (another
        // instance's epoch in between is checked at the next call).
        self.roots_published
            .compare_exchange(
                meta.epoch - 1,
                meta.epoch,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .ok();
        Ok(Some(hash))
    }

    /// Each user's latest devices written after `from` in the key
    /// directory's stream, and the last sequence read.
    async fn devices_after(&self, from: u64) -> Result<(BTreeMap<String, Vec<u8>>, u64), KtError> {
        let what = "reading the key directory's writes";
        let mut stream = self
            .js
            .get_stream(STREAM_KEYS_DEVICES)
            .await
            .map_err(|e| unavailable(what, e))?;
        let last = stream
            .info()
            .await
            .map_err(|e| unavailable(what, e))?
            .state
            .last_sequence;
        let mut out = BTreeMap::new();
        if last <= from {
            return Ok((out, from));
        }
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: KEYS_DEVICES_ALL.to_owned(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(what, e))?;
        if consumer.cached_info().num_pending == 0 {
            // Nothing after `from` for this consumer: none written, or a
            // consumer on a replica still catching up (before nats-server
            // 2.12). Claim nothing read; the next epoch looks again.
            return Ok((out, from));
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable(what, e))?;
        loop {
            let msg = tokio::time::timeout(READ_TIMEOUT, messages.next())
                .await
                .map_err(|_| unavailable(what, "timed out"))?
                .ok_or_else(|| unavailable(what, "ended"))?
                .map_err(|e| unavailable(what, e))?;
            let info = msg.info().map_err(|e| unavailable(what, e))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            // Records written before they carried the address cannot be
            // committed under it; their next write will be.
            if let Ok(devices) = StoredDevices::decode(msg.payload.clone()) {
                if !devices.user.is_empty() {
                    out.insert(devices.user.clone(), value_of(&devices));
                }
            }
            if pending == 0 || seq >= last {
                return Ok((out, seq.max(from)));
            }
        }
    }

    /// Publishes one epoch's root hash (idempotent within the stream's
    /// duplicate window by its message id).
    async fn publish_root(&self, meta: &CommitMeta) -> Result<(), KtError> {
        let root = Root {
            epoch: meta.epoch,
            root: meta.root.clone(),
        };
        let mut payload = Vec::new();
        ciborium::into_writer(&root, &mut payload)
            .map_err(|e| unavailable("encoding a root", e))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("kt-epoch-{}", meta.epoch).as_str(),
        );
        self.js
            .publish_with_headers(KT_ROOTS, headers, payload.into())
            .await
            .map_err(|e| unavailable("publishing an epoch's root", e))?
            .await
            .map_err(|e| unavailable("publishing an epoch's root", e))?;
        Ok(())
    }

    /// Publishes the append-only proof from `epoch - 1` to `epoch`.
    async fn publish_audit_proof(&self, epoch: u64) -> Result<(), KtError> {
        let proof = self.directory().await.audit(epoch - 1, epoch).await?;
        let single = proof
            .proofs
            .first()
            .ok_or_else(|| unavailable("an append-only proof", "akd returned none"))?;
        crate::audit::publish_proof(&self.js, epoch, single).await
    }

    /// Publishes the roots and append-only proofs of committed epochs the
    /// roots stream lacks (a publisher stopped or failed between its commit
    /// and them), if an epoch was committed since the last check.
    async fn catch_up_roots(&self) -> Result<(), KtError> {
        let epochs = self.epochs().await;
        let latest = epochs.last().map_or(0, |m| m.epoch);
        if latest <= self.roots_published.load(Ordering::Acquire) {
            return Ok(());
        }
        let (roots, proofs) = crate::audit::read_public(&self.js).await?;
        for meta in epochs {
            if !roots.contains_key(&meta.epoch) {
                self.publish_root(&meta).await?;
            }
            if meta.epoch >= 2 && !proofs.contains_key(&meta.epoch) {
                self.publish_audit_proof(meta.epoch).await?;
            }
        }
        self.roots_published.fetch_max(latest, Ordering::AcqRel);
        Ok(())
    }
}

/// One epoch's root hash, as `INTEROP_KT_ROOTS` holds it (CBOR).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Root {
    pub epoch: u64,
    pub root: Vec<u8>,
}

/// Every published root, in stream order: what an auditor or a client
/// reads (read access to `INTEROP_KT_ROOTS` only).
pub async fn read_roots(js: &jetstream::Context) -> Result<Vec<Root>, KtError> {
    let what = "reading the published roots";
    let stream = js
        .get_stream(interop_bus::subjects::STREAM_KT_ROOTS)
        .await
        .map_err(|e| unavailable(what, e))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            filter_subject: KT_ROOTS.to_owned(),
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(what, e))?;
    let mut out = Vec::new();
    // Up to the last root as the stream's leader has it, not until the
    // consumer says nothing is pending (it may sit on a replica still
    // catching up; see `audit::read_public`).
    let last = match stream.get_last_raw_message_by_subject(KT_ROOTS).await {
        Ok(m) => m.sequence,
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
            return Ok(out)
        }
        Err(e) => return Err(unavailable(what, e)),
    };
    read_through(consumer, last, what, |msg| {
        out.push(
            ciborium::from_reader(&msg.payload[..])
                .map_err(|e| unavailable("decoding a root", e))?,
        );
        Ok(())
    })
    .await?;
    Ok(out)
}

/// Reads `consumer` in stream order until the message at stream sequence
/// `last` (the leader's last, not the consumer's "nothing pending": before
/// nats-server 2.12 an ephemeral consumer may sit on a replica still
/// catching up), giving each message to `take`; each must come within
/// [`READ_TIMEOUT`].
pub(crate) async fn read_through(
    consumer: jetstream::consumer::Consumer<pull::OrderedConfig>,
    last: u64,
    what: &str,
    mut take: impl FnMut(&jetstream::Message) -> Result<(), KtError>,
) -> Result<(), KtError> {
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| unavailable(what, e))?;
    let mut seq = 0;
    while seq < last {
        let msg = tokio::time::timeout(READ_TIMEOUT, messages.next())
            .await
            .map_err(|_| unavailable(what, "timed out"))?
            .ok_or_else(|| unavailable(what, "ended"))?
            .map_err(|e| unavailable(what, e))?;
        seq = msg
            .info()
            .map_err(|e| unavailable(what, e))?
            .stream_sequence;
        take(&msg)?;
    }
    Ok(())
}
