//! Groups against a real redis-server: every member's index follows the
//! membership, everything expires, a send refreshes the lifetime at most
//! once a day, a rename sets or clears the name, and an erasure removes a
//! member.

use interop_state::group::{
    add_member_check, Change, GroupStore, GROUP_TTL_SECS, TOUCH_EVERY_SECS,
};
use interop_state::keys;
use interop_test_support::RedisServer;

const ALICE: &str = "signal:alice";
const BOB: &str = "home:+4915112345678";
const CAROL: &str = "telegram:carol";

async fn ttl(c: &mut redis::aio::ConnectionManager, key: &str) -> i64 {
    redis::cmd("TTL").arg(key).query_async(c).await.unwrap()
}

/// How many of `keys` exist.
async fn existing(c: &mut redis::aio::ConnectionManager, keys: &[String]) -> i64 {
    redis::cmd("EXISTS").arg(keys).query_async(c).await.unwrap()
}

async fn member_check(c: &mut redis::aio::ConnectionManager, group: &str, who: &str) -> bool {
    let mut pipe = redis::pipe();
    add_member_check(&mut pipe, group, who);
    let (member,): (bool,) = pipe.query_async(c).await.unwrap();
    member
}

#[tokio::test]
async fn the_index_follows_membership_and_everything_expires() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = redis::aio::ConnectionManager::new(client).await.unwrap();
    let groups = GroupStore::new(c.clone());
    let g = "g-0123456789abcdef0123456789abcdef";
    let ttl_max = i64::try_from(GROUP_TTL_SECS).unwrap();

    groups
        .create(g, ALICE, &[BOB.to_owned(), CAROL.to_owned()], "Family")
        .await
        .unwrap();
    assert_eq!(groups.get(g).await.unwrap().unwrap().name, "Family");
    for who in [ALICE, BOB, CAROL] {
        assert_eq!(groups.groups_of(who).await.unwrap(), [g]);
        let t = ttl(&mut c, &keys::user_groups(who)).await;
        assert!(t > ttl_max - 5 && t <= ttl_max, "{who}: {t}");
    }
    for key in [
        keys::group_members(g),
        keys::group_admins(g),
        keys::group_name(g),
    ] {
        let t = ttl(&mut c, &key).await;
        assert!(t > ttl_max - 5 && t <= ttl_max, "{key}: {t}");
    }

    // Removing Carol takes the group out of her index; of the addresses a
    // change names to remove, only members count as removed.
    let remove = [CAROL.to_owned(), "signal:never-a-member".to_owned()];
    let changed = groups
        .change(
            g,
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
    assert_eq!(groups.get(g).await.unwrap().unwrap().name, "Family");

    // A rename sets the name, with the group's lifetime; an empty one
    // removes it; a change without a name keeps it.
    let rename = |name| Change {
        actor: ALICE,
        name: Some(name),
        ..Default::default()
    };
    groups
        .change(g, &rename("Ski trip"), 256)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(groups.get(g).await.unwrap().unwrap().name, "Ski trip");
    assert!(ttl(&mut c, &keys::group_name(g)).await > ttl_max - 5);
    let by_bob = Change {
        actor: BOB,
        name: Some("Bob's"),
        ..Default::default()
    };
    assert!(groups.change(g, &by_bob, 256).await.unwrap().is_err());
    assert_eq!(groups.get(g).await.unwrap().unwrap().name, "Ski trip");
    groups.change(g, &rename(""), 256).await.unwrap().unwrap();
    assert_eq!(groups.get(g).await.unwrap().unwrap().name, "");
    groups
        .change(g, &rename("Family"), 256)
        .await
        .unwrap()
        .unwrap();

    // A send refreshes the lifetime only when a day of it has passed.
    let young = ttl_max - i64::try_from(TOUCH_EVERY_SECS).unwrap() + 100;
    let _: () = redis::cmd("EXPIRE")
        .arg(keys::group_members(g))
        .arg(young)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(member_check(&mut c, g, BOB).await);
    assert_eq!(ttl(&mut c, &keys::group_members(g)).await, young);
    let old = young - 200;
    for key in [keys::group_members(g), keys::user_groups(BOB)] {
        let _: () = redis::cmd("EXPIRE")
            .arg(&key)
            .arg(old)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    assert!(member_check(&mut c, g, BOB).await);
    for key in [
        keys::group_members(g),
        keys::group_admins(g),
        keys::group_name(g),
        keys::user_groups(BOB),
    ] {
        assert!(ttl(&mut c, &key).await > ttl_max - 5, "{key}");
    }
    // A non-member neither passes nor refreshes anything.
    assert!(!member_check(&mut c, g, CAROL).await);
    assert!(!member_check(&mut c, "g-ffffffffffffffffffffffffffffffff", BOB).await);

    // Erasure: Alice, the only admin, goes; Bob keeps the group (without an
    // admin); when Bob goes too, the group is deleted.
    assert!(groups.remove_member(g, ALICE).await.unwrap());
    assert!(!groups.remove_member(g, ALICE).await.unwrap());
    let left = groups.get(g).await.unwrap().unwrap();
    assert_eq!(left.members, [BOB]);
    assert!(left.admins.is_empty());
    assert!(groups.groups_of(ALICE).await.unwrap().is_empty());
    assert!(groups.remove_member(g, BOB).await.unwrap());
    assert_eq!(groups.get(g).await.unwrap(), None);
    let keys = [
        keys::group_members(g),
        keys::group_admins(g),
        keys::group_name(g),
        keys::user_groups(BOB),
    ];
    assert_eq!(existing(&mut c, &keys).await, 0);
}

#[tokio::test]
async fn a_deleted_group_leaves_no_key_and_no_index_entry() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = redis::aio::ConnectionManager::new(client).await.unwrap();
    let groups = GroupStore::new(c.clone());
    let (g, other) = (
        "g-0123456789abcdef0123456789abcdef",
        "g-ffffffffffffffffffffffffffffffff",
    );
    groups
        .create(g, ALICE, &[BOB.to_owned()], "Gone")
        .await
        .unwrap();
    groups
        .create(other, ALICE, &[BOB.to_owned()], "")
        .await
        .unwrap();
    groups.delete(g).await.unwrap();
    assert_eq!(groups.get(g).await.unwrap(), None);
    let keys = [
        keys::group_members(g),
        keys::group_admins(g),
        keys::group_name(g),
    ];
    assert_eq!(existing(&mut c, &keys).await, 0);
    // Their other group stays in their indexes.
    for who in [ALICE, BOB] {
        assert_eq!(groups.groups_of(who).await.unwrap(), [other]);
    }
}
