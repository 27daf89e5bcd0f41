//! Epochs from the key directory's writes, against a real nats-server: what
//! users publish is committed under their address, a lookup proof verifies
//! against the published root, nothing changes without an identity change,
//! and two instances publishing at once make one history.

use interop_keys::KeyDirectory;
use interop_proto::keys::SIGNATURE_BYTES;
use interop_proto::v1::{DeviceKeys, PublicKey, PublishKeys, StoredDevices};
use interop_test_support::NatsServer;
use interop_transparency::epoch::value_of;
use interop_transparency::{read_roots, Config, Transparency, VrfKey};

const BOB: &str = "home:+4915112345678";
const ALICE: &str = "signal:alice";

fn key(fill: u8) -> PublicKey {
    PublicKey {
        algorithm: "curve25519".into(),
        key_id: 0,
        key: vec![fill; 32].into(),
        signature: Default::default(),
    }
}

fn publish(user: &str, device_id: &str, identity: u8, otk_from: u32) -> PublishKeys {
    PublishKeys {
        user: user.into(),
        device: Some(DeviceKeys {
            device_id: device_id.into(),
            identity_key: Some(key(identity)),
            signing_key: None,
            signed_prekey: Some(PublicKey {
                signature: vec![9; SIGNATURE_BYTES].into(),
                ..key(2)
            }),
            last_resort_prekey: Some(key(3)),
            pq_last_resort_prekey: None,
            last_resort_key_package: vec![7; 100].into(),
        }),
        one_time_prekeys: (otk_from..otk_from + 3)
            .map(|id| PublicKey {
                key_id: id,
                ..key(4)
            })
            .collect(),
        key_packages: vec![],
    }
}

async fn js(nats: &NatsServer) -> async_nats::jetstream::Context {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    interop_bus::ensure_streams(&js, &interop_bus::StreamSettings::default())
        .await
        .unwrap();
    js
}

/// The epochs of every published root, in stream order.
async fn root_epochs(js: &async_nats::jetstream::Context) -> Vec<u64> {
    read_roots(js)
        .await
        .unwrap()
        .iter()
        .map(|r| r.epoch)
        .collect()
}

