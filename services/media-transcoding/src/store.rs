//! Media blobs in a JetStream object store (bucket [`BUCKET`], stream
//! `OBJ_INTEROP_MEDIA_BLOBS`): no extra server, replicated like every other
//! stream, and aged out after the retention period (`max_age`).
//!
//! The bucket's stream is created (or updated) here with the configuration
//! the object store expects, then opened with `get_object_store`: that is
//! create-or-update, which `create_object_store` is not, and it does not
//! depend on how a client parses the server's answer (docs/adr/0002).
//!
//! Writes go through [`Upload`] rather than `ObjectStore::put`: chunks are
//! published while the body streams in, and the object becomes visible (its
//! metadata message is published) only once the caller has checked its size
//! and hash. An upload that fails or is dropped purges its chunks, so a
//! client that disconnects mid-body leaves nothing behind.
//!
//! Object metadata (`ObjectInfo.metadata`): `origin` (`upload` or
//! `transcoded`), `provider` (uploads), `content-type`, `encryption`,
//! `sticker`, and for transcoded media `width`, `height`, `duration-ms`.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_nats::jetstream::{self, object_store, stream};
use async_nats::HeaderMap;
use base64::engine::general_purpose::URL_SAFE;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use interop_proto::v1::Encryption;

/// The object store bucket holding every media blob.
pub const BUCKET: &str = interop_bus::subjects::MEDIA_BUCKET;
/// Bytes per stored chunk (the object store default).
const CHUNK_SIZE: usize = 128 * 1024;
/// Chunk publishes awaiting their JetStream ack at once, per upload.
const ACKS_IN_FLIGHT: usize = 8;
/// How long a single storage call may take before it counts as unavailable.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);

/// Operator settings of the media store.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// How long a blob is kept after its upload.
    pub retention: Duration,
    /// Most bytes the bucket may hold (-1: no limit). A full bucket refuses
    /// new uploads (`UNAVAILABLE`) rather than drop stored media.
    pub max_bytes: i64,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(30 * 24 * 3600),
            max_bytes: -1,
        }
    }
}

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create or open the media store {name}: {source}")]
    Setup {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("media storage is unavailable: {0}")]
    Unavailable(String),
    #[error("media storage is full")]
    Full,
    #[error("stored media {0:?} is corrupt: {1}")]
    Corrupt(String, String),
}

/// Where a stored object came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Uploaded by this provider through `POST /v1/media`.
    Upload { provider: String },
    /// Made by the gateway (a transcode or a thumbnail).
    Transcoded,
}

/// What the gateway records about a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    pub id: String,
    pub origin: Origin,
    pub content_type: String,
    pub encryption: Encryption,
    pub sticker: bool,
    pub size: u64,
    pub sha256: [u8; 32],
    pub width: u32,
    pub height: u32,
    pub duration_ms: u32,
    /// When it was stored (Unix ms); 0 if unknown.
    pub stored_at_ms: i64,
}

/// Metadata of an object about to be stored (size and hash come from the
/// bytes).
#[derive(Debug, Clone)]
pub struct NewMedia {
    pub origin: Origin,
    pub content_type: String,
    pub encryption: Encryption,
    pub sticker: bool,
    pub width: u32,
    pub height: u32,
    pub duration_ms: u32,
}

fn encryption_name(e: Encryption) -> &'static str {
    match e {
        Encryption::E2ee => "e2ee",
        Encryption::TransportOnly => "transport-only",
        Encryption::Unspecified => "unspecified",
    }
}

impl NewMedia {
    fn metadata(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        match &self.origin {
            Origin::Upload { provider } => {
                m.insert("origin".into(), "upload".into());
                m.insert("provider".into(), provider.clone());
            }
            Origin::Transcoded => {
                m.insert("origin".into(), "transcoded".into());
            }
        }
        m.insert("content-type".into(), self.content_type.clone());
        m.insert(
            "encryption".into(),
            encryption_name(self.encryption).to_owned(),
        );
        if self.sticker {
            m.insert("sticker".into(), "true".into());
        }
        for (k, v) in [
            ("width", self.width),
            ("height", self.height),
            ("duration-ms", self.duration_ms),
        ] {
            if v > 0 {
                m.insert(k.into(), v.to_string());
            }
        }
        m
    }
}

