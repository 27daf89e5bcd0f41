//! Media end to end: a provider uploads to the media API, sends a message
//! referencing it through ingest, and the recipient's provider downloads
//! what was delivered. Fixtures are made at run time with ffmpeg.

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use interop_client::{text_envelope, Receiver, Sender};
use interop_e2e::{Cluster, HOME_TOKEN, SIGNAL_TOKEN};
use interop_proto::v1::{
    envelope::Content, Encryption, Envelope, Media, ReceiptStatus, RejectCode,
};

use crate::common::{accepted, next_acked_within};

const BOB: &str = "home:+4915112345678";
const CAROL: &str = "home:+4915112345679";
const ALICE: &str = "signal:alice";

/// How long a delivery may take here: transcoding is slow in a debug build.
const MEDIA_WAIT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------- helpers

/// Runs ffmpeg writing to a temp file named `out`; returns its bytes.
fn ffmpeg(args: &[&str], out: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!(
        "interop-e2e-media-{}-{}",
        std::process::id(),
        uuid_like()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(out);
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-v", "error", "-y"])
        .args(args)
        .arg(&path)
        .status()
        .expect("ffmpeg is installed (apt-get install -y ffmpeg)");
    assert!(status.success());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    bytes
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// SHA-256 in hex (coreutils' sha256sum).
fn sha256_hex(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

const EXIF_MAKE: &[u8] = b"SecretCam";
const GPS_LATITUDE: [u32; 6] = [52, 1, 31, 1, 1234, 100];

/// A JPEG photo with an EXIF block naming the camera and a GPS latitude.
fn photo_with_gps() -> Vec<u8> {
    let jpeg = ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1800x1200",
            "-frames:v",
            "1",
            "-q:v",
            "3",
        ],
        "photo.jpg",
    );
    let le16 = |v: u16| v.to_le_bytes();
    let le32 = |v: u32| v.to_le_bytes();
    let mut t = Vec::new();
    t.extend_from_slice(b"II*\0");
    t.extend_from_slice(&le32(8));
    // IFD0 (8): Make -> 38, GPS IFD -> 48.
    t.extend_from_slice(&le16(2));
    t.extend_from_slice(&[&le16(0x010F)[..], &le16(2), &le32(10), &le32(38)].concat());
    t.extend_from_slice(&[&le16(0x8825)[..], &le16(4), &le32(1), &le32(48)].concat());
    t.extend_from_slice(&le32(0));
    t.extend_from_slice(EXIF_MAKE);
    t.push(0);
    // GPS IFD (48): latitude ref and latitude -> 78.
    t.extend_from_slice(&le16(2));
    t.extend_from_slice(&[&le16(1)[..], &le16(2), &le32(2), b"N\0\0\0"].concat());
    t.extend_from_slice(&[&le16(2)[..], &le16(5), &le32(3), &le32(78)].concat());
    t.extend_from_slice(&le32(0));
    assert_eq!(t.len(), 78);
    for v in GPS_LATITUDE {
        t.extend_from_slice(&le32(v));
    }
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&((2 + 6 + t.len()) as u16).to_be_bytes());
    app1.extend_from_slice(b"Exif\0\0");
    app1.extend_from_slice(&t);
    [&jpeg[..2], &app1[..], &jpeg[2..]].concat()
}

fn gps_bytes() -> Vec<u8> {
    GPS_LATITUDE.iter().flat_map(|v| v.to_le_bytes()).collect()
}

struct Http {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Http {
    /// A string field of a flat JSON object.
    fn field(&self, name: &str) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let key = format!("\"{name}\":\"");
        let start = text
            .find(&key)
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            + key.len();
        text[start..].split('"').next().unwrap().to_owned()
    }
}

async fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Http {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Http {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    }
}

/// Uploads as signal; returns the media id.
async fn upload(c: &Cluster, content_type: &str, encryption: &str, data: &[u8]) -> String {
    let headers = [
        ("Authorization", format!("Bearer {SIGNAL_TOKEN}")),
        ("X-Interop-Provider", "signal".to_owned()),
        ("Content-Type", content_type.to_owned()),
        ("Content-Length", data.len().to_string()),
        ("X-Interop-Sha256", sha256_hex(data)),
        ("X-Interop-Encryption", encryption.to_owned()),
    ];
    let r = http(&c.gateway.media_url, "POST", "/v1/media", &headers, data).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.field("media_id")
}

