//! The scoring policy: every signal's threshold and weight, and the verdict
//! thresholds. Defaults are documented in docs/spam.md; a platform team
//! overrides any of them in a TOML file (`--policy FILE`), e.g.
//!
//! ```toml
//! [verdict]
//! request = 3.0
//! quarantine = 6.0
//! [stranger_fanout]
//! max_per_hour = 30
//! weight = 4.0
//! ```
//!
//! Unknown keys are refused, so a typo fails at start instead of silently
//! using a default.

use serde::Deserialize;

/// Score thresholds: the verdict is the highest one the score reaches.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerdictThresholds {
    /// At or above: delivered as a message request, even from an accepted sender.
    pub request: f64,
    /// At or above: held in the quarantine, in no inbox.
    pub quarantine: f64,
    /// At or above: not delivered; the sender gets FAILED with code SPAM.
    pub reject: f64,
}

impl Default for VerdictThresholds {
    fn default() -> Self {
        Self {
            request: 3.0,
            quarantine: 6.0,
            reject: 12.0,
        }
    }
}

/// `SENDER_RATE`: messages per sender per minute.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderRate {
    /// Fires above this count (the limit itself passes).
    pub max_per_minute: u64,
    pub weight: f64,
}

impl Default for SenderRate {
    fn default() -> Self {
        Self {
            max_per_minute: 600,
            weight: 12.0,
        }
    }
}

/// `STRANGER_FANOUT`: distinct strangers a sender wrote to this hour.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StrangerFanout {
    /// Fires on a message to a stranger once the sender has written to more
    /// than this many distinct strangers this hour.
    pub max_per_hour: u64,
    pub weight: f64,
}

impl Default for StrangerFanout {
    fn default() -> Self {
        Self {
            max_per_hour: 20,
            weight: 4.0,
        }
    }
}

/// `FIRST_CONTACT_RATIO`: the share of this hour's recipients who are strangers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirstContactRatio {
    /// Not judged below this many distinct recipients this hour.
    pub min_recipients: u64,
    /// Fires (on a message to a stranger) above this share.
    pub max_ratio: f64,
    pub weight: f64,
}

impl Default for FirstContactRatio {
    fn default() -> Self {
        Self {
            min_recipients: 10,
            max_ratio: 0.8,
            weight: 2.0,
        }
    }
}

/// `NEW_ACCOUNT`: the provider says the sender's account is young.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NewAccount {
    /// Fires on a message to a stranger from an account younger than this.
    pub max_age_days: f64,
    pub weight: f64,
}

impl Default for NewAccount {
    fn default() -> Self {
        Self {
            max_age_days: 7.0,
            weight: 1.5,
        }
    }
}

/// `IDENTICAL_PAYLOAD`: one payload (any sender) to many strangers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdenticalPayload {
    /// Fires on a message to a stranger once its payload went to more than
    /// this many distinct recipients this hour.
    pub max_recipients_per_hour: u64,
    /// Texts shorter than this (after normalising) are not fingerprinted:
    /// "hi" and "ok" are identical by nature.
    pub min_text_chars: usize,
    pub weight: f64,
}

impl Default for IdenticalPayload {
    fn default() -> Self {
        Self {
            max_recipients_per_hour: 10,
            min_text_chars: 20,
            weight: 3.0,
        }
    }
}

/// `SENDER_REPUTATION`: reports, blocks and declines the sender received.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SenderReputation {
    /// Half-life of the decay, in days (at most 28, the window kept).
    pub half_life_days: f64,
    pub report_points: f64,
    pub block_points: f64,
    pub decline_points: f64,
    /// Fires at or above this many decayed points.
    pub min_points: f64,
    /// The weight is `points × weight_per_point`, at most `max_weight`.
    pub weight_per_point: f64,
    pub max_weight: f64,
}

impl Default for SenderReputation {
    fn default() -> Self {
        Self {
            half_life_days: 7.0,
            report_points: 1.0,
            block_points: 0.5,
            decline_points: 0.1,
            min_points: 1.0,
            weight_per_point: 2.0,
            max_weight: 8.0,
        }
    }
}

