//! The provider registry through the admin API: rotation, revocation that
//! closes open connections on ingest and delivery, and removal.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use interop_client::admin::{AdminClient, AdminError};
use interop_client::{text_envelope, ClientError, Receiver, SendOutcome, Sender};
use interop_e2e::{connect_service, registry, wait_listening, HOME_TOKEN};
use interop_test_support::{NatsServer, RedisServer};

use crate::common::poll;

const ADMIN_TOKEN: &str = "admin-test-token-0123456789";

struct Edge {
    ingest: String,
    delivery: String,
    admin: AdminClient,
    admin_url: String,
    shutdown: CancellationToken,
}

async fn start(nats: &NatsServer, redis: &RedisServer) -> Edge {
    let shutdown = CancellationToken::new();
    let seed = Arc::new(registry());
    let ingest_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let delivery_l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (ingest_a, admin_a, delivery_a) = (
        ingest_l.local_addr().unwrap(),
        admin_l.local_addr().unwrap(),
        delivery_l.local_addr().unwrap(),
    );
    let mut config = interop_ingest::Config::new(ingest_l, seed.clone());
    config.admin_api = Some(interop_ingest::admin::AdminApi::new(admin_l, ADMIN_TOKEN));
    let d = connect_service(&nats.url(), &redis.url(), "ingest").await;
    let s = shutdown.clone();
    tokio::spawn(async move { interop_ingest::run(config, d, s).await });
    let d = connect_service(&nats.url(), &redis.url(), "delivery").await;
    let s = shutdown.clone();
    let config = interop_delivery::Config::new(delivery_l, seed);
    tokio::spawn(async move { interop_delivery::run(config, d, s).await });
    for a in [ingest_a, admin_a, delivery_a] {
        wait_listening(&a.to_string()).await;
    }
    Edge {
        ingest: format!("ws://{ingest_a}/v1/ws"),
        delivery: format!("ws://{delivery_a}/v1/ws"),
        admin: AdminClient::new(&format!("http://{admin_a}"), ADMIN_TOKEN).unwrap(),
        admin_url: format!("http://{admin_a}"),
        shutdown,
    }
}

