//! Shared by the media-transcoding integration tests: fixtures made at run
//! time (ffmpeg test sources, images drawn with the `image` crate), a plain
//! HTTP/1.1 client, and the service running against real nats-server and
//! redis-server.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ImageEncoder, RgbImage, RgbaImage};
use prost::Message as _;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use interop_bus::subjects::{delivery_queued, ROUTING_MEDIA_REQUESTED, STREAM_INBOX};
use interop_media_transcoding::store::{
    new_upload_id, MediaStore, NewMedia, Origin, StoreSettings,
};
use interop_media_transcoding::Config;
use interop_proto::v1::{envelope::Content, Encryption, Envelope, Media, PipelineMessage};
use interop_providers::{hash_token, Registry};
use interop_service::{Deps, Health, Metrics};
use interop_test_support::{NatsServer, RedisServer};

pub const HOME_TOKEN: &str = "home-test-token-0123456789abcdef";
pub const SIGNAL_TOKEN: &str = "signal-test-token-0123456789abcdef";
pub const BOB: &str = "home:+4915112345678";
pub const ALICE: &str = "signal:alice";

pub fn registry() -> Registry {
    registry_with_home_capabilities("")
}

/// The test registry, with `capabilities` (TOML lines) for "home", BOB's
/// provider: the recipient in `Service::send_media`.
pub fn registry_with_home_capabilities(capabilities: &str) -> Registry {
    Registry::from_toml(&format!(
        r#"
        [[providers]]
        id = "home"
        display_name = "Home"
        encryption = "e2ee"
        token_sha256 = ["{}"]
        {capabilities}

        [[providers]]
        id = "signal"
        display_name = "Signal"
        encryption = "e2ee"
        token_sha256 = ["{}"]
        "#,
        hash_token(HOME_TOKEN),
        hash_token(SIGNAL_TOKEN)
    ))
    .unwrap()
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

// ---------------------------------------------------------------- fixtures

/// Runs ffmpeg with `args`, writing to a file named `out` in a temp dir, and
/// returns the file's bytes.
pub fn ffmpeg(args: &[&str], out: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(out);
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-v", "error", "-y"])
        .args(args)
        .arg(&path)
        .status()
        .expect("ffmpeg is installed (apt-get install -y ffmpeg)");
    assert!(status.success(), "ffmpeg {args:?} failed");
    std::fs::read(&path).unwrap()
}

/// A 1080p test pattern with a 440 Hz tone, H.264/AAC in MP4.
pub fn video_1080p(seconds: &str) -> Vec<u8> {
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1920x1080:rate=10",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440",
            "-t",
            seconds,
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
            "-shortest",
            "-metadata",
            "title=secret-title",
        ],
        "in.mp4",
    )
}

/// A voice note: a 440 Hz tone, AAC in M4A (what many phones record).
pub fn voice_m4a(seconds: &str) -> Vec<u8> {
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=16000",
            "-t",
            seconds,
            "-c:a",
            "aac",
            "-b:a",
            "32k",
            "-metadata",
            "artist=secret-artist",
        ],
        "in.m4a",
    )
}

/// 15 minutes and 1 second of silence (WAV, small).
pub fn long_voice_wav() -> Vec<u8> {
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "anullsrc=r=4000:cl=mono",
            "-t",
            "901",
            "-c:a",
            "pcm_u8",
        ],
        "long.wav",
    )
}

/// 5 minutes and 1 second of a tiny black video.
pub fn long_video() -> Vec<u8> {
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "color=c=black:s=32x32:r=1",
            "-t",
            "301",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ],
        "long.mp4",
    )
}

/// An animated GIF (10 frames).
pub fn animated_gif() -> Vec<u8> {
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=160x120:rate=10",
            "-t",
            "1",
        ],
        "anim.gif",
    )
}

fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x + y) % 256) as u8,
        ])
    })
}

