//! Rate limits with GCRA (the generic cell rate algorithm) in one Lua
//! script on stock Redis 7, so every replica of ingest shares the same
//! buckets. The script checks two limits at once (provider and sender) and
//! consumes from both only when both allow, using Redis' own clock.
//!
//! Each key holds the "theoretical arrival time" (TAT, ms) of the next
//! message; a message is allowed when it would not push the TAT further than
//! `burst` intervals ahead of now.

use std::sync::LazyLock;

use crate::keys;

/// A limit: a sustained rate and how many messages may come at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

impl RateLimit {
    /// Milliseconds between messages at the sustained rate.
    pub fn interval_ms(&self) -> f64 {
        1000.0 / self.per_second.max(0.001)
    }
}

/// The result of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Refused by the first (`provider`) or second (`sender`) limit; retry
    /// after this many milliseconds.
    Limited {
        by: LimitedBy,
        retry_after_ms: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitedBy {
    Provider,
    Sender,
}

const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local new_tat = {}
local retry = 0
local by = 0
for i = 1, 2 do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local next_tat = tat + interval
  local over = next_tat - now - interval * burst
  if over > 0 and over > retry then
    retry = over
    by = i
  end
  new_tat[i] = next_tat
end
if by > 0 then
  return {0, math.ceil(retry), by}
end
for i = 1, 2 do
  redis.call('SET', KEYS[i], string.format('%.3f', new_tat[i]), 'PX', math.ceil(new_tat[i] - now) + 1000)
end
return {1, 0, 0}
";

/// The script, loaded once per process.
pub static GCRA: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SCRIPT));

/// Adds the check to a pipeline. The script must be loaded (see
/// [`load`]); a pipeline answers `NOSCRIPT` after a Redis restart, and the
/// caller loads and retries.
pub fn add_check(
    pipe: &mut redis::Pipeline,
    provider: &str,
    sender: &str,
    p: RateLimit,
    s: RateLimit,
) {
    pipe.invoke_script(
        GCRA.key(keys::gcra_provider(provider))
            .key(keys::gcra_sender(sender))
            .arg(format!("{:.3}", p.interval_ms()))
            .arg(p.burst)
            .arg(format!("{:.3}", s.interval_ms()))
            .arg(s.burst),
    );
}

/// Reads the script's answer.
pub fn decision(reply: (i64, i64, i64)) -> Decision {
    match reply {
        (1, _, _) => Decision::Allowed,
        (_, retry, by) => Decision::Limited {
            by: if by == 1 {
                LimitedBy::Provider
            } else {
                LimitedBy::Sender
            },
            retry_after_ms: u32::try_from(retry.max(1)).unwrap_or(u32::MAX),
        },
    }
}

/// Loads the script into Redis' script cache.
pub async fn load(conn: &mut redis::aio::ConnectionManager) -> Result<(), crate::StateError> {
    let _sha: String = redis::pipe()
        .load_script(&GCRA)
        .query_async(conn)
        .await
        .map(|(s,): (String,)| s)?;
    Ok(())
}

/// Whether an error means the script cache was empty.
pub fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}
