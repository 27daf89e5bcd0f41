//! An MLS group (RFC 9420, openmls) across three providers, set up through
//! the gateway: each user publishes a KeyPackage to the key directory, the
//! creator fetches them, makes the MLS group beside the gateway's group,
//! sends each member its Welcome as an end-to-end-encrypted message, and the
//! members exchange application messages through the gateway's group
//! fan-out. Removing a member is a Commit, after which the removed member
//! cannot decrypt what the group sends.

use std::time::Duration;

use interop_client::keys::KeysOutcome;
use interop_client::{olm, Delivered, GroupOutcome, Receiver, SendOutcome, Sender};
use interop_e2e::{Cluster, HOME_TOKEN, SIGNAL_TOKEN, TELEGRAM_TOKEN};
use interop_proto::v1::{envelope::Content, Ciphertext, Encryption, Envelope};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use vodozemac::olm::Account;

const ALICE: &str = "signal:alice";
const BOB: &str = "home:+4915112345678";
const CAROL: &str = "telegram:carol";
const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// One member's app: its provider connection, delivery session and MLS state.
struct Member {
    address: &'static str,
    sender: Sender,
    rx: Receiver,
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    group: Option<MlsGroup>,
}

async fn member(
    c: &Cluster,
    address: &'static str,
    provider_id: &str,
    token: &str,
    allow: &[&str],
) -> Member {
    let sender = Sender::connect(&c.gateway.ingest_url, provider_id, token)
        .await
        .unwrap();
    sender.set_consent(address, true, allow).await.unwrap();
    let rx = Receiver::connect(&c.gateway.delivery_url, provider_id, token, address, "app")
        .await
        .unwrap();
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(SUITE.signature_algorithm()).unwrap();
    signer.store(provider.storage()).unwrap();
    let credential = CredentialWithKey {
        credential: BasicCredential::new(address.as_bytes().to_vec()).into(),
        signature_key: signer.public().into(),
    };
    Member {
        address,
        sender,
        rx,
        provider,
        signer,
        credential,
        group: None,
    }
}

impl Member {
    /// Publishes the device's keys with one MLS KeyPackage.
    async fn publish_key_package(&self) {
        let kp = KeyPackage::builder()
            .build(SUITE, &self.provider, &self.signer, self.credential.clone())
            .unwrap();
        let bytes = kp.key_package().tls_serialize_detached().unwrap();
        let (keys, otks) = olm::device_keys(&mut Account::new(), "app", 1);
        let published = self
            .sender
            .publish_keys(self.address, keys, otks, vec![bytes])
            .await
            .unwrap()
            .done()
            .unwrap();
        assert_eq!(published.key_packages, 1);
    }

    /// The next delivery that is not a receipt or a group notice.
    async fn next_ciphertext(&mut self) -> (Delivered, Ciphertext) {
        loop {
            let d = tokio::time::timeout(Duration::from_secs(15), self.rx.next())
                .await
                .expect("a delivery within 15 s")
                .unwrap();
            self.rx.ack(&[d.delivery_tag]).await.unwrap();
            if let Some(Content::Ciphertext(c)) = &d.envelope.content {
                let c = c.clone();
                return (d, c);
            }
        }
    }

    /// Processes an MLS message from the group; the application message's
    /// bytes, if it was one (a commit is merged).
    fn process(&mut self, bytes: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| e.to_string())?;
        let protocol = message
            .try_into_protocol_message()
            .map_err(|e| e.to_string())?;
        let group = self.group.as_mut().ok_or("not in the group")?;
        let processed = group
            .process_message(&self.provider, protocol)
            .map_err(|e| e.to_string())?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(m) => Ok(Some(m.into_bytes())),
            ProcessedMessageContent::StagedCommitMessage(commit) => {
                group
                    .merge_staged_commit(&self.provider, *commit)
                    .map_err(|e| e.to_string())?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }
}

