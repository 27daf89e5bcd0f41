//! What removing one recipient's oldest messages from the store stream costs
//! on this machine's nats-server, and how long it holds up everybody else's
//! writes meanwhile (docs/adr/0027, docs/benchmarks.md). A full store's
//! room is made by removing what the recipient's devices acked; this
//! measures the mechanisms it could use, on a store stream of `--messages`
//! messages interleaved over `--recipients` subjects (as many recipients
//! receiving at once do):
//!
//! - **purge by sequence**: a subject-filtered purge up to a sequence (what
//!   `make_room` sent until 2026-12-08: everything acked);
//! - **purge keeping**: a subject-filtered purge keeping the newest `n`
//!   (removes the oldest);
//! - **find and purge 256**: the subject's 256 oldest messages read by an
//!   ordered consumer (headers only), then a purge up to the last of them,
//!   again and again;
//! - **oldest + window purge**: the subject's oldest message got (one
//!   request), then a purge up to 32,768 stream sequences past it, again
//!   and again.
//!
//! - **discard old**: the stream's own per-subject limit with `discard:
//!   old`, JetStream removing the subject's oldest inside each write past
//!   it (what the store does now), against as many writes below the limit,
//!   warm and after a restart;
//! - **count**: `store::room_now`, what a publisher does before writing
//!   into a store (its undelivered messages counted), with a device's
//!   cursor 5, about 100 and all of the subject's messages behind.
//!
//! `make_room`'s purge is gone: it held every write to the stream, and
//! both bounded designs failed in a soak (docs/adr/0027, "Finding" and
//! "Decision 2, amended").
//!
//! Each removes `--remove` messages of one subject. Meanwhile a probe
//! publishes into another store subject every 2 ms; the slowest probe
//! acknowledgement is how long the stream stood still for everybody.
//!
//! `cargo run --release -p interop-bus --example purge_cost -- --messages 400000`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use interop_bus::subjects::{delivery_queued, STREAM_INBOX};

/// The window of the window purge, in stream sequences.
const WINDOW: u64 = 32_768;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn subject(i: u64) -> String {
    delivery_queued(&interop_bus::recipient_path(&format!(
        "home:+4915100{i:06}"
    )))
}

/// Publishes into a store subject every 2 ms until `stop`; the slowest
/// acknowledgement, in microseconds.
fn probe(js: jetstream::Context, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let worst = AtomicU64::new(0);
        let probe = subject(999_999);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            n += 1;
            let ok = async {
                js.publish(probe.clone(), format!("probe {n}").into())
                    .await?
                    .await
                    .map_err(async_nats::Error::from)
            }
            .await;
            if ok.is_ok() {
                worst.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        worst.load(Ordering::Relaxed)
    })
}

/// Runs `op` with the probe going; prints its time and the probe's worst.
async fn measure<F: std::future::Future<Output = anyhow::Result<u64>>>(
    js: &jetstream::Context,
    name: &str,
    op: F,
) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let p = probe(js.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let removed = op.await?;
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let worst = p.await?;
    println!(
        "  {name:<22} removed {removed:>6} in {:>9.1} ms   slowest write meanwhile {:>9.1} ms",
        took.as_secs_f64() * 1e3,
        worst as f64 / 1e3
    );
    Ok(())
}

