//! The store split into 8 streams of 3 replicas on a 3-node NATS cluster
//! (docs/adr/0032): the streams' leaders spread over the nodes (JetStream
//! places them at random; `balance_leaders` evens them out), when a node is
//! killed only the streams it led elect new leaders, the others go on
//! taking writes and reads meanwhile, no acknowledged message is lost, and
//! once the node is back the leaders spread over all three again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;

use interop_bus::inbox::balance_leaders;
use interop_bus::subjects::delivery_queued;
use interop_bus::{ensure_streams, recipient_path, InboxPartitions, StreamSettings};
use interop_test_support::NatsCluster;

/// The leader of each stream of `names`, once every one has a leader
/// that is not `gone` (or within `wait`).
async fn leaders(
    js: &jetstream::Context,
    names: &[String],
    gone: Option<&str>,
    wait: Duration,
) -> BTreeMap<String, String> {
    let deadline = Instant::now() + wait;
    loop {
        let mut found = BTreeMap::new();
        for name in names {
            let leader = match js.get_stream(name).await {
                Ok(mut s) => s
                    .info()
                    .await
                    .ok()
                    .and_then(|i| i.cluster.as_ref().and_then(|c| c.leader.clone())),
                Err(_) => None,
            };
            if let Some(leader) = leader.filter(|l| Some(l.as_str()) != gone) {
                found.insert(name.clone(), leader);
            }
        }
        if found.len() == names.len() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "not every store stream has a leader within {wait:?}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many of `leaders` each node of `cluster` leads.
fn per_node(cluster: &NatsCluster, leaders: &BTreeMap<String, String>) -> Vec<(String, usize)> {
    (0..cluster.len())
        .map(|i| {
            let name = cluster.name(i).to_owned();
            let n = leaders.values().filter(|l| **l == name).count();
            (name, n)
        })
        .collect()
}

/// Balances the store's leaders (a few calls at most) and returns them.
async fn balanced(
    js: &jetstream::Context,
    partitions: InboxPartitions,
) -> (u32, BTreeMap<String, String>) {
    let mut stepped = 0;
    for _ in 0..3 {
        let n = balance_leaders(js, partitions).await.unwrap();
        stepped += n;
        if n == 0 {
            break;
        }
    }
    let names = partitions.stream_names();
    (
        stepped,
        leaders(js, &names, None, Duration::from_secs(20)).await,
    )
}

/// One publish JetStream acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    stream: String,
    seq: u64,
    body: String,
    at: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_spread_and_a_lost_node_moves_only_the_streams_it_led() {
    let started = Instant::now();
    let mut cluster = NatsCluster::start(3);
    let partitions = InboxPartitions::new(8).unwrap();
    let settings = StreamSettings {
        replicas: 3,
        inbox_partitions: partitions,
        ..Default::default()
    };
    let names = partitions.stream_names();
    {
        let client = interop_bus::connect(&cluster.urls(), "setup")
            .await
            .unwrap();
        let js = jetstream::new(client);
        tokio::time::timeout(Duration::from_secs(60), ensure_streams(&js, &settings))
            .await
            .expect("streams created within 60 s")
            .unwrap();
    }
    let client = interop_bus::connect(&cluster.urls(), "probe")
        .await
        .unwrap();
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(1));
    let placed = leaders(&js, &names, None, Duration::from_secs(20)).await;
    let (stepped, before) = balanced(&js, partitions).await;
    let spread = per_node(&cluster, &before);
    eprintln!(
        "store stream leaders per node as JetStream placed them: {:?}; after {stepped} step-downs: {spread:?}",
        per_node(&cluster, &placed)
    );
    // Spread over the nodes: 3, 3 and 2 of the 8.
    assert!(
        spread.iter().all(|(_, n)| (2..=3).contains(n)),
        "{spread:?}"
    );
    let mut led: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (stream, leader) in &before {
        led.entry(leader.clone())
            .or_default()
            .insert(stream.clone());
    }

    // The node leading the most store streams goes; the test's clients
    // talk to the two others (as services reconnect to them).
    let victim = (0..cluster.len())
        .max_by_key(|&i| led.get(cluster.name(i)).map_or(0, BTreeSet::len))
        .unwrap();
    let victim_name = cluster.name(victim).to_owned();
    let victims_streams = led[&victim_name].clone();
    let survivors = (0..cluster.len())
        .filter(|&i| i != victim)
        .map(|i| cluster.url(i))
        .collect::<Vec<_>>()
        .join(",");
    let client = interop_bus::connect(&survivors, "traffic").await.unwrap();
    let mut js = jetstream::new(client.clone());
    js.set_timeout(Duration::from_secs(2));
    let mut elections = client
        .subscribe("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.*")
        .await
        .unwrap();
    client.flush().await.unwrap();

    // Writers: 64 recipients, one per partition's worth of spread, in turn,
    // four publishes in flight; what is acknowledged is noted.
    let users: Vec<String> = (0..64).map(|i| format!("home:+4915100{i:05}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let failed_publishes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (js, users, stop, acked, failed) = (
            js.clone(),
            users.clone(),
            stop.clone(),
            acked.clone(),
            failed_publishes.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut n = w;
            while !stop.load(Ordering::Relaxed) {
                let user = &users[n % users.len()];
                let body = format!("m{n}");
                let sent = async {
                    js.publish(delivery_queued(&recipient_path(user)), body.clone().into())
                        .await?
                        .await
                        .map_err(async_nats::Error::from)
                };
                match sent.await {
                    Ok(ack) => acked.lock().unwrap().push(Acked {
                        stream: ack.stream,
                        seq: ack.sequence,
                        body,
                        at: Instant::now(),
                    }),
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                n += 4;
            }
        }));
    }
    // A reader: reads back what was acked a moment ago, by its stream's
    // sequence; (when, stream, ok) noted.
    let reads: Arc<Mutex<Vec<(Instant, String, bool)>>> = Arc::default();
    let reader = {
        let (js, stop, acked, reads) = (js.clone(), stop.clone(), acked.clone(), reads.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let pick = {
                    let acked = acked.lock().unwrap();
                    (!acked.is_empty()).then(|| acked[(i * 7919) % acked.len()].clone())
                };
                i += 1;
                if let Some(a) = pick {
                    let ok = match js.get_stream_no_info(&a.stream).await {
                        Ok(s) => s
                            .get_raw_message(a.seq)
                            .await
                            .is_ok_and(|m| m.payload == a.body.as_bytes()),
                        Err(_) => false,
                    };
                    reads.lock().unwrap().push((Instant::now(), a.stream, ok));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = Instant::now();
    cluster.stop_node(victim);
    let after = leaders(&js, &names, Some(&victim_name), Duration::from_secs(30)).await;
    let failover = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    reader.await.unwrap();

    // Only the streams the lost node led have new leaders; the others kept
    // theirs.
    for name in &names {
        if victims_streams.contains(name) {
            assert_ne!(after[name], victim_name, "{name}");
        } else {
            assert_eq!(after[name], before[name], "{name} changed leader");
        }
    }
    let mut elected = BTreeSet::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), elections.next()).await
    {
        let stream = m.subject.as_str().rsplit('.').next().unwrap_or_default();
        if names.iter().any(|n| n == stream) {
            elected.insert(stream.to_owned());
        }
    }
    assert_eq!(
        elected, victims_streams,
        "store streams that elected a leader"
    );

    // While the lost node's streams were electing, the others took writes
    // and answered reads.
    let acked = acked.lock().unwrap().clone();
    let window = |at: Instant| at >= killed_at && at <= killed_at + failover;
    let others_written = acked
        .iter()
        .filter(|a| window(a.at) && !victims_streams.contains(&a.stream))
        .count();
    let reads = reads.lock().unwrap().clone();
    let others_read: Vec<bool> = reads
        .iter()
        .filter(|(at, s, _)| window(*at) && !victims_streams.contains(s))
        .map(|(_, _, ok)| *ok)
        .collect();
    assert!(
        others_written > 0,
        "no writes to the other streams meanwhile"
    );
    assert!(
        others_read.iter().any(|ok| *ok),
        "no reads of the other streams meanwhile"
    );

    // Nothing acknowledged is lost: each is at its sequence of its stream.
    let mut lost = Vec::new();
    for a in &acked {
        let s = js.get_stream_no_info(&a.stream).await.unwrap();
        match s.get_raw_message(a.seq).await {
            Ok(m) if m.payload == a.body.as_bytes() => {}
            other => lost.push((a.clone(), other.map(|m| m.payload).ok())),
        }
    }
    eprintln!(
        "killed {victim_name} (led {} of 8); every store stream led again after {failover:?}; \
         acked {} ({} to the other streams during the failover), publishes not acked {}, \
         reads of the other streams during the failover {} ({} ok); lost {}; test took {:?}",
        victims_streams.len(),
        acked.len(),
        others_written,
        failed_publishes.load(Ordering::Relaxed),
        others_read.len(),
        others_read.iter().filter(|ok| **ok).count(),
        lost.len(),
        started.elapsed(),
    );
    assert!(lost.is_empty(), "lost acknowledged messages: {lost:?}");

    // The node comes back: the leaders spread over all three again.
    cluster.restart_node(victim);
    let client = interop_bus::connect(&cluster.urls(), "after")
        .await
        .unwrap();
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    let returned = Instant::now();
    let (stepped, again) = loop {
        let (stepped, again) = balanced(&js, partitions).await;
        let spread = per_node(&cluster, &again);
        if spread.iter().all(|(_, n)| (2..=3).contains(n)) {
            break (stepped, again);
        }
        // Its replicas catch up before they may lead.
        assert!(
            returned.elapsed() < Duration::from_secs(20),
            "not spread again: {spread:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "{victim_name} back: after {stepped} step-downs in {:?}: {:?}; test took {:?}",
        returned.elapsed(),
        per_node(&cluster, &again),
        started.elapsed()
    );
}

/// Publishes `n` store messages of 512 bytes to 4,096 recipients, `window`
/// acks awaited at once; acknowledged messages per second.
async fn store_rate(js: &jetstream::Context, n: usize, window: usize) -> f64 {
    let users: Vec<String> = (0..4096)
        .map(|i| delivery_queued(&recipient_path(&format!("home:+49152{i:06}"))))
        .collect();
    let payload = bytes::Bytes::from(vec![b'x'; 512]);
    let started = Instant::now();
    let mut acks = std::collections::VecDeque::with_capacity(window);
    for i in 0..n {
        let ack = js
            .publish(users[i % users.len()].clone(), payload.clone())
            .await
            .unwrap();
        acks.push_back(ack);
        if acks.len() >= window {
            acks.pop_front().unwrap().await.unwrap();
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand (docs/deploy.md, \"Store partitions\")"]
async fn store_write_rate_by_partition_count() {
    let n = 40_000;
    for (nodes, replicas, p) in [(1, 1, 1), (1, 1, 4), (3, 3, 1), (3, 3, 8)] {
        // One server alone, or a 3-node cluster.
        let (single, cluster) = if nodes == 1 {
            (Some(interop_test_support::NatsServer::start()), None)
        } else {
            (None, Some(NatsCluster::start(nodes)))
        };
        let urls = match (&single, &cluster) {
            (Some(s), _) => s.url(),
            (_, Some(c)) => c.urls(),
            _ => unreachable!(),
        };
        let client = interop_bus::connect(&urls, "rate").await.unwrap();
        let js = jetstream::new(client);
        let partitions = InboxPartitions::new(p).unwrap();
        let settings = StreamSettings {
            replicas,
            inbox_partitions: partitions,
            ..Default::default()
        };
        ensure_streams(&js, &settings).await.unwrap();
        if replicas > 1 {
            balanced(&js, partitions).await;
        }
        // Warm up, then measure twice.
        store_rate(&js, 5_000, 512).await;
        let rates = [store_rate(&js, n, 512).await, store_rate(&js, n, 512).await];
        eprintln!(
            "{nodes} node(s), R{replicas}, P={p}: {:.0} and {:.0} msgs/s stored",
            rates[0], rates[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand (docs/deploy.md, \"Store partitions\")"]
async fn grow_rate() {
    for (nodes, replicas) in [(1, 1), (3, 3)] {
        let (single, cluster) = if nodes == 1 {
            (Some(interop_test_support::NatsServer::start()), None)
        } else {
            (None, Some(NatsCluster::start(nodes)))
        };
        let urls = match (&single, &cluster) {
            (Some(s), _) => s.url(),
            (_, Some(c)) => c.urls(),
            _ => unreachable!(),
        };
        let js = jetstream::new(interop_bus::connect(&urls, "grow").await.unwrap());
        let settings = |p| StreamSettings {
            replicas,
            inbox_partitions: InboxPartitions::new(p).unwrap(),
            ..Default::default()
        };
        ensure_streams(&js, &settings(1)).await.unwrap();
        let n = 50_000;
        store_rate(&js, n, 512).await;
        let started = Instant::now();
        let report = interop_bus::repartition::grow_store(&js, &settings(8))
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(report.copied, n as u64);
        eprintln!(
            "{nodes} node(s), R{replicas}: {n} messages (512 bytes, 4,096 recipients) grown from 1 to 8 streams in {took:?}: {:.0} msgs/s",
            n as f64 / took.as_secs_f64()
        );
    }
}
