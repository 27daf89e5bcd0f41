//! Two directory instances on a 3-node NATS cluster with replicated
//! streams: epochs keep one history across the log stream's leader being
//! killed, and the audit of the whole history passes.

use std::time::Duration;

use interop_keys::KeyDirectory;
use interop_proto::keys::SIGNATURE_BYTES;
use interop_proto::v1::{DeviceKeys, PublicKey, PublishKeys};
use interop_test_support::NatsCluster;
use interop_transparency::{audit, Transparency, VrfKey};

fn publish(user: &str, identity: u8) -> PublishKeys {
    let key = |fill: u8| PublicKey {
        algorithm: "curve25519".into(),
        key_id: 0,
        key: vec![fill; 32].into(),
        signature: Default::default(),
    };
    PublishKeys {
        user: user.into(),
        device: Some(DeviceKeys {
            device_id: "phone".into(),
            identity_key: Some(key(identity)),
            signing_key: None,
            signed_prekey: Some(PublicKey {
                signature: vec![9; SIGNATURE_BYTES].into(),
                ..key(2)
            }),
            last_resort_prekey: Some(key(3)),
            pq_last_resort_prekey: None,
            last_resort_key_package: vec![7; 100].into(),
        }),
        one_time_prekeys: vec![],
        key_packages: vec![],
    }
}

/// Retries `f` while the cluster elects (a request may fail meanwhile).
/// Two minutes: a read whose ephemeral consumer sat on the stopped node
/// waits 10 s before it is tried again, and nats-server goes on placing
/// them there until the cluster notices the node is gone (several tries in
/// one run beside other tests on two cores).
async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match f().await {
            Ok(t) => return t,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never recovered: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_keep_one_history_across_instances_and_a_log_leader_killed() {
    let mut cluster = NatsCluster::start(3);
    let client = interop_bus::connect(&cluster.urls(), "kt-test")
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let settings = interop_bus::StreamSettings {
        replicas: 3,
        ..Default::default()
    };
    retry(|| interop_bus::ensure_streams(&js, &settings)).await;
    let keys = retry(|| KeyDirectory::open(js.clone())).await;
    let a = retry(|| Transparency::open(js.clone(), VrfKey::from_bytes([7; 32]))).await;
    let b = retry(|| Transparency::open(js.clone(), VrfKey::from_bytes([7; 32]))).await;
    for round in 0..6u8 {
        if round == 3 {
            // Kill the node leading the log stream.
            let mut s = js
                .get_stream(interop_bus::subjects::STREAM_KT_LOG)
                .await
                .unwrap();
            let leader = s
                .info()
                .await
                .unwrap()
                .cluster
                .clone()
                .unwrap()
                .leader
                .unwrap();
            let i = (0..cluster.len())
                .find(|i| cluster.name(*i) == leader)
                .unwrap();
            cluster.stop_node(i);
        }
        let user = format!("home:+4915100000{round:03}");
        let p = publish(&user, round + 1);
        retry(|| keys.publish(&user, &p)).await;
        // The two instances take turns; the one that is stale reloads.
        let kt = if round % 2 == 0 { &a } else { &b };
        // (An epoch whose commit was stored but whose ack was lost in the
        // election is found on the retry's reload: nothing to publish.)
        retry(|| kt.publish_epoch()).await;
    }
    let report = retry(|| audit(&js, 1, 6)).await;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.verified, [2, 3, 4, 5, 6]);
    // A new instance replays one history: epochs 1 to 6, once each.
    let c = retry(|| Transparency::open(js.clone(), VrfKey::from_bytes([7; 32]))).await;
    let epochs: Vec<u64> = c.epochs().await.iter().map(|m| m.epoch).collect();
    assert_eq!(epochs, [1, 2, 3, 4, 5, 6]);
}
