//! Handler of `interop.v1.routing.media-requested`.
//!
//! Input: `PipelineMessage` whose envelope content is `Media{media_id, ...}`
//! referencing an upload of the sender's provider. Output, one of:
//!
//! - the message on `interop.v1.delivery.queued.<key>` (Nats-Msg-Id = server
//!   message id) with the media the recipient gets: for E2EE the same blob
//!   (byte for byte, same id); for server-visible media the transcoded
//!   result and its thumbnail, with id, content type, size, SHA-256, width,
//!   height and duration filled in. The recipient is granted access first;
//! - a FAILED receipt into the sender's store with a code
//!   (`MEDIA_NOT_FOUND`, `MEDIA_INVALID`, `TOO_LONG`, `UNSUPPORTED_CONTENT`,
//!   `ENCRYPTION_MISMATCH`) and a detail saying what was wrong.
//!
//! Storage or Redis down: the message is retried later. Results are cached
//! by (source SHA-256, target), so a redelivered message, or the same photo
//! sent to many people, is transcoded once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use interop_bus::{pipeline, HandleError, Handler, Input, Outgoing};
use interop_proto::v1::{envelope::Content, Encryption, Envelope, Media, ReceiptStatus};
use interop_providers::{ContentKind, Registry};

use crate::error::MediaError;
use crate::formats::{AcceptFormats, Kind, MediaType};
use crate::grants::Grants;
use crate::metrics::MediaMetrics;
use crate::store::{is_media_id, MediaInfo, MediaStore, NewMedia, Origin, StoreError};
use crate::transcode::image::{Encoded, ImageEncoding, ImageTarget};
use crate::transcode::{output_id, sniff, Transcoder, GIF_TAG, VIDEO_TAG, VOICE_TAG};

/// How long before a retry when storage or Redis is down.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The media stage.
pub struct MediaRequested {
    store: MediaStore,
    grants: Grants,
    transcoder: Transcoder,
    /// What a recipient plays when its provider's registry record names no
    /// media formats (`--accept-formats`).
    accept: AcceptFormats,
    /// The live registry: each recipient provider's capabilities.
    providers: watch::Receiver<Arc<Registry>>,
    metrics: MediaMetrics,
    /// Cached results older than this are made again, so a recipient always
    /// has most of the retention period to download.
    refresh_after: Duration,
}

/// A processed piece of media: what goes into the envelope, what the
/// recipient may read, and how it went (metrics).
struct Done {
    media: Media,
    grant: Vec<String>,
    result: &'static str,
}

impl From<StoreError> for MediaError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(..) => {
                MediaError::Invalid("the stored media is damaged; upload it again".into())
            }
            other => MediaError::Unavailable(other.to_string()),
        }
    }
}

fn with_extension(filename: &str, ext: &str) -> String {
    if filename.is_empty() {
        return String::new();
    }
    match filename.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => format!("{stem}.{ext}"),
        _ => format!("{filename}.{ext}"),
    }
}

fn extension_of(content_type: &str) -> &'static str {
    match content_type {
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        "audio/ogg" => "ogg",
        "video/mp4" => "mp4",
        _ => "bin",
    }
}

fn media_of(info: &MediaInfo) -> Media {
    Media {
        media_id: info.id.clone(),
        content_type: info.content_type.clone(),
        size: info.size,
        sha256: info.sha256.to_vec().into(),
        filename: String::new(),
        duration_ms: info.duration_ms,
        width: info.width,
        height: info.height,
        thumbnail: None,
    }
}

fn encryption_name(e: i32) -> &'static str {
    match Encryption::try_from(e) {
        Ok(Encryption::E2ee) => "E2EE",
        Ok(Encryption::TransportOnly) => "TRANSPORT_ONLY",
        _ => "UNSPECIFIED",
    }
}

/// What to make of server-visible media.
enum Job {
    Image(ImageTarget),
    Av {
        tag: &'static str,
        poster: bool,
        needs: &'static str,
    },
}

