//! A recipient's store at its count limit, against the real nats-server
//! (docs/adr/0027): an existing store is updated in place; a store full of
//! undelivered messages admits nothing more, and what a device acked makes
//! room; a stage turns a refusal into a FAILED receipt to the sender, not a
//! retry loop.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use interop_bus::subjects::{
    delivery_acked, delivery_queued, CONSUMER_ROUTING, INGEST_ACCEPTED, STREAM_INBOX, STREAM_INGEST,
};
use interop_bus::{
    ensure_streams, pipeline, recipient_key, recipient_path, run_stage, store, HandleError,
    Handler, Input, Outgoing, StageOptions, StreamSettings,
};
use interop_proto::v1::{envelope, Envelope, PipelineMessage, ReceiptStatus, RejectCode, Text};
use interop_telemetry::metrics::Metrics;
use interop_test_support::NatsServer;

const BOB: &str = "home:+4915112345678";
const ALICE: &str = "signal:alice";

fn settings(limit: i64) -> StreamSettings {
    StreamSettings {
        inbox_max_per_recipient: limit,
        ..Default::default()
    }
}

fn message(id: &str) -> PipelineMessage {
    PipelineMessage {
        envelope: Some(Envelope {
            message_id: id.into(),
            client_message_id: format!("c-{id}"),
            from: ALICE.into(),
            to: BOB.into(),
            content: Some(envelope::Content::Text(Text { body: id.into() })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn store_of(js: &jetstream::Context, user: &str) -> Vec<Envelope> {
    let mut inbox = js.get_stream(STREAM_INBOX).await.unwrap();
    let state = inbox.info().await.unwrap().state.clone();
    let subject = delivery_queued(&recipient_path(user));
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = inbox.get_raw_message(seq).await {
            if m.subject.as_str() == subject {
                out.extend(PipelineMessage::decode(m.payload).unwrap().envelope);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_store_is_updated_keeps_its_messages_and_takes_no_more_undelivered_than_its_limit(
) {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let s = settings(3);
    // The store as the previous version made it: refusing at the limit.
    let mut old = interop_bus::streams::stream_configs(&s)
        .into_iter()
        .find(|c| c.name == STREAM_INBOX)
        .unwrap();
    old.discard = stream::DiscardPolicy::New;
    old.discard_new_per_subject = true;
    js.create_stream(old).await.unwrap();
    let carol = "home:+4915100000001";
    let bob = delivery_queued(&recipient_path(carol));
    let publish = |subject: String, body: &'static str| {
        let js = js.clone();
        async move {
            let _admitted = store::admit(&js, &subject).await.unwrap()?;
            Some(
                js.publish(subject, body.into())
                    .await
                    .unwrap()
                    .await
                    .unwrap()
                    .sequence,
            )
        }
    };
    let mut seqs = Vec::new();
    for body in ["m0", "m1", "m2"] {
        let ack = js.publish(bob.clone(), body.into()).await.unwrap();
        seqs.push(ack.await.unwrap().sequence);
    }
    // Start-up updates it in place (nats-server 2.9 allows it); nothing
    // stored is lost.
    ensure_streams(&js, &s).await.unwrap();
    let mut inbox = js.get_stream(STREAM_INBOX).await.unwrap();
    let info = inbox.info().await.unwrap();
    assert_eq!(info.config.discard, stream::DiscardPolicy::Old);
    assert!(!info.config.discard_new_per_subject);
    assert_eq!(info.state.messages, 3);
    // Three undelivered: a fourth is not admitted; another recipient's is.
    assert!(publish(bob.clone(), "m3").await.is_none());
    assert!(publish(delivery_queued(&recipient_path(ALICE)), "a")
        .await
        .is_some());
    assert_eq!(store::room(&js, &bob).await.unwrap(), 0);
    // A device acked the first two: two more fit (once the full answer
    // above is forgotten, 2 s later), each pushing out the oldest, which
    // was delivered.
    acked(&js, carol, "phone", seqs[1]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(store::room(&js, &bob).await.unwrap(), 2);
    let m3 = publish(bob.clone(), "m3").await.expect("room");
    let m4 = publish(bob.clone(), "m4").await.expect("room");
    // Full again: m2, m3, m4 undelivered.
    assert!(publish(bob.clone(), "m5").await.is_none());
    let left: Vec<u64> = {
        let mut v = Vec::new();
        let state = inbox.info().await.unwrap().state.clone();
        for seq in state.first_sequence..=state.last_sequence {
            if let Ok(m) = inbox.get_raw_message(seq).await {
                if m.subject.as_str() == bob {
                    v.push(seq);
                }
            }
        }
        v
    };
    assert_eq!(left, [seqs[2], m3, m4], "the delivered m0 and m1 went");
}

/// Device `device` of `user` acked the store up to `seq` (its cursor).
async fn acked(js: &jetstream::Context, user: &str, device: &str, seq: u64) {
    js.publish(
        delivery_acked(&recipient_key(user), device),
        seq.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn all_acked(mut consumer: jetstream::consumer::PullConsumer, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let info = consumer.info().await.unwrap().clone();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Files each accepted message into its recipient's store, as routing does.
struct File;

impl Handler for File {
    async fn handle(&self, input: Input<'_>) -> Result<Vec<Outgoing>, HandleError> {
        Ok(vec![pipeline::to_recipient_store(&pipeline::decode(
            input.payload,
        )?)])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_tells_the_sender_when_the_store_is_full_and_does_not_retry() {
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    ensure_streams(&js, &settings(2)).await.unwrap();
    for id in ["m1", "m2", "m3"] {
        js.publish(INGEST_ACCEPTED, Bytes::from(message(id).encode_to_vec()))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let consumer =
        interop_bus::streams::stage_consumer(&js, STREAM_INGEST, CONSUMER_ROUTING, INGEST_ACCEPTED)
            .await
            .unwrap();
    let options = StageOptions::new("routing", &Metrics::default());
    let metrics = options.metrics.clone();
    let shutdown = CancellationToken::new();
    let stage = tokio::spawn(run_stage(
        js.clone(),
        consumer.clone(),
        Arc::new(File),
        options,
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let receipt = loop {
        let alice = store_of(&js, ALICE).await;
        if let Some(r) = alice.into_iter().find_map(|e| match e.content {
            Some(envelope::Content::Receipt(r)) => Some(r),
            _ => None,
        }) {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no receipt for the message the full store refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(receipt.message_id, "m3");
    assert_eq!(receipt.status(), ReceiptStatus::Failed);
    assert_eq!(receipt.code(), RejectCode::RecipientStoreFull);
    let bob: Vec<String> = store_of(&js, BOB)
        .await
        .into_iter()
        .map(|e| e.message_id)
        .collect();
    assert_eq!(bob, ["m1", "m2"]);
    // Every input acked, none handed back for a retry.
    all_acked(consumer, Duration::from_secs(10)).await;
    assert_eq!(metrics.retries.get(), 0);
    // Counted, once: m3.
    assert_eq!(metrics.store_full.get(), 1);
    shutdown.cancel();
    stage.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_keeps_input_order_into_a_store_at_its_limit() {
    // Dave's store is at its limit (10) with messages his device acked.
    // Sixty messages come: the first ones are stored, each pushing out a
    // read one; the rest find the store full of undelivered ones and
    // their sender is told. Before, each refused output made room and was
    // stored again on its own, in whatever order those finished: a later
    // message could be stored before an earlier one (a soak at 1,000
    // msgs/s saw 216 out of order at stores' limits).
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    ensure_streams(&js, &settings(10)).await.unwrap();
    let dave = "home:+4915100000004";
    let store = delivery_queued(&recipient_path(dave));
    // Each from a sender of its own: a sender's store has the limit too.
    let sender = |id: &str| format!("signal:{id}");
    let to_dave = |id: &str| {
        let mut m = message(id);
        if let Some(e) = m.envelope.as_mut() {
            e.to = dave.into();
            e.from = sender(id);
        }
        Bytes::from(m.encode_to_vec())
    };
    let mut last = 0;
    for i in 0..10 {
        last = js
            .publish(store.clone(), to_dave(&format!("read-{i}")))
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence;
    }
    js.publish(
        delivery_acked(&recipient_key(dave), "phone"),
        last.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let ids: Vec<String> = (0..60).map(|i| format!("d{i:02}")).collect();
    for id in &ids {
        js.publish(INGEST_ACCEPTED, to_dave(id))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let consumer =
        interop_bus::streams::stage_consumer(&js, STREAM_INGEST, CONSUMER_ROUTING, INGEST_ACCEPTED)
            .await
            .unwrap();
    let shutdown = CancellationToken::new();
    let stage = tokio::spawn(run_stage(
        js.clone(),
        consumer.clone(),
        Arc::new(File),
        StageOptions::new("routing", &Metrics::default()),
        shutdown.clone(),
    ));
    // Every input handled (acked), then what was stored and who was told.
    all_acked(consumer, Duration::from_secs(30)).await;
    let stored: Vec<String> = store_of(&js, dave)
        .await
        .into_iter()
        .map(|e| e.message_id)
        .collect();
    let mut told = Vec::new();
    for id in &ids {
        told.extend(
            store_of(&js, &sender(id))
                .await
                .into_iter()
                .filter_map(|e| match e.content {
                    Some(envelope::Content::Receipt(r)) => Some(r.message_id),
                    _ => None,
                }),
        );
    }
    // The ten Dave read make room for as many undelivered as the store
    // takes (its limit less the headroom), the oldest first.
    let fit = store::undelivered_limit(10) as usize;
    let stored: Vec<String> = stored
        .into_iter()
        .filter(|id| id.starts_with('d'))
        .collect();
    assert_eq!(
        stored,
        ids[..fit],
        "the store holds the first {fit}, in order"
    );
    told.sort();
    assert_eq!(told, ids[fit..], "the senders of the others are told");
    shutdown.cancel();
    stage.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_messages_are_counted_alike_one_by_one_and_by_a_consumer() {
    // Limit 64: at most 56 undelivered (an eighth is headroom).
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    ensure_streams(&js, &settings(64)).await.unwrap();
    let erin = "home:+4915100000005";
    let subject = delivery_queued(&recipient_path(erin));
    let mut seqs = Vec::new();
    for i in 0..40 {
        let ack = js
            .publish(subject.clone(), format!("e{i}").into())
            .await
            .unwrap();
        seqs.push(ack.await.unwrap().sequence);
        // Another recipient's in between: sequences are the stream's.
        js.publish(delivery_queued(&recipient_path(ALICE)), "a".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    assert_eq!(store::undelivered_limit(64), 56);
    // Nothing read: 40 undelivered, more than are read one by one.
    assert_eq!(store::room_now(&js, &subject).await.unwrap(), 56 - 40);
    // A device read 30: 10 left, read one by one.
    acked(&js, erin, "phone", seqs[29]).await;
    assert_eq!(store::room_now(&js, &subject).await.unwrap(), 56 - 10);
    // All read: the whole undelivered limit.
    acked(&js, erin, "tablet", seqs[39]).await;
    assert_eq!(store::room_now(&js, &subject).await.unwrap(), 56);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_nobody_answers_fails_after_the_count_timeout_not_the_request_timeout() {
    use interop_test_support::{ChaosProxy, Mode};
    let nats = NatsServer::start();
    let proxy = ChaosProxy::start(nats.port());
    let mut js = jetstream::new(async_nats::connect(proxy.url("nats")).await.unwrap());
    // Requests wait far longer than a count may (a stream without a leader
    // answers nothing until the election is over).
    js.set_timeout(Duration::from_secs(30));
    ensure_streams(&js, &settings(100)).await.unwrap();
    let subject = delivery_queued(&recipient_path(BOB));
    assert_eq!(store::room_now(&js, &subject).await.unwrap(), 88);
    proxy.set_mode(Mode::Blackhole);
    let started = std::time::Instant::now();
    let e = store::room_now(&js, &subject).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        e.to_string().contains("counting the store took over"),
        "{e}"
    );
    assert!(
        took >= store::COUNT_TIMEOUT && took < Duration::from_secs(20),
        "{took:?}"
    );
}
