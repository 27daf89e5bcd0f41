//! akd's storage interface over JetStream: the directory's records live in
//! memory (akd's own in-memory database) and are made durable by a log in
//! the stream `INTEROP_KT_LOG`, replicated like the pipeline's streams.
//!
//! - **Appending a batch.** akd writes one batch per epoch (a transaction
//!   committed as one `batch_set`). Its records (CBOR) go out as chunks of at
//!   most [`CHUNK_BYTES`] on `interop.v1.kt.log.chunk`, each naming the batch
//!   and its index; then one commit message on `interop.v1.kt.log.commit`
//!   names the batch and its chunk count. The commit is written
//!   compare-and-set on the commit subject's last sequence
//!   (`Nats-Expected-Last-Subject-Sequence`): a writer that did not see the
//!   latest commit is refused ([`StorageError`] naming it) and must reopen,
//!   so two writers (two replicas, or one across a NATS leader change)
//!   cannot fork the directory's history.
//! - **A chain the server cannot break.** nats-server may accept two
//!   compare-and-set writes that expected the same predecessor (before
//!   2.9.21 when they are in flight at once, before 2.11 right after a
//!   leader election; docs/adr/0034). So each commit also names its
//!   predecessor (the commit message it expected to follow), a reader
//!   applies a commit only if that is the commit message before it in the
//!   log (otherwise it was the second of two accepted on one predecessor:
//!   skipped, by every reader alike), and a writer, once acknowledged,
//!   checks that no other commit came between its predecessor and its
//!   own; if one did, its commit is one readers skip, and it fails as
//!   stale and reopens instead of publishing that epoch.
//! - **Opening.** A new instance replays the log from its start and applies
//!   each committed batch in commit order; chunks of a batch that was never
//!   committed (a writer that stopped half way) are ignored.
//! - **Following.** [`JetStreamDatabase::follow`] keeps applying batches
//!   other instances commit, so every replica answers lookups for the latest
//!   epoch.
//!
//! The whole directory is held in memory by each instance (about 200 bytes
//! a tree node, two to three nodes a user: hundreds of MB for a million
//! users); the log is never compacted yet (docs/adr/0029).

use std::sync::Arc;
use std::time::Duration;

use akd::errors::StorageError;
use akd::storage::memory::AsyncInMemoryDatabase;
use akd::storage::types::{DbRecord, KeyData, ValueState, ValueStateRetrievalFlag};
use akd::storage::{Database, DbSetState, Storable};
use akd::{AkdLabel, AkdValue};
use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use bytes::Bytes;
use futures_util::StreamExt as _;
use interop_bus::subjects::{KT_LOG_ALL, KT_LOG_CHUNK, KT_LOG_COMMIT, STREAM_KT_LOG};
use std::collections::HashMap;
use tokio::sync::Mutex;

/// Most bytes of records in one chunk message (under nats-server's default
/// 1 MiB payload limit, with room for headers).
pub const CHUNK_BYTES: usize = 256 * 1024;

/// The header naming a chunk's or a commit's batch.
const BATCH: &str = "Interop-Kt-Batch";
/// The header with a chunk's index in its batch, or a commit's chunk count.
const PART: &str = "Interop-Kt-Part";
/// The header naming a commit's predecessor: the stream sequence of the
/// commit message it was written to follow (0: the first). Commits written
/// before it was added have none and are applied as they come.
const AFTER: &str = "Interop-Kt-After";

/// How long one read of the log (or of the key directory's writes, or of
/// the roots) may wait for its next message before it fails as
/// unavailable and the caller retries. A healthy consumer delivers in
/// milliseconds; one that waits is usually an ephemeral consumer nats-server
/// placed on a node that was just killed (it places them there until the
/// cluster notices the node is gone), and a retry places it again.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn storage_error(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Other(format!("{what}: {e}"))
}

/// What an epoch's commit records besides its batch: the epoch, its root
/// hash, and how far in the key directory's devices stream the epoch's
/// updates reach (`crate::epoch`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitMeta {
    pub epoch: u64,
    pub root: Vec<u8>,
    pub devices_seq: u64,
}

/// What the instance has applied, guarded together.
#[derive(Default)]
struct Applied {
    /// The stream sequence of the last commit message read or written, be
    /// it applied or skipped (0: none): what the next commit follows.
    last_commit: u64,
    /// Chunks of batches not committed yet, by batch: (index, payload).
    pending: HashMap<String, Vec<(u32, Bytes)>>,
    /// Every epoch's commit, in order.
    epochs: Vec<CommitMeta>,
    /// An epoch is being written: its batch waits for [`JetStreamDatabase::commit_epoch`].
    epoch_open: bool,
    /// The batch written in the open epoch: (id, chunks).
    uncommitted: Option<(String, usize)>,
}

