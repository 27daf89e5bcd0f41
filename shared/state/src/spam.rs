//! The counters spam-scoring keeps per message, in one Lua script (one round
//! trip), shared by every replica.
//!
//! Keys (every one with a TTL, set when the script changes the key: a
//! counter when it is made, a HyperLogLog when a recipient is new to it,
//! the provider's reputation hash once a day; not on every message, since
//! each call into Redis from Lua costs several µs: docs/benchmarks.md):
//! - `interop:rate:sender:<from>:<minute>` — messages this minute (2 min);
//! - `interop:spam:recipients:<from>:<hour>` — HyperLogLog of distinct
//!   recipients this hour (2 h);
//! - `interop:spam:strangers:<from>:<hour>` — HyperLogLog of distinct
//!   recipients who have not accepted the sender (2 h);
//! - `interop:spam:payload:<hash>:<hour>` — HyperLogLog of distinct
//!   recipients of one payload (any sender) this hour (2 h);
//! - reads `interop:contacts:<to>` and the reputation hashes
//!   (`crate::reputation`), and counts the message in the provider's
//!   reputation hash (`msgs:<day>`, pruned to the window).

use std::sync::LazyLock;

use crate::{keys, reputation, StateError};

static OBSERVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local from, to = ARGV[1], ARGV[2]
local today, oldest = tonumber(ARGV[3]), tonumber(ARGV[4])
local rate = redis.call('INCR', KEYS[1])
if rate == 1 then redis.call('EXPIRE', KEYS[1], 120) end
local c = redis.call('HGET', KEYS[2], from)
local stranger = 1
if c and string.sub(c, 1, 1) == 'a' then stranger = 0 end
if redis.call('PFADD', KEYS[4], to) == 1 then redis.call('EXPIRE', KEYS[4], 7200) end
local recipients = redis.call('PFCOUNT', KEYS[4])
if stranger == 1 then
  if redis.call('PFADD', KEYS[3], to) == 1 then redis.call('EXPIRE', KEYS[3], 7200) end
end
local strangers = redis.call('PFCOUNT', KEYS[3])
local payload = 0
if ARGV[5] == '1' then
  if redis.call('PFADD', KEYS[5], to) == 1 then redis.call('EXPIRE', KEYS[5], 7200) end
  payload = redis.call('PFCOUNT', KEYS[5])
end
local field = 'msgs:' .. today
if redis.call('HINCRBY', KEYS[7], field, 1) == 1 then
  for _, f in ipairs(redis.call('HKEYS', KEYS[7])) do
    local day = tonumber(string.match(f, ':(%-?%d+)$'))
    if day == nil or day < oldest then redis.call('HDEL', KEYS[7], f) end
  end
  redis.call('EXPIRE', KEYS[7], ARGV[6])
end
return {rate, stranger, strangers, recipients, payload,
  redis.call('HGETALL', KEYS[6]), redis.call('HGETALL', KEYS[7])}
",
    )
});

/// One message, as spam-scoring's counters see it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    /// The sender's messages this minute, this one included.
    pub sent_this_minute: u64,
    /// The recipient has not accepted the sender (no answer, or declined or
    /// blocked).
    pub to_stranger: bool,
    /// Distinct strangers the sender wrote to this hour.
    pub strangers_this_hour: u64,
    /// Distinct recipients the sender wrote to this hour.
    pub recipients_this_hour: u64,
    /// Distinct recipients of this payload this hour (0 without a hash).
    pub payload_recipients_this_hour: u64,
    /// The raw reputation hash fields of the sender and of the provider.
    pub sender_reputation: Vec<(String, i64)>,
    pub provider_reputation: Vec<(String, i64)>,
}

/// Counts one message from `from` (a user of `provider`) to `to`, with the
/// payload's fingerprint if it has one, and returns the counters.
pub async fn observe(
    redis: &redis::aio::ConnectionManager,
    from: &str,
    provider: &str,
    to: &str,
    payload_hash: Option<&str>,
) -> Result<Observation, StateError> {
    let now_ms = interop_proto::now_ms();
    let minute = now_ms.div_euclid(60_000);
    let hour = now_ms.div_euclid(3_600_000);
    let today = reputation::today();
    let mut conn = redis.clone();
    type Reply = (
        u64,
        u8,
        u64,
        u64,
        u64,
        Vec<(String, i64)>,
        Vec<(String, i64)>,
    );
    let (rate, stranger, strangers, recipients, payload, srep, prep): Reply = OBSERVE
        .key(keys::sender_rate(from, minute))
        .key(keys::contacts(to))
        .key(keys::spam_strangers(from, hour))
        .key(keys::spam_recipients(from, hour))
        .key(keys::spam_payload(payload_hash.unwrap_or("-"), hour))
        .key(keys::reputation_sender(from))
        .key(keys::reputation_provider(provider))
        .arg(from)
        .arg(to)
        .arg(today)
        .arg(today - reputation::WINDOW_DAYS)
        .arg(if payload_hash.is_some() { "1" } else { "0" })
        .arg(reputation::TTL_SECS)
        .invoke_async(&mut conn)
        .await?;
    Ok(Observation {
        sent_this_minute: rate,
        to_stranger: stranger == 1,
        strangers_this_hour: strangers,
        recipients_this_hour: recipients,
        payload_recipients_this_hour: payload,
        sender_reputation: srep,
        provider_reputation: prep,
    })
}
