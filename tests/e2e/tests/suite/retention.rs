//! Retention: after real traffic through the five services, every Redis key
//! has a TTL within its family's documented bound (docs/security.md,
//! "Privacy and retention"), except the short list of records kept until
//! changed or erased; and every stream has a max age except the provider
//! registry.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt as _;

use interop_client::{group_text_envelope, text_envelope, GroupOutcome, Receiver, Sender};
use interop_e2e::{Cluster, HOME_TOKEN, SIGNAL_TOKEN, TELEGRAM_TOKEN};
use interop_proto::v1::{
    envelope::Content, ChangeGroup, Encryption, Envelope, Media, RequestAction,
};

use crate::common::{receive_until, send_ok};

const BOB: &str = "home:+4915112345678";
const CAROL: &str = "home:+4915112345679";
const ALICE: &str = "signal:alice";
const DAVE: &str = "telegram:dave";

const DAY: i64 = 24 * 3600;

/// Every Redis key family and the longest TTL it may have (seconds);
/// `None`: kept until changed or erased (no TTL). Longest prefix wins.
const FAMILIES: &[(&str, Option<i64>)] = &[
    // The user's own choice: expiring it would silently opt them out.
    ("interop:consent:", None),
    ("interop:contacts:", Some(400 * DAY)),
    // One flag: users' records were moved into the user-state stream (ADR
    // 28); no user data.
    ("interop:state:migrated:", None),
    // The lock of the replica that moves them.
    ("interop:state:migrating", Some(600)),
    // One flag: the cache was warmed from the streams (gone with a flush,
    // so the next start warms again), and the lock of the replica warming.
    ("interop:state:warm", None),
    ("interop:state:warming", Some(600)),
    ("interop:group:", Some(400 * DAY)),
    // An earlier version's per-user group index (moved on start, ADR 28).
    ("interop:groups:", Some(400 * DAY)),
    ("interop:media:grant:", Some(30 * DAY)),
    ("interop:media:sent:", Some(30 * DAY)),
    ("interop:idem:", Some(DAY)),
    ("interop:gcra:", Some(3600)),
    ("interop:rate:", Some(120)),
    ("interop:spam:recipients:", Some(7200)),
    ("interop:spam:strangers:", Some(7200)),
    ("interop:spam:payload:", Some(7200)),
    ("interop:spam:rep:", Some(28 * DAY)),
    ("interop:spam:fed:", Some(28 * DAY)),
    ("interop:edge:authfail:", Some(60)),
    ("interop:edge:authok:", Some(DAY)),
];

/// Families the traffic below must have written (so the audit cannot pass
/// by seeing nothing).
const MUST_SEE: &[&str] = &[
    "interop:consent:",
    "interop:contacts:",
    "interop:group:",
    "interop:media:grant:",
    "interop:media:sent:",
    "interop:idem:",
    "interop:gcra:",
    "interop:rate:",
    "interop:spam:recipients:",
    "interop:spam:strangers:",
    "interop:spam:rep:",
    "interop:spam:fed:",
    "interop:edge:authfail:",
];

/// Streams kept without a max age, and why.
const NO_MAX_AGE: &[&str] = &[
    // One record per provider (operator data, no user data), replaced on
    // change; a removed provider's record stays as a tombstone.
    "INTEROP_PROVIDERS",
    // What users decided (ADR 28): one consent record per user and at most
    // MAX_CONTACTS answers per user, each replaced on change; a user's go
    // when they are erased. Redis caches them with TTLs.
    "INTEROP_USER_STATE",
    // Key transparency's log (ADR 29): the auditable key directory is the
    // replay of its committed batches; nothing may age out of it. It holds
    // commitments to public keys under labels, no message.
    "INTEROP_KT_LOG",
    // Its roots: one small message per epoch (epoch, root hash; no user
    // data) that auditors check the whole history against.
    "INTEROP_KT_ROOTS",
];

/// Streams kept longer than the 61 days of the message streams, how long,
/// and why.
const LONG_MAX_AGE: &[(&str, u64)] = &[
    // Users' public keys (the key directory, ADR 25): 400 days after a
    // device's last publish, like contacts and groups; an app that is used
    // publishes far more often (it tops up its one-time prekeys).
    ("INTEROP_KEYS_DEVICES", 400 * 24 * 3600),
    ("INTEROP_KEYS_POOL", 400 * 24 * 3600),
    // Groups (ADR 28): 400 days after the last change or send, as their
    // cache in Redis.
    ("INTEROP_GROUPS", 400 * 24 * 3600),
];

