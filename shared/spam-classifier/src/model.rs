//! The model: training, scoring and explanation. The file format is in [`crate::codec`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::features::{self, Sink};
use crate::rng::{stratified_folds, SplitMix64};

/// Training hyper-parameters. `Default` holds the values chosen by 5-fold cross-validation on the development
/// corpus (see the crate documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainParams {
    /// Features are hashed into `2^hash_bits` weights; clamped to `10..=24`.
    pub hash_bits: u8,
    /// Passes of AdaGrad over the training set (of each committee member).
    pub epochs: u32,
    /// AdaGrad base learning rate.
    pub learning_rate: f32,
    /// L2 penalty, applied at each example to the weights of its features.
    pub l2: f32,
    /// Laplace smoothing of the naive Bayes log-count ratios that scale each feature (NB-SVM); `0` disables
    /// the scaling and trains a plain linear SVM.
    pub nb_alpha: f32,
    /// Hinge-loss weight of a spam example relative to a ham one.
    pub spam_weight: f32,
    /// The threshold is set so that at most this fraction of ham (rounded down) scores at or above it out of
    /// fold in the committee's cross-validation.
    pub target_fpr: f64,
    /// Members of the committee, i.e. folds of the cross-validation that sets the threshold; below 2 fits one
    /// SVM on everything and keeps the threshold at 0.5.
    pub threshold_folds: u32,
    /// Seed of the example order and of the committee's folds.
    pub seed: u64,
}

impl Default for TrainParams {
    fn default() -> Self {
        Self {
            hash_bits: 18,
            epochs: 10,
            learning_rate: 0.05,
            l2: 2e-3,
            nb_alpha: 1.0,
            spam_weight: 1.0,
            target_fpr: 0.0015,
            threshold_folds: 5,
            seed: 0x5eed,
        }
    }
}

impl TrainParams {
    pub(crate) fn clamped_bits(&self) -> u8 {
        self.hash_bits.clamp(MIN_HASH_BITS, MAX_HASH_BITS)
    }
}

pub(crate) const MIN_HASH_BITS: u8 = 10;
pub(crate) const MAX_HASH_BITS: u8 = 24;

/// A trained classifier: one weight per feature bucket, a bias, and the decision threshold.
///
/// `Model::train` is deterministic: the same examples and parameters give the same model, byte for byte.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub(crate) params: TrainParams,
    pub(crate) threshold: f64,
    pub(crate) bias: f32,
    /// Quantisation step: every weight is an `i16` multiple of it (see [`crate::codec`]).
    pub(crate) scale: f32,
    /// `2^hash_bits` weights, NB ratios already folded in.
    pub(crate) weights: Vec<f32>,
}

/// Examples as sparse rows of `(bucket, value)`, value = count / sqrt(number of feature occurrences).
pub(crate) struct Encoded {
    bits: u8,
    offsets: Vec<usize>,
    buckets: Vec<u32>,
    values: Vec<f32>,
}

struct Buckets<'a> {
    mask: u64,
    out: &'a mut Vec<u32>,
}

impl Sink for Buckets<'_> {
    #[inline(always)]
    fn emit(&mut self, hash: u64, _describe: impl FnOnce() -> String) {
        // The mask keeps the value below 2^24, which fits in u32.
        self.out.push((hash & self.mask) as u32);
    }
}

impl Encoded {
    pub(crate) fn new<S: AsRef<str>>(texts: impl IntoIterator<Item = S>, bits: u8) -> Self {
        let mask = (1u64 << bits) - 1;
        let mut encoded = Self {
            bits,
            offsets: vec![0],
            buckets: Vec::new(),
            values: Vec::new(),
        };
        let mut scratch = Vec::new();
        for text in texts {
            scratch.clear();
            features::extract(
                text.as_ref(),
                &mut Buckets {
                    mask,
                    out: &mut scratch,
                },
            );
            let norm = 1.0 / (scratch.len().max(1) as f32).sqrt();
            scratch.sort_unstable();
            let mut i = 0;
            while i < scratch.len() {
                let bucket = scratch[i];
                let mut j = i;
                while j < scratch.len() && scratch[j] == bucket {
                    j += 1;
                }
                encoded.buckets.push(bucket);
                encoded.values.push((j - i) as f32 * norm);
                i = j;
            }
            encoded.offsets.push(encoded.buckets.len());
        }
        encoded
    }

