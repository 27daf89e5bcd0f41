//! Erasing one user's Redis state (the Redis half of `interop erase-user`;
//! the JetStream half is `interop-erasure`). See docs/adr/0013.
//!
//! What goes, for address `A`:
//! - their group memberships (found by a pass over the groups stream; they
//!   are removed from each group, `crate::group`);
//! - keys named after them: `interop:consent:<A>`, `interop:contacts:<A>`
//!   (their own answers about others), `interop:spam:rep:sender:<A>`,
//!   `interop:gcra:sender:<A>`, and by `SCAN`: `interop:idem:<A>:*`,
//!   `interop:rate:sender:<A>:*`, `interop:spam:recipients:<A>:*`,
//!   `interop:spam:strangers:<A>:*`, and the feedback keys
//!   `interop:spam:fed:<kind>:<A>:<other>` and `...:<other>:<A>`;
//! - other users' *accepted* and *declined* answers about `A` (fields `A`
//!   in `interop:contacts:<other>`, found by `SCAN`);
//! - `A`'s own key-watcher set (`interop:keys:watchers:<A>`: who fetched
//!   `A`'s keys) and `A` in everyone else's (found by `SCAN`).
//!
//! What stays: other users' **blocks** of `A` (field `A` = `b` in their
//! contact record). A block is the blocker's protection and their data: if
//! `A`'s provider registers the same address again, the blocker must stay
//! protected. It expires with the blocker's record (400 days after its last
//! change) or when they unblock. Also left: the provider's aggregate
//! reputation (`interop:spam:rep:provider:<id>`: counts, no address) and
//! the hourly payload sketches (`interop:spam:payload:*`: HyperLogLogs keep
//! no member, and expire within 2 hours).
//!
//! Cost: the `SCAN`s walk the whole keyspace (`COUNT 1000` a step); the
//! contact records are read 1000 at a time in one pipeline each.

use interop_proto::Address;

use crate::group::GroupStore;
use crate::{contacts, keys, Records, StateError};

/// What was removed from Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisErasure {
    /// Keys deleted (whole keys named after the user).
    pub keys: u64,
    /// Groups the user was removed from.
    pub groups: u64,
    /// Other users' accepted/declined answers about the user, removed.
    pub contact_entries: u64,
    /// Other users' blocks of the user, kept (see the module doc).
    pub blocks_kept: u64,
    /// Other users' key-watcher sets the user was removed from.
    pub key_watches: u64,
}

