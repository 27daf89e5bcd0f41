//! The backend adapter against a real gateway, with a WebSocket client in
//! place of the browser: sign-in, the checks that keep a browser to its own
//! user, message requests through the provider session, redelivery of what
//! the browser did not ack, per-device ciphertexts, the registry's
//! providers and media.

mod common;

use std::time::Duration;

use common::{http, sign_in, BOB, CAROL, SIGNAL_TOKEN};
use futures_util::{SinkExt, StreamExt};
use interop_client::{SendOutcome, Sender};
use interop_proto::v1::{
    client_frame::Frame, envelope::Content, server_frame, Ciphertext, ClientFrame, Deliver,
    DeviceCiphertext, Encryption, Envelope, Hello, Inbox, RejectCode, RequestAction,
    RespondToRequest, ServerFrame, SetConsent,
};
use interop_proto::Message as _;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn browser(addr: std::net::SocketAddr, cookie: &str, device: &str) -> Ws {
    let mut req = format!("ws://{addr}/api/ws").into_client_request().unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the WebSocket opens");
    write(
        &mut ws,
        1,
        Frame::Hello(Hello {
            device_id: device.into(),
            ..Default::default()
        }),
    )
    .await;
    let welcome = read(&mut ws).await;
    assert!(
        matches!(welcome.frame, Some(server_frame::Frame::Welcome(_))),
        "{welcome:?}"
    );
    ws
}

async fn write(ws: &mut Ws, request_id: u64, frame: Frame) {
    let f = ClientFrame {
        request_id,
        frame: Some(frame),
    };
    ws.send(tungstenite::Message::Binary(f.encode_to_vec().into()))
        .await
        .expect("writing a frame");
}

async fn read(ws: &mut Ws) -> ServerFrame {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame within 20 s")
            .expect("the connection is open")
            .expect("a message");
        if let tungstenite::Message::Binary(b) = msg {
            return ServerFrame::decode(b).expect("a ServerFrame");
        }
    }
}

/// The answer to `request_id`, keeping deliveries that come first.
async fn answer(ws: &mut Ws, request_id: u64, seen: &mut Vec<Deliver>) -> server_frame::Frame {
    loop {
        let f = read(ws).await;
        match f.frame {
            Some(server_frame::Frame::Deliver(d)) => seen.push(d),
            Some(other) if f.request_id == request_id => return other,
            _ => {}
        }
    }
}

async fn next_delivery(ws: &mut Ws, seen: &mut Vec<Deliver>) -> Deliver {
    if !seen.is_empty() {
        return seen.remove(0);
    }
    loop {
        if let Some(server_frame::Frame::Deliver(d)) = read(ws).await.frame {
            return d;
        }
    }
}

fn text_from_alice(id: &str, body: &str) -> Envelope {
    interop_client::text_envelope(id, "signal:alice", BOB, body)
}

