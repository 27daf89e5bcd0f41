//! Scoring messages.
//!
//! Input: the `PipelineMessage`s of one score request, each with its
//! envelope. One Redis script call counts all of them in spam-scoring's
//! counters ([`interop_state::spam::observe_batch`]), message after
//! message; the signals ([`crate::signals`]) turn each one's counters into
//! a verdict, which routing acts on (ALLOW, REQUEST, QUARANTINE; REJECT: a
//! FAILED receipt with code `SPAM` to the sender).

use std::sync::Arc;

use interop_proto::v1::{envelope, Envelope, PipelineMessage, SpamVerdict, Verdict};
use interop_state::spam::{Observation, ObservationInput};
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
    /// script call) and evaluates the signals into an explainable verdict.
    pub async fn score(&self, pm: &PipelineMessage) -> Result<SpamVerdict, ScoreError> {
        self.score_batch(std::slice::from_ref(pm), &[])
            .await
            .pop()
            .unwrap_or_else(|| Err(ScoreError::Retry("no result".into())))
    }

    /// Scores the messages of one score request, each as [`Scorer::score`]
    /// would one after another, with one Redis script call for all of them
    /// ([`interop_state::spam::observe_batch`]): message i's counters
    /// include messages 0..i. One result per message, in order; a message
    /// without an envelope fails alone, Redis unavailable fails them all
    /// (to be retried). `spans[i]`, where given, is entered while message
    /// i's signals are evaluated.
    pub async fn score_batch(
        &self,
        messages: &[PipelineMessage],
        spans: &[tracing::Span],
    ) -> Vec<Result<SpamVerdict, ScoreError>> {
        let p = &self.policy;
        let hashes: Vec<Option<String>> = messages
            .iter()
            .map(|pm| {
                pm.envelope
                    .as_ref()
                    .and_then(|env| signals::payload_hash(env, p.identical_payload.min_text_chars))
            })
            .collect();
        let inputs: Vec<ObservationInput<'_>> = messages
            .iter()
            .zip(&hashes)
            .filter_map(|(pm, hash)| {
                let env = pm.envelope.as_ref()?;
                Some(ObservationInput {
                    from: &env.from,
                    provider: &pm.sender_provider,
                    to: &env.to,
                    payload_hash: hash.as_deref(),
                })
            })
            .collect();
        let mut observed = match interop_state::spam::observe_batch(&self.redis, &inputs).await {
            Ok(o) => o.into_iter(),
            Err(e) => {
                let reason = e.to_string();
                return messages
                    .iter()
                    .map(|pm| match pm.envelope {
                        Some(_) => Err(ScoreError::Retry(reason.clone())),
                        None => Err(no_envelope()),
                    })
                    .collect();
            }
        };
        let now_ms = interop_proto::now_ms();
        messages
            .iter()
            .enumerate()
            .map(|(i, pm)| {
                let _entered = spans.get(i).map(tracing::Span::enter);
                let env = pm.envelope.as_ref().ok_or_else(no_envelope)?;
                let observation = observed
                    .next()
                    .ok_or_else(|| ScoreError::Retry("fewer counters than messages".into()))?;
                Ok(self.verdict(env, &observation, now_ms))
            })
            .collect()
    }

    /// Evaluates the signals of one counted message into a verdict, and
    /// counts it in the metrics.
    fn verdict(&self, env: &Envelope, observation: &Observation, now_ms: i64) -> SpamVerdict {
        let p = &self.policy;
        let mut content = Vec::new();
        if let Some(envelope::Content::Text(t)) = &env.content {
            content.extend(signals::content_signal(p, &self.model, &t.body));
            content.extend(signals::link_signal(p, &t.body));
        }
        let verdict = signals::evaluate(
            p,
            observation,
            env.sender_account_created_at_ms,
            now_ms,
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
        verdict
    }
}

fn no_envelope() -> ScoreError {
    ScoreError::Permanent("no envelope".into())
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
