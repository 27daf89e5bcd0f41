//! The key directory on a real nats-server: every one-time prekey is handed
//! out once, also to 1,000 fetches at once through two directory instances
//! (as two ingest replicas would be); a replayed publish stores nothing;
//! every limit holds at its edge.

use std::collections::HashSet;

use interop_keys::{KeyDirectory, KeysError, LowPool, Pool, PoolCounts};
use interop_proto::keys::{
    MAX_DEVICES_PER_USER, MAX_ONE_TIME_PREKEYS_PER_DEVICE, MAX_ONE_TIME_PREKEYS_PER_PUBLISH,
    SIGNATURE_BYTES,
};
use interop_proto::v1::{DeviceKeys, PublicKey, PublishKeys, RejectCode};
use interop_test_support::NatsServer;

const BOB: &str = "home:+4915112345678";

fn key(fill: u8) -> PublicKey {
    PublicKey {
        algorithm: "curve25519".into(),
        key_id: 0,
        key: vec![fill; 32].into(),
        signature: Default::default(),
    }
}

fn device(id: &str) -> DeviceKeys {
    DeviceKeys {
        device_id: id.into(),
        identity_key: Some(key(1)),
        signing_key: None,
        signed_prekey: Some(PublicKey {
            signature: vec![9; SIGNATURE_BYTES].into(),
            ..key(2)
        }),
        last_resort_prekey: Some(key(3)),
        pq_last_resort_prekey: None,
        last_resort_key_package: vec![7; 100].into(),
    }
}

/// A publish for `device_id` with one-time prekeys `ids` (each key's bytes
/// carry its id, so a claimed key tells which it was).
fn publish(device_id: &str, ids: std::ops::RangeInclusive<u32>) -> PublishKeys {
    PublishKeys {
        user: BOB.into(),
        device: Some(device(device_id)),
        one_time_prekeys: ids
            .map(|id| {
                let mut k = key(0);
                k.key_id = id;
                k.key = {
                    let mut b = vec![0u8; 32];
                    b[..4].copy_from_slice(&id.to_be_bytes());
                    b.into()
                };
                k
            })
            .collect(),
        key_packages: vec![],
    }
}

async fn directory(nats: &NatsServer) -> KeyDirectory {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    interop_bus::ensure_streams(&js, &interop_bus::StreamSettings::default())
        .await
        .unwrap();
    KeyDirectory::open(js).await.unwrap()
}

