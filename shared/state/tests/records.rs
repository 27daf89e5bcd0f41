//! What users decided survives the loss of Redis: the user-state stream is
//! the system of record, Redis its cache (docs/adr/0028). Real nats-server
//! and redis-server.

use interop_state::contacts::{ContactState, ContactStore, SetOutcome};
use interop_state::records::{ABSENT_TTL_SECS, LOADED_FIELD};
use interop_state::{keys, Admission, Consent, ConsentStore, Records, Refusal};
use interop_test_support::{NatsServer, RedisServer};
use redis::aio::ConnectionManager;

struct World {
    _nats: NatsServer,
    _redis: RedisServer,
    records: Records,
    c: ConnectionManager,
}

async fn world() -> World {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let c = ConnectionManager::new(redis::Client::open(redis.url()).unwrap())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    interop_bus::ensure_streams(&js, &interop_bus::StreamSettings::default())
        .await
        .unwrap();
    let records = Records::open(js, c.clone()).await.unwrap();
    World {
        _nats: nats,
        _redis: redis,
        records,
        c,
    }
}

impl World {
    async fn flush(&self) {
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut self.c.clone())
            .await
            .unwrap();
    }

    async fn hget(&self, key: &str, field: &str) -> Option<String> {
        redis::cmd("HGET")
            .arg(key)
            .arg(field)
            .query_async(&mut self.c.clone())
            .await
            .unwrap()
    }

    async fn ttl(&self, key: &str) -> i64 {
        redis::cmd("TTL")
            .arg(key)
            .query_async(&mut self.c.clone())
            .await
            .unwrap()
    }
}

const BOB: &str = "home:+4915112345678";

fn opted_in(allowed: &[&str]) -> Consent {
    Consent {
        opted_in: true,
        allowed_providers: allowed.iter().map(|s| (*s).to_owned()).collect(),
        combined_inbox: true,
    }
}

#[tokio::test]
async fn consent_and_answers_hold_after_redis_loses_everything() {
    let w = world().await;
    let consent = ConsentStore::new(w.records.clone());
    let contacts = ContactStore::new(w.records.clone());
    consent
        .set(BOB, &opted_in(&["signal", "telegram"]))
        .await
        .unwrap();
    contacts
        .set(BOB, "signal:spammer", ContactState::Blocked)
        .await
        .unwrap();
    contacts
        .set(BOB, "signal:friend", ContactState::Accepted)
        .await
        .unwrap();
    contacts
        .set(BOB, "telegram:pest", ContactState::Declined)
        .await
        .unwrap();
    contacts
        .set(BOB, "signal:forgotten", ContactState::Blocked)
        .await
        .unwrap();
    contacts.reset(BOB, "signal:forgotten").await.unwrap();
    let before = contacts.list(BOB).await.unwrap();
    assert_eq!(before.len(), 3, "{before:?}");

    for round in 0..2 {
        w.flush().await;
        // Each way in: the consent read, the admission, the listing.
        assert_eq!(
            consent.get(BOB).await.unwrap(),
            opted_in(&["signal", "telegram"]),
            "round {round}"
        );
        w.flush().await;
        assert_eq!(
            contacts
                .admission(BOB, "signal:spammer", "signal")
                .await
                .unwrap(),
            Admission::Refused(Refusal::Blocked),
            "round {round}: a blocked spammer must not come back"
        );
        assert_eq!(
            contacts
                .admission(BOB, "signal:friend", "signal")
                .await
                .unwrap(),
            Admission::Inbox(interop_proto::v1::Inbox::Combined)
        );
        assert_eq!(
            contacts
                .admission(BOB, "telegram:pest", "telegram")
                .await
                .unwrap(),
            Admission::Refused(Refusal::Declined)
        );
        assert_eq!(
            contacts
                .admission(BOB, "signal:forgotten", "signal")
                .await
                .unwrap(),
            Admission::Request,
            "a reset answer stays reset"
        );
        w.flush().await;
        assert_eq!(contacts.list(BOB).await.unwrap(), before);
    }
    assert!(consent.get(BOB).await.unwrap().opted_in);
    // Loaded: the cache says so and later reads need no load.
    assert_eq!(
        w.hget(&keys::contacts(BOB), LOADED_FIELD).await.as_deref(),
        Some("1")
    );
    assert!(w.hget(&keys::consent(BOB), "rev").await.is_some());
}

