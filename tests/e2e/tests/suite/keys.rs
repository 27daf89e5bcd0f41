//! End-to-end encryption set up through the gateway: the key directory's
//! frames at ingest, and a real Olm session (vodozemac) between a `signal:`
//! user and a `home:` user whose keys travel through it. The gateway sees
//! public keys and ciphertext only.

use crate::common::{verified_bundles, verified_devices};
use std::time::Duration;

use interop_client::keys::KeysOutcome;
use interop_client::olm;
use interop_client::{Delivered, Receiver, SendOutcome, Sender};
use interop_e2e::{Cluster, HOME_TOKEN, SIGNAL_TOKEN, TELEGRAM_TOKEN};
use interop_proto::v1::{
    envelope::Content, Ciphertext, DeviceKeys, Encryption, Envelope, PublicKey, RejectCode,
    Rejected,
};
use vodozemac::olm::{Account, OlmMessage, SessionConfig};

const BOB: &str = "home:+4915112345678";
const ALICE: &str = "signal:alice";

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn sender(c: &Cluster, provider: &str, token: &str) -> Sender {
    Sender::connect(&c.gateway.ingest_url, provider, token)
        .await
        .unwrap()
}

async fn next_acked(rx: &mut Receiver) -> Delivered {
    loop {
        let d = within("a delivery", rx.next()).await.unwrap();
        rx.ack(&[d.delivery_tag]).await.unwrap();
        // Receipts about what this user sent are not what the tests wait for.
        if !matches!(d.envelope.content, Some(Content::Receipt(_))) {
            return d;
        }
    }
}

fn e2ee(cmid: &str, from: &str, to: &str, c: Ciphertext) -> Envelope {
    Envelope {
        client_message_id: cmid.into(),
        from: from.into(),
        to: to.into(),
        encryption: Encryption::E2ee as i32,
        content: Some(Content::Ciphertext(c)),
        ..Default::default()
    }
}

fn ciphertext_of(d: &Delivered) -> Ciphertext {
    match &d.envelope.content {
        Some(Content::Ciphertext(c)) => c.clone(),
        other => panic!("not a ciphertext: {other:?}"),
    }
}

fn rejection<T: std::fmt::Debug>(o: KeysOutcome<T>) -> Rejected {
    match o {
        KeysOutcome::Rejected(r) => r,
        KeysOutcome::Done(t) => panic!("not refused: {t:?}"),
    }
}

