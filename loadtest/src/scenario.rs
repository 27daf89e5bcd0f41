//! Scenario files: the offered load and its mix, in TOML.
//!
//! ```toml
//! name = "smoke"
//! [rate]
//! msgs_per_s = 200        # or: steps = [250, 500, 1000] with step_s = 10
//! duration_s = 10
//! warmup_s = 2
//! drain_s = 15
//! [users]
//! sender_provider = "signal"
//! recipient_provider = "home"
//! recipients = 20
//! [mix]
//! e2ee_share = 0.5
//! text_sizes = [{ bytes = 64, weight = 6 }, { bytes = 512, weight = 4 }]
//! [spammers]
//! count = 2
//! share = 0.1
//! ```
//!
//! Every table rejects unknown keys, so a typo fails loudly instead of
//! silently running the default. `docs/loadtest.md` describes every key.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use interop_proto::address::is_provider_id;
use interop_proto::limits::{MAX_CIPHERTEXT_BYTES, MAX_GROUP_MEMBERS, MAX_TEXT_BYTES};

use crate::schedule::Schedule;

/// The gateway's default spam limit: messages per sender per minute.
pub const DEFAULT_SPAM_LIMIT_PER_MIN: u32 = 600;
/// Most messages one run may plan (the ledger holds 4 bits per message).
pub const MAX_MESSAGES: u64 = 200_000_000;
/// Longest phase or drain.
pub const MAX_SECONDS: f64 = 24.0 * 3600.0;
/// Most sessions (recipients plus receipt sessions) a scenario may open.
pub const MAX_SESSIONS: u32 = 5_000;
/// Largest media blob in `mix.media_sizes`: the media API's limit for
/// images (the declared type of the generator's E2EE blobs), 16 MiB.
pub const MAX_MEDIA_BYTES: usize = 16 * 1024 * 1024;
/// Most groups a scenario may create at set-up (`users.groups`).
pub const MAX_GROUPS: u32 = 1_000;
/// Most recipients in one group (`users.members_per_group`): the gateway's
/// 256 members less the group's sender, its admin.
pub const MAX_MEMBERS_PER_GROUP: u32 = MAX_GROUP_MEMBERS as u32 - 1;

/// A scenario file as written.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub rate: RateSection,
    #[serde(default)]
    pub users: UsersSection,
    #[serde(default)]
    pub mix: MixSection,
    #[serde(default)]
    pub spammers: Option<SpammersSection>,
    #[serde(default)]
    pub knee: KneeSection,
}

/// The offered rate: `msgs_per_s` + `duration_s`, or `steps` + `step_s`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateSection {
    pub msgs_per_s: Option<f64>,
    pub duration_s: Option<f64>,
    pub steps: Option<Vec<f64>>,
    pub step_s: Option<f64>,
    /// Sent at the first rate before measuring; not in latency figures.
    #[serde(default)]
    pub warmup_s: f64,
    /// Longest wait, after the last send, for outstanding deliveries; what
    /// is still missing then is lost.
    #[serde(default = "default_drain_s")]
    pub drain_s: f64,
}

