//! Groups against real nats-server and redis-server: the groups stream is
//! the record and Redis its cache (docs/adr/0028), so a group survives the
//! loss of Redis; membership finds a member's groups, a send refreshes the
//! group's lifetime at most once a day, a rename sets or clears the name,
//! an erasure removes a member, and groups an earlier version kept in
//! Redis sets move into the stream.

use interop_state::group::{
    add_member_check, Change, GroupStore, MemberCheck, GROUP_TTL_SECS, TOUCH_EVERY_SECS,
};
use interop_state::{keys, Records};
use interop_test_support::{NatsServer, RedisServer};
use redis::aio::ConnectionManager;

const ALICE: &str = "signal:alice";
const BOB: &str = "home:+4915112345678";
const CAROL: &str = "telegram:carol";
const G: &str = "g-0123456789abcdef0123456789abcdef";
const OTHER: &str = "g-ffffffffffffffffffffffffffffffff";

struct World {
    _nats: NatsServer,
    _redis: RedisServer,
    js: async_nats::jetstream::Context,
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
    let records = Records::open(js.clone(), c.clone()).await.unwrap();
    World {
        _nats: nats,
        _redis: redis,
        js,
        records,
        c,
    }
}

impl World {
    async fn ttl(&self, key: &str) -> i64 {
        redis::cmd("TTL")
            .arg(key)
            .query_async(&mut self.c.clone())
            .await
            .unwrap()
    }

    async fn member_check(&self, group: &str, who: &str) -> MemberCheck {
        let mut pipe = redis::pipe();
        add_member_check(&mut pipe, group, who);
        let (r,): (i64,) = pipe.query_async(&mut self.c.clone()).await.unwrap();
        MemberCheck::from_reply(r)
    }

    async fn flush(&self) {
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut self.c.clone())
            .await
            .unwrap();
    }

    /// The stream sequence of the group's record.
    async fn record_seq(&self, group: &str) -> u64 {
        let stream = self
            .js
            .get_stream(interop_bus::subjects::STREAM_GROUPS)
            .await
            .unwrap();
        stream
            .direct_get_last_for_subject(interop_bus::subjects::group_record(
                &interop_bus::recipient_key(group),
            ))
            .await
            .unwrap()
            .sequence
    }
}

#[tokio::test]
async fn a_group_survives_the_loss_of_redis_and_changes_follow_the_rules() {
    let w = world().await;
    let groups = GroupStore::new(w.records.clone());
    let ttl_max = i64::try_from(GROUP_TTL_SECS).unwrap();

    groups
        .create(G, ALICE, &[BOB.to_owned(), CAROL.to_owned()], "Family")
        .await
        .unwrap();
    assert_eq!(groups.get(G).await.unwrap().unwrap().name, "Family");
    let t = w.ttl(&keys::group(G)).await;
    assert!(t > ttl_max - 5 && t <= ttl_max, "{t}");
    for who in [ALICE, BOB, CAROL] {
        assert_eq!(groups.groups_of(who).await.unwrap(), [G]);
    }

    // Lost from Redis: every read loads it again, and the send check says
    // so first.
    w.flush().await;
    assert_eq!(w.member_check(G, BOB).await, MemberCheck::NotCached);
    assert!(groups.is_member(G, BOB).await.unwrap());
    assert_eq!(w.member_check(G, BOB).await, MemberCheck::Member);
    w.flush().await;
    let g = groups.get(G).await.unwrap().unwrap();
    assert_eq!(
        g.members,
        [ALICE, CAROL, BOB].map(str::to_owned).tap_sorted()
    );
    assert_eq!(g.admins, [ALICE]);

    // Removing Carol; of the addresses a change names to remove, only
    // members count as removed.
    let remove = [CAROL.to_owned(), "signal:never-a-member".to_owned()];
    w.flush().await;
    let changed = groups
        .change(
            G,
            &Change {
                actor: ALICE,
                remove: &remove,
                ..Default::default()
            },
            256,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.removed, [CAROL]);
    assert!(groups.groups_of(CAROL).await.unwrap().is_empty());
    assert_eq!(w.member_check(G, CAROL).await, MemberCheck::NotMember);

    // A rename sets the name; an empty one removes it; only an admin may.
    let rename = |name| Change {
        actor: ALICE,
        name: Some(name),
        ..Default::default()
    };
    groups
        .change(G, &rename("Ski trip"), 256)
        .await
        .unwrap()
        .unwrap();
    w.flush().await;
    assert_eq!(groups.get(G).await.unwrap().unwrap().name, "Ski trip");
    let by_bob = Change {
        actor: BOB,
        name: Some("Bob's"),
        ..Default::default()
    };
    assert!(groups.change(G, &by_bob, 256).await.unwrap().is_err());
    groups.change(G, &rename(""), 256).await.unwrap().unwrap();
    assert_eq!(groups.get(G).await.unwrap().unwrap().name, "");

    // Erasure: Alice, the only admin, goes; Bob keeps the group (without an
    // admin); when Bob goes too, the group is gone, also after a loss.
    assert!(groups.remove_member(G, ALICE).await.unwrap());
    assert!(!groups.remove_member(G, ALICE).await.unwrap());
    let left = groups.get(G).await.unwrap().unwrap();
    assert_eq!(left.members, [BOB]);
    assert!(left.admins.is_empty());
    assert!(groups.groups_of(ALICE).await.unwrap().is_empty());
    assert!(groups.remove_member(G, BOB).await.unwrap());
    assert_eq!(groups.get(G).await.unwrap(), None);
    w.flush().await;
    assert_eq!(groups.get(G).await.unwrap(), None);
    assert_eq!(w.member_check(G, BOB).await, MemberCheck::NotMember);
    assert!(groups.groups_of(BOB).await.unwrap().is_empty());
}

