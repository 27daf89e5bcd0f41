//! Issue 23, item 4 (docs/adr/0027), end to end: a send older than the
//! idempotency window (less the skew) is refused and one just inside it
//! accepted; a recipient's store at its count limit refuses a message, its
//! sender gets FAILED/RECIPIENT_STORE_FULL, and once the recipient's device
//! acked what it holds, room is made for the next.

use std::time::Duration;

use interop_client::{text_envelope, Receiver};
use interop_e2e::{registry, Stack};
use interop_proto::limits::{max_sent_at_age_ms, DEFAULT_IDEMPOTENCY_WINDOW_MS};
use interop_proto::v1::envelope::Content;
use interop_proto::v1::{Receipt, ReceiptStatus, RejectCode};

use crate::common::{
    accepted, next_acked, nothing_within, opt_in, receiver, rejected, send_ok, sender, store_of,
    until_stored, WAIT,
};

const BOB: &str = "home:+4915112345678";
const ALICE: &str = "signal:alice";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_just_past_the_idempotency_window_is_refused_and_one_just_inside_accepted() {
    let stack = Stack::start(registry(), Default::default()).await;
    opt_in(&stack.ingest_url, BOB, &["signal"]).await;
    let signal = sender(&stack.ingest_url, "signal").await;
    let age = max_sent_at_age_ms(DEFAULT_IDEMPOTENCY_WINDOW_MS);
    let mut inside = text_envelope("old-inside", ALICE, BOB, "queued for a day");
    inside.sent_at_ms = interop_proto::now_ms() - age + 60_000;
    let first = accepted(signal.send(inside.clone()).await.unwrap());
    // Re-sent at once: the claim is there, the same id.
    let again = accepted(signal.send(inside).await.unwrap());
    assert!(again.duplicate);
    assert_eq!(again.message_id, first.message_id);
    let mut outside = text_envelope("old-outside", ALICE, BOB, "queued for three days");
    outside.sent_at_ms = interop_proto::now_ms() - age - 60_000;
    let r = rejected(signal.send(outside.clone()).await.unwrap());
    assert_eq!(r.code(), RejectCode::TimestampOutOfRange);
    assert!(r.detail.contains("idempotency window"), "{}", r.detail);
    outside.sent_at_ms = interop_proto::now_ms() - 3 * 24 * 3600 * 1000;
    let r = rejected(signal.send(outside).await.unwrap());
    assert_eq!(r.code(), RejectCode::TimestampOutOfRange);
}

fn receipt(env: &interop_proto::v1::Envelope) -> Option<&Receipt> {
    match &env.content {
        Some(Content::Receipt(r)) => Some(r),
        _ => None,
    }
}

/// Receipts Alice's device gets (acked) until one says `status` about `id`.
async fn receipt_for(alice: &mut Receiver, id: &str, status: ReceiptStatus) -> Receipt {
    loop {
        let d = next_acked(alice).await;
        if let Some(r) = receipt(&d.envelope) {
            if r.message_id == id && r.status() == status {
                return r.clone();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_tells_the_sender_and_makes_room_from_what_was_delivered() {
    // The operator's per-recipient limit, small.
    let streams = interop_bus::StreamSettings {
        inbox_max_per_recipient: 3,
        ..Default::default()
    };
    let stack = Stack::start(registry(), streams).await;
    let d = stack.delivery().await;
    opt_in(&stack.ingest_url, BOB, &["signal"]).await;
    let signal = sender(&stack.ingest_url, "signal").await;
    let mut alice = receiver(&d.url, ALICE, "phone").await;
    // Bob has no device online: three fill his store.
    let mut ids = Vec::new();
    for i in 1..=3 {
        let a = send_ok(&signal, text_envelope(&format!("m{i}"), ALICE, BOB, "hi")).await;
        ids.push(a.message_id);
    }
    let nats = stack.nats.url();
    until_stored(&nats, BOB, "three in Bob's store", |s| s.len() == 3).await;
    // The fourth is refused by the store: Alice is told, with a code.
    let m4 = send_ok(&signal, text_envelope("m4", ALICE, BOB, "one too many")).await;
    let r = tokio::time::timeout(
        WAIT,
        receipt_for(&mut alice, &m4.message_id, ReceiptStatus::Failed),
    )
    .await
    .expect("a FAILED receipt for the refused message");
    assert_eq!(r.code(), RejectCode::RecipientStoreFull);
    let stored: Vec<String> = store_of(&nats, BOB)
        .await
        .into_iter()
        .map(|e| e.message_id)
        .collect();
    assert_eq!(stored, ids, "nothing pushed out, m4 not stored");
    // Bob's phone takes and acks all three; his cursor is written when the
    // session ends.
    let mut bob = receiver(&d.url, BOB, "phone").await;
    for id in &ids {
        assert_eq!(&next_acked(&mut bob).await.envelope.message_id, id);
    }
    nothing_within(&mut bob, 500).await;
    bob.close().await;
    // Alice's own store (also limited to 3) takes the three DELIVERED
    // receipts: her phone acks as it goes, so room is made for them.
    for id in &ids {
        receipt_for(&mut alice, id, ReceiptStatus::Delivered).await;
    }
    // The next one finds the store full of delivered messages: they make
    // room, it is stored and delivered, and Alice gets no FAILED for it.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let m5 = send_ok(&signal, text_envelope("m5", ALICE, BOB, "room again")).await;
    let mut bob = receiver(&d.url, BOB, "phone").await;
    assert_eq!(
        next_acked(&mut bob).await.envelope.message_id,
        m5.message_id
    );
    let r = receipt_for(&mut alice, &m5.message_id, ReceiptStatus::Delivered).await;
    assert_eq!(r.code(), RejectCode::Unspecified);
}