fn default_drain_s() -> f64 {
    15.0
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UsersSection {
    pub sender_provider: String,
    pub recipient_provider: String,
    /// Normal senders; 0 = as many as needed to keep each within
    /// `sender_budget_per_min` at the highest rate.
    pub senders: u32,
    /// Recipients; each holds one delivery session.
    pub recipients: u32,
    /// WebSocket connections to ingest (sends are pipelined on each).
    pub ingest_connections: u32,
    /// What one normal sender may send per minute (auto-sizing target).
    pub sender_budget_per_min: u32,
    /// The gateway's spam limit (spam-scoring `--max-sender-per-minute`).
    pub spam_limit_per_min: u32,
    /// Recipients who have accepted no sender (each holds a delivery
    /// session too): the targets of first contacts (`mix.first_contact_share`)
    /// and, when above 0, of every spammer message. The `recipients` accept
    /// every normal sender before the run (their contacts).
    pub strangers: u32,
    /// Groups created at set-up for `mix.group_share` (required above 0
    /// when it is): each has its own sender (its creator and admin) and
    /// `members_per_group` of the `recipients`.
    pub groups: u32,
    /// Recipients in each group besides its sender: the copies each group
    /// message makes.
    pub members_per_group: u32,
    /// Each normal sender accepts every contact (the `recipients`) before
    /// the run too, as in conversations both sides have had: routing then
    /// has no implicit acceptance to write and announce for a sender's
    /// first message to a recipient. Off by default, so a run measures first
    /// messages as well. Costs senders × recipients answers at set-up.
    pub senders_accept_contacts: bool,
    /// How both providers talk to the gateway: `device` (a delivery
    /// session per recipient and receipt-tracking sender, lone sends) or
    /// `provider` (provider sessions: sends in transactions, every user's
    /// messages in batches over `provider_sessions` sessions per provider;
    /// docs/protocol.md, "Provider sessions").
    pub mode: Mode,
    /// Provider sessions on delivery per provider in `provider` mode (the
    /// partitions are split between them).
    pub provider_sessions: u32,
}

/// How providers connect (`users.mode`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A delivery session per user device; one frame per send.
    #[default]
    Device,
    /// Provider sessions: transactions on ingest, batches on delivery.
    Provider,
}

impl Default for UsersSection {
    fn default() -> Self {
        Self {
            sender_provider: "signal".into(),
            recipient_provider: interop_proto::HOME_PROVIDER.into(),
            senders: 0,
            recipients: 20,
            ingest_connections: 2,
            sender_budget_per_min: 300,
            spam_limit_per_min: DEFAULT_SPAM_LIMIT_PER_MIN,
            strangers: 0,
            groups: 0,
            members_per_group: 8,
            senders_accept_contacts: false,
            mode: Mode::Device,
            provider_sessions: 2,
        }
    }
}

/// One content size and how often it is picked.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SizeWeight {
    pub bytes: u32,
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MixSection {
    /// Share of messages sent as E2EE ciphertext; the rest is
    /// TRANSPORT_ONLY text.
    pub e2ee_share: f64,
    pub text_sizes: Vec<SizeWeight>,
    pub ciphertext_sizes: Vec<SizeWeight>,
    /// Share of normal senders that hold a delivery session and count
    /// their `DELIVERED`/`FAILED` receipts (spammers always do).
    pub receipt_share: f64,
    /// Share of normal messages that are first contacts: to a stranger
    /// (`users.strangers`, required when above 0), with content unique to
    /// the message.
    pub first_contact_share: f64,
    /// Share of normal and group messages (not first contacts, not spam)
    /// that carry media: an E2EE blob of `media_sizes`, uploaded at set-up.
    pub media_share: f64,
    /// Share of normal messages sent to a group (`users.groups`, required
    /// when above 0); each member's copy is expected exactly once.
    pub group_share: f64,
    /// Sizes of the media blobs (E2EE, so nothing is transcoded), checked
    /// when `media_share` is above 0.
    pub media_sizes: Vec<SizeWeight>,
    /// Recipients download each media message's blob after delivery.
    pub fetch_media: bool,
}

impl Default for MixSection {
    fn default() -> Self {
        Self {
            e2ee_share: 0.5,
            text_sizes: vec![
                SizeWeight {
                    bytes: 64,
                    weight: 60,
                },
                SizeWeight {
                    bytes: 256,
                    weight: 30,
                },
                SizeWeight {
                    bytes: 2048,
                    weight: 10,
                },
            ],
            ciphertext_sizes: vec![
                SizeWeight {
                    bytes: 160,
                    weight: 60,
                },
                SizeWeight {
                    bytes: 1024,
                    weight: 30,
                },
                SizeWeight {
                    bytes: 8192,
                    weight: 10,
                },
            ],
            receipt_share: 0.1,
            first_contact_share: 0.0,
            media_share: 0.0,
            group_share: 0.0,
            media_sizes: vec![
                SizeWeight {
                    bytes: 4096,
                    weight: 60,
                },
                SizeWeight {
                    bytes: 65_536,
                    weight: 30,
                },
                SizeWeight {
                    bytes: 262_144,
                    weight: 10,
                },
            ],
            fetch_media: false,
        }
    }
}