/// Escapes a string for a `SCAN MATCH` glob.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Every key matching `pattern` (a `SCAN` walk).
pub async fn scan(
    redis: &redis::aio::ConnectionManager,
    pattern: &str,
) -> Result<Vec<String>, StateError> {
    let mut conn = redis.clone();
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// Whether a feedback key's `<recipient>:<sender>` part names `address` as
/// either side (the other side must be an address too: user parts may
/// contain `:`).
fn feedback_names(pair: &str, address: &str) -> bool {
    let other_ok = |o: &str| Address::parse(o).is_ok();
    pair.strip_prefix(address)
        .and_then(|r| r.strip_prefix(':'))
        .is_some_and(other_ok)
        || pair
            .strip_suffix(address)
            .and_then(|r| r.strip_suffix(':'))
            .is_some_and(other_ok)
}

/// The keys named after `address` alone, deleted whole.
fn named_keys(address: &str) -> [String; 7] {
    [
        keys::key_watchers(address),
        keys::legacy_user_groups(address),
        keys::consent(address),
        keys::contacts(address),
        keys::reputation_sender(address),
        keys::gcra_sender(address),
        keys::gcra_key_fetch_user(address),
    ]
}

/// `SCAN` patterns of the keys named after `address` plus a suffix (client
/// message id, minute, hour), deleted whole.
fn scan_patterns(address: &str) -> [String; 4] {
    [
        keys::idem_prefix(address),
        keys::rate_prefix(keys::SENDER_RATE_SCOPE, address),
        keys::spam_recipients_prefix(address),
        keys::spam_strangers_prefix(address),
    ]
    .map(|prefix| format!("{}*", glob_escape(&prefix)))
}

/// A `SCAN` pattern that finds every feedback key naming `address`, and
/// some more ([`is_feedback_about`] picks).
fn feedback_pattern(address: &str) -> String {
    format!(
        "{}*{}*",
        glob_escape(keys::FEEDBACK_PREFIX),
        glob_escape(address)
    )
}

/// Whether `key` is a feedback key with `address` as recipient or sender.
fn is_feedback_about(key: &str, address: &str) -> bool {
    key.strip_prefix(keys::FEEDBACK_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(_kind, pair)| feedback_names(pair, address))
}

/// Erases `address`'s Redis state (see the module doc). Idempotent: a
/// second run finds nothing and returns zeros (blocks are counted again).
pub async fn erase_user(records: &Records, address: &str) -> Result<RedisErasure, StateError> {
    let mut out = RedisErasure::default();
    let redis = records.redis();
    let mut conn = redis.clone();

    // Their group memberships (in the groups stream and its cache).
    let groups = GroupStore::new(records.clone());
    for group in groups.groups_of(address).await? {
        if groups.remove_member(&group, address).await? {
            out.groups += 1;
        }
    }

    let mut doomed = named_keys(address).to_vec();
    for pattern in scan_patterns(address) {
        doomed.extend(scan(redis, &pattern).await?);
    }
    for key in scan(redis, &feedback_pattern(address)).await? {
        if is_feedback_about(&key, address) {
            doomed.push(key);
        }
    }
    for chunk in doomed.chunks(500) {
        let n: u64 = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await?;
        out.keys += n;
    }

    // The user in other users' key-watcher sets.
    let watched = scan(redis, &format!("{}*", keys::KEY_WATCHERS_PREFIX)).await?;
    for chunk in watched.chunks(1000) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("ZREM").arg(k).arg(address);
        }
        let removed: Vec<u64> = pipe.query_async(&mut conn).await?;
        out.key_watches += removed.iter().sum::<u64>();
    }

    // Other users' answers about the user.
    let records = scan(redis, &format!("{}*", keys::CONTACTS_PREFIX)).await?;
    for chunk in records.chunks(1000) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("HGET").arg(k).arg(address);
        }
        let answers: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
        let mut del = redis::pipe();
        let mut any = false;
        for (k, v) in chunk.iter().zip(answers) {
            match v.as_deref().and_then(contacts::ContactState::from_field) {
                Some(contacts::ContactState::Blocked) => out.blocks_kept += 1,
                Some(_) => {
                    del.cmd("HDEL").arg(k).arg(address);
                    any = true;
                }
                None => {}
            }
        }
        if any {
            let removed: Vec<u64> = del.query_async(&mut conn).await?;
            out.contact_entries += removed.iter().sum::<u64>();
        }
    }
    Ok(out)
}