/// akd's [`Database`] over JetStream (see the module doc).
#[derive(Clone)]
pub struct JetStreamDatabase {
    js: jetstream::Context,
    mem: AsyncInMemoryDatabase,
    applied: Arc<Mutex<Applied>>,
}

impl std::fmt::Debug for JetStreamDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamDatabase").finish_non_exhaustive()
    }
}

impl JetStreamDatabase {
    /// Replays the log (created by `interop_bus::ensure_streams`) into a
    /// new instance.
    pub async fn open(js: jetstream::Context) -> Result<Self, StorageError> {
        let db = Self {
            js,
            mem: AsyncInMemoryDatabase::new(),
            applied: Arc::default(),
        };
        let stream = db
            .js
            .get_stream(STREAM_KT_LOG)
            .await
            .map_err(|e| storage_error("opening the transparency log", e))?;
        let last = stream.cached_info().state.last_sequence;
        if last > 0 {
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: KT_LOG_ALL.to_owned(),
                    deliver_policy: DeliverPolicy::All,
                    ..Default::default()
                })
                .await
                .map_err(|e| storage_error("reading the transparency log", e))?;
            let mut messages = consumer
                .messages()
                .await
                .map_err(|e| storage_error("reading the transparency log", e))?;
            loop {
                let msg = tokio::time::timeout(READ_TIMEOUT, messages.next())
                    .await
                    .map_err(|_| storage_error("reading the transparency log", "timed out"))?
                    .ok_or_else(|| storage_error("reading the transparency log", "ended"))?
                    .map_err(|e| storage_error("reading the transparency log", e))?;
                let seq = msg
                    .info()
                    .map_err(|e| storage_error("reading the transparency log", e))?
                    .stream_sequence;
                db.take(&msg.subject, msg.headers.as_ref(), msg.payload.clone(), seq)
                    .await?;
                if seq >= last {
                    break;
                }
            }
        }
        Ok(db)
    }

    /// Applies batches other instances commit from now on, until the
    /// returned task is aborted. A batch this instance wrote is not applied
    /// twice.
    pub async fn follow(&self) -> Result<tokio::task::JoinHandle<()>, StorageError> {
        let from = self.applied.lock().await.last_commit + 1;
        let stream = self
            .js
            .get_stream(STREAM_KT_LOG)
            .await
            .map_err(|e| storage_error("following the transparency log", e))?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: KT_LOG_ALL.to_owned(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| storage_error("following the transparency log", e))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| storage_error("following the transparency log", e))?;
        let db = self.clone();
        Ok(tokio::spawn(async move {
            while let Some(msg) = messages.next().await {
                let Ok(msg) = msg else { continue };
                let Ok(info) = msg.info() else { continue };
                let seq = info.stream_sequence;
                if let Err(e) = db
                    .take(&msg.subject, msg.headers.as_ref(), msg.payload.clone(), seq)
                    .await
                {
                    tracing::error!(error = %e, "Cannot apply a transparency log batch; this replica's directory is behind until it restarts.");
                }
            }
        }))
    }

    /// One message of the log, in stream order: a chunk is kept until its
    /// batch's commit applies it.
    async fn take(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: Bytes,
        seq: u64,
    ) -> Result<(), StorageError> {
        let header = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let (Some(batch), Some(part)) = (header(BATCH), header(PART)) else {
            return Err(storage_error(
                "reading the transparency log",
                format!("message {seq} has no batch or part header"),
            ));
        };
        let part: u32 = part
            .parse()
            .map_err(|e| storage_error("reading the transparency log", e))?;
        let mut applied = self.applied.lock().await;
        if subject == KT_LOG_CHUNK {
            applied
                .pending
                .entry(batch)
                .or_default()
                .push((part, payload));
            return Ok(());
        }
        if subject != KT_LOG_COMMIT {
            return Ok(());
        }
        if seq <= applied.last_commit {
            // A batch this instance wrote (and applied) itself.
            applied.pending.remove(&batch);
            return Ok(());
        }
        if let Some(after) = header(AFTER) {
            if after.parse::<u64>().ok() != Some(applied.last_commit) {
                // Accepted by the server on a predecessor another commit
                // had already followed (see the module doc): not part of
                // the history.
                tracing::warn!(
                    commit = seq,
                    after = %after,
                    previous = applied.last_commit,
                    "Skipping a transparency log commit written on a superseded predecessor (a compare-and-set the server let through twice)."
                );
                applied.pending.remove(&batch);
                applied.last_commit = seq;
                return Ok(());
            }
        }
        let mut chunks = applied.pending.remove(&batch).unwrap_or_default();
        chunks.sort_by_key(|(i, _)| *i);
        if chunks.len() != part as usize {
            return Err(storage_error(
                "reading the transparency log",
                format!(
                    "batch {batch} was committed with {part} chunks, {} found",
                    chunks.len()
                ),
            ));
        }
        let mut records = Vec::new();
        for (_, chunk) in chunks {
            records.extend(decode_chunk(&chunk)?);
        }
        self.mem
            .batch_set(records, DbSetState::TransactionCommit)
            .await?;
        applied.last_commit = seq;
        if !payload.is_empty() {
            let meta: CommitMeta = ciborium::from_reader(&payload[..])
                .map_err(|e| storage_error("reading an epoch's commit", e))?;
            applied.epochs.push(meta);
        }
        Ok(())
    }

    /// From now until [`Self::commit_epoch`], the batch akd writes is
    /// appended but not committed: the commit carries the epoch's root hash,
    /// which akd computes from the batch.
    pub async fn begin_epoch(&self) {
        let mut applied = self.applied.lock().await;
        applied.epoch_open = true;
        applied.uncommitted = None;
    }

    /// Commits the open epoch's batch with `meta`. [`STALE`] if another
    /// instance committed first: this one's state is then ahead of the log
    /// and it must reopen.
    pub async fn commit_epoch(&self, meta: CommitMeta) -> Result<(), StorageError> {
        let mut applied = self.applied.lock().await;
        applied.epoch_open = false;
        let (batch, parts) = applied
            .uncommitted
            .take()
            .ok_or_else(|| storage_error("committing an epoch", "nothing was written"))?;
        let mut payload = Vec::new();
        ciborium::into_writer(&meta, &mut payload)
            .map_err(|e| storage_error("encoding an epoch's commit", e))?;
        self.publish_commit(&mut applied, &batch, parts, payload.into())
            .await?;
        applied.epochs.push(meta);
        Ok(())
    }

    /// Every epoch committed so far (replayed or written), in order.
    pub async fn epochs(&self) -> Vec<CommitMeta> {
        self.applied.lock().await.epochs.clone()
    }

    /// Appends `records` to the log as one batch and commits it; refused if
    /// another instance committed since this one last applied a batch.
    async fn append(&self, records: &[DbRecord]) -> Result<(), StorageError> {
        let mut applied = self.applied.lock().await;
        let batch = uuid::Uuid::now_v7().to_string();
        let chunks = encode_chunks(records)?;
        let mut acks = Vec::with_capacity(chunks.len());
        for (i, chunk) in chunks.iter().enumerate() {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(BATCH, batch.as_str());
            headers.insert(PART, i.to_string().as_str());
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("{batch}-{i}").as_str(),
            );
            acks.push(
                self.js
                    .publish_with_headers(KT_LOG_CHUNK, headers, chunk.clone().into())
                    .await
                    .map_err(|e| storage_error("appending to the transparency log", e))?,
            );
        }
        for ack in acks {
            ack.await
                .map_err(|e| storage_error("appending to the transparency log", e))?;
        }
        if applied.epoch_open {
            if applied.uncommitted.is_some() {
                return Err(storage_error(
                    "appending to the transparency log",
                    "an epoch wrote two batches",
                ));
            }
            applied.uncommitted = Some((batch, chunks.len()));
            return Ok(());
        }
        self.publish_commit(&mut applied, &batch, chunks.len(), Bytes::new())
            .await
    }

    /// Publishes the commit of `batch` (compare-and-set on the last commit
    /// applied).
    async fn publish_commit(
        &self,
        applied: &mut Applied,
        batch: &str,
        parts: usize,
        payload: Bytes,
    ) -> Result<(), StorageError> {
        let after = applied.last_commit;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(BATCH, batch);
        headers.insert(PART, parts.to_string().as_str());
        headers.insert(AFTER, after.to_string().as_str());
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            after.to_string().as_str(),
        );
        let ack = self
            .js
            .publish_with_headers(KT_LOG_COMMIT, headers, payload)
            .await
            .map_err(|e| storage_error("committing to the transparency log", e))?
            .await;
        match ack {
            Ok(ack) => {
                let first = self.first_commit_after(after).await?;
                applied.last_commit = ack.sequence;
                if first != ack.sequence {
                    // Another commit on the same predecessor came first:
                    // readers skip this one.
                    return Err(StorageError::Other(STALE.to_owned()));
                }
                Ok(())
            }
            Err(e)
                if e.kind()
                    == async_nats::jetstream::context::PublishErrorKind::WrongLastSequence =>
            {
                Err(StorageError::Other(STALE.to_owned()))
            }
            Err(e) => Err(storage_error("committing to the transparency log", e)),
        }
    }
}

