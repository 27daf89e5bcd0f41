//! The reference ceiling: what this machine's NATS server does with the
//! naive shape of our pipeline and no logic at all.
//!
//! `hops` durable JetStream hops in a chain, on temporary streams of their
//! own (`LOADTEST_CEILING_<tag>_<n>`, subjects `loadtest.ceiling.<tag>.<n>`,
//! work-queue retention, file storage, like the pipeline's): a publisher
//! fills the first stream; hop `n` pulls from stream `n`, republishes each
//! message to stream `n + 1` and acks its input once the republish is
//! stored; the last hop only acks. By default without `Nats-Msg-Id` (the
//! bare shape: publish, pull, republish, ack, nothing else); `msg_id` adds the
//! server-side de-duplication the stages use.
//! Each hop has a NATS connection of its own, like each service.
//! Throughput is messages through the whole chain per second. The streams
//! are deleted afterwards, also when the measurement fails.
//!
//! Each consumer has one `filter_subject` (nats-server 2.9 compatible).

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;

/// Prefix of the temporary streams' names.
pub const STREAM_PREFIX: &str = "LOADTEST_CEILING_";
/// Prefix of their subjects.
pub const SUBJECT_PREFIX: &str = "loadtest.ceiling.";

/// What to measure.
#[derive(Debug, Clone)]
pub struct CeilingOptions {
    pub nats_url: String,
    /// Messages pushed through the chain.
    pub messages: u64,
    pub payload_bytes: usize,
    pub hops: usize,
    /// Give up after this long.
    pub timeout: Duration,
    /// Publish with `Nats-Msg-Id` (server-side de-duplication), as the
    /// pipeline's stages do; off, the chain is the bare naive shape.
    pub msg_id: bool,
}

impl CeilingOptions {
    pub fn new(nats_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            messages: 100_000,
            payload_bytes: 256,
            hops: 4,
            timeout: Duration::from_secs(120),
            msg_id: false,
        }
    }
}

