//! Contacts, reputation and spam-scoring's counters against a real
//! redis-server: limits at their edge, TTLs on every key.

use interop_state::contacts::{ContactState, ContactStore, SetOutcome, MAX_CONTACTS};
use interop_state::reputation::{self, Feedback};
use interop_state::Records;
use interop_state::{spam, Admission, Consent, ConsentStore, Refusal};
use interop_test_support::{NatsServer, RedisServer};

async fn conn(redis: &RedisServer) -> redis::aio::ConnectionManager {
    let client = redis::Client::open(redis.url()).unwrap();
    redis::aio::ConnectionManager::new(client).await.unwrap()
}

/// A real nats-server (the user-state stream) and redis-server (its cache).
struct World {
    _nats: NatsServer,
    _redis: RedisServer,
    records: Records,
}

async fn world() -> (World, redis::aio::ConnectionManager) {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let c = conn(&redis).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    interop_bus::ensure_streams(&js, &interop_bus::StreamSettings::default())
        .await
        .unwrap();
    let records = Records::open(js, c.clone()).await.unwrap();
    (
        World {
            _nats: nats,
            _redis: redis,
            records,
        },
        c,
    )
}

async fn ttl(c: &mut redis::aio::ConnectionManager, key: &str) -> i64 {
    redis::cmd("TTL").arg(key).query_async(c).await.unwrap()
}

#[tokio::test]
async fn a_contact_record_holds_at_most_max_contacts_and_expires() {
    let (w, mut c) = world().await;
    let store = ContactStore::new(w.records.clone());
    let bob = "home:+4915112345678";
    // Fill the cache to one under the limit in one go (as if loaded from
    // the stream), then the last one by the API.
    let mut cmd = redis::cmd("HSET");
    cmd.arg(interop_state::keys::contacts(bob))
        .arg(interop_state::records::LOADED_FIELD)
        .arg("1");
    for i in 0..MAX_CONTACTS - 1 {
        cmd.arg(format!("signal:u{i}")).arg("a:1");
    }
    let _: i64 = cmd.query_async(&mut c).await.unwrap();
    assert_eq!(
        store
            .set(bob, "signal:last", ContactState::Blocked)
            .await
            .unwrap(),
        SetOutcome::Set,
        "the {MAX_CONTACTS}th sender fits"
    );
    assert_eq!(
        store
            .set(bob, "signal:one-more", ContactState::Blocked)
            .await
            .unwrap(),
        SetOutcome::Full
    );
    // A sender already in the record can always change.
    assert_eq!(
        store
            .set(bob, "signal:u0", ContactState::Declined)
            .await
            .unwrap(),
        SetOutcome::Set
    );
    assert!(ttl(&mut c, &interop_state::keys::contacts(bob)).await > 0);
}

#[tokio::test]
async fn implicit_acceptance_never_overrides_an_answer_and_admission_reads_both_records() {
    let (w, _c) = world().await;
    let store = ContactStore::new(w.records.clone());
    let bob = "home:+4915112345678";
    ConsentStore::new(w.records.clone())
        .set(
            bob,
            &Consent {
                opted_in: true,
                allowed_providers: vec!["signal".into()],
                combined_inbox: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.admission(bob, "signal:a", "signal").await.unwrap(),
        Admission::Request
    );
    assert_eq!(
        store
            .admission(bob, "telegram:t", "telegram")
            .await
            .unwrap(),
        Admission::Refused(Refusal::ProviderNotAllowed)
    );
    store
        .set(bob, "signal:a", ContactState::Blocked)
        .await
        .unwrap();
    assert_eq!(
        store.accept_if_unknown(bob, "signal:a").await.unwrap(),
        SetOutcome::Unchanged
    );
    assert_eq!(
        store.admission(bob, "signal:a", "signal").await.unwrap(),
        Admission::Refused(Refusal::Blocked)
    );
    assert_eq!(
        store.accept_if_unknown(bob, "signal:b").await.unwrap(),
        SetOutcome::Set
    );
    assert_eq!(
        store.admission(bob, "signal:b", "signal").await.unwrap(),
        Admission::Inbox(interop_proto::v1::Inbox::Combined)
    );
    store.reset(bob, "signal:a").await.unwrap();
    assert_eq!(store.get(bob, "signal:a").await.unwrap(), None);
}

#[tokio::test]
async fn feedback_counts_once_per_recipient_sender_and_kind() {
    let redis = RedisServer::start();
    let mut c = conn(&redis).await;
    for _ in 0..3 {
        reputation::record(&c, "home:+1", "signal:a", "signal", Feedback::Block)
            .await
            .unwrap();
    }
    assert!(
        reputation::record(&c, "home:+2", "signal:a", "signal", Feedback::Block)
            .await
            .unwrap()
    );
    assert!(
        reputation::record(&c, "home:+1", "signal:a", "signal", Feedback::Report)
            .await
            .unwrap()
    );
    assert!(
        !reputation::record(&c, "home:+1", "signal:a", "signal", Feedback::Report)
            .await
            .unwrap()
    );
    let fields: Vec<(String, i64)> = redis::cmd("HGETALL")
        .arg(interop_state::keys::reputation_sender("signal:a"))
        .query_async(&mut c)
        .await
        .unwrap();
    let day = reputation::today();
    let mut fields = fields;
    fields.sort();
    assert_eq!(
        fields,
        vec![(format!("block:{day}"), 2), (format!("report:{day}"), 1)]
    );
    for key in [
        interop_state::keys::reputation_sender("signal:a"),
        interop_state::keys::reputation_provider("signal"),
        reputation::once_key(Feedback::Block, "home:+1", "signal:a"),
    ] {
        assert!(ttl(&mut c, &key).await > 0, "{key}");
    }
}

#[tokio::test]
async fn observe_counts_strangers_recipients_and_payloads_with_ttls() {
    let (w, mut c) = world().await;
    let contacts = ContactStore::new(w.records.clone());
    // r0 accepted the sender; r1..r4 did not.
    contacts
        .set("home:+r0", "signal:s", ContactState::Accepted)
        .await
        .unwrap();
    let mut last = spam::Observation::default();
    for i in 0..5 {
        last = spam::observe(&c, "signal:s", "signal", &format!("home:+r{i}"), Some("h1"))
            .await
            .unwrap();
        assert_eq!(last.to_stranger, i != 0, "recipient {i}");
    }
    assert_eq!(last.sent_this_minute, 5);
    assert_eq!(last.recipients_this_hour, 5);
    assert_eq!(last.strangers_this_hour, 4);
    assert_eq!(last.payload_recipients_this_hour, 5);
    // The same recipient again is not a new one.
    let again = spam::observe(&c, "signal:s", "signal", "home:+r4", None)
        .await
        .unwrap();
    assert_eq!(
        (
            again.recipients_this_hour,
            again.payload_recipients_this_hour
        ),
        (5, 0)
    );
    // The provider's message count feeds its reputation.
    assert!(again
        .provider_reputation
        .iter()
        .any(|(f, n)| f.starts_with("msgs:") && *n == 6));
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("interop:*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(keys.len() >= 5, "{keys:?}");
    for k in keys {
        assert!(ttl(&mut c, &k).await > 0, "{k} has no TTL");
    }
}
