//! The bar: 5-fold cross-validation on the development corpus reaches recall >= 0.95 with at most 0.2% of
//! ham flagged. Trains 25 models (5 outer folds, each a 5-model committee): about 10 s in a debug build.

use interop_spam_classifier::cli::{self, CliError};
use interop_spam_classifier::{corpus, eval, TrainParams, DEV_CORPUS};

fn dev_corpus() -> Vec<(bool, String)> {
    corpus::load_tsv(DEV_CORPUS).unwrap_or_else(|e| {
        panic!("the development corpus is missing ({e}); it is committed as `shared/spam-classifier/data/sms-spam/dev.tsv`")
    })
}

#[test]
fn five_fold_cross_validation_meets_the_bar() {
    let corpus = dev_corpus();
    let m = eval::cross_validate(&corpus, 5, &TrainParams::default(), cli::CV_SEED);
    eprintln!("{}", serde_json::to_string(&m).unwrap());
    assert_eq!(m.n, corpus.len());
    assert_eq!(
        m.tp + m.fn_,
        corpus.iter().filter(|(spam, _)| *spam).count()
    );
    assert!(m.recall >= 0.95, "recall {} < 0.95: {m:?}", m.recall);
    assert!(
        m.fpr <= 0.002,
        "false-positive rate {} > 0.002: {m:?}",
        m.fpr
    );
    assert!(m.msgs_per_s > 0.0);
}

#[test]
fn cli_cross_validate_rejects_impossible_fold_counts() {
    for k in [0, 1, 1_000_000] {
        match cli::cross_validate(DEV_CORPUS, k) {
            Err(CliError::InvalidFolds { k: got, examples }) => {
                assert_eq!((got, examples), (k, dev_corpus().len()));
            }
            other => panic!("k = {k}: expected InvalidFolds, got {other:?}"),
        }
    }
    assert!(matches!(
        cli::cross_validate("/nonexistent/corpus.tsv", 5),
        Err(CliError::Corpus { .. })
    ));
}