/// The measured ceiling.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct CeilingReport {
    pub msgs_per_s: f64,
    pub messages: u64,
    pub hops: usize,
    pub payload_bytes: usize,
    pub elapsed_s: f64,
    pub msg_id: bool,
    pub nats_server_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CeilingError {
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("JetStream {what}: {detail}")]
    JetStream { what: &'static str, detail: String },
    #[error("the chain did not finish {messages} messages within {timeout:?}")]
    Timeout { messages: u64, timeout: Duration },
    #[error("options: {0}")]
    Options(&'static str),
}

fn js_err(what: &'static str, e: impl std::fmt::Display) -> CeilingError {
    CeilingError::JetStream {
        what,
        detail: e.to_string(),
    }
}

fn stream_name(tag: &str, hop: usize) -> String {
    format!("{STREAM_PREFIX}{tag}_{hop}")
}

fn subject(tag: &str, hop: usize) -> String {
    format!("{SUBJECT_PREFIX}{tag}.{hop}")
}

/// Measures the ceiling; `tag` names this measurement's streams
/// (`[A-Za-z0-9_-]`).
pub async fn measure(options: &CeilingOptions, tag: &str) -> Result<CeilingReport, CeilingError> {
    if options.hops == 0 || options.messages == 0 || options.payload_bytes == 0 {
        return Err(CeilingError::Options(
            "hops, messages and payload must be > 0",
        ));
    }
    let client = async_nats::connect(&options.nats_url)
        .await
        .map_err(|source| CeilingError::Connect {
            url: options.nats_url.clone(),
            source,
        })?;
    let version = client.server_info().version;
    let js = jetstream::new(client.clone());
    let result = tokio::time::timeout(options.timeout, chain(&js, options, tag)).await;
    // Delete the streams whatever happened (a missing one is fine).
    for hop in 0..options.hops {
        js.delete_stream(stream_name(tag, hop)).await.ok();
    }
    client.flush().await.ok();
    let elapsed = match result {
        Ok(r) => r?,
        Err(_) => {
            return Err(CeilingError::Timeout {
                messages: options.messages,
                timeout: options.timeout,
            })
        }
    };
    Ok(CeilingReport {
        msgs_per_s: options.messages as f64 / elapsed.as_secs_f64(),
        messages: options.messages,
        hops: options.hops,
        payload_bytes: options.payload_bytes,
        elapsed_s: elapsed.as_secs_f64(),
        msg_id: options.msg_id,
        nats_server_version: version,
    })
}

/// Publish acks awaited at once, per publisher and per hop.
const WINDOW: usize = 1024;

async fn chain(
    js: &jetstream::Context,
    options: &CeilingOptions,
    tag: &str,
) -> Result<Duration, CeilingError> {
    let mut consumers = Vec::new();
    for hop in 0..options.hops {
        let s = js
            .create_stream(stream::Config {
                name: stream_name(tag, hop),
                subjects: vec![subject(tag, hop)],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                max_age: Duration::from_secs(3600),
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| js_err("creating a stream", e))?;
        let c = s
            .create_consumer(consumer::pull::Config {
                durable_name: Some(format!("hop{hop}")),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                filter_subject: subject(tag, hop),
                max_ack_pending: 4096,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err("creating a consumer", e))?;
        consumers.push(c);
    }
    // Each hop has its own connection, as each service of the pipeline is
    // its own process.
    let mut hop_contexts = Vec::new();
    for _ in 0..options.hops {
        let client = async_nats::connect(&options.nats_url)
            .await
            .map_err(|source| CeilingError::Connect {
                url: options.nats_url.clone(),
                source,
            })?;
        hop_contexts.push(jetstream::new(client));
    }
    let start = Instant::now();
    let mut hops = Vec::new();
    for (hop, (c, hop_js)) in consumers.into_iter().zip(hop_contexts).enumerate() {
        let next = (hop + 1 < options.hops).then(|| subject(tag, hop + 1));
        hops.push(tokio::spawn(run_hop(
            hop_js,
            c,
            next,
            options.messages,
            options.msg_id,
        )));
    }
    let payload = Bytes::from(vec![b'x'; options.payload_bytes]);
    let first = subject(tag, 0);
    let mut acks: FuturesUnordered<
        <jetstream::context::PublishAckFuture as IntoFuture>::IntoFuture,
    > = FuturesUnordered::new();
    for i in 0..options.messages {
        if acks.len() >= WINDOW {
            if let Some(r) = acks.next().await {
                r.map_err(|e| js_err("publishing", e))?;
            }
        }
        let mut headers = async_nats::HeaderMap::new();
        if options.msg_id {
            headers.insert("Nats-Msg-Id", format!("c{i}").as_str());
        }
        let ack = js
            .publish_with_headers(first.clone(), headers, payload.clone())
            .await
            .map_err(|e| js_err("publishing", e))?;
        acks.push(ack.into_future());
    }
    while let Some(r) = acks.next().await {
        r.map_err(|e| js_err("publishing", e))?;
    }
    for h in hops {
        h.await.map_err(|e| js_err("a hop task", e))??;
    }
    Ok(start.elapsed())
}

/// One hop: pull, republish (if not last), ack once the republish is stored.
async fn run_hop(
    js: jetstream::Context,
    consumer: consumer::PullConsumer,
    next: Option<String>,
    messages: u64,
    msg_id: bool,
) -> Result<(), CeilingError> {
    let mut incoming = consumer
        .stream()
        .max_messages_per_batch(512)
        .messages()
        .await
        .map_err(|e| js_err("pulling", e))?;
    let mut seen = 0u64;
    let mut settling = FuturesUnordered::new();
    while seen < messages || !settling.is_empty() {
        tokio::select! {
            Some(done) = settling.next(), if !settling.is_empty() => {
                let done: Result<(), CeilingError> = done;
                done?;
            }
            m = incoming.next(), if seen < messages && settling.len() < WINDOW => {
                let m = match m {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return Err(js_err("pulling", e)),
                    None => return Err(CeilingError::JetStream { what: "pulling", detail: "the pull stream ended".into() }),
                };
                seen += 1;
                let republish = match &next {
                    Some(subject) => {
                        let mut headers = async_nats::HeaderMap::new();
                        if msg_id {
                            let id = m.info().map(|i| i.stream_sequence).unwrap_or(seen);
                            headers.insert("Nats-Msg-Id", format!("c{id}").as_str());
                        }
                        Some(
                            js.publish_with_headers(subject.clone(), headers, m.payload.clone())
                                .await
                                .map_err(|e| js_err("republishing", e))?,
                        )
                    }
                    None => None,
                };
                settling.push(async move {
                    if let Some(ack) = republish {
                        ack.await.map_err(|e| js_err("republishing", e))?;
                    }
                    m.ack().await.map_err(|e| js_err("acking", e))
                });
            }
        }
    }
    Ok(())
}