/// Downloads as `user` of home.
async fn download(c: &Cluster, user: &str, id: &str) -> Http {
    let headers = [
        ("Authorization", format!("Bearer {HOME_TOKEN}")),
        ("X-Interop-Provider", "home".to_owned()),
        ("X-Interop-As", user.to_owned()),
    ];
    http(
        &c.gateway.media_url,
        "GET",
        &format!("/v1/media/{id}"),
        &headers,
        &[],
    )
    .await
}

fn media_envelope(client_id: &str, e2ee: bool, media: Media) -> Envelope {
    Envelope {
        encryption: if e2ee {
            Encryption::E2ee
        } else {
            Encryption::TransportOnly
        } as i32,
        content: Some(Content::Media(media)),
        ..text_envelope(client_id, ALICE, BOB, "")
    }
}

fn media(id: &str, content_type: &str, data: &[u8]) -> Media {
    Media {
        media_id: id.into(),
        content_type: content_type.into(),
        size: data.len() as u64,
        filename: "picture.jpeg".into(),
        ..Default::default()
    }
}

async fn setup(c: &Cluster) -> (Sender, Receiver, Receiver) {
    let home = Sender::connect(&c.gateway.ingest_url, "home", HOME_TOKEN)
        .await
        .unwrap();
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    let bob = Receiver::connect(&c.gateway.delivery_url, "home", HOME_TOKEN, BOB, "phone")
        .await
        .unwrap();
    let alice_inbox = Receiver::connect(
        &c.gateway.delivery_url,
        "signal",
        SIGNAL_TOKEN,
        ALICE,
        "laptop",
    )
    .await
    .unwrap();
    let alice = Sender::connect(&c.gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    (alice, bob, alice_inbox)
}

fn media_of(env: &Envelope) -> &Media {
    match &env.content {
        Some(Content::Media(m)) => m,
        other => panic!("expected media, got {other:?}"),
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_is_transcoded_stripped_of_gps_and_downloaded_by_its_recipient_only() {
    let c = Cluster::start().await;
    let (alice, mut bob, _) = setup(&c).await;
    let photo = photo_with_gps();
    assert!(contains(&photo, &gps_bytes()) && contains(&photo, EXIF_MAKE));
    let id = upload(&c, "image/jpeg", "transport-only", &photo).await;
    let message_id = accepted(
        alice
            .send(media_envelope(
                "p1",
                false,
                media(&id, "image/jpeg", &photo),
            ))
            .await
            .unwrap(),
    )
    .message_id;

    let env = next_acked_within(&mut bob, MEDIA_WAIT).await.envelope;
    assert_eq!(env.message_id, message_id);
    let m = media_of(&env);
    assert_ne!(m.media_id, id);
    assert_eq!(
        (m.content_type.as_str(), m.width, m.height),
        ("image/jpeg", 1600, 1067)
    );
    assert_eq!(m.filename, "picture.jpg");
    let got = download(&c, BOB, &m.media_id).await;
    assert_eq!(got.status, 200, "{}", got.head);
    assert_eq!(got.body.len() as u64, m.size);
    assert_eq!(sha256_hex(&got.body), hex(&m.sha256));
    assert!(got.body.starts_with(&[0xFF, 0xD8, 0xFF]), "a JPEG");
    assert!(!contains(&got.body, b"Exif\0\0"), "no EXIF block");
    assert!(!contains(&got.body, EXIF_MAKE), "no camera make");
    assert!(!contains(&got.body, &gps_bytes()), "no GPS position");

    let thumb = m.thumbnail.as_deref().expect("a thumbnail");
    assert_eq!((thumb.width, thumb.height), (320, 213));
    let got = download(&c, BOB, &thumb.media_id).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body.len() as u64, thumb.size);

    // Not for another user, nor the original for Bob.
    assert_eq!(download(&c, CAROL, &m.media_id).await.status, 404);
    assert_eq!(download(&c, BOB, &id).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_encrypted_media_arrives_byte_for_byte() {
    let c = Cluster::start().await;
    let (alice, mut bob, _) = setup(&c).await;
    let blob: Vec<u8> = (0..=255u8).cycle().take(250_000).collect();
    let id = upload(&c, "image/jpeg", "e2ee", &blob).await;
    accepted(
        alice
            .send(media_envelope("e1", true, media(&id, "image/jpeg", &blob)))
            .await
            .unwrap(),
    );
    let env = next_acked_within(&mut bob, MEDIA_WAIT).await.envelope;
    assert_eq!(env.encryption, Encryption::E2ee as i32);
    let m = media_of(&env);
    assert_eq!(m.media_id, id);
    assert_eq!(hex(&m.sha256), sha256_hex(&blob));
    let got = download(&c, BOB, &id).await;
    assert_eq!(got.status, 200);
    assert!(got.body == blob, "byte for byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transcode_reaches_the_sender_as_a_typed_receipt_while_other_messages_flow() {
    let c = Cluster::start().await;
    let (alice, mut bob, mut alice_inbox) = setup(&c).await;
    // A PNG uploaded as an MP4: the upload cannot tell, the transcode can.
    let png = ffmpeg(
        &["-f", "lavfi", "-i", "testsrc2=size=64x64", "-frames:v", "1"],
        "x.png",
    );
    let bad_id = upload(&c, "video/mp4", "transport-only", &png).await;
    let photo = ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240",
            "-frames:v",
            "1",
        ],
        "y.jpg",
    );
    let good_id = upload(&c, "image/jpeg", "transport-only", &photo).await;

    let bad = accepted(
        alice
            .send(media_envelope(
                "bad",
                false,
                media(&bad_id, "video/mp4", &png),
            ))
            .await
            .unwrap(),
    )
    .message_id;
    let text = accepted(
        alice
            .send(text_envelope("t", ALICE, BOB, "still here"))
            .await
            .unwrap(),
    )
    .message_id;
    let good = accepted(
        alice
            .send(media_envelope(
                "good",
                false,
                media(&good_id, "image/jpeg", &photo),
            ))
            .await
            .unwrap(),
    )
    .message_id;

    let mut got = vec![
        next_acked_within(&mut bob, MEDIA_WAIT)
            .await
            .envelope
            .message_id,
        next_acked_within(&mut bob, MEDIA_WAIT)
            .await
            .envelope
            .message_id,
    ];
    got.sort();
    let mut want = vec![text.clone(), good.clone()];
    want.sort();
    assert_eq!(got, want, "the text and the good photo arrive");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), bob.next())
            .await
            .is_err(),
        "the bad media is not delivered"
    );

    // Alice: a FAILED receipt for the bad one, DELIVERED for the others.
    let mut failed = None;
    let mut delivered = Vec::new();
    for _ in 0..3 {
        let env = next_acked_within(&mut alice_inbox, MEDIA_WAIT)
            .await
            .envelope;
        let Some(Content::Receipt(r)) = env.content else {
            panic!("expected a receipt, got {env:?}")
        };
        if r.status == ReceiptStatus::Failed as i32 {
            failed = Some(r);
        } else {
            assert_eq!(r.status, ReceiptStatus::Delivered as i32);
            delivered.push(r.message_id);
        }
    }
    let failed = failed.expect("a FAILED receipt");
    assert_eq!(failed.message_id, bad);
    assert_eq!(failed.client_message_id, "bad");
    assert_eq!(failed.code, RejectCode::MediaInvalid as i32);
    assert_eq!(
        failed.detail,
        "declared video/mp4 but the content is a PNG image"
    );
    delivered.sort();
    assert_eq!(delivered, want);

    let (status, metrics) = interop_e2e::http_get(&format!(
        "{}/metrics",
        c.gateway.admin_url("media-transcoding")
    ))
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        interop_e2e::metric_value(
            &metrics,
            "interop_media_transcoding_transcodes_total{kind=\"video\",result=\"failed\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
}
