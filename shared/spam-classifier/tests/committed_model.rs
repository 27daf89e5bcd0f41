//! The committed model is what `examples/train.rs` produces from the development corpus (training is
//! deterministic), and it classifies as a user would expect.

use interop_spam_classifier::{cli, corpus, Model, COMMITTED_MODEL, DEV_CORPUS};

fn committed_model() -> Model {
    cli::load_model(COMMITTED_MODEL).unwrap_or_else(|e| {
        panic!("{e}: regenerate it with `cargo run --release -p interop-spam-classifier --example train`")
    })
}

#[test]
fn committed_model_is_reproduced_by_training() {
    let out = std::env::temp_dir().join(format!(
        "interop-spam-classifier-{}.model",
        std::process::id()
    ));
    let report = cli::train(DEV_CORPUS, &out)
        .unwrap_or_else(|e| panic!("training on the development corpus: {e}"));
    let fresh = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    let committed = std::fs::read(COMMITTED_MODEL).unwrap();
    assert_eq!(report.model_bytes, fresh.len());
    assert!(
        fresh == committed,
        "model/sms-spam.model is stale: regenerate it with `cargo run --release -p interop-spam-classifier --example train`"
    );
    assert!(
        committed.len() < 2 << 20,
        "model file is {} bytes",
        committed.len()
    );
    assert_eq!(report.threshold, committed_model().threshold());
}

#[test]
fn classifies_obvious_spam_and_ham() {
    let model = committed_model();
    for spam in [
        "WINNER!! You have been selected to receive a £900 prize reward! To claim call 09061701461. Claim code KL341. Valid 12 hours only.",
        "FREE entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. Text FA to 87121 to receive entry question(std txt rate)T&C's apply",
        "URGENT! Your mobile number has won a £2000 bonus caller prize! Call 09058095201 from a landline now. 150ppm",
    ] {
        assert!(model.is_spam(spam), "{:.4} < {:.4}: {spam}", model.score(spam), model.threshold());
    }
    for ham in [
        "Hey, are we still on for dinner tonight? I'll be there around 7.",
        "Ok lor, I'll call you when I reach home",
        "Can you pick up some milk on your way back? Thanks!",
        "Happy birthday! Hope you have a great day 🎂",
    ] {
        assert!(
            !model.is_spam(ham),
            "{:.4} >= {:.4}: {ham}",
            model.score(ham),
            model.threshold()
        );
    }
}

#[test]
fn explain_names_the_spammy_features() {
    let model = committed_model();
    let text = "Congratulations! You have won a FREE prize. Call 09061701461 now to claim.";
    let top = model.explain(text, 8);
    assert_eq!(top.len(), 8);
    assert!(
        top.windows(2).all(|w| w[0].1.abs() >= w[1].1.abs()),
        "{top:?}"
    );
    assert!(top.iter().filter(|(_, c)| *c > 0.0).count() >= 6, "{top:?}");
    assert!(
        top.iter()
            .any(|(name, _)| name.contains("<phone>") || name.contains("090")),
        "{top:?}"
    );
    // The bias and the contributions of all features add up to the margin, whose logistic is the score.
    let all = model.explain(text, usize::MAX);
    let margin = model.bias() + all.iter().map(|(_, c)| c).sum::<f64>();
    let score = model.score(text);
    assert!(
        (1.0 / (1.0 + (-margin).exp()) - score).abs() < 1e-9,
        "margin {margin}, score {score}"
    );
    assert!(model.explain("", 5).len() <= 5);
}

#[test]
fn cli_eval_reports_training_set_metrics() {
    let m = cli::eval(COMMITTED_MODEL, DEV_CORPUS).unwrap();
    let corpus = corpus::load_tsv(DEV_CORPUS).unwrap();
    assert_eq!(m.n, corpus.len());
    // On its own training data the model must do at least as well as on held-out folds.
    assert!(m.recall >= 0.95 && m.fpr <= 0.002, "{m:?}");
    assert!(m.msgs_per_s > 0.0);
    let json = serde_json::to_string(&m).unwrap();
    assert!(
        json.starts_with('{') && json.ends_with('}') && json.contains("\"msgs_per_s\""),
        "{json}"
    );
}