#[tokio::test]
async fn a_user_nobody_knows_is_cached_as_absent_for_a_while_then_opts_in() {
    let w = world().await;
    let consent = ConsentStore::new(w.records.clone());
    let nobody = "home:+4915100000000";
    assert_eq!(consent.get(nobody).await.unwrap(), Consent::default());
    assert_eq!(
        w.hget(&keys::consent(nobody), "rev").await.as_deref(),
        Some("0")
    );
    let ttl = w.ttl(&keys::consent(nobody)).await;
    assert!(ttl > 0 && ttl <= ABSENT_TTL_SECS as i64, "{ttl}");
    // Opting in replaces the cached absence for good (no TTL).
    consent.set(nobody, &opted_in(&["signal"])).await.unwrap();
    assert_eq!(w.ttl(&keys::consent(nobody)).await, -1);
    assert!(consent.get(nobody).await.unwrap().opted_in);
}

#[tokio::test]
async fn records_cached_before_the_stream_existed_move_into_it() {
    let w = world().await;
    let mut c = w.c.clone();
    // What an earlier version wrote: no `rev`, answers without sequences.
    let _: () = redis::cmd("HSET")
        .arg(keys::consent(BOB))
        .arg("opted_in")
        .arg("1")
        .arg("allowed")
        .arg("signal")
        .arg("inbox")
        .arg("combined")
        .query_async(&mut c)
        .await
        .unwrap();
    let carol = "signal:carol";
    let _: () = redis::cmd("HSET")
        .arg(keys::consent(carol))
        .arg("opted_in")
        .arg("1")
        .arg("allowed")
        .arg("home")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(keys::contacts(BOB))
        .arg("signal:spammer")
        .arg("b")
        .arg("signal:friend")
        .arg("a")
        .query_async(&mut c)
        .await
        .unwrap();
    // One read moves Carol's record lazily; the migration moves the rest.
    assert!(
        ConsentStore::new(w.records.clone())
            .get(carol)
            .await
            .unwrap()
            .opted_in
    );
    assert_eq!(w.records.migrate().await.unwrap(), Some(2));
    assert_eq!(w.records.migrate().await.unwrap(), None, "runs once");
    w.flush().await;
    let contacts = ContactStore::new(w.records.clone());
    assert_eq!(
        contacts
            .admission(BOB, "signal:spammer", "signal")
            .await
            .unwrap(),
        Admission::Refused(Refusal::Blocked)
    );
    assert_eq!(
        contacts
            .admission(BOB, "signal:friend", "signal")
            .await
            .unwrap(),
        Admission::Inbox(interop_proto::v1::Inbox::Combined)
    );
    assert!(ConsentStore::new(w.records.clone())
        .get(carol)
        .await
        .unwrap()
        .admits("home"));
}

#[tokio::test]
async fn a_load_never_puts_an_older_answer_over_a_newer_one() {
    let w = world().await;
    let contacts = ContactStore::new(w.records.clone());
    contacts
        .set(BOB, "signal:x", ContactState::Accepted)
        .await
        .unwrap();
    // A later answer reached the cache but the marker is gone (a partial
    // record: written after a loss, before any load).
    let mut c = w.c.clone();
    let _: () = redis::cmd("HSET")
        .arg(keys::contacts(BOB))
        .arg("signal:x")
        .arg("b:999999")
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("HDEL")
        .arg(keys::contacts(BOB))
        .arg(LOADED_FIELD)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        contacts.get(BOB, "signal:x").await.unwrap(),
        Some(ContactState::Blocked),
        "the load kept the later answer"
    );
    assert_eq!(
        w.hget(&keys::contacts(BOB), "signal:x").await.as_deref(),
        Some("b:999999")
    );
}

