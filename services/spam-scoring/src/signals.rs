//! The named signals (Rspamd's "symbols"): each is a pure function of the
//! counters of one message ([`interop_state::spam::Observation`]) and the
//! policy, so each is unit-tested at its threshold. The verdict is the sum
//! of the weights of the signals that fired, compared with the policy's
//! thresholds; it records every signal that fired.

use interop_proto::v1::{envelope::Content, Envelope, Signal, SpamVerdict, Verdict};
use interop_state::reputation::{self, Decayed};
use interop_state::spam::Observation;
use sha2::{Digest as _, Sha256};

use crate::policy::Policy;

pub const SENDER_RATE: &str = "SENDER_RATE";
pub const STRANGER_FANOUT: &str = "STRANGER_FANOUT";
pub const FIRST_CONTACT_RATIO: &str = "FIRST_CONTACT_RATIO";
pub const NEW_ACCOUNT: &str = "NEW_ACCOUNT";
pub const IDENTICAL_PAYLOAD: &str = "IDENTICAL_PAYLOAD";
pub const SENDER_REPUTATION: &str = "SENDER_REPUTATION";
pub const PROVIDER_REPUTATION: &str = "PROVIDER_REPUTATION";
pub const CONTENT_CLASSIFIER: &str = "CONTENT_CLASSIFIER";
pub const SUSPICIOUS_LINK: &str = "SUSPICIOUS_LINK";

fn signal(name: &str, weight: f64, detail: String) -> Signal {
    Signal {
        name: name.to_owned(),
        weight,
        detail,
    }
}

/// The fingerprint of a payload for `IDENTICAL_PAYLOAD`: for text, the
/// lower-cased letters with every digit run as `0` (so "win 500" and
/// "win 900" match), if at least `min_text_chars` long; for ciphertext the
/// bytes themselves (identical ciphertext to many recipients is a copy,
/// whatever it says); for media its SHA-256. Other content has none.
pub fn payload_hash(env: &Envelope, min_text_chars: usize) -> Option<String> {
    let mut h = Sha256::new();
    match &env.content {
        Some(Content::Text(t)) => {
            let mut n = 0usize;
            let mut in_digits = false;
            for c in t.body.chars() {
                if c.is_numeric() {
                    if !in_digits {
                        h.update(b"0");
                        n += 1;
                    }
                    in_digits = true;
                } else {
                    in_digits = false;
                    if c.is_alphabetic() {
                        let mut buf = [0u8; 4];
                        for lc in c.to_lowercase() {
                            h.update(lc.encode_utf8(&mut buf).as_bytes());
                        }
                        n += 1;
                    }
                }
            }
            if n < min_text_chars {
                return None;
            }
            h.update(b"text");
        }
        Some(Content::Ciphertext(c)) if !c.payload.is_empty() => {
            h.update(&c.payload);
            h.update(b"ciphertext");
        }
        Some(Content::Media(m)) if !m.sha256.is_empty() => {
            h.update(&m.sha256);
            h.update(b"media");
        }
        _ => return None,
    }
    Some(hex::encode(&h.finalize()[..16]))
}

/// `SENDER_RATE`.
pub fn sender_rate(p: &Policy, o: &Observation) -> Option<Signal> {
    let max = p.sender_rate.max_per_minute;
    (o.sent_this_minute > max).then(|| {
        signal(
            SENDER_RATE,
            p.sender_rate.weight,
            format!("{} messages this minute, limit {max}", o.sent_this_minute),
        )
    })
}

/// `STRANGER_FANOUT`.
pub fn stranger_fanout(p: &Policy, o: &Observation) -> Option<Signal> {
    let max = p.stranger_fanout.max_per_hour;
    (o.to_stranger && o.strangers_this_hour > max).then(|| {
        signal(
            STRANGER_FANOUT,
            p.stranger_fanout.weight,
            format!("{} strangers this hour, limit {max}", o.strangers_this_hour),
        )
    })
}

/// `FIRST_CONTACT_RATIO`.
pub fn first_contact_ratio(p: &Policy, o: &Observation) -> Option<Signal> {
    let c = &p.first_contact_ratio;
    if !o.to_stranger || o.recipients_this_hour < c.min_recipients || o.recipients_this_hour == 0 {
        return None;
    }
    // HyperLogLog counts are estimates: the strangers can read a little
    // above the recipients.
    let ratio = (o.strangers_this_hour as f64 / o.recipients_this_hour as f64).min(1.0);
    (ratio > c.max_ratio).then(|| {
        signal(
            FIRST_CONTACT_RATIO,
            c.weight,
            format!(
                "{:.2} of {} recipients this hour are strangers, limit {:.2}",
                ratio, o.recipients_this_hour, c.max_ratio
            ),
        )
    })
}

