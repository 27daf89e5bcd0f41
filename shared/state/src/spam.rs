//! The counters spam-scoring keeps per message, in one Lua script (one round
//! trip), shared by every replica: [`observe`] counts one message,
//! [`observe_batch`] all the messages of one score request in one script
//! call, with the same results as counting them one after another.
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

use std::collections::HashMap;
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

/// One message for [`observe_batch`]: what [`observe`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObservationInput<'a> {
    /// The sender's address.
    pub from: &'a str,
    /// The sender's provider.
    pub provider: &'a str,
    /// The recipient's address.
    pub to: &'a str,
    /// The payload's fingerprint, if it has one.
    pub payload_hash: Option<&'a str>,
}

/// The messages of one score request in one script call: for each message
/// in order, exactly what [`OBSERVE`] returns for it alone, every message
/// seeing the counters as the messages before it left them.
///
/// `KEYS` are the distinct keys of the batch; `ARGV` is today, the oldest
/// day kept, the reputation TTL, then [`BATCH_ARGS`] per message: from,
/// to, and the `KEYS` indices of its rate counter, the recipient's
/// contacts, its strangers, its recipients, its payload (0: none), the
/// sender's and the provider's reputation.
///
/// Each key is written or read once per batch where the messages' results
/// allow: one `INCRBY` per rate counter and one `HINCRBY` per provider
/// (message i's count is the count before the batch plus its place among
/// the batch's messages on that key), one `HMGET` per recipient's contacts
/// (the script writes no contacts), one `HGETALL` per reputation hash (the
/// provider's read after its increment; the caller puts each message's own
/// `msgs:<day>` count in its copy), a `PFADD` only for a recipient new to
/// that HyperLogLog in this batch and a `PFCOUNT` only when the HyperLogLog
/// changed since it was last counted (`PFADD` answers 0 when no register
/// changed, so the count is what it was), and one `EXPIRE` per key it
/// changed (the TTLs `OBSERVE` would set: time stands still in a script).
///
/// The keys of a batch lie in many hash slots: the gateway runs a single
/// Redis (standalone, or replicated with Sentinel; docs/deploy.md), not
/// Redis Cluster, where this call would need one slot per script call.
static OBSERVE_BATCH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local field = 'msgs:' .. ARGV[1]
local oldest = tonumber(ARGV[2])
local W = 9
local n = (#ARGV - 3) / W
local function arg(i, j) return ARGV[3 + (i - 1) * W + j] end
local function key(i, j) return tonumber(ARGV[3 + (i - 1) * W + j]) end
local rate_n, rate_keys, prov_n, prov_keys = {}, {}, {}, {}
local senders, contact_keys = {}, {}
for i = 1, n do
  local r, c, p = key(i, 3), key(i, 4), key(i, 9)
  if rate_n[r] == nil then rate_n[r] = 0; rate_keys[#rate_keys + 1] = r end
  rate_n[r] = rate_n[r] + 1
  if prov_n[p] == nil then prov_n[p] = 0; prov_keys[#prov_keys + 1] = p end
  prov_n[p] = prov_n[p] + 1
  local s = senders[c]
  if s == nil then s = {list = {}, seen = {}}; senders[c] = s; contact_keys[#contact_keys + 1] = c end
  local from = arg(i, 1)
  if not s.seen[from] then s.seen[from] = true; s.list[#s.list + 1] = from end
end
local rate = {}
for _, k in ipairs(rate_keys) do
  local v = redis.call('INCRBY', KEYS[k], rate_n[k])
  if v == rate_n[k] then redis.call('EXPIRE', KEYS[k], 120) end
  rate[k] = v - rate_n[k]
end
local msgs, prep, pslot = {}, {}, {}
for _, k in ipairs(prov_keys) do
  local v = redis.call('HINCRBY', KEYS[k], field, prov_n[k])
  if v == prov_n[k] then
    for _, f in ipairs(redis.call('HKEYS', KEYS[k])) do
      local day = tonumber(string.match(f, ':(%-?%d+)$'))
      if day == nil or day < oldest then redis.call('HDEL', KEYS[k], f) end
    end
    redis.call('EXPIRE', KEYS[k], ARGV[3])
  end
  msgs[k] = v - prov_n[k]
  prep[#prep + 1] = redis.call('HGETALL', KEYS[k])
  pslot[k] = #prep
end
local accepted = {}
for _, k in ipairs(contact_keys) do
  local list = senders[k].list
  local states = redis.call('HMGET', KEYS[k], unpack(list))
  local a = {}
  for j, from in ipairs(list) do
    local c = states[j]
    a[from] = c and string.sub(c, 1, 1) == 'a'
  end
  accepted[k] = a
end
local added, count, changed, changed_keys = {}, {}, {}, {}
local function pfadd(k, e)
  local a = added[k]
  if a == nil then a = {}; added[k] = a end
  if a[e] then return end
  a[e] = true
  if redis.call('PFADD', KEYS[k], e) == 1 then
    count[k] = nil
    if not changed[k] then changed[k] = true; changed_keys[#changed_keys + 1] = k end
  end
end
local function pfcount(k)
  if count[k] == nil then count[k] = redis.call('PFCOUNT', KEYS[k]) end
  return count[k]
end
local srep, sslot, out = {}, {}, {}
for i = 1, n do
  local from, to = arg(i, 1), arg(i, 2)
  local r, c, sk, rk, yk, ek, pk =
    key(i, 3), key(i, 4), key(i, 5), key(i, 6), key(i, 7), key(i, 8), key(i, 9)
  rate[r] = rate[r] + 1
  local stranger = 1
  if accepted[c][from] then stranger = 0 end
  pfadd(rk, to)
  local recipients = pfcount(rk)
  if stranger == 1 then pfadd(sk, to) end
  local strangers = pfcount(sk)
  local payload = 0
  if yk > 0 then
    pfadd(yk, to)
    payload = pfcount(yk)
  end
  msgs[pk] = msgs[pk] + 1
  if sslot[ek] == nil then
    srep[#srep + 1] = redis.call('HGETALL', KEYS[ek])
    sslot[ek] = #srep
  end
  local o = #out
  out[o + 1], out[o + 2], out[o + 3], out[o + 4] = rate[r], stranger, strangers, recipients
  out[o + 5], out[o + 6], out[o + 7], out[o + 8] = payload, sslot[ek], pslot[pk], msgs[pk]
end
for _, k in ipairs(changed_keys) do redis.call('EXPIRE', KEYS[k], 7200) end
return {out, srep, prep}
",
    )
});

/// Arguments per message of [`OBSERVE_BATCH`].
const BATCH_ARGS: usize = 9;

/// Numbers per message in [`OBSERVE_BATCH`]'s answer.
const BATCH_RESULTS: usize = 8;

/// The distinct keys of a batch, in order of first use, 1-based as Lua's
/// `KEYS`.
#[derive(Default)]
struct BatchKeys {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

impl BatchKeys {
    fn index(&mut self, key: String) -> usize {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        self.names.push(key.clone());
        self.index.insert(key, self.names.len());
        self.names.len()
    }
}

/// Counts every message of one score request in one script call (one round
/// trip) and returns their counters in order: for each message exactly
/// what [`observe`] returns when the messages are observed one after
/// another (message i's counters include messages 0..i of the batch; a
/// sender writing to three new recipients sees 1, 2 and 3 recipients),
/// except that the reputation hashes' fields may come in another order.
/// All messages are counted at one instant (one minute, hour and day). An
/// empty batch makes no call.
pub async fn observe_batch(
    redis: &redis::aio::ConnectionManager,
    messages: &[ObservationInput<'_>],
) -> Result<Vec<Observation>, StateError> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let now_ms = interop_proto::now_ms();
    let minute = now_ms.div_euclid(60_000);
    let hour = now_ms.div_euclid(3_600_000);
    let today = reputation::today();
    let mut keys = BatchKeys::default();
    let mut args: Vec<String> = Vec::with_capacity(3 + messages.len() * BATCH_ARGS);
    args.extend([
        today.to_string(),
        (today - reputation::WINDOW_DAYS).to_string(),
        reputation::TTL_SECS.to_string(),
    ]);
    for m in messages {
        let payload = m
            .payload_hash
            .map_or(0, |h| keys.index(keys::spam_payload(h, hour)));
        let indices = [
            keys.index(keys::sender_rate(m.from, minute)),
            keys.index(keys::contacts(m.to)),
            keys.index(keys::spam_strangers(m.from, hour)),
            keys.index(keys::spam_recipients(m.from, hour)),
            payload,
            keys.index(keys::reputation_sender(m.from)),
            keys.index(keys::reputation_provider(m.provider)),
        ];
        args.push(m.from.to_owned());
        args.push(m.to.to_owned());
        args.extend(indices.iter().map(usize::to_string));
    }
    let mut invocation = OBSERVE_BATCH.prepare_invoke();
    for k in &keys.names {
        invocation.key(k);
    }
    for a in &args {
        invocation.arg(a);
    }
    type Hash = Vec<(String, i64)>;
    let mut conn = redis.clone();
    let (numbers, sender_reps, provider_reps): (Vec<i64>, Vec<Hash>, Vec<Hash>) =
        invocation.invoke_async(&mut conn).await?;
    if numbers.len() != messages.len() * BATCH_RESULTS {
        return Err(malformed(format!(
            "{} numbers for {} messages",
            numbers.len(),
            messages.len()
        )));
    }
    let msgs_field = format!("msgs:{today}");
    let slot = |hashes: &[Hash], n: i64| -> Result<Hash, StateError> {
        usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| hashes.get(i))
            .cloned()
            .ok_or_else(|| malformed(format!("no reputation hash {n}")))
    };
    numbers
        .chunks_exact(BATCH_RESULTS)
        .map(|r| {
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            let mut provider_reputation = slot(&provider_reps, r[6])?;
            // The hash was read after the whole batch was counted; this
            // message saw its own count.
            for (f, n) in &mut provider_reputation {
                if *f == msgs_field {
                    *n = r[7];
                }
            }
            Ok(Observation {
                sent_this_minute: count(r[0]),
                to_stranger: r[1] == 1,
                strangers_this_hour: count(r[2]),
                recipients_this_hour: count(r[3]),
                payload_recipients_this_hour: count(r[4]),
                sender_reputation: slot(&sender_reps, r[5])?,
                provider_reputation,
            })
        })
        .collect()
}

fn malformed(detail: String) -> StateError {
    StateError::Redis(redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "a malformed answer from the spam counters' batch script",
        detail,
    )))
}
