//! The media HTTP API against real nats-server and redis-server: uploads
//! with their limits and checks, and downloads with their access rules.

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;
use interop_media_transcoding::store::{is_media_id, BUCKET};

/// Messages in the media bucket's stream (chunks and metadata).
async fn stored_messages(s: &Service) -> u64 {
    let mut stream = s.js.get_stream(format!("OBJ_{BUCKET}")).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_stored_and_answered_with_its_id_size_and_hash() {
    let s = Service::start().await;
    let data = photo_jpeg(320, 240);
    let r = upload(
        &s.addr,
        "signal",
        SIGNAL_TOKEN,
        "image/jpeg",
        "transport-only",
        &data,
        &[],
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    let id = j["media_id"].as_str().unwrap();
    assert!(is_media_id(id) && id.starts_with("m-"), "{id}");
    assert_eq!(j["size"], data.len() as u64);
    assert_eq!(j["content_type"], "image/jpeg");
    assert_eq!(j["sha256"], hex::encode(sha256(&data)));
    assert_eq!(j["encryption"], "transport-only");
    let expires = j["expires_at_ms"].as_i64().unwrap();
    let in_days = (expires - interop_proto::now_ms()) / 86_400_000;
    assert!((29..=30).contains(&in_days), "{in_days}");
    let info = s.store.info(id).await.unwrap().unwrap();
    assert_eq!(info.size, data.len() as u64);
    assert_eq!(info.sha256, sha256(&data));
    // A multi-chunk upload (over 128 KiB) round-trips too.
    let big: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let r = upload(
        &s.addr,
        "signal",
        SIGNAL_TOKEN,
        "application/pdf",
        "transport-only",
        &big,
        &[],
    )
    .await;
    assert_eq!(r.status, 201);
    let info = s
        .store
        .info(r.json()["media_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.store.read_all(&info, 1 << 20).await.unwrap(), big);
    let m = s.metrics_text();
    assert!(
        m.contains("interop_media_transcoding_uploads_total{result=\"ok\"} 2"),
        "{m}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_announced_size_is_checked_against_the_type_limit_before_the_body_is_read() {
    let s = Service::start().await;
    for (content_type, size) in [
        ("image/jpeg", 16 * 1024 * 1024 + 1),
        ("audio/ogg", 16 * 1024 * 1024 + 1),
        ("video/mp4", 100 * 1024 * 1024 + 1),
        ("application/pdf", 100 * 1024 * 1024 + 1),
    ] {
        let headers = vec![
            ("Authorization", format!("Bearer {SIGNAL_TOKEN}")),
            ("X-Interop-Provider", "signal".to_owned()),
            ("Content-Type", content_type.to_owned()),
            ("Content-Length", size.to_string()),
            ("X-Interop-Sha256", "00".repeat(32)),
            ("X-Interop-Encryption", "e2ee".to_owned()),
        ];
        let started = Instant::now();
        // No body at all: the answer must not wait for it.
        let r = http(&s.addr, "POST", "/v1/media", &headers, None).await;
        assert_eq!(r.status, 413, "{content_type}");
        assert_eq!(r.code(), "TOO_LARGE");
        assert!(r.json()["detail"].as_str().unwrap().contains("MiB"));
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    // Exactly at the image limit is accepted.
    let data = vec![1u8; 16 * 1024 * 1024];
    let r = upload(
        &s.addr,
        "signal",
        SIGNAL_TOKEN,
        "image/jpeg",
        "e2ee",
        &data,
        &[],
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_mismatch_is_refused_and_nothing_is_stored() {
    let s = Service::start().await;
    let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    let wrong = hex::encode(sha256(b"something else"));
    let r = upload(
        &s.addr,
        "signal",
        SIGNAL_TOKEN,
        "application/zip",
        "e2ee",
        &data,
        &[("X-Interop-Sha256", wrong)],
    )
    .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.code(), "HASH_MISMATCH");
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .contains(&hex::encode(sha256(&data))));
    assert_eq!(stored_messages(&s).await, 0, "the chunks were purged");
    let m = s.metrics_text();
    assert!(
        m.contains("interop_media_transcoding_uploads_total{result=\"hash_mismatch\"} 1"),
        "{m}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upload_requests_get_typed_errors() {
    let s = Service::start().await;
    let data = photo_jpeg(64, 64);
    let up =
        |extra: Vec<(&'static str, String)>, ct: &'static str, enc: &'static str, body: Vec<u8>| {
            let addr = s.addr.clone();
            async move { upload(&addr, "signal", SIGNAL_TOKEN, ct, enc, &body, &extra).await }
        };
    let r = up(
        vec![("Authorization", String::new())],
        "image/jpeg",
        "e2ee",
        data.clone(),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (401, "AUTH_FAILED"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = up(
        vec![("Authorization", format!("Bearer {HOME_TOKEN}"))],
        "image/jpeg",
        "e2ee",
        data.clone(),
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (401, "AUTH_FAILED"),
        "home's token for signal"
    );
    let r = up(
        vec![("Content-Length", String::new())],
        "image/jpeg",
        "e2ee",
        Vec::new(),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (411, "LENGTH_REQUIRED"));
    let r = up(vec![], "image/jpeg", "e2ee", Vec::new()).await;
    assert_eq!((r.status, r.code().as_str()), (400, "EMPTY"));
    let r = up(vec![], "image/heic", "transport-only", data.clone()).await;
    assert_eq!((r.status, r.code().as_str()), (415, "UNSUPPORTED_TYPE"));
    let r = up(vec![], "no-slash", "e2ee", data.clone()).await;
    assert_eq!((r.status, r.code().as_str()), (415, "UNSUPPORTED_TYPE"));
    let r = up(vec![], "image/jpeg", "maybe", data.clone()).await;
    assert_eq!((r.status, r.code().as_str()), (400, "MALFORMED_REQUEST"));
    let r = up(
        vec![("X-Interop-Sha256", "abc".into())],
        "image/jpeg",
        "e2ee",
        data.clone(),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "MALFORMED_REQUEST"));
    let r = up(
        vec![("X-Interop-Sticker", "true".into())],
        "audio/ogg",
        "e2ee",
        data.clone(),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "MALFORMED_REQUEST"));
    // E2EE media is opaque: any well-formed type is stored.
    let r = up(vec![], "image/heic", "e2ee", data.clone()).await;
    assert_eq!(r.status, 201);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_declaring_too_many_pixels_is_refused_while_streaming() {
    let s = Service::start().await;
    let r = upload(
        &s.addr,
        "signal",
        SIGNAL_TOKEN,
        "image/png",
        "transport-only",
        &png_bomb(),
        &[],
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (413, "TOO_LARGE"));
    let detail = r.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains("100000x100000") && detail.contains("40 megapixels"),
        "{detail}"
    );
    assert_eq!(stored_messages(&s).await, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_mid_body_leaves_nothing_behind() {
    let s = Service::start().await;
    let mut stream = tokio::net::TcpStream::connect(&s.addr).await.unwrap();
    let head = format!(
        "POST /v1/media HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SIGNAL_TOKEN}\r\n\
         X-Interop-Provider: signal\r\nContent-Type: application/zip\r\nContent-Length: 1000000\r\n\
         X-Interop-Sha256: {}\r\nX-Interop-Encryption: e2ee\r\n\r\n",
        "00".repeat(32)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![7u8; 400_000]).await.unwrap();
    // Wait until some chunks are stored, then hang up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_messages(&s).await == 0 {
        assert!(Instant::now() < deadline, "no chunk was stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.ok();
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_messages(&s).await != 0 {
        assert!(Instant::now() < deadline, "chunks were left behind");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_recipient_the_media_was_sent_to_may_download_it() {
    let s = Service::start().await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let r = upload(
        &s.addr,
        "signal",
        SIGNAL_TOKEN,
        "application/pdf",
        "e2ee",
        &data,
        &[],
    )
    .await;
    let id = r.json()["media_id"].as_str().unwrap().to_owned();
    // Before any message: nobody, not even the uploader's users.
    let r = download(&s.addr, "home", HOME_TOKEN, BOB, &id).await;
    assert_eq!((r.status, r.code().as_str()), (404, "NOT_FOUND"));
    let r = download(&s.addr, "signal", SIGNAL_TOKEN, ALICE, &id).await;
    assert_eq!((r.status, r.code().as_str()), (404, "NOT_FOUND"));

    let mut bob_inbox = s.inbox(BOB).await;
    s.send_media("msg-1", true, media_ref(&id, "application/pdf", &data))
        .await;
    let env = bob_inbox.next().await;
    assert_eq!(media_of(&env).media_id, id);

    let r = download(&s.addr, "home", HOME_TOKEN, BOB, &id).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data);
    assert_eq!(r.header("content-type"), Some("application/pdf"));
    assert_eq!(
        r.header("x-interop-sha256"),
        Some(hex::encode(sha256(&data)).as_str())
    );
    assert_eq!(r.header("cache-control"), Some("private, no-store"));
    // Another user of the same provider: not found (no hint it exists).
    let r = download(&s.addr, "home", HOME_TOKEN, "home:+4915112345679", &id).await;
    assert_eq!((r.status, r.code().as_str()), (404, "NOT_FOUND"));
    // Someone else's user.
    let r = download(&s.addr, "signal", SIGNAL_TOKEN, BOB, &id).await;
    assert_eq!((r.status, r.code().as_str()), (403, "FORBIDDEN"));
    let r = download(&s.addr, "home", "wrong", BOB, &id).await;
    assert_eq!((r.status, r.code().as_str()), (401, "AUTH_FAILED"));
    let r = download(&s.addr, "home", HOME_TOKEN, "not an address", &id).await;
    assert_eq!((r.status, r.code().as_str()), (400, "MALFORMED_REQUEST"));
    let r = download(&s.addr, "home", HOME_TOKEN, BOB, "m-..%2F..%2Fetc").await;
    assert_eq!((r.status, r.code().as_str()), (404, "NOT_FOUND"));

    // Grants live in Redis; losing them fails closed.
    let client = redis::Client::open(s.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let r = download(&s.addr, "home", HOME_TOKEN, BOB, &id).await;
    assert_eq!((r.status, r.code().as_str()), (404, "NOT_FOUND"));
    let m = s.metrics_text();
    assert!(
        m.contains("interop_media_transcoding_downloads_total{result=\"ok\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "interop_media_transcoding_download_bytes_total {}",
            data.len()
        )),
        "{m}"
    );
    s.stop().await;
}