/// `NEW_ACCOUNT`: `created_at_ms` as the provider said (0 = not said).
pub fn new_account(p: &Policy, o: &Observation, created_at_ms: i64, now_ms: i64) -> Option<Signal> {
    if created_at_ms <= 0 || !o.to_stranger {
        return None;
    }
    let age_days = now_ms.saturating_sub(created_at_ms).max(0) as f64 / 86_400_000.0;
    (age_days < p.new_account.max_age_days).then(|| {
        signal(
            NEW_ACCOUNT,
            p.new_account.weight,
            format!(
                "account {age_days:.1} days old, under {} days",
                p.new_account.max_age_days
            ),
        )
    })
}

/// `IDENTICAL_PAYLOAD`.
pub fn identical_payload(p: &Policy, o: &Observation) -> Option<Signal> {
    let max = p.identical_payload.max_recipients_per_hour;
    (o.to_stranger && o.payload_recipients_this_hour > max).then(|| {
        signal(
            IDENTICAL_PAYLOAD,
            p.identical_payload.weight,
            format!(
                "the same payload went to {} recipients this hour, limit {max}",
                o.payload_recipients_this_hour
            ),
        )
    })
}

fn points(p: &Policy, d: &Decayed, with_declines: bool) -> f64 {
    let r = &p.sender_reputation;
    d.reports * r.report_points
        + d.blocks * r.block_points
        + if with_declines {
            d.declines * r.decline_points
        } else {
            0.0
        }
}

/// `SENDER_REPUTATION`.
pub fn sender_reputation(p: &Policy, o: &Observation, today: i64) -> Option<Signal> {
    let r = &p.sender_reputation;
    let d = reputation::decay(&o.sender_reputation, today, r.half_life_days);
    let pts = points(p, &d, true);
    (pts >= r.min_points && pts > 0.0).then(|| {
        signal(
            SENDER_REPUTATION,
            (pts * r.weight_per_point).min(r.max_weight),
            format!(
                "{pts:.2} points (decayed: {:.2} reports, {:.2} blocks, {:.2} declines), from {}",
                d.reports, d.blocks, d.declines, r.min_points
            ),
        )
    })
}

/// `PROVIDER_REPUTATION`.
pub fn provider_reputation(p: &Policy, o: &Observation, today: i64) -> Option<Signal> {
    let c = &p.provider_reputation;
    let d = reputation::decay(
        &o.provider_reputation,
        today,
        p.sender_reputation.half_life_days,
    );
    let pts = points(p, &d, false);
    if pts < c.min_points || d.msgs <= 0.0 {
        return None;
    }
    let per_thousand = pts * 1000.0 / d.msgs;
    (per_thousand > c.max_per_thousand).then(|| {
        signal(
            PROVIDER_REPUTATION,
            c.weight,
            format!(
                "{per_thousand:.2} report/block points per 1,000 messages, limit {}",
                c.max_per_thousand
            ),
        )
    })
}

/// The content classifier's signal for a server-visible text, if it calls
/// it spam: the probability and the features that weighed most (words of the
/// message can appear, so the detail stays in the verdict and never goes to
/// logs).
pub fn content_signal(
    p: &Policy,
    model: &interop_spam_classifier::Model,
    text: &str,
) -> Option<Signal> {
    let score = model.score(text);
    if score < model.threshold() {
        return None;
    }
    let top: Vec<String> = model
        .explain(text, 3)
        .into_iter()
        .map(|(feature, weight)| format!("{feature} {weight:+.2}"))
        .collect();
    Some(signal(
        CONTENT_CLASSIFIER,
        p.content.classifier_weight,
        format!("p={score:.3}; {}", top.join("; ")),
    ))
}

/// `SUSPICIOUS_LINK`: a link check other than "has a URL" fired.
pub fn link_signal(p: &Policy, text: &str) -> Option<Signal> {
    let names: Vec<String> = interop_spam_classifier::links::signals(text)
        .into_iter()
        .filter(|s| s.name != "url")
        .map(|s| format!("{} x{}", s.name, s.count))
        .collect();
    (!names.is_empty()).then(|| signal(SUSPICIOUS_LINK, p.content.link_weight, names.join(", ")))
}

