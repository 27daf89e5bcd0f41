//! `interop erase-user`, run as an operator would, against ingest's admin
//! API on real nats-server and redis-server.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use interop_state::{Consent, ConsentStore, ContactState, ContactStore};
use interop_test_support::{NatsServer, RedisServer};

const ADMIN_TOKEN: &str = "admin-token-for-the-cli-test-0123";
const BOB: &str = "home:+4915112345678";

/// Runs `interop` with `args`; the exit code and stdout as JSON.
async fn interop(args: &[&str]) -> (i32, serde_json::Value) {
    let out = interop_e2e::interop_command()
        .args(args)
        .env_remove("INTEROP_ADMIN_URL")
        .env_remove("INTEROP_ADMIN_TOKEN")
        .current_dir(std::env::temp_dir())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.trim()).unwrap_or_else(
        |_| serde_json::json!({"stdout": stdout, "stderr": String::from_utf8_lossy(&out.stderr)}),
    );
    (out.status.code().unwrap_or(-1), json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_user_removes_a_users_state_prints_counts_and_can_be_repeated() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let deps = interop_service::Deps::connect(
        &nats.url(),
        &redis.url(),
        "ingest",
        interop_service::Health::new(),
        Arc::new(interop_service::Metrics::default()),
    )
    .await
    .unwrap();
    let state = interop_e2e::records(&nats.url(), &redis.url()).await;
    let registry = interop_providers::Registry::from_toml(&format!(
        "[[providers]]\nid = \"home\"\ndisplay_name = \"Home\"\nencryption = \"e2ee\"\ntoken_sha256 = [\"{}\"]\n",
        interop_providers::hash_token("home-token-0123456789abcdef")
    ))
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let mut config = interop_ingest::Config::new(listener, Arc::new(registry));
    config.admin_api = Some(interop_ingest::admin::AdminApi::new(admin, ADMIN_TOKEN));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(interop_ingest::run(config, deps, shutdown.clone()));

    // Bob opted in and accepted someone; someone blocked him.
    let consent = ConsentStore::new(state.clone());
    consent
        .set(
            BOB,
            &Consent {
                opted_in: true,
                allowed_providers: vec!["signal".into()],
                combined_inbox: false,
            },
        )
        .await
        .unwrap();
    let contacts = ContactStore::new(state.clone());
    contacts
        .set(BOB, "signal:alice", ContactState::Accepted)
        .await
        .unwrap();
    contacts
        .set("signal:alice", BOB, ContactState::Blocked)
        .await
        .unwrap();

    let erase = ["erase-user", BOB, "--admin-url", &admin_url];
    // Without the right token: refused, typed, nothing erased. (The first
    // tries may come before the admin API listens.)
    let wrong = [&erase[..], &["--admin-token", "not-the-token"]].concat();
    let mut attempt = 0;
    let (code, out) = loop {
        let r = interop(&wrong).await;
        attempt += 1;
        if r.0 == 2 || attempt > 100 {
            break r;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(code, 2, "{out}");
    assert_eq!(out["rejected"]["code"], "UNAUTHORIZED");
    assert!(consent.get(BOB).await.unwrap().opted_in);

    let with_token = [&erase[..], &["--admin-token", ADMIN_TOKEN]].concat();
    let (code, out) = interop(&with_token).await;
    assert_eq!(code, 0, "{out}");
    // His consent and his contact record go, from the stream and from
    // Redis; Alice's block of him stays.
    assert_eq!(out["erased"]["user_records"], 2, "{out}");
    assert_eq!(out["erased"]["redis_keys"], 2, "{out}");
    assert_eq!(out["erased"]["blocks_kept"], 1, "{out}");
    assert!(!consent.get(BOB).await.unwrap().opted_in);
    assert!(contacts.list(BOB).await.unwrap().is_empty());
    assert_eq!(
        contacts.get("signal:alice", BOB).await.unwrap(),
        Some(ContactState::Blocked)
    );

    // Again: nothing left to remove but what the reads above cached: that
    // he has no consent record and no answers (no user data).
    let (code, again) = interop(&with_token).await;
    assert_eq!(code, 0, "{again}");
    for (k, v) in again["erased"].as_object().unwrap() {
        let want = match k.as_str() {
            "blocks_kept" => 1,
            "redis_keys" => 2,
            _ => 0,
        };
        assert_eq!(v.as_u64(), Some(want), "{k} in {again}");
    }

    // Not an address: refused before anything is sent.
    let (code, _) = interop(&[
        "erase-user",
        "bob",
        "--admin-url",
        &admin_url,
        "--admin-token",
        ADMIN_TOKEN,
    ])
    .await;
    assert_eq!(code, 1);

    shutdown.cancel();
    task.await.unwrap().unwrap();
}
