//! Provider sessions on delivery (issue 22, docs/adr/0031): one connection
//! receives every user of its provider in batches; several split the
//! partitions between them and take over what one leaves, losing nothing
//! and keeping each user's order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use interop_client::provider::{Batch, ProviderReceiver};
use interop_client::{text_envelope, Sender};
use interop_e2e::{HOME_TOKEN, SIGNAL_TOKEN};
use interop_proto::v1::{envelope, ReceiptStatus};

use crate::common::{opt_in, poll, send_ok, store_of};
use crate::delivery::{delivery, pipeline, Pipeline};

const WAIT: Duration = Duration::from_secs(20);

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("home:+49151000{i:04}")).collect()
}

/// Who writes to `user`: a sender of their own (one stranger writing to
/// dozens of users would be scored as spam).
fn sender_of(user: &str) -> String {
    format!("signal:from{}", user.trim_start_matches("home:+"))
}

/// `per_user` messages to each user from their sender, interleaved; the
/// server ids each user should get, in order.
async fn send_to_all(
    p: &Pipeline,
    users: &[String],
    per_user: usize,
    tag: &str,
) -> BTreeMap<String, Vec<String>> {
    let alice = Sender::connect(&p.ingest, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..per_user {
        for u in users {
            let cmid = format!("{tag}-{}-{i}", u.trim_start_matches("home:+"));
            let from = sender_of(u);
            let a = send_ok(&alice, text_envelope(&cmid, &from, u, "hi")).await;
            want.entry(u.clone()).or_default().push(a.message_id);
        }
    }
    want
}

/// Receives batches until `until` says enough, acking each when `ack`.
async fn receive(
    rx: &mut ProviderReceiver,
    ack: bool,
    mut until: impl FnMut(&[Batch]) -> bool,
) -> Vec<Batch> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while !until(&got) {
            let b = rx.next_batch().await.unwrap();
            if b.batch_tag == 0 {
                continue;
            }
            if ack {
                rx.ack(&[b.batch_tag]).await.unwrap();
            }
            got.push(b);
        }
    })
    .await
    .unwrap_or_else(|_| {
        let seen: BTreeMap<String, usize> = per_user(&got)
            .into_iter()
            .map(|(u, ids)| (u, ids.len()))
            .collect();
        panic!("timed out; got {} batches: {seen:?}", got.len())
    });
    got
}

fn count(batches: &[Batch]) -> usize {
    batches.iter().map(|b| b.messages.len()).sum()
}

