//! Who fetched a user's keys: the users an app set up (or may set up) an
//! end-to-end-encrypted session with, told when that user's devices or
//! identity keys change (the key directory's `KeyNotice`, docs/adr/0026).
//!
//! Key: `interop:keys:watchers:<owner>`, a sorted set: member = the
//! requesting user's address, score = the time of their last fetch (Unix
//! ms). The newest [`MAX_KEY_WATCHERS`] are kept; the key expires
//! [`KEY_WATCHERS_TTL_SECS`] after the last fetch. Losing it (a Redis
//! without persistence restarting) loses notices, never a key: apps also
//! see a changed identity key when they next fetch a bundle or decrypt a
//! pre-key message.

use crate::{keys, StateError};

/// Most watchers one user's set keeps (the most recent fetchers).
pub const MAX_KEY_WATCHERS: usize = 1_000;

/// A watcher set expires this long after the last fetch (400 days, like a
/// contact record).
pub const KEY_WATCHERS_TTL_SECS: u64 = 400 * 24 * 3600;

/// Records that `requester` fetched `owner`'s keys at `now_ms`.
pub async fn record(
    redis: &redis::aio::ConnectionManager,
    owner: &str,
    requester: &str,
    now_ms: i64,
) -> Result<(), StateError> {
    let key = keys::key_watchers(owner);
    let mut conn = redis.clone();
    redis::pipe()
        .cmd("ZADD")
        .arg(&key)
        .arg(now_ms)
        .arg(requester)
        .ignore()
        // Ranks are lowest score first: drop all but the newest.
        .cmd("ZREMRANGEBYRANK")
        .arg(&key)
        .arg(0)
        .arg(-(MAX_KEY_WATCHERS as i64) - 1)
        .ignore()
        .cmd("EXPIRE")
        .arg(&key)
        .arg(KEY_WATCHERS_TTL_SECS)
        .ignore()
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}

/// Everyone who fetched `owner`'s keys (at most [`MAX_KEY_WATCHERS`]).
pub async fn list(
    redis: &redis::aio::ConnectionManager,
    owner: &str,
) -> Result<Vec<String>, StateError> {
    let mut conn = redis.clone();
    Ok(redis::cmd("ZRANGE")
        .arg(keys::key_watchers(owner))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await?)
}
