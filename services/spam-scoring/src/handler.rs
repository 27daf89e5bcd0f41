//! Handler of `interop.v1.ingest.accepted`.
//!
//! Input: a `PipelineMessage` with the envelope. Output: the same message
//! with `verdict` set, on `interop.v1.spam-scoring.scored` (Nats-Msg-Id = the
//! server message id), or a FAILED receipt to the sender when rejected.

use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;

use interop_bus::subjects::SPAM_SCORED;
use interop_bus::{pipeline, HandleError, Handler, Input, Outgoing};
use interop_proto::v1::{ReceiptStatus, RejectCode, Signal, SpamVerdict, Verdict};
use interop_state::RateCounter;
use interop_telemetry::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// A verdict name (a fixed set: bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    pub verdict: &'static str,
}

/// Scores messages.
pub struct Scorer {
    sender_rate: RateCounter,
    max_sender_per_minute: u64,
    model: std::sync::Arc<interop_spam_classifier::Model>,
    verdicts: Family<VerdictLabel, Counter>,
    classifier_spam: Counter,
}

impl Scorer {
    pub fn new(
        redis: redis::aio::ConnectionManager,
        max_sender_per_minute: u64,
        model: std::sync::Arc<interop_spam_classifier::Model>,
        metrics: &Metrics,
    ) -> Self {
        let verdicts = Family::<VerdictLabel, Counter>::default();
        let classifier_spam = Counter::default();
        metrics.register(
            "interop_spam_scoring_verdicts",
            "Verdicts, by verdict.",
            verdicts.clone(),
        );
        metrics.register(
            "interop_spam_scoring_classifier_spam",
            "Server-visible texts the content classifier called spam.",
            classifier_spam.clone(),
        );
        Self {
            sender_rate: RateCounter::new(redis, "sender", 60),
            max_sender_per_minute,
            model,
            verdicts,
            classifier_spam,
        }
    }

    /// The verdict for a sender who sent `count` messages this minute.
    pub fn verdict_for_rate(&self, count: u64) -> SpamVerdict {
        if count > self.max_sender_per_minute {
            SpamVerdict {
                verdict: Verdict::Reject as i32,
                score: 1.0,
                signals: vec![Signal {
                    name: "SENDER_RATE".into(),
                    weight: 1.0,
                    detail: format!(
                        "{count} messages this minute, limit {}",
                        self.max_sender_per_minute
                    ),
                }],
            }
        } else {
            SpamVerdict {
                verdict: Verdict::Allow as i32,
                score: 0.0,
                signals: Vec::new(),
            }
        }
    }
}

impl Handler for Scorer {
    async fn handle(&self, input: Input<'_>) -> Result<Vec<Outgoing>, HandleError> {
        let mut pm = pipeline::decode(input.payload)?;
        let env = pm
            .envelope
            .as_ref()
            .ok_or_else(|| HandleError::Permanent("no envelope".into()))?;
        let count = self
            .sender_rate
            .hit(&env.from)
            .await
            .map_err(|e| HandleError::Retry {
                reason: e.to_string(),
                after: Duration::from_millis(500),
            })?;
        let mut verdict = self.verdict_for_rate(count);
        if let Some(interop_proto::v1::envelope::Content::Text(t)) = &env.content {
            if let Some(signal) = content_signal(&self.model, &t.body) {
                self.classifier_spam.inc();
                verdict.score = verdict.score.max(signal.weight);
                verdict.signals.push(signal);
            }
        }
        let name = Verdict::try_from(verdict.verdict)
            .unwrap_or(Verdict::Unspecified)
            .as_str_name();
        self.verdicts
            .get_or_create(&VerdictLabel { verdict: name })
            .inc();
        if verdict.verdict == Verdict::Reject as i32 {
            let detail = verdict
                .signals
                .first()
                .map(|s| s.detail.clone())
                .unwrap_or_default();
            return Ok(vec![pipeline::receipt_to_sender(
                env,
                ReceiptStatus::Failed,
                RejectCode::Spam,
                &detail,
            )]);
        }
        let msg_id = env.message_id.clone();
        pm.verdict = Some(verdict);
        Ok(vec![Outgoing {
            subject: SPAM_SCORED.to_owned(),
            msg_id,
            payload: Bytes::from(pm.encode_to_vec()),
        }])
    }
}

/// The content classifier's signal for a server-visible text, if it calls
/// it spam: the probability and the features that weighed most (words of the
/// message can appear, so the detail stays in the verdict and never goes to
/// logs).
pub fn content_signal(model: &interop_spam_classifier::Model, text: &str) -> Option<Signal> {
    let score = model.score(text);
    if score < model.threshold() {
        return None;
    }
    let top: Vec<String> = model
        .explain(text, 3)
        .into_iter()
        .map(|(feature, weight)| format!("{feature} {weight:+.2}"))
        .collect();
    Some(Signal {
        name: "CONTENT_CLASSIFIER".into(),
        weight: score,
        detail: top.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classifier_signal_fires_on_spam_and_explains_itself() {
        let model = interop_spam_classifier::embedded_model().unwrap();
        let spam = "WINNER!! You have won a FREE prize of 1000 GBP cash. Call 09061701461 now to claim, T&C apply";
        let signal = content_signal(&model, spam).expect("obvious spam");
        assert_eq!(signal.name, "CONTENT_CLASSIFIER");
        assert!(signal.weight >= model.threshold() && signal.weight <= 1.0);
        assert_eq!(signal.detail.split("; ").count(), 3, "{}", signal.detail);
        assert!(content_signal(
            &model,
            "Are we still on for lunch tomorrow? I can pick you up at noon"
        )
        .is_none());
    }
}
