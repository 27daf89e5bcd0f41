//! The key directory's notices (docs/adr/0026), through the real services:
//! an owner hears once when a fetch storm drains a device's one-time keys;
//! users who fetched someone's keys hear when that person's devices or
//! identity keys change, as a `KeyNotice` or, for an app that does not
//! declare key notices, as text; nobody else does.

use crate::common::verified_bundles;
use interop_client::olm;
use interop_client::{Receiver, Sender};
use interop_e2e::{registry, Stack, HOME_TOKEN, SIGNAL_TOKEN, TELEGRAM_TOKEN};
use interop_proto::v1::{
    envelope::Content, key_notice::Kind, Encryption, Envelope, KeyNotice, RejectCode,
};
use interop_providers::{Capabilities, ContentKind, Provider, Registry};
use interop_state::{ContactState, ContactStore};
use vodozemac::olm::Account;

use crate::common::{next_acked, nothing_within, within};

const BOB: &str = "home:+4915112345678";
const ALICE: &str = "signal:alice";
const CAROL: &str = "signal:carol";
const TOM: &str = "telegram:tom";

/// The harness registry with `home` and `signal` declaring key notices;
/// `telegram` declares nothing (the first version's kinds).
fn registry_with_key_notices() -> Registry {
    let mut providers: Vec<Provider> = registry().providers().cloned().collect();
    for p in &mut providers {
        if p.id != "telegram" {
            let mut content = ContentKind::DEFAULT.to_vec();
            content.push(ContentKind::KeyNotice);
            p.capabilities = Capabilities {
                content,
                media_formats: Vec::new(),
            };
        }
    }
    Registry::from_providers(providers).expect("a valid registry")
}

async fn publish(s: &Sender, account: &mut Account, device: &str, n: usize, first_id: u32) {
    account.generate_one_time_keys(n);
    let (keys, otks) = olm::device_keys(account, device, first_id);
    s.publish_keys(BOB, keys, otks, vec![])
        .await
        .unwrap()
        .done()
        .unwrap();
}

fn notice(e: &Envelope) -> KeyNotice {
    match &e.content {
        Some(Content::KeyNotice(k)) => k.clone(),
        other => panic!("not a key notice: {other:?}"),
    }
}

