//! A table of malformed and hostile inputs at the edge. Each gets its typed
//! answer, nothing of it is published, and other connections keep being
//! served throughout.

use futures_util::SinkExt;
use prost::Message as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use interop_client::{text_envelope, SendOutcome, Sender};
use interop_e2e::{ingest_published, read_server_frame, Cluster, HOME_TOKEN, SIGNAL_TOKEN};
use interop_proto::limits::*;
use interop_proto::v1::{
    client_frame, envelope::Content, server_frame, Ack, Ciphertext, ClientFrame, Encryption,
    Envelope, Hello, Media, RejectCode, Send, ServerFrame, SetConsent,
};

type Ws = interop_e2e::RawWs;

const BOB: &str = "home:+4915112345678";

enum Want {
    Code(RejectCode),
    Close(CloseCode),
}

fn frame(f: client_frame::Frame) -> Vec<u8> {
    ClientFrame {
        request_id: 0,
        frame: Some(f),
    }
    .encode_to_vec()
}

fn send(env: Envelope) -> Vec<u8> {
    frame(client_frame::Frame::Send(Send {
        envelope: Some(env),
    }))
}

fn text(body: &str) -> Envelope {
    text_envelope("c1", "signal:alice", BOB, body)
}

fn with(mut env: Envelope, f: impl FnOnce(&mut Envelope)) -> Envelope {
    f(&mut env);
    env
}

fn e2ee(payload: Vec<u8>) -> Envelope {
    with(text("x"), |e| {
        e.encryption = Encryption::E2ee as i32;
        e.content = Some(Content::Ciphertext(Ciphertext {
            scheme: "s".into(),
            payload: payload.into(),
            ..Default::default()
        }));
    })
}

fn media(m: Media) -> Envelope {
    with(text("x"), |e| e.content = Some(Content::Media(m)))
}

fn consent(user: &str, allowed: Vec<String>) -> Vec<u8> {
    frame(client_frame::Frame::SetConsent(SetConsent {
        user: user.into(),
        opted_in: true,
        allowed_providers: allowed,
        ..Default::default()
    }))
}

/// Replaces the UTF-8 `needle` inside an encoded frame with invalid bytes of
/// the same length, so the protobuf framing stays valid.
fn corrupt_utf8(mut bytes: Vec<u8>, needle: &str) -> Vec<u8> {
    let pos = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .expect("needle present");
    bytes[pos] = 0xff;
    bytes[pos + 1] = 0xfe;
    bytes
}

/// `depth` nested groups of an unknown field, then a valid Send.
fn deep_nesting(depth: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for _ in 0..depth {
        b.push((99 << 3 | 3) as u8 | 0x80); // start group, field 99 (two-byte tag)
        b.push(((99 << 3 | 3) >> 7) as u8);
    }
    for _ in 0..depth {
        b.push((99 << 3 | 4) as u8 | 0x80); // end group
        b.push(((99 << 3 | 4) >> 7) as u8);
    }
    b.extend(send(text("nested")));
    b
}

