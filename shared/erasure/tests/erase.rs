//! The erasure against real servers, with messages written straight into
//! the streams: what goes (the user's store, what they sent, quarantine and
//! pipeline entries, reactions to their group messages), what stays
//! (everyone else's messages, exactly, also when they shared an ingest batch
//! with the user's), and how long it takes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::HeaderMap;
use interop_bus::pipeline::{decode_batch, is_batch, BATCH_HEADER};
use interop_bus::subjects::{
    delivery_queued, INGEST_ACCEPTED, ROUTING_QUARANTINED, STREAM_INBOX, STREAM_INGEST,
    STREAM_QUARANTINE,
};
use interop_bus::{recipient_path, StreamSettings};
use interop_proto::v1::{
    envelope::Content, AcceptedBatch, Envelope, PipelineMessage, Reaction, Text, TraceContext,
};
use interop_proto::Address;
use interop_state::{ContactState, ContactStore};
use interop_test_support::{NatsServer, RedisServer};

const BOB: &str = "home:+4915112345678";

fn user(i: usize) -> String {
    format!("signal:user{i}")
}

fn pm(id: &str, from: &str, to: &str, group: &str, content: Content) -> Bytes {
    PipelineMessage {
        envelope: Some(Envelope {
            message_id: id.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
            group_id: group.to_owned(),
            content: Some(content),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
    .into()
}

fn text() -> Content {
    Content::Text(Text {
        body: "hello".into(),
    })
}

async fn count(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

struct World {
    _nats: NatsServer,
    _redis: RedisServer,
    js: async_nats::jetstream::Context,
    redis: redis::aio::ConnectionManager,
}

async fn world() -> World {
    world_with(&StreamSettings::default()).await
}

async fn world_with(settings: &StreamSettings) -> World {
    let nats = NatsServer::start();
    let redis_server = RedisServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    interop_bus::ensure_streams(&js, settings).await.unwrap();
    let redis = redis::Client::open(redis_server.url())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    World {
        _nats: nats,
        _redis: redis_server,
        js,
        redis,
    }
}

/// `others` users with `per_user` messages each between themselves, plus
/// Bob's: returns how many messages are not Bob's.
async fn fill(w: &World, others: usize, per_user: usize) -> u64 {
    let bob_store = delivery_queued(&recipient_path(BOB));
    let mut acks = Vec::new();
    let mut unrelated = 0;
    for i in 0..others {
        let store = delivery_queued(&recipient_path(&user(i)));
        for j in 0..per_user {
            let from = user((i + j + 1) % others);
            let payload = pm(&format!("m-{i}-{j}"), &from, &user(i), "", text());
            acks.push(w.js.publish(store.clone(), payload).await.unwrap());
            unrelated += 1;
        }
        if acks.len() > 2000 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    // Bob's store: 3 received messages.
    for j in 0..3 {
        let payload = pm(&format!("to-bob-{j}"), &user(j), BOB, "", text());
        acks.push(w.js.publish(bob_store.clone(), payload).await.unwrap());
    }
    // Bob's messages in user0's store, a group copy in user1's, and user2's
    // reaction to that group message in user3's copy (goes), and one to
    // someone else's group message (stays).
    let stores = |i: usize| delivery_queued(&recipient_path(&user(i)));
    for (store, payload) in [
        (stores(0), pm("from-bob-1", BOB, &user(0), "", text())),
        (stores(1), pm("from-bob-g", BOB, &user(1), "g-1", text())),
        (
            stores(3),
            pm(
                "react-to-bob",
                &user(2),
                &user(3),
                "g-1",
                Content::Reaction(Reaction {
                    target_message_id: "from-bob-g".into(),
                    emoji: "x".into(),
                }),
            ),
        ),
        (
            stores(3),
            pm(
                "react-to-user1",
                &user(2),
                &user(3),
                "g-1",
                Content::Reaction(Reaction {
                    target_message_id: "m-1-1".into(),
                    emoji: "x".into(),
                }),
            ),
        ),
    ] {
        acks.push(w.js.publish(store, payload).await.unwrap());
    }
    unrelated += 1;
    // The quarantine: from Bob, to Bob, someone else's.
    for (id, from, to) in [
        ("q1", BOB.to_owned(), user(0)),
        ("q2", user(0), BOB.to_owned()),
        ("q3", user(0), user(1)),
    ] {
        let payload = pm(id, &from, &to, "", text());
        acks.push(w.js.publish(ROUTING_QUARANTINED, payload).await.unwrap());
    }
    // The pipeline: one from Bob, one not.
    for (id, from) in [("p1", BOB.to_owned()), ("p2", user(0))] {
        let payload = pm(id, &from, &user(1), "", text());
        acks.push(w.js.publish(INGEST_ACCEPTED, payload).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
    unrelated
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_removes_exactly_the_users_messages() {
    let w = world().await;
    let unrelated = fill(&w, 50, 20).await;
    let contacts = ContactStore::new(
        interop_state::Records::open(w.js.clone(), w.redis.clone())
            .await
            .unwrap(),
    );
    contacts
        .set(&user(0), BOB, ContactState::Accepted)
        .await
        .unwrap();
    contacts
        .set(&user(1), BOB, ContactState::Declined)
        .await
        .unwrap();
    contacts
        .set(&user(2), BOB, ContactState::Blocked)
        .await
        .unwrap();
    contacts
        .set(&user(0), &user(1), ContactState::Accepted)
        .await
        .unwrap();
    // Bob fetched user0's and user1's keys; user0 fetched Bob's.
    use interop_state::key_watchers;
    for owner in [user(0), user(1)] {
        key_watchers::record(&w.redis, &owner, BOB, 1)
            .await
            .unwrap();
    }
    key_watchers::record(&w.redis, &user(0), &user(1), 2)
        .await
        .unwrap();
    key_watchers::record(&w.redis, BOB, &user(0), 3)
        .await
        .unwrap();

    let bob = Address::parse(BOB).unwrap();
    let erased = interop_erasure::erase_user(&w.js, &w.redis, &bob)
        .await
        .unwrap();
    assert_eq!(erased.inbox_messages, 3, "{erased:?}");
    // From Bob in user0's and user1's stores, user2's reaction to his group
    // message.
    assert_eq!(erased.messages_in_other_stores, 3, "{erased:?}");
    assert_eq!(erased.quarantined, 2, "{erased:?}");
    assert_eq!(erased.in_pipeline, 1, "{erased:?}");
    assert_eq!(erased.contact_entries, 2, "{erased:?}");
    assert_eq!(erased.blocks_kept, 1, "{erased:?}");
    assert_eq!(erased.key_watches, 2, "{erased:?}");
    assert_eq!(
        key_watchers::list(&w.redis, &user(0)).await.unwrap(),
        vec![user(1)]
    );
    assert!(key_watchers::list(&w.redis, BOB).await.unwrap().is_empty());
    // Everyone else's messages are all there.
    assert_eq!(count(&w.js, STREAM_INBOX).await, unrelated);
    assert_eq!(count(&w.js, STREAM_QUARANTINE).await, 1);
    assert_eq!(count(&w.js, STREAM_INGEST).await, 1);
    assert_eq!(
        contacts.get(&user(0), &user(1)).await.unwrap(),
        Some(ContactState::Accepted)
    );
    assert_eq!(contacts.get(&user(0), BOB).await.unwrap(), None);
    assert_eq!(
        contacts.get(&user(2), BOB).await.unwrap(),
        Some(ContactState::Blocked)
    );

    let again = interop_erasure::erase_user(&w.js, &w.redis, &bob)
        .await
        .unwrap();
    assert_eq!(
        again,
        interop_erasure::Erased {
            blocks_kept: 1,
            ..Default::default()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_reaches_every_store_stream() {
    // With the store split into 4 streams (docs/adr/0032), Bob's store, his
    // messages in others' stores and a reaction to his group message lie
    // in different streams; all go, nothing else does.
    let partitions = interop_bus::InboxPartitions::new(4).unwrap();
    let w = world_with(&StreamSettings {
        inbox_partitions: partitions,
        ..Default::default()
    })
    .await;
    let unrelated = fill(&w, 50, 20).await;
    let streams = partitions.stream_names();
    let mut before = 0;
    for name in &streams {
        let n = count(&w.js, name).await;
        assert!(n > 0, "{name} holds some of the 50 users");
        before += n;
    }
    let stream_of = |address: &str| partitions.stream_of_address(address);
    // Bob's store and the stores holding what he sent: more than one.
    let holding: std::collections::BTreeSet<String> = [BOB.to_owned(), user(0), user(1), user(3)]
        .iter()
        .map(|a| stream_of(a))
        .collect();
    assert!(holding.len() > 1, "the test's premise: {holding:?}");
    let erased = interop_erasure::erase_user(&w.js, &w.redis, &Address::parse(BOB).unwrap())
        .await
        .unwrap();
    assert_eq!(erased.inbox_messages, 3, "{erased:?}");
    assert_eq!(erased.messages_in_other_stores, 3, "{erased:?}");
    let mut after = 0;
    for name in &streams {
        after += count(&w.js, name).await;
    }
    assert_eq!(after, unrelated);
    assert_eq!(before - after, 6);
}

/// A trace context that names `id`, to tell which message it went with.
fn trace(id: &str) -> TraceContext {
    TraceContext {
        fields: [("traceparent".to_owned(), format!("trace-of-{id}"))].into(),
    }
}

/// Publishes an ingest batch of `(id, from, to)` messages, each with its
/// trace, and awaits its ack.
async fn publish_batch(w: &World, msg_id: &str, messages: &[(&str, &str, &str)]) {
    let batch = AcceptedBatch {
        messages: messages
            .iter()
            .map(|(id, from, to)| PipelineMessage::decode(pm(id, from, to, "", text())).unwrap())
            .collect(),
        traces: messages.iter().map(|(id, _, _)| trace(id)).collect(),
    };
    let mut headers = HeaderMap::new();
    headers.insert(BATCH_HEADER, messages.len().to_string());
    headers.insert(NATS_MESSAGE_ID, msg_id);
    w.js.publish_with_headers(INGEST_ACCEPTED, headers, batch.encode_to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// One stream message of `INTEROP_INGEST` as routing would read it.
#[derive(Debug)]
struct Stored {
    /// The `BATCH_HEADER` value, for a batch.
    batch: Option<String>,
    msg_id: Option<String>,
    /// Message id → the trace it carries (none for a single message).
    messages: BTreeMap<String, Option<TraceContext>>,
}

/// Every message `INTEROP_INGEST` holds (nothing consumes it here).
async fn ingest_contents(js: &async_nats::jetstream::Context) -> Vec<Stored> {
    let mut stream = js.get_stream(STREAM_INGEST).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let header = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned());
        let messages = if is_batch(Some(&m.headers)) {
            let batch = decode_batch(&m.payload).unwrap();
            let mut traces = batch.traces.into_iter();
            batch
                .messages
                .into_iter()
                .map(|pm| (pm.envelope.unwrap().message_id, traces.next()))
                .collect()
        } else {
            let pm = PipelineMessage::decode(m.payload.clone()).unwrap();
            [(pm.envelope.unwrap().message_id, None)].into()
        };
        out.push(Stored {
            batch: header(BATCH_HEADER),
            msg_id: header(NATS_MESSAGE_ID.as_ref()),
            messages,
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_splits_a_batch_in_the_pipeline() {
    let w = world().await;
    // No routing runs: the batches stay in the work queue.
    publish_batch(
        &w,
        "batch-a",
        &[
            ("a-from-bob", BOB, &user(0)),
            ("a-other", &user(1), &user(2)),
            ("a-to-bob", &user(3), BOB),
        ],
    )
    .await;
    publish_batch(
        &w,
        "batch-b",
        &[("b-1", &user(0), &user(1)), ("b-2", &user(2), &user(3))],
    )
    .await;

    let bob = Address::parse(BOB).unwrap();
    let erased = interop_erasure::erase_user(&w.js, &w.redis, &bob)
        .await
        .unwrap();
    // Bob's two messages, not the one stream message that held them.
    assert_eq!(erased.in_pipeline, 2, "{erased:?}");

    let stored = ingest_contents(&w.js).await;
    assert_eq!(stored.len(), 2, "{stored:#?}");
    // Batch b, untouched.
    assert_eq!(stored[0].batch.as_deref(), Some("2"), "{stored:#?}");
    assert_eq!(stored[0].msg_id.as_deref(), Some("batch-b"), "{stored:#?}");
    assert_eq!(
        stored[0].messages,
        [
            ("b-1".to_owned(), Some(trace("b-1"))),
            ("b-2".to_owned(), Some(trace("b-2")))
        ]
        .into()
    );
    // Batch a's other message, republished as a batch of one with its
    // trace and a fresh message id; batch a itself is gone.
    let split = &stored[1];
    assert_eq!(split.batch.as_deref(), Some("1"), "{stored:#?}");
    let msg_id = split.msg_id.as_deref().unwrap_or_default();
    assert!(msg_id.starts_with("erasure-"), "{stored:#?}");
    assert_eq!(
        split.messages,
        [("a-other".to_owned(), Some(trace("a-other")))].into()
    );

    // Again: nothing of Bob's is left, and the others' messages stay.
    let again = interop_erasure::erase_user(&w.js, &w.redis, &bob)
        .await
        .unwrap();
    assert_eq!(again.in_pipeline, 0, "{again:?}");
    assert_eq!(ingest_contents(&w.js).await.len(), 2);
}

/// How long an erasure takes against a store of `INTEROP_ERASURE_MESSAGES`
/// messages (default 200,000) and as many contact records as users:
/// `cargo test -p interop-erasure --test erase -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn erasure_time_against_a_large_store() {
    let w = world().await;
    let total: usize = std::env::var("INTEROP_ERASURE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let users = total / 20;
    let started = Instant::now();
    fill(&w, users, 20).await;
    let mut conn = w.redis.clone();
    for chunk in (0..users).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.hset(interop_state::keys::contacts(&user(*i)), user(i + 1), "a")
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }
    println!(
        "filled {} messages and {users} contact records in {:?}",
        count(&w.js, STREAM_INBOX).await,
        started.elapsed()
    );
    let started = Instant::now();
    let erased = interop_erasure::erase_user(&w.js, &w.redis, &Address::parse(BOB).unwrap())
        .await
        .unwrap();
    let took = started.elapsed();
    println!("erased in {took:?}: {erased:?}");
    assert!(took < Duration::from_secs(600));
}
