//! User erasure (`POST /admin/v1/erasures`, `interop erase-user`; ADR 13):
//! after a user with consent, contacts, messages both ways (text and
//! media), reactions, a group, a report against them and device cursors is
//! erased, nothing in Redis, in any stream or in the object store names
//! them, their recipient key, their message ids or their media ids — and
//! other users' data is intact.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use prost::Message as _;
use serde_json::json;

use interop_client::admin::AdminClient;
use interop_client::{
    group_text_envelope, reaction_envelope, text_envelope, Delivered, GroupOutcome, Receiver,
    SendOutcome, Sender,
};
use interop_e2e::{Cluster, ADMIN_TOKEN, HOME_TOKEN, SIGNAL_TOKEN, TELEGRAM_TOKEN};
use interop_proto::v1::{
    envelope::Content, Encryption, Envelope, Media, PipelineMessage, RequestAction,
};

use crate::common::{receive_until, send_ok, store_of};

/// The user who is erased.
const BOB: &str = "home:+4915112345678";
const CAROL: &str = "home:+4915112345679";
const ALICE: &str = "signal:alice";
const DAVE: &str = "telegram:dave";

/// Receives and acks until nothing comes for `quiet`.
async fn drain(rx: &mut Receiver, quiet: Duration) -> Vec<Delivered> {
    let mut out = Vec::new();
    while let Ok(d) = tokio::time::timeout(quiet, rx.next()).await {
        let d = d.unwrap();
        rx.ack(&[d.delivery_tag]).await.unwrap();
        out.push(d);
    }
    out
}

fn media_envelope(cmid: &str, from: &str, to: &str, media_id: &str, data: &[u8]) -> Envelope {
    Envelope {
        encryption: Encryption::E2ee as i32,
        content: Some(Content::Media(Media {
            media_id: media_id.to_owned(),
            content_type: "image/jpeg".into(),
            size: data.len() as u64,
            ..Default::default()
        })),
        ..text_envelope(cmid, from, to, "")
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every needle found in `bytes`.
fn found<'a>(bytes: &[u8], needles: &'a [String]) -> Vec<&'a str> {
    needles
        .iter()
        .filter(|n| contains(bytes, n))
        .map(String::as_str)
        .collect()
}

/// Every Redis key and value that holds a needle, except other users'
/// blocks of the erased user (kept by design).
async fn redis_leftovers(redis_url: &str, needles: &[String]) -> Vec<String> {
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut out = Vec::new();
    for key in keys {
        let f = found(key.as_bytes(), needles);
        if !f.is_empty() {
            out.push(format!("key {key}: {f:?}"));
        }
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let values: Vec<(Vec<u8>, Vec<u8>)> = match kind.as_str() {
            "string" => {
                let v: Vec<u8> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                vec![(Vec::new(), v)]
            }
            "hash" => redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "set" => {
                let m: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                m.into_iter().map(|v| (Vec::new(), v)).collect()
            }
            other => panic!("key {key} has a type the scan does not read: {other}"),
        };
        for (field, value) in values {
            let kept_block = key == interop_state::keys::contacts(CAROL)
                && field == BOB.as_bytes()
                && value.first() == Some(&b'b');
            let f: Vec<&str> = found(&field, needles)
                .into_iter()
                .chain(found(&value, needles))
                .collect();
            if !f.is_empty() && !kept_block {
                out.push(format!(
                    "{key} {} = {}: {f:?}",
                    String::from_utf8_lossy(&field),
                    String::from_utf8_lossy(&value)
                ));
            }
        }
    }
    out
}

