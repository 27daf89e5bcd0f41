//! The registry stream against a real nats-server.

use std::time::Duration;

use interop_providers::store::RegistryStore;
use interop_providers::{credential_id, hash_token, Provider, ProviderEncryption, Registry};
use interop_test_support::NatsServer;
use tokio_util::sync::CancellationToken;

fn provider(id: &str, tokens: &[&str]) -> Provider {
    Provider {
        id: id.into(),
        display_name: id.to_uppercase(),
        privacy_policy_url: String::new(),
        encryption: ProviderEncryption::E2ee,
        token_sha256: tokens.iter().map(|t| hash_token(t)).collect(),
        max_per_second: None,
        burst: None,
        capabilities: Default::default(),
        client_cert_sha256: Vec::new(),
        require_client_cert: false,
        removed: false,
    }
}

async fn store(nats: &NatsServer) -> RegistryStore {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    interop_bus::ensure_streams(&js, &Default::default())
        .await
        .unwrap();
    RegistryStore::new(js)
}

#[tokio::test]
async fn seeding_adds_only_unknown_providers_and_watchers_see_changes() {
    let nats = NatsServer::start();
    let store = store(&nats).await;
    let seed =
        Registry::from_providers(vec![provider("signal", &["t1"]), provider("home", &["h1"])])
            .unwrap();
    assert_eq!(store.seed(&seed).await.unwrap(), 2);
    assert_eq!(
        store.seed(&seed).await.unwrap(),
        0,
        "seeding twice adds nothing"
    );

    let shutdown = CancellationToken::new();
    let mut rx = store.watch(shutdown.clone()).await.unwrap();
    assert!(rx.borrow().authenticate("signal", "t1").is_some());

    // Rotate: a second credential; both work.
    let mut signal = store.get("signal").await.unwrap().unwrap();
    signal.token_sha256.push(hash_token("t2"));
    store.put(&signal).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(rx.borrow().authenticate("signal", "t1").is_some());
    assert!(rx.borrow().authenticate("signal", "t2").is_some());

    // Revoke the old one.
    signal
        .token_sha256
        .retain(|h| credential_id(h) != credential_id(&hash_token("t1")));
    store.put(&signal).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(rx.borrow().authenticate("signal", "t1").is_none());
    assert!(rx
        .borrow()
        .has_credential("signal", &credential_id(&hash_token("t2"))));

    // A seed does not bring a revoked credential back.
    assert_eq!(store.seed(&seed).await.unwrap(), 0);
    assert!(store.get("signal").await.unwrap().unwrap().token_sha256 == vec![hash_token("t2")]);

    // Remove a provider.
    let mut home = store.get("home").await.unwrap().unwrap();
    home.removed = true;
    store.put(&home).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(rx.borrow().get("home").is_none());

    // A new watcher starts from the current state.
    let rx2 = store.watch(shutdown.clone()).await.unwrap();
    assert!(rx2.borrow().get("home").is_none());
    assert!(rx2.borrow().authenticate("signal", "t2").is_some());
    assert_eq!(store.list().await.unwrap().len(), 2);
    shutdown.cancel();
}

#[tokio::test]
async fn invalid_records_are_refused_on_write() {
    let nats = NatsServer::start();
    let store = store(&nats).await;
    let mut bad = provider("Bad Id", &["x"]);
    assert!(store.put(&bad).await.is_err());
    bad.id = "ok".into();
    bad.token_sha256 = vec!["not-hex".into()];
    assert!(store.put(&bad).await.is_err());
    // An empty stream loads as an empty registry.
    let rx = store.watch(CancellationToken::new()).await.unwrap();
    assert!(rx.borrow().is_empty());
}

#[tokio::test]
async fn a_client_certificate_listed_twice_skips_only_the_second_record() {
    let nats = NatsServer::start();
    let store = store(&nats).await;
    let cert = "ab".repeat(32);
    // Each record is valid alone (admin writes check across providers, a
    // hand-written stream record might not).
    let mut a = provider("alpha", &["ta"]);
    a.client_cert_sha256 = vec![cert.clone()];
    let mut b = provider("beta", &["tb"]);
    b.client_cert_sha256 = vec![cert.to_uppercase()];
    store.put(&a).await.unwrap();
    store.put(&b).await.unwrap();
    store.put(&provider("gamma", &["tc"])).await.unwrap();
    let rx = store.watch(CancellationToken::new()).await.unwrap();
    let registry = rx.borrow().clone();
    // The first by id keeps the certificate; the clashing one is left out,
    // everyone else is unaffected.
    assert_eq!(registry.cert_owner(&cert), Some("alpha"));
    assert!(registry.get("beta").is_none());
    assert!(registry.authenticate("gamma", "tc").is_some());
    assert!(registry.authenticate("alpha", "ta").is_some());
}