    fn row(&self, i: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let range = self.offsets[i]..self.offsets[i + 1];
        self.buckets[range.clone()]
            .iter()
            .map(|&b| b as usize)
            .zip(self.values[range].iter().copied())
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// A linear model over the encoded features, before quantisation.
struct Linear {
    weights: Vec<f32>,
    bias: f32,
}

impl Linear {
    fn margin(&self, data: &Encoded, i: usize) -> f64 {
        let sum: f64 = data
            .row(i)
            .map(|(j, x)| f64::from(self.weights[j] * x))
            .sum();
        f64::from(self.bias) + sum
    }
}

/// Naive Bayes log-count ratios r_j = log((p_j / |p|) / (q_j / |q|)), where p and q count, with smoothing
/// `alpha`, the spam and ham examples that have feature j.
fn nb_ratios(data: &Encoded, labels: &[bool], rows: &[usize], alpha: f32) -> Vec<f32> {
    let dim = 1usize << data.bits;
    let mut spam = vec![alpha; dim];
    let mut ham = vec![alpha; dim];
    for &i in rows {
        let counts = if labels[i] { &mut spam } else { &mut ham };
        for (j, _) in data.row(i) {
            counts[j] += 1.0;
        }
    }
    let spam_total: f64 = spam.iter().map(|&c| f64::from(c)).sum();
    let ham_total: f64 = ham.iter().map(|&c| f64::from(c)).sum();
    let offset = (ham_total / spam_total).ln();
    spam.iter()
        .zip(&ham)
        .map(|(&s, &h)| ((f64::from(s) / f64::from(h)).ln() + offset) as f32)
        .collect()
}

/// A linear SVM (hinge loss, AdaGrad, L2 on the weights of the features of each example seen) on the NB-scaled
/// features of `rows`; the scaling is folded into the returned weights.
fn fit(data: &Encoded, labels: &[bool], rows: &[usize], params: &TrainParams) -> Linear {
    let dim = 1usize << data.bits;
    let ratios = if params.nb_alpha > 0.0 {
        nb_ratios(data, labels, rows, params.nb_alpha)
    } else {
        vec![1.0; dim]
    };
    // Each example's values times the NB ratios, computed once. The loops below index slices rather than chain
    // iterators: tests train in debug builds, where that is several times faster.
    let mut scaled = data.values.clone();
    for &i in rows {
        for k in data.offsets[i]..data.offsets[i + 1] {
            scaled[k] *= ratios[data.buckets[k] as usize];
        }
    }
    let mut weights = vec![0.0f32; dim];
    let mut grad_sq = vec![0.0f32; dim];
    // Slices, not `Vec`s, in the loop: `Vec` indexing is a function call in debug builds.
    let (w, g2, all_buckets, all_values) = (
        &mut weights[..],
        &mut grad_sq[..],
        &data.buckets[..],
        &scaled[..],
    );
    let mut bias = 0.0f32;
    let mut bias_grad_sq = 0.0f32;
    let mut order = rows.to_vec();
    let mut rng = SplitMix64::new(params.seed);
    let (lr, l2) = (params.learning_rate, params.l2);
    for _ in 0..params.epochs {
        rng.shuffle(&mut order);
        for &i in &order {
            let (y, cost) = if labels[i] {
                (1.0, params.spam_weight)
            } else {
                (-1.0, 1.0)
            };
            let (start, end) = (data.offsets[i], data.offsets[i + 1]);
            let mut margin = bias;
            let mut k = start;
            while k < end {
                margin += w[all_buckets[k] as usize] * all_values[k];
                k += 1;
            }
            // Hinge loss: only examples inside the margin move the weights, but the L2 step applies to all.
            let g = if y * margin < 1.0 { -y * cost } else { 0.0 };
            let mut k = start;
            while k < end {
                let j = all_buckets[k] as usize;
                let gj = g * all_values[k] + l2 * w[j];
                if gj != 0.0 {
                    g2[j] += gj * gj;
                    w[j] -= lr * gj / g2[j].sqrt();
                }
                k += 1;
            }
            if g != 0.0 {
                bias_grad_sq += g * g;
                bias -= lr * g / bias_grad_sq.sqrt();
            }
        }
    }
    for (w, r) in weights.iter_mut().zip(&ratios) {
        *w *= r;
    }
    Linear { weights, bias }
}

/// Trains the model on `rows` by a `threshold_folds`-fold stratified cross-validation committee: one linear model
/// per fold, trained on the other folds; the final model is their average, and the threshold is set on the
/// out-of-fold margins (see [`threshold_for_fpr`]). Averaging makes the final model as confident as the models
/// whose out-of-fold margins set the threshold, which a model refitted on all rows would not be. Returns the
/// threshold margin and the model; with fewer than `threshold_folds` examples of a class (or fewer than two
/// folds), one model fitted on all rows and a threshold margin of 0.
fn committee(
    data: &Encoded,
    labels: &[bool],
    rows: &[usize],
    params: &TrainParams,
) -> (f64, Linear) {
    let k = params.threshold_folds as usize;
    let row_labels: Vec<bool> = rows.iter().map(|&i| labels[i]).collect();
    let n_spam = row_labels.iter().filter(|&&s| s).count();
    let n_ham = rows.len() - n_spam;
    if k < 2 || n_spam < k || n_ham < k {
        return (0.0, fit(data, labels, rows, params));
    }
    let folds = stratified_folds(&row_labels, k, params.seed ^ 0x7468_7265_7368);
    let mut oof = vec![0.0f64; rows.len()];
    let mut average = Linear {
        weights: vec![0.0; 1 << data.bits],
        bias: 0.0,
    };
    let share = 1.0 / k as f32;
    for fold in 0..k {
        let train: Vec<usize> = (0..rows.len())
            .filter(|&r| folds[r] != fold)
            .map(|r| rows[r])
            .collect();
        let model = fit(data, labels, &train, params);
        for r in (0..rows.len()).filter(|&r| folds[r] == fold) {
            oof[r] = model.margin(data, rows[r]);
        }
        for (sum, w) in average.weights.iter_mut().zip(&model.weights) {
            *sum += w * share;
        }
        average.bias += model.bias * share;
    }
    (
        threshold_for_fpr(&oof, &row_labels, params.target_fpr),
        average,
    )
}

/// The threshold (in score units; spam when score >= threshold) that lets at most `floor(target_fpr * n_ham)` ham
/// scores pass, as low as possible so recall is as high as possible.
pub(crate) fn threshold_for_fpr(scores: &[f64], labels: &[bool], target_fpr: f64) -> f64 {
    let mut ham: Vec<f64> = scores
        .iter()
        .zip(labels)
        .filter(|(_, &l)| !l)
        .map(|(&s, _)| s)
        .collect();
    if ham.is_empty() {
        return f64::NEG_INFINITY;
    }
    ham.sort_unstable_by(|a, b| b.total_cmp(a));
    let allowed = (target_fpr.max(0.0) * ham.len() as f64).floor() as usize;
    let Some(&blocked) = ham.get(allowed) else {
        return f64::NEG_INFINITY;
    };
    let next = scores
        .iter()
        .copied()
        .filter(|&s| s > blocked)
        .min_by(f64::total_cmp);
    match next {
        Some(next) => blocked + (next - blocked) / 2.0,
        None => blocked + 1.0,
    }
}

impl Model {
    /// Trains a model on `examples` of `(is_spam, text)`.
    ///
    /// Features are hashed (see the crate documentation), scaled by naive Bayes log-count ratios and fitted by a
    /// linear SVM; the model is the average of a `threshold_folds`-fold cross-validation committee whose
    /// out-of-fold scores set the threshold (see [`TrainParams::target_fpr`]). Any input is accepted: with fewer
    /// examples of a class than `threshold_folds`, one SVM is fitted on everything and the threshold stays at 0.5;
    /// without examples all scores are 0.5.
    pub fn train<S: AsRef<str>>(examples: &[(bool, S)], params: &TrainParams) -> Model {
        let params = TrainParams {
            hash_bits: params.clamped_bits(),
            ..params.clone()
        };
        let data = Encoded::new(examples.iter().map(|(_, t)| t.as_ref()), params.hash_bits);
        let labels: Vec<bool> = examples.iter().map(|&(l, _)| l).collect();
        let rows: Vec<usize> = (0..examples.len()).collect();
        Self::train_encoded(&data, &labels, &rows, &params)
    }

    /// Trains on the given `rows` of pre-encoded examples (cross-validation encodes the corpus once).
    pub(crate) fn train_encoded(
        data: &Encoded,
        labels: &[bool],
        rows: &[usize],
        params: &TrainParams,
    ) -> Model {
        let (threshold, linear) = committee(data, labels, rows, params);
        Self::quantised(params.clone(), linear, sigmoid(threshold))
    }

    /// Rounds the weights to `i16` multiples of a common step, so a saved and loaded model is the same model.
    fn quantised(params: TrainParams, linear: Linear, threshold: f64) -> Model {
        let max = linear.weights.iter().fold(0.0f32, |m, w| m.max(w.abs()));
        let scale = if max > 0.0 && max.is_finite() {
            max / f32::from(i16::MAX)
        } else {
            1.0
        };
        let weights = linear
            .weights
            .iter()
            .map(|&w| f32::from(quantise(w, scale)) * scale)
            .collect();
        Model {
            params,
            threshold,
            bias: linear.bias,
            scale,
            weights,
        }
    }

    /// Spam score of `text` in `[0, 1]`; spam when `score >= threshold()`. Allocation-free; any text is valid.
    pub fn score(&self, text: &str) -> f64 {
        sigmoid(self.margin(text))
    }

    /// Whether `text` is spam at the model's threshold.
    pub fn is_spam(&self, text: &str) -> bool {
        self.score(text) >= self.threshold
    }

    fn margin(&self, text: &str) -> f64 {
        let mut acc = Accumulate {
            weights: &self.weights,
            mask: (self.weights.len() - 1) as u64,
            sum: 0.0,
            count: 0,
        };
        features::extract(text, &mut acc);
        f64::from(self.bias) + acc.sum / f64::from(acc.count.max(1)).sqrt()
    }

    /// The decision threshold chosen in training: a score at or above it is spam.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// The model's bias: a text's score is the logistic function of `bias()` plus the
    /// contributions of all its features (see [`Model::explain`]).
    pub fn bias(&self) -> f64 {
        f64::from(self.bias)
    }

    /// The parameters the model was trained with.
    pub fn params(&self) -> &TrainParams {
        &self.params
    }

    /// Number of non-zero weights (hash buckets the model uses).
    pub fn nonzero_weights(&self) -> usize {
        self.weights.iter().filter(|&&w| w != 0.0).count()
    }

    /// The `top` features of `text` with the largest contributions to its margin, largest magnitude first
    /// (positive pushes toward spam). The margin is the model's bias plus the sum of all contributions, and the
    /// score is its logistic function. A feature that occurs several times is listed once with its summed
    /// contribution; features whose hash bucket has no weight are left out. Descriptions look like
    /// `word "free"`, `bigram "call <phone>"`, `chars "_cla"` (`_` is a word boundary) or `link url`; two features
    /// may share a bucket, in which case the contribution is that of the bucket.
    pub fn explain(&self, text: &str, top: usize) -> Vec<(String, f64)> {
        let mut collect = Describe {
            mask: (self.weights.len() - 1) as u64,
            found: Vec::new(),
        };
        features::extract(text, &mut collect);
        let norm = 1.0 / (collect.found.len().max(1) as f64).sqrt();
        let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
        for (bucket, name) in collect.found {
            let w = f64::from(self.weights[bucket]);
            if w != 0.0 {
                *by_name.entry(name).or_default() += w * norm;
            }
        }
        let mut contributions: Vec<(String, f64)> = by_name.into_iter().collect();
        contributions.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()).then_with(|| a.0.cmp(&b.0)));
        contributions.truncate(top);
        contributions
    }
}

