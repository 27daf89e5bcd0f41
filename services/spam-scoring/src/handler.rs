//! Scoring one message.
//!
//! Input: a `PipelineMessage` with the envelope. One Redis round trip counts
//! the message in spam-scoring's counters ([`interop_state::spam`]); the
//! signals ([`crate::signals`]) turn them into a verdict, which routing acts
//! on (ALLOW, REQUEST, QUARANTINE; REJECT: a FAILED receipt with code `SPAM`
//! to the sender).

use std::sync::Arc;

use interop_proto::v1::{envelope, PipelineMessage, SpamVerdict, Verdict};
use interop_telemetry::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::policy::Policy;
use crate::signals;

/// A verdict name (a fixed set: bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    pub verdict: &'static str,
}

/// A signal name (a fixed set: bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabel {
    pub signal: String,
}

/// Scores messages.
pub struct Scorer {
    redis: redis::aio::ConnectionManager,
    policy: Arc<Policy>,
    model: Arc<interop_spam_classifier::Model>,
    verdicts: Family<VerdictLabel, Counter>,
    signals_fired: Family<SignalLabel, Counter>,
}

impl Scorer {
    pub fn new(
        redis: redis::aio::ConnectionManager,
        policy: Arc<Policy>,
        model: Arc<interop_spam_classifier::Model>,
        metrics: &Metrics,
    ) -> Self {
        let verdicts = Family::<VerdictLabel, Counter>::default();
        let signals_fired = Family::<SignalLabel, Counter>::default();
        metrics.register(
            "interop_spam_scoring_verdicts",
            "Verdicts, by verdict.",
            verdicts.clone(),
        );
        metrics.register(
            "interop_spam_scoring_signals",
            "Signals that fired, by signal name.",
            signals_fired.clone(),
        );
        Self {
            redis,
            policy,
            model,
            verdicts,
            signals_fired,
        }
    }
}

impl Scorer {
    /// Scores one message: counts it in spam-scoring's counters (one Redis
    /// round trip) and evaluates the signals into an explainable verdict.
    pub async fn score(&self, pm: &PipelineMessage) -> Result<SpamVerdict, ScoreError> {
        let env = pm
            .envelope
            .as_ref()
            .ok_or_else(|| ScoreError::Permanent("no envelope".into()))?;
        let p = &self.policy;
        let hash = signals::payload_hash(env, p.identical_payload.min_text_chars);
        let observation = interop_state::spam::observe(
            &self.redis,
            &env.from,
            &pm.sender_provider,
            &env.to,
            hash.as_deref(),
        )
        .await
        .map_err(|e| ScoreError::Retry(e.to_string()))?;
        let mut content = Vec::new();
        if let Some(envelope::Content::Text(t)) = &env.content {
            content.extend(signals::content_signal(p, &self.model, &t.body));
            content.extend(signals::link_signal(p, &t.body));
        }
        let verdict = signals::evaluate(
            p,
            &observation,
            env.sender_account_created_at_ms,
            interop_proto::now_ms(),
            content,
        );
        let v = Verdict::try_from(verdict.verdict).unwrap_or(Verdict::Unspecified);
        self.verdicts
            .get_or_create(&VerdictLabel {
                verdict: v.as_str_name(),
            })
            .inc();
        for s in &verdict.signals {
            self.signals_fired
                .get_or_create(&SignalLabel {
                    signal: s.name.clone(),
                })
                .inc();
        }
        Ok(verdict)
    }
}

/// Why a message was not scored.
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// Not now (Redis unavailable): the caller retries later.
    #[error("cannot score now: {0}")]
    Retry(String),
    /// Never (the message is malformed).
    #[error("cannot score: {0}")]
    Permanent(String),
}