#[tokio::test]
async fn implicit_acceptance_never_overrides_an_answer_even_after_a_loss() {
    let w = world().await;
    let contacts = ContactStore::new(w.records.clone());
    contacts
        .set(BOB, "signal:x", ContactState::Blocked)
        .await
        .unwrap();
    w.flush().await;
    assert_eq!(
        contacts.accept_if_unknown(BOB, "signal:x").await.unwrap(),
        SetOutcome::Unchanged
    );
    contacts.reset(BOB, "signal:x").await.unwrap();
    w.flush().await;
    assert_eq!(
        contacts.accept_if_unknown(BOB, "signal:x").await.unwrap(),
        SetOutcome::Set,
        "after a reset the sender is unknown again"
    );
    assert_eq!(
        contacts.get(BOB, "signal:x").await.unwrap(),
        Some(ContactState::Accepted)
    );
}

#[tokio::test]
async fn erasing_a_user_removes_their_records_and_keeps_others_blocks_of_them() {
    let w = world().await;
    let consent = ConsentStore::new(w.records.clone());
    let contacts = ContactStore::new(w.records.clone());
    let gone = "signal:gone";
    consent.set(gone, &opted_in(&["home"])).await.unwrap();
    contacts
        .set(gone, "home:+1", ContactState::Accepted)
        .await
        .unwrap();
    contacts
        .set(BOB, gone, ContactState::Blocked)
        .await
        .unwrap();
    contacts
        .set("home:+2", gone, ContactState::Accepted)
        .await
        .unwrap();
    let (removed, kept) = w.records.erase_user(gone).await.unwrap();
    assert_eq!((removed, kept), (3, 1));
    w.flush().await;
    assert_eq!(consent.get(gone).await.unwrap(), Consent::default());
    assert!(contacts.list(gone).await.unwrap().is_empty());
    assert_eq!(contacts.get("home:+2", gone).await.unwrap(), None);
    assert_eq!(
        contacts.get(BOB, gone).await.unwrap(),
        Some(ContactState::Blocked),
        "the blocker stays protected"
    );
}

#[tokio::test]
async fn a_start_after_a_loss_warms_every_consent_record_and_group_once() {
    let w = world().await;
    let consent = ConsentStore::new(w.records.clone());
    let users: Vec<String> = (0..25)
        .map(|i| format!("home:+49151000000{i:02}"))
        .collect();
    for u in &users {
        consent.set(u, &opted_in(&["signal"])).await.unwrap();
    }
    let groups = interop_state::GroupStore::new(w.records.clone());
    groups
        .create("g-warm", &users[0], &users[1..3], "Warm")
        .await
        .unwrap();
    w.flush().await;
    assert_eq!(w.records.warm().await.unwrap(), Some((25, 1)));
    // Cached without any read: every record carries its sequence.
    for u in &users {
        let rev = w.hget(&keys::consent(u), "rev").await;
        assert!(rev.is_some_and(|r| r != "0"), "{u}");
        assert_eq!(
            w.hget(&keys::consent(u), "opted_in").await.as_deref(),
            Some("1")
        );
    }
    assert!(w.hget(&keys::group("g-warm"), "~rev").await.is_some());
    assert_eq!(w.records.warm().await.unwrap(), None, "once per Redis");
    // A flush takes the flag too: the next start warms again.
    w.flush().await;
    assert_eq!(w.records.warm().await.unwrap(), Some((25, 1)));
}

