//! Who may download which media, and which media each sender sent: the
//! Redis sets of `interop_state::media` (`interop:media:grant:<media id>`,
//! `interop:media:sent:<sender key>`), expiring with the media's retention.
//!
//! Redis holds only rebuildable state (docs/adr/0001): a lost grant means
//! the recipient can no longer download (fails closed); the media itself is
//! in JetStream.

use std::time::Duration;

use redis::aio::ConnectionManager;

use interop_state::media;

/// Redis grants.
#[derive(Clone)]
pub struct Grants {
    redis: ConnectionManager,
    ttl_secs: i64,
}

impl Grants {
    pub fn new(redis: ConnectionManager, ttl: Duration) -> Self {
        Self {
            redis,
            ttl_secs: i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX),
        }
    }

    /// Lets `recipient` (an address) download each of `media_ids`, and
    /// records them (with the upload `source_id`) as sent by `sender` (an
    /// address), so that erasing the sender finds them. Idempotent.
    pub async fn grant(
        &self,
        media_ids: &[&str],
        recipient: &str,
        sender: &str,
        source_id: &str,
    ) -> Result<(), interop_state::StateError> {
        let sender_key = (!sender.is_empty()).then(|| interop_bus::recipient_key(sender));
        media::grant(
            &self.redis,
            media_ids,
            &interop_bus::recipient_key(recipient),
            sender_key.as_deref(),
            (!source_id.is_empty()).then_some(source_id),
            self.ttl_secs,
        )
        .await
    }

    /// Whether `recipient` may download `media_id`.
    pub async fn allowed(
        &self,
        media_id: &str,
        recipient: &str,
    ) -> Result<bool, interop_state::StateError> {
        media::allowed(
            &self.redis,
            media_id,
            &interop_bus::recipient_key(recipient),
        )
        .await
    }
}
