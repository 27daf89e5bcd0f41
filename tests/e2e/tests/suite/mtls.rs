//! Mutual TLS on ingest and delivery, over real TLS WebSockets with
//! rcgen-made CAs: a client certificate listed for provider P authenticates
//! a `Hello` for P (no token needed) and nothing else; a provider that
//! requires its certificate is refused without it; a certificate from an
//! untrusted CA gets no session; removing a certificate from the registry
//! closes the connections it authenticated.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use interop_client::{text_envelope, ClientError, Receiver, SendOutcome, Sender};
use interop_e2e::connect_service;
use interop_proto::v1::RejectCode;
use interop_providers::store::RegistryStore;
use interop_providers::{cert_fingerprint, hash_token, Registry};
use interop_test_support::{NatsServer, RedisServer};

const HOME_TOKEN: &str = "home-mtls-token-0123456789abcdef";
const SIGNAL_TOKEN: &str = "signal-mtls-token-0123456789abcdef";
const TELEGRAM_TOKEN: &str = "telegram-mtls-token-0123456789abcdef";
const BOB: &str = "home:+4915112345678";

struct Pki {
    dir: std::path::PathBuf,
    /// The CA that signs the server's and the trusted clients' certificates.
    ca_pem: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
    signal: (CertificateDer<'static>, KeyPair),
    telegram: (CertificateDer<'static>, KeyPair),
    /// A client certificate from a CA the gateway does not trust.
    stranger: (CertificateDer<'static>, KeyPair),
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    names: &[&str],
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> (CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.der().clone(), key)
}

fn pki(name: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("interop-mtls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = ca("interop test CA");
    let (server, server_key) = leaf(&["localhost"], &ca);
    let ca_pem = dir.join("ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let server_cert = dir.join("server.pem");
    std::fs::write(&server_cert, pem_cert(&server)).unwrap();
    let server_key_path = dir.join("server.key");
    std::fs::write(&server_key_path, server_key.serialize_pem()).unwrap();
    let signal = leaf(&["signal.example"], &ca);
    let telegram = leaf(&["telegram.example"], &ca);
    let stranger = leaf(&["signal.example"], &self::ca("someone else's CA"));
    Pki {
        dir,
        ca_pem,
        server_cert,
        server_key: server_key_path,
        signal,
        telegram,
        stranger,
    }
}

fn pem_cert(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn registry(pki: &Pki) -> Registry {
    Registry::from_toml(&format!(
        r#"
        [[providers]]
        id = "home"
        display_name = "Home"
        encryption = "e2ee"
        token_sha256 = ["{}"]

        [[providers]]
        id = "signal"
        display_name = "Signal"
        encryption = "e2ee"
        token_sha256 = ["{}"]
        client_cert_sha256 = ["{}"]

        [[providers]]
        id = "telegram"
        display_name = "Telegram"
        encryption = "transport-only"
        token_sha256 = ["{}"]
        client_cert_sha256 = ["{}"]
        require_client_cert = true
        "#,
        hash_token(HOME_TOKEN),
        hash_token(SIGNAL_TOKEN),
        cert_fingerprint(pki.signal.0.as_ref()),
        hash_token(TELEGRAM_TOKEN),
        cert_fingerprint(pki.telegram.0.as_ref()),
    ))
    .unwrap()
}

/// A client config trusting the test CA, presenting `cert` if given.
fn client(
    pki: &Pki,
    cert: Option<&(CertificateDer<'static>, KeyPair)>,
) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match cert {
        None => builder.with_no_client_auth(),
        Some((der, key)) => builder
            .with_client_auth_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap(),
    };
    Arc::new(config)
}

fn refused_with(result: Result<Sender, ClientError>) -> RejectCode {
    match result {
        Err(ClientError::HelloRefused(r)) => r.code(),
        Err(e) => panic!("expected a refused Hello, got {e}"),
        Ok(_) => panic!("expected a refused Hello, got a session"),
    }
}

fn receiver_refused_with(result: Result<Receiver, ClientError>) -> RejectCode {
    match result {
        Err(ClientError::HelloRefused(r)) => r.code(),
        Err(e) => panic!("expected a refused Hello, got {e}"),
        Ok(_) => panic!("expected a refused Hello, got a session"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_authenticates_its_provider_and_no_other() {
    let pki = pki("e2e");
    let server_tls = interop_edge::tls::server_config_with_client_ca(
        &pki.server_cert,
        &pki.server_key,
        Some(&pki.ca_pem),
    )
    .unwrap();
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
    let mut ic = interop_ingest::Config::new(il, Arc::new(registry(&pki)));
    ic.tls = Some(server_tls.clone());
    let mut dc = interop_delivery::Config::new(dl, Arc::new(registry(&pki)));
    dc.tls = Some(server_tls);
    let (d, s) = (deps("ingest").await, shutdown.clone());
    tokio::spawn(async move { interop_ingest::run(ic, d, s).await });
    let (d, s) = (deps("spam-scoring").await, shutdown.clone());
    tokio::spawn(async move { interop_spam_scoring::run(Default::default(), d, s).await });
    let (d, s) = (deps("routing").await, shutdown.clone());
    tokio::spawn(async move { interop_routing::run(Default::default(), d, s).await });
    let (d, s) = (deps("delivery").await, shutdown.clone());
    tokio::spawn(async move { interop_delivery::run(dc, d, s).await });
    for a in [ia, da] {
        interop_e2e::wait_listening(&a.to_string()).await;
    }
    let ingest = format!("wss://localhost:{}/v1/ws", ia.port());
    let delivery = format!("wss://localhost:{}/v1/ws", da.port());
    let (no_cert, signal_cert, telegram_cert, stranger_cert) = (
        client(&pki, None),
        client(&pki, Some(&pki.signal)),
        client(&pki, Some(&pki.telegram)),
        client(&pki, Some(&pki.stranger)),
    );

    // Tokens still work without a certificate for a provider that does not
    // require one.
    let home = Sender::connect_with(&ingest, "home", HOME_TOKEN, Some(no_cert.clone()))
        .await
        .unwrap();
    home.set_consent(BOB, true, &["signal", "telegram"])
        .await
        .unwrap();
    let mut bob = Receiver::connect_with(
        &delivery,
        "home",
        HOME_TOKEN,
        BOB,
        "m",
        Some(no_cert.clone()),
    )
    .await
    .unwrap();

    // Signal's certificate alone (empty token) authenticates Signal, on
    // ingest and on delivery, and its sends arrive.
    let alice = Sender::connect_with(&ingest, "signal", "", Some(signal_cert.clone()))
        .await
        .unwrap();
    let accepted = match alice
        .send(text_envelope("m1", "signal:alice", BOB, "by certificate"))
        .await
        .unwrap()
    {
        SendOutcome::Accepted(a) => a,
        SendOutcome::Rejected(r) => panic!("{r:?}"),
    };
    let d = tokio::time::timeout(Duration::from_secs(20), bob.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.envelope.message_id, accepted.message_id);
    // The client library (what `interop --client-cert` uses) loads the
    // certificate and key from PEM files.
    let (cert_pem, key_pem) = (pki.dir.join("signal.pem"), pki.dir.join("signal.key"));
    std::fs::write(&cert_pem, pem_cert(&pki.signal.0)).unwrap();
    std::fs::write(&key_pem, pki.signal.1.serialize_pem()).unwrap();
    let from_files =
        interop_client::tls_config_with_client_cert(&pki.ca_pem, &cert_pem, &key_pem).unwrap();
    let _alice_inbox = Receiver::connect_with(
        &delivery,
        "signal",
        "",
        "signal:alice",
        "m",
        Some(from_files),
    )
    .await
    .unwrap();
    // With the certificate, a token sent as well must be right.
    assert_eq!(
        refused_with(
            Sender::connect_with(&ingest, "signal", "wrong", Some(signal_cert.clone())).await
        ),
        RejectCode::AuthFailed
    );

    // Signal's certificate never authenticates another provider, not even
    // with that provider's valid token, and not its users' inboxes.
    assert_eq!(
        refused_with(
            Sender::connect_with(
                &ingest,
                "telegram",
                TELEGRAM_TOKEN,
                Some(signal_cert.clone())
            )
            .await
        ),
        RejectCode::AuthFailed
    );
    assert_eq!(
        refused_with(
            Sender::connect_with(&ingest, "home", HOME_TOKEN, Some(signal_cert.clone())).await
        ),
        RejectCode::AuthFailed
    );
    assert_eq!(
        receiver_refused_with(
            Receiver::connect_with(
                &delivery,
                "home",
                HOME_TOKEN,
                BOB,
                "x",
                Some(signal_cert.clone())
            )
            .await
        ),
        RejectCode::AuthFailed
    );
    assert_eq!(
        receiver_refused_with(
            Receiver::connect_with(&delivery, "signal", "", BOB, "x", Some(signal_cert.clone()))
                .await
        ),
        RejectCode::SenderNotOwned
    );

    // Telegram requires its certificate: its valid token alone is refused
    // on both endpoints; with the certificate it gets in.
    assert_eq!(
        refused_with(
            Sender::connect_with(&ingest, "telegram", TELEGRAM_TOKEN, Some(no_cert.clone())).await
        ),
        RejectCode::AuthFailed
    );
    assert_eq!(
        receiver_refused_with(
            Receiver::connect_with(
                &delivery,
                "telegram",
                TELEGRAM_TOKEN,
                "telegram:tom",
                "x",
                Some(no_cert.clone())
            )
            .await
        ),
        RejectCode::AuthFailed
    );
    let tom = Sender::connect_with(
        &ingest,
        "telegram",
        TELEGRAM_TOKEN,
        Some(telegram_cert.clone()),
    )
    .await
    .unwrap();
    assert!(matches!(
        tom.send(text_envelope("m2", "telegram:tom", BOB, "cert and token"))
            .await
            .unwrap(),
        SendOutcome::Accepted(_)
    ));

    // A certificate from a CA the gateway does not trust gets no session
    // (the handshake fails; with TLS 1.3 the client learns it on its first
    // read).
    for url in [&ingest, &delivery] {
        let r = Sender::connect_with(url, "signal", "", Some(stranger_cert.clone())).await;
        assert!(
            matches!(r, Err(ref e) if !matches!(e, ClientError::HelloRefused(_))),
            "an untrusted client certificate got this far: {:?}",
            r.err()
        );
    }

    // Taking Signal's certificate out of the registry closes the
    // connections it authenticated within 5 s.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let store = RegistryStore::new(js);
    let mut record = store.get("signal").await.unwrap().unwrap();
    record.client_cert_sha256.clear();
    store.put(&record).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = alice
            .send(text_envelope("m3", "signal:alice", BOB, "after removal"))
            .await;
        if r.is_err() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the certificate's connection stayed open after its removal"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And the certificate no longer authenticates.
    assert_eq!(
        refused_with(Sender::connect_with(&ingest, "signal", "", Some(signal_cert.clone())).await),
        RejectCode::AuthFailed
    );
    // Token connections were not touched.
    assert!(matches!(
        home.set_consent(BOB, true, &["signal"]).await.unwrap(),
        interop_client::ConsentOutcome::Updated(_)
    ));

    shutdown.cancel();
    std::fs::remove_dir_all(&pki.dir).ok();
}

#[test]
fn client_ca_needs_tls_and_a_readable_bundle() {
    use interop_edge::tls::TlsArgs;
    let lo: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let ca_only = TlsArgs {
        tls_cert: None,
        tls_key: None,
        allow_plaintext: false,
        tls_client_ca: Some("/nonexistent/ca.pem".into()),
    };
    assert!(ca_only.server_config(lo).is_err());
    let pki = pki("args");
    let missing = TlsArgs {
        tls_cert: Some(pki.server_cert.clone()),
        tls_key: Some(pki.server_key.clone()),
        allow_plaintext: false,
        tls_client_ca: Some("/nonexistent/ca.pem".into()),
    };
    let err = missing.server_config(lo).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    let good = TlsArgs {
        tls_client_ca: Some(pki.ca_pem.clone()),
        ..missing
    };
    assert!(good.server_config(lo).unwrap().is_some());
    std::fs::remove_dir_all(&pki.dir).ok();
}