async fn accepted(signal: &Sender, e: Envelope) -> String {
    match signal.send(e).await.expect("an answer") {
        SendOutcome::Accepted(a) => a.message_id,
        SendOutcome::Rejected(r) => panic!("refused: {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_opts_in_answers_a_request_and_gets_only_its_own_messages() {
    let env = common::start().await;
    let addr = env.server.addr;

    // Sign-in: demo users only; the session is a cookie.
    let (status, _, _) = http(
        addr,
        "POST",
        "/api/session",
        &[("Content-Type", "application/json")],
        br#"{"user":"home:+4900000000"}"#,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = http(addr, "GET", "/api/session", &[], b"").await;
    assert_eq!(status, 401);
    let (status, _, _) = http(addr, "GET", "/api/ws", &[], b"").await;
    assert_ne!(status, 101, "no WebSocket without a session");
    let cookie = sign_in(addr, BOB).await;
    let (status, _, body) = http(addr, "GET", "/api/session", &[("Cookie", &cookie)], b"").await;
    assert_eq!(status, 200);
    let me: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(me["user"], BOB);
    // No token reaches a browser: not the provider's, not the admin API's.
    for path in ["/api/session", "/api/providers", "/api/demo-users", "/"] {
        let (_, head, body) = http(addr, "GET", path, &[("Cookie", &cookie)], b"").await;
        let text = format!("{head}{}", String::from_utf8_lossy(&body));
        for secret in [
            common::HOME_TOKEN,
            common::SIGNAL_TOKEN,
            common::ADMIN_TOKEN,
        ] {
            assert!(!text.contains(secret), "{path} shows a token");
        }
    }
    // Another site's page cannot use the cookie.
    let (status, _, _) = http(
        addr,
        "POST",
        "/api/session",
        &[
            ("Content-Type", "application/json"),
            ("Origin", "http://evil.example"),
        ],
        format!("{{\"user\":\"{BOB}\"}}").as_bytes(),
    )
    .await;
    assert_eq!(status, 403);

    // The registry's other providers, with names and privacy policies.
    let (status, _, body) = http(addr, "GET", "/api/providers", &[("Cookie", &cookie)], b"").await;
    assert_eq!(status, 200);
    let providers: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let list = providers["providers"].as_array().unwrap();
    assert!(list.iter().all(|p| p["id"] != "home"), "{providers}");
    let signal = list.iter().find(|p| p["id"] == "signal").expect("signal");
    assert_eq!(signal["display_name"], "Signal");
    assert_eq!(
        signal["privacy_policy_url"],
        "https://signal.example/privacy"
    );

    let mut ws = browser(addr, &cookie, "web-test").await;
    let mut seen = Vec::new();

    // Opting in as Bob works; acting as Carol does not.
    write(
        &mut ws,
        2,
        Frame::SetConsent(SetConsent {
            user: BOB.into(),
            opted_in: true,
            allowed_providers: vec!["signal".into()],
            inbox: Inbox::ThirdParty as i32,
        }),
    )
    .await;
    assert!(matches!(
        answer(&mut ws, 2, &mut seen).await,
        server_frame::Frame::ConsentUpdated(c) if c.opted_in && c.allowed_providers == ["signal"]
    ));
    write(
        &mut ws,
        3,
        Frame::SetConsent(SetConsent {
            user: CAROL.into(),
            opted_in: true,
            allowed_providers: vec!["signal".into()],
            inbox: Inbox::ThirdParty as i32,
        }),
    )
    .await;
    match answer(&mut ws, 3, &mut seen).await {
        server_frame::Frame::Rejected(r) => assert_eq!(r.code(), RejectCode::SenderNotOwned),
        other => panic!("{other:?}"),
    }

    // A first message from Signal arrives as a request, through the
    // adapter's provider session.
    let signal = Sender::connect(&env.gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    assert!(matches!(
        signal
            .set_consent("signal:alice", true, &["home"])
            .await
            .unwrap(),
        interop_client::ConsentOutcome::Updated(_)
    ));
    let first = accepted(&signal, text_from_alice("a1", "hello bob")).await;
    let d = next_delivery(&mut ws, &mut seen).await;
    assert_eq!(d.envelope.as_ref().unwrap().message_id, first);
    assert_eq!(d.inbox(), Inbox::Requests);
    let info = d.envelope.as_ref().unwrap().sender_info.clone().unwrap();
    assert_eq!(info.display_name, "Signal");

    // Not acked: a new connection of the browser gets it again.
    drop(ws);
    let mut ws = browser(addr, &cookie, "web-test").await;
    let again = next_delivery(&mut ws, &mut seen).await;
    assert_eq!(again.envelope.as_ref().unwrap().message_id, first);
    write(
        &mut ws,
        0,
        Frame::Ack(interop_proto::v1::Ack {
            delivery_tags: vec![again.delivery_tag],
            batch_tags: vec![],
        }),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while env.server.hub.mailboxes.pending(BOB) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ack did not take"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Accepting moves later messages to the third-party inbox.
    write(
        &mut ws,
        4,
        Frame::RespondToRequest(RespondToRequest {
            user: BOB.into(),
            sender: "signal:alice".into(),
            action: RequestAction::Accept as i32,
        }),
    )
    .await;
    assert!(matches!(
        answer(&mut ws, 4, &mut seen).await,
        server_frame::Frame::RequestResponded(_)
    ));

    // Per-device ciphertexts: this browser gets its own only.
    let e2ee = Envelope {
        encryption: Encryption::E2ee as i32,
        content: Some(Content::Ciphertext(Ciphertext {
            scheme: "olm.v1".into(),
            devices: vec![
                DeviceCiphertext {
                    device_id: "phone".into(),
                    payload: b"for the phone".to_vec().into(),
                },
                DeviceCiphertext {
                    device_id: "web-test".into(),
                    payload: b"for the browser".to_vec().into(),
                },
            ],
            ..Default::default()
        })),
        ..text_from_alice("a2", "")
    };
    accepted(&signal, e2ee).await;
    let d = next_delivery(&mut ws, &mut seen).await;
    assert_eq!(d.inbox(), Inbox::ThirdParty);
    match d.envelope.unwrap().content {
        Some(Content::Ciphertext(c)) => {
            assert_eq!(&c.payload[..], b"for the browser");
            assert!(c.devices.is_empty());
        }
        other => panic!("{other:?}"),
    }

    // Sending: as Bob, answered with the gateway's Accepted; as anyone
    // else, refused by the adapter.
    let reply = interop_client::text_envelope("b1", BOB, "signal:alice", "hi alice");
    write(
        &mut ws,
        5,
        Frame::Send(interop_proto::v1::Send {
            envelope: Some(reply),
        }),
    )
    .await;
    let a = answer(&mut ws, 5, &mut seen).await;
    assert!(matches!(a, server_frame::Frame::Accepted(_)), "{a:?}");
    let forged = interop_client::text_envelope("b2", CAROL, "signal:alice", "hi");
    write(
        &mut ws,
        6,
        Frame::Send(interop_proto::v1::Send {
            envelope: Some(forged),
        }),
    )
    .await;
    assert!(matches!(
        answer(&mut ws, 6, &mut seen).await,
        server_frame::Frame::Rejected(r) if r.code() == RejectCode::SenderNotOwned
    ));

    // Media: uploaded as the provider on the user's behalf.
    let body = b"a small text file";
    let (status, head, answer_body) = http(
        addr,
        "POST",
        "/api/media",
        &[
            ("Cookie", &cookie),
            ("Content-Type", "text/plain"),
            ("X-Interop-Encryption", "transport-only"),
        ],
        body,
    )
    .await;
    assert_eq!(status, 201, "{head}");
    let up: serde_json::Value = serde_json::from_slice(&answer_body).unwrap();
    assert!(up["media_id"].as_str().unwrap().starts_with("m-"));
    let (status, _, _) = http(
        addr,
        "POST",
        "/api/media",
        &[("Content-Type", "text/plain")],
        body,
    )
    .await;
    assert_eq!(status, 401, "no upload without a session");

    // Signing out ends the session and the connections it opened.
    let (status, _, _) = http(addr, "DELETE", "/api/session", &[("Cookie", &cookie)], b"").await;
    assert_eq!(status, 204);
    let (status, _, _) = http(addr, "GET", "/api/session", &[("Cookie", &cookie)], b"").await;
    assert_eq!(status, 401);
    write(
        &mut ws,
        7,
        Frame::GetConsent(interop_proto::v1::GetConsent { user: BOB.into() }),
    )
    .await;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the connection ends within 10 s")
        {
            None | Some(Err(_)) | Some(Ok(tungstenite::Message::Close(_))) => break,
            Some(Ok(tungstenite::Message::Binary(b))) => {
                let f = ServerFrame::decode(b).unwrap();
                assert_ne!(f.request_id, 7, "answered after sign-out: {f:?}");
            }
            Some(Ok(_)) => {}
        }
    }

    env.server.stop();
}

/// What the adapter took from the gateway (and acked) is on disk before the
/// ack: a restarted adapter still has it for the browser, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_adapter_took_survives_its_restart_and_arrives_once() {
    let env = common::start().await;
    let home = Sender::connect(&env.gateway.ingest_url, "home", common::HOME_TOKEN)
        .await
        .unwrap();
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    let signal = Sender::connect(&env.gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    signal
        .set_consent("signal:alice", true, &["home"])
        .await
        .unwrap();
    let id = accepted(&signal, text_from_alice("r1", "kept")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while env.server.hub.mailboxes.pending(BOB) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never filed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let common::Env {
        server,
        gateway,
        dir,
        redis: _redis,
        nats: _nats,
    } = env;
    server.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let data = dir.path().join("mailboxes");
    // On disk, without the gateway's help.
    assert_eq!(
        interop_home_messenger::hub::Mailboxes::open(&data)
            .unwrap()
            .pending(BOB),
        1
    );
    let server = common::adapter(&gateway, &data).await;
    let cookie = sign_in(server.addr, BOB).await;
    let mut ws = browser(server.addr, &cookie, "web-test").await;
    let mut seen = Vec::new();
    let d = next_delivery(&mut ws, &mut seen).await;
    assert_eq!(d.envelope.as_ref().unwrap().message_id, id);
    // Once: whatever the gateway delivers again is the same tag.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(server.hub.mailboxes.pending(BOB), 1);
}
