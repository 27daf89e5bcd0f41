//! Key transparency's figures (issue 21's targets: an epoch of 10,000
//! updates in under 5 s; at least 2,000 verified lookups a second), on a
//! nats-server of its own:
//!
//! ```sh
//! cargo run --release -p interop-transparency --example kt_bench [users]
//! ```
//!
//! Prints the time of an epoch that adds the users, of one that rotates
//! every user's key, lookup proofs generated and verified per second (one
//! task, then 4 concurrent), and the append-only proof between the two
//! epochs: its size and its verification time.

use std::time::Instant;

use akd::storage::StorageManager;
use akd::{AkdLabel, AkdValue, AzksParallelismConfig, Directory};
use interop_test_support::NatsServer;
use interop_transparency::{Config, JetStreamDatabase, KtDirectory, VrfKey};
use protobuf::Message as _;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let users: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    interop_bus::ensure_streams(&js, &interop_bus::StreamSettings::default())
        .await
        .unwrap();
    let db = JetStreamDatabase::open(js.clone()).await.unwrap();
    let dir: KtDirectory = Directory::new(
        StorageManager::new_no_cache(db),
        VrfKey::from_bytes([7; 32]),
        AzksParallelismConfig::default(),
    )
    .await
    .unwrap();
    let label = |i: usize| AkdLabel::from(format!("home:+49151{i:08}").as_str());
    let updates = |round: u8| -> Vec<(AkdLabel, AkdValue)> {
        (0..users)
            .map(|i| (label(i), AkdValue(vec![round; 100])))
            .collect()
    };
    let t = Instant::now();
    let first = dir.publish(updates(1)).await.unwrap();
    println!(
        "epoch 1: {users} users added in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let second = dir.publish(updates(2)).await.unwrap();
    println!(
        "epoch 2: {users} keys rotated in {:.2} s",
        t.elapsed().as_secs_f64()
    );

    let vrf = dir.get_public_key().await.unwrap();
    let n = 2_000.min(users);
    let t = Instant::now();
    let mut proofs = Vec::with_capacity(n);
    for i in 0..n {
        proofs.push(dir.lookup(label(i)).await.unwrap().0);
    }
    let generated = n as f64 / t.elapsed().as_secs_f64();
    let size: usize = proofs
        .iter()
        .map(|p| akd::proto::specs::types::LookupProof::from(p).compute_size() as usize)
        .sum::<usize>()
        / n;
    let t = Instant::now();
    for (i, p) in proofs.into_iter().enumerate() {
        akd::client::lookup_verify::<Config>(
            vrf.as_bytes(),
            second.hash(),
            second.epoch(),
            label(i),
            p,
        )
        .unwrap();
    }
    let verified = n as f64 / t.elapsed().as_secs_f64();
    println!("lookups, one task: {generated:.0} proofs generated/s, {verified:.0} verified/s, {size} bytes a proof");

    let dir = std::sync::Arc::new(dir);
    let (epoch, root) = (second.epoch(), second.hash());
    let t = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let dir = dir.clone();
            let vrf = vrf.clone();
            tokio::spawn(async move {
                for i in (w..n).step_by(4) {
                    let (p, _) = dir.lookup(label(i)).await.unwrap();
                    akd::client::lookup_verify::<Config>(vrf.as_bytes(), root, epoch, label(i), p)
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    println!(
        "lookups, 4 tasks: {:.0} generated and verified/s",
        n as f64 / t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let audit = dir.audit(1, 2).await.unwrap();
    let generated = t.elapsed();
    let size =
        akd::proto::specs::types::SingleAppendOnlyProof::from(&audit.proofs[0]).compute_size();
    let t = Instant::now();
    akd::auditor::audit_verify::<Config>(vec![first.hash(), second.hash()], audit)
        .await
        .unwrap();
    println!(
        "audit 1→2: generated in {:.2} s, {size} bytes, verified in {:.2} s",
        generated.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
}