/// What the key directory holds for `user`, as transparency commits it.
async fn committed_value(keys: &KeyDirectory, user: &str) -> Vec<u8> {
    value_of(&StoredDevices {
        devices: keys.devices(user).await.unwrap(),
        user: user.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_identity_keys_are_committed_and_proved_against_the_published_root() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let keys = KeyDirectory::open(js.clone()).await.unwrap();
    keys.publish(BOB, &publish(BOB, "phone", 1, 1))
        .await
        .unwrap();
    keys.publish(BOB, &publish(BOB, "laptop", 5, 1))
        .await
        .unwrap();
    keys.publish(ALICE, &publish(ALICE, "phone", 6, 1))
        .await
        .unwrap();

    let kt = Transparency::open(js.clone(), VrfKey::from_bytes([7; 32]))
        .await
        .unwrap();
    let epoch = kt.publish_epoch().await.unwrap().expect("an epoch");
    assert_eq!(epoch.epoch(), 1);
    let roots = read_roots(&js).await.unwrap();
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].root, epoch.hash().to_vec());

    let dir = kt.directory().await;
    let vrf = dir.get_public_key().await.unwrap();
    let (proof, at) = dir.lookup(akd::AkdLabel::from(BOB)).await.unwrap();
    let root: [u8; 32] = roots[0].root.clone().try_into().unwrap();
    let verified = akd::client::lookup_verify::<Config>(
        vrf.as_bytes(),
        root,
        at.epoch(),
        akd::AkdLabel::from(BOB),
        proof,
    )
    .unwrap();
    assert_eq!(verified.value.0, committed_value(&keys, BOB).await);
    // A substituted value is not what was committed.
    let (proof, at) = dir.lookup(akd::AkdLabel::from(BOB)).await.unwrap();
    let forged = akd::client::lookup_verify::<Config>(
        vrf.as_bytes(),
        [0u8; 32],
        at.epoch(),
        akd::AkdLabel::from(BOB),
        proof,
    );
    assert!(forged.is_err(), "a proof verified against another root");

    // More one-time prekeys change no identity key: no epoch.
    keys.publish(BOB, &publish(BOB, "phone", 1, 10))
        .await
        .unwrap();
    assert!(kt.publish_epoch().await.unwrap().is_none());
    // A new identity key does.
    keys.publish(ALICE, &publish(ALICE, "phone", 8, 20))
        .await
        .unwrap();
    let second = kt.publish_epoch().await.unwrap().expect("an epoch");
    assert_eq!(second.epoch(), 2);
    let (proof, at) = kt
        .directory()
        .await
        .lookup(akd::AkdLabel::from(ALICE))
        .await
        .unwrap();
    let verified = akd::client::lookup_verify::<Config>(
        vrf.as_bytes(),
        second.hash(),
        at.epoch(),
        akd::AkdLabel::from(ALICE),
        proof,
    )
    .unwrap();
    assert_eq!(verified.value.0, committed_value(&keys, ALICE).await);
    assert_eq!(verified.version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_publishing_make_one_history() {
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let keys = KeyDirectory::open(js.clone()).await.unwrap();
    keys.publish(BOB, &publish(BOB, "phone", 1, 1))
        .await
        .unwrap();
    let a = Transparency::open(js.clone(), VrfKey::from_bytes([7; 32]))
        .await
        .unwrap();
    let b = Transparency::open(js.clone(), VrfKey::from_bytes([7; 32]))
        .await
        .unwrap();
    assert_eq!(a.publish_epoch().await.unwrap().unwrap().epoch(), 1);
    // B has not seen A's epoch: it reloads, finds Bob committed already.
    assert!(b.publish_epoch().await.unwrap().is_none());
    keys.publish(ALICE, &publish(ALICE, "phone", 6, 1))
        .await
        .unwrap();
    let by_b = b.publish_epoch().await.unwrap().unwrap();
    assert_eq!(by_b.epoch(), 2);
    // A reloads and has nothing left to publish.
    assert!(a.publish_epoch().await.unwrap().is_none());
    assert_eq!(
        a.directory().await.get_epoch_hash().await.unwrap().1,
        by_b.hash()
    );
    assert_eq!(root_epochs(&js).await, [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_committed_without_its_root_gets_it_at_the_next_call() {
    use interop_bus::subjects::{KT_AUDIT, STREAM_KT_ROOTS};
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let keys = KeyDirectory::open(js.clone()).await.unwrap();
    let kt = Transparency::open(js.clone(), VrfKey::from_bytes([7; 32]))
        .await
        .unwrap();
    keys.publish(BOB, &publish(BOB, "phone", 1, 1))
        .await
        .unwrap();
    assert_eq!(kt.publish_epoch().await.unwrap().unwrap().epoch(), 1);
    // The roots stream stops taking roots (as in an election): epoch 2 is
    // committed, its root cannot be published, the call fails.
    let mut config = js
        .get_stream(STREAM_KT_ROOTS)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    config.subjects = vec![KT_AUDIT.to_owned()];
    js.update_stream(&config).await.unwrap();
    keys.publish(ALICE, &publish(ALICE, "phone", 6, 1))
        .await
        .unwrap();
    let failed = kt.publish_epoch().await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(kt.epochs().await.last().unwrap().epoch, 2);
    // Back: the retry has nothing new to commit, and publishes the root.
    interop_bus::ensure_streams(&js, &interop_bus::StreamSettings::default())
        .await
        .unwrap();
    assert!(kt.publish_epoch().await.unwrap().is_none());
    assert_eq!(root_epochs(&js).await, [1, 2]);
    let report = interop_transparency::audit(&js, 1, 2).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.verified, [2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_another_instance_committed_without_its_root_gets_it_from_this_one() {
    use interop_bus::subjects::{KT_AUDIT, STREAM_KT_ROOTS};
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let keys = KeyDirectory::open(js.clone()).await.unwrap();
    let a = Transparency::open(js.clone(), VrfKey::from_bytes([7; 32]))
        .await
        .unwrap();
    let b = Transparency::open(js.clone(), VrfKey::from_bytes([7; 32]))
        .await
        .unwrap();
    keys.publish(BOB, &publish(BOB, "phone", 1, 1))
        .await
        .unwrap();
    assert_eq!(a.publish_epoch().await.unwrap().unwrap().epoch(), 1);
    // B commits epoch 2 while the roots stream takes no roots, and fails.
    let roots = js
        .get_stream(STREAM_KT_ROOTS)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    let mut broken = roots.clone();
    broken.subjects = vec![KT_AUDIT.to_owned()];
    js.update_stream(&broken).await.unwrap();
    keys.publish(ALICE, &publish(ALICE, "phone", 6, 1))
        .await
        .unwrap();
    assert!(b.publish_epoch().await.is_err());
    js.update_stream(&roots).await.unwrap();
    // A has nothing to commit (whether it saw epoch 2 before its own try
    // or only when its commit conflicted) and publishes B's root.
    assert!(a.publish_epoch().await.unwrap().is_none());
    assert_eq!(root_epochs(&js).await, [1, 2]);
    let report = interop_transparency::audit(&js, 1, 2).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_accepts_committed_keys_and_refuses_any_other_with_a_typed_error() {
    use interop_transparency::{check_keys, verify, VerifyError};
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let keys = KeyDirectory::open(js.clone()).await.unwrap();
    let kt = Transparency::open(js.clone(), VrfKey::from_bytes([7; 32]))
        .await
        .unwrap();
    // Published and fetched before any epoch: the proof is made on demand.
    keys.publish(BOB, &publish(BOB, "phone", 1, 1))
        .await
        .unwrap();
    let value = committed_value(&keys, BOB).await;
    let proof = kt.prove(BOB, &value).await.unwrap();
    assert_eq!(proof.epoch, 1);
    let vrf = proof.vrf_public_key.clone();
    let proven = verify(Some(&proof), BOB, Some(&vrf)).unwrap();
    let devices = keys.devices(BOB).await.unwrap();
    let served: Vec<_> = devices.iter().filter_map(|d| d.keys.clone()).collect();
    check_keys(
        &proven,
        served.iter().map(|k| {
            (
                k.device_id.as_str(),
                k.identity_key.as_ref(),
                k.signing_key.as_ref(),
            )
        }),
    )
    .unwrap();

    // A directory that serves another identity key than the committed one.
    let forged = key(99);
    assert_eq!(
        check_keys(&proven, [("phone", Some(&forged), None)]),
        Err(VerifyError::KeyNotCommitted("phone".into()))
    );
    // A device the committed value does not have.
    assert_eq!(
        check_keys(&proven, [("tablet", Some(&key(1)), None)]),
        Err(VerifyError::KeyNotCommitted("tablet".into()))
    );
    // No proof, another VRF key, a proof for someone else, another root.
    assert_eq!(verify(None, BOB, Some(&vrf)), Err(VerifyError::Missing));
    assert_eq!(
        verify(Some(&proof), BOB, Some(&[1u8; 32])),
        Err(VerifyError::WrongVrfKey)
    );
    assert!(matches!(
        verify(Some(&proof), ALICE, Some(&vrf)),
        Err(VerifyError::Invalid(_))
    ));
    let mut other_root = proof.clone();
    other_root.root_hash = vec![0u8; 32].into();
    assert!(matches!(
        verify(Some(&other_root), BOB, Some(&vrf)),
        Err(VerifyError::Invalid(_))
    ));

    // The same value again: the same proof, no new epoch.
    let again = kt.prove(BOB, &value).await.unwrap();
    assert_eq!(again, proof);
    // A new identity key: an epoch on demand, and the proof says so.
    keys.publish(BOB, &publish(BOB, "phone", 5, 10))
        .await
        .unwrap();
    let rotated = committed_value(&keys, BOB).await;
    let proof = kt.prove(BOB, &rotated).await.unwrap();
    assert_eq!(proof.epoch, 2);
    let proven = verify(Some(&proof), BOB, Some(&vrf)).unwrap();
    check_keys(&proven, [("phone", Some(&key(5)), None)]).unwrap();
    assert!(check_keys(&proven, [("phone", Some(&key(1)), None)]).is_err());
}

/// Publishes a root for `epoch` as a forger would (another hash).
async fn publish_forged_root(js: &async_nats::jetstream::Context, epoch: u64) {
    let mut payload = Vec::new();
    ciborium::into_writer(
        &interop_transparency::Root {
            epoch,
            root: vec![0xab; 32],
        },
        &mut payload,
    )
    .unwrap();
    js.publish(interop_bus::subjects::KT_ROOTS, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_verifies_every_step_and_finds_a_forked_or_rolled_back_epoch() {
    use interop_transparency::{audit, AuditProblem};
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let keys = KeyDirectory::open(js.clone()).await.unwrap();
    let kt = Transparency::open(js.clone(), VrfKey::from_bytes([7; 32]))
        .await
        .unwrap();
    for round in 0..5u8 {
        keys.publish(
            BOB,
            &publish(BOB, "phone", 10 + round, 1 + 10 * u32::from(round)),
        )
        .await
        .unwrap();
        keys.publish(
            ALICE,
            &publish(ALICE, "phone", 40 + round, 1 + 10 * u32::from(round)),
        )
        .await
        .unwrap();
        kt.publish_epoch().await.unwrap().expect("an epoch");
    }
    let report = audit(&js, 1, 5).await.unwrap();
    assert_eq!(report.verified, [2, 3, 4, 5]);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.proof_bytes > 0);

    // A second root for epoch 3 (a fork, or a rolled-back history
    // published again): found, and the steps around it are not vouched for.
    publish_forged_root(&js, 3).await;
    let report = audit(&js, 1, 5).await.unwrap();
    assert!(
        report.problems.contains(&AuditProblem::Fork(3)),
        "{report:?}"
    );
    assert_eq!(report.verified, [2, 5]);
    // An epoch nobody published a root for.
    let report = audit(&js, 5, 6).await.unwrap();
    assert_eq!(report.problems, [AuditProblem::MissingRoot(6)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_that_does_not_lead_from_one_root_to_the_next_is_invalid() {
    use interop_transparency::{audit, AuditProblem};
    // Directory A's roots, and the append-only proof of another directory
    // B (another history) in place of A's own for epoch 2.
    let (nats_a, nats_b) = (NatsServer::start(), NatsServer::start());
    let (js_a, js_b) = (js(&nats_a).await, js(&nats_b).await);
    for (js, identity) in [(&js_a, 1u8), (&js_b, 2u8)] {
        let keys = KeyDirectory::open(js.clone()).await.unwrap();
        let kt = Transparency::open(js.clone(), VrfKey::from_bytes([7; 32]))
            .await
            .unwrap();
        keys.publish(BOB, &publish(BOB, "phone", identity, 1))
            .await
            .unwrap();
        kt.publish_epoch().await.unwrap().unwrap();
        keys.publish(ALICE, &publish(ALICE, "phone", identity + 10, 1))
            .await
            .unwrap();
        kt.publish_epoch().await.unwrap().unwrap();
    }
    assert_eq!(audit(&js_a, 1, 2).await.unwrap().verified, [2]);
    let stream_a = js_a
        .get_stream(interop_bus::subjects::STREAM_KT_ROOTS)
        .await
        .unwrap();
    stream_a
        .purge()
        .filter(interop_bus::subjects::KT_AUDIT)
        .await
        .unwrap();
    let mut b = js_b
        .get_stream(interop_bus::subjects::STREAM_KT_ROOTS)
        .await
        .unwrap();
    let last = b.info().await.unwrap().state.last_sequence;
    for seq in 1..=last {
        let m = b.get_raw_message(seq).await.unwrap();
        if m.subject.as_str() == interop_bus::subjects::KT_AUDIT {
            // Its epoch and part headers, without the message id A's
            // stream saw already.
            let mut headers = async_nats::HeaderMap::new();
            for name in ["Interop-Kt-Epoch", "Interop-Kt-Part", "Interop-Kt-Parts"] {
                let v = m.headers.get(name).unwrap().as_str().to_owned();
                headers.insert(name, v.as_str());
            }
            js_a.publish_with_headers(interop_bus::subjects::KT_AUDIT, headers, m.payload.clone())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    let report = audit(&js_a, 1, 2).await.unwrap();
    assert!(report.verified.is_empty(), "{report:?}");
    assert!(
        matches!(report.problems.as_slice(), [AuditProblem::Invalid(2, _)]),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_finds_a_device_key_they_did_not_publish_in_their_history() {
    use interop_proto::Message as _;
    use interop_transparency::{foreign_keys, verify_history};
    let nats = NatsServer::start();
    let js = js(&nats).await;
    let keys = KeyDirectory::open(js.clone()).await.unwrap();
    let kt = Transparency::open(js.clone(), VrfKey::from_bytes([7; 32]))
        .await
        .unwrap();
    keys.publish(BOB, &publish(BOB, "phone", 1, 1))
        .await
        .unwrap();
    kt.publish_epoch().await.unwrap().unwrap();
    let own = key(1);
    let published: Vec<(&str, &[u8])> = vec![("phone", own.key.as_ref())];
    let history = kt.history(BOB).await.unwrap();
    let pinned = history.vrf_public_key.clone();
    let versions = verify_history(&history, Some(&pinned)).unwrap();
    assert_eq!(versions.len(), 1);
    assert!(foreign_keys(&versions, &published).is_empty());

    // An operator writes a device key of its own for Bob into the key
    // directory's stream (as whoever runs JetStream could): it is committed
    // like any other write, so every fetcher gets it with a valid proof...
    let forged = StoredDevices {
        user: BOB.into(),
        devices: vec![interop_proto::v1::StoredDevice {
            keys: Some(publish(BOB, "phone", 66, 100).device.unwrap()),
            ..Default::default()
        }],
    };
    js.publish(
        format!(
            "{}.{}",
            interop_bus::subjects::KEYS_DEVICES_PREFIX,
            interop_bus::recipient_key(BOB)
        ),
        forged.encode_to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    kt.publish_epoch()
        .await
        .unwrap()
        .expect("the forged key's epoch");
    // ...but Bob's app finds it in his history: a key none of his devices
    // published.
    let versions = verify_history(&kt.history(BOB).await.unwrap(), Some(&pinned)).unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(
        foreign_keys(&versions, &published),
        [(2, "phone".to_owned())]
    );
}