fn cases() -> Vec<(&'static str, Vec<u8>, Want)> {
    use RejectCode::*;
    use Want::Code;
    let good = send(text("hello"));
    vec![
        ("empty message", vec![], Code(MalformedFrame)),
        ("a zero byte", vec![0], Code(MalformedFrame)),
        ("truncated varint", vec![0x08], Code(MalformedFrame)),
        (
            "truncated in the middle",
            good[..good.len() / 2].to_vec(),
            Code(MalformedFrame),
        ),
        (
            "truncated by one byte",
            good[..good.len() - 1].to_vec(),
            Code(MalformedFrame),
        ),
        (
            "wrong wire type for send",
            vec![11 << 3 | 0x80, 0x00, 0x01],
            Code(MalformedFrame),
        ),
        (
            "wrong wire type for request_id",
            vec![1 << 3 | 2, 1, 0],
            Code(MalformedFrame),
        ),
        (
            "length past the end",
            vec![0x5a, 0x7f, 0x0a],
            Code(MalformedFrame),
        ),
        (
            "bad UTF-8 in text",
            corrupt_utf8(send(text("hello-utf8")), "utf8"),
            Code(MalformedFrame),
        ),
        (
            "bad UTF-8 in from",
            corrupt_utf8(send(text("x")), "alice"),
            Code(MalformedFrame),
        ),
        (
            "unknown field only",
            vec![99 << 3 & 0x7f | 0x80, 6, 1],
            Code(MalformedFrame),
        ),
        ("deep nesting", deep_nesting(200), Code(MalformedFrame)),
        (
            "send without envelope",
            frame(client_frame::Frame::Send(Send { envelope: None })),
            Code(MissingField),
        ),
        (
            "gateway-owned message_id",
            send(with(text("x"), |e| e.message_id = "m".into())),
            Code(MalformedFrame),
        ),
        (
            "gateway-owned accepted_at",
            send(with(text("x"), |e| e.accepted_at_ms = 5)),
            Code(MalformedFrame),
        ),
        (
            "empty client id",
            send(with(text("x"), |e| e.client_message_id.clear())),
            Code(MissingField),
        ),
        (
            "huge client id",
            send(with(text("x"), |e| {
                e.client_message_id = "c".repeat(10_000)
            })),
            Code(TooLong),
        ),
        (
            "client id with spaces",
            send(with(text("x"), |e| e.client_message_id = "a b".into())),
            Code(MalformedFrame),
        ),
        (
            "client id with unicode",
            send(with(text("x"), |e| e.client_message_id = "é".into())),
            Code(MalformedFrame),
        ),
        (
            "from another provider",
            send(with(text("x"), |e| e.from = "telegram:tom".into())),
            Code(SenderNotOwned),
        ),
        (
            "from an unknown provider",
            send(with(text("x"), |e| e.from = "evil:x".into())),
            Code(SenderNotOwned),
        ),
        (
            "from without user",
            send(with(text("x"), |e| e.from = "signal:".into())),
            Code(InvalidAddress),
        ),
        (
            "from with a space",
            send(with(text("x"), |e| e.from = "signal:al ice".into())),
            Code(InvalidAddress),
        ),
        (
            "from 300 bytes",
            send(with(text("x"), |e| {
                e.from = format!("signal:{}", "a".repeat(293))
            })),
            Code(InvalidAddress),
        ),
        (
            "to without plus",
            send(with(text("x"), |e| e.to = "home:4915112345678".into())),
            Code(InvalidAddress),
        ),
        (
            "to with a leading zero",
            send(with(text("x"), |e| e.to = "home:+0123456789".into())),
            Code(InvalidAddress),
        ),
        (
            "to upper-case provider",
            send(with(text("x"), |e| e.to = "HOME:+4915112345678".into())),
            Code(InvalidAddress),
        ),
        (
            "to with a newline",
            send(with(text("x"), |e| e.to = "home:+4915112345678\n".into())),
            Code(InvalidAddress),
        ),
        (
            "to without separator",
            send(with(text("x"), |e| e.to = "bob".into())),
            Code(InvalidAddress),
        ),
        (
            "empty to",
            send(with(text("x"), |e| e.to.clear())),
            Code(MissingField),
        ),
        (
            "unknown encryption value",
            send(with(text("x"), |e| e.encryption = 77)),
            Code(EncryptionMismatch),
        ),
        (
            "unspecified encryption",
            send(with(text("x"), |e| e.encryption = 0)),
            Code(EncryptionMismatch),
        ),
        (
            "E2EE text",
            send(with(text("x"), |e| e.encryption = Encryption::E2ee as i32)),
            Code(EncryptionMismatch),
        ),
        (
            "transport-only ciphertext",
            send(with(e2ee(vec![1]), |e| e.encryption = 2)),
            Code(EncryptionMismatch),
        ),
        ("empty text", send(text("")), Code(EmptyContent)),
        (
            "text one byte too long",
            send(text(&"t".repeat(MAX_TEXT_BYTES + 1))),
            Code(TooLong),
        ),
        ("empty ciphertext", send(e2ee(vec![])), Code(EmptyContent)),
        (
            "ciphertext one byte too long",
            send(e2ee(vec![7; MAX_CIPHERTEXT_BYTES + 1])),
            Code(TooLong),
        ),
        (
            "no content",
            send(with(text("x"), |e| e.content = None)),
            Code(EmptyContent),
        ),
        (
            "a receipt written by a client",
            send(with(text("x"), |e| {
                e.content = Some(Content::Receipt(Default::default()))
            })),
            Code(UnsupportedContent),
        ),
        (
            "media of size 0",
            send(media(Media {
                media_id: "m".into(),
                content_type: "image/png".into(),
                ..Default::default()
            })),
            Code(EmptyContent),
        ),
        (
            "media over 100 MiB",
            send(media(Media {
                media_id: "m".into(),
                content_type: "image/png".into(),
                size: 101 << 20,
                ..Default::default()
            })),
            Code(TooLong),
        ),
        (
            "media without id",
            send(media(Media {
                content_type: "image/png".into(),
                size: 5,
                ..Default::default()
            })),
            Code(MissingField),
        ),
        (
            "in_reply_to too long",
            send(with(text("x"), |e| e.in_reply_to = "r".repeat(100))),
            Code(TooLong),
        ),
        (
            "sent_at years ago",
            send(with(text("x"), |e| e.sent_at_ms = 1_000_000)),
            Code(TimestampOutOfRange),
        ),
        (
            "sent_at an hour ahead",
            send(with(text("x"), |e| {
                e.sent_at_ms = interop_proto::now_ms() + 3_600_000
            })),
            Code(TimestampOutOfRange),
        ),
        (
            "a second hello",
            frame(client_frame::Frame::Hello(Hello {
                protocol_version: 1,
                ..Default::default()
            })),
            Code(AlreadyAuthenticated),
        ),
        (
            "ack to ingest with 20,000 tags",
            frame(client_frame::Frame::Ack(Ack {
                delivery_tags: (1..20_000).collect(),
                batch_tags: Vec::new(),
            })),
            Code(UnsupportedFrame),
        ),
        (
            "consent with 1,000 providers",
            consent("signal:alice", (0..1000).map(|i| format!("p{i}")).collect()),
            Code(TooLong),
        ),
        (
            "consent for another provider's user",
            consent(BOB, vec!["signal".into()]),
            Code(SenderNotOwned),
        ),
        (
            "consent with a bad provider id",
            consent("signal:alice", vec!["Sig nal".into()]),
            Code(InvalidAddress),
        ),
        (
            "consent without user",
            consent("", vec![]),
            Code(MissingField),
        ),
        (
            "frame over the size limit",
            vec![0; MAX_FRAME_BYTES + 1],
            Code(FrameTooLarge),
        ),
        (
            "recipient who is not opted in",
            send(with(text("x"), |e| e.to = "home:+4915100000000".into())),
            Code(RecipientUnavailable),
        ),
    ]
}

