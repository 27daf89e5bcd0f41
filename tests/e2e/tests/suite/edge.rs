//! Bad input at the edge: each case gets a typed rejection (or a close with a
//! reason), nothing of it is published, and other connections keep being
//! served.

use futures_util::SinkExt;
use prost::Message as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use interop_client::{text_envelope, Receiver, SendOutcome, Sender};
use interop_e2e::{ingest_published, read_server_frame, Cluster, HOME_TOKEN, SIGNAL_TOKEN};
use interop_proto::limits::{HARD_MAX_FRAME_BYTES, MAX_FRAME_BYTES, MAX_TEXT_BYTES};
use interop_proto::v1::{
    client_frame, server_frame, ClientFrame, Hello, RejectCode, Send, ServerFrame,
};

type Ws = interop_e2e::RawWs;

const BOB: &str = "home:+4915112345678";

async fn raw(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

fn hello(provider: &str, token: &str, user: &str) -> ClientFrame {
    ClientFrame {
        request_id: 1,
        frame: Some(client_frame::Frame::Hello(Hello {
            protocol_version: 1,
            provider: provider.into(),
            token: token.into(),
            user: user.into(),
            ..Default::default()
        })),
    }
}

async fn send_frame(ws: &mut Ws, f: &ClientFrame) {
    ws.send(Message::Binary(f.encode_to_vec().into()))
        .await
        .unwrap();
}

/// The next server frame, or the close frame's code and reason.
async fn read(ws: &mut Ws) -> Result<ServerFrame, (Option<CloseCode>, String)> {
    read_server_frame(ws).await
}

fn code_of(frame: &ServerFrame) -> RejectCode {
    match &frame.frame {
        Some(server_frame::Frame::Rejected(r)) => r.code(),
        other => panic!("expected Rejected, got {other:?}"),
    }
}

async fn authed(url: &str) -> Ws {
    let mut ws = raw(url).await;
    send_frame(&mut ws, &hello("signal", SIGNAL_TOKEN, "")).await;
    assert!(matches!(
        read(&mut ws).await.unwrap().frame,
        Some(server_frame::Frame::Welcome(_))
    ));
    ws
}

fn send(request_id: u64, env: interop_proto::v1::Envelope) -> ClientFrame {
    ClientFrame {
        request_id,
        frame: Some(client_frame::Frame::Send(Send {
            envelope: Some(env),
        })),
    }
}

async fn published(c: &Cluster) -> u64 {
    ingest_published(&c.nats.url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_typed_and_never_published() {
    let c = Cluster::start().await;
    let url = c.gateway.ingest_url.clone();
    // A well-behaved provider stays connected throughout.
    let home = Sender::connect(&url, "home", HOME_TOKEN).await.unwrap();
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    let good = Sender::connect(&url, "signal", SIGNAL_TOKEN).await.unwrap();
    let before = published(&c).await;

    // A frame over the size limit: typed rejection, the connection stays.
    let mut ws = raw(&url).await;
    ws.send(Message::Binary(vec![0u8; MAX_FRAME_BYTES + 1].into()))
        .await
        .unwrap();
    assert_eq!(
        code_of(&read(&mut ws).await.unwrap()),
        RejectCode::FrameTooLarge
    );
    // Exactly at the limit is read and decoded (zeros are not a valid frame).
    ws.send(Message::Binary(vec![0u8; MAX_FRAME_BYTES].into()))
        .await
        .unwrap();
    assert_eq!(
        code_of(&read(&mut ws).await.unwrap()),
        RejectCode::MalformedFrame
    );
    // Bytes that are not protobuf.
    ws.send(Message::Binary(vec![0xff, 0xff, 0xff, 0x0f].into()))
        .await
        .unwrap();
    assert_eq!(
        code_of(&read(&mut ws).await.unwrap()),
        RejectCode::MalformedFrame
    );
    // A send before hello.
    send_frame(
        &mut ws,
        &send(7, text_envelope("a", "signal:alice", BOB, "x")),
    )
    .await;
    let f = read(&mut ws).await.unwrap();
    assert_eq!(
        (code_of(&f), f.request_id),
        (RejectCode::NotAuthenticated, 7)
    );
    // Still usable: a correct hello now works.
    send_frame(&mut ws, &hello("signal", SIGNAL_TOKEN, "")).await;
    assert!(matches!(
        read(&mut ws).await.unwrap().frame,
        Some(server_frame::Frame::Welcome(_))
    ));
    // A second hello.
    send_frame(&mut ws, &hello("signal", SIGNAL_TOKEN, "")).await;
    assert_eq!(
        code_of(&read(&mut ws).await.unwrap()),
        RejectCode::AlreadyAuthenticated
    );

    // Each bad send on an authenticated connection.
    let cases: Vec<(&str, interop_proto::v1::Envelope, RejectCode)> = vec![
        (
            "another provider's sender",
            text_envelope("b1", "telegram:tom", BOB, "x"),
            RejectCode::SenderNotOwned,
        ),
        (
            "empty text",
            text_envelope("b2", "signal:alice", BOB, ""),
            RejectCode::EmptyContent,
        ),
        (
            "over-long text",
            text_envelope("b3", "signal:alice", BOB, &"x".repeat(MAX_TEXT_BYTES + 1)),
            RejectCode::TooLong,
        ),
        (
            "bad recipient",
            text_envelope("b4", "signal:alice", "home:12", "x"),
            RejectCode::InvalidAddress,
        ),
        (
            "no client id",
            text_envelope("", "signal:alice", BOB, "x"),
            RejectCode::MissingField,
        ),
    ];
    for (i, (what, env, want)) in cases.into_iter().enumerate() {
        let id = 100 + i as u64;
        send_frame(&mut ws, &send(id, env)).await;
        let f = read(&mut ws).await.unwrap();
        assert_eq!((code_of(&f), f.request_id), (want, id), "{what}");
    }
    // An ack is not served by ingest.
    send_frame(
        &mut ws,
        &ClientFrame {
            request_id: 9,
            frame: Some(client_frame::Frame::Ack(Default::default())),
        },
    )
    .await;
    assert_eq!(
        code_of(&read(&mut ws).await.unwrap()),
        RejectCode::UnsupportedFrame
    );

    // A wrong token: rejection, then a close with a reason.
    let mut ws2 = raw(&url).await;
    send_frame(&mut ws2, &hello("signal", "wrong", "")).await;
    assert_eq!(
        code_of(&read(&mut ws2).await.unwrap()),
        RejectCode::AuthFailed
    );
    let (code, reason) = read(&mut ws2).await.unwrap_err();
    assert_eq!(code, Some(CloseCode::Policy));
    assert_eq!(reason, "authentication failed");
    // An unknown protocol version.
    let mut ws3 = raw(&url).await;
    let mut h = hello("signal", SIGNAL_TOKEN, "");
    if let Some(client_frame::Frame::Hello(ref mut h)) = h.frame {
        h.protocol_version = 2;
    }
    send_frame(&mut ws3, &h).await;
    assert_eq!(
        code_of(&read(&mut ws3).await.unwrap()),
        RejectCode::UnsupportedVersion
    );
    assert_eq!(read(&mut ws3).await.unwrap_err().0, Some(CloseCode::Policy));
    // A text WebSocket message is a protocol violation.
    let mut ws4 = authed(&url).await;
    ws4.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        read(&mut ws4).await.unwrap_err().0,
        Some(CloseCode::Unsupported)
    );
    // A frame over the hard limit closes the connection (1009).
    let mut ws5 = authed(&url).await;
    // The server may close before the whole frame is written.
    ws5.send(Message::Binary(vec![0u8; HARD_MAX_FRAME_BYTES + 1].into()))
        .await
        .ok();
    let (code, _) = read(&mut ws5).await.unwrap_err();
    assert!(matches!(code, Some(CloseCode::Size) | None), "{code:?}");

    // Nothing of that was published, and the good connection still works.
    assert_eq!(published(&c).await, before);
    let ok = good
        .send(text_envelope("fine", "signal:alice", BOB, "still here"))
        .await
        .unwrap();
    assert!(matches!(ok, SendOutcome::Accepted(_)), "{ok:?}");
    assert_eq!(published(&c).await, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_sessions_are_only_for_the_providers_own_users() {
    let c = Cluster::start().await;
    let url = c.gateway.delivery_url.clone();
    let err = Receiver::connect(&url, "signal", SIGNAL_TOKEN, BOB, "d")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, interop_client::ClientError::HelloRefused(ref r) if r.code() == RejectCode::SenderNotOwned),
        "{err:?}"
    );
    let err = Receiver::connect(&url, "home", "nope", BOB, "d")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, interop_client::ClientError::HelloRefused(ref r) if r.code() == RejectCode::AuthFailed)
    );
    let err = Receiver::connect(&url, "home", HOME_TOKEN, "", "d")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, interop_client::ClientError::HelloRefused(ref r) if r.code() == RejectCode::MissingField)
    );
    let err = Receiver::connect(&url, "home", HOME_TOKEN, BOB, "bad device!")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, interop_client::ClientError::HelloRefused(ref r) if r.code() == RejectCode::MalformedFrame)
    );
    // The right provider gets its session.
    Receiver::connect(&url, "home", HOME_TOKEN, BOB, "d")
        .await
        .unwrap();
}