/// `user`'s provider publishes `account`'s keys as `device`, with `n` new
/// one-time keys numbered from `first_id`.
async fn publish(
    s: &Sender,
    user: &str,
    account: &mut Account,
    device: &str,
    n: usize,
    first_id: u32,
) {
    account.generate_one_time_keys(n);
    let (keys, otks) = olm::device_keys(account, device, first_id);
    let published = s
        .publish_keys(user, keys, otks, vec![])
        .await
        .unwrap()
        .done()
        .unwrap();
    assert_eq!(published.device_id, device);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_olm_session_is_set_up_through_the_key_directory_and_carries_messages_both_ways() {
    let c = Cluster::start().await;
    let (home, signal) = (
        sender(&c, "home", HOME_TOKEN).await,
        sender(&c, "signal", SIGNAL_TOKEN).await,
    );
    // Both users opted in, each allowing the other's provider.
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    signal.set_consent(ALICE, true, &["home"]).await.unwrap();
    let mut bob_account = Account::new();
    let mut alice_account = Account::new();
    publish(&home, BOB, &mut bob_account, "phone", 5, 1).await;
    publish(&signal, ALICE, &mut alice_account, "laptop", 5, 1).await;

    // Alice fetches Bob's bundle and starts a session with a one-time key.
    let bundles = verified_bundles(signal.fetch_bundles(ALICE, BOB, &[]).await.unwrap()).await;
    assert_eq!(bundles.bundles.len(), 1);
    assert!(bundles.bundles[0].one_time_prekey.is_some());
    // Key transparency: Bob's identity key is the committed one, against
    // the VRF key Alice's app pinned; a substituted one is refused.
    let pinned = interop_e2e::kt_vrf_public_key().await;
    interop_client::keys::verify_bundles(&bundles, Some(&pinned)).unwrap();
    let mut substituted = bundles.clone();
    if let Some(d) = substituted.bundles[0].device.as_mut() {
        d.identity_key = Some(interop_proto::v1::PublicKey {
            key: vec![0xee; 32].into(),
            ..d.identity_key.clone().unwrap_or_default()
        });
    }
    assert_eq!(
        interop_client::keys::verify_bundles(&substituted, Some(&pinned)),
        Err(interop_client::keys::VerifyError::KeyNotCommitted(
            "phone".into()
        ))
    );
    assert_eq!(
        interop_client::keys::verify_bundles(&bundles, Some(&[1; 32])),
        Err(interop_client::keys::VerifyError::WrongVrfKey)
    );
    verified_devices(signal.list_devices(ALICE, BOB).await.unwrap()).await;
    let mut alice_session = olm::outbound_session(&alice_account, &bundles.bundles[0]).unwrap();
    let first = alice_session.encrypt("hello bob").unwrap();
    assert!(matches!(first, OlmMessage::PreKey(_)));

    let mut bob_rx = Receiver::connect(&c.gateway.delivery_url, "home", HOME_TOKEN, BOB, "phone")
        .await
        .unwrap();
    let out = signal
        .send(e2ee("m1", ALICE, BOB, olm::encode(&first)))
        .await
        .unwrap();
    assert!(matches!(out, SendOutcome::Accepted(_)), "{out:?}");
    let got = next_acked(&mut bob_rx).await;
    assert_eq!(got.envelope.encryption, Encryption::E2ee as i32);
    // Bob's app checks the sender's identity key (from the directory) and
    // decrypts the pre-key message.
    let alice_devices = verified_devices(home.list_devices(BOB, ALICE).await.unwrap()).await;
    let alice_identity = olm::identity_key(&DeviceKeys {
        identity_key: alice_devices.devices[0].identity_key.clone(),
        ..Default::default()
    })
    .unwrap();
    let OlmMessage::PreKey(prekey) = olm::decode(&ciphertext_of(&got)).unwrap() else {
        panic!("the first message is a pre-key message");
    };
    let inbound = bob_account
        .create_inbound_session(SessionConfig::version_1(), alice_identity, &prekey)
        .unwrap();
    assert_eq!(inbound.plaintext, b"hello bob");
    let mut bob_session = inbound.session;

    // Bob replies over the session; Alice decrypts it.
    let mut alice_rx = Receiver::connect(
        &c.gateway.delivery_url,
        "signal",
        SIGNAL_TOKEN,
        ALICE,
        "laptop",
    )
    .await
    .unwrap();
    let reply = bob_session.encrypt("hi alice").unwrap();
    let out = home
        .send(e2ee("r1", BOB, ALICE, olm::encode(&reply)))
        .await
        .unwrap();
    assert!(matches!(out, SendOutcome::Accepted(_)), "{out:?}");
    let got = next_acked(&mut alice_rx).await;
    let plain = alice_session
        .decrypt(&olm::decode(&ciphertext_of(&got)).unwrap())
        .unwrap();
    assert_eq!(plain, b"hi alice");

    // A later message uses the established session: a normal message.
    let later = alice_session.encrypt("see you").unwrap();
    assert!(matches!(later, OlmMessage::Normal(_)));
    signal
        .send(e2ee("m2", ALICE, BOB, olm::encode(&later)))
        .await
        .unwrap();
    let got = next_acked(&mut bob_rx).await;
    let plain = bob_session
        .decrypt(&olm::decode(&ciphertext_of(&got)).unwrap())
        .unwrap();
    assert_eq!(plain, b"see you");

    // The claimed one-time key is gone from Bob's pool: 4 left, which only
    // Bob's own provider sees.
    let own = verified_devices(home.list_devices(BOB, BOB).await.unwrap()).await;
    assert_eq!(own.devices[0].one_time_prekeys, 4);
    let theirs = verified_devices(signal.list_devices(ALICE, BOB).await.unwrap()).await;
    assert_eq!(theirs.devices[0].one_time_prekeys, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_visible_only_as_consent_allows_and_every_hidden_user_looks_the_same() {
    let c = Cluster::start().await;
    let (home, signal, telegram) = (
        sender(&c, "home", HOME_TOKEN).await,
        sender(&c, "signal", SIGNAL_TOKEN).await,
        sender(&c, "telegram", TELEGRAM_TOKEN).await,
    );
    // Bob opted in, allowing signal only; Carol published keys, then opted out.
    let carol = "home:+4915112345679";
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    home.set_consent(carol, true, &["signal", "telegram"])
        .await
        .unwrap();
    let mut account = Account::new();
    publish(&home, BOB, &mut account, "phone", 2, 1).await;
    let mut carols = Account::new();
    publish(&home, carol, &mut carols, "phone", 2, 1).await;
    home.set_consent(carol, false, &[]).await.unwrap();

    // Visible: signal sees Bob's device.
    let seen = verified_devices(signal.list_devices(ALICE, BOB).await.unwrap()).await;
    assert_eq!(seen.devices.len(), 1);
    // Hidden for three reasons; the answers cannot be told apart.
    let tg = "telegram:dave";
    let answers = vec![
        rejection(telegram.list_devices(tg, BOB).await.unwrap()),
        rejection(signal.list_devices(ALICE, carol).await.unwrap()),
        rejection(
            signal
                .list_devices(ALICE, "home:+4915100000000")
                .await
                .unwrap(),
        ),
        rejection(telegram.fetch_bundles(tg, BOB, &[]).await.unwrap()),
        rejection(signal.fetch_bundles(ALICE, carol, &[]).await.unwrap()),
        rejection(
            signal
                .fetch_bundles(ALICE, "home:+4915100000000", &[])
                .await
                .unwrap(),
        ),
    ];
    for a in &answers {
        assert_eq!(a.code(), RejectCode::RecipientUnavailable, "{a:?}");
        assert_eq!(
            (&a.detail, a.retry_after_ms),
            (&answers[0].detail, answers[0].retry_after_ms)
        );
    }
    // Key packages of hidden users are left out, like users without devices.
    let kps = signal
        .fetch_key_packages(ALICE, &[carol, "home:+4915100000000"])
        .await
        .unwrap()
        .done()
        .unwrap();
    assert!(kps.key_packages.is_empty());
    // Hidden users' one-time keys were not claimed by those attempts.
    let own = verified_devices(home.list_devices(carol, carol).await.unwrap()).await;
    assert_eq!(own.devices[0].one_time_prekeys, 2);
}

fn key(algorithm: &str, len: usize) -> PublicKey {
    PublicKey {
        algorithm: algorithm.into(),
        key_id: 0,
        key: vec![5; len].into(),
        signature: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_publishes_get_typed_codes_and_store_nothing() {
    let c = Cluster::start().await;
    let (home, signal) = (
        sender(&c, "home", HOME_TOKEN).await,
        sender(&c, "signal", SIGNAL_TOKEN).await,
    );
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    let mut account = Account::new();
    account.generate_one_time_keys(3);
    let (good, otks) = olm::device_keys(&mut account, "phone", 1);

    let wrong_size = DeviceKeys {
        identity_key: Some(key("curve25519", 31)),
        ..good.clone()
    };
    let unknown_alg = DeviceKeys {
        identity_key: Some(key("rsa-4096", 512)),
        ..good.clone()
    };
    // (who publishes, for whom, the device's keys, key packages, the answer)
    type Case<'a> = (&'a Sender, &'a str, DeviceKeys, Vec<Vec<u8>>, RejectCode);
    let cases: Vec<Case> = vec![
        (&home, BOB, wrong_size, vec![], RejectCode::InvalidKey),
        (&home, BOB, unknown_alg, vec![], RejectCode::InvalidKey),
        // Another provider's user.
        (
            &signal,
            BOB,
            good.clone(),
            vec![],
            RejectCode::SenderNotOwned,
        ),
        // A user who has not opted in.
        (
            &home,
            "home:+4915100000001",
            good.clone(),
            vec![],
            RejectCode::NotOptedIn,
        ),
        // A KeyPackage over 16 KiB.
        (
            &home,
            BOB,
            good.clone(),
            vec![vec![1; 16 * 1024 + 1]],
            RejectCode::TooLong,
        ),
    ];
    for (s, user, keys, kps, want) in cases {
        let r = rejection(s.publish_keys(user, keys, otks.clone(), kps).await.unwrap());
        assert_eq!(r.code(), want, "{r:?}");
    }
    // Nothing of those was stored.
    // (A user without devices has nothing to prove: no proof.)
    let listed = home.list_devices(BOB, BOB).await.unwrap().done().unwrap();
    assert!(listed.devices.is_empty(), "{listed:?}");
    assert!(listed.transparency.is_none(), "{listed:?}");

    // The real publish, then its replay: refused, the pool unchanged.
    home.publish_keys(BOB, good.clone(), otks.clone(), vec![])
        .await
        .unwrap()
        .done()
        .unwrap();
    let r = rejection(home.publish_keys(BOB, good, otks, vec![]).await.unwrap());
    assert_eq!(r.code(), RejectCode::KeyIdReused);
    let listed = verified_devices(home.list_devices(BOB, BOB).await.unwrap()).await;
    assert_eq!(listed.devices[0].one_time_prekeys, 3);
    // The connections go on working.
    signal.set_consent(ALICE, true, &["home"]).await.unwrap();
    let ok = verified_devices(signal.list_devices(ALICE, BOB).await.unwrap()).await;
    assert_eq!(ok.devices.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_drain_anothers_one_time_keys_past_the_fetch_limit() {
    let c = Cluster::start().await;
    let (home, signal) = (
        sender(&c, "home", HOME_TOKEN).await,
        sender(&c, "signal", SIGNAL_TOKEN).await,
    );
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    let mut account = Account::new();
    publish(&home, BOB, &mut account, "phone", 100, 1).await;
    // One requesting user's bucket lets its burst (50) through, plus what
    // refills while the fetches run (5/s), then refuses with a retry time.
    // Counted rather than assumed: a slow machine refills more.
    let limit = interop_ingest::DEFAULT_KEY_FETCH_USER_LIMIT;
    let started = std::time::Instant::now();
    let mut allowed = 0u32;
    let refusal = loop {
        match signal.fetch_bundles(ALICE, BOB, &[]).await.unwrap() {
            done @ KeysOutcome::Done(_) => {
                verified_bundles(done).await;
                allowed += 1;
            }
            KeysOutcome::Rejected(r) => break r,
        }
        assert!(allowed <= 90, "never refused: {allowed} fetches");
    };
    let refilled = (started.elapsed().as_secs_f64() * limit.per_second).ceil() as u32 + 1;
    assert!(
        allowed >= limit.burst && allowed <= limit.burst + refilled,
        "{allowed} fetches passed; the bucket allows {} plus {refilled}",
        limit.burst
    );
    assert_eq!(refusal.code(), RejectCode::RateLimited);
    assert!(refusal.retry_after_ms > 0);
    // Another user of the same provider still may.
    verified_bundles(signal.fetch_bundles("signal:erin", BOB, &[]).await.unwrap()).await;
    let own = verified_devices(home.list_devices(BOB, BOB).await.unwrap()).await;
    assert_eq!(own.devices[0].one_time_prekeys, 100 - allowed - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_device_decrypts_its_own_ciphertext_and_a_device_without_one_is_told() {
    use interop_client::olm::{decrypt_from, encrypt_for, ensure_published, LocalDevice};
    let c = Cluster::start().await;
    let (home, signal) = (
        sender(&c, "home", HOME_TOKEN).await,
        sender(&c, "signal", SIGNAL_TOKEN).await,
    );
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    signal.set_consent(ALICE, true, &["home"]).await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut phone = LocalDevice::open(root.path(), BOB, "phone").unwrap();
    let mut laptop = LocalDevice::open(root.path(), BOB, "laptop").unwrap();
    let mut alice = LocalDevice::open(root.path(), ALICE, "cli").unwrap();
    ensure_published(&home, &mut phone, BOB, "phone")
        .await
        .unwrap();
    ensure_published(&home, &mut laptop, BOB, "laptop")
        .await
        .unwrap();
    ensure_published(&signal, &mut alice, ALICE, "cli")
        .await
        .unwrap();

    let per_device = encrypt_for(&signal, &mut alice, ALICE, BOB, b"hello both")
        .await
        .unwrap();
    assert_eq!(per_device.len(), 2);
    // Bob's tablet publishes only after Alice encrypted: it has no ciphertext.
    let mut tablet = LocalDevice::open(root.path(), BOB, "tablet").unwrap();
    ensure_published(&home, &mut tablet, BOB, "tablet")
        .await
        .unwrap();
    let ciphertext = Ciphertext {
        scheme: olm::SCHEME.into(),
        devices: olm::per_device(per_device),
        ..Default::default()
    };
    let mut rx = Vec::new();
    for d in ["phone", "laptop", "tablet"] {
        rx.push(
            Receiver::connect(&c.gateway.delivery_url, "home", HOME_TOKEN, BOB, d)
                .await
                .unwrap(),
        );
    }
    let out = signal
        .send(e2ee("m1", ALICE, BOB, ciphertext))
        .await
        .unwrap();
    assert!(matches!(out, SendOutcome::Accepted(_)), "{out:?}");
    let got: Vec<Ciphertext> = {
        let mut got = Vec::new();
        for r in &mut rx {
            got.push(ciphertext_of(&next_acked(r).await));
        }
        got
    };
    for (i, device) in [&mut phone, &mut laptop].into_iter().enumerate() {
        assert!(
            got[i].devices.is_empty(),
            "only its own ciphertext reaches a device"
        );
        let plain = decrypt_from(&home, device, BOB, ALICE, &got[i])
            .await
            .unwrap();
        assert_eq!(plain, b"hello both");
    }
    assert!(
        got[2].missing_for_device && got[2].payload.is_empty(),
        "{:?}",
        got[2]
    );

    // Bob's phone answers over its session; Alice's device decrypts it.
    let mut alice_rx = Receiver::connect(
        &c.gateway.delivery_url,
        "signal",
        SIGNAL_TOKEN,
        ALICE,
        "cli",
    )
    .await
    .unwrap();
    let reply = encrypt_for(&home, &mut phone, BOB, ALICE, b"hi from the phone")
        .await
        .unwrap();
    assert_eq!(reply.len(), 1);
    let (_, reply) = reply.into_iter().next().unwrap();
    home.send(e2ee("r1", BOB, ALICE, reply)).await.unwrap();
    // Alice fetched Bob's keys before his tablet was published, so she was
    // told (as text: signal's record does not declare key notices).
    let told = next_acked(&mut alice_rx).await.envelope;
    assert_eq!(told.from, BOB);
    assert!(
        matches!(&told.content, Some(Content::Text(t)) if t.body.contains("added a device")),
        "{told:?}"
    );
    let got = ciphertext_of(&next_acked(&mut alice_rx).await);
    let plain = decrypt_from(&signal, &mut alice, ALICE, BOB, &got)
        .await
        .unwrap();
    assert_eq!(plain, b"hi from the phone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_senders_other_devices_get_their_own_copy_and_the_recipient_none_of_it() {
    use interop_client::olm::{
        decrypt_from, encrypt_for, encrypt_for_own_devices, ensure_published, LocalDevice,
    };
    use interop_proto::v1::ReceiptStatus;
    let c = Cluster::start().await;
    let (home, signal) = (
        sender(&c, "home", HOME_TOKEN).await,
        sender(&c, "signal", SIGNAL_TOKEN).await,
    );
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    signal.set_consent(ALICE, true, &["home"]).await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut phone = LocalDevice::open(root.path(), BOB, "phone").unwrap();
    let mut cli = LocalDevice::open(root.path(), ALICE, "cli").unwrap();
    let mut tablet = LocalDevice::open(root.path(), ALICE, "tablet").unwrap();
    ensure_published(&home, &mut phone, BOB, "phone")
        .await
        .unwrap();
    for (d, id) in [(&mut cli, "cli"), (&mut tablet, "tablet")] {
        ensure_published(&signal, d, ALICE, id).await.unwrap();
    }
    // Alice's cli encrypts for Bob's phone and for her own tablet.
    let theirs = encrypt_for(&signal, &mut cli, ALICE, BOB, b"lunch?")
        .await
        .unwrap();
    let own = encrypt_for_own_devices(&signal, &mut cli, ALICE, "cli", b"lunch?")
        .await
        .unwrap();
    assert_eq!(own.len(), 1, "the tablet only, never the sending device");
    let connect = |p: &'static str, t: &'static str, u: &'static str, d: &'static str| {
        Receiver::connect(&c.gateway.delivery_url, p, t, u, d)
    };
    let mut bob_rx = connect("home", HOME_TOKEN, BOB, "phone").await.unwrap();
    let mut cli_rx = connect("signal", SIGNAL_TOKEN, ALICE, "cli").await.unwrap();
    let mut tablet_rx = connect("signal", SIGNAL_TOKEN, ALICE, "tablet")
        .await
        .unwrap();
    let sent = signal
        .send(e2ee(
            "m1",
            ALICE,
            BOB,
            Ciphertext {
                scheme: olm::SCHEME.into(),
                devices: olm::per_device(theirs),
                sender_devices: olm::per_device(own),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let SendOutcome::Accepted(accepted) = sent else {
        panic!("{sent:?}")
    };

    // Bob's phone: its own ciphertext, nothing of Alice's devices'.
    let got = next_acked(&mut bob_rx).await;
    let for_bob = ciphertext_of(&got);
    assert!(for_bob.devices.is_empty() && for_bob.sender_devices.is_empty());
    let plain = decrypt_from(&home, &mut phone, BOB, ALICE, &for_bob)
        .await
        .unwrap();
    assert_eq!(plain, b"lunch?");
    // Alice's tablet: the same message (its id, from Alice to Bob), with
    // its own ciphertext, which it decrypts.
    let synced = next_acked(&mut tablet_rx).await;
    assert_eq!(synced.envelope.message_id, accepted.message_id);
    assert_eq!(
        (synced.envelope.from.as_str(), synced.envelope.to.as_str()),
        (ALICE, BOB)
    );
    let for_tablet = ciphertext_of(&synced);
    assert!(!for_tablet.missing_for_device);
    let plain = decrypt_from(&signal, &mut tablet, ALICE, ALICE, &for_tablet)
        .await
        .unwrap();
    assert_eq!(plain, b"lunch?");
    // The sending device gets no copy; its user hears one DELIVERED
    // receipt, from Bob's device, not from her own tablet.
    let receipt = within("a receipt", cli_rx.next()).await.unwrap();
    cli_rx.ack(&[receipt.delivery_tag]).await.unwrap();
    match &receipt.envelope.content {
        Some(Content::Receipt(r)) => {
            assert_eq!(r.message_id, accepted.message_id);
            assert_eq!(r.status, ReceiptStatus::Delivered as i32);
        }
        other => panic!("not a receipt: {other:?}"),
    }
    assert_eq!(receipt.envelope.from, BOB);
    crate::common::nothing_within(&mut cli_rx, 500).await;
}

/// Runs the `interop` CLI with `args` (plus the gateway's URLs and the keys
/// folder); its exit code and stdout lines as JSON.
async fn interop(
    c: &Cluster,
    keys: &std::path::Path,
    args: &[&str],
) -> (i32, Vec<serde_json::Value>) {
    let out = interop_e2e::interop_command()
        .args(args)
        .args(["--ingest-url", &c.gateway.ingest_url, "--keys-dir"])
        .arg(keys)
        .output()
        .await
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_olm_encrypted_text_and_the_plaintext_is_nowhere_in_the_gateway() {
    const SECRET: &str = "PLAINTEXT-4c1e9a-meet-at-the-old-mill";
    let c = Cluster::start().await;
    let keys = tempfile::tempdir().unwrap();
    let k = keys.path();
    for (who, allow, token) in [(BOB, "signal", HOME_TOKEN), (ALICE, "home", SIGNAL_TOKEN)] {
        let (code, out) = interop(
            &c,
            k,
            &["opt-in", "--as", who, "--allow", allow, "--token", token],
        )
        .await;
        assert_eq!(code, 0, "{out:?}");
    }
    let (code, out) = interop(
        &c,
        k,
        &["keys", "publish", "--as", BOB, "--token", HOME_TOKEN],
    )
    .await;
    assert_eq!(
        (code, &out[0]["published"]["one_time_prekeys"]),
        (0, &serde_json::json!(20)),
        "{out:?}"
    );

    // Bob listens (the CLI decrypts), Alice sends with --e2ee.
    let listen = interop_e2e::interop_command()
        .args([
            "listen",
            "--as",
            BOB,
            "--count",
            "1",
            "--timeout",
            "30",
            "--token",
            HOME_TOKEN,
        ])
        .args([
            "--delivery-url",
            &c.gateway.delivery_url,
            "--ingest-url",
            &c.gateway.ingest_url,
            "--keys-dir",
        ])
        .arg(k)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (code, out) = interop(
        &c,
        k,
        &[
            "send",
            "--e2ee",
            "--as",
            ALICE,
            "--to",
            BOB,
            "--text",
            SECRET,
            "--token",
            SIGNAL_TOKEN,
        ],
    )
    .await;
    assert_eq!(code, 0, "{out:?}");
    assert!(out[0]["accepted"]["message_id"].is_string(), "{out:?}");
    let listened = within("the listener", listen.wait_with_output())
        .await
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&listened.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["text"], SECRET, "{line}");
    assert_eq!(line["encryption"], "E2EE");
    assert_eq!(line["e2ee_scheme"], olm::SCHEME);

    // The plaintext is nowhere in the gateway: not in any file of NATS's
    // store, not in any Redis key or value.
    let mut files = vec![c.nats.dir().to_path_buf()];
    let mut scanned = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&p) {
            scanned += bytes.len();
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "the plaintext is in {}",
                p.display()
            );
        }
    }
    assert!(
        scanned > 1000,
        "the NATS store was not found ({scanned} bytes)"
    );
    let mut redis = redis::aio::ConnectionManager::new(redis::Client::open(c.redis.url()).unwrap())
        .await
        .unwrap();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for key in keys {
        let dump: Option<Vec<u8>> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let all = [key, dump.unwrap_or_default()].concat();
        assert!(
            !all.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the plaintext is in Redis"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_fetch_load_generator_counts_every_fetch_and_every_claimed_key() {
    use interop_loadtest::keys_bench::{key_fetches, KeyFetchOptions};
    let c = Cluster::start().await;
    let report = key_fetches(&KeyFetchOptions {
        ingest_url: c.gateway.ingest_url.clone(),
        owner: ("home".into(), HOME_TOKEN.into()),
        requester: ("signal".into(), SIGNAL_TOKEN.into()),
        users: 4,
        one_time_prekeys: 50,
        requesters: 40,
        rate: 200.0,
        duration: Duration::from_secs(2),
        connections: 2,
    })
    .await
    .unwrap();
    assert_eq!(
        (report.fetches, report.refused, report.errors),
        (400, 0, 0),
        "{report:?}"
    );
    // 4 users × 50 keys: 200 bundles claim one, the other 200 get the last
    // resort.
    assert_eq!(report.with_one_time_prekey, 200, "{report:?}");
    assert!(
        report.p99_ms > 0.0 && report.p99_ms >= report.p50_ms,
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_audits_key_transparency_from_the_published_roots_and_finds_a_fork() {
    let c = Cluster::start().await;
    let (home, signal) = (
        sender(&c, "home", HOME_TOKEN).await,
        sender(&c, "signal", SIGNAL_TOKEN).await,
    );
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    signal.set_consent(ALICE, true, &["home"]).await.unwrap();
    // Three key changes, each fetched at once: three epochs on demand.
    for round in 0..3u32 {
        let mut account = Account::new();
        publish(&home, BOB, &mut account, "phone", 2, 1 + 10 * round).await;
        let bundles = verified_bundles(signal.fetch_bundles(ALICE, BOB, &[]).await.unwrap()).await;
        interop_client::keys::verify_bundles(
            &bundles,
            Some(&interop_e2e::kt_vrf_public_key().await),
        )
        .unwrap();
    }
    // Bob's provider gets his history: three versions, each his own key;
    // another provider may not ask for it.
    let history = home.key_history(BOB).await.unwrap().done().unwrap();
    let versions = interop_transparency::verify_history(
        &history,
        Some(&interop_e2e::kt_vrf_public_key().await),
    )
    .unwrap();
    assert_eq!(versions.len(), 3);
    assert_eq!(
        rejection(signal.key_history(BOB).await.unwrap()).code(),
        RejectCode::SenderNotOwned
    );
    let audit = || async {
        let out = interop_e2e::interop_command()
            .args(["--json", "keys", "audit", "--nats-url", &c.nats.url()])
            .output()
            .await
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        (out.status.code(), json)
    };
    let (code, json) = audit().await;
    assert_eq!(code, Some(0), "{json}");
    assert!(json["audit"]["to"].as_u64().unwrap() >= 3, "{json}");
    assert_eq!(
        json["audit"]["verified"].as_u64(),
        Some(json["audit"]["to"].as_u64().unwrap() - 1),
        "{json}"
    );
    // A second root for epoch 2: the audit fails and says where.
    let js = async_nats::jetstream::new(async_nats::connect(c.nats.url()).await.unwrap());
    let mut forged = Vec::new();
    ciborium::into_writer(
        &interop_transparency::Root {
            epoch: 2,
            root: vec![0xab; 32],
        },
        &mut forged,
    )
    .unwrap();
    js.publish(interop_bus::subjects::KT_ROOTS, forged.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let (code, json) = audit().await;
    assert_eq!(code, Some(1), "{json}");
    assert!(
        json["audit"]["problems"][0]
            .as_str()
            .unwrap()
            .contains("epoch 2: two different roots"),
        "{json}"
    );
}

/// An app's trust in key transparency (`interop_client::trust`): the VRF
/// key is pinned on first use (or configured) and kept; then an answer
/// under another key, an answer without a proof, and a second root for an
/// epoch (another gateway with the same VRF key showing another history)
/// are each refused with their typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_pins_the_vrf_key_on_first_use_and_refuses_another_key_no_proof_and_a_fork() {
    use interop_client::keys::{check_bundles, VerifyError};
    use interop_client::trust::{Trust, TrustError};
    let refused = |r: Result<(), TrustError>| match r {
        Err(TrustError::Verify(e)) => e,
        other => panic!("not refused by verification: {other:?}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start().await;
    let (home, signal) = (
        sender(&c, "home", HOME_TOKEN).await,
        sender(&c, "signal", SIGNAL_TOKEN).await,
    );
    home.set_consent(BOB, true, &["signal"]).await.unwrap();
    signal.set_consent(ALICE, true, &["home"]).await.unwrap();
    publish(&home, BOB, &mut Account::new(), "phone", 3, 1).await;
    let bundles = verified_bundles(signal.fetch_bundles(ALICE, BOB, &[]).await.unwrap()).await;

    let mut trust = Trust::open(dir.path()).unwrap();
    assert_eq!(trust.pinned(), None);
    check_bundles(&mut trust, &bundles).unwrap();
    let pinned = interop_e2e::kt_vrf_public_key().await;
    assert_eq!(trust.pinned(), Some(pinned.clone()));

    // Kept: a new process of the app has it pinned.
    let mut trust = Trust::open(dir.path()).unwrap();
    assert_eq!(trust.pinned(), Some(pinned));
    let mut stripped = bundles.clone();
    stripped.transparency = None;
    assert_eq!(
        refused(check_bundles(&mut trust, &stripped)),
        VerifyError::Missing
    );
    let mut other_key = bundles.clone();
    if let Some(p) = other_key.transparency.as_mut() {
        p.vrf_public_key = vec![1; 32].into();
    }
    assert_eq!(
        refused(check_bundles(&mut trust, &other_key)),
        VerifyError::WrongVrfKey
    );
    // A configured key wins over the one pinned on first use.
    let mut configured = Trust::open(dir.path()).unwrap();
    configured.configure(vec![2; 32]);
    assert_eq!(
        refused(check_bundles(&mut configured, &bundles)),
        VerifyError::WrongVrfKey
    );

    // Another gateway with the same VRF key and its own history: its proof
    // for the same epoch verifies alone, and has another root.
    let fork = Cluster::start().await;
    let (fork_home, fork_signal) = (
        sender(&fork, "home", HOME_TOKEN).await,
        sender(&fork, "signal", SIGNAL_TOKEN).await,
    );
    fork_home.set_consent(BOB, true, &["signal"]).await.unwrap();
    fork_signal
        .set_consent(ALICE, true, &["home"])
        .await
        .unwrap();
    publish(&fork_home, BOB, &mut Account::new(), "phone", 3, 1).await;
    let forked = verified_bundles(fork_signal.fetch_bundles(ALICE, BOB, &[]).await.unwrap()).await;
    let (ours, theirs) = (
        bundles.transparency.as_ref().unwrap(),
        forked.transparency.as_ref().unwrap(),
    );
    assert_eq!(ours.epoch, theirs.epoch, "both gateways at the same epoch");
    assert_ne!(ours.root_hash, theirs.root_hash);
    check_bundles(
        &mut Trust::open(tempfile::tempdir().unwrap().path()).unwrap(),
        &forked,
    )
    .unwrap();
    assert_eq!(
        refused(check_bundles(&mut trust, &forked)),
        VerifyError::SeenOtherRoot(ours.epoch)
    );
    // What it saw before still passes.
    check_bundles(&mut trust, &bundles).unwrap();
}
