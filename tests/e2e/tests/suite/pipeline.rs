//! End to end through all five services, against real nats-server and
//! redis-server.

use std::time::Duration;

use interop_client::{text_envelope, Receiver, Sender};
use interop_e2e::{Cluster, HOME_TOKEN, SIGNAL_TOKEN, TELEGRAM_TOKEN};
use interop_proto::v1::{
    envelope::Content, Ciphertext, Encryption, Envelope, ReceiptStatus, RejectCode,
};

use crate::common::{accepted, next_acked, opt_in, receiver, rejected, until_stored};

const BOB: &str = "home:+4915112345678";
const CAROL: &str = "home:+4915112345679";
const ALICE: &str = "signal:alice";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_reaches_an_opted_in_recipient_and_the_sender_gets_a_delivered_receipt() {
    let c = Cluster::start().await;
    opt_in(&c.gateway.ingest_url, BOB, &["signal"]).await;
    let mut bob = receiver(&c.gateway.delivery_url, BOB, "phone").await;
    let mut alice_inbox = receiver(&c.gateway.delivery_url, ALICE, "laptop").await;
    let alice = Sender::connect(&c.gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();

    let a = accepted(
        alice
            .send(text_envelope("c-1", ALICE, BOB, "hello bob"))
            .await
            .unwrap(),
    );
    assert_eq!(a.client_message_id, "c-1");
    assert!(!a.message_id.is_empty());
    assert!(!a.duplicate);

    let d = next_acked(&mut bob).await;
    let env = d.envelope;
    assert_eq!(env.message_id, a.message_id);
    assert_eq!(env.from, ALICE);
    assert_eq!(env.to, BOB);
    assert_eq!(env.encryption, Encryption::TransportOnly as i32);
    assert!(matches!(env.content, Some(Content::Text(ref t)) if t.body == "hello bob"));
    let info = env.sender_info.expect("sender info");
    assert_eq!(info.provider, "signal");
    assert_eq!(info.privacy_policy_url, "https://signal.example/privacy");

    let r = next_acked(&mut alice_inbox).await.envelope;
    let Some(Content::Receipt(receipt)) = r.content else {
        panic!("expected a receipt, got {r:?}")
    };
    assert_eq!(receipt.message_id, a.message_id);
    assert_eq!(receipt.client_message_id, "c-1");
    assert_eq!(receipt.status, ReceiptStatus::Delivered as i32);
    assert_eq!(r.from, BOB);
    c.gateway
        .stop()
        .await
        .into_iter()
        .for_each(|(n, r)| assert!(r.is_ok(), "{n}: {r:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_recipient_gets_the_message_when_they_connect_and_not_twice() {
    let c = Cluster::start().await;
    opt_in(&c.gateway.ingest_url, BOB, &["signal", "telegram"]).await;
    let alice = Sender::connect(&c.gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let a = accepted(
            alice
                .send(text_envelope(
                    &format!("m{i}"),
                    ALICE,
                    BOB,
                    &format!("offline {i}"),
                ))
                .await
                .unwrap(),
        );
        ids.push(a.message_id);
    }
    // Nobody is connected: once they are stored, the session reads them
    // from its backlog.
    until_stored(&c.nats.url(), BOB, "the offline messages stored", |s| {
        ids.iter().all(|id| s.iter().any(|e| &e.message_id == id))
    })
    .await;
    let mut bob = receiver(&c.gateway.delivery_url, BOB, "phone").await;
    for id in &ids {
        assert_eq!(
            &next_acked(&mut bob).await.envelope.message_id,
            id,
            "in send order"
        );
    }
    bob.close().await;
    // A later live message arrives after the backlog, on a new connection,
    // and the acked backlog is not delivered again.
    let mut bob = receiver(&c.gateway.delivery_url, BOB, "phone").await;
    let t = Sender::connect(&c.gateway.ingest_url, "telegram", TELEGRAM_TOKEN)
        .await
        .unwrap();
    let live = accepted(
        t.send(text_envelope("t1", "telegram:tom", BOB, "live"))
            .await
            .unwrap(),
    );
    let d = next_acked(&mut bob).await;
    assert_eq!(d.envelope.message_id, live.message_id);
    assert_eq!(bob.duplicates(), 0);
    // A second device of the same user gets the whole history too.
    let mut tablet = receiver(&c.gateway.delivery_url, BOB, "tablet").await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(next_acked(&mut tablet).await.envelope.message_id);
    }
    ids.push(live.message_id);
    assert_eq!(seen, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_who_has_not_opted_in_gets_nothing_and_looks_like_a_stranger() {
    let c = Cluster::start().await;
    let alice = Sender::connect(&c.gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    // CAROL exists in the home app but has not opted in; 491700000000 has
    // never been seen at all.
    let mut carol = receiver(&c.gateway.delivery_url, CAROL, "phone").await;
    let not_opted = rejected(
        alice
            .send(text_envelope("x1", ALICE, CAROL, "hi carol"))
            .await
            .unwrap(),
    );
    let unknown = rejected(
        alice
            .send(text_envelope("x2", ALICE, "home:+491700000000", "hi?"))
            .await
            .unwrap(),
    );
    assert_eq!(not_opted.code, RejectCode::RecipientUnavailable as i32);
    assert_eq!(
        (not_opted.code, &not_opted.detail),
        (unknown.code, &unknown.detail)
    );
    // Opted in but signal not allowed: the same answer.
    opt_in(&c.gateway.ingest_url, CAROL, &["telegram"]).await;
    let not_allowed = rejected(
        alice
            .send(text_envelope("x3", ALICE, CAROL, "hi carol"))
            .await
            .unwrap(),
    );
    assert_eq!(
        (not_allowed.code, &not_allowed.detail),
        (unknown.code, &unknown.detail)
    );
    // Opting out stops everything at once.
    let home = Sender::connect(&c.gateway.ingest_url, "home", HOME_TOKEN)
        .await
        .unwrap();
    home.set_consent(CAROL, false, &["telegram"]).await.unwrap();
    let t = Sender::connect(&c.gateway.ingest_url, "telegram", TELEGRAM_TOKEN)
        .await
        .unwrap();
    let opted_out = rejected(
        t.send(text_envelope("x4", "telegram:tom", CAROL, "hi"))
            .await
            .unwrap(),
    );
    assert_eq!(opted_out.code, RejectCode::RecipientUnavailable as i32);
    // Carol received nothing.
    let got = tokio::time::timeout(Duration::from_millis(800), carol.next()).await;
    assert!(got.is_err(), "carol got {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_client_message_id_gets_the_same_server_id_and_is_delivered_once() {
    let c = Cluster::start().await;
    opt_in(&c.gateway.ingest_url, BOB, &["signal"]).await;
    let alice = Sender::connect(&c.gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    let first = accepted(
        alice
            .send(text_envelope("same", ALICE, BOB, "once"))
            .await
            .unwrap(),
    );
    let again = accepted(
        alice
            .send(text_envelope("same", ALICE, BOB, "once"))
            .await
            .unwrap(),
    );
    assert_eq!(first.message_id, again.message_id);
    assert!(again.duplicate, "JetStream saw the re-send as a duplicate");
    let mut bob = receiver(&c.gateway.delivery_url, BOB, "phone").await;
    assert_eq!(
        next_acked(&mut bob).await.envelope.message_id,
        first.message_id
    );
    let more = tokio::time::timeout(Duration::from_millis(800), bob.next()).await;
    assert!(more.is_err(), "delivered twice: {more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ciphertext_passes_through_byte_for_byte() {
    let c = Cluster::start().await;
    opt_in(&c.gateway.ingest_url, BOB, &["signal"]).await;
    let mut bob = receiver(&c.gateway.delivery_url, BOB, "phone").await;
    let alice = Sender::connect(&c.gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    let payload: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let e2ee = Envelope {
        client_message_id: "e1".into(),
        from: ALICE.into(),
        to: BOB.into(),
        encryption: Encryption::E2ee as i32,
        content: Some(Content::Ciphertext(Ciphertext {
            scheme: "signal".into(),
            payload: payload.clone().into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    accepted(alice.send(e2ee).await.unwrap());
    let d1 = next_acked(&mut bob).await.envelope;
    assert_eq!(d1.encryption, Encryption::E2ee as i32);
    assert!(
        matches!(d1.content, Some(Content::Ciphertext(ref c)) if c.payload.as_ref() == payload.as_slice())
    );
}

fn policy_with_rate_limit(max_per_minute: u64) -> interop_spam_scoring::Policy {
    let mut p = interop_spam_scoring::Policy::default();
    p.sender_rate.max_per_minute = max_per_minute;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_over_the_rate_limit_gets_a_failed_receipt() {
    let nats = interop_test_support::NatsServer::start();
    let redis = interop_test_support::RedisServer::start();
    let spam = interop_spam_scoring::Config {
        policy: policy_with_rate_limit(3),
        ..Default::default()
    };
    let gw = interop_e2e::Gateway::start_with(&nats.url(), &redis.url(), spam).await;
    let home = Sender::connect(&gw.ingest_url, "home", HOME_TOKEN)
        .await
        .unwrap();
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    let alice = Sender::connect(&gw.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    for i in 0..4 {
        accepted(
            alice
                .send(text_envelope(&format!("r{i}"), ALICE, BOB, "spam?"))
                .await
                .unwrap(),
        );
    }
    let mut bob = Receiver::connect(&gw.delivery_url, "home", HOME_TOKEN, BOB, "p")
        .await
        .unwrap();
    for _ in 0..3 {
        next_acked(&mut bob).await;
    }
    let mut alice_inbox = Receiver::connect(&gw.delivery_url, "signal", SIGNAL_TOKEN, ALICE, "p")
        .await
        .unwrap();
    let mut failed = 0;
    for _ in 0..4 {
        let e = next_acked(&mut alice_inbox).await.envelope;
        if let Some(Content::Receipt(r)) = e.content {
            if r.status == ReceiptStatus::Failed as i32 {
                assert_eq!(r.code, RejectCode::Spam as i32);
                assert_eq!(r.client_message_id, "r3");
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 1);
    let more = tokio::time::timeout(Duration::from_millis(500), bob.next()).await;
    assert!(more.is_err(), "the fourth message was delivered: {more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sends_is_stored_in_batches_and_each_is_delivered_once_in_order() {
    const SENDERS: usize = 10;
    // Within a sender's burst (40), so none is rate-limited.
    const EACH: usize = 20;
    let c = Cluster::start().await;
    opt_in(&c.gateway.ingest_url, BOB, &["signal"]).await;
    let home = Sender::connect(&c.gateway.ingest_url, "home", HOME_TOKEN)
        .await
        .unwrap();
    let senders: Vec<String> = (0..SENDERS).map(|s| format!("signal:burst{s}")).collect();
    for s in &senders {
        // Accepted contacts: the burst is conversation, not requests.
        home.respond_to_request(BOB, s, interop_proto::v1::RequestAction::Accept)
            .await
            .unwrap();
    }
    let before = interop_e2e::ingest_published(&c.nats.url()).await;
    let alice = Sender::connect(&c.gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    // All written before any answer is awaited (pipelined, one connection).
    let mut pending = Vec::new();
    for i in 0..EACH {
        for s in &senders {
            let env = text_envelope(&format!("{s}-{i}"), s, BOB, &format!("{i}"));
            pending.push(alice.submit(env).await.unwrap());
        }
    }
    for p in pending {
        accepted(p.outcome().await.unwrap());
    }
    let stream_messages = interop_e2e::ingest_published(&c.nats.url()).await - before;
    assert!(
        stream_messages < (SENDERS * EACH) as u64,
        "{} sends were stored as {stream_messages} stream messages: none gathered",
        SENDERS * EACH
    );
    let (status, metrics) =
        interop_e2e::http_get(&format!("{}/metrics", c.gateway.admin_url("ingest")))
            .await
            .unwrap();
    assert_eq!(status, 200);
    let published = metric_sample(&metrics, "interop_ingest_batch_messages_count");
    let gathered = metric_sample(&metrics, "interop_ingest_batch_messages_sum");
    assert_eq!(gathered, (SENDERS * EACH) as f64, "{metrics}");
    assert_eq!(published, stream_messages as f64);

    let mut bob = receiver(&c.gateway.delivery_url, BOB, "phone").await;
    let mut next_from = [0usize; SENDERS];
    for _ in 0..SENDERS * EACH {
        let env = next_acked(&mut bob).await.envelope;
        let s = senders
            .iter()
            .position(|s| *s == env.from)
            .expect("a sender");
        let Some(Content::Text(t)) = env.content else {
            panic!("not a text: {env:?}")
        };
        assert_eq!(
            t.body,
            next_from[s].to_string(),
            "out of order from {}",
            env.from
        );
        next_from[s] += 1;
    }
    let more = tokio::time::timeout(Duration::from_millis(800), bob.next()).await;
    assert!(more.is_err(), "delivered more than once: {more:?}");
    assert_eq!(bob.duplicates(), 0, "a message reached bob twice");
}

fn metric_sample(text: &str, sample: &str) -> f64 {
    interop_e2e::metric_value(text, sample).unwrap_or_else(|| panic!("no {sample} in\n{text}"))
}
