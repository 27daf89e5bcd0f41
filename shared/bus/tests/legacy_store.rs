//! Moving what an earlier version stored under the legacy store layout
//! (`interop.v1.delivery.queued.<key>`) to the current one, against the
//! real nats-server (docs/adr/0031): nothing lost, order and headers kept,
//! acked messages not copied, what cannot be moved left in place, and two
//! replicas migrating at once copy each message once.

use std::collections::HashMap;

use async_nats::jetstream::{self, message::StreamMessage, stream::LastRawMessageErrorKind};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use prost::Message as _;

use interop_bus::legacy_store::{migrate, MigrationReport};
use interop_bus::subjects::{
    delivery_acked, delivery_queued, DELIVERY_QUEUED_LEGACY, DELIVERY_QUEUED_PREFIX, STREAM_INBOX,
};
use interop_bus::{ensure_streams, recipient_key, recipient_path, InboxPartitions, StreamSettings};
use interop_proto::v1::{envelope, Envelope, PipelineMessage, Receipt, Text};
use interop_test_support::NatsServer;

const BOB: &str = "home:+4915112345678";
const CAROL: &str = "signal:carol";
const ALICE: &str = "signal:alice";
const DAVE: &str = "home:dave";

/// A recipient's store subject in the legacy layout.
fn legacy(address: &str) -> String {
    format!("{DELIVERY_QUEUED_PREFIX}.{}", recipient_key(address))
}

/// A recipient's store subject in the current layout.
fn current(address: &str) -> String {
    delivery_queued(&recipient_path(address))
}