/// A result to store: its bytes and what to record about it.
struct Output {
    id: String,
    bytes: Vec<u8>,
    meta: NewMedia,
}

impl MediaRequested {
    pub fn new(
        store: MediaStore,
        grants: Grants,
        transcoder: Transcoder,
        accept: AcceptFormats,
        providers: watch::Receiver<Arc<Registry>>,
        metrics: MediaMetrics,
        retention: Duration,
    ) -> Self {
        Self {
            store,
            grants,
            transcoder,
            accept,
            providers,
            metrics,
            refresh_after: retention / 2,
        }
    }

    /// The upload `media.media_id`, checked against what the envelope says.
    async fn source(
        &self,
        env: &Envelope,
        sender_provider: &str,
        media: &Media,
    ) -> Result<(MediaInfo, MediaType), MediaError> {
        let not_found = || MediaError::NotFound;
        if !is_media_id(&media.media_id) {
            return Err(not_found());
        }
        let info = self
            .store
            .info(&media.media_id)
            .await?
            .ok_or_else(not_found)?;
        match &info.origin {
            Origin::Upload { provider } if provider == sender_provider => {}
            _ => return Err(not_found()),
        }
        if info.encryption as i32 != env.encryption {
            return Err(MediaError::EncryptionMismatch(format!(
                "the media was uploaded as {} but the message is {}",
                encryption_name(info.encryption as i32),
                encryption_name(env.encryption)
            )));
        }
        let declared = MediaType::parse(&media.content_type)
            .map_err(|e| MediaError::Invalid(format!("content_type: {e}")))?;
        if declared.as_str() != info.content_type {
            return Err(MediaError::Invalid(format!(
                "the message declares {declared} but the upload is {}",
                info.content_type
            )));
        }
        if media.size != info.size {
            return Err(MediaError::Invalid(format!(
                "the message declares {} bytes but the upload has {}",
                media.size, info.size
            )));
        }
        if !media.sha256.is_empty() && media.sha256.as_ref() != info.sha256.as_slice() {
            return Err(MediaError::Invalid(
                "the message's sha256 does not match the upload".into(),
            ));
        }
        if info.size == 0 {
            return Err(MediaError::Invalid("the media is empty (0 bytes)".into()));
        }
        Ok((info, declared))
    }

    /// The formats `recipient`'s app plays: its provider's declared media
    /// formats, or the operator's default list when it declares none. A
    /// provider whose clients take no media at all gets none.
    fn accept_for(&self, recipient: &str) -> Result<AcceptFormats, MediaError> {
        let provider = recipient.split(':').next().unwrap_or("");
        let registry = self.providers.borrow().clone();
        let Some(caps) = registry.get(provider).map(|p| &p.capabilities) else {
            return Ok(self.accept.clone());
        };
        if !caps.supports(ContentKind::Media) {
            return Err(MediaError::Unsupported(format!(
                "the recipient's app ({provider}) does not take media"
            )));
        }
        if caps.media_formats.is_empty() {
            return Ok(self.accept.clone());
        }
        match AcceptFormats::parse(&caps.media_formats.join(",")) {
            Ok(a) => Ok(a),
            Err(e) => {
                warn!(provider, error = %e, "A provider's media formats do not parse; using the default list.");
                Ok(self.accept.clone())
            }
        }
    }

    /// E2EE: nothing to decode; check the recipient can play the declared
    /// format, and pass the blob through.
    fn e2ee(
        &self,
        media: &Media,
        info: &MediaInfo,
        declared: &MediaType,
        accept: &AcceptFormats,
    ) -> Result<Done, MediaError> {
        let kind = Kind::of(declared, info.sticker);
        if info.size > kind.max_bytes() {
            return Err(too_large(kind, info.size));
        }
        if !accept.accepts(declared.as_str()) {
            return Err(MediaError::Unsupported(format!(
                "the recipient's app cannot play {declared}, and the gateway cannot convert \
                 end-to-end-encrypted media; send a format it plays ({})",
                accept_summary(accept)
            )));
        }
        let mut out = media.clone();
        out.sha256 = info.sha256.to_vec().into();
        out.thumbnail = None;
        Ok(Done {
            media: out,
            grant: vec![info.id.clone()],
            result: "ok",
        })
    }