/// `PROVIDER_REPUTATION`: reports and blocks against a provider's users per
/// thousand of its messages.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderReputation {
    /// Not judged below this many decayed report+block points (same decay
    /// and points as the sender's).
    pub min_points: f64,
    /// Fires above this many points per 1,000 messages.
    pub max_per_thousand: f64,
    pub weight: f64,
}

impl Default for ProviderReputation {
    fn default() -> Self {
        Self {
            min_points: 20.0,
            max_per_thousand: 5.0,
            weight: 2.0,
        }
    }
}

/// `CONTENT_CLASSIFIER` and `SUSPICIOUS_LINK`: server-visible text only.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Content {
    /// Weight when the classifier's score reaches the model's threshold.
    pub classifier_weight: f64,
    /// Weight when a link is a shortener, an IP host, a suspicious TLD,
    /// punycode, a non-ASCII host or has `user@`.
    pub link_weight: f64,
}

impl Default for Content {
    fn default() -> Self {
        Self {
            classifier_weight: 4.0,
            link_weight: 1.5,
        }
    }
}

/// The whole policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub verdict: VerdictThresholds,
    pub sender_rate: SenderRate,
    pub stranger_fanout: StrangerFanout,
    pub first_contact_ratio: FirstContactRatio,
    pub new_account: NewAccount,
    pub identical_payload: IdenticalPayload,
    pub sender_reputation: SenderReputation,
    pub provider_reputation: ProviderReputation,
    pub content: Content,
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("invalid policy: {0}")]
    Invalid(String),
}

impl Policy {
    /// Reads a TOML policy file; missing keys keep their defaults.
    pub fn load(path: &std::path::Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let policy: Self = toml::from_str(&text).map_err(|source| PolicyError::Parse {
            path: path.display().to_string(),
            source,
        })?;
        policy.validate()?;
        Ok(policy)
    }

    /// Checks the policy makes sense: thresholds ordered and positive,
    /// weights finite and not negative, half-life within the window kept.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let v = &self.verdict;
        if !(v.request > 0.0 && v.request <= v.quarantine && v.quarantine <= v.reject) {
            return Err(PolicyError::Invalid(
                "verdict thresholds must satisfy 0 < request <= quarantine <= reject".into(),
            ));
        }
        let weights = [
            self.sender_rate.weight,
            self.stranger_fanout.weight,
            self.first_contact_ratio.weight,
            self.new_account.weight,
            self.identical_payload.weight,
            self.sender_reputation.weight_per_point,
            self.sender_reputation.max_weight,
            self.provider_reputation.weight,
            self.content.classifier_weight,
            self.content.link_weight,
        ];
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err(PolicyError::Invalid(
                "weights must be finite and >= 0".into(),
            ));
        }
        let hl = self.sender_reputation.half_life_days;
        if !(hl > 0.0 && hl <= interop_state::reputation::WINDOW_DAYS as f64) {
            return Err(PolicyError::Invalid(format!(
                "sender_reputation.half_life_days must be in (0, {}]",
                interop_state::reputation::WINDOW_DAYS
            )));
        }
        if !(0.0..=1.0).contains(&self.first_contact_ratio.max_ratio) {
            return Err(PolicyError::Invalid(
                "first_contact_ratio.max_ratio must be in [0, 1]".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_a_file_overrides_only_what_it_names() {
        Policy::default().validate().unwrap();
        let p: Policy =
            toml::from_str("[verdict]\nrequest = 2.5\n[stranger_fanout]\nmax_per_hour = 30\n")
                .unwrap();
        assert_eq!(p.verdict.request, 2.5);
        assert_eq!(p.verdict.quarantine, 6.0);
        assert_eq!(p.stranger_fanout.max_per_hour, 30);
        assert_eq!(p.stranger_fanout.weight, 4.0);
        assert!(toml::from_str::<Policy>("[verdict]\nrequets = 1.0\n").is_err());
        let mut bad = Policy::default();
        bad.verdict.quarantine = 20.0;
        assert!(bad.validate().is_err());
        bad = Policy::default();
        bad.sender_reputation.half_life_days = 29.0;
        assert!(bad.validate().is_err());
    }
}
