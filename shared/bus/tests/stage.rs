//! The stage loop against the real nats-server: what every pipeline stage
//! relies on.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

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
