//! Delivery across instances: several devices of one user on different
//! delivery instances, an instance killed mid-stream, and per-sender order
//! at volume.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use interop_client::{text_envelope, Receiver, SendOutcome, Sender};
use interop_e2e::{
    connect_service, registry, wait_listening, HOME_TOKEN, SIGNAL_TOKEN, TELEGRAM_TOKEN,
};
use interop_test_support::{NatsServer, RedisServer};

use crate::common::opt_in;

const BOB: &str = "home:+4915112345678";

pub(crate) struct Pipeline {
    pub(crate) nats: NatsServer,
    _redis: RedisServer,
    redis_url: String,
    pub(crate) ingest: String,
    pub(crate) shutdown: CancellationToken,
}

/// ingest, spam-scoring and routing, with limits high enough for volume.
pub(crate) async fn pipeline() -> Pipeline {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let (n, r) = (nats.url(), redis.url());
    let shutdown = CancellationToken::new();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let mut config = interop_ingest::Config::new(l, Arc::new(registry()));
    config.sender_limit = interop_ingest::RateLimit {
        per_second: 100_000.0,
        burst: 100_000,
    };
    config.default_provider_limit = interop_ingest::RateLimit {
        per_second: 100_000.0,
        burst: 100_000,
    };
    let d = connect_service(&n, &r, "ingest").await;
    let s = shutdown.clone();
    tokio::spawn(async move { interop_ingest::run(config, d, s).await });
    let spam = interop_spam_scoring::Config {
        policy: {
            let mut p = interop_spam_scoring::Policy::default();
            p.sender_rate.max_per_minute = 1_000_000;
            p
        },
        ..Default::default()
    };
    let d = connect_service(&n, &r, "spam-scoring").await;
    let s = shutdown.clone();
    tokio::spawn(async move { interop_spam_scoring::run(spam, d, s).await });
    let d = connect_service(&n, &r, "routing").await;
    let s = shutdown.clone();
    tokio::spawn(async move { interop_routing::run(Default::default(), d, s).await });
    wait_listening(&addr.to_string()).await;
    Pipeline {
        nats,
        _redis: redis,
        redis_url: r,
        ingest: format!("ws://{addr}/v1/ws"),
        shutdown,
    }
}

