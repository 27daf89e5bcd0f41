//! routing's handling of an ingest batch (docs/adr/0019) with a real
//! nats-server, redis-server and spam-scoring: one message that must be
//! retried, or can never be routed, holds up none of the others.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use interop_bus::pipeline::BATCH_HEADER;
use interop_bus::subjects::INGEST_ACCEPTED;
use interop_bus::{HandleError, Handler, Input, Outgoing};
use interop_proto::v1::{
    envelope, AcceptedBatch, Envelope, PipelineMessage, SpamVerdict, Text, Verdict,
};
use interop_routing::score::ScoreClient;
use interop_routing::Router;
use interop_spam_scoring::serve::ServeMetrics;
use interop_spam_scoring::{Policy, Scorer};
use interop_telemetry::metrics::Metrics;
use interop_test_support::{NatsServer, RedisServer};

fn message(i: usize, to: &str) -> PipelineMessage {
    PipelineMessage {
        envelope: Some(Envelope {
            message_id: format!("m{i}"),
            from: format!("signal:+49151000{i:05}"),
            to: to.into(),
            content: Some(envelope::Content::Text(Text {
                body: format!("see you at eight, {i}"),
            })),
            ..Default::default()
        }),
        sender_provider: "signal".into(),
        ..Default::default()
    }
}

struct World {
    _nats: NatsServer,
    _redis: RedisServer,
    /// spam-scoring's own Redis, when it has one (`world_with_spam_redis`).
    spam_redis: Option<RedisServer>,
    redis: redis::aio::ConnectionManager,
    router: Router,
    dead_lettered: Counter,
    _stop: tokio_util::sync::DropGuard,
}

async fn world() -> World {
    world_with(false).await
}

/// spam-scoring on a Redis of its own, which a test can stop while
/// routing's keeps answering.
async fn world_with_spam_redis() -> World {
    world_with(true).await
}

async fn connect(server: &RedisServer) -> redis::aio::ConnectionManager {
    redis::aio::ConnectionManager::new(redis::Client::open(server.url()).unwrap())
        .await
        .unwrap()
}

async fn world_with(spam_redis_apart: bool) -> World {
    let nats = NatsServer::start();
    let redis_server = RedisServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let redis = connect(&redis_server).await;
    let spam_redis = spam_redis_apart.then(RedisServer::start);
    let spam_conn = match &spam_redis {
        Some(server) => connect(server).await,
        None => redis.clone(),
    };
    let metrics = Metrics::default();
    let stop = CancellationToken::new();
    let scorer = Arc::new(Scorer::new(
        spam_conn,
        Arc::new(Policy::default()),
        Arc::new(interop_spam_classifier::embedded_model().unwrap()),
        &metrics,
    ));
    tokio::spawn(interop_spam_scoring::serve::serve(
        client.clone(),
        scorer,
        ServeMetrics::register(&metrics),
        stop.clone(),
    ));
    client.flush().await.unwrap();
    let dead_lettered = Counter::default();
    let js = async_nats::jetstream::new(client.clone());
    interop_bus::ensure_streams(&js, &interop_bus::StreamSettings::default())
        .await
        .unwrap();
    let records = interop_state::Records::open(js, redis.clone())
        .await
        .unwrap();
    let router = Router::new(
        records,
        client.clone(),
        ScoreClient::start(client, Duration::from_secs(2)),
        &metrics,
        dead_lettered.clone(),
    );
    World {
        _nats: nats,
        _redis: redis_server,
        spam_redis,
        redis,
        router,
        dead_lettered,
        _stop: stop.drop_guard(),
    }
}

/// A recipient whose consent record is unreadable (not a hash): routing
/// cannot decide for them and must retry.
async fn break_consent(w: &World, address: &str) {
    let mut r = w.redis.clone();
    redis::cmd("SET")
        .arg(interop_state::keys::consent(address))
        .arg("not a hash")
        .query_async::<()>(&mut r)
        .await
        .unwrap();
}