/// A JPEG photo.
pub fn photo_jpeg(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(
            gradient(w, h).as_raw(),
            w,
            h,
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// A PNG, with transparency if `alpha`.
pub fn png(w: u32, h: u32, alpha: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if alpha {
        let img = RgbaImage::from_fn(w, h, |x, _| image::Rgba([200, 30, 30, (x * 255 / w) as u8]));
        PngEncoder::new(&mut out)
            .write_image(img.as_raw(), w, h, image::ExtendedColorType::Rgba8)
            .unwrap();
    } else {
        PngEncoder::new(&mut out)
            .write_image(
                gradient(w, h).as_raw(),
                w,
                h,
                image::ExtendedColorType::Rgb8,
            )
            .unwrap();
    }
    out
}

/// The camera make written into [`jpeg_with_exif`].
pub const EXIF_MAKE: &[u8] = b"SecretCam";

/// The GPS latitude and longitude rationals written into [`jpeg_with_exif`].
pub fn gps_rationals() -> Vec<u8> {
    let mut t = Vec::new();
    for (num, den) in [
        (52u32, 1u32),
        (31, 1),
        (1234, 100),
        (13, 1),
        (24, 1),
        (5678, 100),
    ] {
        t.extend_from_slice(&num.to_le_bytes());
        t.extend_from_slice(&den.to_le_bytes());
    }
    t
}

/// A `w`x`h` JPEG whose EXIF block says "rotate 90° clockwise to display"
/// (orientation 6), names the camera ([`EXIF_MAKE`]) and carries a GPS
/// position (52°31'12.34" N, 13°24'56.78" E).
pub fn jpeg_with_exif(w: u32, h: u32) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, tag: u16, kind: u16, count: u32, value: [u8; 4]) {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&value);
    }
    const ASCII: u16 = 2;
    const SHORT: u16 = 3;
    const LONG: u16 = 4;
    const RATIONAL: u16 = 5;
    let mut t = Vec::new();
    t.extend_from_slice(b"II*\0");
    t.extend_from_slice(&8u32.to_le_bytes());
    // IFD0 at 8: Make (data at 50), Orientation, GPS IFD pointer (60).
    t.extend_from_slice(&3u16.to_le_bytes());
    entry(&mut t, 0x010F, ASCII, 10, 50u32.to_le_bytes());
    entry(&mut t, 0x0112, SHORT, 1, [6, 0, 0, 0]);
    entry(&mut t, 0x8825, LONG, 1, 60u32.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(t.len(), 50);
    t.extend_from_slice(EXIF_MAKE);
    t.push(0);
    assert_eq!(t.len(), 60);
    // GPS IFD at 60: latitude (data at 114), longitude (data at 138).
    t.extend_from_slice(&4u16.to_le_bytes());
    entry(&mut t, 0x0001, ASCII, 2, *b"N\0\0\0");
    entry(&mut t, 0x0002, RATIONAL, 3, 114u32.to_le_bytes());
    entry(&mut t, 0x0003, ASCII, 2, *b"E\0\0\0");
    entry(&mut t, 0x0004, RATIONAL, 3, 138u32.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(t.len(), 114);
    t.extend_from_slice(&gps_rationals());
    let jpeg = photo_jpeg(w, h);
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&u16::try_from(2 + 6 + t.len()).unwrap().to_be_bytes());
    app1.extend_from_slice(b"Exif\0\0");
    app1.extend_from_slice(&t);
    [&jpeg[..2], &app1[..], &jpeg[2..]].concat()
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A decompression bomb: a few dozen bytes of PNG declaring 100000x100000
/// pixels (30 GB decoded).
pub fn png_bomb() -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(&mut out, b"IDAT", &[0x78, 0x9C, 0x63, 0, 0, 0, 1, 0, 1]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

// ---------------------------------------------------------------- HTTP

/// A response of the plain client.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The error code of a JSON error answer.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`). `body`
/// `None` sends the headers only.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    if let Some(body) = body {
        // The server may answer (and close) before reading it all.
        stream.write_all(body).await.ok();
    }
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut buf))
        .await
        .expect("the server answered within 20 s")
        .ok();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = buf[split + 4..].to_vec();
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// `POST /v1/media` with correct headers (override with `extra`).
pub async fn upload(
    addr: &str,
    provider: &str,
    token: &str,
    content_type: &str,
    encryption: &str,
    data: &[u8],
    extra: &[(&str, String)],
) -> HttpResponse {
    let mut headers: Vec<(&str, String)> = vec![
        ("Authorization", format!("Bearer {token}")),
        ("X-Interop-Provider", provider.to_owned()),
        ("Content-Type", content_type.to_owned()),
        ("Content-Length", data.len().to_string()),
        ("X-Interop-Sha256", hex::encode(sha256(data))),
        ("X-Interop-Encryption", encryption.to_owned()),
    ];
    for (k, v) in extra {
        headers.retain(|(h, _)| !h.eq_ignore_ascii_case(k));
        if !v.is_empty() {
            headers.push((k, v.clone()));
        }
    }
    http(addr, "POST", "/v1/media", &headers, Some(data)).await
}

/// `GET /v1/media/<id>` as `as_user`.
pub async fn download(
    addr: &str,
    provider: &str,
    token: &str,
    as_user: &str,
    id: &str,
) -> HttpResponse {
    let headers = vec![
        ("Authorization", format!("Bearer {token}")),
        ("X-Interop-Provider", provider.to_owned()),
        ("X-Interop-As", as_user.to_owned()),
    ];
    http(addr, "GET", &format!("/v1/media/{id}"), &headers, None).await
}

// ---------------------------------------------------------------- service

