//! The stage loop against the real nats-server: what every pipeline stage
//! relies on.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use futures_util::StreamExt;
use interop_bus::stage::ACK_BUDGET;
use interop_bus::subjects::{
    CONSUMER_ROUTING, INGEST_ACCEPTED, ROUTING_QUARANTINED, STREAM_INGEST, STREAM_QUARANTINE,
};
use interop_bus::{ensure_streams, HandleError, Handler, Input, Outgoing, StageOptions};
use interop_bus::{run_stage, StreamSettings};
use interop_telemetry::metrics::Metrics;
use interop_test_support::NatsServer;

/// Each input names how many outputs it makes.
struct FanOut;

impl Handler for FanOut {
    async fn handle(&self, input: Input<'_>) -> Result<Vec<Outgoing>, HandleError> {
        let n: usize = std::str::from_utf8(input.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| HandleError::Permanent("not a count".into()))?;
        Ok((0..n)
            .map(|i| Outgoing {
                subject: ROUTING_QUARANTINED.to_owned(),
                msg_id: format!("{}-{i}", input.stream_sequence),
                payload: Bytes::from_static(b"x"),
                trace: None,
            })
            .collect())
    }
}

async fn stored(js: &jetstream::Context, stream: &str) -> u64 {
    let mut s = js.get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_whose_inputs_make_more_outputs_than_acks_in_flight_finishes_them_all() {
    // async-nats lets one JetStream context await 5,000 publish acks; a
    // publish waits for one. 40 inputs of 200 outputs each, handled at
    // once, and one input of more than ACK_BUDGET outputs, need more: the
    // stage must await acks as it goes, not wait for itself.
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    ensure_streams(&js, &StreamSettings::default())
        .await
        .unwrap();
    let mut counts = vec![200usize; 40];
    counts.push(ACK_BUDGET + 1000);
    for n in &counts {
        js.publish(INGEST_ACCEPTED, n.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let expected: usize = counts.iter().sum();
    assert!(expected > 5_000 + ACK_BUDGET);
    let consumer =
        interop_bus::streams::stage_consumer(&js, STREAM_INGEST, CONSUMER_ROUTING, INGEST_ACCEPTED)
            .await
            .unwrap();
    let shutdown = CancellationToken::new();
    let stage = tokio::spawn(run_stage(
        js.clone(),
        consumer,
        Arc::new(FanOut),
        StageOptions::new("fan-out", &Metrics::default()),
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (out, left) = (
            stored(&js, STREAM_QUARANTINE).await,
            stored(&js, STREAM_INGEST).await,
        );
        if out == expected as u64 && left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stalled: {out} of {expected} outputs stored, {left} inputs not acked"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
    stage.await.unwrap().unwrap();
}

/// Copies each input to the quarantine stream (payload and all), failing
/// with `Retry` (or, with `outage`, `Unavailable`) as `fail` says for its
/// payload and try.
struct Copy<F> {
    fail: F,
    outage: bool,
    tries: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl<F: Fn(&str, u32) -> bool + Send + Sync + 'static> Handler for Copy<F> {
    async fn handle(&self, input: Input<'_>) -> Result<Vec<Outgoing>, HandleError> {
        let text = std::str::from_utf8(input.payload).unwrap_or("").to_owned();
        let tries = {
            let mut t = self.tries.lock().unwrap();
            let n = t.entry(text.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if (self.fail)(&text, tries) {
            let reason = format!("{text} fails on try {tries}");
            let after = Duration::from_millis(100);
            return Err(if self.outage {
                HandleError::Unavailable { reason, after }
            } else {
                HandleError::Retry { reason, after }
            });
        }
        Ok(vec![Outgoing {
            subject: ROUTING_QUARANTINED.to_owned(),
            msg_id: format!("copy-{text}"),
            payload: input.payload.clone(),
            trace: None,
        }])
    }
}

fn copy<F: Fn(&str, u32) -> bool + Send + Sync + 'static>(fail: F) -> Arc<Copy<F>> {
    Arc::new(Copy {
        fail,
        outage: false,
        tries: Default::default(),
    })
}

/// [`copy`], its failures an outage's (`HandleError::Unavailable`).
fn copy_on_outage<F: Fn(&str, u32) -> bool + Send + Sync + 'static>(fail: F) -> Arc<Copy<F>> {
    Arc::new(Copy {
        fail,
        outage: true,
        tries: Default::default(),
    })
}

/// The payloads of the quarantine stream, in store order, once it holds
/// `n` messages and the input stream is empty (every input acked).
async fn copies(js: &jetstream::Context, n: u64, within: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (out, left) = (
            stored(js, STREAM_QUARANTINE).await,
            stored(js, STREAM_INGEST).await,
        );
        if out >= n && left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{out} of {n} outputs stored, {left} inputs not acked after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stream = js.get_stream(STREAM_QUARANTINE).await.unwrap();
    let mut got = Vec::new();
    for seq in 1..=n {
        let m = stream.get_raw_message(seq).await.unwrap();
        got.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    got
}

async fn publish_inputs(js: &jetstream::Context, n: usize) -> Vec<String> {
    let mut sent = Vec::new();
    for i in 0..n {
        let text = format!("m{i:03}");
        js.publish(INGEST_ACCEPTED, text.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
        sent.push(text);
    }
    sent
}

async fn setup() -> (
    NatsServer,
    jetstream::Context,
    jetstream::consumer::PullConsumer,
) {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    ensure_streams(&js, &StreamSettings::default())
        .await
        .unwrap();
    let consumer =
        interop_bus::streams::stage_consumer(&js, STREAM_INGEST, CONSUMER_ROUTING, INGEST_ACCEPTED)
            .await
            .unwrap();
    (nats, js, consumer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_must_be_retried_keeps_its_place() {
    // One message fails twice (a dependency's hiccup), then everything is
    // down for a while: outputs still leave in input order (docs/adr/0030).
    // Before, the failed message was nak'd with a delay and the ones
    // behind it went ahead.
    let (_nats, js, consumer) = setup().await;
    let sent = publish_inputs(&js, 60).await;
    let down_until = std::time::Instant::now() + Duration::from_millis(1500);
    let handler = copy(move |text: &str, tries| {
        (text == "m010" && tries <= 2) || (text >= "m030" && std::time::Instant::now() < down_until)
    });
    let shutdown = CancellationToken::new();
    let stage = tokio::spawn(run_stage(
        js.clone(),
        consumer,
        handler,
        StageOptions::new("order", &Metrics::default()),
        shutdown.clone(),
    ));
    let got = copies(&js, sent.len() as u64, Duration::from_secs(30)).await;
    assert_eq!(got, sent, "outputs left out of input order");
    shutdown.cancel();
    stage.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_fails_alone_is_let_go_and_holds_nobody_up() {
    // A message that never succeeds while the others do must not stall
    // the stage: it is let go after HOLD_FOR, and the rest flow.
    let (_nats, js, consumer) = setup().await;
    let sent = publish_inputs(&js, 20).await;
    let handler = copy(|text: &str, _| text == "m005");
    let shutdown = CancellationToken::new();
    let stage = tokio::spawn(run_stage(
        js.clone(),
        consumer,
        handler,
        StageOptions::new("poison", &Metrics::default()),
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stored(&js, STREAM_QUARANTINE).await < sent.len() as u64 - 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the others were held up by one failing message"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    stage.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_failing_on_an_outage_keeps_its_place_while_others_pass() {
    // Redis loading its data for longer than HOLD_FOR: the messages that
    // need it fail as unavailable, the ones that do not (receipts) pass.
    // Passing says nothing of the failing ones: they keep their place
    // (before, m005 was let go after HOLD_FOR and came after later
    // messages: out of order, seen in a soak).
    let (_nats, js, consumer) = setup().await;
    let sent = publish_inputs(&js, 40).await;
    let down_until =
        std::time::Instant::now() + interop_bus::stage::HOLD_FOR + Duration::from_secs(3);
    let handler = copy_on_outage(move |text: &str, _| {
        (text == "m005" || ("m020".."m030").contains(&text))
            && std::time::Instant::now() < down_until
    });
    let shutdown = CancellationToken::new();
    let stage = tokio::spawn(run_stage(
        js.clone(),
        consumer,
        handler,
        StageOptions::new("outage", &Metrics::default()),
        shutdown.clone(),
    ));
    let got = copies(&js, sent.len() as u64, Duration::from_secs(40)).await;
    assert_eq!(got, sent, "outputs left out of input order");
    shutdown.cancel();
    stage.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_failing_as_unavailable_after_the_outage_ended_for_others_is_let_go() {
    // m005 fails as unavailable for good; m010 also failed as unavailable
    // and passes after 2 s: the dependency is back for others, so m005's
    // failure is its own, and it is let go HOLD_FOR later.
    let (_nats, js, consumer) = setup().await;
    let sent = publish_inputs(&js, 20).await;
    let down_until = std::time::Instant::now() + Duration::from_secs(2);
    let handler = copy_on_outage(move |text: &str, _| {
        text == "m005" || (text == "m010" && std::time::Instant::now() < down_until)
    });
    let shutdown = CancellationToken::new();
    let stage = tokio::spawn(run_stage(
        js.clone(),
        consumer,
        handler,
        StageOptions::new("outage-over", &Metrics::default()),
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while stored(&js, STREAM_QUARANTINE).await < sent.len() as u64 - 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the others were held up by one message failing after the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    stage.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_stage_handles_what_a_dead_one_had_pulled_first() {
    // An instance pulls 10 messages and dies without acking them; the next
    // instance, with take_over_pending, stores their outputs before those
    // of the messages after them (not 30 s later, after ack_wait), and
    // acks their redeliveries as duplicates.
    let (_nats, js, consumer) = setup().await;
    let sent = publish_inputs(&js, 30).await;
    {
        let mut dead = consumer.fetch().max_messages(10).messages().await.unwrap();
        let mut n = 0;
        while let Some(m) = dead.next().await {
            m.unwrap();
            n += 1;
        }
        assert_eq!(n, 10);
    }
    let mut options = StageOptions::new("take-over", &Metrics::default());
    options.take_over_pending = true;
    let shutdown = CancellationToken::new();
    let stage = tokio::spawn(run_stage(
        js.clone(),
        consumer,
        copy(|_: &str, _| false),
        options,
        shutdown.clone(),
    ));
    // Everything stored in order well within ack_wait (30 s); the inputs
    // left are the 10 pending ones, acked when they come back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stored(&js, STREAM_QUARANTINE).await < sent.len() as u64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all outputs stored within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stream = js.get_stream(STREAM_QUARANTINE).await.unwrap();
    let mut got = Vec::new();
    for seq in 1..=sent.len() as u64 {
        let m = stream.get_raw_message(seq).await.unwrap();
        got.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    assert_eq!(
        got, sent,
        "the dead instance's messages came after later ones"
    );
    shutdown.cancel();
    stage.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_stage_hands_back_what_it_pulled_at_once() {
    // A stage stopped while every message fails (a dependency down) must
    // give them back at once, not leave them to ack_wait (30 s): another
    // instance, started right after, stores them all within seconds.
    let (_nats, js, consumer) = setup().await;
    let sent = publish_inputs(&js, 40).await;
    let shutdown = CancellationToken::new();
    let first = tokio::spawn(run_stage(
        js.clone(),
        consumer.clone(),
        copy(|_: &str, _| true),
        StageOptions::new("stopping", &Metrics::default()),
        shutdown.clone(),
    ));
    // It has them all (pulled, held in place).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = consumer.get_info().await.unwrap();
        if info.num_ack_pending == sent.len() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not pulled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("the stopping stage did not return within 5 s")
        .unwrap()
        .unwrap();
    let shutdown = CancellationToken::new();
    let second = tokio::spawn(run_stage(
        js.clone(),
        consumer,
        copy(|_: &str, _| false),
        StageOptions::new("after", &Metrics::default()),
        shutdown.clone(),
    ));
    let got = copies(&js, sent.len() as u64, Duration::from_secs(8)).await;
    assert_eq!(got, sent);
    shutdown.cancel();
    second.await.unwrap().unwrap();
}
