//! Admissions made together (issue 22: one round trip per batch): against
//! real nats-server and redis-server, many admissions in one pipeline
//! decide exactly as one at a time, and concurrent callers of the batcher
//! share round trips.

use interop_state::contacts::{AdmissionAsk, AdmissionBatcher};
use interop_state::{Consent, ConsentStore, ContactState, ContactStore, Records};
use interop_test_support::{NatsServer, RedisServer};
use redis::aio::ConnectionManager;

const ALICE: &str = "signal:alice";
const MALLORY: &str = "signal:mallory";
const EVE: &str = "signal:eve";
const BOB: &str = "home:+4915112345678";
const CAROL: &str = "home:+4915112345679";
const DAVE: &str = "home:+4915112345670";

struct World {
    _nats: NatsServer,
    _redis: RedisServer,
    c: ConnectionManager,
    contacts: ContactStore,
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
    let consents = ConsentStore::new(records.clone());
    let allow = |providers: &[&str]| Consent {
        opted_in: true,
        allowed_providers: providers.iter().map(|p| (*p).to_owned()).collect(),
        combined_inbox: false,
    };
    consents.set(BOB, &allow(&["signal"])).await.unwrap();
    consents.set(DAVE, &allow(&["telegram"])).await.unwrap();
    let contacts = ContactStore::new(records);
    contacts
        .set(BOB, ALICE, ContactState::Accepted)
        .await
        .unwrap();
    contacts
        .set(BOB, MALLORY, ContactState::Blocked)
        .await
        .unwrap();
    contacts
        .set(ALICE, BOB, ContactState::Accepted)
        .await
        .unwrap();
    World {
        _nats: nats,
        _redis: redis,
        c,
        contacts,
    }
}

fn ask(recipient: &str, sender: &str, reply_state: bool) -> AdmissionAsk {
    AdmissionAsk {
        recipient: recipient.into(),
        sender: sender.into(),
        sender_provider: sender.split(':').next().unwrap().into(),
        reply_state,
    }
}

fn asks() -> Vec<AdmissionAsk> {
    vec![
        ask(BOB, ALICE, true),
        ask(BOB, MALLORY, false),
        ask(CAROL, ALICE, true),
        ask(DAVE, ALICE, false),
        ask(BOB, EVE, true),
        ask(ALICE, BOB, true),
    ]
}

async fn calls(c: &ConnectionManager, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c.clone())
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn many_admissions_in_one_round_trip_decide_as_one_at_a_time() {
    let w = world().await;
    let together = w.contacts.admissions(&asks()).await.unwrap();
    for (a, got) in asks().iter().zip(&together) {
        let alone = w
            .contacts
            .admission_and_reply_state(&a.recipient, &a.sender, &a.sender_provider)
            .await
            .unwrap();
        let want = (alone.0, a.reply_state && alone.1);
        assert_eq!(*got, want, "{a:?}");
    }
    // Each recipient's consent record is read once.
    let before = calls(&w.c, "hmget").await;
    w.contacts.admissions(&asks()).await.unwrap();
    let reads = calls(&w.c, "hmget").await - before;
    // 4 distinct recipients' consent, 6 answers, 4 reply states.
    assert_eq!(reads, 4 + 6 + 4);
}

#[tokio::test]
async fn concurrent_callers_share_round_trips() {
    let w = world().await;
    let batcher = AdmissionBatcher::new(w.contacts.clone());
    let want = w.contacts.admissions(&asks()).await.unwrap();
    let mut tasks = Vec::new();
    for round in 0..50 {
        for (i, a) in asks().into_iter().enumerate() {
            let b = batcher.clone();
            tasks.push(tokio::spawn(async move { (round, i, b.admit(a).await) }));
        }
    }
    let mut total = 0;
    for t in tasks {
        let (_, i, got) = t.await.unwrap();
        assert_eq!(got.unwrap(), want[i]);
        total += 1;
    }
    assert_eq!(total, 300);
    // What came while one round trip was in flight went together: 300
    // asks, made at once, in a few round trips (the first goes alone).
    let trips = batcher.round_trips();
    assert!(
        (2..=10).contains(&trips),
        "{trips} round trips for 300 asks"
    );
}

#[tokio::test]
async fn one_unreadable_record_fails_only_its_own_admission() {
    let w = world().await;
    // Not a hash: HMGET on it fails, and with it the shared pipeline.
    redis::cmd("SET")
        .arg(interop_state::keys::consent(CAROL))
        .arg("not a hash")
        .query_async::<()>(&mut w.c.clone())
        .await
        .unwrap();
    let batcher = AdmissionBatcher::new(w.contacts.clone());
    let mut tasks = Vec::new();
    for a in asks() {
        let b = batcher.clone();
        let broken = a.recipient == CAROL;
        tasks.push(tokio::spawn(async move { (broken, b.admit(a).await) }));
    }
    for t in tasks {
        let (broken, got) = t.await.unwrap();
        assert_eq!(got.is_err(), broken, "{got:?}");
    }
}