/// Reads until the gateway closes the connection; returns the close reason.
async fn closed_reason(rx: &mut Receiver) -> String {
    match tokio::time::timeout(Duration::from_secs(5), rx.next()).await {
        Ok(Err(ClientError::Closed(reason))) => reason.unwrap_or_default(),
        other => panic!("expected a close within 5 s, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_both_tokens_until_revocation_closes_the_old_ones_connections() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let edge = start(&nats, &redis).await;

    // The admin API refuses a wrong token.
    let wrong = AdminClient::new(&edge.admin_url, "not-the-admin-token").unwrap();
    assert!(matches!(
        wrong.call("GET", "/admin/v1/providers", None).await,
        Err(AdminError::Refused { status: 401, .. })
    ));

    // Add a provider: its first token works.
    let added = edge
        .admin
        .call(
            "POST",
            "/admin/v1/providers",
            Some(&json!({"id": "matrix", "display_name": "Matrix", "encryption": "e2ee"})),
        )
        .await
        .unwrap();
    let old_token = added["token"].as_str().unwrap().to_owned();
    let old_cred = added["credential_id"].as_str().unwrap().to_owned();
    assert_eq!(added["provider"]["credentials"], json!([old_cred]));
    let again = edge
        .admin
        .call(
            "POST",
            "/admin/v1/providers",
            Some(&json!({"id": "matrix", "display_name": "M", "encryption": "e2ee"})),
        )
        .await;
    assert!(
        matches!(again, Err(AdminError::Refused { status: 409, .. })),
        "{again:?}"
    );

    let home = Sender::connect(&edge.ingest, "home", HOME_TOKEN)
        .await
        .unwrap();
    home.set_consent("home:+4915112345678", true, &["matrix"])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let old_conn = loop {
        match Sender::connect(&edge.ingest, "matrix", &old_token).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "new provider never usable: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut old_session =
        Receiver::connect(&edge.delivery, "matrix", &old_token, "matrix:neo", "d")
            .await
            .unwrap();

    // Rotate: the new token works and so does the old one.
    let rotated = edge
        .admin
        .call("POST", "/admin/v1/providers/matrix/credentials", None)
        .await
        .unwrap();
    let new_token = rotated["token"].as_str().unwrap().to_owned();
    let new_conn = poll("the new token accepted", Duration::from_secs(5), || async {
        Sender::connect(&edge.ingest, "matrix", &new_token)
            .await
            .ok()
    })
    .await;
    Sender::connect(&edge.ingest, "matrix", &old_token)
        .await
        .unwrap();
    let out = old_conn
        .send(text_envelope(
            "before-revoke",
            "matrix:neo",
            "home:+4915112345678",
            "hi",
        ))
        .await
        .unwrap();
    assert!(matches!(out, SendOutcome::Accepted(_)), "{out:?}");
    let listed = edge
        .admin
        .call("GET", "/admin/v1/providers", None)
        .await
        .unwrap();
    let matrix = listed["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "matrix")
        .unwrap()
        .clone();
    assert_eq!(matrix["credentials"].as_array().unwrap().len(), 2);
    assert!(
        !listed.to_string().contains(&old_token),
        "tokens are never listed"
    );

    // Revoke the old credential: its open connections close within 5 s, on
    // ingest and on delivery; the new token's connection stays.
    let started = tokio::time::Instant::now();
    edge.admin
        .call(
            "DELETE",
            &format!("/admin/v1/providers/matrix/credentials/{old_cred}"),
            None,
        )
        .await
        .unwrap();
    let reason = closed_reason(&mut old_session).await;
    assert!(reason.contains("credential revoked"), "{reason}");
    let err = loop {
        match old_conn
            .send(text_envelope(
                "after-revoke",
                "matrix:neo",
                "home:+4915112345678",
                "hi",
            ))
            .await
        {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "old connection still served"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(
        err.to_string().contains("credential revoked") || matches!(err, ClientError::Closed(_)),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        Sender::connect(&edge.ingest, "matrix", &old_token).await,
        Err(ClientError::HelloRefused(_))
    ));
    let out = new_conn
        .send(text_envelope(
            "new-token",
            "matrix:neo",
            "home:+4915112345678",
            "hi",
        ))
        .await
        .unwrap();
    assert!(matches!(out, SendOutcome::Accepted(_)), "{out:?}");

    // Revoking an unknown credential is a typed 404; removing the provider
    // closes the rest.
    let unknown = edge
        .admin
        .call(
            "DELETE",
            "/admin/v1/providers/matrix/credentials/000000000000",
            None,
        )
        .await;
    assert!(
        matches!(unknown, Err(AdminError::Refused { status: 404, .. })),
        "{unknown:?}"
    );
    edge.admin
        .call("DELETE", "/admin/v1/providers/matrix", None)
        .await
        .unwrap();
    poll(
        "a removed provider refused",
        Duration::from_secs(5),
        || async {
            Sender::connect(&edge.ingest, "matrix", &new_token)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    edge.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_and_client_certificates_are_set_on_add_and_changed_later() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let edge = start(&nats, &redis).await;
    let (cert_a, cert_b) = ("ab".repeat(32), "cd".repeat(32));

    // Set on add; shown by list.
    let added = edge
        .admin
        .call(
            "POST",
            "/admin/v1/providers",
            Some(
                &json!({"id": "matrix", "display_name": "Matrix", "encryption": "e2ee",
                "capabilities": {"content": ["text", "media"], "media_formats": ["image/jpeg"]},
                "client_cert_sha256": [cert_a.to_uppercase()]}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        added["provider"]["capabilities"],
        json!({"content": ["text", "media"], "media_formats": ["image/jpeg"]})
    );
    assert_eq!(added["provider"]["client_cert_sha256"], json!([cert_a]));
    assert_eq!(added["provider"]["require_client_cert"], json!(false));
    let matrix = |list: &serde_json::Value| {
        list["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == "matrix")
            .cloned()
            .unwrap()
    };
    let listed = matrix(
        &edge
            .admin
            .call("GET", "/admin/v1/providers", None)
            .await
            .unwrap(),
    );
    assert_eq!(listed["capabilities"]["content"], json!(["text", "media"]));
    // A provider added without capabilities gets the first version's kinds.
    let plain = edge
        .admin
        .call(
            "POST",
            "/admin/v1/providers",
            Some(&json!({"id": "xmpp", "display_name": "XMPP", "encryption": "transport-only"})),
        )
        .await
        .unwrap();
    assert_eq!(
        plain["provider"]["capabilities"]["content"]
            .as_array()
            .unwrap()
            .len(),
        interop_providers::ContentKind::DEFAULT.len()
    );

    // Changed later: the record (what every replica watches) follows.
    let changed = edge
        .admin
        .call(
            "PUT",
            "/admin/v1/providers/matrix/capabilities",
            Some(&json!({"content": ["text", "reaction", "read-receipt"]})),
        )
        .await
        .unwrap();
    assert_eq!(
        changed["provider"]["capabilities"],
        json!({"content": ["text", "reaction", "read-receipt"], "media_formats": []})
    );
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let record = interop_providers::store::RegistryStore::new(js.clone())
        .get("matrix")
        .await
        .unwrap()
        .unwrap();
    assert!(record
        .capabilities
        .supports(interop_providers::ContentKind::Reaction));
    assert!(!record
        .capabilities
        .supports(interop_providers::ContentKind::Media));
    // Unknown kinds and fields are refused, typed; unknown providers too.
    for body in [json!({"content": ["hologram"]}), json!({"colour": "red"})] {
        let r = edge
            .admin
            .call(
                "PUT",
                "/admin/v1/providers/matrix/capabilities",
                Some(&body),
            )
            .await;
        assert!(
            matches!(r, Err(AdminError::Refused { status: 400, ref code, .. }) if code == "INVALID"),
            "{r:?}"
        );
    }
    let r = edge
        .admin
        .call(
            "PUT",
            "/admin/v1/providers/nobody/capabilities",
            Some(&json!({})),
        )
        .await;
    assert!(
        matches!(r, Err(AdminError::Refused { status: 404, .. })),
        "{r:?}"
    );

    // Client certificates: replaced, required; one certificate cannot serve
    // two providers; requiring one without any is refused.
    let certs = edge
        .admin
        .call(
            "PUT",
            "/admin/v1/providers/matrix/client-certs",
            Some(&json!({"client_cert_sha256": [cert_b], "require_client_cert": true})),
        )
        .await
        .unwrap();
    assert_eq!(certs["provider"]["client_cert_sha256"], json!([cert_b]));
    assert_eq!(certs["provider"]["require_client_cert"], json!(true));
    assert!(certs["provider"]["credentials"]
        .as_array()
        .unwrap()
        .contains(&json!(interop_providers::cert_credential_id(&cert_b))));
    let r = edge
        .admin
        .call(
            "PUT",
            "/admin/v1/providers/xmpp/client-certs",
            Some(&json!({"client_cert_sha256": [cert_b]})),
        )
        .await;
    assert!(
        matches!(r, Err(AdminError::Refused { status: 409, .. })),
        "{r:?}"
    );
    let r = edge
        .admin
        .call(
            "PUT",
            "/admin/v1/providers/xmpp/client-certs",
            Some(&json!({"client_cert_sha256": [], "require_client_cert": true})),
        )
        .await;
    assert!(
        matches!(r, Err(AdminError::Refused { status: 400, .. })),
        "{r:?}"
    );
    let r = edge
        .admin
        .call(
            "PUT",
            "/admin/v1/providers/xmpp/client-certs",
            Some(&json!({"client_cert_sha256": ["abc"]})),
        )
        .await;
    assert!(
        matches!(r, Err(AdminError::Refused { status: 400, .. })),
        "{r:?}"
    );
    edge.shutdown.cancel();
}