pub(crate) fn quantise(w: f32, scale: f32) -> i16 {
    // `as` saturates, and |w| <= max = scale * i16::MAX, so this is only a rounding.
    (w / scale).round() as i16
}

struct Accumulate<'a> {
    weights: &'a [f32],
    mask: u64,
    sum: f64,
    count: u32,
}

impl Sink for Accumulate<'_> {
    #[inline(always)]
    fn emit(&mut self, hash: u64, _describe: impl FnOnce() -> String) {
        self.sum += f64::from(self.weights[(hash & self.mask) as usize]);
        self.count = self.count.saturating_add(1);
    }
}

struct Describe {
    mask: u64,
    found: Vec<(usize, String)>,
}

impl Sink for Describe {
    fn emit(&mut self, hash: u64, describe: impl FnOnce() -> String) {
        self.found.push(((hash & self.mask) as usize, describe()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_lets_through_the_allowed_ham_only() {
        let scores = [0.1, 0.2, 0.3, 0.9, 0.5, 0.8, 0.95];
        let labels = [false, false, false, false, true, true, true];
        // No ham may pass: just above the top ham (0.9), below the next score (0.95).
        assert_eq!(threshold_for_fpr(&scores, &labels, 0.0), 0.925);
        // One of four ham may pass: above 0.3, halfway to the next score, 0.5.
        assert_eq!(threshold_for_fpr(&scores, &labels, 0.25), 0.4);
        // Every ham may pass.
        assert_eq!(threshold_for_fpr(&scores, &labels, 1.0), f64::NEG_INFINITY);
        // Nothing above the top ham.
        assert_eq!(threshold_for_fpr(&[0.5, 0.4], &[false, true], 0.0), 1.5);
    }

    #[test]
    fn degenerate_training_sets_do_not_panic() {
        let empty: [(bool, &str); 0] = [];
        let model = Model::train(&empty, &TrainParams::default());
        assert_eq!(model.score("anything"), 0.5);
        assert_eq!(model.threshold(), 0.5);
        let one_class = Model::train(&[(false, "hi"), (false, "hello")], &TrainParams::default());
        assert!(one_class.score("hi") < 0.5);
        assert_eq!(one_class.threshold(), 0.5);
    }
}
