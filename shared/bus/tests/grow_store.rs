//! Growing the store's partition count on a store that holds messages
//! (`delivery --grow-store`, docs/adr/0032), against the real nats-server:
//! every recipient's messages end up in the stream holding their
//! partition, in order, with their headers; what every reader acked is not
//! copied; copies are numbered above every old cursor; partitions that
//! stay keep their sequences; a half-done run is finished by running
//! again; shrinking is refused with nothing changed.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, message::StreamMessage, stream::LastRawMessageErrorKind};
use bytes::Bytes;
use prost::Message as _;

use interop_bus::inbox::existing_store_streams;
use interop_bus::repartition::{grow_store, GrowReport};
use interop_bus::subjects::{
    delivery_acked, delivery_queued, partition_cursor, DELIVERY_QUEUED_PREFIX, STREAM_INBOX,
};
use interop_bus::{
    ensure_streams, partition_of_key, recipient_key, recipient_path, InboxPartitions,
    StreamSettings,
};
use interop_proto::v1::{envelope, Envelope, PipelineMessage, Text};
use interop_test_support::NatsServer;

fn settings(p: u64) -> StreamSettings {
    StreamSettings {
        inbox_partitions: InboxPartitions::new(p).unwrap(),
        ..Default::default()
    }
}

fn text(id: &str, to: &str) -> Bytes {
    Bytes::from(
        PipelineMessage {
            envelope: Some(Envelope {
                message_id: id.into(),
                from: "signal:alice".into(),
                to: to.into(),
                content: Some(envelope::Content::Text(Text { body: id.into() })),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

fn id_of(m: &StreamMessage) -> String {
    interop_bus::pipeline::decode(&m.payload)
        .unwrap()
        .envelope
        .unwrap()
        .message_id
}

/// `user`'s messages, in the stream `p` says holds them, in order.
async fn stored(js: &jetstream::Context, p: InboxPartitions, user: &str) -> Vec<StreamMessage> {
    let stream = js
        .get_stream_no_info(p.stream_of_address(user))
        .await
        .unwrap();
    let subject = delivery_queued(&recipient_path(user));
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        match stream
            .get_first_raw_message_by_subject(&subject, next)
            .await
        {
            Ok(m) => {
                next = m.sequence + 1;
                out.push(m);
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return out,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Stores `n` messages for each user, interleaved; each user's ids and
/// sequences in order.
async fn fill(
    js: &jetstream::Context,
    users: &[String],
    n: usize,
) -> BTreeMap<String, Vec<(String, u64)>> {
    let mut out: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for i in 0..n {
        for u in users {
            let id = format!("{}-{i}", u.trim_start_matches("home:+"));
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id.as_str());
            headers.insert("traceparent", format!("00-{id}").as_str());
            let ack = js
                .publish_with_headers(delivery_queued(&recipient_path(u)), headers, text(&id, u))
                .await
                .unwrap()
                .await
                .unwrap();
            out.entry(u.clone()).or_default().push((id, ack.sequence));
        }
    }
    out
}

async fn cursor(js: &jetstream::Context, subject: String, value: u64) {
    js.publish(subject, value.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn last_sequence(js: &jetstream::Context) -> u64 {
    let mut max = 0;
    for name in existing_store_streams(js).await.unwrap() {
        let mut s = js.get_stream(&name).await.unwrap();
        max = max.max(s.info().await.unwrap().state.last_sequence);
    }
    max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_grows_to_four_and_every_message_follows_its_partition() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    ensure_streams(&js, &settings(1)).await.unwrap();
    let users: Vec<String> = (0..16).map(|i| format!("home:+4915100{i:05}")).collect();
    let sent = fill(&js, &users, 5).await;
    // users[0]: two devices, which acked 2 and 4: the first 2 are acked by
    // all and not copied. users[1]: a cursor about another user's message
    // counts as nothing acked. users[2]: read by a provider session whose
    // partition cursor is at its third message: 3 not copied.
    let (a, b, c) = (&users[0], &users[1], &users[2]);
    cursor(
        &js,
        delivery_acked(&recipient_key(a), "phone"),
        sent[a][1].1,
    )
    .await;
    cursor(
        &js,
        delivery_acked(&recipient_key(a), "laptop"),
        sent[a][3].1,
    )
    .await;
    cursor(
        &js,
        delivery_acked(&recipient_key(b), "phone"),
        sent[a][4].1,
    )
    .await;
    let c_partition = partition_of_key(&recipient_key(c));
    cursor(&js, partition_cursor("home", c_partition), sent[c][2].1).await;
    // What an earlier version stored under the layout before partitions.
    let d = &users[3];
    js.publish(
        format!("{DELIVERY_QUEUED_PREFIX}.{}", recipient_key(d)),
        text("legacy-d", d),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let old_last = last_sequence(&js).await;

    let four = InboxPartitions::new(4).unwrap();
    let report = grow_store(&js, &settings(4)).await.unwrap();
    assert_eq!(report.from, 1);
    assert_eq!(report.to, 4);
    assert_eq!(report.created, four.stream_names());
    assert_eq!(report.removed, [STREAM_INBOX]);
    assert_eq!(report.skipped_acked, 2 + 3);
    assert_eq!(report.copied, 16 * 5 + 1 - 5);
    assert_eq!(
        existing_store_streams(&js).await.unwrap(),
        four.stream_names()
    );
    // The services start on it.
    ensure_streams(&js, &settings(4)).await.unwrap();

    for u in &users {
        let got = stored(&js, four, u).await;
        let mut want: Vec<String> = sent[u].iter().map(|(id, _)| id.clone()).collect();
        if u == a {
            want.drain(..2);
        } else if u == c {
            want.drain(..3);
        } else if u == d {
            // The legacy message was moved into the layout first (after
            // the others), then with them.
            want.push("legacy-d".into());
        }
        assert_eq!(got.iter().map(id_of).collect::<Vec<_>>(), want, "{u}");
        for m in &got {
            // Above every old cursor; the headers kept, the id replaced.
            assert!(m.sequence > old_last, "{u}: {}", m.sequence);
            let id = id_of(m);
            if id != "legacy-d" {
                assert_eq!(
                    m.headers.get("traceparent").unwrap().as_str(),
                    format!("00-{id}")
                );
            }
            assert!(m
                .headers
                .get("Nats-Msg-Id")
                .unwrap()
                .as_str()
                .starts_with("moved-INTEROP_INBOX-"));
        }
    }
    // Again: nothing to do.
    let again = grow_store(&js, &settings(4)).await.unwrap();
    assert_eq!(
        again,
        GrowReport {
            from: 4,
            to: 4,
            ..Default::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_streams_grow_to_eight_moving_only_half_of_the_partitions() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    ensure_streams(&js, &settings(4)).await.unwrap();
    let (four, eight) = (
        InboxPartitions::new(4).unwrap(),
        InboxPartitions::new(8).unwrap(),
    );
    let users: Vec<String> = (0..24).map(|i| format!("home:+4915101{i:05}")).collect();
    let sent = fill(&js, &users, 3).await;
    let moving: Vec<&String> = users
        .iter()
        .filter(|u| four.stream_of_address(u) != eight.stream_of_address(u))
        .collect();
    assert!(!moving.is_empty() && moving.len() < users.len());
    // One moving user's only device acked its first message.
    let m = moving[0];
    cursor(
        &js,
        delivery_acked(&recipient_key(m), "phone"),
        sent[m][0].1,
    )
    .await;
    let old_last = last_sequence(&js).await;

    let report = grow_store(&js, &settings(8)).await.unwrap();
    assert_eq!(report.from, 4);
    assert_eq!(report.created, eight.stream_names()[4..]);
    assert!(report.removed.is_empty());
    assert_eq!(report.skipped_acked, 1);
    assert_eq!(report.copied, moving.len() as u64 * 3 - 1);
    ensure_streams(&js, &settings(8)).await.unwrap();
    for u in &users {
        let got = stored(&js, eight, u).await;
        let ids: Vec<String> = got.iter().map(id_of).collect();
        let mut want: Vec<String> = sent[u].iter().map(|(id, _)| id.clone()).collect();
        if u == m {
            want.remove(0);
        }
        assert_eq!(ids, want, "{u}");
        if moving.contains(&u) {
            assert!(got.iter().all(|m| m.sequence > old_last), "{u}");
            // Gone from the stream that held them.
            let old = js
                .get_stream_no_info(four.stream_of_address(u))
                .await
                .unwrap();
            let e = old
                .get_first_raw_message_by_subject(delivery_queued(&recipient_path(u)), 1)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), LastRawMessageErrorKind::NoMessageFound, "{u}");
        } else {
            // Staying partitions are untouched: the same sequences.
            let seqs: Vec<u64> = got.iter().map(|m| m.sequence).collect();
            let before: Vec<u64> = sent[u].iter().map(|(_, s)| *s).collect();
            assert_eq!(seqs, before, "{u}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_reader_is_seen_by_its_waiting_pull_request() {
    use interop_bus::repartition::readers_running;
    use interop_bus::subjects::{CONSUMER_ROUTING, INGEST_ACCEPTED, STREAM_INGEST};
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    ensure_streams(&js, &settings(1)).await.unwrap();
    assert!(readers_running(&js).await.unwrap().is_empty());
    let consumer =
        interop_bus::streams::stage_consumer(&js, STREAM_INGEST, CONSUMER_ROUTING, INGEST_ACCEPTED)
            .await
            .unwrap();
    // Routing waiting for messages: a pull request outstanding.
    let mut pulling = consumer
        .stream()
        .expires(std::time::Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let reading = tokio::spawn(async move {
        use futures_util::StreamExt as _;
        pulling.next().await;
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        readers_running(&js).await.unwrap(),
        [format!("{STREAM_INGEST}/{CONSUMER_ROUTING}")]
    );
    reading.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grow_stopped_half_way_finishes_and_shrinking_is_refused() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    ensure_streams(&js, &settings(1)).await.unwrap();
    let users: Vec<String> = (0..8).map(|i| format!("home:+4915102{i:05}")).collect();
    let sent = fill(&js, &users, 2).await;
    // As a run stopped after its first step leaves it: INTEROP_INBOX on a
    // reserved subject, no new stream yet.
    let mut inbox = js.get_stream(STREAM_INBOX).await.unwrap();
    let mut config = inbox.info().await.unwrap().config.clone();
    config.subjects = vec![format!(
        "{DELIVERY_QUEUED_PREFIX}._moving_.{STREAM_INBOX}.x"
    )];
    js.update_stream(config).await.unwrap();
    let report = grow_store(&js, &settings(2)).await.unwrap();
    assert_eq!(report.removed, [STREAM_INBOX]);
    let two = InboxPartitions::new(2).unwrap();
    for u in &users {
        let ids: Vec<String> = stored(&js, two, u).await.iter().map(id_of).collect();
        let want: Vec<String> = sent[u].iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids, want, "{u}");
    }
    // 2 to 1: refused, nothing changed.
    let e = grow_store(&js, &settings(1)).await.unwrap_err();
    assert!(e.to_string().contains("only growing"), "{e}");
    assert_eq!(
        existing_store_streams(&js).await.unwrap(),
        two.stream_names()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicated_store_grows_and_its_new_streams_take_the_next_message_at_once() {
    // nats-server 2.9 refuses the first publish to a replicated stream
    // after a purge past its end; the grow leaves none of that behind.
    let cluster = interop_test_support::NatsCluster::start(3);
    let js = jetstream::new(interop_bus::connect(&cluster.urls(), "grow").await.unwrap());
    let replicated = |p| StreamSettings {
        replicas: 3,
        ..settings(p)
    };
    ensure_streams(&js, &replicated(1)).await.unwrap();
    let users: Vec<String> = (0..64).map(|i| format!("home:+4915103{i:05}")).collect();
    let sent = fill(&js, &users, 4).await;
    let report = grow_store(&js, &replicated(4)).await.unwrap();
    assert_eq!(report.copied, 64 * 4);
    ensure_streams(&js, &replicated(4)).await.unwrap();
    let four = InboxPartitions::new(4).unwrap();
    for u in &users {
        let ids: Vec<String> = stored(&js, four, u).await.iter().map(id_of).collect();
        let want: Vec<String> = sent[u].iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids, want, "{u}");
        js.publish(delivery_queued(&recipient_path(u)), text("after", u))
            .await
            .unwrap()
            .await
            .unwrap_or_else(|e| panic!("{u}: {e}"));
    }
}