/// Spammers: without `users.strangers`, senders that deliberately exceed
/// the spam limit; with strangers, senders that fan out near-identical
/// messages to the strangers, from accounts their provider says are a day
/// old (at any rate).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpammersSection {
    pub count: u32,
    /// Share of the offered rate they send.
    pub share: f64,
}

/// How a stepped run decides where the knee is.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KneeSection {
    /// A step is healthy while its p99 stays under this.
    pub max_p99_ms: f64,
    /// … and it delivers at least this share of the offered rate.
    pub min_delivered_ratio: f64,
}

impl Default for KneeSection {
    fn default() -> Self {
        Self {
            max_p99_ms: 1000.0,
            min_delivered_ratio: 0.95,
        }
    }
}

/// Why a scenario cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Not TOML, a wrong type, a missing key or an unknown key.
    #[error("not a valid scenario: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("name must not be empty")]
    EmptyName,
    #[error("[rate] needs either msgs_per_s with duration_s, or steps with step_s")]
    RateShape,
    #[error("{field} is required with {with}")]
    Missing {
        field: &'static str,
        with: &'static str,
    },
    #[error("{field} must be a positive number of messages per second, not {value}")]
    NonPositiveRate { field: &'static str, value: f64 },
    #[error("{field} must be between 0 and {max} seconds, not {value}")]
    BadDuration {
        field: &'static str,
        value: f64,
        max: f64,
    },
    #[error("{field} must be a share between 0 and 1, not {value}")]
    BadShare { field: &'static str, value: f64 },
    #[error("{field} must list at least one size with a weight above 0")]
    NoSizes { field: &'static str },
    #[error("{field}: {bytes} bytes is outside 1..={max}")]
    BadSize {
        field: &'static str,
        bytes: u32,
        max: usize,
    },
    #[error("{field} {value:?} is not a provider id")]
    BadProvider { field: &'static str, value: String },
    #[error("{field} must be between 1 and {max}, not {value}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        max: u64,
    },
    #[error(
        "{senders} senders would each send {per_min:.0} messages per minute at the highest rate, \
         over the spam limit of {limit}: use at least {needed} senders (or senders = 0 for auto)"
    )]
    TooFewSenders {
        senders: u32,
        per_min: f64,
        limit: u32,
        needed: u32,
    },
    #[error(
        "each spammer sends only {per_min:.0} messages per minute at the lowest rate, not over \
         the spam limit of {limit}: raise spammers.share or lower spammers.count"
    )]
    SpammersUnderLimit { per_min: f64, limit: u32 },
    #[error(
        "each group's sender would send {per_min:.0} messages per minute at the highest rate, \
         over the spam limit of {limit}: use more users.groups or a lower mix.group_share"
    )]
    GroupSendersOverLimit { per_min: f64, limit: u32 },
    #[error("the scenario plans {planned} group copies, more than {max}")]
    TooManyCopies { planned: u64, max: u64 },
    #[error("the scenario plans {planned} messages, more than {max}")]
    TooManyMessages { planned: u64, max: u64 },
    #[error("{sessions} sessions (recipients + strangers + receipt sessions) are more than {max}")]
    TooManySessions { sessions: u32, max: u32 },
}

/// A checked scenario and what follows from it.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub file: ScenarioFile,
    pub schedule: Schedule,
    /// Normal senders (after auto-sizing).
    pub senders: u32,
    /// Normal senders with a receipt session (the first ones).
    pub receipt_senders: u32,
    pub spammers: u32,
    pub spam_share: f64,
    /// Declared parts of the mix this gateway cannot take yet.
    pub unsupported: Vec<Unsupported>,
}

/// A declared part of the mix that is not sent.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Unsupported {
    pub feature: &'static str,
    pub share: f64,
    pub reason: &'static str,
}

fn check_share(field: &'static str, value: f64) -> Result<f64, ScenarioError> {
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ScenarioError::BadShare { field, value })
    }
}