/// Deletes other users' idempotency keys (`interop:idem:<sender>:<client
/// id>`) whose server message id is one of `message_ids` (messages to an
/// erased user): the key links the sender's request to that message. A
/// re-send of it by the sender within the 24 h window would get a new id
/// (and be refused: the recipient is gone). Returns how many went.
pub async fn forget_message_ids(
    redis: &redis::aio::ConnectionManager,
    message_ids: &std::collections::BTreeSet<String>,
) -> Result<u64, StateError> {
    if message_ids.is_empty() {
        return Ok(0);
    }
    let mut conn = redis.clone();
    let mut n = 0;
    let pattern = format!("{}*", keys::IDEM_PREFIX);
    for chunk in scan(redis, &pattern).await?.chunks(1000) {
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(chunk).query_async(&mut conn).await?;
        let doomed: Vec<&String> = chunk
            .iter()
            .zip(values)
            .filter(|(_, v)| v.as_ref().is_some_and(|v| message_ids.contains(v)))
            .map(|(k, _)| k)
            .collect();
        if !doomed.is_empty() {
            let d: u64 = redis::cmd("DEL").arg(doomed).query_async(&mut conn).await?;
            n += d;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(
            glob_escape("signal:a*b?[c]\\"),
            "signal:a\\*b\\?\\[c\\]\\\\"
        );
        assert_eq!(glob_escape("home:+4915112345678"), "home:+4915112345678");
    }

    #[test]
    fn feedback_keys_name_the_user_on_either_side_only() {
        let a = "signal:al:ice";
        assert!(feedback_names("signal:al:ice:home:+4915112345678", a));
        assert!(feedback_names("home:+4915112345678:signal:al:ice", a));
        assert!(!feedback_names("signal:al:ice2:home:+4915112345678", a));
        assert!(!feedback_names("home:+4915112345678:xsignal:al:ice", a));
        assert!(!feedback_names("signal:al:ice", a));
    }

    /// Redis's `SCAN MATCH` glob, as far as the erasure uses it: `*`, `?`
    /// and `\` escapes. An unescaped `[` (a character class in Redis) is
    /// a failure: the erasure must escape every one.
    fn glob_matches(pattern: &[u8], key: &[u8]) -> bool {
        match (pattern.first(), key.first()) {
            (None, _) => key.is_empty(),
            (Some(b'[' | b']'), _) => panic!("unescaped character class in a pattern"),
            (Some(b'*'), _) => {
                glob_matches(&pattern[1..], key)
                    || (!key.is_empty() && glob_matches(pattern, &key[1..]))
            }
            (Some(b'\\'), Some(k)) if pattern.get(1) == Some(k) => {
                glob_matches(&pattern[2..], &key[1..])
            }
            (Some(b'?'), Some(_)) => glob_matches(&pattern[1..], &key[1..]),
            (Some(p), Some(k)) if p == k && *p != b'\\' => glob_matches(&pattern[1..], &key[1..]),
            _ => false,
        }
    }

    fn found(address: &str, key: &str) -> bool {
        named_keys(address).contains(&key.to_owned())
            || scan_patterns(address)
                .iter()
                .any(|p| glob_matches(p.as_bytes(), key.as_bytes()))
            || (glob_matches(feedback_pattern(address).as_bytes(), key.as_bytes())
                && is_feedback_about(key, address))
    }

    /// Every key the builders make for a user, and that the erasure must find.
    fn keys_of(a: &str) -> Vec<String> {
        vec![
            keys::legacy_user_groups(a),
            keys::consent(a),
            keys::contacts(a),
            keys::reputation_sender(a),
            keys::gcra_sender(a),
            keys::gcra_key_fetch_user(a),
            keys::idem(a, "client-1"),
            keys::sender_rate(a, 29_000_000),
            keys::spam_recipients(a, 480_000),
            keys::spam_strangers(a, 480_000),
            keys::feedback("block", a, "home:+4915112345678"),
            keys::feedback("report", "home:+4915112345678", a),
        ]
    }

    #[test]
    fn glob_matcher_follows_redis() {
        assert!(glob_matches(b"a*c", b"abbc"));
        assert!(glob_matches(b"a\\*c", b"a*c"));
        assert!(!glob_matches(b"a\\*c", b"abc"));
        assert!(glob_matches(b"a?c", b"abc"));
        assert!(!glob_matches(b"a?c", b"ac"));
    }

    #[test]
    fn the_erasures_patterns_find_every_key_the_builders_make_for_the_user_only() {
        // Glob characters in the address must not widen the patterns.
        let user = "signal:a*b?[c]";
        for key in keys_of(user) {
            assert!(found(user, &key), "{key} is not found for {user}");
        }
        for other in ["signal:aXb?[c]", "signal:a*b?[c]x", "home:+4915112345678"] {
            for key in keys_of(other) {
                assert!(!found(user, &key), "{key} of {other} is found for {user}");
            }
        }
        // What stays (module doc): the provider's reputation, payload sketches.
        for key in [
            keys::reputation_provider("signal"),
            keys::spam_payload("ab", 480_000),
        ] {
            assert!(!found(user, &key), "{key} is found for {user}");
        }
    }
}
