//! Evaluation: metrics of a model on a labeled corpus, and k-fold cross-validation of training.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::model::{Encoded, Model, TrainParams};
use crate::rng::stratified_folds;

/// Classification metrics at the model's threshold, spam being the positive class. Serialises to one flat JSON
/// object. Ratios with a zero denominator are 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Examples evaluated.
    pub n: usize,
    /// Spam flagged as spam.
    pub tp: usize,
    /// Ham flagged as spam.
    pub fp: usize,
    /// Ham passed as ham.
    pub tn: usize,
    /// Spam passed as ham.
    #[serde(rename = "fn")]
    pub fn_: usize,
    /// tp / (tp + fp).
    pub precision: f64,
    /// tp / (tp + fn): the share of spam caught.
    pub recall: f64,
    /// fp / (fp + tn): the share of ham flagged.
    pub fpr: f64,
    /// (tp + tn) / n.
    pub accuracy: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Scoring throughput on this corpus, one thread, in messages per second.
    pub msgs_per_s: f64,
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl Metrics {
    /// Metrics of `(is_spam, flagged)` pairs, with a measured throughput.
    pub fn from_outcomes(
        outcomes: impl IntoIterator<Item = (bool, bool)>,
        msgs_per_s: f64,
    ) -> Metrics {
        let (mut tp, mut fp, mut tn, mut fn_) = (0, 0, 0, 0);
        for outcome in outcomes {
            match outcome {
                (true, true) => tp += 1,
                (false, true) => fp += 1,
                (false, false) => tn += 1,
                (true, false) => fn_ += 1,
            }
        }
        let precision = ratio(tp, tp + fp);
        let recall = ratio(tp, tp + fn_);
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Metrics {
            n: tp + fp + tn + fn_,
            tp,
            fp,
            tn,
            fn_,
            precision,
            recall,
            fpr: ratio(fp, fp + tn),
            accuracy: ratio(tp + tn, tp + fp + tn + fn_),
            f1,
            msgs_per_s,
        }
    }
}

/// Scores every text, repeating the pass until 100 ms have gone by (at most 1,000 passes), and returns the
/// flags of the first pass and the messages scored per second over all passes.
fn timed_flags<S: AsRef<str>>(model: &Model, texts: &[S]) -> (Vec<bool>, f64) {
    let threshold = model.threshold();
    let start = Instant::now();
    let flags: Vec<bool> = texts
        .iter()
        .map(|t| model.score(t.as_ref()) >= threshold)
        .collect();
    let mut scored = texts.len();
    let mut passes = 1;
    while start.elapsed() < Duration::from_millis(100) && passes < 1000 && !texts.is_empty() {
        let mut spam = 0usize;
        for text in texts {
            spam += usize::from(std::hint::black_box(model.score(text.as_ref())) >= threshold);
        }
        std::hint::black_box(spam);
        scored += texts.len();
        passes += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    (
        flags,
        if secs > 0.0 {
            scored as f64 / secs
        } else {
            0.0
        },
    )
}

/// Metrics of `model` on `corpus` of `(is_spam, text)`, at the model's threshold.
pub fn evaluate<S: AsRef<str>>(model: &Model, corpus: &[(bool, S)]) -> Metrics {
    let texts: Vec<&str> = corpus.iter().map(|(_, t)| t.as_ref()).collect();
    let (flags, msgs_per_s) = timed_flags(model, &texts);
    Metrics::from_outcomes(corpus.iter().map(|&(l, _)| l).zip(flags), msgs_per_s)
}

/// Stratified `k`-fold cross-validation: folds are dealt from `corpus` shuffled with `seed`, a model is trained
/// with `params` on all folds but one (threshold included, by its own inner cross-validation) and scored on the
/// one held out. Returns the metrics pooled over the `k` held-out folds; `msgs_per_s` is their mean.
///
/// # Panics
///
/// If `k < 2` or `k > corpus.len()` ([`crate::cli::cross_validate`] checks this and returns an error instead).
pub fn cross_validate<S: AsRef<str>>(
    corpus: &[(bool, S)],
    k: usize,
    params: &TrainParams,
    seed: u64,
) -> Metrics {
    assert!(
        (2..=corpus.len()).contains(&k),
        "cross-validation needs 2 <= k <= {} examples, got k = {k}",
        corpus.len()
    );
    let (outcomes, rates) = out_of_fold(corpus, k, params, seed);
    Metrics::from_outcomes(outcomes, rates.iter().sum::<f64>() / rates.len() as f64)
}

/// `(is_spam, flagged)` of every example when held out, in corpus order, and the throughput of each fold.
pub(crate) fn out_of_fold<S: AsRef<str>>(
    corpus: &[(bool, S)],
    k: usize,
    params: &TrainParams,
    seed: u64,
) -> (Vec<(bool, bool)>, Vec<f64>) {
    let labels: Vec<bool> = corpus.iter().map(|&(l, _)| l).collect();
    let data = Encoded::new(
        corpus.iter().map(|(_, t)| t.as_ref()),
        params.clamped_bits(),
    );
    let params = TrainParams {
        hash_bits: params.clamped_bits(),
        ..params.clone()
    };
    let folds = stratified_folds(&labels, k, seed);
    let mut outcomes = vec![(false, false); corpus.len()];
    let mut rates = Vec::with_capacity(k);
    for fold in 0..k {
        let train: Vec<usize> = (0..corpus.len()).filter(|&i| folds[i] != fold).collect();
        let test: Vec<usize> = (0..corpus.len()).filter(|&i| folds[i] == fold).collect();
        let model = Model::train_encoded(&data, &labels, &train, &params);
        let texts: Vec<&str> = test.iter().map(|&i| corpus[i].1.as_ref()).collect();
        let (flags, rate) = timed_flags(&model, &texts);
        for (&i, flag) in test.iter().zip(flags) {
            outcomes[i] = (labels[i], flag);
        }
        rates.push(rate);
    }
    (outcomes, rates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_from_counts() {
        let outcomes = [
            (true, true),
            (true, true),
            (true, false),
            (false, true),
            (false, false),
            (false, false),
        ];
        let m = Metrics::from_outcomes(outcomes, 5.0);
        assert_eq!((m.n, m.tp, m.fp, m.tn, m.fn_), (6, 2, 1, 2, 1));
        assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.fpr - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert!((m.f1 - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn metrics_serialise_to_one_flat_object() {
        let m = Metrics::from_outcomes([], 0.0);
        assert_eq!(
            (m.precision, m.recall, m.fpr, m.accuracy),
            (0.0, 0.0, 0.0, 0.0)
        );
        let json = serde_json::to_value(m).unwrap();
        let object = json.as_object().unwrap();
        for key in [
            "precision",
            "recall",
            "fpr",
            "accuracy",
            "n",
            "msgs_per_s",
            "tp",
            "fp",
            "tn",
            "fn",
            "f1",
        ] {
            assert!(object.contains_key(key), "{key} missing from {json}");
        }
        assert!(object.values().all(serde_json::Value::is_number), "{json}");
    }
}