/// Every stored message of every stream (subjects, headers, payloads, and
/// decoded pipeline envelopes) that holds a needle.
async fn stream_leftovers(nats_url: &str, needles: &[String]) -> Vec<String> {
    use futures_util::StreamExt as _;
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await.unwrap());
    let names: Vec<String> = js
        .stream_names()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(names.len() >= 7, "{names:?}");
    let b64: Vec<String> = needles
        .iter()
        .map(|n| base64::engine::general_purpose::URL_SAFE.encode(n))
        .collect();
    let mut out = Vec::new();
    for name in names {
        let mut stream = js.get_stream(&name).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        if state.messages == 0 {
            continue;
        }
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(m) = stream.get_raw_message(seq).await else {
                continue;
            };
            let mut hits: Vec<&str> = found(m.subject.as_bytes(), needles);
            hits.extend(found(m.subject.as_bytes(), &b64));
            hits.extend(found(&m.payload, needles));
            for (_, values) in m.headers.iter() {
                for v in values {
                    hits.extend(found(v.as_str().as_bytes(), needles));
                }
            }
            if let Some(env) = PipelineMessage::decode(m.payload.clone())
                .ok()
                .and_then(|p| p.envelope)
            {
                if env.from == BOB || env.to == BOB {
                    hits.push("envelope from/to");
                }
            }
            // Carol's block of Bob stays, in the stream as in Redis.
            let kept_block = name == "INTEROP_USER_STATE"
                && interop_proto::v1::StoredContact::decode(m.payload.clone()).is_ok_and(|c| {
                    (c.recipient.as_str(), c.sender.as_str(), c.answer())
                        == (CAROL, BOB, interop_proto::v1::ContactAnswer::Blocked)
                });
            if !hits.is_empty() && !kept_block {
                out.push(format!("{name} #{seq} {}: {hits:?}", m.subject));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_user_leaves_nothing_behind_and_others_keep_their_data() {
    let c = Cluster::start().await;
    let g = &c.gateway;
    let home = Sender::connect(&g.ingest_url, "home", HOME_TOKEN)
        .await
        .unwrap();
    let signal = Sender::connect(&g.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    let telegram = Sender::connect(&g.ingest_url, "telegram", TELEGRAM_TOKEN)
        .await
        .unwrap();
    home.set_consent(BOB, true, &["signal", "telegram", "home"])
        .await
        .unwrap();
    home.set_consent(CAROL, true, &["signal", "home"])
        .await
        .unwrap();
    signal.set_consent(ALICE, true, &["home"]).await.unwrap();
    // Bob's device is in the key directory, with one-time keys and a
    // KeyPackage (subjects there carry his recipient key).
    let mut account = vodozemac::olm::Account::new();
    account.generate_one_time_keys(3);
    let (keys, otks) = interop_client::olm::device_keys(&mut account, "phone", 1);
    home.publish_keys(BOB, keys, otks, vec![vec![7; 100]])
        .await
        .unwrap()
        .done()
        .unwrap();
    // Contacts: Bob accepts Alice and blocks Dave; Carol reports Bob.
    home.respond_to_request(BOB, ALICE, RequestAction::Accept)
        .await
        .unwrap();
    home.respond_to_request(BOB, DAVE, RequestAction::Block)
        .await
        .unwrap();
    home.respond_to_request(CAROL, BOB, RequestAction::Report)
        .await
        .unwrap();
    // Dave's message is refused (Bob blocked him); it still counts him.
    send_ok(&telegram, text_envelope("d1", DAVE, BOB, "hello?")).await;

    let mut bob = Receiver::connect(&g.delivery_url, "home", HOME_TOKEN, BOB, "phone")
        .await
        .unwrap();
    let mut alice = Receiver::connect(&g.delivery_url, "signal", SIGNAL_TOKEN, ALICE, "phone")
        .await
        .unwrap();
    let mut carol = Receiver::connect(&g.delivery_url, "home", HOME_TOKEN, CAROL, "phone")
        .await
        .unwrap();

    // Text both ways.
    let a1 = send_ok(&signal, text_envelope("a1", ALICE, BOB, "hi bob"))
        .await
        .message_id;
    receive_until(&mut bob, |e| e.message_id == a1).await;
    let b1 = send_ok(&home, text_envelope("b1", BOB, ALICE, "hi alice"))
        .await
        .message_id;
    receive_until(&mut alice, |e| e.message_id == b1).await;

    // Media both ways (E2EE: the same blob reaches the recipient).
    let bob_photo: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mb = g.upload_e2ee("home", HOME_TOKEN, &bob_photo).await;
    let bm = send_ok(&home, media_envelope("bm", BOB, ALICE, &mb, &bob_photo))
        .await
        .message_id;
    receive_until(&mut alice, |e| e.message_id == bm).await;
    let alice_photo: Vec<u8> = (0..2000u32).map(|i| (i * 13 % 241) as u8).collect();
    let ma = g.upload_e2ee("signal", SIGNAL_TOKEN, &alice_photo).await;
    let am = send_ok(&signal, media_envelope("am", ALICE, BOB, &ma, &alice_photo))
        .await
        .message_id;
    receive_until(&mut bob, |e| e.message_id == am).await;

    // Reactions both ways.
    let ar = send_ok(&signal, reaction_envelope("ar", ALICE, BOB, &b1, "👍"))
        .await
        .message_id;
    receive_until(&mut bob, |e| e.message_id == ar).await;
    let br = send_ok(&home, reaction_envelope("br", BOB, ALICE, &a1, "❤"))
        .await
        .message_id;
    receive_until(&mut alice, |e| e.message_id == br).await;

    // A group of Alice, Bob and Carol.
    let group = match signal
        .create_group(ALICE, &[BOB.to_owned(), CAROL.to_owned()])
        .await
        .unwrap()
    {
        GroupOutcome::Updated(g) => g.group_id,
        other => panic!("{other:?}"),
    };
    let gb = send_ok(&home, group_text_envelope("gb", BOB, &group, "hi all"))
        .await
        .message_id;
    receive_until(&mut alice, |e| e.message_id == gb).await;
    let ga = send_ok(
        &signal,
        group_text_envelope("ga", ALICE, &group, "hi group"),
    )
    .await
    .message_id;
    receive_until(&mut bob, |e| e.message_id == ga).await;
    receive_until(&mut carol, |e| e.message_id == ga).await;
    // Alice reacts to Bob's group message: Carol's copy points at it.
    let gr = send_ok(
        &signal,
        Envelope {
            group_id: group.clone(),
            ..reaction_envelope("gr", ALICE, "", &gb, "🎉")
        },
    )
    .await
    .message_id;
    receive_until(&mut carol, |e| e.message_id == gr).await;
    // Other users' data that must stay: Carol writes to Alice.
    let c1 = send_ok(&home, text_envelope("c1", CAROL, ALICE, "from carol"))
        .await
        .message_id;
    receive_until(&mut alice, |e| e.message_id == c1).await;
    // Bob acks everything: his device cursor moves.
    drain(&mut bob, Duration::from_millis(1500)).await;
    drain(&mut alice, Duration::from_millis(500)).await;
    bob.close().await;
    alice.close().await;
    carol.close().await;

    let bob_key = interop_bus::recipient_key(BOB);
    let needles: Vec<String> = [
        BOB,
        &bob_key,
        &a1,
        &b1,
        &bm,
        &am,
        &ar,
        &br,
        &gb,
        &mb,
        &ma,
        "+4915112345678",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    // The scans do find Bob before the erasure.
    assert!(!redis_leftovers(&c.redis.url(), &needles).await.is_empty());
    let before = stream_leftovers(&c.nats.url(), &needles).await;
    for id in [&a1, &b1, &bm, &am, &ar, &br, &gb, &mb, &ma] {
        assert!(
            before.iter().any(|l| l.contains(id.as_str())),
            "{id} not found before the erasure: {before:#?}"
        );
    }
    let carol_before = store_of(&c.nats.url(), CAROL).await;
    assert!(carol_before.iter().any(|e| e.message_id == gr));

    let admin = AdminClient::new(&g.admin_api_url, ADMIN_TOKEN).unwrap();
    let started = std::time::Instant::now();
    let erased = admin
        .call(
            "POST",
            "/admin/v1/erasures",
            Some(&json!({ "address": BOB })),
        )
        .await
        .unwrap();
    let took = started.elapsed();
    println!("erasure took {took:?}: {erased}");
    let e = &erased["erased"];
    let n = |k: &str| {
        e[k].as_u64()
            .unwrap_or_else(|| panic!("no {k} in {erased}"))
    };
    // Received: a1, am, ar, ga, receipts for b1, bm, br, gb (and FAILED for
    // gb at Carol).
    assert!(n("inbox_messages") >= 8, "{erased}");
    // Sent into others' stores: b1, bm, br, gb, Bob's receipts, and Alice's
    // group reaction to gb in Carol's store.
    assert!(n("messages_in_other_stores") >= 6, "{erased}");
    assert_eq!(n("media_blobs"), 2, "{erased}");
    assert_eq!(n("groups"), 1, "{erased}");
    assert!(n("cursors") >= 1, "{erased}");
    // Alice accepted Bob (she wrote to him); Carol's block stays.
    assert_eq!(n("contact_entries"), 1, "{erased}");
    assert_eq!(n("blocks_kept"), 1, "{erased}");
    assert!(n("redis_keys") >= 6, "{erased}");
    assert_eq!(n("key_devices"), 1, "{erased}");

    // Nothing of Bob remains.
    let left = redis_leftovers(&c.redis.url(), &needles).await;
    assert!(left.is_empty(), "Redis still holds: {left:#?}");
    let left = stream_leftovers(&c.nats.url(), &needles).await;
    assert!(left.is_empty(), "streams still hold: {left:#?}");
    let js = async_nats::jetstream::new(async_nats::connect(c.nats.url()).await.unwrap());
    let blobs = js
        .get_object_store(interop_bus::subjects::MEDIA_BUCKET)
        .await
        .unwrap();
    for id in [&mb, &ma] {
        assert!(blobs.info(id).await.is_err(), "blob {id} is still there");
    }

    // Erasing again is harmless and finds nothing.
    let again = admin
        .call(
            "POST",
            "/admin/v1/erasures",
            Some(&json!({ "address": BOB })),
        )
        .await
        .unwrap();
    for (k, v) in again["erased"].as_object().unwrap() {
        let want = if k == "blocks_kept" { 1 } else { 0 };
        assert_eq!(v.as_u64(), Some(want), "{k} in {again}");
    }

    // Other users keep their data: Alice's store has Carol's message, Carol
    // has Alice's group message, their consent and the group (without Bob)
    // are there, and Carol's block of Bob stays.
    let alice_store: BTreeSet<String> = store_of(&c.nats.url(), ALICE)
        .await
        .into_iter()
        .map(|e| e.message_id)
        .collect();
    assert!(alice_store.contains(&c1), "{alice_store:?}");
    let carol_store = store_of(&c.nats.url(), CAROL).await;
    assert!(carol_store.iter().any(|e| e.message_id == ga));
    assert!(carol_store.iter().all(|e| e.message_id != gr));
    let records = interop_e2e::records(&c.nats.url(), &c.redis.url()).await;
    let consent = interop_state::ConsentStore::new(records.clone());
    assert!(consent.get(ALICE).await.unwrap().opted_in);
    assert!(consent.get(CAROL).await.unwrap().opted_in);
    assert!(!consent.get(BOB).await.unwrap().opted_in);
    let grp = interop_state::GroupStore::new(records.clone())
        .get(&group)
        .await
        .unwrap()
        .expect("the group stays");
    assert_eq!(grp.members, [CAROL, ALICE]);
    assert_eq!(
        interop_state::ContactStore::new(records)
            .get(CAROL, BOB)
            .await
            .unwrap(),
        Some(interop_state::ContactState::Blocked)
    );
    // A new device of Alice's still gets Carol's message, and none of Bob's
    // (the erasure deleted the last messages of her store subject: delivery
    // must still see what is left).
    let mut laptop = Receiver::connect(&g.delivery_url, "signal", SIGNAL_TOKEN, ALICE, "laptop")
        .await
        .unwrap();
    let got = drain(&mut laptop, Duration::from_millis(3000)).await;
    assert!(
        got.iter().any(|d| d.envelope.message_id == c1),
        "{c1} not in {:#?}",
        got.iter().map(|d| &d.envelope).collect::<Vec<_>>()
    );
    assert!(got.iter().all(|d| d.envelope.from != BOB), "{got:?}");
    // And Bob, back, is a stranger who has not opted in: nothing reaches him.
    match signal
        .send(text_envelope("a9", ALICE, BOB, "still there?"))
        .await
        .unwrap()
    {
        SendOutcome::Rejected(r) => assert_eq!(
            r.code(),
            interop_proto::v1::RejectCode::RecipientUnavailable
        ),
        other => panic!("{other:?}"),
    }
}
