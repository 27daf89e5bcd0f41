//! Metrics and readiness, scraped over HTTP from each service's admin port.

use std::time::Duration;

use interop_client::{text_envelope, Receiver, SendOutcome, Sender};
use interop_e2e::{http_get, metric_value, Cluster, HOME_TOKEN, SIGNAL_TOKEN};

const BOB: &str = "home:+4915112345678";

async fn scrape(c: &Cluster, service: &str) -> String {
    let (status, body) = http_get(&format!("{}/metrics", c.gateway.admin_url(service)))
        .await
        .unwrap();
    assert_eq!(status, 200);
    body
}

/// Waits until `sample` in `service`'s metrics equals `want`.
async fn expect_metric(c: &Cluster, service: &str, sample: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(c, service).await;
        let got = metric_value(&text, sample);
        if got == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{service}: {sample} is {got:?}, want {want}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_counts_what_went_through_it() {
    let c = Cluster::start().await;
    let home = Sender::connect(&c.gateway.ingest_url, "home", HOME_TOKEN)
        .await
        .unwrap();
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    let mut bob = Receiver::connect(&c.gateway.delivery_url, "home", HOME_TOKEN, BOB, "p")
        .await
        .unwrap();
    let alice = Sender::connect(&c.gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    const N: u64 = 7;
    for i in 0..N {
        let out = alice
            .send(text_envelope(&format!("m{i}"), "signal:alice", BOB, "hi"))
            .await
            .unwrap();
        assert!(matches!(out, SendOutcome::Accepted(_)));
    }
    let too_long = alice
        .send(text_envelope(
            "long",
            "signal:alice",
            BOB,
            &"x".repeat(5000),
        ))
        .await
        .unwrap();
    assert!(matches!(too_long, SendOutcome::Rejected(_)));
    for _ in 0..N {
        let d = tokio::time::timeout(Duration::from_secs(10), bob.next())
            .await
            .unwrap()
            .unwrap();
        bob.ack(&[d.delivery_tag]).await.unwrap();
    }
    let n = N as f64;
    expect_metric(&c, "ingest", "interop_ingest_accepted_total", n).await;
    expect_metric(
        &c,
        "ingest",
        "interop_ingest_rejected_total{code=\"REJECT_CODE_TOO_LONG\"}",
        1.0,
    )
    .await;
    expect_metric(&c, "ingest", "interop_ingest_consent_updates_total", 1.0).await;
    expect_metric(&c, "ingest", "interop_ingest_store_seconds_count", n).await;
    expect_metric(&c, "spam-scoring", "interop_spam_scoring_messages_total", n).await;
    expect_metric(
        &c,
        "spam-scoring",
        "interop_spam_scoring_verdicts_total{verdict=\"VERDICT_ALLOW\"}",
        n,
    )
    .await;
    // Scored in one request or several (routing batches what is waiting).
    let requests = metric_value(
        &scrape(&c, "spam-scoring").await,
        "interop_spam_scoring_requests_total",
    )
    .unwrap_or(0.0);
    assert!((1.0..=n).contains(&requests), "{requests} score requests");
    expect_metric(&c, "routing", "interop_routing_messages_in_total", n).await;
    expect_metric(&c, "routing", "interop_routing_messages_out_total", n).await;
    expect_metric(&c, "routing", "interop_routing_dead_lettered_total", 0.0).await;
    expect_metric(
        &c,
        "media-transcoding",
        "interop_media_transcoding_messages_in_total",
        0.0,
    )
    .await;
    expect_metric(&c, "delivery", "interop_delivery_sessions", 1.0).await;
    expect_metric(&c, "delivery", "interop_delivery_delivered_total", n).await;
    expect_metric(&c, "delivery", "interop_delivery_acked_total", n).await;
    expect_metric(&c, "delivery", "interop_delivery_receipts_total", n).await;
    // Consumer lag is polled every 5 s; everything was consumed.
    expect_metric(
        &c,
        "routing",
        "interop_routing_consumer_pending_messages",
        0.0,
    )
    .await;
    bob.close().await;
    expect_metric(&c, "delivery", "interop_delivery_sessions", 0.0).await;
    // No user, address or message id in any label.
    for (service, _) in &c.gateway.admin {
        let text = scrape(&c, service).await;
        assert!(
            !text.contains("4915112345678") && !text.contains("alice"),
            "{service}: {text}"
        );
    }
}

async fn ready(c: &Cluster, service: &str) -> u16 {
    http_get(&format!("{}/readyz", c.gateway.admin_url(service)))
        .await
        .map(|(s, _)| s)
        .unwrap_or(0)
}

async fn wait_ready(c: &Cluster, want: u16, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut states = Vec::new();
        for (service, _) in &c.gateway.admin {
            states.push((*service, ready(c, service).await));
        }
        if states.iter().all(|(_, s)| *s == want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness {states:?}, want all {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_nats_and_the_pipeline_recovers_by_itself() {
    let mut c = Cluster::start().await;
    wait_ready(&c, 200, Duration::from_secs(5)).await;
    let (status, body) = http_get(&format!("{}/healthz", c.gateway.admin_url("routing")))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    c.nats.stop();
    wait_ready(&c, 503, Duration::from_secs(10)).await;
    c.nats.restart();
    wait_ready(&c, 200, Duration::from_secs(30)).await;
    // And messages flow again, with no manual action.
    let home = Sender::connect(&c.gateway.ingest_url, "home", HOME_TOKEN)
        .await
        .unwrap();
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    let alice = Sender::connect(&c.gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let accepted = loop {
        match alice
            .send(text_envelope("after", "signal:alice", BOB, "back"))
            .await
            .unwrap()
        {
            SendOutcome::Accepted(a) => break a,
            SendOutcome::Rejected(r) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still rejected: {r:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let mut bob = Receiver::connect(&c.gateway.delivery_url, "home", HOME_TOKEN, BOB, "p")
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(20), bob.next())
        .await
        .expect("delivered after the restart")
        .unwrap();
    assert_eq!(d.envelope.message_id, accepted.message_id);
}