async fn fetch(s: &Sender, requester: &str) -> bool {
    let b = verified_bundles(s.fetch_bundles(requester, BOB, &[]).await.unwrap()).await;
    b.bundles[0].one_time_prekey.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_hear_of_low_keys_once_and_fetchers_hear_of_changed_keys() {
    let stack = Stack::start(registry_with_key_notices(), Default::default()).await;
    let delivery = stack.delivery().await;
    let connect = |p: &'static str, t: &'static str| Sender::connect(&stack.ingest_url, p, t);
    let (home, signal, telegram) = (
        connect("home", HOME_TOKEN).await.unwrap(),
        connect("signal", SIGNAL_TOKEN).await.unwrap(),
        connect("telegram", TELEGRAM_TOKEN).await.unwrap(),
    );
    home.set_consent(BOB, true, &["signal", "telegram"])
        .await
        .unwrap();
    for u in [ALICE, CAROL] {
        signal.set_consent(u, true, &["home"]).await.unwrap();
    }
    telegram.set_consent(TOM, true, &["home"]).await.unwrap();
    let rx = |p: &'static str, t: &'static str, u: &'static str| {
        Receiver::connect(&delivery.url, p, t, u, "d1")
    };
    let mut bob_rx = rx("home", HOME_TOKEN, BOB).await.unwrap();
    let mut alice_rx = rx("signal", SIGNAL_TOKEN, ALICE).await.unwrap();
    let mut carol_rx = rx("signal", SIGNAL_TOKEN, CAROL).await.unwrap();
    let mut tom_rx = rx("telegram", TELEGRAM_TOKEN, TOM).await.unwrap();

    // Bob's phone publishes 12 one-time keys. Alice drains them, plus one
    // fetch that gets the last-resort key.
    let mut phone = Account::new();
    publish(&home, &mut phone, "phone", 12, 1).await;
    let mut claimed = 0;
    for _ in 0..13 {
        claimed += u32::from(fetch(&signal, ALICE).await);
    }
    assert_eq!(claimed, 12);
    // Bob hears once: when a fetch first left fewer than 10 (9 left). The
    // later fetches of the same top-up are the same notice.
    let low = next_acked(&mut bob_rx).await.envelope;
    assert_eq!((low.from.as_str(), low.to.as_str()), (BOB, BOB));
    assert_eq!(low.encryption, Encryption::TransportOnly as i32);
    assert_eq!(
        notice(&low),
        KeyNotice {
            kind: Kind::OneTimePrekeysLow as i32,
            device_id: "phone".into(),
            left: 9,
        }
    );
    nothing_within(&mut bob_rx, 500).await;
    // A top-up is a new generation: draining it is told again.
    publish(&home, &mut phone, "phone", 12, 13).await;
    for _ in 0..4 {
        assert!(fetch(&signal, ALICE).await);
    }
    let again = notice(&next_acked(&mut bob_rx).await.envelope);
    assert_eq!((again.kind(), again.left), (Kind::OneTimePrekeysLow, 9));

    // Tom (telegram) and Carol fetch too; Bob blocks Carol.
    fetch(&telegram, TOM).await;
    fetch(&signal, CAROL).await;
    let state = interop_e2e::records(&stack.nats.url(), &stack.redis.url()).await;
    ContactStore::new(state)
        .set(BOB, CAROL, ContactState::Blocked)
        .await
        .unwrap();

    // The same identity key again, with more one-time keys: nobody hears.
    publish(&home, &mut phone, "phone", 5, 25).await;
    // A reinstalled app: a new identity key for the phone.
    let mut reinstalled = Account::new();
    publish(&home, &mut reinstalled, "phone", 5, 100).await;
    let changed = within("the identity-key notice", next_acked(&mut alice_rx)).await;
    assert_eq!(
        (changed.envelope.from.as_str(), changed.envelope.to.as_str()),
        (BOB, ALICE)
    );
    let k = notice(&changed.envelope);
    assert_eq!(
        (k.kind(), k.device_id.as_str()),
        (Kind::IdentityKeyChanged, "phone")
    );
    // Tom's app does not declare key notices: a text it can show.
    let text = next_acked(&mut tom_rx).await.envelope;
    assert_eq!(text.from, BOB);
    match text.content {
        Some(Content::Text(t)) => assert!(t.body.contains("security code"), "{}", t.body),
        other => panic!("not text: {other:?}"),
    }

    // A device added, then removed.
    let mut tablet = Account::new();
    publish(&home, &mut tablet, "tablet", 1, 1).await;
    let added = notice(&next_acked(&mut alice_rx).await.envelope);
    assert_eq!(
        (added.kind(), added.device_id.as_str()),
        (Kind::DeviceAdded, "tablet")
    );
    home.remove_device(BOB, "tablet")
        .await
        .unwrap()
        .done()
        .unwrap();
    let removed = notice(&next_acked(&mut alice_rx).await.envelope);
    assert_eq!(
        (removed.kind(), removed.device_id.as_str()),
        (Kind::DeviceRemoved, "tablet")
    );

    // Carol, whom Bob blocked, heard nothing; nor did Bob about himself.
    nothing_within(&mut carol_rx, 300).await;
    nothing_within(&mut bob_rx, 300).await;
    // And a client cannot write a key notice itself.
    let forged = Envelope {
        client_message_id: "forged".into(),
        from: ALICE.into(),
        to: BOB.into(),
        encryption: Encryption::TransportOnly as i32,
        content: Some(Content::KeyNotice(KeyNotice {
            kind: Kind::IdentityKeyChanged as i32,
            ..Default::default()
        })),
        ..Default::default()
    };
    match signal.send(forged).await.unwrap() {
        interop_client::SendOutcome::Rejected(r) => {
            assert_eq!(r.code(), RejectCode::UnsupportedContent)
        }
        other => panic!("a forged key notice was not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_fetches_through_two_ingest_replicas_share_no_key_and_tell_the_owner_once() {
    let stack = Stack::start(registry_with_key_notices(), Default::default()).await;
    let replicas = [stack.ingest_url.clone(), stack.ingest().await];
    let delivery = stack.delivery().await;
    let home = Sender::connect(&replicas[0], "home", HOME_TOKEN)
        .await
        .unwrap();
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    let mut phone = Account::new();
    for first in [1, 101, 201] {
        publish(&home, &mut phone, "phone", 100, first).await;
    }
    let mut bob_rx = Receiver::connect(&delivery.url, "home", HOME_TOKEN, BOB, "phone")
        .await
        .unwrap();
    // Two connections to each replica; 40 requesting users, 25 fetches
    // each (under one user's burst of 50), all at once.
    let mut conns = Vec::new();
    for i in 0..4 {
        conns.push(std::sync::Arc::new(
            Sender::connect(&replicas[i % 2], "signal", SIGNAL_TOKEN)
                .await
                .unwrap(),
        ));
    }
    let mut tasks = Vec::new();
    for i in 0..1000usize {
        let conn = conns[i % conns.len()].clone();
        tasks.push(tokio::spawn(async move {
            let requester = format!("signal:req{}", i % 40);
            let b = verified_bundles(conn.fetch_bundles(&requester, BOB, &[]).await.unwrap()).await;
            b.bundles[0].one_time_prekey.as_ref().map(|k| k.key_id)
        }));
    }
    let (mut claimed, mut last_resort) = (Vec::new(), 0);
    for t in tasks {
        match t.await.unwrap() {
            Some(id) => claimed.push(id),
            None => last_resort += 1,
        }
    }
    let unique: std::collections::HashSet<u32> = claimed.iter().copied().collect();
    assert_eq!(
        unique.len(),
        claimed.len(),
        "a one-time prekey went out twice"
    );
    assert_eq!(
        claimed.len(),
        300,
        "every key goes out before the last resort"
    );
    assert_eq!(last_resort, 700);
    // Both replicas saw the pool run low and then empty; the owner is told
    // once (one notice per top-up, whichever replica wrote it).
    let low = notice(&next_acked(&mut bob_rx).await.envelope);
    assert_eq!(
        (low.kind(), low.device_id.as_str()),
        (Kind::OneTimePrekeysLow, "phone")
    );
    assert!(low.left < 10, "{low:?}");
    nothing_within(&mut bob_rx, 1000).await;
}