fn parse_info(info: &object_store::ObjectInfo) -> Result<MediaInfo, String> {
    let m = &info.metadata;
    let get = |k: &str| m.get(k).map(String::as_str).unwrap_or("");
    let origin = match get("origin") {
        "upload" => Origin::Upload {
            provider: get("provider").to_owned(),
        },
        "transcoded" => Origin::Transcoded,
        other => return Err(format!("unknown origin {other:?}")),
    };
    let encryption = match get("encryption") {
        "e2ee" => Encryption::E2ee,
        "transport-only" => Encryption::TransportOnly,
        other => return Err(format!("unknown encryption {other:?}")),
    };
    let digest = info
        .digest
        .as_deref()
        .and_then(|d| d.strip_prefix("SHA-256="))
        .and_then(|d| URL_SAFE.decode(d).ok())
        .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
        .ok_or("missing or malformed SHA-256 digest")?;
    let num = |k: &str| get(k).parse::<u32>().unwrap_or(0);
    Ok(MediaInfo {
        id: info.name.clone(),
        origin,
        content_type: get("content-type").to_owned(),
        encryption,
        sticker: get("sticker") == "true",
        size: info.size as u64,
        sha256: digest,
        width: num("width"),
        height: num("height"),
        duration_ms: num("duration-ms"),
        stored_at_ms: info.modified.map_or(0, |t| {
            i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
        }),
    })
}

/// The media bucket.
#[derive(Clone)]
pub struct MediaStore {
    js: jetstream::Context,
    store: object_store::ObjectStore,
    bucket: String,
    stream: String,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

async fn timed<T, E: std::fmt::Display>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(STORE_TIMEOUT, f).await {
        Ok(r) => r.map_err(unavailable),
        Err(_) => Err(StoreError::Unavailable("timed out".into())),
    }
}

impl MediaStore {
    /// Creates or updates the bucket [`BUCKET`] and opens it.
    pub async fn open(
        js: &jetstream::Context,
        s: &StoreSettings,
        replicas: usize,
    ) -> Result<Self, StoreError> {
        Self::open_bucket(js, BUCKET, s, replicas).await
    }

    /// Creates or updates bucket `bucket` (tests use their own) and opens it.
    pub async fn open_bucket(
        js: &jetstream::Context,
        bucket: &str,
        s: &StoreSettings,
        replicas: usize,
    ) -> Result<Self, StoreError> {
        let stream_name = format!("OBJ_{bucket}");
        let setup = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Setup {
            name: stream_name.clone(),
            source,
        };
        // What `create_object_store` creates, plus create-or-update.
        let config = stream::Config {
            name: stream_name.clone(),
            description: Some("interop media blobs (object store)".into()),
            subjects: vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
            max_age: s.retention,
            max_bytes: s.max_bytes,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            allow_direct: true,
            ..Default::default()
        };
        js.create_or_update_stream(config)
            .await
            .map_err(|e| setup(Box::new(e)))?;
        let store = js
            .get_object_store(bucket)
            .await
            .map_err(|e| setup(Box::new(e)))?;
        Ok(Self {
            js: js.clone(),
            store,
            bucket: bucket.to_owned(),
            stream: stream_name,
        })
    }