fn code(e: KeysError) -> RejectCode {
    match e {
        KeysError::Rejected(r) => r.code,
        KeysError::Unavailable(e) => panic!("unavailable: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_one_time_prekey_goes_to_one_fetcher_then_the_last_resort_key() {
    let nats = NatsServer::start();
    let dir = directory(&nats).await;
    let counts = dir.publish(BOB, &publish("phone", 1..=3)).await.unwrap();
    assert_eq!(counts.one_time_prekeys, 3);
    let mut seen = Vec::new();
    for left in [2, 1, 0] {
        let f = dir.fetch_bundles(BOB, &[]).await.unwrap();
        assert_eq!(f.items.len(), 1);
        seen.push(f.items[0].one_time_prekey.clone().unwrap().key_id);
        // Three keys are fewer than LOW_ONE_TIME_PREKEYS: each claim
        // reports the pool low, with what is left.
        assert_eq!(
            f.low,
            vec![LowPool {
                device_id: "phone".into(),
                pool: Pool::OneTimePrekeys,
                left,
                generation: 3,
            }]
        );
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![1, 2, 3]);
    // Empty pool: the bundle has no one-time prekey; the app uses the
    // last-resort prekey it carries.
    let f = dir.fetch_bundles(BOB, &[]).await.unwrap();
    assert_eq!(f.low.len(), 1);
    assert_eq!(f.low[0].left, 0);
    let b = f.items;
    assert!(b[0].one_time_prekey.is_none());
    assert_eq!(
        b[0].device.as_ref().unwrap().last_resort_prekey,
        Some(key(3))
    );
    assert_eq!(
        dir.pool_counts(BOB, "phone").await.unwrap(),
        PoolCounts::default()
    );
    // A user nobody published for has no devices, and a named device that
    // does not exist is refused.
    assert!(dir
        .fetch_bundles("home:+4915100000000", &[])
        .await
        .unwrap()
        .items
        .is_empty());
    let e = dir
        .fetch_bundles(BOB, &["tablet".into()])
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::UnknownDevice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_fetches_through_two_replicas_never_share_a_key() {
    let nats = NatsServer::start();
    let (a, b) = (directory(&nats).await, directory(&nats).await);
    // 300 keys in three publishes (at most 100 each).
    for (i, ids) in [1..=100, 101..=200, 201..=300].into_iter().enumerate() {
        let dir = if i % 2 == 0 { &a } else { &b };
        dir.publish(BOB, &publish("phone", ids)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let dir = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let bundles = dir.fetch_bundles(BOB, &[]).await.unwrap().items;
            bundles[0].one_time_prekey.as_ref().map(|k| k.key_id)
        }));
    }
    let mut claimed = Vec::new();
    let mut last_resort = 0;
    for t in tasks {
        match t.await.unwrap() {
            Some(id) => claimed.push(id),
            None => last_resort += 1,
        }
    }
    let unique: HashSet<u32> = claimed.iter().copied().collect();
    assert_eq!(
        unique.len(),
        claimed.len(),
        "a one-time prekey was handed out twice"
    );
    assert_eq!(
        claimed.len(),
        300,
        "every key is handed out before the last resort"
    );
    assert_eq!(last_resort, 700);
    assert_eq!(dir_counts(&a).await, 0);
}

async fn dir_counts(dir: &KeyDirectory) -> u32 {
    dir.pool_counts(BOB, "phone")
        .await
        .unwrap()
        .one_time_prekeys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_publish_stores_nothing_and_limits_hold_at_their_edges() {
    let nats = NatsServer::start();
    let dir = directory(&nats).await;
    dir.publish(BOB, &publish("phone", 1..=10)).await.unwrap();
    // The same publish again (a replay), or one reusing an id: refused.
    for replay in [publish("phone", 1..=10), publish("phone", 10..=12)] {
        assert_eq!(
            code(dir.publish(BOB, &replay).await.unwrap_err()),
            RejectCode::KeyIdReused
        );
    }
    assert_eq!(dir_counts(&dir).await, 10);
    // The pool fills to exactly its limit, and not one key further.
    let per = MAX_ONE_TIME_PREKEYS_PER_PUBLISH as u32;
    let mut next = 11;
    let room = MAX_ONE_TIME_PREKEYS_PER_DEVICE as u32 - 10;
    while next + per - 1 <= 10 + room {
        dir.publish(BOB, &publish("phone", next..=next + per - 1))
            .await
            .unwrap();
        next += per;
    }
    if next <= 10 + room {
        dir.publish(BOB, &publish("phone", next..=10 + room))
            .await
            .unwrap();
        next = 11 + room;
    }
    assert_eq!(
        dir_counts(&dir).await as usize,
        MAX_ONE_TIME_PREKEYS_PER_DEVICE
    );
    let e = dir
        .publish(BOB, &publish("phone", next..=next))
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::TooManyKeys);
    assert_eq!(
        dir_counts(&dir).await as usize,
        MAX_ONE_TIME_PREKEYS_PER_DEVICE
    );
    // A user has at most MAX_DEVICES_PER_USER devices.
    for i in 1..MAX_DEVICES_PER_USER {
        dir.publish(BOB, &publish(&format!("d{i}"), 1..=1))
            .await
            .unwrap();
    }
    assert_eq!(dir.devices(BOB).await.unwrap().len(), MAX_DEVICES_PER_USER);
    let e = dir
        .publish(BOB, &publish("one-too-many", 1..=1))
        .await
        .unwrap_err();
    assert_eq!(code(e), RejectCode::TooManyKeys);
    // Replacing a device's keys is not a new device.
    dir.publish(BOB, &publish("d1", 2..=2)).await.unwrap();
    // Removing a device removes its unclaimed keys.
    let left = dir.remove_device(BOB, "phone").await.unwrap();
    assert_eq!(left.len(), MAX_DEVICES_PER_USER - 1);
    assert_eq!(dir_counts(&dir).await, 0);
    let e = dir.remove_device(BOB, "phone").await.unwrap_err();
    assert_eq!(code(e), RejectCode::UnknownDevice);
    // Erasure leaves nothing.
    dir.erase_user(BOB).await.unwrap();
    assert!(dir.devices(BOB).await.unwrap().is_empty());
    assert_eq!(
        dir.pool_counts(BOB, "d1").await.unwrap(),
        PoolCounts::default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_are_claimed_once_then_the_last_resort_one() {
    let nats = NatsServer::start();
    let dir = directory(&nats).await;
    let mut p = publish("phone", 1..=1);
    p.key_packages = vec![vec![1; 300].into(), vec![2; 300].into()];
    let counts = dir.publish(BOB, &p).await.unwrap();
    assert_eq!(counts.key_packages, 2);
    let mut got = Vec::new();
    for _ in 0..3 {
        let fetched = dir.fetch_key_packages(BOB).await.unwrap();
        assert_eq!(fetched.low.len(), 1, "two KeyPackages are a low pool");
        let kps = fetched.items;
        assert_eq!(kps.len(), 1);
        got.push((kps[0].key_package[0], kps[0].last_resort));
    }
    got[..2].sort_unstable();
    assert_eq!(got, vec![(1, false), (2, false), (7, true)]);
}

/// Fetches `n` bundles of BOB's "phone" at once, spread over `dirs`; the
/// one-time prekey ids handed out and how many got the last-resort key.
async fn storm(dirs: &[KeyDirectory], n: usize) -> (Vec<u32>, usize) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let dir = dirs[i % dirs.len()].clone();
        tasks.push(tokio::spawn(async move {
            let f = dir.fetch_bundles(BOB, &[]).await.unwrap();
            let key = f.items[0].one_time_prekey.as_ref().map(|k| k.key_id);
            if key.is_none() {
                // An empty pool is reported, without a count.
                assert_eq!(f.low.len(), 1);
                assert_eq!(f.low[0].left, 0);
            }
            key
        }));
    }
    let (mut claimed, mut last_resort) = (Vec::new(), 0);
    for t in tasks {
        match t.await.unwrap() {
            Some(id) => claimed.push(id),
            None => last_resort += 1,
        }
    }
    (claimed, last_resort)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_claims_take_every_key_in_order_before_the_last_resort_one() {
    // The reverted random-start claim (ADR 25) fell back to the last-resort
    // key 3 times in 200 sequential claims while keys were left.
    let nats = NatsServer::start();
    let dir = directory(&nats).await;
    for first in [1, 101] {
        dir.publish(BOB, &publish("phone", first..=first + 99))
            .await
            .unwrap();
    }
    for expected in 1..=200 {
        let f = dir.fetch_bundles(BOB, &[]).await.unwrap();
        let got = f.items[0].one_time_prekey.as_ref().map(|k| k.key_id);
        assert_eq!(got, Some(expected));
    }
    let f = dir.fetch_bundles(BOB, &[]).await.unwrap();
    assert!(f.items[0].one_time_prekey.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_through_four_replicas_never_give_up_while_keys_are_left() {
    // More fetches than keys, through four instances (each coalescing its
    // own claims into batches that race the other three): every key goes
    // to exactly one fetch, and a fetch gets the last-resort key only once
    // all are gone. Keys published during the storm are claimed too.
    let nats = NatsServer::start();
    let mut dirs = Vec::new();
    for _ in 0..4 {
        dirs.push(directory(&nats).await);
    }
    for first in [1, 101, 201, 301] {
        dirs[0]
            .publish(BOB, &publish("phone", first..=first + 99))
            .await
            .unwrap();
    }
    let top_up = {
        let dir = dirs[1].clone();
        tokio::spawn(async move { dir.publish(BOB, &publish("phone", 401..=500)).await })
    };
    let (claimed, _) = storm(&dirs, 450).await;
    top_up.await.unwrap().unwrap();
    let (more, last_resort) = storm(&dirs, 150).await;
    let all: Vec<u32> = claimed.into_iter().chain(more).collect();
    let unique: HashSet<u32> = all.iter().copied().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "a one-time prekey was handed out twice"
    );
    assert_eq!(
        all.len(),
        500,
        "every key is handed out before the last resort"
    );
    assert_eq!(last_resort, 100);
    assert_eq!(dir_counts(&dirs[0]).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_hand_out_each_key_once_across_a_stream_leader_change() {
    // Three nodes, the streams replicated on all; two instances on different
    // nodes claim while the pool stream's leader is stopped. A claim may
    // fail as unavailable during the election (the caller retries), and a
    // key whose purge answer was lost is never handed out: no key twice.
    let mut cluster = interop_test_support::NatsCluster::start(3);
    let settings = interop_bus::StreamSettings {
        replicas: 3,
        ..Default::default()
    };
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let client = interop_bus::connect(&cluster.urls(), "keys-test")
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        interop_bus::ensure_streams(&js, &settings).await.unwrap();
        dirs.push(KeyDirectory::open(js).await.unwrap());
    }
    for first in [1, 101, 201] {
        dirs[0]
            .publish(BOB, &publish("phone", first..=first + 99))
            .await
            .unwrap();
    }
    let client = interop_bus::connect(&cluster.urls(), "keys-test")
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let mut pool = js
        .get_stream(interop_bus::subjects::STREAM_KEYS_POOL)
        .await
        .unwrap();
    let leader = pool
        .info()
        .await
        .unwrap()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .unwrap();
    let leader = (0..cluster.len())
        .find(|&i| cluster.name(i) == leader)
        .unwrap();
    let fetch = |dir: KeyDirectory| async move {
        // Retried while unavailable, as a provider would.
        for _ in 0..100 {
            match dir.fetch_bundles(BOB, &[]).await {
                Ok(f) => return f.items[0].one_time_prekey.as_ref().map(|k| k.key_id),
                Err(KeysError::Unavailable(_)) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("the directory stayed unavailable");
    };
    let mut tasks = Vec::new();
    for i in 0..200 {
        let dir = dirs[i % 2].clone();
        tasks.push(tokio::spawn(fetch(dir)));
        if i == 50 {
            cluster.stop_node(leader);
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let mut claimed = Vec::new();
    for t in tasks {
        claimed.extend(t.await.unwrap());
    }
    let unique: HashSet<u32> = claimed.iter().copied().collect();
    assert_eq!(
        unique.len(),
        claimed.len(),
        "a one-time prekey was handed out twice"
    );
    cluster.restart_node(leader);
    // What is left is claimed once too, and nothing beyond a lost purge
    // answer (at most one batch per instance) is missing.
    let mut rest = Vec::new();
    while let Some(id) = fetch(dirs[0].clone()).await {
        rest.push(id);
    }
    let all: HashSet<u32> = claimed.iter().chain(&rest).copied().collect();
    assert_eq!(
        all.len(),
        claimed.len() + rest.len(),
        "a one-time prekey was handed out twice"
    );
    assert!(
        all.len() >= 300 - 2 * 32,
        "{} of 300 keys handed out",
        all.len()
    );
}

/// Fetches through `dir` until `ok` holds for what it returns, for at most
/// `within`; whether it did.
async fn fetched_within(
    dir: &KeyDirectory,
    within: std::time::Duration,
    ok: impl Fn(&[interop_proto::v1::Bundle]) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if ok(&dir.fetch_bundles(BOB, &[]).await.unwrap().items) {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_reaches_the_others_cached_devices_at_once() {
    // Each instance keeps the devices its fetches read for up to
    // DEVICE_CACHE_TTL; a write through another instance drops that copy
    // when its notification arrives, well before the TTL would.
    let nats = NatsServer::start();
    let (a, b) = (directory(&nats).await, directory(&nats).await);
    a.publish(BOB, &publish("phone", 1..=50)).await.unwrap();
    a.publish(BOB, &publish("laptop", 1..=50)).await.unwrap();
    let soon = interop_keys::DEVICE_CACHE_TTL / 2;
    assert_eq!(b.fetch_bundles(BOB, &[]).await.unwrap().items.len(), 2);
    // A new identity key for the phone.
    let mut p = publish("phone", 51..=51);
    p.device.as_mut().unwrap().identity_key = Some(key(42));
    a.publish(BOB, &p).await.unwrap();
    assert!(
        fetched_within(&b, soon, |items| items.iter().any(|d| {
            let d = d.device.as_ref().unwrap();
            d.device_id == "phone" && d.identity_key == Some(key(42))
        }))
        .await,
        "the changed identity key was not served"
    );
    assert!(b
        .fetch_bundles(BOB, &[])
        .await
        .unwrap()
        .items
        .iter()
        .all(|d| {
            let d = d.device.as_ref().unwrap();
            d.device_id != "phone" || d.identity_key == Some(key(42))
        }));
    // A removed device.
    a.remove_device(BOB, "laptop").await.unwrap();
    assert!(
        fetched_within(&b, soon, |items| items.len() == 1).await,
        "the removed device was still served"
    );
    // An erased user.
    a.erase_user(BOB).await.unwrap();
    assert!(
        fetched_within(&b, soon, |items| items.is_empty()).await,
        "the erased user's devices were still served"
    );
    assert!(b.devices(BOB).await.unwrap().is_empty());
}