impl JetStreamDatabase {
    /// The stream sequence of the first commit message after `after`, as
    /// the log stream's leader has it (a get, not a direct get a replica
    /// may answer).
    async fn first_commit_after(&self, after: u64) -> Result<u64, StorageError> {
        let what = "checking the transparency log's commit";
        let stream = self
            .js
            .get_stream(STREAM_KT_LOG)
            .await
            .map_err(|e| storage_error(what, e))?;
        stream
            .get_first_raw_message_by_subject(KT_LOG_COMMIT, after + 1)
            .await
            .map(|m| m.sequence)
            .map_err(|e| storage_error(what, e))
    }
}

/// The error of a commit refused because another instance committed first.
pub const STALE: &str =
    "another instance committed to the transparency log first: this one is stale and must reopen";

/// Records as chunks: each a sequence of (length as 4 bytes big-endian,
/// CBOR record), at most [`CHUNK_BYTES`] unless one record is larger.
fn encode_chunks(records: &[DbRecord]) -> Result<Vec<Vec<u8>>, StorageError> {
    let mut chunks = vec![Vec::new()];
    for record in records {
        let mut bytes = Vec::new();
        ciborium::into_writer(record, &mut bytes)
            .map_err(|e| storage_error("encoding a directory record", e))?;
        let len = u32::try_from(bytes.len())
            .map_err(|e| storage_error("encoding a directory record", e))?;
        let last = chunks.last_mut().expect("chunks starts with one");
        if !last.is_empty() && last.len() + 4 + bytes.len() > CHUNK_BYTES {
            chunks.push(Vec::new());
        }
        let last = chunks.last_mut().expect("chunks is not empty");
        last.extend_from_slice(&len.to_be_bytes());
        last.extend_from_slice(&bytes);
    }
    if chunks.last().is_some_and(Vec::is_empty) {
        chunks.pop();
    }
    Ok(chunks)
}