    /// What is stored under `id`; `None` if nothing (or it was deleted or
    /// aged out).
    pub async fn info(&self, id: &str) -> Result<Option<MediaInfo>, StoreError> {
        let r = tokio::time::timeout(STORE_TIMEOUT, self.store.info(id)).await;
        let info = match r {
            Err(_) => return Err(StoreError::Unavailable("timed out".into())),
            Ok(Err(e)) => match e.kind() {
                object_store::InfoErrorKind::NotFound
                | object_store::InfoErrorKind::InvalidName => return Ok(None),
                _ => return Err(unavailable(e)),
            },
            Ok(Ok(info)) => info,
        };
        if info.deleted {
            return Ok(None);
        }
        parse_info(&info)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(id.to_owned(), e))
    }

    /// A reader of the object's bytes (its digest is checked at the end).
    pub async fn reader(&self, id: &str) -> Result<Option<object_store::Object>, StoreError> {
        let r = tokio::time::timeout(STORE_TIMEOUT, self.store.get(id)).await;
        match r {
            Err(_) => Err(StoreError::Unavailable("timed out".into())),
            Ok(Err(e)) => match e.kind() {
                object_store::GetErrorKind::NotFound | object_store::GetErrorKind::InvalidName => {
                    Ok(None)
                }
                _ => Err(unavailable(e)),
            },
            Ok(Ok(o)) => Ok(Some(o)),
        }
    }

    /// Reads a whole object into memory (at most `max` bytes).
    pub async fn read_all(&self, info: &MediaInfo, max: u64) -> Result<Vec<u8>, StoreError> {
        let Some(object) = self.reader(&info.id).await? else {
            return Err(StoreError::Corrupt(info.id.clone(), "vanished".into()));
        };
        let mut out = Vec::with_capacity(usize::try_from(info.size.min(max)).unwrap_or(0));
        let mut limited = object.take(max.saturating_add(1));
        match tokio::time::timeout(STORE_TIMEOUT * 6, limited.read_to_end(&mut out)).await {
            Err(_) => return Err(StoreError::Unavailable("reading timed out".into())),
            Ok(Err(e)) => return Err(unavailable(e)),
            Ok(Ok(_)) => {}
        }
        if out.len() as u64 != info.size || out.len() as u64 > max {
            return Err(StoreError::Corrupt(
                info.id.clone(),
                format!("read {} bytes of {}", out.len(), info.size),
            ));
        }
        let digest: [u8; 32] = Sha256::digest(&out).into();
        if digest != info.sha256 {
            return Err(StoreError::Corrupt(
                info.id.clone(),
                "digest mismatch".into(),
            ));
        }
        Ok(out)
    }

    /// Starts writing an object.
    pub fn begin(&self) -> Upload {
        let nuid = hex::encode(rand::random::<[u8; 16]>());
        Upload {
            js: self.js.clone(),
            stream: self.stream.clone(),
            chunk_subject: format!("$O.{}.C.{}", self.bucket, nuid),
            bucket: self.bucket.clone(),
            nuid,
            buffer: BytesMut::with_capacity(CHUNK_SIZE),
            sha256: Sha256::new(),
            size: 0,
            chunks: 0,
            acks: VecDeque::new(),
            done: false,
        }
    }

    /// Stores `data` under `id` in one go (transcoded outputs).
    pub async fn put(
        &self,
        id: &str,
        meta: NewMedia,
        data: &[u8],
    ) -> Result<MediaInfo, StoreError> {
        let mut up = self.begin();
        for chunk in data.chunks(CHUNK_SIZE) {
            if let Err(e) = up.write(chunk).await {
                up.abort().await;
                return Err(e);
            }
        }
        up.finish(id, meta).await
    }

    /// Deletes `id` (its chunks are purged; a deleted marker remains until
    /// it ages out).
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        timed(self.store.delete(id)).await
    }
}

/// An object being written. Nothing is visible until [`Upload::finish`];
/// [`Upload::abort`] (or dropping it) purges what was written.
pub struct Upload {
    js: jetstream::Context,
    stream: String,
    bucket: String,
    nuid: String,
    chunk_subject: String,
    buffer: BytesMut,
    sha256: Sha256,
    size: u64,
    chunks: usize,
    acks: VecDeque<jetstream::context::PublishAckFuture>,
    done: bool,
}

fn publish_error(e: impl std::fmt::Display) -> StoreError {
    let text = e.to_string();
    // A `discard: new` stream at max_bytes refuses the publish.
    if text.contains("maximum bytes") || text.contains("resources exceeded") {
        StoreError::Full
    } else {
        StoreError::Unavailable(text)
    }
}

impl Upload {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends `data`.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        self.sha256.update(data);
        self.size += data.len() as u64;
        while !data.is_empty() {
            let n = (CHUNK_SIZE - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buffer.len() == CHUNK_SIZE {
                self.flush_chunk().await?;
            }
        }
        Ok(())
    }

