//! One message is one trace across all five services: the services export
//! spans over OTLP/HTTP to an in-process receiver, and the trace context
//! rides in NATS headers.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

use interop_client::{text_envelope, Receiver, SendOutcome, Sender};
use interop_e2e::{Cluster, HOME_TOKEN, SIGNAL_TOKEN};
use interop_proto::v1::{envelope::Content, Media};

const BOB: &str = "home:+4915112345678";

type Spans = Arc<Mutex<Vec<(Vec<u8>, String)>>>;

/// An OTLP/HTTP receiver: records (trace id, span name) of every span.
async fn receiver() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let s = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: bytes::Bytes| {
            let s = s.clone();
            async move {
                let req =
                    ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
                let mut s = s.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            s.push((span.trace_id, span.name));
                        }
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_one_trace_through_all_five_services_alone_or_in_a_batch() {
    let (endpoint, spans) = receiver().await;
    let options = interop_telemetry::Options {
        filter: "warn".into(),
        otlp_endpoint: Some(endpoint),
        sample_ratio: 1.0,
        ..interop_telemetry::Options::new("interop-e2e")
    };
    let guard = interop_telemetry::init(options).unwrap();
    let c = Cluster::start().await;
    let home = Sender::connect(&c.gateway.ingest_url, "home", HOME_TOKEN)
        .await
        .unwrap();
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    // The media id is not an upload, so media-transcoding answers with a
    // FAILED receipt, which delivery pushes to Alice: the same trace.
    let mut alice_inbox = Receiver::connect(
        &c.gateway.delivery_url,
        "signal",
        SIGNAL_TOKEN,
        "signal:alice",
        "p",
    )
    .await
    .unwrap();
    let alice = Sender::connect(&c.gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    let mut env = text_envelope("pic", "signal:alice", BOB, "");
    env.content = Some(Content::Media(Media {
        media_id: "m-1".into(),
        content_type: "image/png".into(),
        size: 10,
        ..Default::default()
    }));
    assert!(matches!(
        alice.send(env).await.unwrap(),
        SendOutcome::Accepted(_)
    ));
    let d = tokio::time::timeout(Duration::from_secs(10), alice_inbox.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(d.envelope.content, Some(Content::Receipt(_))));
    alice_inbox.ack(&[d.delivery_tag]).await.unwrap();

    let want = [
        "ingest send",
        "spam-scoring score",
        "routing handle",
        "media-transcoding handle",
        "delivery deliver",
    ];
    until_spans(&guard, &spans, |spans| {
        let sends = sends(spans);
        let complete = sends
            .iter()
            .any(|trace| want.iter().all(|name| in_trace(spans, trace, name)));
        if !complete {
            return Err(format!("spans received: {spans:?}"));
        }
        assert_eq!(sends.len(), 1, "one send, one trace");
        Ok(())
    })
    .await;

    // Sends gathered into one stream message (docs/adr/0019) each stay
    // their own trace through routing into delivery.
    const SENDERS: usize = 10;
    const EACH: usize = 3;
    let mut bob = Receiver::connect(&c.gateway.delivery_url, "home", HOME_TOKEN, BOB, "p")
        .await
        .unwrap();
    for s in 0..SENDERS {
        // Accepted contacts: no message requests, whatever the spam policy.
        home.respond_to_request(
            BOB,
            &format!("signal:b{s}"),
            interop_proto::v1::RequestAction::Accept,
        )
        .await
        .unwrap();
    }
    let before = interop_e2e::ingest_published(&c.nats.url()).await;
    let mut pending = Vec::new();
    for i in 0..EACH {
        for s in 0..SENDERS {
            let env = text_envelope(&format!("b{s}-{i}"), &format!("signal:b{s}"), BOB, "hi");
            pending.push(alice.submit(env).await.unwrap());
        }
    }
    for p in pending {
        assert!(matches!(
            p.outcome().await.unwrap(),
            SendOutcome::Accepted(_)
        ));
    }
    let stored = interop_e2e::ingest_published(&c.nats.url()).await - before;
    assert!(
        stored < (SENDERS * EACH) as u64,
        "no batch: {stored} stream messages"
    );
    for _ in 0..SENDERS * EACH {
        let d = tokio::time::timeout(Duration::from_secs(10), bob.next())
            .await
            .unwrap()
            .unwrap();
        bob.ack(&[d.delivery_tag]).await.unwrap();
    }
    until_spans(&guard, &spans, |spans| {
        let sends = sends(spans);
        let broken = sends
            .iter()
            .filter(|t| !in_trace(spans, t, "delivery deliver"))
            .count();
        if sends.len() != 1 + SENDERS * EACH || broken > 0 {
            return Err(format!(
                "{} sends, {broken} without their delivery span in their trace",
                sends.len()
            ));
        }
        assert!(
            sends
                .iter()
                .filter(|t| in_trace(spans, t, "routing route"))
                .count()
                >= 2,
            "no message was routed in a batch"
        );
        Ok(())
    })
    .await;
}

/// The trace ids of the sends (ingest's spans).
fn sends(spans: &[(Vec<u8>, String)]) -> Vec<&Vec<u8>> {
    spans
        .iter()
        .filter(|(_, n)| n == "ingest send")
        .map(|(t, _)| t)
        .collect()
}

/// Whether trace `trace` has a span named `name`.
fn in_trace(spans: &[(Vec<u8>, String)], trace: &[u8], name: &str) -> bool {
    spans.iter().any(|(t, n)| t == trace && n == name)
}

/// Flushes the exporter and reads the spans received until `check` passes;
/// after 15 s fails with `check`'s last complaint.
async fn until_spans(
    guard: &interop_telemetry::Guard,
    spans: &Spans,
    check: impl Fn(&[(Vec<u8>, String)]) -> Result<(), String>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        guard.flush();
        let received = spans.lock().unwrap().clone();
        let Err(complaint) = check(&received) else {
            return;
        };
        assert!(tokio::time::Instant::now() < deadline, "{complaint}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