/// Each user's server ids in the order received.
fn per_user(batches: &[Batch]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in batches {
        for m in &b.messages {
            assert_eq!(m.user, m.envelope.to, "a message names its user");
            assert_eq!(
                interop_bus::partition_of_key(&interop_bus::recipient_key(&m.user)),
                b.partition,
                "a batch holds one partition's users"
            );
            out.entry(m.user.clone())
                .or_default()
                .push(m.envelope.message_id.clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_provider_session_gets_every_users_messages_in_batches_and_its_acks_count() {
    let p = pipeline().await;
    let (d, _, _) = delivery(&p).await;
    let users = users(12);
    for u in &users {
        opt_in(&p.ingest, u, &["signal"]).await;
    }
    let want = send_to_all(&p, &users, 5, "a").await;

    let mut rx = ProviderReceiver::connect(&d, "home", HOME_TOKEN)
        .await
        .unwrap();
    assert_eq!(rx.welcome().partitions, 64);
    assert_eq!(rx.welcome().max_unacked_batches, 32);
    assert_eq!(rx.welcome().max_unacked_batches_per_partition, 2);
    let owned = tokio::time::timeout(WAIT, rx.next_assignment())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owned.len(), 64, "alone, a session owns every partition");
    let got = receive(&mut rx, true, |b| count(b) >= 60).await;
    assert_eq!(count(&got), 60);
    assert_eq!(
        per_user(&got),
        want,
        "every message once, each user's in order"
    );
    // Messages of several users travel together: fewer batches than
    // messages.
    assert!(got.len() < 60, "{} batches for 60 messages", got.len());

    // A message stored now comes live.
    let more = send_to_all(&p, &users[..1], 1, "b").await;
    let live = receive(&mut rx, true, |b| count(b) >= 1).await;
    assert_eq!(per_user(&live), more);

    // The acks wrote the senders' DELIVERED receipts.
    let nats = p.nats.url();
    poll("61 delivered receipts", WAIT, || async {
        let mut delivered = 0;
        for u in &users {
            delivered += store_of(&nats, &sender_of(u))
                .await
                .iter()
                .filter(|e| {
                    matches!(&e.content, Some(envelope::Content::Receipt(r)) if r.status() == ReceiptStatus::Delivered)
                })
                .count();
        }
        (delivered == 61).then_some(())
    })
    .await;

    // Closed cleanly, the partitions' cursors are stored: a new session
    // starts after what was acked.
    rx.close().await;
    let mut again = ProviderReceiver::connect(&d, "home", HOME_TOKEN)
        .await
        .unwrap();
    let last = send_to_all(&p, &users[1..2], 1, "c").await;
    let next = receive(&mut again, true, |b| count(b) >= 1).await;
    assert_eq!(per_user(&next), last, "nothing acked before came again");
    assert_eq!(again.duplicates(), 0);
    p.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_two_replicas_split_the_partitions_and_one_leaving_unacked_loses_nothing() {
    let p = pipeline().await;
    let (d1, _, _) = delivery(&p).await;
    let (d2, _, _) = delivery(&p).await;
    let users = users(24);
    for u in &users {
        opt_in(&p.ingest, u, &["signal"]).await;
    }
    let mut first = ProviderReceiver::connect(&d1, "home", HOME_TOKEN)
        .await
        .unwrap();
    let mut second = ProviderReceiver::connect(&d2, "home", HOME_TOKEN)
        .await
        .unwrap();
    // Once both heartbeats are read, the partitions are split: each owns
    // some, none is owned twice, none by nobody.
    let split = tokio::time::timeout(WAIT, async {
        loop {
            let (a, b) = (first.partitions().to_vec(), second.partitions().to_vec());
            let (sa, sb): (BTreeSet<u32>, BTreeSet<u32>) =
                (a.iter().copied().collect(), b.iter().copied().collect());
            if !a.is_empty() && !b.is_empty() && sa.is_disjoint(&sb) && a.len() + b.len() == 64 {
                return (sa, sb);
            }
            tokio::select! {
                r = first.next_assignment() => { r.unwrap(); }
                r = second.next_assignment() => { r.unwrap(); }
            }
        }
    })
    .await
    .expect("the partitions are split between the two sessions");
    assert!(split.0.len() >= 16 && split.1.len() >= 16, "{split:?}");

    let want = send_to_all(&p, &users, 6, "s").await;
    let total: usize = want.values().map(Vec::len).sum();
    let mine = |u: &String, set: &BTreeSet<u32>| {
        set.contains(&interop_bus::partition_of_key(&interop_bus::recipient_key(
            u,
        )))
    };
    let first_share: usize = want
        .iter()
        .filter(|(u, _)| mine(u, &split.0))
        .map(|(_, ids)| ids.len())
        .sum();
    assert!(first_share > 0, "the first session's partitions hold users");
    // The first session takes a batch and leaves without acking it (its
    // connection drops).
    let taken = receive(&mut first, false, |b| !b.is_empty()).await;
    assert!(count(&taken) > 0);
    drop(first);
    // The second gets every message: its own partitions', and the first's
    // from their cursors (what the first had un-acked comes again).
    let got = receive(&mut second, true, |b| {
        per_user(b).values().map(Vec::len).sum::<usize>() >= total
    })
    .await;
    assert_eq!(per_user(&got), want, "lost 0, each user's order kept");
    assert_eq!(
        second.partitions().len(),
        64,
        "the second owns everything now"
    );
    p.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_stopped_renewing_keeps_its_partitions_only_until_its_leases_run_out() {
    let p = pipeline().await;
    let (d, _, _) = delivery(&p).await;
    let users = users(4);
    for u in &users {
        opt_in(&p.ingest, u, &["signal"]).await;
    }
    let want = send_to_all(&p, &users, 3, "g").await;
    // A session on a replica that died: its heartbeat still counts for 2 s,
    // its leases for 4 s, and nobody renews them.
    let js = async_nats::jetstream::new(async_nats::connect(p.nats.url()).await.unwrap());
    let now = interop_proto::now_ms();
    js.publish(
        interop_bus::subjects::provider_member("home", "ghost"),
        (now + 2_000).to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    for partition in 0..64 {
        js.publish(
            interop_bus::subjects::provider_lease("home", partition),
            format!("ghost {}", now + 4_000).into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let started = Instant::now();
    let mut rx = ProviderReceiver::connect(&d, "home", HOME_TOKEN)
        .await
        .unwrap();
    let got = receive(&mut rx, true, |b| count(b) >= 12).await;
    assert!(
        started.elapsed() >= Duration::from_millis(3_500),
        "nothing before the ghost's leases ran out ({:?})",
        started.elapsed()
    );
    assert_eq!(per_user(&got), want);
    p.shutdown.cancel();
}

/// `n` users of `all`, each in a partition of its own and none in `not_in`'s.
fn in_distinct_partitions(all: &[String], n: usize, not_in: Option<&String>) -> Vec<String> {
    let part = |u: &String| interop_bus::partition_of_key(&interop_bus::recipient_key(u));
    let mut out: Vec<String> = Vec::new();
    for u in all {
        if out.len() < n
            && not_in.is_none_or(|o| part(o) != part(u))
            && out.iter().all(|o| part(o) != part(u))
        {
            out.push(u.clone());
        }
    }
    assert_eq!(out.len(), n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_hold_at_most_256_messages_and_at_most_2_of_a_partition_go_unacked() {
    let p = pipeline().await;
    let (d, _, _) = delivery(&p).await;
    // One user with 520 messages waiting (more than two full batches), and
    // five more users in five other partitions with one each.
    let all = users(200);
    let busy = all[0].clone();
    let part = |u: &String| interop_bus::partition_of_key(&interop_bus::recipient_key(u));
    let others = in_distinct_partitions(&all[1..], 5, Some(&busy));
    for u in std::iter::once(&busy).chain(&others) {
        opt_in(&p.ingest, u, &["signal"]).await;
    }
    let mut want = send_to_all(&p, std::slice::from_ref(&busy), 520, "many").await;
    want.extend(send_to_all(&p, &others, 1, "one").await);

    let mut rx = ProviderReceiver::connect(&d, "home", HOME_TOKEN)
        .await
        .unwrap();
    // Two batches of the busy partition and one of each other come
    // un-acked, then nothing.
    let held = receive(&mut rx, false, |b| b.len() >= 7).await;
    let more = tokio::time::timeout(Duration::from_millis(1_500), rx.next_batch()).await;
    assert!(more.is_err(), "an eighth batch came before an ack");
    let busy_held: Vec<&Batch> = held.iter().filter(|b| b.partition == part(&busy)).collect();
    assert_eq!(busy_held.len(), 2, "two un-acked of one partition");
    // Acking one of the busy partition lets one more of it come.
    rx.ack(&[busy_held[0].batch_tag]).await.unwrap();
    let third = tokio::time::timeout(WAIT, rx.next_batch())
        .await
        .expect("a batch after the ack")
        .unwrap();
    assert_eq!(third.partition, part(&busy));
    rx.ack(&[third.batch_tag]).await.unwrap();
    let tags: Vec<u64> = held
        .iter()
        .map(|b| b.batch_tag)
        .filter(|t| *t != busy_held[0].batch_tag)
        .collect();
    rx.ack(&tags).await.unwrap();
    let mut got = held;
    got.push(third);
    let total: usize = want.values().map(Vec::len).sum();
    let rest = receive(&mut rx, true, |b| count(&got) + count(b) >= total).await;
    got.extend(rest);
    assert!(
        got.iter().all(|b| b.messages.len() <= 256),
        "{:?}",
        got.iter().map(|b| b.messages.len()).collect::<Vec<_>>()
    );
    assert_eq!(per_user(&got), want);
    p.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_32_batches_go_unacked_across_partitions() {
    let p = pipeline().await;
    let (d, _, _) = delivery(&p).await;
    // 40 users in 40 partitions, one message each: 40 batches are ready.
    let spread = in_distinct_partitions(&users(400), 40, None);
    for u in &spread {
        opt_in(&p.ingest, u, &["signal"]).await;
    }
    let want = send_to_all(&p, &spread, 1, "spread").await;
    let mut rx = ProviderReceiver::connect(&d, "home", HOME_TOKEN)
        .await
        .unwrap();
    let held = receive(&mut rx, false, |b| b.len() >= 32).await;
    let more = tokio::time::timeout(Duration::from_millis(1_500), rx.next_batch()).await;
    assert!(more.is_err(), "a 33rd batch came before an ack");
    rx.ack(&[held[0].batch_tag]).await.unwrap();
    let next = tokio::time::timeout(WAIT, rx.next_batch())
        .await
        .expect("a batch after the ack")
        .unwrap();
    let mut tags: Vec<u64> = held[1..].iter().map(|b| b.batch_tag).collect();
    tags.push(next.batch_tag);
    rx.ack(&tags).await.unwrap();
    let mut got = held;
    got.push(next);
    let rest = receive(&mut rx, true, |b| count(&got) + count(b) >= 40).await;
    got.extend(rest);
    assert_eq!(per_user(&got), want);
    p.shutdown.cancel();
}
