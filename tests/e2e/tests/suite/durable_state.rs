//! Nothing a user decided is forgotten when Redis loses its data (issue
//! 23): consent and answers live in the user-state stream, Redis is their
//! cache (docs/adr/0028). Through all five services, against real
//! nats-server and redis-server, with `FLUSHALL` as the loss (the same as a
//! failover to a replica without the data, or every key evicted).

use interop_client::{
    group_text_envelope, text_envelope, ConsentOutcome, ConsentStateOutcome, GroupOutcome,
    RequestOutcome,
};
use interop_e2e::{Cluster, Gateway};
use interop_proto::v1::{envelope::Content, Inbox, ReceiptStatus, RejectCode, RequestAction};

use crate::common::{accepted, next_acked, nothing_within, receiver, rejected, sender};

const BOB: &str = "home:+4915112345678";
const DAVE: &str = "home:+4915112345670";
const ALICE: &str = "signal:alice";
const TOM: &str = "telegram:tom";

async fn flush(c: &Cluster) {
    let mut r = redis::aio::ConnectionManager::new(redis::Client::open(c.redis.url()).unwrap())
        .await
        .unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut r).await.unwrap();
}

async fn respond(gw: &Gateway, user: &str, from: &str, action: RequestAction) {
    let out = sender(&gw.ingest_url, "home")
        .await
        .respond_to_request(user, from, action)
        .await
        .unwrap();
    assert!(matches!(out, RequestOutcome::Responded(_)), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opt_in_blocks_and_acceptances_hold_after_redis_loses_everything() {
    let c = Cluster::start().await;
    let gw = &c.gateway;
    let home = sender(&gw.ingest_url, "home").await;
    let out = home
        .set_consent_with(BOB, true, &["signal", "telegram"], Inbox::Combined)
        .await
        .unwrap();
    assert!(matches!(out, ConsentOutcome::Updated(_)), "{out:?}");
    let out = sender(&gw.ingest_url, "signal")
        .await
        .set_consent(ALICE, true, &["home"])
        .await
        .unwrap();
    assert!(matches!(out, ConsentOutcome::Updated(_)), "{out:?}");
    respond(gw, BOB, ALICE, RequestAction::Accept).await;
    respond(gw, BOB, TOM, RequestAction::Block).await;
    let group = match sender(&gw.ingest_url, "signal")
        .await
        .create_named_group(ALICE, &[BOB.to_owned()], "Book club")
        .await
        .unwrap()
    {
        GroupOutcome::Updated(g) => g.group_id,
        other => panic!("{other:?}"),
    };

    flush(&c).await;

    // The settings the app shows.
    let ConsentStateOutcome::State(state) = home.get_consent(BOB).await.unwrap() else {
        panic!("no state")
    };
    assert!(state.opted_in);
    assert_eq!(state.allowed_providers, ["signal", "telegram"]);
    assert_eq!(state.inbox, Inbox::Combined as i32);
    assert_eq!(state.blocked, [TOM]);

    flush(&c).await;

    // Alice is still accepted: her message reaches Bob's combined inbox,
    // not his requests.
    let mut bob = receiver(&gw.delivery_url, BOB, "phone").await;
    let alice = sender(&gw.ingest_url, "signal").await;
    accepted(
        alice
            .send(text_envelope("a1", ALICE, BOB, "still there?"))
            .await
            .unwrap(),
    );
    let d = loop {
        let d = next_acked(&mut bob).await;
        if d.envelope.group_id.is_empty() {
            break d;
        }
    };
    assert_eq!(
        (d.envelope.from.as_str(), d.inbox),
        (ALICE, Inbox::Combined)
    );

    flush(&c).await;

    // The group and its members too: Alice's group message reaches Bob,
    // and Tom is no member.
    accepted(
        alice
            .send(group_text_envelope("g1", ALICE, &group, "chapter 3"))
            .await
            .unwrap(),
    );
    loop {
        let d = next_acked(&mut bob).await;
        if d.envelope.client_message_id == "g1" {
            assert_eq!(d.envelope.group_id, group);
            break;
        }
    }
    flush(&c).await;
    let r = rejected(
        sender(&gw.ingest_url, "telegram")
            .await
            .send(group_text_envelope("g2", TOM, &group, "me too"))
            .await
            .unwrap(),
    );
    assert_eq!(r.code, RejectCode::GroupNotFound as i32);

    flush(&c).await;

    // Tom is still blocked: refused like an unknown user, nothing reaches
    // Bob.
    let mut tom_rx = receiver(&gw.delivery_url, TOM, "phone").await;
    let tom = sender(&gw.ingest_url, "telegram").await;
    accepted(
        tom.send(text_envelope("t1", TOM, BOB, "let me in"))
            .await
            .unwrap(),
    );
    let receipt = loop {
        let e = next_acked(&mut tom_rx).await.envelope;
        if let Some(Content::Receipt(r)) = e.content {
            break r;
        }
    };
    assert_eq!(
        (
            receipt.status,
            receipt.code,
            receipt.client_message_id.as_str()
        ),
        (
            ReceiptStatus::Failed as i32,
            RejectCode::RecipientUnavailable as i32,
            "t1"
        )
    );
    nothing_within(&mut bob, 1000).await;

    // And a user who never opted in is still not reachable.
    flush(&c).await;
    let r = rejected(
        alice
            .send(text_envelope("a2", ALICE, DAVE, "hi"))
            .await
            .unwrap(),
    );
    assert_eq!(r.code, RejectCode::RecipientUnavailable as i32);

    for (name, r) in c.gateway.stop().await {
        assert!(r.is_ok(), "{name}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_message_waits_while_its_consent_recheck_gets_no_answer() {
    let mut c = Cluster::start().await;
    let home = sender(&c.gateway.ingest_url, "home").await;
    let out = home
        .set_consent(BOB, true, &["signal", "telegram"])
        .await
        .unwrap();
    assert!(matches!(out, ConsentOutcome::Updated(_)), "{out:?}");
    respond(&c.gateway, BOB, ALICE, RequestAction::Accept).await;
    // Tom's message is stored as a request; then Bob blocks him, before any
    // of Bob's devices fetched it.
    let tom = sender(&c.gateway.ingest_url, "telegram").await;
    accepted(
        tom.send(text_envelope("t1", TOM, BOB, "buy now"))
            .await
            .unwrap(),
    );
    respond(&c.gateway, BOB, TOM, RequestAction::Block).await;
    // Redis stops: the re-check of the stored message cannot be answered,
    // so it waits instead of being shown as routing filed it.
    c.redis.stop();
    let mut bob = receiver(&c.gateway.delivery_url, BOB, "phone").await;
    nothing_within(&mut bob, 2000).await;
    // Redis comes back empty: the re-check loads Bob's answers from the
    // stream, finds the block, and withholds Tom's message; Alice's reaches
    // him, and is the first thing he sees.
    c.redis.restart();
    let alice = sender(&c.gateway.ingest_url, "signal").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = alice
            .send(text_envelope("a1", ALICE, BOB, "hi"))
            .await
            .unwrap();
        if matches!(out, interop_client::SendOutcome::Accepted(_)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{out:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let d = next_acked(&mut bob).await;
    assert_eq!(
        (
            d.envelope.from.as_str(),
            d.envelope.client_message_id.as_str()
        ),
        (ALICE, "a1")
    );
    nothing_within(&mut bob, 1000).await;
}