/// Sorted, for comparing member lists.
trait TapSorted {
    fn tap_sorted(self) -> Vec<String>;
}

impl<const N: usize> TapSorted for [String; N] {
    fn tap_sorted(self) -> Vec<String> {
        let mut v = self.to_vec();
        v.sort();
        v
    }
}

#[tokio::test]
async fn a_send_refreshes_the_lifetime_only_when_a_day_of_it_has_passed() {
    let w = world().await;
    let groups = GroupStore::new(w.records.clone());
    groups
        .create(G, ALICE, &[BOB.to_owned()], "")
        .await
        .unwrap();
    let ttl_max = i64::try_from(GROUP_TTL_SECS).unwrap();
    let young = ttl_max - i64::try_from(TOUCH_EVERY_SECS).unwrap() + 100;
    let _: () = redis::cmd("EXPIRE")
        .arg(keys::group(G))
        .arg(young)
        .query_async(&mut w.c.clone())
        .await
        .unwrap();
    assert_eq!(w.member_check(G, BOB).await, MemberCheck::Member);
    let _: () = redis::cmd("EXPIRE")
        .arg(keys::group(G))
        .arg(young - 200)
        .query_async(&mut w.c.clone())
        .await
        .unwrap();
    assert_eq!(w.member_check(G, BOB).await, MemberCheck::MemberTouchDue);
    // The touch re-writes the record (a new sequence, so a new age) and
    // caches it for the whole lifetime again.
    let before = w.record_seq(G).await;
    groups.touch(G).await.unwrap();
    assert!(w.record_seq(G).await > before);
    assert!(w.ttl(&keys::group(G)).await > ttl_max - 5);
    assert_eq!(w.member_check(G, BOB).await, MemberCheck::Member);
    // A non-member neither passes nor refreshes anything; an unknown group
    // is not cached, and loading it finds nothing.
    assert_eq!(w.member_check(G, CAROL).await, MemberCheck::NotMember);
    assert_eq!(w.member_check(OTHER, BOB).await, MemberCheck::NotCached);
    assert!(!groups.is_member(OTHER, BOB).await.unwrap());
}

#[tokio::test]
async fn a_deleted_group_is_gone_and_others_stay() {
    let w = world().await;
    let groups = GroupStore::new(w.records.clone());
    groups
        .create(G, ALICE, &[BOB.to_owned()], "Gone")
        .await
        .unwrap();
    groups
        .create(OTHER, ALICE, &[BOB.to_owned()], "")
        .await
        .unwrap();
    groups.delete(G).await.unwrap();
    groups.delete(G).await.unwrap();
    assert_eq!(groups.get(G).await.unwrap(), None);
    w.flush().await;
    assert_eq!(groups.get(G).await.unwrap(), None);
    for who in [ALICE, BOB] {
        assert_eq!(groups.groups_of(who).await.unwrap(), [OTHER]);
    }
}

#[tokio::test]
async fn groups_an_earlier_version_kept_in_redis_move_into_the_stream() {
    let w = world().await;
    let mut c = w.c.clone();
    // What an earlier version wrote: two sets, a name, per-user indexes.
    let _: () = redis::pipe()
        .cmd("SADD")
        .arg(keys::legacy_group_members(G))
        .arg(ALICE)
        .arg(BOB)
        .cmd("SADD")
        .arg(keys::legacy_group_admins(G))
        .arg(ALICE)
        .cmd("SET")
        .arg(keys::legacy_group_name(G))
        .arg("Old")
        .cmd("SADD")
        .arg(keys::legacy_user_groups(ALICE))
        .arg(G)
        .cmd("SADD")
        .arg(keys::legacy_group_members(OTHER))
        .arg(BOB)
        .cmd("SADD")
        .arg(keys::legacy_group_admins(OTHER))
        .arg(BOB)
        .query_async(&mut c)
        .await
        .unwrap();
    let groups = GroupStore::new(w.records.clone());
    // Read once: moved lazily.
    assert_eq!(groups.get(G).await.unwrap().unwrap().name, "Old");
    // The migration moves the other one and drops the old keys.
    assert_eq!(w.records.migrate().await.unwrap(), Some(1));
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("interop:group*")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut left: Vec<&str> = left.iter().map(String::as_str).collect();
    left.sort_unstable();
    assert_eq!(
        left,
        [
            "interop:group:".to_owned() + G,
            "interop:group:".to_owned() + OTHER
        ]
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
    );
    w.flush().await;
    let g = groups.get(G).await.unwrap().unwrap();
    assert_eq!(
        (g.name.as_str(), g.admins.as_slice()),
        ("Old", [ALICE.to_owned()].as_slice())
    );
    assert_eq!(groups.get(OTHER).await.unwrap().unwrap().members, [BOB]);
}