/// The verdict for a score.
pub fn verdict_for(p: &Policy, score: f64) -> Verdict {
    let t = &p.verdict;
    if score >= t.reject {
        Verdict::Reject
    } else if score >= t.quarantine {
        Verdict::Quarantine
    } else if score >= t.request {
        Verdict::Request
    } else {
        Verdict::Allow
    }
}

/// Every metadata signal of one message, then the content signals, summed
/// into a verdict.
pub fn evaluate(
    p: &Policy,
    o: &Observation,
    created_at_ms: i64,
    now_ms: i64,
    content: Vec<Signal>,
) -> SpamVerdict {
    let today = now_ms.div_euclid(86_400_000);
    let mut signals: Vec<Signal> = [
        sender_rate(p, o),
        stranger_fanout(p, o),
        first_contact_ratio(p, o),
        new_account(p, o, created_at_ms, now_ms),
        identical_payload(p, o),
        sender_reputation(p, o, today),
        provider_reputation(p, o, today),
    ]
    .into_iter()
    .flatten()
    .collect();
    signals.extend(content);
    let score: f64 = signals.iter().map(|s| s.weight).sum();
    SpamVerdict {
        verdict: verdict_for(p, score) as i32,
        score,
        signals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Policy {
        Policy::default()
    }

    fn stranger() -> Observation {
        Observation {
            to_stranger: true,
            ..Default::default()
        }
    }

    #[test]
    fn sender_rate_fires_one_over_the_limit() {
        let mut o = stranger();
        o.sent_this_minute = 600;
        assert!(sender_rate(&p(), &o).is_none());
        o.sent_this_minute = 601;
        let s = sender_rate(&p(), &o).unwrap();
        assert_eq!((s.name.as_str(), s.weight), (SENDER_RATE, 12.0));
        assert_eq!(verdict_for(&p(), s.weight), Verdict::Reject);
    }

    #[test]
    fn stranger_fanout_fires_one_over_the_limit_and_only_to_strangers() {
        let mut o = stranger();
        o.strangers_this_hour = 20;
        assert!(stranger_fanout(&p(), &o).is_none());
        o.strangers_this_hour = 21;
        assert_eq!(stranger_fanout(&p(), &o).unwrap().weight, 4.0);
        o.to_stranger = false;
        assert!(stranger_fanout(&p(), &o).is_none());
    }

    #[test]
    fn first_contact_ratio_needs_enough_recipients_and_a_high_share() {
        let mut o = stranger();
        o.recipients_this_hour = 9;
        o.strangers_this_hour = 9;
        assert!(
            first_contact_ratio(&p(), &o).is_none(),
            "too few recipients"
        );
        o.recipients_this_hour = 10;
        o.strangers_this_hour = 8;
        assert!(first_contact_ratio(&p(), &o).is_none(), "0.8 is the limit");
        o.strangers_this_hour = 9;
        assert_eq!(first_contact_ratio(&p(), &o).unwrap().weight, 2.0);
        o.to_stranger = false;
        assert!(first_contact_ratio(&p(), &o).is_none());
    }

    #[test]
    fn new_account_fires_under_the_age_limit_only_when_told() {
        let o = stranger();
        let now = 1_000 * 86_400_000;
        assert!(new_account(&p(), &o, 0, now).is_none(), "not told");
        let seven_days = 7 * 86_400_000;
        assert!(new_account(&p(), &o, now - seven_days, now).is_none());
        assert_eq!(
            new_account(&p(), &o, now - seven_days + 1, now)
                .unwrap()
                .weight,
            1.5
        );
    }

    #[test]
    fn identical_payload_fires_one_over_the_limit() {
        let mut o = stranger();
        o.payload_recipients_this_hour = 10;
        assert!(identical_payload(&p(), &o).is_none());
        o.payload_recipients_this_hour = 11;
        assert_eq!(identical_payload(&p(), &o).unwrap().weight, 3.0);
    }

    #[test]
    fn near_identical_texts_share_a_fingerprint_and_short_ones_have_none() {
        let env = |body: &str| Envelope {
            content: Some(Content::Text(interop_proto::v1::Text { body: body.into() })),
            ..Default::default()
        };
        let a = payload_hash(
            &env("You WON 500 EUR! Claim your prize now at our site"),
            20,
        );
        let b = payload_hash(
            &env("you won 9000 eur claim your prize now at our site!!"),
            20,
        );
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_ne!(
            a,
            payload_hash(&env("Lunch tomorrow at noon, shall I bring the cake?"), 20)
        );
        assert_eq!(payload_hash(&env("hi, how are you?"), 20), None);
        // Exactly the minimum (20 letters and digit runs) is fingerprinted.
        assert!(payload_hash(&env("abcdefghijklmnopqrs1"), 20).is_some());
        assert!(payload_hash(&env("abcdefghijklmnopqrs"), 20).is_none());
    }

    #[test]
    fn sender_reputation_decays_and_scales_with_points() {
        let today = 20_000;
        let mut o = stranger();
        o.sender_reputation = vec![("report:20000".into(), 1)];
        // One report today: 0.5^(0.5/7) = 0.952 points, under 1.0.
        assert!(sender_reputation(&p(), &o, today).is_none());
        o.sender_reputation = vec![("report:20000".into(), 2)];
        let s = sender_reputation(&p(), &o, today).unwrap();
        assert!((s.weight - 2.0 * 2.0 * 0.5f64.powf(0.5 / 7.0)).abs() < 1e-9);
        // The same two reports 14 days ago have decayed to a quarter.
        o.sender_reputation = vec![("report:19986".into(), 2)];
        assert!(sender_reputation(&p(), &o, today).is_none());
        // Capped.
        o.sender_reputation = vec![("report:20000".into(), 100)];
        assert_eq!(sender_reputation(&p(), &o, today).unwrap().weight, 8.0);
    }

    #[test]
    fn provider_reputation_is_a_rate_over_its_messages() {
        let today = 20_000;
        let mut o = stranger();
        o.provider_reputation = vec![("report:20000".into(), 30), ("msgs:20000".into(), 10_000)];
        assert!(
            provider_reputation(&p(), &o, today).is_none(),
            "3 per 1,000"
        );
        o.provider_reputation = vec![("report:20000".into(), 30), ("msgs:20000".into(), 4_000)];
        assert_eq!(provider_reputation(&p(), &o, today).unwrap().weight, 2.0);
        o.provider_reputation = vec![("report:20000".into(), 10), ("msgs:20000".into(), 100)];
        assert!(
            provider_reputation(&p(), &o, today).is_none(),
            "too few points"
        );
    }

    #[test]
    fn the_verdict_is_the_highest_threshold_reached_and_lists_what_fired() {
        assert_eq!(verdict_for(&p(), 2.99), Verdict::Allow);
        assert_eq!(verdict_for(&p(), 3.0), Verdict::Request);
        assert_eq!(verdict_for(&p(), 6.0), Verdict::Quarantine);
        assert_eq!(verdict_for(&p(), 12.0), Verdict::Reject);
        let mut o = stranger();
        o.strangers_this_hour = 50;
        o.recipients_this_hour = 50;
        o.payload_recipients_this_hour = 50;
        let v = evaluate(&p(), &o, 0, 1, Vec::new());
        let names: Vec<&str> = v.signals.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [STRANGER_FANOUT, FIRST_CONTACT_RATIO, IDENTICAL_PAYLOAD]
        );
        assert_eq!(v.score, 9.0);
        assert_eq!(v.verdict, Verdict::Quarantine as i32);
        let v = evaluate(&p(), &Observation::default(), 0, 1, Vec::new());
        assert_eq!((v.verdict, v.score), (Verdict::Allow as i32, 0.0));
    }

    #[test]
    fn the_classifier_and_link_signals_fire_on_spam_and_explain_themselves() {
        let model = interop_spam_classifier::embedded_model().unwrap();
        let spam = "WINNER!! You have won a FREE prize of 1000 GBP cash. Call 09061701461 now to claim, T&C apply";
        let s = content_signal(&p(), &model, spam).expect("obvious spam");
        assert_eq!((s.name.as_str(), s.weight), (CONTENT_CLASSIFIER, 4.0));
        assert_eq!(s.detail.split("; ").count(), 4, "{}", s.detail);
        assert!(content_signal(
            &p(),
            &model,
            "Are we still on for lunch tomorrow? I can pick you up at noon"
        )
        .is_none());
        let s = link_signal(&p(), "see http://bit.ly/abc now").expect("a shortener");
        assert_eq!(s.name, SUSPICIOUS_LINK);
        assert!(s.detail.contains("url_shortener"), "{}", s.detail);
        assert!(link_signal(&p(), "see https://example.org/menu").is_none());
    }
}
