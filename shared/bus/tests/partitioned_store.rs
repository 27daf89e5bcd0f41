//! The store split into several streams by partition (`--inbox-partitions`,
//! docs/adr/0032), against the real nats-server: each message lands in the
//! stream holding its recipient's partition, is republished to the
//! recipient's session subject with its stream's sequences, a full store
//! makes room in the right stream, and a store made with another P is
//! refused without being touched.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;

use interop_bus::inbox::{existing_store_streams, stream_holding};
use interop_bus::subjects::{
    delivery_acked, delivery_queued, session_stored, DELIVERY_QUEUED_PREFIX, SESSION_PREFIX,
    STREAM_INBOX,
};
use interop_bus::{
    ensure_streams, partition_of_key, recipient_key, recipient_path, store, BusError,
    InboxPartitions, InboxStreams, StreamSettings,
};
use interop_test_support::NatsServer;

fn settings(p: u64) -> StreamSettings {
    StreamSettings {
        inbox_partitions: InboxPartitions::new(p).unwrap(),
        ..Default::default()
    }
}

fn header(m: &async_nats::Message, name: &str) -> u64 {
    m.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .unwrap_or_else(|| panic!("{name} missing"))
        .as_str()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_four_streams_each_message_lands_in_its_partitions_stream_and_is_republished() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let s = settings(4);
    let partitions = s.inbox_partitions;
    ensure_streams(&js, &s).await.unwrap();
    // Again: idempotent.
    ensure_streams(&js, &s).await.unwrap();
    assert_eq!(
        existing_store_streams(&js).await.unwrap(),
        partitions.stream_names()
    );
    let inbox = InboxStreams::open(&js, partitions).await.unwrap();

    // 40 users of two providers: every stream gets some.
    let users: Vec<String> = (0..40)
        .map(|i| format!("{}:+49151000{i:04}", ["home", "signal"][i % 2]))
        .collect();
    let mut sessions = client
        .subscribe(format!("{SESSION_PREFIX}.>"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    // Three messages each, interleaved.
    let mut acked: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for round in 0..3 {
        for user in &users {
            let subject = delivery_queued(&recipient_path(user));
            let ack = js
                .publish(subject.clone(), format!("{round}").into())
                .await
                .unwrap()
                .await
                .unwrap();
            // The stream JetStream stored it in is the one the layout
            // names, the one the server names for the subject, and the one
            // the readers' handle gives.
            assert_eq!(ack.stream, partitions.stream_of_address(user), "{user}");
            assert_eq!(ack.stream, stream_holding(&js, &subject).await.unwrap());
            assert_eq!(
                inbox
                    .for_subject(&subject)
                    .unwrap()
                    .cached_info()
                    .config
                    .name,
                ack.stream
            );
            let key = recipient_key(user);
            assert_eq!(
                inbox.for_key(&key).cached_info().config.name,
                inbox
                    .for_partition(partition_of_key(&key))
                    .cached_info()
                    .config
                    .name
            );
            acked
                .entry(user.clone())
                .or_default()
                .push((ack.stream, ack.sequence));
        }
    }
    let streams_used: BTreeSet<&str> = acked
        .values()
        .flatten()
        .map(|(stream, _)| stream.as_str())
        .collect();
    assert_eq!(streams_used.len(), 4, "every stream holds some users");
    // Each stream holds exactly its users' messages, numbered from 1.
    for (i, stream) in inbox.all().iter().enumerate() {
        let mut stream = stream.clone();
        let state = stream.info().await.unwrap().state.clone();
        let expected = acked
            .values()
            .flatten()
            .filter(|(s, _)| *s == partitions.stream_name(i))
            .count() as u64;
        assert_eq!(state.messages, expected);
        assert_eq!(state.first_sequence, 1);
        assert_eq!(state.last_sequence, expected);
        for seq in 1..=state.last_sequence {
            let m = stream.get_raw_message(seq).await.unwrap();
            let partition: u32 = m.subject.split('.').nth(5).unwrap().parse().unwrap();
            assert_eq!(partitions.index_of_partition(partition), i);
        }
    }
    // Every message was republished to its recipient's session subject,
    // with its stream's sequence and the previous one of its subject (in
    // its stream): what a session needs to see a gap.
    let mut republished: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for _ in 0..users.len() * 3 {
        let m = tokio::time::timeout(Duration::from_secs(5), sessions.next())
            .await
            .expect("republished")
            .unwrap();
        republished.entry(m.subject.to_string()).or_default().push((
            header(&m, "Nats-Sequence"),
            header(&m, "Nats-Last-Sequence"),
        ));
    }
    for user in &users {
        let seqs: Vec<u64> = acked[user].iter().map(|(_, seq)| *seq).collect();
        let want = vec![(seqs[0], 0), (seqs[1], seqs[0]), (seqs[2], seqs[1])];
        assert_eq!(
            republished[&session_stored(&recipient_path(user))],
            want,
            "{user}"
        );
    }

    // A recipient's limit is per subject: its undelivered messages are
    // counted in the stream holding it.
    let carol = "signal:+4915100000099";
    let subject = delivery_queued(&recipient_path(carol));
    let mut seqs = Vec::new();
    for i in 0..3 {
        seqs.push(
            js.publish(subject.clone(), format!("c{i}").into())
                .await
                .unwrap()
                .await
                .unwrap()
                .sequence,
        );
    }
    js.publish(
        delivery_acked(&recipient_key(carol), "phone"),
        seqs[1].to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // One undelivered message (c2) in the stream holding Carol's store.
    let limit = interop_bus::StreamSettings::default().inbox_max_per_recipient as u64;
    assert_eq!(
        store::room(&js, &subject).await.unwrap(),
        store::undelivered_limit(limit) - 1
    );
    let holder = inbox.for_subject(&subject).unwrap();
    assert!(
        holder.get_raw_message(seqs[0]).await.is_ok(),
        "nothing removed"
    );

    // The legacy layout is stream 0's subject.
    let legacy = format!("{DELIVERY_QUEUED_PREFIX}.{}", recipient_key(carol));
    let ack = js
        .publish(legacy, "old".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.stream, partitions.legacy_stream());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_made_with_another_partition_count_is_refused_and_left_as_it_is() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    // Today's store, with a message.
    ensure_streams(&js, &settings(1)).await.unwrap();
    let subject = delivery_queued(&recipient_path("home:bob"));
    js.publish(subject.clone(), "kept".into())
        .await
        .unwrap()
        .await
        .unwrap();
    for p in [4, 64] {
        let e = tokio::time::timeout(Duration::from_secs(30), ensure_streams(&js, &settings(p)))
            .await
            .expect("an answer, not a retry loop")
            .unwrap_err();
        assert!(
            matches!(e, BusError::StoreLayout { configured, .. } if configured == p as u32),
            "{e}"
        );
        assert!(e.to_string().contains(STREAM_INBOX), "{e}");
    }
    // Nothing changed: one stream, its message there.
    assert_eq!(existing_store_streams(&js).await.unwrap(), [STREAM_INBOX]);
    let mut inbox = js.get_stream(STREAM_INBOX).await.unwrap();
    assert_eq!(inbox.info().await.unwrap().state.messages, 1);
    // And the other way: a store of 8 streams refuses 1 and 4 (the same
    // first names as 8, other partitions in them) and takes 8.
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    ensure_streams(&js, &settings(8)).await.unwrap();
    for p in [1, 4, 16] {
        let e = ensure_streams(&js, &settings(p)).await.unwrap_err();
        assert!(matches!(e, BusError::StoreLayout { .. }), "P={p}: {e}");
    }
    ensure_streams(&js, &settings(8)).await.unwrap();
    assert_eq!(
        existing_store_streams(&js).await.unwrap(),
        InboxPartitions::new(8).unwrap().stream_names()
    );
}
