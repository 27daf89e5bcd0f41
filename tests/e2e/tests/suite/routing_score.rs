//! routing's score client against spam-scoring's request/reply side, with
//! a real nats-server and redis-server: no spam-scoring means a retry (the
//! message stays in the stream), and concurrent messages share requests.

use std::sync::Arc;
use std::time::Duration;

use interop_bus::subjects::SPAM_SCORE_MAX_MESSAGES;
use interop_bus::HandleError;
use interop_proto::v1::{envelope, Envelope, PipelineMessage, Text, Verdict};
use interop_routing::score::ScoreClient;
use interop_spam_scoring::serve::ServeMetrics;
use interop_spam_scoring::{Policy, Scorer};
use interop_telemetry::metrics::Metrics;
use interop_test_support::{NatsServer, RedisServer};
use tokio_util::sync::CancellationToken;

fn message(i: usize) -> PipelineMessage {
    PipelineMessage {
        envelope: Some(Envelope {
            message_id: format!("m{i}"),
            from: format!("signal:+49151000{i:05}"),
            to: "home:+4915112345678".into(),
            content: Some(envelope::Content::Text(Text {
                body: format!("see you at eight, {i}"),
            })),
            ..Default::default()
        }),
        sender_provider: "signal".into(),
        ..Default::default()
    }
}

async fn scorer(redis_url: &str, metrics: &Metrics) -> Arc<Scorer> {
    let client = redis::Client::open(redis_url).unwrap();
    let redis = redis::aio::ConnectionManager::new(client).await.unwrap();
    Arc::new(Scorer::new(
        redis,
        Arc::new(Policy::default()),
        Arc::new(interop_spam_classifier::embedded_model().unwrap()),
        metrics,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_spam_scoring_a_message_is_retried_and_with_it_scored_in_batches() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let scores = ScoreClient::start(client.clone(), Duration::from_millis(500));

    // Nobody answers: a retry, never a verdict or a dead letter.
    let out = scores.score(message(0)).await;
    assert!(
        matches!(out, Err(HandleError::Unavailable { .. })),
        "{:?}",
        out.map(|v| v.verdict)
    );

    // spam-scoring starts answering.
    let metrics = Metrics::default();
    let serve_metrics = ServeMetrics::register(&metrics);
    let stop = CancellationToken::new();
    let server = tokio::spawn(interop_spam_scoring::serve::serve(
        client.clone(),
        scorer(&redis.url(), &metrics).await,
        serve_metrics.clone(),
        stop.clone(),
    ));
    client.flush().await.unwrap();
    let one = scores.score(message(0)).await.unwrap();
    assert_eq!(one.verdict, Verdict::Allow as i32, "{one:?}");

    // 200 at once: every one gets its own verdict, in fewer requests.
    let before = serve_metrics.requests.get();
    let all = futures_util::future::join_all((1..=200).map(|i| scores.score(message(i)))).await;
    assert!(all.iter().all(|v| v.is_ok()), "every message scored");
    let requests = serve_metrics.requests.get() - before;
    assert!(requests < 200, "{requests} requests for 200 messages");
    assert_eq!(serve_metrics.messages.get(), 201);

    stop.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_batch_limit_is_refused_whole_and_one_at_it_is_scored() {
    let redis = RedisServer::start();
    let metrics = Metrics::default();
    let scorer = scorer(&redis.url(), &metrics).await;
    let request = |n: usize| {
        prost::Message::encode_to_vec(&interop_proto::v1::ScoreRequest {
            messages: (0..n).map(message).collect(),
            traces: Vec::new(),
        })
    };
    let at_limit =
        interop_spam_scoring::serve::answer(&scorer, &request(SPAM_SCORE_MAX_MESSAGES)).await;
    assert_eq!(at_limit.results.len(), SPAM_SCORE_MAX_MESSAGES);
    assert!(at_limit.results.iter().all(|r| r.verdict.is_some()));
    let over =
        interop_spam_scoring::serve::answer(&scorer, &request(SPAM_SCORE_MAX_MESSAGES + 1)).await;
    assert_eq!(over.results.len(), SPAM_SCORE_MAX_MESSAGES + 1);
    assert!(over
        .results
        .iter()
        .all(|r| r.verdict.is_none() && r.permanent_reason.contains("at most 256")));
    // Garbage gets no results (routing then retries the batch).
    let garbage = interop_spam_scoring::serve::answer(&scorer, b"\xff\xff\xff").await;
    assert!(garbage.results.is_empty());
}
