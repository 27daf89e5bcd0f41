//! Security at the edge (issue 10): what a malicious provider or client
//! cannot do. Each test backs a claim in docs/security.md.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use interop_client::{text_envelope, ClientError, ConsentOutcome, Receiver, SendOutcome, Sender};
use interop_e2e::{
    connect_service, read_server_frame, registry, wait_listening, Cluster, HOME_TOKEN,
    SIGNAL_TOKEN, TELEGRAM_TOKEN,
};
use interop_edge::EdgeLimits;
use interop_proto::limits::HARD_MAX_FRAME_BYTES;
use interop_proto::v1::{client_frame, server_frame, ClientFrame, Hello, RejectCode, ServerFrame};
use interop_test_support::{NatsServer, RedisServer};

use crate::common::rejected;

const BOB: &str = "home:+4915112345678";
const CAROL: &str = "home:+4915112345679";
/// A home number nobody ever used.
const NOBODY: &str = "home:+4915199999999";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_cannot_send_as_receive_for_or_learn_about_another_providers_users() {
    let c = Cluster::start().await;
    let (ingest, delivery) = (&c.gateway.ingest_url, &c.gateway.delivery_url);
    let home = Sender::connect(ingest, "home", HOME_TOKEN).await.unwrap();
    // Bob opted in and allows signal; Carol opted in and allows only
    // telegram; nobody ever heard of NOBODY.
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    home.set_consent(CAROL, true, &["telegram"]).await.unwrap();
    let signal = Sender::connect(ingest, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();

    // Send as another provider's user.
    let r = rejected(
        signal
            .send(text_envelope("s1", BOB, "signal:alice", "spoofed"))
            .await
            .unwrap(),
    );
    assert_eq!(r.code(), RejectCode::SenderNotOwned);
    // Change another provider's user's consent (to open Carol to signal).
    match signal.set_consent(CAROL, true, &["signal"]).await.unwrap() {
        ConsentOutcome::Rejected(r) => assert_eq!(r.code(), RejectCode::SenderNotOwned),
        ConsentOutcome::Updated(u) => panic!("signal changed a home user's consent: {u:?}"),
    }
    // Open a delivery session (read the inbox) of another provider's user.
    match Receiver::connect(delivery, "signal", SIGNAL_TOKEN, BOB, "spy").await {
        Err(ClientError::HelloRefused(r)) => assert_eq!(r.code(), RejectCode::SenderNotOwned),
        Err(e) => panic!("expected SENDER_NOT_OWNED, got {e}"),
        Ok(_) => panic!("signal opened a session for a home user"),
    }

    // Learn who exists: not opted in (Carol allows only telegram), no such
    // user, and opted out all look the same, code and words and retry hint.
    let mut answers = Vec::new();
    for (i, to) in [CAROL, NOBODY].into_iter().enumerate() {
        let r = rejected(
            signal
                .send(text_envelope(&format!("p{i}"), "signal:alice", to, "probe"))
                .await
                .unwrap(),
        );
        answers.push((r.code(), r.detail, r.retry_after_ms));
    }
    home.set_consent(BOB, false, &[]).await.unwrap();
    let r = rejected(
        signal
            .send(text_envelope("p2", "signal:alice", BOB, "probe"))
            .await
            .unwrap(),
    );
    answers.push((r.code(), r.detail, r.retry_after_ms));
    assert_eq!(answers[0].0, RejectCode::RecipientUnavailable);
    assert!(
        answers.iter().all(|a| *a == answers[0]),
        "the answers tell recipients apart: {answers:?}"
    );
    // A valid user of signal itself, for contrast, is not refused that way.
    let own = Sender::connect(ingest, "telegram", TELEGRAM_TOKEN)
        .await
        .unwrap();
    let r = own
        .send(text_envelope("t1", "telegram:tom", CAROL, "allowed"))
        .await
        .unwrap();
    assert!(matches!(r, SendOutcome::Accepted(_)), "{r:?}");
    c.gateway.stop().await;
}

/// A raw WebSocket from a chosen loopback address (127.0.0.0/8 is all
/// loopback on Linux), so a test can play several peers.
async fn ws_from(from: IpAddr, url: &str) -> interop_e2e::RawWs {
    let addr: SocketAddr = url
        .trim_start_matches("ws://")
        .trim_end_matches("/v1/ws")
        .parse()
        .unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
        .await
        .unwrap()
        .0
}

/// Sends a `Hello` from `from` and returns the answer (a `Welcome` or the
/// `Rejected`) and the socket.
async fn hello_from(
    from: &str,
    url: &str,
    provider: &str,
    token: &str,
    user: &str,
) -> (ServerFrame, interop_e2e::RawWs) {
    let mut ws = ws_from(from.parse().unwrap(), url).await;
    let frame = ClientFrame {
        request_id: 1,
        frame: Some(client_frame::Frame::Hello(Hello {
            protocol_version: 1,
            provider: provider.into(),
            token: token.into(),
            user: user.into(),
            ..Default::default()
        })),
    };
    ws.send(Message::Binary(frame.encode_to_vec().into()))
        .await
        .unwrap();
    let answer = read_server_frame(&mut ws)
        .await
        .expect("an answer to Hello");
    (answer, ws)
}

fn outcome(f: &ServerFrame) -> (RejectCode, u32) {
    match &f.frame {
        Some(server_frame::Frame::Welcome(_)) => (RejectCode::Unspecified, 0),
        Some(server_frame::Frame::Rejected(r)) => (r.code(), r.retry_after_ms),
        other => panic!("unexpected answer to Hello: {other:?}"),
    }
}

const WELCOME: RejectCode = RejectCode::Unspecified;

struct Edge {
    ingest: String,
    delivery: String,
    shutdown: CancellationToken,
}

/// Ingest and delivery alone, sharing one Redis, with these edge limits.
async fn edge(nats: &NatsServer, redis: &RedisServer, limits: EdgeLimits) -> Edge {
    let shutdown = CancellationToken::new();
    let seed = Arc::new(registry());
    let il = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ia, da) = (il.local_addr().unwrap(), dl.local_addr().unwrap());
    let mut ic = interop_ingest::Config::new(il, seed.clone());
    ic.edge = limits;
    let mut dc = interop_delivery::Config::new(dl, seed);
    dc.edge = limits;
    let (d, s) = (
        connect_service(&nats.url(), &redis.url(), "ingest").await,
        shutdown.clone(),
    );
    tokio::spawn(async move { interop_ingest::run(ic, d, s).await });
    let (d, s) = (
        connect_service(&nats.url(), &redis.url(), "delivery").await,
        shutdown.clone(),
    );
    tokio::spawn(async move { interop_delivery::run(dc, d, s).await });
    for a in [ia, da] {
        wait_listening(&a.to_string()).await;
    }
    Edge {
        ingest: format!("ws://{ia}/v1/ws"),
        delivery: format!("ws://{da}/v1/ws"),
        shutdown,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_guessing_is_throttled_per_address_and_per_provider_across_ingest_and_delivery()
{
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let limits = EdgeLimits {
        auth_max_failures_per_address: 4,
        auth_max_failures_per_provider: 6,
        // Long enough that a slow machine cannot outlast it mid-test.
        auth_failure_window: Duration::from_secs(600),
        ..EdgeLimits::with_connections(100)
    };
    let e = edge(&nats, &redis, limits).await;

    // The real signal connects from 127.0.0.10 first: a known address.
    let (a, _signal) = hello_from("127.0.0.10", &e.ingest, "signal", SIGNAL_TOKEN, "").await;
    assert_eq!(outcome(&a).0, WELCOME);

    // Per address: 4 failures (2 on ingest, 2 on delivery) are answered
    // AUTH_FAILED; the 5th Hello from that address is refused before its
    // token is looked at, even a right one, with a retry hint within the
    // window. Another address is unaffected.
    for (i, url) in [&e.ingest, &e.delivery, &e.ingest, &e.delivery]
        .into_iter()
        .enumerate()
    {
        let (a, _) = hello_from("127.0.0.40", url, "home", "guess", "home:+4915100000001").await;
        assert_eq!(outcome(&a).0, RejectCode::AuthFailed, "failure {i}");
    }
    for url in [&e.ingest, &e.delivery] {
        let (a, _) = hello_from("127.0.0.40", url, "home", HOME_TOKEN, "home:+4915100000001").await;
        let (code, retry) = outcome(&a);
        assert_eq!(code, RejectCode::RateLimited);
        assert!(retry > 0 && retry <= 600_000, "retry_after_ms {retry}");
    }
    let (a, _) = hello_from("127.0.0.41", &e.ingest, "home", HOME_TOKEN, "").await;
    assert_eq!(outcome(&a).0, WELCOME);

    // Per provider: an attacker guessing signal's token from many addresses
    // (each under the per-address limit) uses up signal's budget...
    for i in 0..6 {
        let from = format!("127.0.1.{}", 10 + i);
        let (a, _) = hello_from(&from, &e.ingest, "signal", "guess", "").await;
        assert_eq!(outcome(&a).0, RejectCode::AuthFailed, "guess {i}");
    }
    // ...after which guesses from new addresses are refused unchecked,
    let (a, _) = hello_from("127.0.1.50", &e.delivery, "signal", "guess", "signal:x").await;
    assert_eq!(outcome(&a).0, RejectCode::RateLimited);
    // but signal still gets in from where it connected before, on both
    // endpoints,
    let (a, _s1) = hello_from("127.0.0.10", &e.ingest, "signal", SIGNAL_TOKEN, "").await;
    assert_eq!(outcome(&a).0, WELCOME);
    let (a, _s2) = hello_from(
        "127.0.0.10",
        &e.delivery,
        "signal",
        SIGNAL_TOKEN,
        "signal:alice",
    )
    .await;
    assert_eq!(outcome(&a).0, WELCOME);
    // and other providers are not affected. (The price: signal itself from a
    // new address waits out the window, or uses its client certificate.)
    let (a, _) = hello_from("127.0.1.50", &e.ingest, "telegram", TELEGRAM_TOKEN, "").await;
    assert_eq!(outcome(&a).0, WELCOME);
    let (a, _) = hello_from("127.0.1.51", &e.ingest, "signal", SIGNAL_TOKEN, "").await;
    let (code, retry) = outcome(&a);
    assert_eq!(code, RejectCode::RateLimited);
    assert!(retry > 0 && retry <= 600_000, "retry_after_ms {retry}");
    // Guessing ids that do not exist counts per address only.
    for i in 0..4 {
        let (a, _) = hello_from("127.0.2.1", &e.ingest, &format!("nosuch{i}"), "x", "").await;
        assert_eq!(outcome(&a).0, RejectCode::AuthFailed);
    }
    let (a, _) = hello_from("127.0.2.1", &e.ingest, "nosuch9", "x", "").await;
    assert_eq!(outcome(&a).0, RejectCode::RateLimited);
    e.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_provider_are_capped_with_a_typed_rejection() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let e = edge(&nats, &redis, EdgeLimits::with_connections(3)).await;
    for (url, delivery) in [(&e.ingest, false), (&e.delivery, true)] {
        // Delivery sessions are per user; ingest connections have none.
        let user = |i: u32| {
            if delivery {
                format!("signal:user{i}")
            } else {
                String::new()
            }
        };
        // At the cap: three connections are served.
        let mut open = Vec::new();
        for i in 0..3 {
            let (a, ws) = hello_from("127.0.0.1", url, "signal", SIGNAL_TOKEN, &user(i)).await;
            assert_eq!(outcome(&a).0, WELCOME, "connection {i}");
            open.push(ws);
        }
        // One over: refused, typed, with a retry hint, then closed.
        let (a, mut ws) = hello_from("127.0.0.1", url, "signal", SIGNAL_TOKEN, &user(3)).await;
        let (code, retry) = outcome(&a);
        assert_eq!(code, RejectCode::TooManyConnections);
        assert!(retry > 0);
        let (close, _) = read_server_frame(&mut ws).await.unwrap_err();
        assert_eq!(close, Some(CloseCode::Policy));
        // Other providers have their own count.
        let home_user = if delivery { BOB } else { "" };
        let (a, _home) = hello_from("127.0.0.1", url, "home", HOME_TOKEN, home_user).await;
        assert_eq!(outcome(&a).0, WELCOME);
        // Closing one frees its place.
        let mut first = open.remove(0);
        first.close(None).await.ok();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (a, ws) = hello_from("127.0.0.1", url, "signal", SIGNAL_TOKEN, &user(4)).await;
            if outcome(&a).0 == WELCOME {
                open.push(ws);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the place was not freed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    e.shutdown.cancel();
}

/// Whether the server closed `tcp` (EOF or reset) within `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_connections_are_dropped_after_their_timeouts() {
    let c = Cluster::start().await;
    let ingest = c
        .gateway
        .ingest_url
        .trim_start_matches("ws://")
        .trim_end_matches("/v1/ws")
        .to_owned();
    // A TLS ingest too, for a client that never finishes its handshake.
    let dir = std::env::temp_dir().join(format!("interop-loris-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_pem, key_pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let tl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tl.local_addr().unwrap();
    let mut tc = interop_ingest::Config::new(tl, Arc::new(registry()));
    tc.tls = Some(interop_edge::tls::server_config(&cert_pem, &key_pem).unwrap());
    let stop = CancellationToken::new();
    let (d, s) = (
        connect_service(&c.nats.url(), &c.redis.url(), "ingest").await,
        stop.clone(),
    );
    tokio::spawn(async move { interop_ingest::run(tc, d, s).await });
    wait_listening(&tls_addr.to_string()).await;

    // 1. Connects and says nothing (no HTTP request at all).
    let mut silent = TcpStream::connect(&ingest).await.unwrap();
    // 2. Sends the upgrade request's header one byte a second.
    let mut trickle = TcpStream::connect(&ingest).await.unwrap();
    let request = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {ingest}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let trickler = tokio::spawn(async move {
        for b in request.bytes() {
            if trickle.write_all(&[b]).await.is_err() {
                return trickle;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        trickle
    });
    // 3. Opens TLS and never sends a ClientHello.
    let mut no_handshake = TcpStream::connect(tls_addr).await.unwrap();
    // 3b. Connects to the media API and says nothing.
    let mut silent_media = TcpStream::connect(c.gateway.media_url.trim_start_matches("http://"))
        .await
        .unwrap();
    // 4. Upgrades to a WebSocket and never sends Hello.
    let (mut no_hello, _) = tokio_tungstenite::connect_async(&c.gateway.ingest_url)
        .await
        .unwrap();
    // Meanwhile a well-behaved client is served throughout.
    let good = Sender::connect(&c.gateway.ingest_url, "home", HOME_TOKEN)
        .await
        .unwrap();

    let started = tokio::time::Instant::now();
    // Each timeout is 10 s; allow generous slack for a busy machine.
    let within = Duration::from_secs(25);
    assert!(
        closed_within(&mut silent, within).await,
        "a silent connection stayed open"
    );
    assert!(
        closed_within(&mut no_handshake, within).await,
        "a stalled TLS handshake stayed open"
    );
    assert!(
        closed_within(&mut silent_media, within).await,
        "a silent media API connection stayed open"
    );
    let (code, reason) = read_server_frame(&mut no_hello).await.unwrap_err();
    assert_eq!(
        (code, reason.as_str()),
        (Some(CloseCode::Policy), "no hello in time")
    );
    let mut trickle = tokio::time::timeout(within, trickler)
        .await
        .unwrap()
        .unwrap();
    assert!(
        closed_within(&mut trickle, within).await,
        "a trickled header stayed open"
    );
    // None was dropped before its timeout (the header trickle needs ~180 s
    // to finish, so only the timeout can have ended it).
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert!(matches!(
        good.set_consent(BOB, true, &["signal"]).await.unwrap(),
        ConsentOutcome::Updated(_)
    ));
    stop.cancel();
    c.gateway.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

/// The resident memory of this process (the gateway runs in it), bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Upgrades `tcp` to a WebSocket by hand (so the test can then write raw
/// frame headers).
async fn handshake(tcp: &mut TcpStream, host: &str) {
    let request = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_frames_at_full_rate_do_not_exhaust_memory() {
    let c = Cluster::start().await;
    let host = c
        .gateway
        .ingest_url
        .trim_start_matches("ws://")
        .trim_end_matches("/v1/ws")
        .to_owned();

    // A frame header claiming 1 TiB is refused from the header (close 1009)
    // without the gateway waiting for, or allocating, the payload.
    let mut tcp = TcpStream::connect(&host).await.unwrap();
    handshake(&mut tcp, &host).await;
    let mut header = vec![0x82u8, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    tcp.write_all(&header).await.unwrap();
    let mut answer = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer[0], 0x88, "a close frame");
    assert_eq!(u16::from_be_bytes([answer[2], answer[3]]), 1009);

    // Many connections at once, each sending frames just under the hard
    // limit (answered FRAME_TOO_LARGE, connection kept), garbage, and
    // frames over it (closed), as fast as they can: 12 x 64 x 500 KB, about
    // 380 MB in all.
    let before = rss_bytes();
    // The peak matters, not just what is left afterwards: sample it.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_bytes());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let url = c.gateway.ingest_url.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
            let hello = ClientFrame {
                request_id: 1,
                frame: Some(client_frame::Frame::Hello(Hello {
                    protocol_version: 1,
                    provider: "signal".into(),
                    token: SIGNAL_TOKEN.into(),
                    ..Default::default()
                })),
            };
            ws.send(Message::Binary(hello.encode_to_vec().into()))
                .await
                .unwrap();
            let big = vec![0xAB_u8; HARD_MAX_FRAME_BYTES - 1024];
            let mut answers = 0;
            for i in 0..64 {
                let payload = if i % 8 == 7 {
                    vec![0xFF; 4096]
                } else {
                    big.clone()
                };
                if ws.send(Message::Binary(payload.into())).await.is_err() {
                    break;
                }
            }
            // Collect answers until all 64 came back (plus the Welcome).
            while answers < 65 {
                match read_server_frame(&mut ws).await {
                    Ok(_) => answers += 1,
                    Err(_) => break,
                }
            }
            // Then one over the hard limit: closed with 1009.
            ws.send(Message::Binary(vec![0u8; HARD_MAX_FRAME_BYTES + 1].into()))
                .await
                .ok();
            let close = loop {
                match read_server_frame(&mut ws).await {
                    Ok(_) => continue,
                    Err((code, _)) => break code,
                }
            };
            (answers, close)
        }));
    }
    for t in tasks {
        let (answers, close) = t.await.unwrap();
        assert_eq!(answers, 65, "every frame was answered");
        assert_eq!(close, Some(CloseCode::Size));
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.unwrap().saturating_sub(before);
    let grown = rss_bytes().saturating_sub(before);
    eprintln!(
        "resident memory: peak +{} MiB, after +{} MiB",
        peak / (1024 * 1024),
        grown / (1024 * 1024)
    );
    assert!(
        peak < 200 * 1024 * 1024,
        "resident memory peaked {} MiB above the start",
        peak / (1024 * 1024)
    );
    // The test's own client buffers are part of this process too; what is
    // asserted is that nowhere near the ~380 MB sent stayed resident.
    assert!(
        grown < 150 * 1024 * 1024,
        "resident memory grew by {} MiB",
        grown / (1024 * 1024)
    );
    // Other connections are served afterwards.
    let s = Sender::connect(&c.gateway.ingest_url, "home", HOME_TOKEN)
        .await
        .unwrap();
    assert!(matches!(
        s.set_consent(BOB, true, &["signal"]).await.unwrap(),
        ConsentOutcome::Updated(_)
    ));
    c.gateway.stop().await;
}

/// A plain HTTP/1.1 request to the media API: the status code.
async fn media_status(base: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    media_answer(base, path, headers, "127.0.0.1").await.0
}

/// A plain HTTP/1.1 request to the media API from a chosen loopback
/// address: the status code and the whole answer.
async fn media_answer(
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
    from: &str,
) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let mut tcp = socket.connect(addr.parse().unwrap()).await.unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_media_api_serves_only_a_providers_own_users_honours_revocation_and_throttles_guessing()
{
    let c = Cluster::start().await;
    let media = &c.gateway.media_url;
    let path = "/v1/media/x-0123456789abcdef0123456789abcdef";
    let signal_auth = format!("Bearer {SIGNAL_TOKEN}");
    // Another provider's user: refused before any media is looked up.
    let as_bob = [
        ("Authorization", signal_auth.as_str()),
        ("X-Interop-Provider", "signal"),
        ("X-Interop-As", BOB),
    ];
    assert_eq!(media_status(media, path, &as_bob).await, 403);
    // Its own user, media not granted to them: the same answer as unknown.
    let as_alice = [
        ("Authorization", signal_auth.as_str()),
        ("X-Interop-Provider", "signal"),
        ("X-Interop-As", "signal:alice"),
    ];
    assert_eq!(media_status(media, path, &as_alice).await, 404);
    // A wrong token.
    let wrong = [
        ("Authorization", "Bearer wrong"),
        ("X-Interop-Provider", "signal"),
        ("X-Interop-As", "signal:alice"),
    ];
    assert_eq!(media_status(media, path, &wrong).await, 401);

    // Revoking signal's token in the registry stream (what `interop provider
    // revoke` does) shuts the media API to it within seconds too.
    let js = async_nats::jetstream::new(async_nats::connect(c.nats.url()).await.unwrap());
    let store = interop_providers::store::RegistryStore::new(js);
    let mut record = store.get("signal").await.unwrap().unwrap();
    record.token_sha256.clear();
    store.put(&record).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while media_status(media, path, &as_alice).await != 401 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the media API still takes a revoked token"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Guessing tokens on the media API is throttled like Hellos, and counts
    // with them: 20 failures from one address are answered 401, then that
    // address gets 429 with Retry-After, even with a right token, on the
    // media API and on ingest alike.
    let home_auth = format!("Bearer {HOME_TOKEN}");
    let guess = [
        ("Authorization", "Bearer guess"),
        ("X-Interop-Provider", "home"),
        ("X-Interop-As", BOB),
    ];
    for i in 0..20 {
        let (status, _) = media_answer(media, path, &guess, "127.0.3.1").await;
        assert_eq!(status, 401, "guess {i}");
    }
    let right = [
        ("Authorization", home_auth.as_str()),
        ("X-Interop-Provider", "home"),
        ("X-Interop-As", BOB),
    ];
    let (status, answer) = media_answer(media, path, &right, "127.0.3.1").await;
    assert_eq!(status, 429, "{answer}");
    let retry: u32 = answer
        .lines()
        .find_map(|l| {
            l.strip_prefix("retry-after: ")
                .or_else(|| l.strip_prefix("Retry-After: "))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {answer}"));
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let (a, _) = hello_from("127.0.3.1", &c.gateway.ingest_url, "home", HOME_TOKEN, "").await;
    assert_eq!(outcome(&a).0, RejectCode::RateLimited);
    // Another address is served.
    let (status, _) = media_answer(media, path, &right, "127.0.3.2").await;
    assert_eq!(status, 404);
    c.gateway.stop().await;
}
