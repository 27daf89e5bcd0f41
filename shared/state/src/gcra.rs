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

/// The checks of many senders of one provider in one call (a provider
/// session's transaction, docs/protocol.md "Provider sessions"): for each
/// sender key in order, exactly what [`SCRIPT`] does for it alone, with
/// every check seeing the buckets as the checks before it left them. The
/// buckets are read once and written once each, at the end.
const BATCH_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local intervals = {tonumber(ARGV[1]), tonumber(ARGV[3])}
local bursts = {tonumber(ARGV[2]), tonumber(ARGV[4])}
local tats = {}
local changed = {}
local function tat_of(key)
  local tat = tats[key]
  if tat == nil then
    tat = tonumber(redis.call('GET', key) or now)
    if tat < now then tat = now end
    tats[key] = tat
  end
  return tat
end
local out = {}
for k = 2, #KEYS do
  local keys = {KEYS[1], KEYS[k]}
  local new_tat = {}
  local retry = 0
  local by = 0
  for i = 1, 2 do
    local next_tat = tat_of(keys[i]) + intervals[i]
    local over = next_tat - now - intervals[i] * bursts[i]
    if over > 0 and over > retry then
      retry = over
      by = i
    end
    new_tat[i] = next_tat
  end
  if by > 0 then
    out[k - 1] = {0, math.ceil(retry), by}
  else
    for i = 1, 2 do
      tats[keys[i]] = new_tat[i]
      changed[keys[i]] = true
    end
    out[k - 1] = {1, 0, 0}
  end
end
for key, _ in pairs(changed) do
  redis.call('SET', key, string.format('%.3f', tats[key]), 'PX', math.ceil(tats[key] - now) + 1000)
end
return out
";

/// The batch script, loaded once per process.
pub static GCRA_BATCH: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(BATCH_SCRIPT));

/// Adds the checks of `senders` (in order; a sender may repeat) against
/// `provider`'s bucket and each sender's to a pipeline, as one script call.
/// Its reply is one `(i64, i64, i64)` per sender, in order, each read with
/// [`decision`]: the same decisions as one [`add_check`] per sender made
/// one after another. The script must be loaded (see [`load_batch`]); a
/// pipeline answers `NOSCRIPT` after a Redis restart, and the caller loads
/// and retries.
pub fn add_checks(
    pipe: &mut redis::Pipeline,
    provider: &str,
    senders: &[&str],
    p: RateLimit,
    s: RateLimit,
) {
    let mut invocation = GCRA_BATCH.key(keys::gcra_provider(provider));
    for sender in senders {
        invocation.key(keys::gcra_sender(sender));
    }
    invocation
        .arg(format!("{:.3}", p.interval_ms()))
        .arg(p.burst)
        .arg(format!("{:.3}", s.interval_ms()))
        .arg(s.burst);
    pipe.invoke_script(&invocation);
}

/// Loads the batch script ([`add_checks`]) into Redis' script cache.
pub async fn load_batch(conn: &mut redis::aio::ConnectionManager) -> Result<(), crate::StateError> {
    let _sha: String = redis::pipe()
        .load_script(&GCRA_BATCH)
        .query_async(conn)
        .await
        .map(|(s,): (String,)| s)?;
    Ok(())
}