fn text(id: &str, from: &str, to: &str) -> Bytes {
    Bytes::from(
        PipelineMessage {
            envelope: Some(Envelope {
                message_id: id.into(),
                from: from.into(),
                to: to.into(),
                content: Some(envelope::Content::Text(Text { body: id.into() })),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

/// A receipt about `about` from its recipient `from` to its sender `to`.
fn receipt(id: &str, about: &str, from: &str, to: &str) -> Bytes {
    Bytes::from(
        PipelineMessage {
            envelope: Some(Envelope {
                message_id: id.into(),
                from: from.into(),
                to: to.into(),
                content: Some(envelope::Content::Receipt(Receipt {
                    message_id: about.into(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

/// Stores `payload` on `subject` with a trace parent, a header naming `id`
/// and the message id `id`; returns its sequence.
async fn put(js: &jetstream::Context, subject: &str, id: &str, payload: Bytes) -> u64 {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    headers.insert("Interop-Test", id);
    headers.insert("Nats-Msg-Id", id);
    js.publish_with_headers(subject.to_owned(), headers, payload)
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

async fn ack(js: &jetstream::Context, address: &str, device: &str, seq: u64) {
    js.publish(
        delivery_acked(&recipient_key(address), device),
        seq.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// The messages on `subject`, in store order.
async fn on(js: &jetstream::Context, subject: &str) -> Vec<StreamMessage> {
    let inbox = js.get_stream_no_info(STREAM_INBOX).await.unwrap();
    let mut out = Vec::new();
    let mut next = 1;
    loop {
        match inbox.get_first_raw_message_by_subject(subject, next).await {
            Ok(m) => {
                next = m.sequence + 1;
                out.push(m);
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return out,
            Err(e) => panic!("{e}"),
        }
    }
}

fn id_of(m: &StreamMessage) -> String {
    interop_bus::pipeline::decode(&m.payload)
        .unwrap()
        .envelope
        .unwrap()
        .message_id
}

async fn ids_on(js: &jetstream::Context, subject: &str) -> Vec<String> {
    on(js, subject).await.iter().map(id_of).collect()
}

fn header<'a>(m: &'a StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

/// The legacy subjects holding messages, and how many each.
async fn legacy_subjects(js: &jetstream::Context) -> HashMap<String, usize> {
    js.get_stream_no_info(STREAM_INBOX)
        .await
        .unwrap()
        .info_with_subjects(DELIVERY_QUEUED_LEGACY)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

async fn stored(js: &jetstream::Context) -> u64 {
    js.get_stream(STREAM_INBOX)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_messages_move_to_their_owners_store_in_order_and_what_cannot_move_stays() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    ensure_streams(&js, &StreamSettings::default())
        .await
        .unwrap();
    // Nothing stored under the legacy layout: nothing done, in one request.
    let mut api = client.subscribe("$JS.API.>").await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(
        migrate(&js, InboxPartitions::ONE).await.unwrap(),
        MigrationReport::default()
    );
    let mut requests = Vec::new();
    while let Ok(Some(m)) =
        tokio::time::timeout(std::time::Duration::from_millis(300), api.next()).await
    {
        requests.push(m.subject.to_string());
    }
    assert_eq!(requests, [format!("$JS.API.STREAM.INFO.{STREAM_INBOX}")]);
    drop(api);

    // What an earlier version stored, recipients interleaved.
    let mut seq = HashMap::new();
    let garbage = Bytes::from_static(&[0xff; 8]);
    for (subject, id, payload) in [
        (legacy(BOB), "m1", text("m1", ALICE, BOB)),
        (legacy(BOB), "m2", text("m2", ALICE, BOB)),
        (legacy(CAROL), "c1", text("c1", ALICE, CAROL)),
        // A receipt in its sender's store: from the recipient.
        (legacy(ALICE), "r1", receipt("r1", "m1", BOB, ALICE)),
        (legacy(BOB), "m3", text("m3", ALICE, BOB)),
        (legacy(BOB), "junk", garbage.clone()),
        // A copy for the sender's own devices: to someone else.
        (legacy(ALICE), "s1", text("s1", ALICE, BOB)),
        // Neither address has the store's key.
        (legacy(CAROL), "x1", text("x1", ALICE, DAVE)),
        (legacy(CAROL), "c2", text("c2", ALICE, CAROL)),
        (legacy(BOB), "m4", text("m4", ALICE, BOB)),
        // Stored by the current version before the migration ran.
        (current(BOB), "n1", text("n1", ALICE, BOB)),
        (current(CAROL), "n2", text("n2", ALICE, CAROL)),
    ] {
        seq.insert(id, put(&js, &subject, id, payload).await);
    }
    // Bob's phone took m1 and m2, his laptop up to m3: m1 and m2 were
    // acked by every device. Carol's phone acked a message of the current
    // layout, past her legacy messages it never got: they all move.
    ack(&js, BOB, "phone", seq["m2"]).await;
    ack(&js, BOB, "laptop", seq["m3"]).await;
    ack(&js, CAROL, "phone", seq["n2"]).await;

    let report = migrate(&js, InboxPartitions::ONE).await.unwrap();
    assert_eq!(
        report,
        MigrationReport {
            subjects: 3,
            copied: 6,
            skipped_acked: 2,
            left_in_place: 2,
        }
    );
    // Each owner's current store: what was there, then the copies in their
    // legacy order.
    assert_eq!(ids_on(&js, &current(BOB)).await, ["n1", "m3", "m4"]);
    assert_eq!(ids_on(&js, &current(CAROL)).await, ["n2", "c1", "c2"]);
    assert_eq!(ids_on(&js, &current(ALICE)).await, ["r1", "s1"]);
    // Headers kept; the message id names the original's sequence.
    for address in [BOB, CAROL, ALICE] {
        for m in on(&js, &current(address)).await {
            let id = id_of(&m);
            assert_eq!(header(&m, "Interop-Test"), Some(id.as_str()));
            assert!(header(&m, "traceparent").is_some());
            if !id.starts_with('n') {
                let expected = format!("legacy-{}", seq[id.as_str()]);
                assert_eq!(header(&m, "Nats-Msg-Id"), Some(expected.as_str()));
            }
        }
    }
    // Only what could not be moved is left under the legacy layout.
    assert_eq!(
        legacy_subjects(&js).await,
        HashMap::from([(legacy(BOB), 1), (legacy(CAROL), 1)])
    );
    let left: Vec<u64> = [on(&js, &legacy(BOB)).await, on(&js, &legacy(CAROL)).await]
        .concat()
        .iter()
        .map(|m| m.sequence)
        .collect();
    assert_eq!(left, [seq["junk"], seq["x1"]]);
    assert_eq!(on(&js, &legacy(BOB)).await[0].payload, garbage);

    // Again: nothing more to do; the two stay and are counted.
    let before = stored(&js).await;
    assert_eq!(
        migrate(&js, InboxPartitions::ONE).await.unwrap(),
        MigrationReport {
            subjects: 2,
            copied: 0,
            skipped_acked: 0,
            left_in_place: 2,
        }
    );
    assert_eq!(stored(&js).await, before);
    assert_eq!(ids_on(&js, &current(BOB)).await, ["n1", "m3", "m4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_migrations_at_once_copy_each_message_once_in_order() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let other = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    ensure_streams(&js, &StreamSettings::default())
        .await
        .unwrap();
    // More than one batch per recipient.
    let recipients = [BOB, CAROL, ALICE];
    let mut expected: HashMap<&str, Vec<String>> = HashMap::new();
    let mut acks = Vec::new();
    for i in 0..300 {
        for (r, to) in recipients.into_iter().enumerate() {
            let id = format!("{r}-{i}");
            acks.push(js.publish(legacy(to), text(&id, DAVE, to)).await.unwrap());
            expected.entry(to).or_default().push(id);
        }
    }
    for a in acks {
        a.await.unwrap();
    }
    let (a, b) = tokio::join!(
        migrate(&js, InboxPartitions::ONE),
        migrate(&other, InboxPartitions::ONE)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.copied + b.copied, 900, "{a:?} {b:?}");
    assert_eq!(a.left_in_place + b.left_in_place, 0);
    assert_eq!(a.skipped_acked + b.skipped_acked, 0);
    for to in recipients {
        assert_eq!(ids_on(&js, &current(to)).await, expected[to], "{to}");
    }
    assert!(legacy_subjects(&js).await.is_empty());
    assert_eq!(stored(&js).await, 900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_keeps_the_rest_in_place_in_order_until_there_is_room() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    ensure_streams(
        &js,
        &StreamSettings {
            inbox_max_per_recipient: 3,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut seq = HashMap::new();
    for id in ["m1", "m2", "m3"] {
        seq.insert(id, put(&js, &legacy(BOB), id, text(id, ALICE, BOB)).await);
    }
    for id in ["n1", "n2"] {
        seq.insert(id, put(&js, &current(BOB), id, text(id, ALICE, BOB)).await);
    }
    // Room for one undelivered: m1 moves, m2 and m3 stay (nothing acked,
    // so the store is full of undelivered messages).
    assert_eq!(
        migrate(&js, InboxPartitions::ONE).await.unwrap(),
        MigrationReport {
            subjects: 1,
            copied: 1,
            skipped_acked: 0,
            left_in_place: 2,
        }
    );
    assert_eq!(ids_on(&js, &current(BOB)).await, ["n1", "n2", "m1"]);
    assert_eq!(ids_on(&js, &legacy(BOB)).await, ["m2", "m3"]);
    // Bob's phone took n1 and n2 (its cursor is past m2 and m3, which it
    // never got: they are not taken for acked). The next run makes room
    // and moves the rest.
    ack(&js, BOB, "phone", seq["n2"]).await;
    assert_eq!(
        migrate(&js, InboxPartitions::ONE).await.unwrap(),
        MigrationReport {
            subjects: 1,
            copied: 2,
            skipped_acked: 0,
            left_in_place: 0,
        }
    );
    assert_eq!(ids_on(&js, &current(BOB)).await, ["m1", "m2", "m3"]);
    assert!(legacy_subjects(&js).await.is_empty());
}
