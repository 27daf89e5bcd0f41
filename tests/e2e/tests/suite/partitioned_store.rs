//! The gateway with its store split into 4 streams (`--inbox-partitions 4`,
//! docs/adr/0032): per-device sessions and a provider session of users
//! whose stores lie in different streams get everything, in order, once;
//! receipts, read receipts and cursors work per stream (sequences repeat
//! across streams), and a reconnect starts after what was acked.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use interop_bus::subjects::STREAM_INBOX;
use interop_bus::{InboxPartitions, StreamSettings};
use interop_client::provider::{Batch, ProviderReceiver};
use interop_client::{text_envelope, Receiver};
use interop_e2e::{registry, Stack, HOME_TOKEN};
use interop_proto::v1::{envelope, ReceiptStatus};

use crate::common::{opt_in, poll, receiver, send_ok, sender, store_of};

const WAIT: Duration = Duration::from_secs(20);

/// Receipts of `status` in `user`'s store.
async fn receipts(nats: &str, user: &str, status: ReceiptStatus) -> usize {
    store_of(nats, user)
        .await
        .iter()
        .filter(
            |e| matches!(&e.content, Some(envelope::Content::Receipt(r)) if r.status() == status),
        )
        .count()
}

async fn next_ids(rx: &mut Receiver, n: usize) -> (Vec<String>, Vec<u64>) {
    let mut ids = Vec::new();
    let mut tags = Vec::new();
    tokio::time::timeout(WAIT, async {
        while ids.len() < n {
            let m = rx.next().await.unwrap();
            ids.push(m.envelope.message_id);
            tags.push(m.delivery_tag);
        }
    })
    .await
    .expect("delivered in time");
    (ids, tags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_store_streams_deliver_to_devices_and_a_provider_session_across_them() {
    let partitions = InboxPartitions::new(4).unwrap();
    let stack = Stack::start(
        registry(),
        StreamSettings {
            inbox_partitions: partitions,
            ..Default::default()
        },
    )
    .await;
    let d = stack.delivery().await;
    let nats = stack.nats.url();
    // The store is the four streams, not INTEROP_INBOX.
    let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    assert_eq!(
        interop_bus::inbox::existing_store_streams(&js)
            .await
            .unwrap(),
        partitions.stream_names()
    );
    assert!(js.get_stream(STREAM_INBOX).await.is_err());

    // Home users, two in each stream.
    let mut by_stream: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0.. {
        let user = format!("home:+4915177{i:05}");
        let list = by_stream
            .entry(partitions.stream_of_address(&user))
            .or_default();
        if list.len() < 2 {
            list.push(user);
        }
        if by_stream.len() == 4 && by_stream.values().all(|l| l.len() == 2) {
            break;
        }
    }
    let users: Vec<String> = by_stream.values().flatten().cloned().collect();
    for u in &users {
        opt_in(&stack.ingest_url, u, &["signal"]).await;
    }
    let alice_addr = "signal:alice";
    let alice = sender(&stack.ingest_url, "signal").await;
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..3 {
        for u in &users {
            let a = send_ok(
                &alice,
                text_envelope(
                    &format!("{}-{i}", u.trim_start_matches("home:+")),
                    alice_addr,
                    u,
                    "hi",
                ),
            )
            .await;
            want.entry(u.clone()).or_default().push(a.message_id);
        }
    }
    // Each user's messages are in their stream.
    for u in &users {
        let name = interop_bus::inbox::stream_holding(
            &js,
            &interop_bus::subjects::delivery_queued(&interop_bus::recipient_path(u)),
        )
        .await
        .unwrap();
        assert_eq!(name, partitions.stream_of_address(u));
    }

    // Per-device sessions of two users in different streams: their
    // messages in order, once; the acks write DELIVERED receipts into the
    // sender's store (in its own stream), a MarkRead a READ receipt.
    let (a_user, b_user) = (
        &by_stream.values().next().unwrap()[0],
        &users[users.len() - 1],
    );
    assert_ne!(
        partitions.stream_of_address(a_user),
        partitions.stream_of_address(b_user)
    );
    let mut a = receiver(&d.url, a_user, "phone").await;
    let mut b = receiver(&d.url, b_user, "phone").await;
    let (a_ids, a_tags) = next_ids(&mut a, 3).await;
    let (b_ids, b_tags) = next_ids(&mut b, 3).await;
    assert_eq!(a_ids, want[a_user]);
    assert_eq!(b_ids, want[b_user]);
    // Sequences are per stream: each user's delivery tags are sequences of
    // the stream holding their store.
    for (user, tags) in [(a_user, &a_tags), (b_user, &b_tags)] {
        let stream = js
            .get_stream(partitions.stream_of_address(user))
            .await
            .unwrap();
        let subject = interop_bus::subjects::delivery_queued(&interop_bus::recipient_path(user));
        for tag in tags {
            let m = stream.get_raw_message(*tag).await.unwrap();
            assert_eq!(m.subject.as_str(), subject);
        }
    }
    a.ack(&a_tags).await.unwrap();
    b.ack(&b_tags).await.unwrap();
    b.mark_read(&b_tags[..1]).await.unwrap();
    assert!(a.take_rejections().is_empty() && b.take_rejections().is_empty());
    poll("6 delivered and 1 read receipts", WAIT, || async {
        let delivered = receipts(&nats, alice_addr, ReceiptStatus::Delivered).await;
        let read = receipts(&nats, alice_addr, ReceiptStatus::Read).await;
        (delivered == 6 && read == 1).then_some(())
    })
    .await;
    // Reconnected (after the cursor write), they get only what is new.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.close().await;
    b.close().await;
    let more_a = send_ok(&alice, text_envelope("more-a", alice_addr, a_user, "hi")).await;
    let more_b = send_ok(&alice, text_envelope("more-b", alice_addr, b_user, "hi")).await;
    let mut a = receiver(&d.url, a_user, "phone").await;
    let mut b = receiver(&d.url, b_user, "phone").await;
    assert_eq!(
        next_ids(&mut a, 1).await.0,
        std::slice::from_ref(&more_a.message_id)
    );
    assert_eq!(
        next_ids(&mut b, 1).await.0,
        std::slice::from_ref(&more_b.message_id)
    );
    want.get_mut(a_user).unwrap().push(more_a.message_id);
    want.get_mut(b_user).unwrap().push(more_b.message_id);

    // A provider session gets every user's messages, from all four
    // streams, each user's in order, once.
    let mut rx = ProviderReceiver::connect(&d.url, "home", HOME_TOKEN)
        .await
        .unwrap();
    let total: usize = want.values().map(Vec::len).sum();
    let mut got: Vec<Batch> = Vec::new();
    tokio::time::timeout(WAIT, async {
        while got.iter().map(|b| b.messages.len()).sum::<usize>() < total {
            let batch = rx.next_batch().await.unwrap();
            if batch.batch_tag == 0 {
                continue;
            }
            rx.ack(&[batch.batch_tag]).await.unwrap();
            got.push(batch);
        }
    })
    .await
    .expect("the provider session got everything");
    let mut per_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut streams_seen = BTreeSet::new();
    for batch in &got {
        streams_seen.insert(partitions.stream_of_partition(batch.partition));
        for m in &batch.messages {
            per_user
                .entry(m.user.clone())
                .or_default()
                .push(m.envelope.message_id.clone());
        }
    }
    assert_eq!(per_user, want, "every message once, each user's in order");
    assert_eq!(streams_seen.len(), 4);
    assert_eq!(rx.duplicates(), 0);
    // Live: one more to a user in the last stream comes at once.
    let live = send_ok(&alice, text_envelope("live", alice_addr, b_user, "hi")).await;
    let batch = tokio::time::timeout(WAIT, async {
        loop {
            let batch = rx.next_batch().await.unwrap();
            if batch.batch_tag != 0 {
                return batch;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(batch.messages.len(), 1);
    assert_eq!(batch.messages[0].envelope.message_id, live.message_id);
    assert_eq!(next_ids(&mut b, 1).await.0, [live.message_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_grows_from_one_stream_to_four_and_devices_go_on_where_they_were() {
    let nats = interop_test_support::NatsServer::start();
    let redis = interop_test_support::RedisServer::start();
    let endpoints = interop_service::Endpoints::plain(&nats.url(), &redis.url());
    let four = InboxPartitions::new(4).unwrap();
    // Two users whose stores go to different streams.
    let bob = "home:+4915112345678";
    let carol = (0..)
        .map(|i| format!("home:+4915188{i:05}"))
        .find(|c| four.stream_of_address(c) != four.stream_of_address(bob))
        .unwrap();
    let alice_addr = "signal:alice";

    let gw = interop_e2e::Gateway::start_to(&endpoints, Default::default()).await;
    opt_in(&gw.ingest_url, bob, &["signal"]).await;
    opt_in(&gw.ingest_url, &carol, &["signal"]).await;
    let alice = sender(&gw.ingest_url, "signal").await;
    let mut to_bob = Vec::new();
    for i in 0..4 {
        let a = send_ok(
            &alice,
            text_envelope(&format!("b{i}"), alice_addr, bob, "hi"),
        )
        .await;
        to_bob.push(a.message_id);
    }
    let mut to_carol = Vec::new();
    for i in 0..2 {
        let a = send_ok(
            &alice,
            text_envelope(&format!("c{i}"), alice_addr, &carol, "hi"),
        )
        .await;
        to_carol.push(a.message_id);
    }
    // Bob's phone takes all four and acks the first two.
    let mut phone = receiver(&gw.delivery_url, bob, "phone").await;
    let (ids, tags) = next_ids(&mut phone, 4).await;
    assert_eq!(ids, to_bob);
    phone.ack(&tags[..2]).await.unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let cursors = js
        .get_stream(interop_bus::subjects::STREAM_CURSORS)
        .await
        .unwrap();
    let cursor_subject =
        interop_bus::subjects::delivery_acked(&interop_bus::recipient_key(bob), "phone");
    poll("the phone's cursor stored", WAIT, || async {
        let m = cursors
            .get_last_raw_message_by_subject(&cursor_subject)
            .await
            .ok()?;
        (m.payload == tags[1].to_string().as_bytes()).then_some(())
    })
    .await;
    phone.close().await;
    drop(alice);
    for (name, result) in gw.stop().await {
        result.unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    // Grown while nothing reads the store (their pull requests gone).
    let deps = interop_e2e::connect_service(&nats.url(), &redis.url(), "delivery").await;
    poll(
        "the services' pull requests expired",
        Duration::from_secs(40),
        || async {
            interop_bus::repartition::readers_running(&js)
                .await
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let settings = StreamSettings {
        inbox_partitions: four,
        ..Default::default()
    };
    interop_delivery::grow_store(settings.clone(), deps, Default::default())
        .await
        .unwrap();
    assert!(js.get_stream(STREAM_INBOX).await.is_err());

    // The gateway with four streams: the phone gets what it had not acked,
    // once; Carol's first device gets hers; new messages flow.
    let gw =
        interop_e2e::Gateway::start_with_streams(&endpoints, Default::default(), settings).await;
    let mut phone = receiver(&gw.delivery_url, bob, "phone").await;
    assert_eq!(next_ids(&mut phone, 2).await.0, to_bob[2..]);
    crate::common::nothing_within(&mut phone, 500).await;
    let mut carols = receiver(&gw.delivery_url, &carol, "phone").await;
    assert_eq!(next_ids(&mut carols, 2).await.0, to_carol);
    let alice = sender(&gw.ingest_url, "signal").await;
    let more = send_ok(&alice, text_envelope("b4", alice_addr, bob, "hi")).await;
    assert_eq!(next_ids(&mut phone, 1).await.0, [more.message_id]);
    assert_eq!(phone.duplicates(), 0);
    gw.stop().await;
}
