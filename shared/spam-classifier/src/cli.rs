//! What the `spam-scoring` binary's `train`, `eval` and `cross-validate` subcommands call: each reads its
//! files, does the work and returns a report that serialises to one JSON object.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::corpus::{self, CorpusError};
use crate::eval::{self, Metrics};
use crate::{Model, ModelError, TrainParams};

/// Seed of the fold assignment of [`cross_validate`].
pub const CV_SEED: u64 = 42;

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The corpus could not be read or parsed.
    #[error("corpus {path}: {source}")]
    Corpus {
        /// The corpus file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: CorpusError,
    },
    /// The model file could not be read or written.
    #[error("model file {path}: {source}")]
    Io {
        /// The model file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The model file is not a valid model.
    #[error("model file {path}: {source}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ModelError,
    },
    /// The corpus has no examples.
    #[error("corpus {path} has no examples")]
    EmptyCorpus {
        /// The corpus file.
        path: PathBuf,
    },
    /// Cross-validation was asked for an impossible number of folds.
    #[error("cross-validation needs 2 <= k <= {examples} (the number of examples), got k = {k}")]
    InvalidFolds {
        /// Folds asked for.
        k: usize,
        /// Examples in the corpus.
        examples: usize,
    },
}

/// What [`train`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Examples trained on.
    pub examples: usize,
    /// Of which spam.
    pub spam: usize,
    /// The decision threshold chosen.
    pub threshold: f64,
    /// Hash buckets with a non-zero weight.
    pub nonzero_weights: usize,
    /// Size of the model file written.
    pub model_bytes: usize,
    /// Wall-clock training time.
    pub train_seconds: f64,
    /// The parameters used.
    pub params: TrainParams,
}

fn load_corpus(path: &Path) -> Result<Vec<(bool, String)>, CliError> {
    let corpus = corpus::load_tsv(path).map_err(|source| CliError::Corpus {
        path: path.to_owned(),
        source,
    })?;
    if corpus.is_empty() {
        return Err(CliError::EmptyCorpus {
            path: path.to_owned(),
        });
    }
    Ok(corpus)
}

/// Loads a model file.
pub fn load_model(path: impl AsRef<Path>) -> Result<Model, CliError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| CliError::Io {
        path: path.to_owned(),
        source,
    })?;
    Model::from_bytes(&bytes).map_err(|source| CliError::Model {
        path: path.to_owned(),
        source,
    })
}

/// Trains a model with the default parameters on the corpus at `corpus_path` and writes it to `out_path`
/// (through a temporary file beside it, renamed into place, so a reader never sees half a model).
pub fn train(
    corpus_path: impl AsRef<Path>,
    out_path: impl AsRef<Path>,
) -> Result<TrainReport, CliError> {
    let (corpus_path, out_path) = (corpus_path.as_ref(), out_path.as_ref());
    let corpus = load_corpus(corpus_path)?;
    let params = TrainParams::default();
    let start = Instant::now();
    let model = Model::train(&corpus, &params);
    let train_seconds = start.elapsed().as_secs_f64();
    let bytes = model.to_bytes();
    let io_error = |source| CliError::Io {
        path: out_path.to_owned(),
        source,
    };
    let mut tmp = out_path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, &bytes).map_err(io_error)?;
    std::fs::rename(&tmp, out_path).map_err(io_error)?;
    Ok(TrainReport {
        examples: corpus.len(),
        spam: corpus.iter().filter(|(s, _)| *s).count(),
        threshold: model.threshold(),
        nonzero_weights: model.nonzero_weights(),
        model_bytes: bytes.len(),
        train_seconds,
        params: model.params().clone(),
    })
}

/// Evaluates the model at `model_path` on the corpus at `corpus_path`.
pub fn eval(
    model_path: impl AsRef<Path>,
    corpus_path: impl AsRef<Path>,
) -> Result<Metrics, CliError> {
    let model = load_model(model_path)?;
    let corpus = load_corpus(corpus_path.as_ref())?;
    Ok(eval::evaluate(&model, &corpus))
}

/// `k`-fold cross-validation of training with the default parameters on the corpus at `corpus_path`, folds
/// dealt with [`CV_SEED`].
pub fn cross_validate(corpus_path: impl AsRef<Path>, k: usize) -> Result<Metrics, CliError> {
    let corpus = load_corpus(corpus_path.as_ref())?;
    if !(2..=corpus.len()).contains(&k) {
        return Err(CliError::InvalidFolds {
            k,
            examples: corpus.len(),
        });
    }
    Ok(eval::cross_validate(
        &corpus,
        k,
        &TrainParams::default(),
        CV_SEED,
    ))
}
