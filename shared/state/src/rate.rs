//! Fixed-window counters: how many events an id had in the current window.

use redis::aio::ConnectionManager;

use crate::StateError;

/// Counts events per id in windows of `window_secs`.
#[derive(Clone)]
pub struct RateCounter {
    redis: ConnectionManager,
    scope: &'static str,
    window_secs: u64,
}

impl RateCounter {
    pub fn new(redis: ConnectionManager, scope: &'static str, window_secs: u64) -> Self {
        Self {
            redis,
            scope,
            window_secs: window_secs.max(1),
        }
    }

    /// Records one event for `id` and returns the count in the current
    /// window, this one included. One round trip (INCR and EXPIRE pipelined).
    pub async fn hit(&self, id: &str) -> Result<u64, StateError> {
        let now_secs = u64::try_from(interop_proto::now_ms() / 1000).unwrap_or(0);
        let window = now_secs / self.window_secs;
        let key = crate::keys::rate(self.scope, id, window);
        let mut conn = self.redis.clone();
        let (count,): (u64,) = redis::pipe()
            .incr(&key, 1)
            .expire(
                &key,
                i64::try_from(self.window_secs * 2).unwrap_or(i64::MAX),
            )
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(count)
    }
}
