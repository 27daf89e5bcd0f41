//! Consent, message requests, blocks and reports, end to end through all
//! five services against real nats-server and redis-server: one test per
//! consent path of issue 4.

use std::time::Duration;

use interop_client::{
    text_envelope, ConsentOutcome, ConsentStateOutcome, Delivered, Receiver, RequestOutcome,
};
use interop_e2e::{Cluster, Gateway};
use interop_proto::v1::{
    envelope::Content, Encryption, Inbox, ReceiptStatus, RejectCode, RequestAction,
};
use interop_test_support::{NatsServer, RedisServer};

use crate::common::{accepted, next_acked, nothing_within, receiver, rejected, sender, within};

const BOB: &str = "home:+4915112345678";
const DAVE: &str = "home:+4915112345670";
const ALICE: &str = "signal:alice";
const TOM: &str = "telegram:tom";

async fn set(gw: &Gateway, user: &str, opted_in: bool, allow: &[&str], inbox: Inbox) {
    let out = sender(&gw.ingest_url, "home")
        .await
        .set_consent_with(user, opted_in, allow, inbox)
        .await
        .unwrap();
    assert!(
        matches!(out, ConsentOutcome::Updated(ref u) if u.opted_in == opted_in),
        "{out:?}"
    );
}

async fn respond(gw: &Gateway, user: &str, from: &str, action: RequestAction) {
    let out = sender(&gw.ingest_url, "home")
        .await
        .respond_to_request(user, from, action)
        .await
        .unwrap();
    assert!(
        matches!(out, RequestOutcome::Responded(ref r) if r.action == action as i32),
        "{out:?}"
    );
}

/// The next receipt in a sender's store: (status, code, detail, client id).
async fn next_receipt(rx: &mut Receiver) -> (i32, i32, String, String) {
    loop {
        let e = next_acked(rx).await.envelope;
        if let Some(Content::Receipt(r)) = e.content {
            return (r.status, r.code, r.detail, r.client_message_id);
        }
    }
}

/// The next delivery that is not a receipt, acknowledged (receipts before
/// it are acknowledged and skipped).
async fn next_message(rx: &mut Receiver) -> Delivered {
    loop {
        let d = next_acked(rx).await;
        if !matches!(d.envelope.content, Some(Content::Receipt(_))) {
            return d;
        }
    }
}

/// Bob (home) admits signal and alice (signal) admits home, and each has a
/// delivery session open: (alice's, bob's).
async fn alice_and_bob_opted_in(gw: &Gateway) -> (Receiver, Receiver) {
    set(gw, BOB, true, &["signal"], Inbox::ThirdParty).await;
    let alice_consent = sender(&gw.ingest_url, "signal")
        .await
        .set_consent(ALICE, true, &["home"])
        .await
        .unwrap();
    assert!(matches!(alice_consent, ConsentOutcome::Updated(_)));
    let alice_rx = receiver(&gw.delivery_url, ALICE, "phone").await;
    let bob_rx = receiver(&gw.delivery_url, BOB, "phone").await;
    (alice_rx, bob_rx)
}