/// media-transcoding running in-process against real servers.
pub struct Service {
    pub nats: NatsServer,
    pub redis: RedisServer,
    /// `host:port` of the media API.
    pub addr: String,
    pub js: jetstream::Context,
    pub metrics: Arc<Metrics>,
    pub store: MediaStore,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Service {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(change: impl FnOnce(&mut Config)) -> Self {
        Self::start_on(NatsServer::start(), RedisServer::start(), change).await
    }

    /// Starts on servers the test already prepared.
    pub async fn start_on(
        nats: NatsServer,
        redis: RedisServer,
        change: impl FnOnce(&mut Config),
    ) -> Self {
        let health = Health::new();
        let metrics = Arc::new(Metrics::default());
        let deps = Deps::connect(
            &nats.url(),
            &redis.url(),
            "media-test",
            health.clone(),
            metrics.clone(),
        )
        .await
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut config = Config::new(listener, Arc::new(registry()));
        config.transcode.concurrency = 2;
        change(&mut config);
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let js = jetstream::new(deps.nats.clone());
        let task = tokio::spawn(async move {
            interop_media_transcoding::run(config, deps, s)
                .await
                .map_err(|e| e.to_string())
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while health.ready().await.is_err() {
            assert!(
                !task.is_finished(),
                "media-transcoding stopped during start-up"
            );
            assert!(tokio::time::Instant::now() < deadline, "not ready in 20 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let store = MediaStore::open(&js, &StoreSettings::default(), 1)
            .await
            .unwrap();
        Self {
            nats,
            redis,
            addr,
            js,
            metrics,
            store,
            shutdown,
            task,
        }
    }

    /// Stores `data` as if `provider` had uploaded it, bypassing the API's
    /// checks (to test the stage's own).
    pub async fn put_upload(
        &self,
        provider: &str,
        content_type: &str,
        e2ee: bool,
        data: &[u8],
    ) -> String {
        let id = new_upload_id();
        let meta = NewMedia {
            origin: Origin::Upload {
                provider: provider.to_owned(),
            },
            content_type: content_type.to_owned(),
            encryption: if e2ee {
                Encryption::E2ee
            } else {
                Encryption::TransportOnly
            },
            sticker: false,
            width: 0,
            height: 0,
            duration_ms: 0,
        };
        self.store.put(&id, meta, data).await.unwrap();
        id
    }

    /// Publishes a media message from ALICE to BOB as routing does.
    pub async fn send_media(&self, message_id: &str, e2ee: bool, media: Media) {
        let env = Envelope {
            message_id: message_id.into(),
            client_message_id: format!("c-{message_id}"),
            from: ALICE.into(),
            to: BOB.into(),
            encryption: if e2ee {
                Encryption::E2ee
            } else {
                Encryption::TransportOnly
            } as i32,
            content: Some(Content::Media(media)),
            ..Default::default()
        };
        let pm = PipelineMessage {
            envelope: Some(env),
            sender_provider: "signal".into(),
            ..Default::default()
        };
        self.js
            .publish(ROUTING_MEDIA_REQUESTED, pm.encode_to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// The store of `address`, read from the beginning.
    pub async fn inbox(&self, address: &str) -> Inbox {
        let stream = self.js.get_stream(STREAM_INBOX).await.unwrap();
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: delivery_queued(&interop_bus::recipient_path(address)),
                ack_policy: consumer::AckPolicy::None,
                ..Default::default()
            })
            .await
            .unwrap();
        let messages = consumer.messages().await.unwrap();
        Inbox {
            messages: Box::pin(messages),
        }
    }

    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("stopped within 20 s")
            .expect("did not panic");
        assert!(r.is_ok(), "{r:?}");
    }
}

type MessageStream = std::pin::Pin<
    Box<
        dyn futures_util::Stream<Item = Result<jetstream::Message, consumer::pull::MessagesError>>
            + Send,
    >,
>;

/// Messages in one recipient's store.
pub struct Inbox {
    messages: MessageStream,
}

impl Inbox {
    pub async fn next(&mut self) -> Envelope {
        let msg = tokio::time::timeout(Duration::from_secs(30), self.messages.next())
            .await
            .expect("a message within 30 s")
            .unwrap()
            .unwrap();
        PipelineMessage::decode(msg.payload.as_ref())
            .unwrap()
            .envelope
            .unwrap()
    }

    /// Nothing more arrives within `wait`.
    pub async fn assert_empty(&mut self, wait: Duration) {
        if let Ok(Some(m)) = tokio::time::timeout(wait, self.messages.next()).await {
            let env = PipelineMessage::decode(m.unwrap().payload.as_ref())
                .unwrap()
                .envelope;
            panic!("unexpected message: {env:?}");
        }
    }
}

/// The media of a delivered envelope.
pub fn media_of(env: &Envelope) -> &Media {
    match &env.content {
        Some(Content::Media(m)) => m,
        other => panic!("expected media, got {other:?}"),
    }
}

/// The receipt of a delivered envelope.
pub fn receipt_of(env: &Envelope) -> &interop_proto::v1::Receipt {
    match &env.content {
        Some(Content::Receipt(r)) => r,
        other => panic!("expected a receipt, got {other:?}"),
    }
}

/// A media reference as a sender would write it.
pub fn media_ref(id: &str, content_type: &str, data: &[u8]) -> Media {
    Media {
        media_id: id.into(),
        content_type: content_type.into(),
        size: data.len() as u64,
        filename: "file.bin".into(),
        ..Default::default()
    }
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}