    fn unsupported(&self, declared: &MediaType, needs: &str) -> MediaError {
        MediaError::Unsupported(format!(
            "the recipient's app cannot play {needs}, which {declared} is converted to"
        ))
    }

    fn image_target(
        &self,
        kind: Kind,
        declared: &MediaType,
        accept: &AcceptFormats,
    ) -> Result<ImageTarget, MediaError> {
        let jpeg = accept.accepts("image/jpeg");
        let webp = accept.accepts("image/webp");
        match kind {
            Kind::Sticker if webp => Ok(ImageTarget::STICKER_WEBP),
            Kind::Sticker if jpeg => Ok(ImageTarget {
                encoding: ImageEncoding::Jpeg { quality: 85 },
                thumbnail_encoding: ImageEncoding::Jpeg { quality: 70 },
                ..ImageTarget::STICKER_WEBP
            }),
            _ if jpeg => Ok(ImageTarget::PHOTO_JPEG),
            _ if webp => Ok(ImageTarget::PHOTO_WEBP),
            _ => Err(self.unsupported(declared, "image/jpeg or image/webp")),
        }
    }

    /// A cached result, if both it and (when expected) its thumbnail are
    /// there and fresh.
    async fn cached(&self, id: &str, thumb_id: Option<&str>) -> Result<Option<Media>, MediaError> {
        let fresh = |i: &MediaInfo| {
            i.origin == Origin::Transcoded
                && interop_proto::now_ms() - i.stored_at_ms
                    < i64::try_from(self.refresh_after.as_millis()).unwrap_or(i64::MAX)
        };
        let Some(main) = self.store.info(id).await?.filter(fresh) else {
            return Ok(None);
        };
        let mut media = media_of(&main);
        if let Some(thumb_id) = thumb_id {
            match self.store.info(thumb_id).await?.filter(fresh) {
                Some(t) => media.thumbnail = Some(Box::new(media_of(&t))),
                None => return Ok(None),
            }
        }
        Ok(Some(media))
    }

    /// Stores the results (thumbnail first: a stored main result implies
    /// its thumbnail is there) and describes them.
    async fn store_outputs(
        &self,
        main: Output,
        thumb: Option<Output>,
    ) -> Result<Media, MediaError> {
        let thumbnail = match thumb {
            Some(t) => Some(Box::new(media_of(
                &self.store.put(&t.id, t.meta, &t.bytes).await?,
            ))),
            None => None,
        };
        let mut media = media_of(&self.store.put(&main.id, main.meta, &main.bytes).await?);
        media.thumbnail = thumbnail;
        Ok(media)
    }

    fn output_meta(content_type: &str, width: u32, height: u32, duration_ms: u32) -> NewMedia {
        NewMedia {
            origin: Origin::Transcoded,
            content_type: content_type.to_owned(),
            encryption: Encryption::TransportOnly,
            sticker: false,
            width,
            height,
            duration_ms,
        }
    }

    /// Server-visible files: passed through as they are.
    fn file(
        &self,
        media: &Media,
        info: &MediaInfo,
        declared: &MediaType,
        accept: &AcceptFormats,
    ) -> Result<Done, MediaError> {
        if !accept.accepts(declared.as_str()) {
            return Err(MediaError::Unsupported(format!(
                "the recipient's app does not accept {declared} files"
            )));
        }
        let mut out = media.clone();
        out.sha256 = info.sha256.to_vec().into();
        out.thumbnail = None;
        Ok(Done {
            media: out,
            grant: vec![info.id.clone()],
            result: "ok",
        })
    }

