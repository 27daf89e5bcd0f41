//! Delivery benchmarks of issue 5 (figures in docs/benchmarks.md):
//!
//! - [`idle_sessions`]: opens N delivery sessions that receive nothing and
//!   reports the delivery process's resident memory before and after, per
//!   session (the process id is given; its `/proc/<pid>/status` is read).
//! - [`group_fanout`]: creates a group of M members (all with an open
//!   session), sends messages to it at a fixed rate, and reports the latency
//!   from each send to each member's receipt of it.
//!
//! Both only talk to a gateway on this machine's loopback, bounded in count
//! and time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

use interop_client::{group_text_envelope, GroupOutcome, Receiver, SendOutcome, Sender};

/// Resident memory of a process, in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line")
}

/// What [`idle_sessions`] measured.
#[derive(Debug, serde::Serialize)]
pub struct IdleReport {
    pub sessions: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_session: f64,
    pub connect_seconds: f64,
}

/// Opens `count` sessions for users `<provider>:<prefix><i>` (home users get
/// E.164 numbers), `concurrency` connects at a time, waits `settle`, and
/// measures the delivery process `pid`. The sessions are closed on return.
pub async fn idle_sessions(
    delivery_url: &str,
    provider: &str,
    token: &str,
    count: usize,
    concurrency: usize,
    pid: u32,
    settle: Duration,
) -> anyhow::Result<IdleReport> {
    let rss_before_kib = rss_kib(pid)?;
    let started = Instant::now();
    let mut sessions = Vec::with_capacity(count);
    let mut connecting = FuturesUnordered::new();
    let mut next = 0usize;
    while sessions.len() < count {
        while next < count && connecting.len() < concurrency {
            let user = user(provider, next);
            let (url, provider, token) = (
                delivery_url.to_owned(),
                provider.to_owned(),
                token.to_owned(),
            );
            connecting.push(async move {
                Receiver::connect(&url, &provider, &token, &user, "idle").await
            });
            next += 1;
        }
        match connecting.next().await {
            Some(Ok(rx)) => sessions.push(rx),
            Some(Err(e)) => bail!("session {} did not open: {e}", sessions.len()),
            None => break,
        }
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let rss_after_kib = rss_kib(pid)?;
    let report = IdleReport {
        sessions: sessions.len(),
        rss_before_kib,
        rss_after_kib,
        kib_per_session: (rss_after_kib.saturating_sub(rss_before_kib)) as f64
            / sessions.len().max(1) as f64,
        connect_seconds,
    };
    drop(sessions);
    Ok(report)
}

fn user(provider: &str, i: usize) -> String {
    if provider == "home" {
        format!("home:+4917{:09}", i)
    } else {
        format!("{provider}:bench{i}")
    }
}

/// What [`group_fanout`] measured (milliseconds).
#[derive(Debug, serde::Serialize)]
pub struct FanoutReport {
    pub members: usize,
    pub messages: usize,
    pub deliveries: u64,
    pub missing: u64,
    /// From the send to each member's receipt of it.
    pub delivery_p50_ms: f64,
    pub delivery_p99_ms: f64,
    pub delivery_max_ms: f64,
    /// From the send to the last member's receipt of it.
    pub complete_p50_ms: f64,
    pub complete_p99_ms: f64,
}

/// Creates a group of `members` (the sender `<sender_provider>:bench-sender`
/// plus `members - 1` users of `member_provider`, all opted in), opens a
/// session per member, sends `warmup` messages (not measured), then sends
/// `messages` at `rate` per second and measures.
#[allow(clippy::too_many_arguments)]
pub async fn group_fanout(
    ingest_url: &str,
    delivery_url: &str,
    sender_provider: &str,
    sender_token: &str,
    member_provider: &str,
    member_token: &str,
    members: usize,
    messages: usize,
    rate: f64,
    warmup: usize,
) -> anyhow::Result<FanoutReport> {
    let sender = Sender::connect(ingest_url, sender_provider, sender_token).await?;
    let member_admin = Sender::connect(ingest_url, member_provider, member_token).await?;
    let from = format!("{sender_provider}:bench-sender");
    let others: Vec<String> = (0..members.saturating_sub(1))
        .map(|i| user(member_provider, 100_000 + i))
        .collect();
    for m in &others {
        member_admin
            .set_consent(m, true, &[sender_provider])
            .await?;
    }
    let group = match sender.create_group(&from, &others).await? {
        GroupOutcome::Updated(g) => g,
        GroupOutcome::Rejected(r) => bail!("group refused: {r:?}"),
    };
    // client message id → when it was sent.
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut histogram = Histogram::<u64>::new(3)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut tasks = Vec::new();
    for m in &others {
        let mut session =
            Receiver::connect(delivery_url, member_provider, member_token, m, "bench")
                .await
                .with_context(|| "opening a member session")?;
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(d) = session.next().await {
                let at = Instant::now();
                if session.ack(&[d.delivery_tag]).await.is_err() {
                    break;
                }
                if tx.send((d.envelope.client_message_id, at)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    // Let every session settle, then warm up (not measured): the first
    // message wakes every idle session, which opens its store consumer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Client message ids unique to this run (and group): the same sender
    // re-using an id within 24 h gets the first message's server id back,
    // and nothing new is sent (idempotency).
    let run = group.group_id.clone();
    for i in 0..warmup {
        sender
            .send(group_text_envelope(
                &format!("{run}-warm{i}"),
                &from,
                &group.group_id,
                "warm-up",
            ))
            .await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(if warmup > 0 { 3 } else { 0 })).await;
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let start = tokio::time::Instant::now();
    for i in 0..messages {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let id = format!("{run}-fan{i}");
        sent.lock().await.insert(id.clone(), Instant::now());
        match sender
            .send(group_text_envelope(&id, &from, &group.group_id, "fan-out"))
            .await?
        {
            SendOutcome::Accepted(_) => {}
            SendOutcome::Rejected(r) => bail!("send refused: {r:?}"),
        }
    }
    let expected = (messages * others.len()) as u64;
    let mut deliveries = 0u64;
    let mut last: HashMap<String, Instant> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while deliveries < expected {
        let Ok(Some((id, at))) = tokio::time::timeout_at(deadline, rx.recv()).await else {
            break;
        };
        let Some(t0) = sent.lock().await.get(&id).copied() else {
            continue;
        };
        deliveries += 1;
        histogram.record(at.duration_since(t0).as_micros() as u64)?;
        let e = last.entry(id).or_insert(at);
        *e = (*e).max(at);
    }
    let mut complete = Histogram::<u64>::new(3)?;
    let sent = sent.lock().await;
    for (id, at) in &last {
        if let Some(t0) = sent.get(id) {
            complete.record(at.duration_since(*t0).as_micros() as u64)?;
        }
    }
    for t in tasks {
        t.abort();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(FanoutReport {
        members,
        messages,
        deliveries,
        missing: expected - deliveries,
        delivery_p50_ms: ms(histogram.value_at_quantile(0.5)),
        delivery_p99_ms: ms(histogram.value_at_quantile(0.99)),
        delivery_max_ms: ms(histogram.max()),
        complete_p50_ms: ms(complete.value_at_quantile(0.5)),
        complete_p99_ms: ms(complete.value_at_quantile(0.99)),
    })
}
