//! Issue 22, item 1 (ingest): provider sessions' `Transaction` frames, end
//! to end. Many frames for many users of a provider in one WebSocket
//! message, answered with one `TransactionResult` (one answer per item, in
//! item order, an item's refusal leaving the others); the sends stored and
//! delivered in item order; the whole frame refused when empty or over 256
//! items; a re-sent transaction answered `duplicate` for what was accepted;
//! the one-to-one sends' Redis checks made in one round trip; and
//! `interop send-many`.

use std::collections::HashMap;

use interop_client::transaction::{
    get_consent_item, send_item, set_consent_item, TransactionOutcome,
};
use interop_client::{text_envelope, Receiver, Sender};
use interop_e2e::{http_get, metric_value, Cluster};
use interop_proto::limits::MAX_TRANSACTION_ITEMS;
use interop_proto::v1::{
    client_frame, server_frame, Accepted, ClientFrame, Envelope, Hello, Inbox, MarkRead,
    RejectCode, Rejected, ServerFrame, Transaction,
};

use crate::common::{accepted, nothing_within, opt_in, receiver, sender, within};

const BOB: &str = "home:+4915112345678";
const CAROL: &str = "home:+4915112345679";
const DAN: &str = "signal:dan";
const TOM: &str = "telegram:tom";

/// A send item from `from` to `to` with client message id `cmid`.
fn send(request_id: u64, cmid: &str, from: &str, to: &str) -> ClientFrame {
    send_item(
        request_id,
        text_envelope(cmid, from, to, &format!("text of {cmid}")),
    )
}

/// A raw item (`Hello`, `MarkRead`, a nested transaction, ...).
fn item(request_id: u64, frame: client_frame::Frame) -> ClientFrame {
    ClientFrame {
        request_id,
        frame: Some(frame),
    }
}

/// The answers of a transaction that was not refused whole.
async fn transact(s: &Sender, items: Vec<ClientFrame>) -> Vec<ServerFrame> {
    let ids: Vec<u64> = items.iter().map(|i| i.request_id).collect();
    match within("a transaction's answer", s.transact(items))
        .await
        .expect("an answer")
    {
        TransactionOutcome::Answered(answers) => {
            let echoed: Vec<u64> = answers.iter().map(|a| a.request_id).collect();
            assert_eq!(echoed, ids, "one answer per item, in item order");
            answers
        }
        TransactionOutcome::Rejected(r) => panic!("the transaction was refused: {r:?}"),
    }
}

fn accepted_answer(a: &ServerFrame) -> &Accepted {
    match &a.frame {
        Some(server_frame::Frame::Accepted(x)) => x,
        other => panic!("expected Accepted, got {other:?}"),
    }
}

fn rejected_answer(a: &ServerFrame) -> &Rejected {
    match &a.frame {
        Some(server_frame::Frame::Rejected(r)) => r,
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// The whole transaction's refusal.
async fn refused(s: &Sender, items: Vec<ClientFrame>) -> Rejected {
    match within("a transaction's answer", s.transact(items))
        .await
        .expect("an answer")
    {
        TransactionOutcome::Rejected(r) => r,
        TransactionOutcome::Answered(a) => panic!("expected a refusal, got {} answers", a.len()),
    }
}

/// Receives (and acks) `n` messages for `rx`; their envelopes in delivery
/// order.
async fn receive(rx: &mut Receiver, n: usize) -> Vec<Envelope> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let d = within("a delivery", rx.next())
            .await
            .expect("the session is open");
        rx.ack(&[d.delivery_tag]).await.expect("ack");
        out.push(d.envelope);
    }
    out
}

/// The client message ids each sender's messages came with, in the order
/// they came (order is promised per sender: docs/protocol.md, "Order").
fn by_sender(envelopes: &[Envelope]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for e in envelopes {
        out.entry(e.from.clone())
            .or_default()
            .push(e.client_message_id.clone());
    }
    out
}

async fn scrape(c: &Cluster) -> String {
    let (status, body) = http_get(&format!("{}/metrics", c.gateway.admin_url("ingest")))
        .await
        .expect("ingest's metrics");
    assert_eq!(status, 200);
    body
}

