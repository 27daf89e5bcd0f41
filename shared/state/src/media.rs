//! Who may download which media, and which media a user sent.
//!
//! Keys (both sets expire with the media's retention, refreshed on each
//! write; written by media-transcoding's media stage):
//! - `interop:media:grant:<media id>` — recipient keys (the 32-hex-digit
//!   key of an address, `interop_bus::recipient_key`) allowed to download
//!   the media;
//! - `interop:media:sent:<sender key>` — the media ids of messages the user
//!   sent (the upload and what was made of it), so that erasing the user
//!   finds them (uploads are a provider's, not a user's, until a message
//!   names them).
//!
//! Redis holds only rebuildable state (docs/adr/0001): a lost grant means
//! the recipient can no longer download (fails closed); a lost index entry
//! means an erasure cannot find that upload, which then ages out with the
//! bucket's retention.

use crate::{keys, StateError};

/// Adds the grants of `recipient_key` to `media_ids` and records them as
/// sent by `sender_key` (with `source_id`, the upload), all expiring after
/// `ttl_secs`. One round trip. Idempotent.
pub async fn grant(
    redis: &redis::aio::ConnectionManager,
    media_ids: &[&str],
    recipient_key: &str,
    sender_key: Option<&str>,
    source_id: Option<&str>,
    ttl_secs: i64,
) -> Result<(), StateError> {
    let mut pipe = redis::pipe();
    for id in media_ids {
        pipe.sadd(keys::media_grant(id), recipient_key).ignore();
        pipe.expire(keys::media_grant(id), ttl_secs).ignore();
    }
    if let Some(sender) = sender_key {
        let sent = keys::media_sent(sender);
        let all: Vec<&str> = media_ids.iter().copied().chain(source_id).collect();
        if !all.is_empty() {
            pipe.sadd(&sent, all).ignore();
            pipe.expire(&sent, ttl_secs).ignore();
        }
    }
    let mut conn = redis.clone();
    pipe.query_async::<()>(&mut conn).await?;
    Ok(())
}

/// Whether `recipient_key` may download `media_id`.
pub async fn allowed(
    redis: &redis::aio::ConnectionManager,
    media_id: &str,
    recipient_key: &str,
) -> Result<bool, StateError> {
    let mut conn = redis.clone();
    Ok(redis::cmd("SISMEMBER")
        .arg(keys::media_grant(media_id))
        .arg(recipient_key)
        .query_async::<bool>(&mut conn)
        .await?)
}

/// Removes `recipient_keys` from the grant of `media_id`; returns how many
/// were removed and how many recipients keep a grant (0: nobody may
/// download it any more, the key is gone).
pub async fn revoke(
    redis: &redis::aio::ConnectionManager,
    media_id: &str,
    recipient_keys: &[&str],
) -> Result<(u64, u64), StateError> {
    let mut conn = redis.clone();
    if recipient_keys.is_empty() {
        let left: u64 = redis::cmd("SCARD")
            .arg(keys::media_grant(media_id))
            .query_async(&mut conn)
            .await?;
        return Ok((0, left));
    }
    let (removed, left): (u64, u64) = redis::pipe()
        .srem(keys::media_grant(media_id), recipient_keys)
        .scard(keys::media_grant(media_id))
        .query_async(&mut conn)
        .await?;
    Ok((removed, left))
}
