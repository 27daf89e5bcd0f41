//! The bare mechanisms under a key claim, measured on this machine against a
//! `nats-server` started for the purpose (ADR 25, docs/benchmarks.md):
//! concurrent JetStream message deletes, prefix purges of one subject
//! (what a claim does since the batch claims), direct gets, compare-and-set
//! cursor writes (a claim design measured and rejected: not serialized by
//! nats-server before 2.11 across a leader change, ADR 25 and ADR 34), and
//! whole claims through `KeyDirectory::fetch_bundles`, each as operations
//! per second.
//!
//! `cargo run --release -p interop-keys --example claim_mechanisms`

use std::sync::Arc;
use std::time::Instant;

use interop_keys::KeyDirectory;
use interop_proto::v1::{DeviceKeys, PublicKey, PublishKeys};

const N: u64 = 20_000;
const IN_FLIGHT: usize = 256;

fn key(id: u32) -> PublicKey {
    let mut k = vec![0u8; 32];
    k[..4].copy_from_slice(&id.to_be_bytes());
    PublicKey {
        algorithm: "curve25519".into(),
        key_id: id,
        key: k.into(),
        signature: vec![1; 64].into(),
    }
}

async fn run_concurrently<F, Fut>(n: u64, f: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                f(i).await;
            }
        }));
    }
    for t in tasks {
        t.await.ok();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nats = interop_test_support::NatsServer::start();
    let client = async_nats::connect(nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    interop_bus::ensure_streams(&js, &interop_bus::StreamSettings::default()).await?;
    let stream = js
        .get_stream(interop_bus::subjects::STREAM_KEYS_POOL)
        .await?;

    // Publish N messages on one subject; keep their sequences.
    let mut seqs = Vec::with_capacity(N as usize);
    let mut acks = Vec::new();
    for i in 0..N {
        acks.push(
            js.publish("interop.v1.keys.pool.bench.d.otk", format!("{i}").into())
                .await?,
        );
        if acks.len() == 1024 {
            for a in acks.drain(..) {
                seqs.push(a.await?.sequence);
            }
        }
    }
    for a in acks.drain(..) {
        seqs.push(a.await?.sequence);
    }
    let seqs = Arc::new(seqs);

    let s = stream.clone();
    let q = seqs.clone();
    let gets = run_concurrently(N, move |i| {
        let (s, q) = (s.clone(), q.clone());
        async move {
            s.direct_get(q[i as usize]).await.ok();
        }
    })
    .await;
    let s = stream.clone();
    let q = seqs.clone();
    let nexts = run_concurrently(N, move |i| {
        let (s, q) = (s.clone(), q.clone());
        async move {
            s.direct_get_next_for_subject("interop.v1.keys.pool.bench.d.otk", Some(q[i as usize]))
                .await
                .ok();
        }
    })
    .await;
    let s = stream.clone();
    let q = seqs.clone();
    let deletes = run_concurrently(N, move |i| {
        let (s, q) = (s.clone(), q.clone());
        async move {
            s.delete_message(q[i as usize]).await.ok();
        }
    })
    .await;

    // Prefix purges (a claim's one write, ADR 25): 1,000 subjects of 20
    // keys each, each purge removing the next key of one subject (the pool
    // subject as filter, the key's sequence + 1 as the bound).
    const SUBJECTS: u64 = 1_000;
    let mut by_subject = vec![Vec::new(); SUBJECTS as usize];
    let mut acks = Vec::new();
    for i in 0..N {
        let subject = i % SUBJECTS;
        acks.push((
            subject,
            js.publish(
                format!("interop.v1.keys.pool.bench{subject}.d.otk"),
                format!("{i}").into(),
            )
            .await?,
        ));
        if acks.len() == 1024 {
            for (subject, a) in acks.drain(..) {
                by_subject[subject as usize].push(a.await?.sequence);
            }
        }
    }
    for (subject, a) in acks.drain(..) {
        by_subject[subject as usize].push(a.await?.sequence);
    }
    let by_subject = Arc::new(by_subject);
    let s = stream.clone();
    let purges = run_concurrently(N, move |i| {
        let (s, q) = (s.clone(), by_subject.clone());
        async move {
            let subject = i % SUBJECTS;
            let seq = q[subject as usize][(i / SUBJECTS) as usize];
            s.purge()
                .filter(format!("interop.v1.keys.pool.bench{subject}.d.otk"))
                .sequence(seq + 1)
                .await
                .ok();
        }
    })
    .await;

    // Claim cursors (a design measured against deletes, and rejected): a
    // claim would append
    // the claimed key's sequence to the pool's cursor subject with
    // `Nats-Expected-Last-Subject-Sequence` instead of removing the key.
    // 1,000 cursor subjects, each written by one task in turn (no lost
    // compare-and-set), in a stream keeping every cursor and in one keeping
    // the last per subject (each write then removes the one before).
    let mut cursors = Vec::new();
    for keep_one in [false, true] {
        let name = if keep_one {
            "BENCH_CURSOR_LAST"
        } else {
            "BENCH_CURSOR_ALL"
        };
        let prefix = if keep_one {
            "bench.cursor.last"
        } else {
            "bench.cursor.all"
        };
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.into(),
            subjects: vec![format!("{prefix}.>")],
            max_messages_per_subject: if keep_one { 1 } else { -1 },
            ..Default::default()
        })
        .await?;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..IN_FLIGHT as u64 {
            let js = js.clone();
            tasks.push(tokio::spawn(async move {
                let mut last = [0u64; 4];
                for round in 0..N / IN_FLIGHT as u64 {
                    let k = (round % 4) as usize;
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(
                        "Nats-Expected-Last-Subject-Sequence",
                        last[k].to_string().as_str(),
                    );
                    let ack = js
                        .publish_with_headers(
                            format!("{prefix}.{t}.{k}"),
                            headers,
                            round.to_string().into(),
                        )
                        .await
                        .expect("publish")
                        .await
                        .expect("compare-and-set");
                    last[k] = ack.sequence;
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let done = (N / IN_FLIGHT as u64) * IN_FLIGHT as u64;
        cursors.push((done as f64 / start.elapsed().as_secs_f64()).round());
    }

    // Whole claims: 100 users × 200 keys, half of them claimed by 256 tasks
    // at once (pools are topped up long before they run dry).
    let dir = KeyDirectory::open(js.clone()).await?;
    let users: Vec<String> = (0..100).map(|i| format!("home:+49151{i:07}")).collect();
    for u in &users {
        for batch in 0..2u32 {
            let p = PublishKeys {
                user: u.clone(),
                device: Some(DeviceKeys {
                    device_id: "d".into(),
                    identity_key: Some(key(0)),
                    signing_key: None,
                    signed_prekey: Some(key(0)),
                    last_resort_prekey: Some(key(0)),
                    pq_last_resort_prekey: None,
                    last_resort_key_package: Default::default(),
                }),
                one_time_prekeys: (1..=100).map(|k| key(batch * 100 + k)).collect(),
                key_packages: vec![],
            };
            dir.publish(u, &p).await?;
        }
    }
    let users = Arc::new(users);
    let claims = run_concurrently(10_000, move |i| {
        let (dir, users) = (dir.clone(), users.clone());
        async move {
            dir.fetch_bundles(&users[i as usize % users.len()], &[])
                .await
                .ok();
        }
    })
    .await;
    println!(
        "{}",
        serde_json::json!({
            "direct_gets_per_s": gets.round(),
            "direct_gets_next_for_subject_per_s": nexts.round(),
            "deletes_per_s": deletes.round(),
            "prefix_purges_per_s": purges.round(),
            "cursor_appends_per_s": cursors[0],
            "cursor_replaces_per_s": cursors[1],
            "claims_per_s": claims.round(),
            "in_flight": IN_FLIGHT,
        })
    );
    Ok(())
}