fn family(key: &str) -> Option<(&'static str, Option<i64>)> {
    FAMILIES
        .iter()
        .filter(|(p, _)| key.starts_with(p))
        .max_by_key(|(p, _)| p.len())
        .copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_redis_key_and_every_stream_has_a_bounded_lifetime_after_real_traffic() {
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
    // A failed authentication (the edge throttle's keys).
    assert!(Sender::connect(&g.ingest_url, "home", "wrong-token")
        .await
        .is_err());
    home.set_consent(BOB, true, &["signal", "telegram", "home"])
        .await
        .unwrap();
    home.set_consent(CAROL, true, &["signal"]).await.unwrap();
    signal.set_consent(ALICE, true, &["home"]).await.unwrap();
    home.respond_to_request(BOB, DAVE, RequestAction::Report)
        .await
        .unwrap();
    home.respond_to_request(CAROL, ALICE, RequestAction::Decline)
        .await
        .unwrap();
    let mut bob = Receiver::connect(&g.delivery_url, "home", HOME_TOKEN, BOB, "phone")
        .await
        .unwrap();
    let a1 = send_ok(&signal, text_envelope("a1", ALICE, BOB, "hi"))
        .await
        .message_id;
    receive_until(&mut bob, |e| e.message_id == a1).await;
    send_ok(&home, text_envelope("b1", BOB, ALICE, "hi back")).await;
    send_ok(&telegram, text_envelope("d1", DAVE, BOB, "spam?")).await;
    let data: Vec<u8> = (0..1500u32).map(|i| (i % 256) as u8).collect();
    let media_id = g.upload_e2ee("signal", SIGNAL_TOKEN, &data).await;
    let am = send_ok(
        &signal,
        Envelope {
            encryption: Encryption::E2ee as i32,
            content: Some(Content::Media(Media {
                media_id,
                content_type: "image/jpeg".into(),
                size: data.len() as u64,
                ..Default::default()
            })),
            ..text_envelope("am", ALICE, BOB, "")
        },
    )
    .await
    .message_id;
    receive_until(&mut bob, |e| e.message_id == am).await;
    let group = match signal
        .create_named_group(ALICE, &[BOB.to_owned(), CAROL.to_owned()], "Book club")
        .await
        .unwrap()
    {
        GroupOutcome::Updated(g) => g.group_id,
        other => panic!("{other:?}"),
    };
    signal
        .change_group(ChangeGroup {
            group_id: group.clone(),
            actor: ALICE.into(),
            remove: vec![CAROL.into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let ga = send_ok(&signal, group_text_envelope("ga", ALICE, &group, "hi all"))
        .await
        .message_id;
    receive_until(&mut bob, |e| e.message_id == ga).await;
    bob.close().await;

    // Every key: a TTL within its family's bound, or a family kept until
    // changed or erased.
    let client = redis::Client::open(c.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut bad = Vec::new();
    for key in &keys {
        let ttl: i64 = redis::cmd("TTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        match family(key) {
            None => bad.push(format!("{key}: no documented family (TTL {ttl})")),
            Some((prefix, bound)) => {
                *seen.entry(prefix).or_default() += 1;
                match bound {
                    None if ttl != -1 => {
                        bad.push(format!("{key}: kept until changed, but TTL {ttl}"))
                    }
                    Some(max) if !(1..=max).contains(&ttl) => {
                        bad.push(format!("{key}: TTL {ttl}, bound {max}"))
                    }
                    _ => {}
                }
            }
        }
    }
    assert!(bad.is_empty(), "keys without a bounded lifetime: {bad:#?}");
    for prefix in MUST_SEE {
        assert!(
            seen.contains_key(prefix),
            "the traffic wrote no {prefix} key: {keys:#?}"
        );
    }
    println!("keys by family: {seen:?}");

    // Every stream: a max age, except the documented ones.
    let js = async_nats::jetstream::new(async_nats::connect(c.nats.url()).await.unwrap());
    let names: Vec<String> = js
        .stream_names()
        .map(Result::unwrap)
        .collect::<Vec<_>>()
        .await;
    for required in [
        "INTEROP_INGEST",
        "INTEROP_MEDIA",
        "INTEROP_QUARANTINE",
        "INTEROP_INBOX",
        "INTEROP_CURSORS",
        "INTEROP_PROVIDERS",
        "INTEROP_KEYS_DEVICES",
        "INTEROP_KEYS_POOL",
        "INTEROP_USER_STATE",
        "INTEROP_GROUPS",
        "INTEROP_KT_LOG",
        "INTEROP_KT_ROOTS",
        "OBJ_INTEROP_MEDIA_BLOBS",
    ] {
        assert!(names.iter().any(|n| n == required), "{required}: {names:?}");
    }
    for name in &names {
        let mut stream = js.get_stream(name).await.unwrap();
        let max_age = stream.info().await.unwrap().config.max_age;
        if NO_MAX_AGE.contains(&name.as_str()) {
            assert_eq!(max_age, Duration::ZERO, "{name}");
        } else if let Some((_, secs)) = LONG_MAX_AGE.iter().find(|(n, _)| n == name) {
            assert_eq!(max_age, Duration::from_secs(*secs), "{name}");
        } else {
            assert!(
                max_age > Duration::ZERO && max_age <= Duration::from_secs(61 * 24 * 3600),
                "{name}: max_age {max_age:?}"
            );
        }
    }
}
