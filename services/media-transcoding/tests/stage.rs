//! The media stage against real nats-server and redis-server: messages on
//! `interop.v1.routing.media-requested` in, the recipient's store (or a
//! receipt in the sender's) out.

mod common;

use std::time::Duration;

use common::*;
use interop_proto::v1::{ReceiptStatus, RejectCode};

/// Uploads through the API and returns the media id.
async fn uploaded(
    s: &Service,
    content_type: &str,
    encryption: &str,
    data: &[u8],
    extra: &[(&str, String)],
) -> String {
    let r = upload(
        &s.addr,
        "signal",
        SIGNAL_TOKEN,
        content_type,
        encryption,
        data,
        extra,
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    r.json()["media_id"].as_str().unwrap().to_owned()
}

fn metric(s: &Service, sample: &str) -> f64 {
    let text = s.metrics_text();
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_visible_photo_is_transcoded_granted_and_delivered_and_cached() {
    let s = Service::start().await;
    let data = jpeg_with_exif(1200, 800);
    let id = uploaded(&s, "image/jpeg", "transport-only", &data, &[]).await;
    let mut bob = s.inbox(BOB).await;
    let mut media = media_ref(&id, "image/jpeg", &data);
    media.filename = "IMG_0001.JPEG".into();
    s.send_media("m1", false, media.clone()).await;
    let env = bob.next().await;
    assert_eq!(env.message_id, "m1");
    let m = media_of(&env);
    assert!(
        m.media_id.starts_with("x-") && m.media_id != id,
        "{}",
        m.media_id
    );
    assert_eq!(
        (m.content_type.as_str(), m.width, m.height),
        ("image/jpeg", 800, 1200)
    );
    assert_eq!(m.filename, "IMG_0001.jpg");
    let thumb = m.thumbnail.as_deref().expect("a thumbnail");
    assert_eq!(
        (thumb.content_type.as_str(), thumb.width, thumb.height),
        ("image/jpeg", 213, 320)
    );

    let got = download(&s.addr, "home", HOME_TOKEN, BOB, &m.media_id).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.len() as u64, m.size);
    assert_eq!(sha256(&got.body).as_slice(), m.sha256.as_ref());
    assert!(!got.body.windows(EXIF_MAKE.len()).any(|w| w == EXIF_MAKE));
    assert_eq!(image::load_from_memory(&got.body).unwrap().width(), 800);
    let got = download(&s.addr, "home", HOME_TOKEN, BOB, &thumb.media_id).await;
    assert_eq!(got.status, 200);
    assert_eq!(sha256(&got.body).as_slice(), thumb.sha256.as_ref());
    // The original itself is not readable by the recipient.
    assert_eq!(
        download(&s.addr, "home", HOME_TOKEN, BOB, &id).await.status,
        404
    );
    assert_eq!(
        metric(
            &s,
            "interop_media_transcoding_transcodes_total{kind=\"image\",result=\"ok\"}"
        ),
        1.0
    );

    // The same photo again (say, to a second chat): served from the cache.
    s.send_media("m2", false, media).await;
    let again = bob.next().await;
    assert_eq!(media_of(&again).media_id, m.media_id);
    assert_eq!(
        metric(
            &s,
            "interop_media_transcoding_transcodes_total{kind=\"image\",result=\"cached\"}"
        ),
        1.0
    );
    assert!(s
        .metrics_text()
        .contains("interop_media_transcoding_transcode_seconds_count{kind=\"image\"} 2"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_encrypted_media_passes_through_byte_for_byte() {
    let s = Service::start().await;
    // Ciphertext: random-looking bytes, whatever the declared type.
    let blob: Vec<u8> = (0..300_001u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let id = uploaded(&s, "video/mp4", "e2ee", &blob, &[]).await;
    let mut bob = s.inbox(BOB).await;
    let mut media = media_ref(&id, "video/mp4", &blob);
    media.duration_ms = 4200;
    s.send_media("e1", true, media.clone()).await;
    let env = bob.next().await;
    let m = media_of(&env);
    assert_eq!(m.media_id, id, "same media id");
    assert_eq!(
        (m.size, m.duration_ms, m.filename.as_str()),
        (blob.len() as u64, 4200, "file.bin")
    );
    assert_eq!(
        m.sha256.as_ref(),
        sha256(&blob).as_slice(),
        "the hash is filled in"
    );
    assert!(m.thumbnail.is_none());
    let got = download(&s.addr, "home", HOME_TOKEN, BOB, &id).await;
    assert_eq!(got.status, 200);
    assert!(got.body == blob, "byte for byte");
    assert_eq!(
        metric(
            &s,
            "interop_media_transcoding_transcodes_total{kind=\"e2ee\",result=\"ok\"}"
        ),
        1.0
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_gifs_stickers_and_files_get_their_formats() {
    let s = Service::start().await;
    let mut bob = s.inbox(BOB).await;
    let voice = voice_m4a("2");
    let id = uploaded(&s, "audio/mp4", "transport-only", &voice, &[]).await;
    s.send_media("v1", false, media_ref(&id, "audio/mp4", &voice))
        .await;
    let m = media_of(&bob.next().await).clone();
    assert_eq!(m.content_type, "audio/ogg");
    assert!((1900..=2100).contains(&m.duration_ms), "{}", m.duration_ms);
    assert!(m.thumbnail.is_none());
    assert_eq!(m.filename, "file.ogg");

    let gif = animated_gif();
    let id = uploaded(&s, "image/gif", "transport-only", &gif, &[]).await;
    s.send_media("g1", false, media_ref(&id, "image/gif", &gif))
        .await;
    let m = media_of(&bob.next().await).clone();
    assert_eq!(
        (m.content_type.as_str(), m.width, m.height),
        ("video/mp4", 160, 120)
    );
    assert_eq!(
        m.thumbnail.as_deref().map(|t| t.content_type.as_str()),
        Some("image/jpeg")
    );

    let sticker = png(600, 600, true);
    let id = uploaded(
        &s,
        "image/png",
        "transport-only",
        &sticker,
        &[("X-Interop-Sticker", "true".into())],
    )
    .await;
    s.send_media("s1", false, media_ref(&id, "image/png", &sticker))
        .await;
    let m = media_of(&bob.next().await).clone();
    assert_eq!(
        (m.content_type.as_str(), m.width, m.height),
        ("image/webp", 512, 512)
    );

    let pdf = b"%PDF-1.4 not really".to_vec();
    let id = uploaded(&s, "application/pdf", "transport-only", &pdf, &[]).await;
    s.send_media("f1", false, media_ref(&id, "application/pdf", &pdf))
        .await;
    let m = media_of(&bob.next().await).clone();
    assert_eq!(
        (m.media_id.as_str(), m.content_type.as_str()),
        (id.as_str(), "application/pdf")
    );
    for kind in ["voice", "gif", "sticker", "file"] {
        assert_eq!(
            metric(
                &s,
                &format!(
                    "interop_media_transcoding_transcodes_total{{kind=\"{kind}\",result=\"ok\"}}"
                )
            ),
            1.0,
            "{kind}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_media_reaches_the_sender_as_a_typed_failure_and_other_messages_keep_flowing() {
    let s = Service::start().await;
    let mut bob = s.inbox(BOB).await;
    let mut alice = s.inbox(ALICE).await;
    let png_bytes = png(32, 32, false);
    let mut corrupt = photo_jpeg(64, 64);
    let n = corrupt.len();
    corrupt.truncate(n / 3);
    let e2ee_blob = vec![9u8; 1000];

    // (message id, media, e2ee, expected code, words in the detail)
    let mut cases = Vec::new();
    let id = s.put_upload("signal", "image/jpeg", false, &corrupt).await;
    cases.push((
        "bad-corrupt",
        media_ref(&id, "image/jpeg", &corrupt),
        false,
        RejectCode::MediaInvalid,
        "corrupt or truncated",
    ));
    let id = s.put_upload("signal", "video/mp4", false, &png_bytes).await;
    cases.push((
        "bad-mislabeled",
        media_ref(&id, "video/mp4", &png_bytes),
        false,
        RejectCode::MediaInvalid,
        "declared video/mp4 but the content is a PNG image",
    ));
    let bomb = png_bomb();
    let id = s.put_upload("signal", "image/png", false, &bomb).await;
    cases.push((
        "bad-bomb",
        media_ref(&id, "image/png", &bomb),
        false,
        RejectCode::TooLong,
        "100000x100000",
    ));
    let id = s.put_upload("signal", "image/jpeg", false, &[]).await;
    let mut empty = media_ref(&id, "image/jpeg", &[]);
    empty.size = 0;
    cases.push(("bad-empty", empty, false, RejectCode::MediaInvalid, "empty"));
    let long = long_voice_wav();
    let id = s.put_upload("signal", "audio/wav", false, &long).await;
    cases.push((
        "bad-long",
        media_ref(&id, "audio/wav", &long),
        false,
        RejectCode::TooLong,
        "15 minutes",
    ));
    cases.push((
        "bad-unknown",
        media_ref(
            "m-00000000000000000000000000000000",
            "image/jpeg",
            &png_bytes,
        ),
        false,
        RejectCode::MediaNotFound,
        "no media",
    ));
    let id = s.put_upload("home", "image/png", false, &png_bytes).await;
    cases.push((
        "bad-not-yours",
        media_ref(&id, "image/png", &png_bytes),
        false,
        RejectCode::MediaNotFound,
        "no media",
    ));
    let id = s.put_upload("signal", "image/png", false, &png_bytes).await;
    let mut wrong_size = media_ref(&id, "image/png", &png_bytes);
    wrong_size.size += 1;
    cases.push((
        "bad-size",
        wrong_size,
        false,
        RejectCode::MediaInvalid,
        "declares",
    ));
    cases.push((
        "bad-encryption",
        media_ref(&id, "image/png", &png_bytes),
        true,
        RejectCode::EncryptionMismatch,
        "uploaded as TRANSPORT_ONLY",
    ));
    let id = s.put_upload("signal", "image/heic", true, &e2ee_blob).await;
    cases.push((
        "bad-unplayable",
        media_ref(&id, "image/heic", &e2ee_blob),
        true,
        RejectCode::UnsupportedContent,
        "cannot play image/heic",
    ));

    for (message_id, media, e2ee, _, _) in &cases {
        s.send_media(message_id, *e2ee, media.clone()).await;
    }
    // A good one after all the bad ones.
    let good = photo_jpeg(100, 80);
    let id = s.put_upload("signal", "image/jpeg", false, &good).await;
    s.send_media("good", false, media_ref(&id, "image/jpeg", &good))
        .await;

    let delivered = bob.next().await;
    assert_eq!(delivered.message_id, "good");
    bob.assert_empty(Duration::from_millis(300)).await;
    for (message_id, _, _, code, words) in &cases {
        let env = alice.next().await;
        let r = receipt_of(&env);
        assert_eq!(&r.message_id, message_id);
        assert_eq!(r.client_message_id, format!("c-{message_id}"));
        assert_eq!(r.status, ReceiptStatus::Failed as i32, "{message_id}");
        assert_eq!(r.code, *code as i32, "{message_id}: {}", r.detail);
        assert!(r.detail.contains(words), "{message_id}: {}", r.detail);
        assert_eq!(env.to, ALICE);
        assert_eq!(env.from, BOB);
    }
    let failed: f64 = ["image", "video", "voice", "e2ee"]
        .iter()
        .map(|k| {
            metric(
                &s,
                &format!(
                    "interop_media_transcoding_transcodes_total{{kind=\"{k}\",result=\"failed\"}}"
                ),
            )
        })
        .sum();
    assert_eq!(failed, cases.len() as f64);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_that_plays_no_offered_format_gets_nothing_and_the_sender_is_told() {
    let s = Service::start_with(|c| {
        c.accept = interop_media_transcoding::AcceptFormats::parse("image/jpeg").unwrap();
    })
    .await;
    let mut alice = s.inbox(ALICE).await;
    let voice = voice_m4a("1");
    let id = uploaded(&s, "audio/mp4", "transport-only", &voice, &[]).await;
    s.send_media("v", false, media_ref(&id, "audio/mp4", &voice))
        .await;
    let r = receipt_of(&alice.next().await).clone();
    assert_eq!(r.code, RejectCode::UnsupportedContent as i32);
    assert!(r.detail.contains("audio/ogg"), "{}", r.detail);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_recipient_gets_the_formats_its_provider_declares() {
    // Home's clients show WebP only: a JPEG photo to BOB becomes WebP, though
    // the operator's default list would have made it JPEG.
    let s = Service::start_with(|c| {
        c.providers = std::sync::Arc::new(registry_with_home_capabilities(
            "[providers.capabilities]\nmedia_formats = [\"image/webp\"]",
        ));
    })
    .await;
    let mut bob = s.inbox(BOB).await;
    let mut alice = s.inbox(ALICE).await;
    let data = photo_jpeg(400, 300);
    let id = uploaded(&s, "image/jpeg", "transport-only", &data, &[]).await;
    s.send_media("webp", false, media_ref(&id, "image/jpeg", &data))
        .await;
    let m = media_of(&bob.next().await).clone();
    assert_eq!(m.content_type, "image/webp");
    assert_eq!(
        m.thumbnail.as_deref().map(|t| t.content_type.as_str()),
        Some("image/webp")
    );
    // Voice is not in its list, and cannot be made WebP: the sender is told.
    let voice = voice_m4a("2");
    let id = uploaded(&s, "audio/mp4", "transport-only", &voice, &[]).await;
    s.send_media("voice", false, media_ref(&id, "audio/mp4", &voice))
        .await;
    let r = receipt_of(&alice.next().await).clone();
    assert_eq!(
        (r.message_id.as_str(), r.code),
        ("voice", RejectCode::UnsupportedContent as i32)
    );
    s.stop().await;

    // Home's clients take no media at all: even E2EE media is refused
    // before anything is read, with a typed receipt.
    let s = Service::start_with(|c| {
        c.providers = std::sync::Arc::new(registry_with_home_capabilities(
            "[providers.capabilities]\ncontent = [\"text\", \"ciphertext\"]",
        ));
    })
    .await;
    let mut bob = s.inbox(BOB).await;
    let mut alice = s.inbox(ALICE).await;
    let blob = vec![7u8; 500];
    let id = uploaded(&s, "image/jpeg", "e2ee", &blob, &[]).await;
    s.send_media("none", true, media_ref(&id, "image/jpeg", &blob))
        .await;
    let r = receipt_of(&alice.next().await).clone();
    assert_eq!(r.code, RejectCode::UnsupportedContent as i32);
    assert!(r.detail.contains("does not take media"), "{}", r.detail);
    bob.assert_empty(Duration::from_millis(300)).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_consumer_gets_an_ack_wait_longer_than_a_transcode() {
    // The consumer exists from an earlier version with the default 30 s.
    let nats = interop_test_support::NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    interop_bus::ensure_streams(&js, &interop_bus::StreamSettings::default())
        .await
        .unwrap();
    let old = interop_bus::streams::stage_consumer(
        &js,
        interop_bus::subjects::STREAM_MEDIA,
        interop_bus::subjects::CONSUMER_MEDIA_TRANSCODING,
        interop_bus::subjects::ROUTING_MEDIA_REQUESTED,
    )
    .await
    .unwrap();
    assert_eq!(old.cached_info().config.ack_wait, Duration::from_secs(30));
    let s = Service::start_on(nats, interop_test_support::RedisServer::start(), |_| {}).await;
    let mut stream =
        s.js.get_stream(interop_bus::subjects::STREAM_MEDIA)
            .await
            .unwrap();
    let mut consumer = stream
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
            interop_bus::subjects::CONSUMER_MEDIA_TRANSCODING,
        )
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    let want = interop_media_transcoding::ack_wait(
        &interop_media_transcoding::TranscodeSettings::default(),
    );
    assert_eq!(info.config.ack_wait, want);
    assert!(want > interop_media_transcoding::TranscodeSettings::default().av_timeout * 3);
    let _ = stream.info().await.unwrap();
    s.stop().await;
}