async fn read(ws: &mut Ws) -> Result<ServerFrame, Option<CloseCode>> {
    read_server_frame(ws).await.map_err(|(code, _)| code)
}

async fn connect(url: &str, provider: &str, token: &str) -> (Ws, ServerFrame) {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = frame(client_frame::Frame::Hello(Hello {
        protocol_version: 1,
        provider: provider.into(),
        token: token.into(),
        ..Default::default()
    }));
    ws.send(Message::Binary(hello.into())).await.unwrap();
    let answer = read(&mut ws).await.unwrap();
    (ws, answer)
}

async fn published(c: &Cluster) -> u64 {
    ingest_published(&c.nats.url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_get_typed_answers_and_never_reach_the_pipeline() {
    let c = Cluster::start().await;
    let url = c.gateway.ingest_url.clone();
    let home = Sender::connect(&url, "home", HOME_TOKEN).await.unwrap();
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    // A well-behaved provider keeps sending while the hostile one works.
    let good = Sender::connect(&url, "signal", SIGNAL_TOKEN).await.unwrap();
    let before = published(&c).await;

    let (mut ws, welcome) = connect(&url, "signal", SIGNAL_TOKEN).await;
    assert!(matches!(
        welcome.frame,
        Some(server_frame::Frame::Welcome(_))
    ));
    let cases = cases();
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    for (i, (name, bytes, want)) in cases.into_iter().enumerate() {
        ws.send(Message::Binary(bytes.into())).await.unwrap();
        let Want::Code(code) = want else {
            unreachable!()
        };
        let answer = read(&mut ws)
            .await
            .unwrap_or_else(|c| panic!("{name}: closed with {c:?}"));
        match answer.frame {
            Some(server_frame::Frame::Rejected(r)) => {
                assert_eq!(r.code(), code, "{name}: {}", r.detail)
            }
            other => panic!("{name}: expected {code:?}, got {other:?}"),
        }
        if i % 10 == 0 {
            let out = good
                .send(text_envelope(
                    &format!("good-{i}"),
                    "signal:bob",
                    BOB,
                    "fine",
                ))
                .await
                .unwrap();
            assert!(matches!(out, SendOutcome::Accepted(_)), "{out:?}");
        }
    }
    let good_sends = 6;
    assert_eq!(
        published(&c).await,
        before + good_sends,
        "only the good provider's messages were stored"
    );

    // A replayed frame: the same Send twice gets the same id, stored once.
    let replay = send(with(text("replay"), |e| {
        e.client_message_id = "replay-1".into()
    }));
    ws.send(Message::Binary(replay.clone().into()))
        .await
        .unwrap();
    let first = read(&mut ws).await.unwrap();
    ws.send(Message::Binary(replay.into())).await.unwrap();
    let second = read(&mut ws).await.unwrap();
    let (Some(server_frame::Frame::Accepted(a)), Some(server_frame::Frame::Accepted(b))) =
        (first.frame, second.frame)
    else {
        panic!("replay not accepted");
    };
    assert_eq!(a.message_id, b.message_id);
    assert!(!a.duplicate && b.duplicate);
    assert_eq!(published(&c).await, before + good_sends + 1);

    // Before authentication: each failure closes the connection with a reason.
    let huge = "p".repeat(10_000);
    let pre_auth: Vec<(&str, &str, &str, Want)> = vec![
        (
            "wrong token",
            "signal",
            "nope",
            Want::Close(CloseCode::Policy),
        ),
        (
            "unknown provider",
            "evil",
            SIGNAL_TOKEN,
            Want::Close(CloseCode::Policy),
        ),
        ("empty token", "signal", "", Want::Close(CloseCode::Policy)),
        (
            "huge provider id",
            &huge,
            "x",
            Want::Close(CloseCode::Policy),
        ),
    ];
    for (name, provider, token, want) in pre_auth {
        let (mut ws, answer) = connect(&url, provider, token).await;
        match answer.frame {
            Some(server_frame::Frame::Rejected(r)) => {
                assert_eq!(r.code(), RejectCode::AuthFailed, "{name}")
            }
            other => panic!("{name}: {other:?}"),
        }
        let Want::Close(code) = want else {
            unreachable!()
        };
        assert_eq!(read(&mut ws).await.unwrap_err(), Some(code), "{name}");
    }
    let out = good
        .send(text_envelope("good-end", "signal:bob", BOB, "still fine"))
        .await
        .unwrap();
    assert!(matches!(out, SendOutcome::Accepted(_)), "{out:?}");
}