fn decode_chunk(mut chunk: &[u8]) -> Result<Vec<DbRecord>, StorageError> {
    let mut out = Vec::new();
    while !chunk.is_empty() {
        let (len, rest) = chunk
            .split_first_chunk::<4>()
            .ok_or_else(|| storage_error("decoding a log chunk", "truncated length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(storage_error("decoding a log chunk", "truncated record"));
        }
        let (record, rest) = rest.split_at(len);
        out.push(
            ciborium::from_reader(record)
                .map_err(|e| storage_error("decoding a directory record", e))?,
        );
        chunk = rest;
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Database for JetStreamDatabase {
    async fn set(&self, record: DbRecord) -> Result<(), StorageError> {
        self.batch_set(vec![record], DbSetState::General).await
    }

    async fn batch_set(
        &self,
        records: Vec<DbRecord>,
        state: DbSetState,
    ) -> Result<(), StorageError> {
        if records.is_empty() {
            return Ok(());
        }
        self.append(&records).await?;
        self.mem.batch_set(records, state).await
    }

    async fn get<St: Storable>(&self, id: &St::StorageKey) -> Result<DbRecord, StorageError> {
        self.mem.get::<St>(id).await
    }

    async fn batch_get<St: Storable>(
        &self,
        ids: &[St::StorageKey],
    ) -> Result<Vec<DbRecord>, StorageError> {
        self.mem.batch_get::<St>(ids).await
    }

    async fn get_user_data(&self, username: &AkdLabel) -> Result<KeyData, StorageError> {
        self.mem.get_user_data(username).await
    }

    async fn get_user_state(
        &self,
        username: &AkdLabel,
        flag: ValueStateRetrievalFlag,
    ) -> Result<ValueState, StorageError> {
        self.mem.get_user_state(username, flag).await
    }

    async fn get_user_state_versions(
        &self,
        usernames: &[AkdLabel],
        flag: ValueStateRetrievalFlag,
    ) -> Result<HashMap<AkdLabel, (u64, AkdValue)>, StorageError> {
        self.mem.get_user_state_versions(usernames, flag).await
    }
}