/// The sequences of the `n` oldest messages of `subject`, read as
/// the first bounded design read them: an ordered consumer, headers only, deleted
/// after.
async fn oldest(
    stream: &jetstream::stream::Stream,
    subject: &str,
    n: u64,
) -> anyhow::Result<Vec<u64>> {
    use futures_util::StreamExt as _;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            headers_only: true,
            max_batch: 256,
            ..Default::default()
        })
        .await?;
    let name = consumer.cached_info().name.clone();
    let mut messages = consumer.messages().await?;
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < n {
        let m = messages
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("the consumer ended"))??;
        seqs.push(
            m.info()
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .stream_sequence,
        );
    }
    drop(messages);
    stream.delete_consumer(&name).await?;
    Ok(seqs)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let messages = arg("--messages", 400_000);
    let recipients = arg("--recipients", 50);
    let remove = arg("--remove", 1_000);
    let size = arg("--size", 1_200) as usize;
    let mut nats = interop_test_support::NatsServer::start();
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client);
    let settings = interop_bus::StreamSettings {
        inbox_max_per_recipient: i64::MAX,
        ..Default::default()
    };
    interop_bus::ensure_streams(&js, &settings).await?;
    let stream = js.get_stream(STREAM_INBOX).await?;

    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let fill = Instant::now();
    let mut acks = Vec::with_capacity(1024);
    for i in 0..messages {
        acks.push(js.publish(subject(i % recipients), payload.clone()).await?);
        if acks.len() == 1024 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks.drain(..) {
        a.await?;
    }
    let mut info = js.get_stream(STREAM_INBOX).await?;
    let state = info.info().await?.state.clone();
    println!(
        "store stream: {} messages, {:.0} MB, {} subjects interleaved, filled in {:.1} s; removing {remove} of one subject each:",
        state.messages,
        state.bytes as f64 / 1e6,
        recipients,
        fill.elapsed().as_secs_f64()
    );

    // Subject 0: purge up to the sequence after its `remove`-th message.
    let s0 = subject(0);
    let upto = *oldest(&stream, &s0, remove).await?.last().unwrap_or(&0);
    measure(&js, "purge by sequence", async {
        Ok(stream.purge().filter(&s0).sequence(upto + 1).await?.purged)
    })
    .await?;
    // Subject 1: purge keeping all but the oldest `remove`.
    let s1 = subject(1);
    let count = messages / recipients;
    measure(&js, "purge keeping", async {
        Ok(stream
            .purge()
            .filter(&s1)
            .keep(count - remove)
            .await?
            .purged)
    })
    .await?;
    // Subject 2: find the 256 oldest (an ordered consumer, headers only)
    // and purge up to the last of them, again and again (the finding is
    // timed too).
    let s2 = subject(2);
    measure(&js, "find and purge 256", async {
        let mut removed = 0;
        while removed < remove {
            let seqs = oldest(&stream, &s2, 256.min(remove - removed)).await?;
            let last = *seqs.last().unwrap_or(&0);
            removed += stream.purge().filter(&s2).sequence(last + 1).await?.purged;
        }
        Ok(removed)
    })
    .await?;
    // Subject 3: the oldest message found (one request), then a purge up
    // to at most `WINDOW` stream sequences past it, again and again.
    let s3 = subject(3);
    let mut rounds = 0;
    measure(&js, "oldest + window purge", async {
        let mut removed = 0;
        while removed < remove {
            let first = stream
                .get_first_raw_message_by_subject(&s3, 1)
                .await?
                .sequence;
            removed += stream
                .purge()
                .filter(&s3)
                .sequence(first + WINDOW)
                .await?
                .purged;
            rounds += 1;
        }
        Ok(removed)
    })
    .await?;
    println!("    ({rounds} rounds)");
    // Subject 4: purge by sequence again, the blocks now read once.
    let s4 = subject(4);
    let upto = *oldest(&stream, &s4, remove).await?.last().unwrap_or(&0);
    measure(&js, "purge by sequence (2)", async {
        Ok(stream.purge().filter(&s4).sequence(upto + 1).await?.purged)
    })
    .await?;

    // Subject 5: JetStream's own per-subject limit with `discard: old`
    // (the server removes the subject's oldest on each write past the
    // limit). First `remove` writes with no limit reached (the baseline),
    // then the limit set to the subject's count and `remove` more, each
    // removing one; then the same after a restart (cold blocks).
    let s5 = subject(5);
    measure(&js, "writes, no limit", write_n(&js, &s5, &payload, remove)).await?;
    let mut config = stream.cached_info().config.clone();
    config.discard = jetstream::stream::DiscardPolicy::Old;
    config.discard_new_per_subject = false;
    config.max_messages_per_subject = (count + remove) as i64;
    let t = Instant::now();
    js.update_stream(&config).await?;
    println!(
        "    (limit set in {:.1} ms)",
        t.elapsed().as_secs_f64() * 1e3
    );
    let before = first_of(&stream, &s5).await?;
    measure(
        &js,
        "writes, discard old",
        write_n(&js, &s5, &payload, remove),
    )
    .await?;
    let after = first_of(&stream, &s5).await?;
    println!("    (first of the subject {before} -> {after})");
    // What a publisher's count of a store's undelivered messages costs
    // (`store::room_now`: the cursors, then the undelivered read one by
    // one, or past 16 a consumer's pending count): with the device's
    // cursor 5 of the subject's messages behind (a recipient online), 100
    // behind, and far behind (one offline for long). The stream's last
    // sequences are subject 5's (the writes above) but for the probe's.
    let last = stream.get_last_raw_message_by_subject(&s5).await?.sequence;
    for (name, cursor) in [
        ("count, 5 undelivered", last - 5),
        ("count, ~100 undelivered", last - 100),
        ("count, cursor far back", after + 1),
    ] {
        set_cursor(&js, 5, cursor).await?;
        measure(&js, name, async {
            let n = 50;
            let t = Instant::now();
            let mut slowest = Duration::ZERO;
            let mut room = 0;
            for _ in 0..n {
                let one = Instant::now();
                room = interop_bus::store::room_now(&js, &s5)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                slowest = slowest.max(one.elapsed());
            }
            println!(
                "    ({n} counts, {:.2} ms each, slowest {:.1} ms; room {room})",
                t.elapsed().as_secs_f64() * 1e3 / n as f64,
                slowest.as_secs_f64() * 1e3
            );
            Ok(0)
        })
        .await?;
    }
    nats.restart();
    let client = async_nats::connect(nats.url()).await?;
    let js = jetstream::new(client);
    let t = Instant::now();
    let room = interop_bus::store::room_now(&js, &s5)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "  first count after the restart (cursor far back) {:.1} ms, room {room}",
        t.elapsed().as_secs_f64() * 1e3
    );
    measure(
        &js,
        "discard old, restarted",
        write_n(&js, &s5, &payload, remove),
    )
    .await?;
    Ok(())
}

/// Sets device "phone" of recipient `i`'s cursor to `seq`.
async fn set_cursor(js: &jetstream::Context, i: u64, seq: u64) -> anyhow::Result<()> {
    let key = interop_bus::recipient_key(&format!("home:+4915100{i:06}"));
    js.publish(
        interop_bus::subjects::delivery_acked(&key, "phone"),
        seq.to_string().into(),
    )
    .await?
    .await?;
    Ok(())
}

/// The sequence of the oldest message of `subject`.
async fn first_of(stream: &jetstream::stream::Stream, subject: &str) -> anyhow::Result<u64> {
    Ok(stream
        .get_first_raw_message_by_subject(subject, 1)
        .await?
        .sequence)
}

/// Writes `n` messages into `subject` one after the other; prints the
/// slowest acknowledgement. Returns 0 (it removes nothing itself).
async fn write_n(
    js: &jetstream::Context,
    subject: &str,
    payload: &bytes::Bytes,
    n: u64,
) -> anyhow::Result<u64> {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        js.publish(subject.to_owned(), payload.clone())
            .await?
            .await?;
        slowest = slowest.max(t.elapsed());
    }
    println!(
        "    (slowest of these writes {:.1} ms)",
        slowest.as_secs_f64() * 1e3
    );
    Ok(0)
}