/// One delivery instance with its own shutdown (to kill it alone).
pub(crate) async fn delivery(p: &Pipeline) -> (String, CancellationToken, JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let config = interop_delivery::Config::new(l, Arc::new(registry()));
    let d = connect_service(&p.nats.url(), &p.redis_url, "delivery").await;
    let own = p.shutdown.child_token();
    let s = own.clone();
    let task = tokio::spawn(async move {
        interop_delivery::run(config, d, s).await.ok();
    });
    wait_listening(&addr.to_string()).await;
    (format!("ws://{addr}/v1/ws"), own, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_on_two_delivery_instances_each_get_every_message() {
    let p = pipeline().await;
    opt_in(&p.ingest, BOB, &["signal", "telegram"]).await;
    let (d1, _, _) = delivery(&p).await;
    let (d2, _, _) = delivery(&p).await;
    let mut phone = Receiver::connect(&d1, "home", HOME_TOKEN, BOB, "phone")
        .await
        .unwrap();
    let mut laptop = Receiver::connect(&d2, "home", HOME_TOKEN, BOB, "laptop")
        .await
        .unwrap();
    let alice = Sender::connect(&p.ingest, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        match alice
            .send(text_envelope(&format!("m{i}"), "signal:alice", BOB, "hi"))
            .await
            .unwrap()
        {
            SendOutcome::Accepted(a) => ids.push(a.message_id),
            SendOutcome::Rejected(r) => panic!("{r:?}"),
        }
    }
    for device in [&mut phone, &mut laptop] {
        let mut got = Vec::new();
        for _ in 0..ids.len() {
            let d = tokio::time::timeout(Duration::from_secs(10), device.next())
                .await
                .unwrap()
                .unwrap();
            device.ack(&[d.delivery_tag]).await.unwrap();
            got.push(d.envelope.message_id);
        }
        assert_eq!(got, ids);
        assert_eq!(device.duplicates(), 0);
    }
    p.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_delivery_instance_mid_stream_loses_nothing() {
    let p = pipeline().await;
    opt_in(&p.ingest, BOB, &["signal", "telegram"]).await;
    let (d1, kill_d1, d1_task) = delivery(&p).await;
    let (d2, _, _) = delivery(&p).await;
    let alice = Sender::connect(&p.ingest, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    const N: usize = 200;
    let sender = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..N {
            match alice
                .send(text_envelope(&format!("k{i}"), "signal:alice", BOB, "hi"))
                .await
                .unwrap()
            {
                SendOutcome::Accepted(a) => ids.push(a.message_id),
                SendOutcome::Rejected(r) => panic!("{r:?}"),
            }
        }
        ids
    });
    let mut rx = Receiver::connect(&d1, "home", HOME_TOKEN, BOB, "phone")
        .await
        .unwrap();
    let mut got = Vec::new();
    // Take part of the stream from instance 1, then kill it abruptly.
    while got.len() < N / 3 {
        let d = tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .unwrap()
            .unwrap();
        rx.ack(&[d.delivery_tag]).await.unwrap();
        got.push(d.envelope.message_id);
    }
    kill_d1.cancel();
    d1_task.abort();
    // The device reconnects to the other instance and gets the rest.
    let mut rx = Receiver::connect(&d2, "home", HOME_TOKEN, BOB, "phone")
        .await
        .unwrap();
    let ids = sender.await.unwrap();
    let mut duplicates = 0;
    while got.len() < N {
        let d = tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .unwrap()
            .unwrap();
        rx.ack(&[d.delivery_tag]).await.unwrap();
        if got.contains(&d.envelope.message_id) {
            duplicates += 1; // re-delivered after the crash: un-acked or not yet saved
        } else {
            got.push(d.envelope.message_id);
        }
    }
    assert_eq!(got, ids, "every message, in order");
    assert!(
        duplicates <= interop_proto::limits::MAX_UNACKED,
        "{duplicates} redelivered"
    );
    p.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_from_three_senders_arrive_in_per_sender_order() {
    let p = pipeline().await;
    opt_in(&p.ingest, BOB, &["signal", "telegram"]).await;
    let (d1, _, _) = delivery(&p).await;
    const PER_SENDER: usize = 3334;
    let senders = [
        ("signal", SIGNAL_TOKEN, "signal:alice"),
        ("signal", SIGNAL_TOKEN, "signal:carol"),
        ("telegram", TELEGRAM_TOKEN, "telegram:tom"),
    ];
    let mut tasks = Vec::new();
    for (provider, token, from) in senders {
        let url = p.ingest.clone();
        tasks.push(tokio::spawn(async move {
            let s = Sender::connect(&url, provider, token).await.unwrap();
            // Pipelined in order: 64 sends written, then their answers.
            let mut i = 0;
            while i < PER_SENDER {
                let mut pending = Vec::new();
                for j in i..(i + 64).min(PER_SENDER) {
                    pending.push(
                        s.submit(text_envelope(
                            &format!("{j}"),
                            from,
                            BOB,
                            &format!("{from} {j}"),
                        ))
                        .await
                        .unwrap(),
                    );
                }
                i += pending.len();
                for p in pending {
                    let outcome = p.outcome().await.unwrap();
                    assert!(matches!(outcome, SendOutcome::Accepted(_)), "{outcome:?}");
                }
            }
        }));
    }
    let mut rx = Receiver::connect(&d1, "home", HOME_TOKEN, BOB, "phone")
        .await
        .unwrap();
    let mut next: HashMap<String, usize> = HashMap::new();
    let total = PER_SENDER * senders.len();
    let mut tags = Vec::new();
    for n in 0..total {
        let d = tokio::time::timeout(Duration::from_secs(30), rx.next())
            .await
            .unwrap_or_else(|_| panic!("stalled after {n} messages"))
            .unwrap();
        let seq: usize = d.envelope.client_message_id.parse().unwrap();
        let expected = next.entry(d.envelope.from.clone()).or_insert(0);
        assert_eq!(
            seq, *expected,
            "out of order or a gap from {}",
            d.envelope.from
        );
        *expected += 1;
        tags.push(d.delivery_tag);
        if tags.len() >= 64 {
            rx.ack(&tags).await.unwrap();
            tags.clear();
        }
    }
    rx.ack(&tags).await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(next.values().all(|v| *v == PER_SENDER), "{next:?}");
    assert_eq!(rx.duplicates(), 0);
    let extra = tokio::time::timeout(Duration::from_millis(500), rx.next()).await;
    assert!(extra.is_err(), "more than sent: {extra:?}");
    p.shutdown.cancel();
}

/// The value of an un-labelled counter in a Prometheus text exposition.
fn counter(exposition: &str, name: &str) -> u64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}_total ")))
        .unwrap_or_else(|| panic!("{name} not in\n{exposition}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_keeps_up_takes_stored_messages_live_without_a_consumer() {
    // docs/adr/0016: the store republishes each committed message to the
    // recipient's session subject; a session that has taken everything
    // before it pushes it without opening a store consumer.
    let p = pipeline().await;
    opt_in(&p.ingest, BOB, &["signal", "telegram"]).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let metrics = Arc::new(interop_service::Metrics::default());
    let deps = interop_service::Deps::connect(
        &p.nats.url(),
        &p.redis_url,
        "delivery",
        interop_service::Health::new(),
        metrics.clone(),
    )
    .await
    .unwrap();
    let config = interop_delivery::Config::new(l, Arc::new(registry()));
    let s = p.shutdown.clone();
    tokio::spawn(async move { interop_delivery::run(config, deps, s).await });
    wait_listening(&addr.to_string()).await;
    let mut rx = Receiver::connect(
        &format!("ws://{addr}/v1/ws"),
        "home",
        HOME_TOKEN,
        BOB,
        "phone",
    )
    .await
    .unwrap();
    let alice = Sender::connect(&p.ingest, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    const N: usize = 30;
    for i in 0..N {
        assert!(matches!(
            alice
                .send(text_envelope(
                    &format!("l{i}"),
                    "signal:alice",
                    BOB,
                    &format!("{i}")
                ))
                .await
                .unwrap(),
            SendOutcome::Accepted(_)
        ));
        let d = tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.envelope.client_message_id, format!("l{i}"));
        rx.ack(&[d.delivery_tag]).await.unwrap();
    }
    let exposition = metrics.encode();
    assert_eq!(counter(&exposition, "interop_delivery_live"), N as u64);
    assert_eq!(counter(&exposition, "interop_delivery_consumers_opened"), 0);
    // A second device connecting later reads the same messages from the
    // store (its cursor is at the start): a consumer, then live again.
    let mut tablet = Receiver::connect(
        &format!("ws://{addr}/v1/ws"),
        "home",
        HOME_TOKEN,
        BOB,
        "tablet",
    )
    .await
    .unwrap();
    for i in 0..N {
        let d = tokio::time::timeout(Duration::from_secs(10), tablet.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.envelope.client_message_id, format!("l{i}"));
        tablet.ack(&[d.delivery_tag]).await.unwrap();
    }
    assert_eq!(
        counter(&metrics.encode(), "interop_delivery_consumers_opened"),
        1
    );
    alice
        .send(text_envelope("after", "signal:alice", BOB, "after"))
        .await
        .unwrap();
    for device in [&mut rx, &mut tablet] {
        let d = tokio::time::timeout(Duration::from_secs(10), device.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(d.envelope.client_message_id, "after");
        assert_eq!(device.duplicates(), 0);
    }
    let exposition = metrics.encode();
    assert_eq!(counter(&exposition, "interop_delivery_live"), N as u64 + 2);
    assert_eq!(counter(&exposition, "interop_delivery_consumers_opened"), 1);
    p.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_told_to_look_at_their_store_when_it_elects_a_leader() {
    // docs/adr/0016: a republish lost between the store's commit and its
    // leader failing would leave a message unseen until the user's next
    // one; when the store elects a leader, delivery has its sessions look.
    let cluster = interop_test_support::NatsCluster::start(3);
    let redis = RedisServer::start();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = Arc::new(interop_service::Metrics::default());
    let deps = interop_service::Deps::connect(
        &cluster.urls(),
        &redis.url(),
        "delivery",
        interop_service::Health::new(),
        metrics.clone(),
    )
    .await
    .unwrap();
    let mut config = interop_delivery::Config::new(l, Arc::new(registry()));
    config.streams.replicas = 3;
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move { interop_delivery::run(config, deps, s).await });
    // The port listens before delivery has its streams: wait for its
    // metrics (registered once the streams and the registry are there).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !metrics
        .encode()
        .contains("interop_delivery_look_again_total")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let looks = || counter(&metrics.encode(), "interop_delivery_look_again");
    let before = looks();
    let nats = async_nats::connect(cluster.urls().split(',').next().unwrap())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        // A leader may still be settling right after creation: ask again
        // until the store steps down and elects another.
        let answer = nats
            .request(
                "$JS.API.STREAM.LEADER.STEPDOWN.INTEROP_INBOX",
                bytes::Bytes::new(),
            )
            .await;
        let stepped = answer.is_ok_and(|m| {
            std::str::from_utf8(&m.payload).is_ok_and(|s| s.contains("\"success\":true"))
        });
        if stepped {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no stepdown");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    while looks() <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery did not notice the election"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
}
