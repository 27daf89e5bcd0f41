//! Who may download which media: Redis sets
//! `interop:media:grant:<media id>` of recipient keys (the 32-hex-digit key
//! of an address, see `interop_bus::recipient_key`), expiring with the
//! media's retention.
//!
//! Redis holds only rebuildable state (docs/adr/0001): a lost grant means
//! the recipient can no longer download (fails closed); the media itself is
//! in JetStream.

use std::time::Duration;

use redis::aio::ConnectionManager;

/// Redis grants.
#[derive(Clone)]
pub struct Grants {
    redis: ConnectionManager,
    ttl_secs: i64,
}

fn key(media_id: &str) -> String {
    format!("interop:media:grant:{media_id}")
}

impl Grants {
    pub fn new(redis: ConnectionManager, ttl: Duration) -> Self {
        Self {
            redis,
            ttl_secs: i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX),
        }
    }

    /// Lets `recipient` (an address) download each of `media_ids`.
    /// Idempotent.
    pub async fn grant(&self, media_ids: &[&str], recipient: &str) -> redis::RedisResult<()> {
        let member = interop_bus::recipient_key(recipient);
        let mut pipe = redis::pipe();
        for id in media_ids {
            pipe.sadd(key(id), &member).ignore();
            pipe.expire(key(id), self.ttl_secs).ignore();
        }
        let mut conn = self.redis.clone();
        pipe.query_async::<()>(&mut conn).await
    }

    /// Whether `recipient` may download `media_id`.
    pub async fn allowed(&self, media_id: &str, recipient: &str) -> redis::RedisResult<bool> {
        let mut conn = self.redis.clone();
        redis::cmd("SISMEMBER")
            .arg(key(media_id))
            .arg(interop_bus::recipient_key(recipient))
            .query_async::<bool>(&mut conn)
            .await
    }
}