fn e2ee(
    cmid: &str,
    from: &str,
    to: &str,
    group_id: &str,
    scheme: &str,
    payload: Vec<u8>,
) -> Envelope {
    Envelope {
        client_message_id: cmid.into(),
        from: from.into(),
        to: to.into(),
        group_id: group_id.into(),
        encryption: Encryption::E2ee as i32,
        content: Some(Content::Ciphertext(Ciphertext {
            scheme: scheme.into(),
            payload: payload.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

async fn accepted(s: &Sender, e: Envelope) {
    let out = s.send(e).await.unwrap();
    assert!(matches!(out, SendOutcome::Accepted(_)), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mls_group_across_three_providers_sends_through_the_gateway_and_a_removed_member_is_out()
{
    let c = Cluster::start().await;
    let mut alice = member(&c, ALICE, "signal", SIGNAL_TOKEN, &["home", "telegram"]).await;
    let mut bob = member(&c, BOB, "home", HOME_TOKEN, &["signal", "telegram"]).await;
    let mut carol = member(&c, CAROL, "telegram", TELEGRAM_TOKEN, &["signal", "home"]).await;
    for m in [&bob, &carol] {
        m.publish_key_package().await;
    }

    // Alice fetches Bob's and Carol's KeyPackages through the gateway.
    let fetched = match alice
        .sender
        .fetch_key_packages(ALICE, &[BOB, CAROL])
        .await
        .unwrap()
    {
        KeysOutcome::Done(k) => k.key_packages,
        KeysOutcome::Rejected(r) => panic!("{r:?}"),
    };
    assert_eq!(fetched.len(), 2);
    assert!(fetched.iter().all(|k| !k.last_resort));
    let key_packages: Vec<KeyPackage> = fetched
        .iter()
        .map(|k| {
            KeyPackageIn::tls_deserialize_exact(&k.key_package[..])
                .unwrap()
                .validate(alice.provider.crypto(), ProtocolVersion::Mls10)
                .unwrap()
        })
        .collect();

    // The gateway's group (who receives the fan-out) and the MLS group
    // (who can read it), made by Alice.
    let gateway_group = match alice
        .sender
        .create_group(ALICE, &[BOB.to_owned(), CAROL.to_owned()])
        .await
        .unwrap()
    {
        GroupOutcome::Updated(g) => g.group_id,
        GroupOutcome::Rejected(r) => panic!("{r:?}"),
    };
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(SUITE)
        .use_ratchet_tree_extension(true)
        .build();
    let mut group = MlsGroup::new(
        &alice.provider,
        &alice.signer,
        &config,
        alice.credential.clone(),
    )
    .unwrap();
    let (_commit, welcome, _) = group
        .add_members(&alice.provider, &alice.signer, &key_packages)
        .unwrap();
    group.merge_pending_commit(&alice.provider).unwrap();
    alice.group = Some(group);
    let welcome = welcome.tls_serialize_detached().unwrap();

    // Each member gets the Welcome through the gateway, one to one.
    for (i, to) in [BOB, CAROL].into_iter().enumerate() {
        accepted(
            &alice.sender,
            e2ee(
                &format!("w{i}"),
                ALICE,
                to,
                "",
                "mls-welcome",
                welcome.clone(),
            ),
        )
        .await;
    }
    for m in [&mut bob, &mut carol] {
        let (d, c) = m.next_ciphertext().await;
        assert_eq!(
            (d.envelope.from.as_str(), c.scheme.as_str()),
            (ALICE, "mls-welcome")
        );
        let message = MlsMessageIn::tls_deserialize_exact(&c.payload[..]).unwrap();
        let MlsMessageBodyIn::Welcome(w) = message.extract() else {
            panic!("not a Welcome");
        };
        let joined = StagedWelcome::new_from_welcome(&m.provider, config.join_config(), w, None)
            .unwrap()
            .into_group(&m.provider)
            .unwrap();
        assert_eq!(joined.members().count(), 3);
        m.group = Some(joined);
    }

    // An application message to the group: every member decrypts it.
    let hello = alice
        .group
        .as_mut()
        .unwrap()
        .create_message(&alice.provider, &alice.signer, b"hello group")
        .unwrap()
        .tls_serialize_detached()
        .unwrap();
    accepted(
        &alice.sender,
        e2ee("g1", ALICE, "", &gateway_group, "mls", hello),
    )
    .await;
    for m in [&mut bob, &mut carol] {
        let (d, c) = m.next_ciphertext().await;
        assert_eq!(d.envelope.group_id, gateway_group);
        assert_eq!(
            m.process(&c.payload).unwrap(),
            Some(b"hello group".to_vec())
        );
    }
    // Bob answers; Alice and Carol decrypt.
    let answer = bob
        .group
        .as_mut()
        .unwrap()
        .create_message(&bob.provider, &bob.signer, b"hi from home")
        .unwrap()
        .tls_serialize_detached()
        .unwrap();
    accepted(
        &bob.sender,
        e2ee("g2", BOB, "", &gateway_group, "mls", answer),
    )
    .await;
    for m in [&mut alice, &mut carol] {
        let (_, c) = m.next_ciphertext().await;
        assert_eq!(
            m.process(&c.payload).unwrap(),
            Some(b"hi from home".to_vec())
        );
    }

    // Alice removes Carol: a Commit through the group, merged by Bob.
    let carol_leaf = alice
        .group
        .as_ref()
        .unwrap()
        .members()
        .find(|m| m.credential.serialized_content() == CAROL.as_bytes())
        .unwrap()
        .index;
    let (commit, _, _) = alice
        .group
        .as_mut()
        .unwrap()
        .remove_members(&alice.provider, &alice.signer, &[carol_leaf])
        .unwrap();
    alice
        .group
        .as_mut()
        .unwrap()
        .merge_pending_commit(&alice.provider)
        .unwrap();
    let commit = commit.tls_serialize_detached().unwrap();
    accepted(
        &alice.sender,
        e2ee("c1", ALICE, "", &gateway_group, "mls-commit", commit),
    )
    .await;
    for m in [&mut bob, &mut carol] {
        let (_, c) = m.next_ciphertext().await;
        assert_eq!(c.scheme, "mls-commit");
        m.process(&c.payload).unwrap();
    }
    assert_eq!(bob.group.as_ref().unwrap().members().count(), 2);
    assert!(
        !carol.group.as_ref().unwrap().is_active(),
        "Carol knows she was removed"
    );

    // After the Commit: Bob reads the group, Carol cannot, even handed the
    // ciphertext directly.
    let after = alice
        .group
        .as_mut()
        .unwrap()
        .create_message(&alice.provider, &alice.signer, b"without carol")
        .unwrap()
        .tls_serialize_detached()
        .unwrap();
    accepted(
        &alice.sender,
        e2ee("g3", ALICE, "", &gateway_group, "mls", after.clone()),
    )
    .await;
    let (_, c) = bob.next_ciphertext().await;
    assert_eq!(
        bob.process(&c.payload).unwrap(),
        Some(b"without carol".to_vec())
    );
    assert!(
        carol.process(&after).is_err(),
        "a removed member must not decrypt"
    );
}