fn check_seconds(
    field: &'static str,
    value: f64,
    zero_ok: bool,
) -> Result<Duration, ScenarioError> {
    let ok =
        value.is_finite() && value <= MAX_SECONDS && (value > 0.0 || (zero_ok && value == 0.0));
    if ok {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(ScenarioError::BadDuration {
            field,
            value,
            max: MAX_SECONDS,
        })
    }
}

fn check_rate(field: &'static str, value: f64) -> Result<f64, ScenarioError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(ScenarioError::NonPositiveRate { field, value })
    }
}

fn check_sizes(field: &'static str, sizes: &[SizeWeight], max: usize) -> Result<(), ScenarioError> {
    if sizes.iter().all(|s| s.weight == 0) {
        return Err(ScenarioError::NoSizes { field });
    }
    match sizes
        .iter()
        .find(|s| s.bytes == 0 || s.bytes as usize > max)
    {
        Some(s) => Err(ScenarioError::BadSize {
            field,
            bytes: s.bytes,
            max,
        }),
        None => Ok(()),
    }
}

fn check_range(field: &'static str, value: u32, max: u32) -> Result<u32, ScenarioError> {
    if value >= 1 && value <= max {
        Ok(value)
    } else {
        Err(ScenarioError::OutOfRange {
            field,
            value: value.into(),
            max: max.into(),
        })
    }
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        Self::check(toml::from_str(text)?)
    }

    /// Checks a parsed file and derives the schedule and user counts.
    pub fn check(file: ScenarioFile) -> Result<Self, ScenarioError> {
        use ScenarioError::*;
        if file.name.trim().is_empty() {
            return Err(EmptyName);
        }
        let r = &file.rate;
        let warmup = check_seconds("rate.warmup_s", r.warmup_s, true)?;
        check_seconds("rate.drain_s", r.drain_s, true)?;
        let (rates, step) = match (r.msgs_per_s, &r.steps) {
            (Some(rate), None) => {
                if r.step_s.is_some() {
                    return Err(RateShape);
                }
                let d = r.duration_s.ok_or(Missing {
                    field: "rate.duration_s",
                    with: "rate.msgs_per_s",
                })?;
                (
                    vec![check_rate("rate.msgs_per_s", rate)?],
                    check_seconds("rate.duration_s", d, false)?,
                )
            }
            (None, Some(steps)) if !steps.is_empty() => {
                if r.duration_s.is_some() {
                    return Err(RateShape);
                }
                let s = r.step_s.ok_or(Missing {
                    field: "rate.step_s",
                    with: "rate.steps",
                })?;
                let rates = steps
                    .iter()
                    .map(|&v| check_rate("rate.steps", v))
                    .collect::<Result<Vec<_>, _>>()?;
                (rates, check_seconds("rate.step_s", s, false)?)
            }
            _ => return Err(RateShape),
        };
        let schedule = Schedule::stepped(&rates, warmup, step);
        if schedule.total() > MAX_MESSAGES {
            return Err(TooManyMessages {
                planned: schedule.total(),
                max: MAX_MESSAGES,
            });
        }

        let u = &file.users;
        for (field, value) in [
            ("users.sender_provider", &u.sender_provider),
            ("users.recipient_provider", &u.recipient_provider),
        ] {
            if !is_provider_id(value) {
                return Err(BadProvider {
                    field,
                    value: value.clone(),
                });
            }
        }
        check_range("users.recipients", u.recipients, MAX_SESSIONS)?;
        check_range("users.ingest_connections", u.ingest_connections, 64)?;
        // A provider's sessions share its 64 partitions.
        check_range(
            "users.provider_sessions",
            u.provider_sessions,
            interop_proto::limits::PARTITIONS,
        )?;
        check_range("users.spam_limit_per_min", u.spam_limit_per_min, u32::MAX)?;
        check_range(
            "users.sender_budget_per_min",
            u.sender_budget_per_min,
            u.spam_limit_per_min,
        )?;

        let m = &file.mix;
        check_share("mix.e2ee_share", m.e2ee_share)?;
        check_share("mix.receipt_share", m.receipt_share)?;
        check_share("mix.media_share", m.media_share)?;
        check_share("mix.group_share", m.group_share)?;
        check_share("mix.first_contact_share", m.first_contact_share)?;
        if m.first_contact_share > 0.0 && u.strangers == 0 {
            return Err(Missing {
                field: "users.strangers",
                with: "mix.first_contact_share",
            });
        }
        if m.e2ee_share < 1.0 {
            check_sizes("mix.text_sizes", &m.text_sizes, MAX_TEXT_BYTES)?;
        }
        if m.media_share > 0.0 {
            check_sizes("mix.media_sizes", &m.media_sizes, MAX_MEDIA_BYTES)?;
        }
        if m.group_share > 0.0 {
            if u.groups == 0 {
                return Err(Missing {
                    field: "users.groups",
                    with: "mix.group_share",
                });
            }
            check_range("users.groups", u.groups, MAX_GROUPS)?;
            check_range(
                "users.members_per_group",
                u.members_per_group,
                MAX_MEMBERS_PER_GROUP.min(u.recipients),
            )?;
        }
        if m.e2ee_share > 0.0 {
            check_sizes(
                "mix.ciphertext_sizes",
                &m.ciphertext_sizes,
                MAX_CIPHERTEXT_BYTES,
            )?;
        }

        let (spammers, spam_share) = match &file.spammers {
            None => (0, 0.0),
            Some(s) => {
                let share = check_share("spammers.share", s.share)?;
                if share >= 1.0 {
                    return Err(BadShare {
                        field: "spammers.share",
                        value: share,
                    });
                }
                check_range("spammers.count", s.count, 10_000)?;
                let min_rate = rates.iter().copied().fold(f64::INFINITY, f64::min);
                let per_min = min_rate * share * 60.0 / f64::from(s.count);
                if u.strangers == 0 && per_min <= f64::from(u.spam_limit_per_min) {
                    return Err(SpammersUnderLimit {
                        per_min,
                        limit: u.spam_limit_per_min,
                    });
                }
                (s.count, share)
            }
        };

        let max_rate = rates.iter().copied().fold(0.0, f64::max);
        let normal_per_min = max_rate * (1.0 - spam_share) * 60.0;
        let senders = if u.senders == 0 {
            ((normal_per_min / f64::from(u.sender_budget_per_min)).ceil() as u32).max(1)
        } else {
            let per_min = normal_per_min / f64::from(u.senders);
            // The gateway refuses a sender's messages over the limit; keep
            // one message of margin for the minute boundary.
            if per_min + 1.0 > f64::from(u.spam_limit_per_min) {
                return Err(TooFewSenders {
                    senders: u.senders,
                    per_min,
                    limit: u.spam_limit_per_min,
                    needed: ((normal_per_min / f64::from(u.spam_limit_per_min - 1)).ceil() as u32)
                        .max(1),
                });
            }
            u.senders
        };
        if m.group_share > 0.0 {
            // Each group's sender sends its share of the group messages;
            // one message of margin for the minute boundary, as above.
            let per_min = normal_per_min * m.group_share / f64::from(u.groups);
            if per_min + 1.0 > f64::from(u.spam_limit_per_min) {
                return Err(GroupSendersOverLimit {
                    per_min,
                    limit: u.spam_limit_per_min,
                });
            }
            let copies = (schedule.total() as f64 * m.group_share).ceil() as u64
                * u64::from(u.members_per_group);
            if copies > MAX_MESSAGES {
                return Err(TooManyCopies {
                    planned: copies,
                    max: MAX_MESSAGES,
                });
            }
        }
        let receipt_senders = (f64::from(senders) * m.receipt_share).ceil() as u32;
        let sessions = u
            .recipients
            .saturating_add(u.strangers)
            .saturating_add(receipt_senders)
            .saturating_add(spammers);
        if sessions > MAX_SESSIONS {
            return Err(TooManySessions {
                sessions,
                max: MAX_SESSIONS,
            });
        }
        let k = &file.knee;
        if !(k.max_p99_ms.is_finite() && k.max_p99_ms > 0.0) {
            return Err(BadDuration {
                field: "knee.max_p99_ms",
                value: k.max_p99_ms,
                max: MAX_SECONDS * 1000.0,
            });
        }
        check_share("knee.min_delivered_ratio", k.min_delivered_ratio)?;

        let unsupported = Vec::new();
        Ok(Self {
            file,
            schedule,
            senders,
            receipt_senders,
            spammers,
            spam_share,
            unsupported,
        })
    }

    /// The highest offered rate.
    pub fn max_rate(&self) -> f64 {
        self.schedule.steps().map(|p| p.rate).fold(0.0, f64::max)
    }

    pub fn drain(&self) -> Duration {
        // Checked finite and in range by `check`.
        Duration::from_secs_f64(self.file.rate.drain_s)
    }

    pub fn is_stepped(&self) -> bool {
        self.file.rate.steps.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOKE: &str = r#"
        name = "smoke"
        [rate]
        msgs_per_s = 200
        duration_s = 10
        warmup_s = 2
    "#;

    fn err(text: &str) -> ScenarioError {
        Scenario::from_toml(text).expect_err("should be refused")
    }

    #[test]
    fn a_minimal_file_gets_defaults_and_auto_sized_senders() {
        let s = Scenario::from_toml(SMOKE).unwrap();
        assert_eq!(s.schedule.total(), 2400);
        // 200/s = 12,000/min over a 300/min budget each.
        assert_eq!(s.senders, 40);
        assert_eq!(s.receipt_senders, 4);
        assert_eq!(s.spammers, 0);
        assert_eq!(s.file.users.recipient_provider, "home");
        assert_eq!(s.drain(), Duration::from_secs(15));
        assert!(s.unsupported.is_empty());
        assert!(!s.is_stepped());
    }

    #[test]
    fn the_shipped_scenarios_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
        assert!(n >= 3);
    }

    #[test]
    fn unknown_keys_are_refused_in_every_table() {
        for text in [
            format!("{SMOKE}\nbogus = 1"),
            SMOKE.replace("warmup_s", "warm_up_s"),
            format!("{SMOKE}\n[users]\nrecipient = 3"),
            format!("{SMOKE}\n[mix]\ntext_sizes = [{{ bytes = 1, weight = 1, x = 2 }}]"),
            format!("{SMOKE}\n[spammers]\ncount = 1\nshare = 0.5\nrate = 3"),
        ] {
            match err(&text) {
                ScenarioError::Parse(e) => assert!(e.to_string().contains("unknown field"), "{e}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn rates_and_durations_must_make_sense() {
        assert!(matches!(
            err(&SMOKE.replace("200", "0")),
            ScenarioError::NonPositiveRate {
                field: "rate.msgs_per_s",
                ..
            }
        ));
        assert!(matches!(
            err(&SMOKE.replace("200", "-5")),
            ScenarioError::NonPositiveRate { .. }
        ));
        assert!(matches!(
            err("name='x'\n[rate]\nsteps=[100, 0]\nstep_s=5"),
            ScenarioError::NonPositiveRate {
                field: "rate.steps",
                ..
            }
        ));
        assert!(matches!(
            err("name='x'\n[rate]\nmsgs_per_s=10"),
            ScenarioError::Missing {
                field: "rate.duration_s",
                ..
            }
        ));
        assert!(matches!(
            err("name='x'\n[rate]\nsteps=[10]"),
            ScenarioError::Missing {
                field: "rate.step_s",
                ..
            }
        ));
        assert!(matches!(
            err("name='x'\n[rate]\nmsgs_per_s=10\nduration_s=5\nsteps=[10]"),
            ScenarioError::RateShape
        ));
        assert!(matches!(
            err("name='x'\n[rate]\nsteps=[]\nstep_s=1"),
            ScenarioError::RateShape
        ));
        assert!(matches!(
            err(&SMOKE.replace("duration_s = 10", "duration_s = 0")),
            ScenarioError::BadDuration {
                field: "rate.duration_s",
                ..
            }
        ));
        assert!(matches!(
            err(&SMOKE.replace("warmup_s = 2", "warmup_s = -1")),
            ScenarioError::BadDuration {
                field: "rate.warmup_s",
                ..
            }
        ));
        assert!(matches!(
            err(&SMOKE.replace("200", "1e9").replace("= 10", "= 86000")),
            ScenarioError::TooManyMessages { .. }
        ));
        assert!(matches!(
            err("[rate]\nmsgs_per_s=1\nduration_s=1"),
            ScenarioError::Parse(_)
        ));
        assert!(matches!(
            err(&SMOKE.replace("smoke", " ")),
            ScenarioError::EmptyName
        ));
    }

    #[test]
    fn the_mix_is_checked() {
        assert!(matches!(
            err(&format!("{SMOKE}\n[mix]\ne2ee_share = 1.5")),
            ScenarioError::BadShare {
                field: "mix.e2ee_share",
                ..
            }
        ));
        assert!(matches!(
            err(&format!(
                "{SMOKE}\n[mix]\ntext_sizes = [{{ bytes = 5000, weight = 1 }}]"
            )),
            ScenarioError::BadSize {
                field: "mix.text_sizes",
                bytes: 5000,
                ..
            }
        ));
        assert!(matches!(
            err(&format!("{SMOKE}\n[mix]\ntext_sizes = []")),
            ScenarioError::NoSizes {
                field: "mix.text_sizes"
            }
        ));
        // Text sizes do not matter when everything is ciphertext.
        Scenario::from_toml(&format!(
            "{SMOKE}\n[mix]\ne2ee_share = 1.0\ntext_sizes = []"
        ))
        .unwrap();
        assert!(matches!(
            err(&format!("{SMOKE}\n[users]\nsender_provider = \"Signal!\"")),
            ScenarioError::BadProvider { .. }
        ));
        assert!(matches!(
            err(&format!("{SMOKE}\n[users]\nrecipients = 0")),
            ScenarioError::OutOfRange {
                field: "users.recipients",
                ..
            }
        ));
        let s = Scenario::from_toml(&format!(
            "{SMOKE}\n[users]\ngroups = 4\n[mix]\nmedia_share = 0.2\ngroup_share = 0.1"
        ))
        .unwrap();
        assert!(s.unsupported.is_empty());
    }

    #[test]
    fn media_and_group_settings_are_checked_at_their_edges() {
        let mix = |extra: &str| format!("{SMOKE}\n[mix]\nmedia_share = 0.1\n{extra}");
        // Defaults: a few KiB to 256 KiB, no download.
        let s = Scenario::from_toml(&mix("")).unwrap();
        assert_eq!(
            s.file
                .mix
                .media_sizes
                .iter()
                .map(|m| m.bytes)
                .collect::<Vec<_>>(),
            [4096, 65_536, 262_144]
        );
        assert!(!s.file.mix.fetch_media);
        let at_limit = format!("media_sizes = [{{ bytes = {MAX_MEDIA_BYTES}, weight = 1 }}]");
        let s = Scenario::from_toml(&mix(&format!("{at_limit}\nfetch_media = true"))).unwrap();
        assert!(s.file.mix.fetch_media);
        let over = format!(
            "media_sizes = [{{ bytes = {}, weight = 1 }}]",
            MAX_MEDIA_BYTES + 1
        );
        assert!(matches!(
            err(&mix(&over)),
            ScenarioError::BadSize {
                field: "mix.media_sizes",
                max: MAX_MEDIA_BYTES,
                ..
            }
        ));
        assert!(matches!(
            err(&mix("media_sizes = [{ bytes = 0, weight = 1 }]")),
            ScenarioError::BadSize {
                field: "mix.media_sizes",
                bytes: 0,
                ..
            }
        ));
        assert!(matches!(
            err(&mix("media_sizes = [{ bytes = 10, weight = 0 }]")),
            ScenarioError::NoSizes {
                field: "mix.media_sizes"
            }
        ));
        // Media sizes do not matter without media.
        Scenario::from_toml(&format!("{SMOKE}\n[mix]\nmedia_sizes = []")).unwrap();

        let groups = |users: &str| {
            format!("{SMOKE}\n[users]\nrecipients = 300\n{users}\n[mix]\ngroup_share = 0.1")
        };
        assert!(matches!(
            err(&groups("")),
            ScenarioError::Missing {
                field: "users.groups",
                with: "mix.group_share"
            }
        ));
        let s = Scenario::from_toml(&groups(&format!("groups = {MAX_GROUPS}"))).unwrap();
        assert_eq!(
            (s.file.users.groups, s.file.users.members_per_group),
            (MAX_GROUPS, 8)
        );
        assert!(matches!(
            err(&groups(&format!("groups = {}", MAX_GROUPS + 1))),
            ScenarioError::OutOfRange {
                field: "users.groups",
                ..
            }
        ));
        // 255 recipients and the group's sender: the gateway's 256 members.
        Scenario::from_toml(&groups(&format!(
            "groups = 3\nmembers_per_group = {MAX_MEMBERS_PER_GROUP}"
        )))
        .unwrap();
        for bad in [0, MAX_MEMBERS_PER_GROUP + 1] {
            assert!(matches!(
                err(&groups(&format!("groups = 1\nmembers_per_group = {bad}"))),
                ScenarioError::OutOfRange {
                    field: "users.members_per_group",
                    max: 255,
                    ..
                }
            ));
        }
        // 200/s, 10% to 3 groups: 400 per group sender and minute; to 1: 1,200.
        Scenario::from_toml(&groups("groups = 3")).unwrap();
        assert!(matches!(
            err(&groups("groups = 1")),
            ScenarioError::GroupSendersOverLimit { limit: 600, .. }
        ));
        // The copies' ledger is bounded like the messages'.
        let huge = "name='h'\n[rate]\nmsgs_per_s=10000\nduration_s=1000\n[users]\nrecipients=300\ngroups=1000\nmembers_per_group=255\n[mix]\ngroup_share=0.5";
        assert!(matches!(
            err(huge),
            ScenarioError::TooManyCopies {
                max: MAX_MESSAGES,
                ..
            }
        ));
        Scenario::from_toml(&huge.replace("255", "30")).unwrap();
        // No more members than recipients.
        let few = format!("{SMOKE}\n[users]\nrecipients = 5\ngroups = 2\nmembers_per_group = 6\n[mix]\ngroup_share = 0.1");
        assert!(matches!(
            err(&few),
            ScenarioError::OutOfRange {
                field: "users.members_per_group",
                value: 6,
                max: 5
            }
        ));
    }

    #[test]
    fn senders_and_spammers_are_sized_against_the_spam_limit() {
        // 200/s from 10 senders = 1,200/min each: over 600.
        match err(&format!("{SMOKE}\n[users]\nsenders = 10")) {
            ScenarioError::TooFewSenders { needed, .. } => assert_eq!(needed, 21),
            other => panic!("{other:?}"),
        }
        Scenario::from_toml(&format!("{SMOKE}\n[users]\nsenders = 25")).unwrap();
        // 10% of 200/s over 10 spammers = 120/min each: under 600.
        assert!(matches!(
            err(&format!("{SMOKE}\n[spammers]\ncount = 10\nshare = 0.1")),
            ScenarioError::SpammersUnderLimit { .. }
        ));
        let s =
            Scenario::from_toml(&format!("{SMOKE}\n[spammers]\ncount = 1\nshare = 0.1")).unwrap();
        assert_eq!((s.spammers, s.senders), (1, 36));
        // Stepped: spammers are checked at the lowest rate, senders at the highest.
        let stepped =
            "name='k'\n[rate]\nsteps=[100, 1000]\nstep_s=5\n[spammers]\ncount=1\nshare=0.2";
        let s = Scenario::from_toml(stepped).unwrap();
        assert_eq!(s.senders, 160);
        assert_eq!(s.max_rate(), 1000.0);
        assert!(s.is_stepped());
    }
}