/// Ingest's Redis round trips for frames' checks so far.
async fn redis_checks(c: &Cluster) -> f64 {
    metric_value(&scrape(c).await, "interop_ingest_redis_checks_total").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_for_many_users_answers_each_item_and_delivers_each_senders_sends_in_order() {
    let c = Cluster::start().await;
    opt_in(&c.gateway.ingest_url, BOB, &["signal"]).await;
    opt_in(&c.gateway.ingest_url, CAROL, &["signal"]).await;
    opt_in(&c.gateway.ingest_url, DAN, &["home"]).await;
    let signal = sender(&c.gateway.ingest_url, "signal").await;
    assert_eq!(signal.max_transaction_items(), MAX_TRANSACTION_ITEMS);
    let mut bob = receiver(&c.gateway.delivery_url, BOB, "phone").await;
    let mut carol = receiver(&c.gateway.delivery_url, CAROL, "phone").await;

    // Six senders, four rounds, to Bob and Carol in turn; consent items,
    // bad items and a client message id sent twice in between.
    let senders: Vec<String> = (0..6).map(|u| format!("signal:u{u}")).collect();
    let mut items = Vec::new();
    let mut rid = 100;
    let mut next = || {
        rid += 1;
        rid
    };
    items.push(set_consent_item(
        next(),
        "signal:u0",
        true,
        &["home"],
        Inbox::Combined,
    ));
    let mut expected: HashMap<&str, HashMap<String, Vec<String>>> = HashMap::new();
    for round in 0..4 {
        for (u, from) in senders.iter().enumerate() {
            let to = if (round + u) % 2 == 0 { BOB } else { CAROL };
            let cmid = format!("tx-{u}-{round}");
            items.push(send(next(), &cmid, from, to));
            expected
                .entry(to)
                .or_default()
                .entry(from.clone())
                .or_default()
                .push(cmid);
        }
        if round == 1 {
            items.push(get_consent_item(next(), DAN));
            // Not signal's user.
            items.push(send(next(), "tx-tom", TOM, BOB));
            items.push(item(next(), client_frame::Frame::Hello(Hello::default())));
            items.push(item(
                next(),
                client_frame::Frame::MarkRead(MarkRead::default()),
            ));
            items.push(item(
                next(),
                client_frame::Frame::Transaction(Transaction {
                    items: vec![send(1, "tx-nested", "signal:u0", BOB)],
                }),
            ));
            // The first round's first send again: a re-send of it.
            items.push(send(next(), "tx-0-0", &senders[0], BOB));
        }
    }
    let n_sends = 6 * 4;
    let checks_before = redis_checks(&c).await;
    let answers = transact(&signal, items.clone()).await;
    let checks_after = redis_checks(&c).await;

    let mut first_ids: HashMap<String, String> = HashMap::new();
    for (i, answer) in items.iter().zip(&answers) {
        match &i.frame {
            Some(client_frame::Frame::SetConsent(_)) => assert!(
                matches!(&answer.frame, Some(server_frame::Frame::ConsentUpdated(u)) if u.user == "signal:u0" && u.opted_in),
                "{answer:?}"
            ),
            Some(client_frame::Frame::GetConsent(_)) => assert!(
                matches!(&answer.frame, Some(server_frame::Frame::ConsentState(s)) if s.user == DAN && s.opted_in),
                "{answer:?}"
            ),
            Some(client_frame::Frame::Send(s)) => {
                let env = s.envelope.as_ref().expect("an envelope");
                if env.from == TOM {
                    let r = rejected_answer(answer);
                    assert_eq!(r.code(), RejectCode::SenderNotOwned, "{r:?}");
                    assert_eq!(r.client_message_id, "tx-tom");
                    continue;
                }
                let a = accepted_answer(answer);
                assert_eq!(a.client_message_id, env.client_message_id);
                match first_ids.get(&a.client_message_id) {
                    // The client message id sent twice: the first's id.
                    Some(first) => {
                        assert!(a.duplicate, "{a:?}");
                        assert_eq!(&a.message_id, first);
                    }
                    None => {
                        assert!(!a.duplicate, "{a:?}");
                        first_ids.insert(a.client_message_id.clone(), a.message_id.clone());
                    }
                }
            }
            Some(_) => {
                let r = rejected_answer(answer);
                assert_eq!(r.code(), RejectCode::UnsupportedFrame, "{r:?}");
            }
            None => unreachable!(),
        }
    }
    assert_eq!(first_ids.len(), n_sends);
    // All 25 one-to-one sends (the repeated one included) were checked in
    // one Redis round trip.
    assert_eq!(checks_after - checks_before, 1.0, "Redis round trips");

    // Each recipient gets each message once, each sender's in item order.
    for (rx, user) in [(&mut bob, BOB), (&mut carol, CAROL)] {
        let want = &expected[user];
        let n: usize = want.values().map(Vec::len).sum();
        let got = receive(rx, n).await;
        assert_eq!(&by_sender(&got), want, "{user}");
        for e in &got {
            assert_eq!(e.message_id, first_ids[&e.client_message_id]);
        }
        nothing_within(rx, 300).await;
    }

    let metrics = scrape(&c).await;
    assert_eq!(
        metric_value(&metrics, "interop_ingest_transactions_total"),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&metrics, "interop_ingest_transaction_items_total"),
        Some(items.len() as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_keep_the_connections_order_and_lone_sends_share_round_trips() {
    let c = Cluster::start().await;
    opt_in(&c.gateway.ingest_url, BOB, &["signal"]).await;
    let alice = sender(&c.gateway.ingest_url, "signal").await;
    let mut bob = receiver(&c.gateway.delivery_url, BOB, "phone").await;
    const ALICE: &str = "signal:alice";

    // Lone sends before and after a transaction, all pipelined on one
    // connection: stored in the order they were sent.
    let checks_before = redis_checks(&c).await;
    let mut before = Vec::new();
    for i in 0..5 {
        before.push(
            alice
                .submit(text_envelope(&format!("a-{i}"), ALICE, BOB, "before"))
                .await
                .expect("written"),
        );
    }
    let items: Vec<ClientFrame> = (0..10)
        .map(|i| send(i, &format!("b-{i}"), ALICE, BOB))
        .collect();
    let (answers, after) = tokio::join!(transact(&alice, items), async {
        let mut after = Vec::new();
        for i in 0..5 {
            after.push(
                alice
                    .submit(text_envelope(&format!("c-{i}"), ALICE, BOB, "after"))
                    .await
                    .expect("written"),
            );
        }
        after
    });
    for p in before.into_iter().chain(after) {
        accepted(p.outcome().await.expect("an answer"));
    }
    for a in &answers {
        accepted_answer(a);
    }
    let checks = redis_checks(&c).await - checks_before;
    // The transaction's ten, one round trip; the ten lone sends at most one
    // each, fewer when they wait together (`send_checks`).
    assert!((2.0..=11.0).contains(&checks), "{checks} Redis round trips");

    let got: Vec<String> = receive(&mut bob, 20)
        .await
        .into_iter()
        .map(|e| e.client_message_id)
        .collect();
    let want: Vec<String> = (0..5)
        .map(|i| format!("a-{i}"))
        .chain((0..10).map(|i| format!("b-{i}")))
        .chain((0..5).map(|i| format!("c-{i}")))
        .collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_oversized_transactions_are_refused_whole_and_256_items_pass() {
    let c = Cluster::start().await;
    opt_in(&c.gateway.ingest_url, BOB, &["signal"]).await;
    let signal = sender(&c.gateway.ingest_url, "signal").await;

    let r = refused(&signal, Vec::new()).await;
    assert_eq!(r.code(), RejectCode::MissingField, "{r:?}");
    // Eight senders, 32 sends each: within every limit.
    let full = |prefix: &str, n: usize| -> Vec<ClientFrame> {
        (0..n)
            .map(|i| {
                send(
                    i as u64,
                    &format!("{prefix}-{i}"),
                    &format!("signal:s{}", i % 8),
                    BOB,
                )
            })
            .collect()
    };
    let r = refused(&signal, full("over", MAX_TRANSACTION_ITEMS + 1)).await;
    assert_eq!(r.code(), RejectCode::TooLong, "{r:?}");
    let answers = transact(&signal, full("full", MAX_TRANSACTION_ITEMS)).await;
    assert_eq!(answers.len(), MAX_TRANSACTION_ITEMS);
    for a in &answers {
        assert!(!accepted_answer(a).duplicate);
    }
    // Nothing of the refused ones was stored: the 256 only.
    let mut bob = receiver(&c.gateway.delivery_url, BOB, "phone").await;
    let got = receive(&mut bob, MAX_TRANSACTION_ITEMS).await;
    assert!(got.iter().all(|e| e.client_message_id.starts_with("full-")));
    nothing_within(&mut bob, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_over_its_rate_limit_is_refused_alone_and_a_resent_transaction_is_answered_duplicate(
) {
    let c = Cluster::start().await;
    opt_in(&c.gateway.ingest_url, BOB, &["signal"]).await;
    let signal = sender(&c.gateway.ingest_url, "signal").await;
    const ALICE: &str = "signal:alice";
    const EVE: &str = "signal:eve";

    // Alice's 45 sends run over her burst of 40: the last five are refused
    // with retry advice; Eve's, after them, pass.
    let mut items: Vec<ClientFrame> = (0..45)
        .map(|i| send(i, &format!("alice-{i}"), ALICE, BOB))
        .collect();
    items.extend((45..50).map(|i| send(i, &format!("eve-{i}"), EVE, BOB)));
    let answers = transact(&signal, items).await;
    for (i, a) in answers.iter().enumerate() {
        if (40..45).contains(&i) {
            let r = rejected_answer(a);
            assert_eq!(r.code(), RejectCode::RateLimited, "{r:?}");
            assert!(r.retry_after_ms > 0, "{r:?}");
        } else {
            accepted_answer(a);
        }
    }

    // Ten senders' three sends each and a bad item, sent twice (its
    // connection lost before the answer, say): the second time each send
    // is a duplicate with its first message id, the bad item refused again.
    let mut items: Vec<ClientFrame> = (0..30)
        .map(|i| send(i, &format!("r-{i}"), &format!("signal:r{}", i % 10), BOB))
        .collect();
    items.push(send(30, "r-tom", TOM, BOB));
    let first = transact(&signal, items.clone()).await;
    let again = transact(&sender(&c.gateway.ingest_url, "signal").await, items).await;
    for (i, (a, b)) in first.iter().zip(&again).enumerate() {
        if i == 30 {
            assert_eq!(rejected_answer(a).code(), RejectCode::SenderNotOwned);
            assert_eq!(rejected_answer(b).code(), RejectCode::SenderNotOwned);
            continue;
        }
        let (a, b) = (accepted_answer(a), accepted_answer(b));
        assert!(!a.duplicate, "item {i}: {a:?}");
        assert!(b.duplicate, "item {i}: {b:?}");
        assert_eq!(a.message_id, b.message_id, "item {i}");
    }

    // Each delivered once: Alice's 40, Eve's 5 and the 30.
    let mut bob = receiver(&c.gateway.delivery_url, BOB, "phone").await;
    let got = receive(&mut bob, 75).await;
    let mut seen: Vec<&str> = got.iter().map(|e| e.message_id.as_str()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), 75);
    nothing_within(&mut bob, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_many_sends_json_lines_in_transactions_and_prints_one_answer_per_line() {
    let c = Cluster::start().await;
    opt_in(&c.gateway.ingest_url, BOB, &["signal"]).await;
    let dir = tempfile::tempdir().unwrap();
    // 300 lines: two transactions (256 and 44); ten senders, 30 each. Line
    // 150 goes to a user who never opted in.
    let mut lines = Vec::new();
    for i in 0..300 {
        let to = if i == 149 { "home:+4915100000000" } else { BOB };
        lines.push(
            serde_json::json!({"from": format!("signal:m{}", i % 10), "to": to,
                "text": format!("line {}", i + 1), "client_message_id": format!("many-{i}")})
            .to_string(),
        );
    }
    let file = dir.path().join("items.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = interop_e2e::interop_command()
        .args(["send-many", "--file"])
        .arg(&file)
        .args([
            "--ingest-url",
            &c.gateway.ingest_url,
            "--token",
            interop_e2e::SIGNAL_TOKEN,
        ])
        .env_remove("INTEROP_PROVIDER")
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("interop runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "one was refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 300);
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a["line"], i + 1);
        if i == 149 {
            assert_eq!(a["rejected"]["code"], "RECIPIENT_UNAVAILABLE", "{a}");
        } else {
            assert_eq!(
                a["accepted"]["client_message_id"],
                format!("many-{i}"),
                "{a}"
            );
        }
    }
    let mut bob = receiver(&c.gateway.delivery_url, BOB, "phone").await;
    let got = receive(&mut bob, 299).await;
    for (from, cmids) in by_sender(&got) {
        let numbers: Vec<usize> = cmids
            .iter()
            .map(|c| c.trim_start_matches("many-").parse().unwrap())
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "{from}: {numbers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_sends_pipelined_by_many_connections_share_redis_round_trips() {
    let c = Cluster::start().await;
    opt_in(&c.gateway.ingest_url, BOB, &["signal", "telegram"]).await;
    let before = redis_checks(&c).await;
    let mut pending = Vec::new();
    let mut senders = Vec::new();
    for provider in ["signal", "telegram"] {
        senders.push((provider, sender(&c.gateway.ingest_url, provider).await));
    }
    for (provider, s) in &senders {
        for i in 0..50 {
            let from = format!("{provider}:u{}", i % 5);
            pending.push(
                s.submit(text_envelope(&format!("l-{i}"), &from, BOB, "hi"))
                    .await
                    .expect("written"),
            );
        }
    }
    for p in pending {
        accepted(p.outcome().await.expect("an answer"));
    }
    let trips = redis_checks(&c).await - before;
    // 100 sends of two providers, pipelined: each round trip took what
    // waited meanwhile (one per provider present in it).
    assert!(trips < 100.0, "{trips} round trips for 100 lone sends");
    assert!(trips >= 2.0, "{trips}");
}