async fn route(w: &World, messages: Vec<PipelineMessage>) -> Result<Vec<Outgoing>, HandleError> {
    let mut headers = HeaderMap::new();
    headers.insert(BATCH_HEADER, messages.len().to_string().as_str());
    let payload = Bytes::from(
        AcceptedBatch {
            messages,
            traces: Vec::new(),
        }
        .encode_to_vec(),
    );
    w.router
        .handle(Input {
            subject: INGEST_ACCEPTED,
            headers: Some(&headers),
            payload: &payload,
            delivered: 1,
            stream_sequence: 7,
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_message_failing_on_an_outage_goes_back_whole() {
    // spam-scoring's Redis is down: a message still to be scored fails on
    // the outage while the messages scored before are routed. Storing it
    // again alone would put it behind its sender's later messages; the
    // whole batch goes back to the stage instead, to keep its place.
    let mut w = world_with_spam_redis().await;
    w.spam_redis.as_mut().expect("its own Redis").stop();
    let scored = |i: usize| PipelineMessage {
        verdict: Some(SpamVerdict {
            verdict: Verdict::Allow as i32,
            ..Default::default()
        }),
        ..message(i, "home:+4915100000001")
    };
    let batch = vec![scored(1), message(2, "home:+4915100000001"), scored(3)];
    let out = route(&w, batch).await;
    assert!(
        matches!(out, Err(HandleError::Unavailable { .. })),
        "{out:?}"
    );
    // The scored ones alone are routed (a FAILED receipt each: nobody
    // opted in): routing's own Redis answers.
    let out = route(&w, vec![scored(1), scored(3)]).await;
    assert_eq!(out.expect("routed").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_a_batch_that_must_be_retried_is_stored_again_alone() {
    let w = world().await;
    break_consent(&w, "home:+4915100000002").await;
    let batch = vec![
        message(1, "home:+4915100000001"),
        message(2, "home:+4915100000002"),
        message(3, "home:+4915100000003"),
    ];
    let out = route(&w, batch.clone()).await.expect("the batch is routed");
    // Messages 1 and 3: nobody opted in, so a FAILED receipt each; message
    // 2: back into the accepted stream, alone, under an id a redelivered
    // batch repeats.
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(
        out[0]
            .msg_id
            .starts_with("receipt-RECEIPT_STATUS_FAILED-m1"),
        "{:?}",
        out[0]
    );
    assert_eq!(out[1].subject, INGEST_ACCEPTED);
    assert_eq!(out[1].msg_id, "retry-7-1");
    assert_eq!(
        PipelineMessage::decode(out[1].payload.clone()).unwrap(),
        batch[1]
    );
    assert!(
        out[2]
            .msg_id
            .starts_with("receipt-RECEIPT_STATUS_FAILED-m3"),
        "{:?}",
        out[2]
    );

    // Nothing routable at all: the whole batch waits for the stage's delay.
    break_consent(&w, "home:+4915100000001").await;
    let out = route(&w, batch[..2].to_vec()).await;
    assert!(matches!(out, Err(HandleError::Retry { .. })), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_a_batch_that_can_never_be_routed_is_dead_lettered_alone() {
    let w = world().await;
    let no_envelope = PipelineMessage {
        sender_provider: "signal".into(),
        ..Default::default()
    };
    let batch = vec![
        message(1, "home:+4915100000001"),
        no_envelope,
        message(3, "home:+4915100000003"),
    ];
    let out = route(&w, batch).await.expect("the batch is routed");
    let ids: Vec<&str> = out.iter().map(|o| o.msg_id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        ids[0].starts_with("receipt-RECEIPT_STATUS_FAILED-m1")
            && ids[1].starts_with("receipt-RECEIPT_STATUS_FAILED-m3")
    );
    assert_eq!(w.dead_lettered.get(), 1);
}