    /// Server-visible media: transcode to what the recipient plays. `kind`
    /// becomes `Image` for a GIF with a single frame.
    async fn transport_only(
        &self,
        media: &Media,
        info: &MediaInfo,
        declared: &MediaType,
        kind: &mut Kind,
        accept: &AcceptFormats,
    ) -> Result<Done, MediaError> {
        if info.size > kind.max_bytes() {
            return Err(too_large(*kind, info.size));
        }
        if *kind == Kind::File {
            return self.file(media, info, declared, accept);
        }
        if !declared.processable() {
            return Err(MediaError::Unsupported(format!(
                "the gateway cannot convert {declared}"
            )));
        }
        // Only animated GIFs go to MP4; a GIF with one frame is an image.
        let mut data = None;
        if *kind == Kind::Gif {
            let bytes = self.store.read_all(info, kind.max_bytes()).await?;
            match sniff::gif_frames(&bytes, 2) {
                Some(n) if n >= 2 => {}
                Some(_) => *kind = Kind::Image,
                None if bytes.starts_with(b"GIF8") => {
                    return Err(MediaError::Invalid(
                        "the GIF is corrupt or truncated".into(),
                    ))
                }
                None => {
                    return Err(MediaError::Invalid(format!(
                        "declared {declared} but the content is {}",
                        sniff::describe_or_unknown(&bytes)
                    )))
                }
            }
            data = Some(bytes);
        }
        let job = match *kind {
            Kind::Voice => Job::Av {
                tag: VOICE_TAG,
                poster: false,
                needs: "audio/ogg",
            },
            Kind::Video => Job::Av {
                tag: VIDEO_TAG,
                poster: true,
                needs: "video/mp4",
            },
            Kind::Gif => Job::Av {
                tag: GIF_TAG,
                poster: true,
                needs: "video/mp4",
            },
            _ => Job::Image(self.image_target(*kind, declared, accept)?),
        };
        let (tag, thumb_tag, needs) = match &job {
            Job::Av { tag, poster, needs } => (
                tag.to_string(),
                poster.then(|| format!("poster-of-{tag}")),
                *needs,
            ),
            Job::Image(t) => (t.tag(), Some(t.thumbnail_tag()), t.encoding.content_type()),
        };
        if !accept.accepts(needs) {
            return Err(self.unsupported(declared, needs));
        }
        let id = output_id(&info.sha256, &tag);
        let thumb_id = thumb_tag.map(|t| output_id(&info.sha256, &t));
        let done = |mut m: Media, result| {
            m.filename = with_extension(&media.filename, extension_of(&m.content_type));
            let mut grant = vec![m.media_id.clone()];
            grant.extend(m.thumbnail.as_ref().map(|t| t.media_id.clone()));
            Done {
                media: m,
                grant,
                result,
            }
        };
        // (A video whose poster could not be made is made again next time:
        // rare and harmless.)
        if let Some(m) = self.cached(&id, thumb_id.as_deref()).await? {
            return Ok(done(m, "cached"));
        }
        let data = match data {
            Some(d) => d,
            None => self.store.read_all(info, kind.max_bytes()).await?,
        };
        let (main, duration_ms, thumb) = match job {
            Job::Image(target) => {
                let out = self
                    .transcoder
                    .image(Arc::new(data), declared.clone(), target)
                    .await?;
                (out.image, 0, Some(out.thumbnail))
            }
            Job::Av { .. } => {
                let av = match *kind {
                    Kind::Voice => self.transcoder.voice(&data, declared).await?,
                    Kind::Video => self.transcoder.video(&data, declared).await?,
                    _ => self.transcoder.gif(&data, declared).await?,
                };
                let main = Encoded {
                    bytes: av.bytes,
                    content_type: av.content_type,
                    width: av.width,
                    height: av.height,
                };
                (main, av.duration_ms, av.poster)
            }
        };
        let m = Output {
            id,
            meta: Self::output_meta(main.content_type, main.width, main.height, duration_ms),
            bytes: main.bytes,
        };
        let t = match (thumb, thumb_id) {
            (Some(p), Some(tid)) => Some(Output {
                id: tid,
                meta: Self::output_meta(p.content_type, p.width, p.height, 0),
                bytes: p.bytes,
            }),
            _ => None,
        };
        Ok(done(self.store_outputs(m, t).await?, "ok"))
    }