#[tokio::test]
async fn loading_a_user_with_no_answers_needs_no_consumer() {
    let w = world().await;
    let contacts = ContactStore::new(w.records.clone());
    contacts
        .set(BOB, "signal:x", ContactState::Blocked)
        .await
        .unwrap();
    let stream = async_nats::jetstream::new(async_nats::connect(w._nats.url()).await.unwrap())
        .get_stream(interop_bus::subjects::STREAM_USER_STATE)
        .await
        .unwrap();
    let consumers = || async {
        let mut s = stream.clone();
        s.info().await.unwrap().state.consumer_count
    };
    let before = consumers().await;
    // A user nobody answered: one direct get says so.
    assert!(w.records.load_contacts("home:+1").await.unwrap().is_empty());
    // A user with answers: read through an ordered consumer.
    w.flush().await;
    let answers = w.records.load_contacts(BOB).await.unwrap();
    assert_eq!(answers["signal:x"].0, Some(ContactState::Blocked));
    // Ordered consumers are ephemeral; none is left for the empty load,
    // and the count never grew by more than the one read.
    assert!(consumers().await <= before + 1);
}

/// Writes an answer the way a replica from before answered-markers did: the
/// record only.
async fn publish_unmarked_answer(
    js: &async_nats::jetstream::Context,
    recipient: &str,
    sender: &str,
) {
    use interop_proto::Message as _;
    let stored = interop_proto::v1::StoredContact {
        recipient: recipient.to_owned(),
        sender: sender.to_owned(),
        answer: interop_proto::v1::ContactAnswer::Blocked as i32,
        updated_at_ms: interop_proto::now_ms(),
    };
    let subject = interop_bus::subjects::user_contact(
        Some(&interop_bus::recipient_key(recipient)),
        Some(&interop_bus::recipient_key(sender)),
    );
    js.publish(subject, stored.encode_to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn answers_from_before_markers_are_found_and_marked_at_each_start() {
    let w = world().await;
    let js = async_nats::jetstream::new(async_nats::connect(w._nats.url()).await.unwrap());
    // A stream from before markers: answers, no marker, no index record.
    publish_unmarked_answer(&js, BOB, "signal:old").await;
    let before = Records::open(js.clone(), w.c.clone()).await.unwrap();
    let answers = before.load_contacts(BOB).await.unwrap();
    assert_eq!(
        answers["signal:old"].0,
        Some(ContactState::Blocked),
        "found through the wildcard while the markers are incomplete"
    );
    // The first start marks every recipient with an answer.
    assert_eq!(w.records.index_answers().await.unwrap(), Some(1));
    // A replica of the old version answers once more, after the index.
    publish_unmarked_answer(&js, "home:+2", "signal:late").await;
    let after = Records::open(js.clone(), w.c.clone()).await.unwrap();
    let answers = after.load_contacts(BOB).await.unwrap();
    assert_eq!(answers["signal:old"].0, Some(ContactState::Blocked));
    // Markers are trusted now: the late, unmarked answer is not seen (this
    // is what proves the exact read replaced the wildcard)...
    assert!(after.load_contacts("home:+2").await.unwrap().is_empty());
    // ...until the next start marks what was written since the last one
    // (only that: one answer looked at).
    assert_eq!(w.records.index_answers().await.unwrap(), Some(1));
    let answers = after.load_contacts("home:+2").await.unwrap();
    assert_eq!(answers["signal:late"].0, Some(ContactState::Blocked));
    // Nothing new: nothing looked at.
    assert_eq!(w.records.index_answers().await.unwrap(), Some(0));
    // Answers written now carry their marker, and a user without answers
    // is empty.
    let contacts = ContactStore::new(after.clone());
    contacts
        .set("home:+3", "signal:new", ContactState::Accepted)
        .await
        .unwrap();
    w.flush().await;
    let answers = after.load_contacts("home:+3").await.unwrap();
    assert_eq!(answers["signal:new"].0, Some(ContactState::Accepted));
    assert!(after.load_contacts("home:+4").await.unwrap().is_empty());
    // Erasing a user takes their marker too.
    after.erase_user("home:+3").await.unwrap();
    let marker = interop_bus::subjects::user_answered(&interop_bus::recipient_key("home:+3"));
    let stream = js
        .get_stream(interop_bus::subjects::STREAM_USER_STATE)
        .await
        .unwrap();
    assert!(stream.direct_get_last_for_subject(marker).await.is_err());
}
