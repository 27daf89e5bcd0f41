//! Sender and provider reputation from recipients' answers (reports, blocks,
//! declines), kept per day so that the reader can decay them with any
//! half-life.
//!
//! Keys (hashes, one field per kind and day, `<kind>:<day>`, day = Unix
//! days): `interop:spam:rep:sender:<address>` and
//! `interop:spam:rep:provider:<id>`. The provider hash also counts the
//! provider's messages (`msgs:<day>`, written by spam-scoring) so its
//! reputation is a rate. Fields older than [`WINDOW_DAYS`] are deleted on
//! every write; keys expire [`WINDOW_DAYS`] after the last write.

use std::sync::LazyLock;

use crate::{keys, StateError};

/// How many days of answers reputation remembers (28). A half-life of 7
/// days (the default) leaves older events at less than 7% of their weight.
pub const WINDOW_DAYS: i64 = 28;

/// Seconds a reputation key lives after its last write.
pub const TTL_SECS: i64 = WINDOW_DAYS * 24 * 3600;

/// The kinds of answer that feed reputation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    Report,
    Block,
    Decline,
}

impl Feedback {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Report => "report",
            Self::Block => "block",
            Self::Decline => "decline",
        }
    }
}

/// Today as Unix days.
pub fn today() -> i64 {
    interop_proto::now_ms().div_euclid(86_400_000)
}

/// The key that makes one recipient's feedback of one kind about one sender
/// count once per window, however often they block and unblock.
pub fn once_key(feedback: Feedback, recipient: &str, sender: &str) -> String {
    keys::feedback(feedback.as_str(), recipient, sender)
}

/// Unless `KEYS[1]` exists (this feedback counted already), sets it and adds
/// one to `ARGV[1]:ARGV[2]` in the other keys, deletes fields older than
/// `ARGV[3]` (day), and sets the TTL `ARGV[4]` everywhere.
static BUMP: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[4]) then return 0 end
local field = ARGV[1] .. ':' .. ARGV[2]
local oldest = tonumber(ARGV[3])
for i = 2, #KEYS do
  local k = KEYS[i]
  redis.call('HINCRBY', k, field, 1)
  local names = redis.call('HKEYS', k)
  for _, f in ipairs(names) do
    local day = tonumber(string.match(f, ':(%-?%d+)$'))
    if day == nil or day < oldest then redis.call('HDEL', k, f) end
  end
  redis.call('EXPIRE', k, ARGV[4])
end
return 1
",
    )
});

/// Records `recipient`'s answer about `sender` (a user of `provider`) in
/// both reputations. Returns false when the same recipient gave the same
/// feedback about the sender within the window already (not counted again).
pub async fn record(
    redis: &redis::aio::ConnectionManager,
    recipient: &str,
    sender: &str,
    provider: &str,
    feedback: Feedback,
) -> Result<bool, StateError> {
    let mut conn = redis.clone();
    let day = today();
    let counted: i64 = BUMP
        .key(once_key(feedback, recipient, sender))
        .key(keys::reputation_sender(sender))
        .key(keys::reputation_provider(provider))
        .arg(feedback.as_str())
        .arg(day)
        .arg(day - WINDOW_DAYS)
        .arg(TTL_SECS)
        .invoke_async(&mut conn)
        .await?;
    Ok(counted == 1)
}

/// Decayed totals of one reputation hash.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Decayed {
    pub reports: f64,
    pub blocks: f64,
    pub declines: f64,
    pub msgs: f64,
}

/// Sums the `<kind>:<day>` fields of a hash, each weighted by
/// `0.5^(age / half_life)` where age is measured from the middle of its day.
/// Fields outside the window or of unknown kinds are ignored.
pub fn decay(fields: &[(String, i64)], today: i64, half_life_days: f64) -> Decayed {
    let mut d = Decayed::default();
    let half_life = half_life_days.max(0.01);
    for (name, count) in fields {
        let Some((kind, day)) = name.rsplit_once(':') else {
            continue;
        };
        let Ok(day) = day.parse::<i64>() else {
            continue;
        };
        let age = today - day;
        if !(0..=WINDOW_DAYS).contains(&age) {
            continue;
        }
        // Events of today are half a day old on average.
        let w = 0.5f64.powf((age as f64 + 0.5) / half_life) * (*count as f64);
        match kind {
            "report" => d.reports += w,
            "block" => d.blocks += w,
            "decline" => d.declines += w,
            "msgs" => d.msgs += w,
            _ => {}
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_halves_each_half_life_and_forgets_outside_the_window() {
        let f = |kind: &str, day: i64, n: i64| (format!("{kind}:{day}"), n);
        let today = 20_000;
        let d = decay(
            &[f("report", today, 2), f("block", today - 7, 4)],
            today,
            7.0,
        );
        let today_w = 0.5f64.powf(0.5 / 7.0);
        assert!((d.reports - 2.0 * today_w).abs() < 1e-9, "{d:?}");
        assert!((d.blocks - 4.0 * 0.5 * today_w).abs() < 1e-9, "{d:?}");
        let d = decay(
            &[
                f("report", today - WINDOW_DAYS - 1, 100),
                f("report", today + 1, 100),
                ("junk".into(), 5),
            ],
            today,
            7.0,
        );
        assert_eq!(d.reports, 0.0);
    }
}