    async fn process(
        &self,
        env: &Envelope,
        sender_provider: &str,
        media: &Media,
    ) -> (&'static str, Result<Done, MediaError>) {
        let e2ee = env.encryption == Encryption::E2ee as i32;
        let mut kind = MediaType::parse(&media.content_type)
            .map(|t| Kind::of(&t, false))
            .unwrap_or(Kind::File);
        let result = async {
            let accept = self.accept_for(&env.to)?;
            let (info, declared) = self.source(env, sender_provider, media).await?;
            if e2ee {
                return self.e2ee(media, &info, &declared, &accept);
            }
            kind = Kind::of(&declared, info.sticker);
            self.transport_only(media, &info, &declared, &mut kind, &accept)
                .await
        }
        .await;
        let label = if e2ee { "e2ee" } else { kind.label() };
        (label, result)
    }
}

fn accept_summary(accept: &AcceptFormats) -> String {
    ["image/jpeg", "image/webp", "audio/ogg", "video/mp4"]
        .into_iter()
        .filter(|t| accept.accepts(t))
        .collect::<Vec<_>>()
        .join(", ")
}

fn too_large(kind: Kind, size: u64) -> MediaError {
    MediaError::TooLarge(format!(
        "the {} is {size} bytes; the limit is {} MiB",
        kind.label(),
        kind.max_bytes() / (1024 * 1024)
    ))
}

impl Handler for MediaRequested {
    async fn handle(&self, input: Input<'_>) -> Result<Vec<Outgoing>, HandleError> {
        let mut pm = pipeline::decode(input.payload)?;
        let Some(env) = pm.envelope.clone() else {
            return Err(HandleError::Permanent(
                "pipeline message without envelope".into(),
            ));
        };
        let Some(Content::Media(media)) = &env.content else {
            // Not media: nothing to do here.
            return Ok(vec![pipeline::to_recipient_store(&pm)]);
        };
        let sender_provider = if pm.sender_provider.is_empty() {
            env.from.split(':').next().unwrap_or("").to_owned()
        } else {
            pm.sender_provider.clone()
        };
        let started = Instant::now();
        let (kind, result) = self.process(&env, &sender_provider, media).await;
        let seconds = started.elapsed().as_secs_f64();
        let result = match result {
            Ok(done) => {
                let ids: Vec<&str> = done
                    .grant
                    .iter()
                    .map(String::as_str)
                    .filter(|s| !s.is_empty())
                    .collect();
                self.grants
                    .grant(&ids, &env.to, &env.from, &media.media_id)
                    .await
                    .map(|()| done)
                    .map_err(|e| {
                        MediaError::Unavailable(format!("cannot record the download grant: {e}"))
                    })
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(done) => {
                self.metrics.transcoded(kind, done.result, seconds);
                debug!(kind, result = done.result, seconds, "Media processed.");
                if let Some(e) = pm.envelope.as_mut() {
                    e.content = Some(Content::Media(done.media));
                }
                Ok(vec![pipeline::to_recipient_store(&pm)])
            }
            Err(e) if e.is_retryable() => {
                warn!(kind, error = %e, "Media processing will be retried.");
                Err(HandleError::Retry {
                    reason: e.to_string(),
                    after: RETRY_AFTER,
                })
            }
            Err(e) => {
                self.metrics.transcoded(kind, "failed", seconds);
                let code = e.code();
                info!(kind, code = code.as_str_name(), detail = %e, "Media refused; the sender gets a FAILED receipt.");
                Ok(vec![pipeline::receipt_to_sender(
                    &env,
                    ReceiptStatus::Failed,
                    code,
                    &e.to_string(),
                )])
            }
        }
    }
}
