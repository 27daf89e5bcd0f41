//! TLS on the provider endpoints: a client that trusts the gateway's CA
//! sends and receives over wss://; plaintext and untrusted clients get no
//! session; plaintext is refused on non-loopback addresses unless allowed.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use interop_client::{text_envelope, Receiver, SendOutcome, Sender};
use interop_e2e::{connect_service, registry, HOME_TOKEN, SIGNAL_TOKEN};
use interop_edge::tls::TlsArgs;
use interop_test_support::{NatsServer, RedisServer};

const BOB: &str = "home:+4915112345678";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_delivery_speak_tls() {
    let dir = std::env::temp_dir().join(format!("interop-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_pem, key_pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let server_tls = interop_edge::tls::server_config(&cert_pem, &key_pem).unwrap();

    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let shutdown = CancellationToken::new();
    let deps = |name: &'static str| {
        let (n, r) = (nats.url(), redis.url());
        async move { connect_service(&n, &r, name).await }
    };
    let il = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ia, da) = (il.local_addr().unwrap(), dl.local_addr().unwrap());
    let mut ic = interop_ingest::Config::new(il, Arc::new(registry()));
    ic.tls = Some(server_tls.clone());
    let mut dc = interop_delivery::Config::new(dl, Arc::new(registry()));
    dc.tls = Some(server_tls);
    let (d1, s1) = (deps("ingest").await, shutdown.clone());
    tokio::spawn(async move { interop_ingest::run(ic, d1, s1).await });
    for name in ["spam-scoring", "routing"] {
        let (d, s) = (deps(name).await, shutdown.clone());
        if name == "routing" {
            tokio::spawn(async move { interop_routing::run(Default::default(), d, s).await });
        } else {
            tokio::spawn(async move { interop_spam_scoring::run(Default::default(), d, s).await });
        }
    }
    let (d2, s2) = (deps("delivery").await, shutdown.clone());
    tokio::spawn(async move { interop_delivery::run(dc, d2, s2).await });
    for a in [ia, da] {
        while tokio::net::TcpStream::connect(a).await.is_err() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let (ingest, delivery) = (
        format!("wss://localhost:{}/v1/ws", ia.port()),
        format!("wss://localhost:{}/v1/ws", da.port()),
    );
    let trust = interop_client::tls_config(&cert_pem).unwrap();

    let home = Sender::connect_with(&ingest, "home", HOME_TOKEN, Some(trust.clone()))
        .await
        .unwrap();
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    let mut bob =
        Receiver::connect_with(&delivery, "home", HOME_TOKEN, BOB, "p", Some(trust.clone()))
            .await
            .unwrap();
    let alice = Sender::connect_with(&ingest, "signal", SIGNAL_TOKEN, Some(trust.clone()))
        .await
        .unwrap();
    let a = match alice
        .send(text_envelope("t1", "signal:alice", BOB, "over tls"))
        .await
        .unwrap()
    {
        SendOutcome::Accepted(a) => a,
        SendOutcome::Rejected(r) => panic!("{r:?}"),
    };
    let d = tokio::time::timeout(Duration::from_secs(10), bob.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope.message_id, a.message_id);

    // Plaintext to a TLS endpoint gets no session.
    assert!(Sender::connect(
        &format!("ws://127.0.0.1:{}/v1/ws", ia.port()),
        "signal",
        SIGNAL_TOKEN
    )
    .await
    .is_err());
    // Nor does a client that does not trust the certificate.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other_pem = dir.join("other.pem");
    std::fs::write(&other_pem, other.cert.pem()).unwrap();
    let wrong = interop_client::tls_config(&other_pem).unwrap();
    assert!(
        Sender::connect_with(&ingest, "signal", SIGNAL_TOKEN, Some(wrong))
            .await
            .is_err()
    );
    // The gateway still serves the trusted clients afterwards.
    let again = alice
        .send(text_envelope("t2", "signal:alice", BOB, "still tls"))
        .await
        .unwrap();
    assert!(matches!(again, SendOutcome::Accepted(_)));
    shutdown.cancel();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn plaintext_is_refused_off_loopback_unless_allowed() {
    let args = |allow| TlsArgs {
        tls_cert: None,
        tls_key: None,
        allow_plaintext: allow,
        tls_client_ca: None,
    };
    let lan: std::net::SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let lo: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    assert!(args(false).server_config(lan).is_err());
    assert!(args(false).server_config(lo).unwrap().is_none());
    assert!(args(true).server_config(lan).unwrap().is_none());
    let missing = TlsArgs {
        tls_cert: Some("/nonexistent/cert.pem".into()),
        tls_key: Some("/nonexistent/key.pem".into()),
        allow_plaintext: false,
        tls_client_ca: None,
    };
    let err = missing.server_config(lan).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}
