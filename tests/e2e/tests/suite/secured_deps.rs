//! The services reach NATS and Redis over TLS only, with credentials given
//! apart from the URLs: a `nats-server --tls --user --pass` and a
//! `redis-server --port 0 --tls-port --requirepass`, certificates made here.
//! Flags are parsed as a service parses them (`CommonArgs`), so this is the
//! path the chart's Secrets take.

use std::time::Duration;

use clap::Parser;
use interop_client::{text_envelope, Receiver, SendOutcome, Sender};
use interop_e2e::{Gateway, HOME_TOKEN, SIGNAL_TOKEN};
use interop_service::{CommonArgs, Deps, Health};
use interop_test_support::{NatsServer, RedisServer, ServerTls};

const BOB: &str = "home:+4915112345678";
/// Every character a URL would need encoded.
const REDIS_PASSWORD: &str = "p@ss:w/rd#%?& =x";
const NATS_PASSWORD: &str = "n@ts/pa:ss";

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn args(extra: &[&str]) -> CommonArgs {
    let mut argv = vec!["service"];
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv).unwrap().common
}

/// A self-signed certificate for 127.0.0.1 in `dir`: (cert, key).
fn certificate(dir: &std::path::Path) -> ServerTls {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let (c, k) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    ServerTls {
        cert: c,
        key: k,
        client_ca: None,
    }
}

async fn connect(common: &CommonArgs) -> Result<Deps, String> {
    let endpoints = common.endpoints().map_err(|e| e.to_string())?;
    let metrics = std::sync::Arc::new(interop_service::Metrics::default());
    tokio::time::timeout(
        Duration::from_secs(8),
        Deps::connect_to(&endpoints, "test", Health::new(), metrics),
    )
    .await
    .map_err(|_| "no connection within 8 s".to_owned())?
    .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_run_on_tls_only_nats_and_redis_with_credentials_from_apart() {
    let dir = tempfile::tempdir().unwrap();
    let tls = certificate(dir.path());
    let nats = NatsServer::start_secured(&tls, Some(("interop", NATS_PASSWORD)));
    let redis = RedisServer::start_secured(&tls, Some(REDIS_PASSWORD));
    assert!(redis.url().starts_with("rediss://"), "{}", redis.url());
    let ca = tls.cert.display().to_string();
    let (nats_url, redis_url) = (nats.url(), redis.url());
    let good = args(&[
        "--nats-url",
        &nats_url,
        "--nats-user",
        "interop",
        "--nats-password",
        NATS_PASSWORD,
        "--nats-tls-ca-file",
        &ca,
        "--redis-url",
        &redis_url,
        "--redis-password",
        REDIS_PASSWORD,
        "--redis-tls-ca-file",
        &ca,
    ]);

    // The whole gateway on them: a message goes end to end.
    let gateway = Gateway::start_to(&good.endpoints().unwrap(), Default::default()).await;
    let home = Sender::connect(&gateway.ingest_url, "home", HOME_TOKEN)
        .await
        .unwrap();
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    let mut rx = Receiver::connect(&gateway.delivery_url, "home", HOME_TOKEN, BOB, "phone")
        .await
        .unwrap();
    let alice = Sender::connect(&gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    let out = alice
        .send(text_envelope("t1", "signal:alice", BOB, "over tls"))
        .await
        .unwrap();
    assert!(matches!(out, SendOutcome::Accepted(_)), "{out:?}");
    let got = tokio::time::timeout(Duration::from_secs(15), rx.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.envelope.from, "signal:alice");
    gateway.stop().await;

    // Plain text is refused by both servers: they are TLS-only.
    let plain_redis = redis_url.replacen("rediss://", "redis://", 1);
    let plain = args(&["--nats-url", &nats_url, "--redis-url", &plain_redis]);
    assert!(
        connect(&plain).await.is_err(),
        "plain text must not connect"
    );
    // A wrong Redis password never connects.
    let wrong = args(&[
        "--nats-url",
        &nats_url,
        "--nats-user",
        "interop",
        "--nats-password",
        NATS_PASSWORD,
        "--nats-tls-ca-file",
        &ca,
        "--redis-url",
        &redis_url,
        "--redis-password",
        "wrong",
        "--redis-tls-ca-file",
        &ca,
    ]);
    assert!(
        connect(&wrong).await.is_err(),
        "a wrong Redis password must not connect"
    );
}

#[test]
fn half_given_credentials_and_tls_files_without_tls_are_configuration_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["--nats-user", "u"], "--nats-user and --nats-password"),
        (
            &["--nats-tls-cert-file", "c.pem"],
            "--nats-tls-cert-file and --nats-tls-key-file",
        ),
        (
            &["--redis-tls-key-file", "k.pem"],
            "--redis-tls-cert-file and --redis-tls-key-file",
        ),
        (
            &["--nats-creds-file", "a.creds", "--nats-nkey-file", "seed"],
            "give one of --nats-creds-file",
        ),
        (&["--redis-tls-ca-file", "ca.pem"], "need a rediss:// URL"),
        (
            &["--redis-username", "u"],
            "--redis-username needs --redis-password",
        ),
    ];
    for (flags, want) in cases {
        let e = args(flags).endpoints().unwrap_err().to_string();
        assert!(e.contains(want), "{flags:?}: {e}");
    }
    // The password stays out of what a log line would show.
    let ok = args(&[
        "--redis-password",
        REDIS_PASSWORD,
        "--nats-user",
        "u",
        "--nats-password",
        NATS_PASSWORD,
    ]);
    let shown = format!("{:?} {ok:?}", ok.endpoints().unwrap());
    assert!(
        !shown.contains(REDIS_PASSWORD) && !shown.contains(NATS_PASSWORD),
        "{shown}"
    );
}
