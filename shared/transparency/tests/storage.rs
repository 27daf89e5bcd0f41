//! The directory's storage against a real nats-server: what one instance
//! commits, a new instance replays to the same root hash and proofs; two
//! writers cannot fork the history, not even through a server that lets
//! two compare-and-set commits through; a batch never committed is ignored.

use akd::ecvrf::HardCodedAkdVRF;
use akd::storage::StorageManager;
use akd::{AkdLabel, AkdValue, AzksParallelismConfig, Directory};
use interop_test_support::NatsServer;
use interop_transparency::{storage::STALE, Config, JetStreamDatabase};

type Dir = Directory<Config, JetStreamDatabase, HardCodedAkdVRF>;

async fn js(nats: &NatsServer) -> async_nats::jetstream::Context {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    interop_bus::ensure_streams(&js, &interop_bus::StreamSettings::default())
        .await
        .unwrap();
    js
}

async fn directory(js: &async_nats::jetstream::Context) -> Dir {
    let db = JetStreamDatabase::open(js.clone()).await.unwrap();
    Directory::new(
        StorageManager::new_no_cache(db),
        HardCodedAkdVRF {},
        AzksParallelismConfig::default(),
    )
    .await
    .unwrap()
}

fn update(user: &str, key: &str) -> (AkdLabel, AkdValue) {
    (AkdLabel::from(user), AkdValue::from(key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_replays_the_log_to_the_same_root_and_proofs() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let first = directory(&js).await;
    first
        .publish(vec![update("home:+1", "k1"), update("signal:a", "k2")])
        .await
        .unwrap();
    first
        .publish(vec![update("home:+1", "k1-rotated")])
        .await
        .unwrap();
    // A large epoch: several chunks.
    let many: Vec<_> = (0..3_000)
        .map(|i| update(&format!("telegram:u{i}"), &format!("key-{i}")))
        .collect();
    let root = first.publish(many).await.unwrap();
    assert_eq!(root.epoch(), 3);

    let second = directory(&js).await;
    let replayed = second.get_epoch_hash().await.unwrap();
    assert_eq!((replayed.0, replayed.1), (root.0, root.1));
    // A lookup proof from the replayed instance verifies against the root
    // the first one committed.
    let (proof, hash) = second.lookup(AkdLabel::from("home:+1")).await.unwrap();
    let vrf_key = second.get_public_key().await.unwrap();
    let result = akd::client::lookup_verify::<Config>(
        vrf_key.as_bytes(),
        root.1,
        hash.epoch(),
        AkdLabel::from("home:+1"),
        proof,
    )
    .unwrap();
    assert_eq!(result.value, AkdValue::from("k1-rotated"));
    assert_eq!(result.version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_cannot_fork_the_history() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let a = directory(&js).await;
    a.publish(vec![update("home:+1", "k1")]).await.unwrap();
    let b = directory(&js).await;
    b.publish(vec![update("home:+2", "k2")]).await.unwrap();
    // A has not seen B's epoch: its commit is refused.
    let e = a.publish(vec![update("home:+3", "k3")]).await.unwrap_err();
    assert!(e.to_string().contains(STALE), "{e}");
    // Reopened, it continues B's history.
    let a = directory(&js).await;
    let root = a.publish(vec![update("home:+3", "k3")]).await.unwrap();
    assert_eq!(root.epoch(), 3);
    let c = directory(&js).await;
    assert_eq!(c.get_epoch_hash().await.unwrap().1, root.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_applies_what_another_instance_commits() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let writer = directory(&js).await;
    writer.publish(vec![update("home:+1", "k1")]).await.unwrap();
    let db = JetStreamDatabase::open(js.clone()).await.unwrap();
    let _follow = db.follow().await.unwrap();
    let reader: Dir = Directory::new(
        StorageManager::new_no_cache(db),
        HardCodedAkdVRF {},
        AzksParallelismConfig::default(),
    )
    .await
    .unwrap();
    let root = writer.publish(vec![update("home:+2", "k2")]).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while reader.get_epoch_hash().await.unwrap().0 < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follower never caught up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(reader.get_epoch_hash().await.unwrap().1, root.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_of_a_batch_never_committed_are_ignored() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let first = directory(&js).await;
    let root = first.publish(vec![update("home:+1", "k1")]).await.unwrap();
    // A writer that stopped after a chunk and before its commit.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Interop-Kt-Batch", "abandoned");
    headers.insert("Interop-Kt-Part", "0");
    js.publish_with_headers(
        interop_bus::subjects::KT_LOG_CHUNK,
        headers,
        bytes::Bytes::from_static(b"\0\0\0\x01\xff"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let second = directory(&js).await;
    assert_eq!(second.get_epoch_hash().await.unwrap().1, root.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_the_server_accepted_on_a_superseded_predecessor_is_skipped() {
    use interop_bus::subjects::{KT_LOG_CHUNK, KT_LOG_COMMIT, STREAM_KT_LOG};
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let a = directory(&js).await;
    a.publish(vec![update("home:+1", "k1")]).await.unwrap();
    let log = js.get_stream(STREAM_KT_LOG).await.unwrap();
    let first = log
        .get_last_raw_message_by_subject(KT_LOG_COMMIT)
        .await
        .unwrap()
        .sequence;
    // B read the log at epoch 1; A commits epoch 2 first.
    let b = directory(&js).await;
    let root = a.publish(vec![update("home:+2", "k2")]).await.unwrap();
    // B's epoch 2 is refused (a single server checks in order), but its
    // chunks are in the log: commit them as a server that let the second
    // compare-and-set through would have (nats-io/nats-server#4320),
    // naming the same predecessor as A's commit.
    assert!(b
        .publish(vec![update("home:+3", "k3")])
        .await
        .unwrap_err()
        .to_string()
        .contains(STALE));
    let chunk = log
        .get_last_raw_message_by_subject(KT_LOG_CHUNK)
        .await
        .unwrap();
    let batch = chunk.headers.get("Interop-Kt-Batch").unwrap().to_string();
    let parts = chunk
        .headers
        .get("Interop-Kt-Part")
        .unwrap()
        .as_str()
        .parse::<u32>()
        .unwrap()
        + 1;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Interop-Kt-Batch", batch.as_str());
    headers.insert("Interop-Kt-Part", parts.to_string().as_str());
    headers.insert("Interop-Kt-After", first.to_string().as_str());
    js.publish_with_headers(KT_LOG_COMMIT, headers, bytes::Bytes::new())
        .await
        .unwrap()
        .await
        .unwrap();
    // Every reader replays A's history, without B's batch.
    let c = directory(&js).await;
    let replayed = c.get_epoch_hash().await.unwrap();
    assert_eq!((replayed.0, replayed.1), (root.0, root.1));
    let (proof, hash) = c.lookup(AkdLabel::from("home:+2")).await.unwrap();
    let vrf_key = c.get_public_key().await.unwrap();
    akd::client::lookup_verify::<Config>(
        vrf_key.as_bytes(),
        root.1,
        hash.epoch(),
        AkdLabel::from("home:+2"),
        proof,
    )
    .unwrap();
    assert!(c.lookup(AkdLabel::from("home:+3")).await.is_err());
    // The history goes on after the skipped commit.
    let next = c.publish(vec![update("home:+3", "k3")]).await.unwrap();
    assert_eq!(next.epoch(), 3);
    let d = directory(&js).await;
    assert_eq!(d.get_epoch_hash().await.unwrap().1, next.1);
}