async fn stop(gw: Gateway) {
    for (name, r) in gw.stop().await {
        assert!(r.is_ok(), "{name}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_opted_in_delivers_nothing_and_answers_like_an_unknown_user() {
    let c = Cluster::start().await;
    let gw = &c.gateway;
    let alice = sender(&gw.ingest_url, "signal").await;
    let unknown = rejected(
        alice
            .send(text_envelope("u1", ALICE, "home:+491700000001", "hello"))
            .await
            .unwrap(),
    );
    // Bob has a record, but is not opted in (allowing signal changes nothing).
    set(gw, BOB, false, &["signal"], Inbox::ThirdParty).await;
    let mut bob = receiver(&gw.delivery_url, BOB, "phone").await;
    let not_opted = rejected(
        alice
            .send(text_envelope("u2", ALICE, BOB, "hello"))
            .await
            .unwrap(),
    );
    assert_eq!(unknown.code, RejectCode::RecipientUnavailable as i32);
    assert_eq!(
        (not_opted.code, &not_opted.detail),
        (unknown.code, &unknown.detail)
    );
    nothing_within(&mut bob, 1500).await;
    stop(c.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_not_allowed_is_refused_and_others_are_not() {
    let c = Cluster::start().await;
    let gw = &c.gateway;
    set(gw, BOB, true, &["telegram"], Inbox::ThirdParty).await;
    let mut bob = receiver(&gw.delivery_url, BOB, "phone").await;
    let r = rejected(
        sender(&gw.ingest_url, "signal")
            .await
            .send(text_envelope("p1", ALICE, BOB, "hello"))
            .await
            .unwrap(),
    );
    assert_eq!(r.code, RejectCode::RecipientUnavailable as i32);
    accepted(
        sender(&gw.ingest_url, "telegram")
            .await
            .send(text_envelope("p2", TOM, BOB, "hello from telegram"))
            .await
            .unwrap(),
    );
    let d = next_acked(&mut bob).await;
    assert_eq!(d.envelope.from, TOM);
    nothing_within(&mut bob, 1500).await;
    stop(c.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_contact_is_a_request_until_accepted_then_later_messages_reach_the_inbox() {
    let c = Cluster::start().await;
    let gw = &c.gateway;
    set(gw, BOB, true, &["signal", "telegram"], Inbox::ThirdParty).await;
    let mut bob = receiver(&gw.delivery_url, BOB, "phone").await;
    let alice = sender(&gw.ingest_url, "signal").await;
    for (i, body) in ["hi bob, it's alice", "are you there?"].iter().enumerate() {
        accepted(
            alice
                .send(text_envelope(&format!("r{i}"), ALICE, BOB, body))
                .await
                .unwrap(),
        );
        let d = next_acked(&mut bob).await;
        assert_eq!(d.inbox, Inbox::Requests, "message {i} before accepting");
        // A request says who it is from, like every message.
        let info = d.envelope.sender_info.expect("sender info on a request");
        assert_eq!(info.provider, "signal");
        assert_eq!(info.privacy_policy_url, "https://signal.example/privacy");
        assert_eq!(info.provider_encryption, Encryption::E2ee as i32);
    }
    respond(gw, BOB, ALICE, RequestAction::Accept).await;
    accepted(
        alice
            .send(text_envelope("r2", ALICE, BOB, "great, talk soon"))
            .await
            .unwrap(),
    );
    let d = next_acked(&mut bob).await;
    assert_eq!(d.inbox, Inbox::ThirdParty);
    assert_eq!(d.envelope.sender_info.unwrap().provider, "signal");
    // The inbox choice can change at any time: combined from now on.
    set(gw, BOB, true, &["signal", "telegram"], Inbox::Combined).await;
    accepted(
        alice
            .send(text_envelope("r3", ALICE, BOB, "one more"))
            .await
            .unwrap(),
    );
    assert_eq!(next_acked(&mut bob).await.inbox, Inbox::Combined);
    // Another sender is still a stranger.
    accepted(
        sender(&gw.ingest_url, "telegram")
            .await
            .send(text_envelope("t1", TOM, BOB, "hello from tom"))
            .await
            .unwrap(),
    );
    let d = next_acked(&mut bob).await;
    assert_eq!((d.envelope.from.as_str(), d.inbox), (TOM, Inbox::Requests));
    let info = d.envelope.sender_info.unwrap();
    assert_eq!(info.provider_encryption, Encryption::TransportOnly as i32);
    stop(c.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_to_someone_accepts_their_replies() {
    let c = Cluster::start().await;
    let gw = &c.gateway;
    let (mut alice_rx, mut bob_rx) = alice_and_bob_opted_in(gw).await;
    accepted(
        sender(&gw.ingest_url, "home")
            .await
            .send(text_envelope("b1", BOB, ALICE, "hi alice, bob here"))
            .await
            .unwrap(),
    );
    let d = next_message(&mut alice_rx).await;
    assert_eq!(d.envelope.from, BOB);
    assert_eq!(d.inbox, Inbox::Requests, "bob is new to alice");
    accepted(
        sender(&gw.ingest_url, "signal")
            .await
            .send(text_envelope("a1", ALICE, BOB, "hi bob"))
            .await
            .unwrap(),
    );
    let d = next_message(&mut bob_rx).await;
    assert_eq!(d.envelope.from, ALICE);
    assert_eq!(d.inbox, Inbox::ThirdParty, "bob wrote first");
    stop(c.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_verdict_stays_a_request_from_an_accepted_sender_up_to_the_device() {
    // Every message scores at least 0: spam-scoring's verdict is REQUEST
    // for all of them, and nothing is held or refused.
    let mut spam = interop_spam_scoring::Config::default();
    spam.policy.verdict.request = 0.0;
    let c = Cluster::start_with(spam).await;
    let gw = &c.gateway;
    set(gw, BOB, true, &["signal"], Inbox::ThirdParty).await;
    respond(gw, BOB, ALICE, RequestAction::Accept).await;
    let mut bob = receiver(&gw.delivery_url, BOB, "phone").await;
    let alice = sender(&gw.ingest_url, "signal").await;
    accepted(
        alice
            .send(text_envelope("a0", ALICE, BOB, "hi"))
            .await
            .unwrap(),
    );
    // Routing files it as a request; delivery's re-check before the push
    // finds alice accepted, and must still not move it to the inbox.
    assert_eq!(next_acked(&mut bob).await.inbox, Inbox::Requests);
    stop(c.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decline_and_block_stop_delivery_and_blocks_are_per_user_across_providers() {
    let c = Cluster::start().await;
    let gw = &c.gateway;
    set(gw, BOB, true, &["signal", "telegram"], Inbox::ThirdParty).await;
    let mut bob = receiver(&gw.delivery_url, BOB, "phone").await;
    let mut alice_rx = receiver(&gw.delivery_url, ALICE, "phone").await;
    let mut tom_rx = receiver(&gw.delivery_url, TOM, "phone").await;
    let alice = sender(&gw.ingest_url, "signal").await;
    let tom = sender(&gw.ingest_url, "telegram").await;
    accepted(
        alice
            .send(text_envelope("a0", ALICE, BOB, "hi"))
            .await
            .unwrap(),
    );
    assert_eq!(next_acked(&mut bob).await.inbox, Inbox::Requests);
    // Decline alice: her next message is not delivered and she gets the
    // same code as for a user who does not exist.
    respond(gw, BOB, ALICE, RequestAction::Decline).await;
    accepted(
        alice
            .send(text_envelope("a1", ALICE, BOB, "hello?"))
            .await
            .unwrap(),
    );
    let (status, code, _, cmid) = next_receipt(&mut alice_rx).await;
    let (status, code) = if cmid == "a0" {
        // The delivered receipt of the first message came first.
        assert_eq!(status, ReceiptStatus::Delivered as i32);
        let (s, c, _, cmid) = next_receipt(&mut alice_rx).await;
        assert_eq!(cmid, "a1");
        (s, c)
    } else {
        (status, code)
    };
    assert_eq!(
        (status, code),
        (
            ReceiptStatus::Failed as i32,
            RejectCode::RecipientUnavailable as i32
        )
    );
    // Block tom (another provider): same.
    respond(gw, BOB, TOM, RequestAction::Block).await;
    accepted(
        tom.send(text_envelope("t1", TOM, BOB, "hello"))
            .await
            .unwrap(),
    );
    let (status, code, _, cmid) = next_receipt(&mut tom_rx).await;
    assert_eq!(cmid, "t1");
    assert_eq!(
        (status, code),
        (
            ReceiptStatus::Failed as i32,
            RejectCode::RecipientUnavailable as i32
        )
    );
    nothing_within(&mut bob, 1500).await;
    // The block is bob's: tom still reaches dave.
    set(gw, DAVE, true, &["telegram"], Inbox::ThirdParty).await;
    let mut dave = receiver(&gw.delivery_url, DAVE, "phone").await;
    accepted(
        tom.send(text_envelope("t2", TOM, DAVE, "hi dave"))
            .await
            .unwrap(),
    );
    assert_eq!(next_acked(&mut dave).await.envelope.from, TOM);
    // The app can show the lists, and every answer can be changed.
    let ConsentStateOutcome::State(state) = sender(&gw.ingest_url, "home")
        .await
        .get_consent(BOB)
        .await
        .unwrap()
    else {
        panic!("no state")
    };
    assert_eq!(state.blocked, vec![TOM.to_owned()]);
    assert_eq!(state.declined, vec![ALICE.to_owned()]);
    assert_eq!(state.inbox, Inbox::ThirdParty as i32);
    respond(gw, BOB, TOM, RequestAction::Reset).await;
    accepted(
        tom.send(text_envelope("t3", TOM, BOB, "again"))
            .await
            .unwrap(),
    );
    let d = next_acked(&mut bob).await;
    assert_eq!((d.envelope.from.as_str(), d.inbox), (TOM, Inbox::Requests));
    stop(c.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_feeds_the_senders_reputation() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    // A strict policy: one report is enough to refuse the sender's messages.
    let mut policy = interop_spam_scoring::Policy::default();
    policy.sender_reputation.min_points = 0.5;
    policy.sender_reputation.weight_per_point = 20.0;
    policy.sender_reputation.max_weight = 20.0;
    let spam = interop_spam_scoring::Config {
        policy,
        ..Default::default()
    };
    let gw = Gateway::start_with(&nats.url(), &redis.url(), spam).await;
    set(&gw, BOB, true, &["signal"], Inbox::ThirdParty).await;
    set(&gw, DAVE, true, &["signal"], Inbox::ThirdParty).await;
    let mut dave = receiver(&gw.delivery_url, DAVE, "phone").await;
    let mut alice_rx = receiver(&gw.delivery_url, ALICE, "phone").await;
    let alice = sender(&gw.ingest_url, "signal").await;
    // Before any report, alice reaches dave.
    accepted(
        alice
            .send(text_envelope("a0", ALICE, DAVE, "hi dave"))
            .await
            .unwrap(),
    );
    assert_eq!(next_acked(&mut dave).await.envelope.from, ALICE);
    respond(&gw, BOB, ALICE, RequestAction::Report).await;
    // Reporting twice does not count twice.
    respond(&gw, BOB, ALICE, RequestAction::Report).await;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let fields: Vec<(String, i64)> = redis::cmd("HGETALL")
        .arg("interop:spam:rep:sender:signal:alice")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(fields.len(), 1, "{fields:?}");
    assert!(
        fields[0].0.starts_with("report:") && fields[0].1 == 1,
        "{fields:?}"
    );
    let provider: Vec<(String, i64)> = redis::cmd("HGETALL")
        .arg("interop:spam:rep:provider:signal")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        provider
            .iter()
            .any(|(f, n)| f.starts_with("report:") && *n == 1),
        "{provider:?}"
    );
    let ttl: i64 = redis::cmd("TTL")
        .arg("interop:spam:rep:sender:signal:alice")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "reputation keys expire");
    // Now alice's message to dave (who accepted nothing either way) is
    // refused as spam, and the receipt names the signal.
    accepted(
        alice
            .send(text_envelope("a1", ALICE, DAVE, "hi again"))
            .await
            .unwrap(),
    );
    let mut failed = None;
    for _ in 0..2 {
        let (status, code, detail, cmid) = next_receipt(&mut alice_rx).await;
        if cmid == "a1" {
            failed = Some((status, code, detail));
            break;
        }
    }
    let (status, code, detail) = failed.expect("a receipt for a1");
    assert_eq!(
        (status, code),
        (ReceiptStatus::Failed as i32, RejectCode::Spam as i32)
    );
    assert!(detail.contains("SENDER_REPUTATION"), "{detail}");
    nothing_within(&mut dave, 1500).await;
    stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opting_out_stops_every_third_party_at_once() {
    let c = Cluster::start().await;
    let gw = &c.gateway;
    set(gw, BOB, true, &["signal", "telegram"], Inbox::ThirdParty).await;
    respond(gw, BOB, ALICE, RequestAction::Accept).await;
    let mut bob = receiver(&gw.delivery_url, BOB, "phone").await;
    let alice = sender(&gw.ingest_url, "signal").await;
    let tom = sender(&gw.ingest_url, "telegram").await;
    accepted(
        alice
            .send(text_envelope("a0", ALICE, BOB, "hi"))
            .await
            .unwrap(),
    );
    accepted(tom.send(text_envelope("t0", TOM, BOB, "hi")).await.unwrap());
    next_acked(&mut bob).await;
    next_acked(&mut bob).await;
    // One change: nothing from any provider reaches bob, accepted or not.
    set(gw, BOB, false, &["signal", "telegram"], Inbox::ThirdParty).await;
    for (sender, from) in [(&alice, ALICE), (&tom, TOM)] {
        let r = rejected(
            sender
                .send(text_envelope("x1", from, BOB, "still there?"))
                .await
                .unwrap(),
        );
        assert_eq!(r.code, RejectCode::RecipientUnavailable as i32);
    }
    nothing_within(&mut bob, 1500).await;
    // And opting in again restores it, with the earlier answers kept.
    set(gw, BOB, true, &["signal", "telegram"], Inbox::ThirdParty).await;
    accepted(
        alice
            .send(text_envelope("a2", ALICE, BOB, "back?"))
            .await
            .unwrap(),
    );
    assert_eq!(next_acked(&mut bob).await.inbox, Inbox::ThirdParty);
    stop(c.gateway).await;
}

/// The next delivery, not acknowledged: it stays in the store and comes
/// again on the next connection, unless it is withheld by then.
async fn next_unacked(rx: &mut Receiver) -> Delivered {
    within("a delivery", rx.next()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_given_after_a_message_was_stored_apply_to_it_too() {
    const CAROL: &str = "signal:carol";
    let c = Cluster::start().await;
    let gw = &c.gateway;
    set(gw, BOB, true, &["signal", "telegram"], Inbox::ThirdParty).await;
    respond(gw, BOB, ALICE, RequestAction::Accept).await;
    let alice = sender(&gw.ingest_url, "signal").await;
    let tom = sender(&gw.ingest_url, "telegram").await;
    accepted(
        alice
            .send(text_envelope("a1", ALICE, BOB, "one"))
            .await
            .unwrap(),
    );
    accepted(
        tom.send(text_envelope("t1", TOM, BOB, "one"))
            .await
            .unwrap(),
    );
    accepted(
        alice
            .send(text_envelope("c1", CAROL, BOB, "one"))
            .await
            .unwrap(),
    );
    // Seen once, not acknowledged: all three are in bob's store.
    let mut bob = receiver(&gw.delivery_url, BOB, "phone").await;
    let mut first = Vec::new();
    for _ in 0..3 {
        let d = next_unacked(&mut bob).await;
        first.push((d.envelope.from.clone(), d.inbox));
    }
    first.sort();
    assert_eq!(
        first,
        vec![
            (ALICE.to_owned(), Inbox::ThirdParty),
            (CAROL.to_owned(), Inbox::Requests),
            (TOM.to_owned(), Inbox::Requests),
        ]
    );
    bob.close().await;

    // Bob accepts tom and blocks carol: on the next connection tom's stored
    // request comes as an inbox message and carol's does not come at all.
    respond(gw, BOB, TOM, RequestAction::Accept).await;
    respond(gw, BOB, CAROL, RequestAction::Block).await;
    let mut bob = receiver(&gw.delivery_url, BOB, "phone").await;
    let mut second = Vec::new();
    for _ in 0..2 {
        let d = next_unacked(&mut bob).await;
        second.push((d.envelope.from.clone(), d.inbox));
    }
    second.sort();
    assert_eq!(
        second,
        vec![
            (ALICE.to_owned(), Inbox::ThirdParty),
            (TOM.to_owned(), Inbox::ThirdParty),
        ]
    );
    nothing_within(&mut bob, 1500).await;
    bob.close().await;

    // Opting out withholds everything still stored, at once.
    set(gw, BOB, false, &["signal", "telegram"], Inbox::ThirdParty).await;
    let mut bob = receiver(&gw.delivery_url, BOB, "phone").await;
    nothing_within(&mut bob, 1500).await;
    bob.close().await;
    // Withheld means gone: opting in again does not bring them back.
    set(gw, BOB, true, &["signal", "telegram"], Inbox::ThirdParty).await;
    let mut bob = receiver(&gw.delivery_url, BOB, "phone").await;
    nothing_within(&mut bob, 1500).await;
    stop(c.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_to_strangers_is_quarantined_without_a_receipt() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let mut policy = interop_spam_scoring::Policy::default();
    policy.stranger_fanout.max_per_hour = 2;
    policy.stranger_fanout.weight = 6.0;
    let spam = interop_spam_scoring::Config {
        policy,
        ..Default::default()
    };
    let gw = Gateway::start_with(&nats.url(), &redis.url(), spam).await;
    let users: Vec<String> = (0..3).map(|i| format!("home:+491510000000{i}")).collect();
    let mut rxs = Vec::new();
    for u in &users {
        set(&gw, u, true, &["signal"], Inbox::ThirdParty).await;
        rxs.push(receiver(&gw.delivery_url, u, "phone").await);
    }
    let mut alice_rx = receiver(&gw.delivery_url, ALICE, "phone").await;
    let alice = sender(&gw.ingest_url, "signal").await;
    for (i, u) in users.iter().enumerate() {
        accepted(
            alice
                .send(text_envelope(&format!("f{i}"), ALICE, u, "hello stranger"))
                .await
                .unwrap(),
        );
    }
    // The first two strangers get requests; the third is held.
    for rx in &mut rxs[..2] {
        assert_eq!(next_acked(rx).await.inbox, Inbox::Requests);
    }
    nothing_within(&mut rxs[2], 1500).await;
    // Alice gets delivered receipts for two, and nothing about the third.
    let mut receipts = Vec::new();
    for _ in 0..2 {
        receipts.push(next_receipt(&mut alice_rx).await);
    }
    assert!(receipts
        .iter()
        .all(|r| r.0 == ReceiptStatus::Delivered as i32 && r.3 != "f2"));
    nothing_within(&mut alice_rx, 1500).await;
    // It is held in the quarantine stream.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut q = js
        .get_stream(interop_bus::subjects::STREAM_QUARANTINE)
        .await
        .unwrap();
    assert_eq!(q.info().await.unwrap().state.messages, 1);
    stop(gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_consent_and_request_frames_get_typed_answers() {
    let c = Cluster::start().await;
    let gw = &c.gateway;
    let home = sender(&gw.ingest_url, "home").await;
    let code = |out: ConsentOutcome| match out {
        ConsentOutcome::Rejected(r) => r.code,
        ConsentOutcome::Updated(u) => panic!("updated: {u:?}"),
    };
    assert_eq!(
        code(
            home.set_consent_with(BOB, true, &["signal"], Inbox::Requests)
                .await
                .unwrap()
        ),
        RejectCode::InvalidSetting as i32
    );
    let rcode = |out: RequestOutcome| match out {
        RequestOutcome::Rejected(r) => r.code,
        RequestOutcome::Responded(r) => panic!("responded: {r:?}"),
    };
    let cases = [
        (
            BOB,
            ALICE,
            RequestAction::Unspecified,
            RejectCode::InvalidSetting,
        ),
        (BOB, BOB, RequestAction::Block, RejectCode::InvalidSetting),
        (
            BOB,
            "not an address",
            RequestAction::Block,
            RejectCode::InvalidAddress,
        ),
        (BOB, "", RequestAction::Block, RejectCode::MissingField),
        (ALICE, BOB, RequestAction::Block, RejectCode::SenderNotOwned),
    ];
    for (user, sender, action, want) in cases {
        let got = rcode(home.respond_to_request(user, sender, action).await.unwrap());
        assert_eq!(got, want as i32, "{user} {sender} {action:?}");
    }
    // Another provider cannot read or answer for a home user.
    let s = sender(&gw.ingest_url, "signal").await;
    assert!(matches!(
        s.get_consent(BOB).await.unwrap(),
        ConsentStateOutcome::Rejected(ref r) if r.code == RejectCode::SenderNotOwned as i32
    ));
    assert_eq!(
        rcode(
            s.respond_to_request(BOB, ALICE, RequestAction::Accept)
                .await
                .unwrap()
        ),
        RejectCode::SenderNotOwned as i32
    );
    // A provider may not claim an account age in the future.
    let mut env = text_envelope("age", ALICE, BOB, "hi");
    env.sender_account_created_at_ms = interop_proto::now_ms() + 3_600_000;
    assert_eq!(
        rejected(s.send(env).await.unwrap()).code,
        RejectCode::TimestampOutOfRange as i32
    );
    stop(c.gateway).await;
}

/// Files a text message in `to`'s store as routing does, accepted at
/// `accepted_at_ms`: a message routing admitted before a change and
/// delivery takes after it (docs/adr/0018).
async fn routed_earlier(nats_url: &str, from: &str, to: &str, accepted_at_ms: i64, inbox: Inbox) {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await.unwrap());
    let mut env = text_envelope("in-flight", from, to, "in flight");
    env.message_id = format!("routed-earlier-{accepted_at_ms}");
    env.accepted_at_ms = accepted_at_ms;
    let pm = interop_proto::v1::PipelineMessage {
        envelope: Some(env),
        sender_provider: from.split(':').next().unwrap().to_owned(),
        route: Some(interop_proto::v1::Route {
            inbox: inbox as i32,
            recipient_key: interop_bus::recipient_key(to),
        }),
        ..Default::default()
    };
    let out = interop_bus::pipeline::to_recipient_store(&pm);
    js.publish(out.subject, out.payload)
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Waits past the clock margin (1 s, docs/adr/0018) after sessions
/// subscribed: what is accepted from now on was admitted by routing after
/// anything those sessions could have missed.
async fn past_the_clock_margin() {
    tokio::time::sleep(Duration::from_millis(1_500)).await;
}

/// Bob opted in (third-party inbox), accepting `sender`, with a session
/// open past the clock margin.
async fn bob_accepting_with_a_session(gw: &Gateway, sender: &str) -> Receiver {
    set(gw, BOB, true, &["signal"], Inbox::ThirdParty).await;
    respond(gw, BOB, sender, RequestAction::Accept).await;
    let bob = receiver(&gw.delivery_url, BOB, "phone").await;
    past_the_clock_margin().await;
    bob
}

async fn delivery_counter(gw: &Gateway, name: &str) -> f64 {
    let (status, text) = interop_e2e::http_get(&format!("{}/metrics", gw.admin_url("delivery")))
        .await
        .unwrap();
    assert_eq!(status, 200);
    interop_e2e::metric_value(&text, &format!("interop_delivery_{name}_total")).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_asks_again_only_after_a_change_it_heard_of() {
    const CAROL: &str = "signal:carol";
    let c = Cluster::start().await;
    let gw = &c.gateway;
    let mut bob = bob_accepting_with_a_session(gw, ALICE).await;
    let alice = sender(&gw.ingest_url, "signal").await;

    // Nothing changed: alice's message is pushed as routing filed it,
    // without asking Redis again.
    accepted(
        alice
            .send(text_envelope("a1", ALICE, BOB, "one"))
            .await
            .unwrap(),
    );
    let d = next_acked(&mut bob).await;
    assert_eq!(
        (d.envelope.from.as_str(), d.inbox),
        (ALICE, Inbox::ThirdParty)
    );
    assert_eq!(delivery_counter(gw, "unchecked").await, 1.0);

    // Carol's request was admitted just before bob blocks her, and reaches
    // his open session just after: the block was announced, so the session
    // asks again and withholds it. (Without the announcement it would be
    // pushed: it was accepted well after the session started.)
    let before_the_block = interop_proto::now_ms();
    respond(gw, BOB, CAROL, RequestAction::Block).await;
    routed_earlier(&c.nats.url(), CAROL, BOB, before_the_block, Inbox::Requests).await;
    accepted(
        alice
            .send(text_envelope("a2", ALICE, BOB, "two"))
            .await
            .unwrap(),
    );
    let d = next_acked(&mut bob).await;
    assert_eq!(d.envelope.from, ALICE, "carol's message was pushed");
    assert_eq!(delivery_counter(gw, "withheld").await, 1.0);
    // Alice's second message came within the margin after the change, so it
    // was checked too.
    assert_eq!(delivery_counter(gw, "unchecked").await, 1.0);
    nothing_within(&mut bob, 1500).await;
    stop(c.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_implicit_acceptance_reaches_the_writers_open_session() {
    let c = Cluster::start().await;
    let gw = &c.gateway;
    let (mut alice_rx, mut bob_rx) = alice_and_bob_opted_in(gw).await;
    past_the_clock_margin().await;

    // Alice's request to bob was admitted (as a request: he does not know
    // her) just before bob writes to her, and reaches his open session
    // after routing took bob's message as his acceptance of her: it comes
    // as an inbox message. (Without the announcement it would come as a
    // request: it was accepted well after the session started.)
    let before_bob_wrote = interop_proto::now_ms();
    accepted(
        sender(&gw.ingest_url, "home")
            .await
            .send(text_envelope("b1", BOB, ALICE, "hi alice, bob here"))
            .await
            .unwrap(),
    );
    assert_eq!(next_message(&mut alice_rx).await.envelope.from, BOB);
    routed_earlier(&c.nats.url(), ALICE, BOB, before_bob_wrote, Inbox::Requests).await;
    // (Alice's receipt for bob's message comes first.)
    let d = next_message(&mut bob_rx).await;
    assert_eq!(
        (d.envelope.from.as_str(), d.inbox),
        (ALICE, Inbox::ThirdParty)
    );
    stop(c.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_reaches_every_open_session() {
    const CAROL: &str = "signal:carol";
    let c = Cluster::start().await;
    let gw = &c.gateway;
    let mut bob = bob_accepting_with_a_session(gw, CAROL).await;

    // Erasing carol removes bob's acceptance of her. A message from her,
    // admitted to his inbox just before, reaches his open session after
    // the erasure: it comes as a request. (Without the announcement it
    // would come as an inbox message.)
    let before_the_erasure = interop_proto::now_ms();
    let admin =
        interop_client::admin::AdminClient::new(&gw.admin_api_url, interop_e2e::ADMIN_TOKEN)
            .unwrap();
    admin
        .call(
            "POST",
            "/admin/v1/erasures",
            Some(&serde_json::json!({ "address": CAROL })),
        )
        .await
        .unwrap();
    routed_earlier(
        &c.nats.url(),
        CAROL,
        BOB,
        before_the_erasure,
        Inbox::ThirdParty,
    )
    .await;
    let d = next_acked(&mut bob).await;
    assert_eq!(
        (d.envelope.from.as_str(), d.inbox),
        (CAROL, Inbox::Requests)
    );
    stop(c.gateway).await;
}