    async fn flush_chunk(&mut self) -> Result<(), StoreError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let payload: Bytes = self.buffer.split().freeze();
        let ack = timed(self.js.publish(self.chunk_subject.clone(), payload)).await?;
        self.chunks += 1;
        self.acks.push_back(ack);
        while self.acks.len() > ACKS_IN_FLIGHT {
            if let Some(ack) = self.acks.pop_front() {
                tokio::time::timeout(STORE_TIMEOUT, ack)
                    .await
                    .map_err(|_| StoreError::Unavailable("chunk ack timed out".into()))?
                    .map_err(publish_error)?;
            }
        }
        Ok(())
    }

    /// The SHA-256 of everything written, once all is written.
    pub fn digest(&self) -> [u8; 32] {
        self.sha256.clone().finalize().into()
    }

    /// Publishes the object's metadata under `id`: from now on it can be
    /// read. Replaces (and purges) an earlier object of the same name.
    pub async fn finish(mut self, id: &str, meta: NewMedia) -> Result<MediaInfo, StoreError> {
        let result = self.finish_inner(id, &meta).await;
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    async fn finish_inner(&mut self, id: &str, meta: &NewMedia) -> Result<MediaInfo, StoreError> {
        self.flush_chunk().await?;
        while let Some(ack) = self.acks.pop_front() {
            tokio::time::timeout(STORE_TIMEOUT, ack)
                .await
                .map_err(|_| StoreError::Unavailable("chunk ack timed out".into()))?
                .map_err(publish_error)?;
        }
        let js = self.js.clone();
        let stream = timed(js.get_stream(&self.stream)).await?;
        let store = timed(js.get_object_store(&self.bucket)).await?;
        let previous = store.info(id).await.ok();
        let digest = self.digest();
        let info = object_store::ObjectInfo {
            name: id.to_owned(),
            description: None,
            metadata: meta.metadata(),
            headers: None,
            options: Some(object_store::ObjectOptions {
                max_chunk_size: Some(CHUNK_SIZE),
                link: None,
            }),
            bucket: self.bucket.clone(),
            nuid: self.nuid.clone(),
            size: usize::try_from(self.size).unwrap_or(usize::MAX),
            chunks: self.chunks,
            modified: Some(time::OffsetDateTime::now_utc()),
            digest: Some(format!("SHA-256={}", URL_SAFE.encode(digest))),
            deleted: false,
        };
        let payload = serde_json::to_vec(&info)
            .map_err(|e| StoreError::Unavailable(format!("encoding object info: {e}")))?;
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Rollup", "sub");
        let subject = format!("$O.{}.M.{}", self.bucket, URL_SAFE.encode(id));
        let ack = timed(js.publish_with_headers(subject, headers, payload.into())).await?;
        tokio::time::timeout(STORE_TIMEOUT, ack)
            .await
            .map_err(|_| StoreError::Unavailable("metadata ack timed out".into()))?
            .map_err(publish_error)?;
        self.done = true;
        if let Some(prev) = previous.filter(|p| p.nuid != self.nuid) {
            // The old version's chunks; if this fails they age out.
            stream
                .purge()
                .filter(format!("$O.{}.C.{}", self.bucket, prev.nuid))
                .await
                .ok();
        }
        parse_info(&info).map_err(|e| StoreError::Corrupt(id.to_owned(), e))
    }

    /// Purges what was written.
    pub async fn abort(mut self) {
        self.done = true;
        purge(
            self.js.clone(),
            self.stream.clone(),
            self.chunk_subject.clone(),
        )
        .await;
    }
}

async fn purge(js: jetstream::Context, stream: String, subject: String) {
    let result = async {
        let stream = js.get_stream(&stream).await.map_err(unavailable)?;
        stream.purge().filter(subject).await.map_err(unavailable)
    };
    if let Ok(Err(e)) | Err(e) = tokio::time::timeout(STORE_TIMEOUT, result)
        .await
        .map_err(|_| StoreError::Unavailable("timed out".into()))
    {
        // The chunks age out with the bucket's max_age.
        tracing::warn!(error = %e, "Could not purge the chunks of an abandoned upload.");
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.done || self.chunks == 0 && self.buffer.is_empty() {
            return;
        }
        // Dropped mid-way (the client went away): purge in the background.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (js, stream, subject) = (
                self.js.clone(),
                self.stream.clone(),
                self.chunk_subject.clone(),
            );
            rt.spawn(purge(js, stream, subject));
        }
    }
}

/// A new id for an uploaded object: `m-` and 128 random bits in hex.
pub fn new_upload_id() -> String {
    format!("m-{}", hex::encode(rand::random::<[u8; 16]>()))
}

/// Whether `id` is a media id the gateway hands out: `m-` (uploads) or `x-`
/// (transcoded) and 32 lowercase hex digits.
pub fn is_media_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("m-").or_else(|| id.strip_prefix("x-")) else {
        return false;
    };
    rest.len() == 32 && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids() {
        let id = new_upload_id();
        assert!(is_media_id(&id), "{id}");
        assert_ne!(id, new_upload_id());
        assert!(is_media_id(&crate::transcode::output_id(&[0; 32], "t")));
        assert!(!is_media_id("obj-1"));
        assert!(!is_media_id("m-../../etc"));
        assert!(!is_media_id(&format!("m-{}", "A".repeat(32))));
    }
}
