//! Regenerates the committed model, `model/sms-spam.model`, from the development corpus:
//! `cargo run --release -p interop-spam-classifier --example train`. Prints the training report as JSON.
//! Training is deterministic, so the file only changes when the features, the trainer or the corpus do
//! (the `committed_model` test checks this).

use interop_spam_classifier::{cli, COMMITTED_MODEL, DEV_CORPUS};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let report = cli::train(DEV_CORPUS, COMMITTED_MODEL)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
