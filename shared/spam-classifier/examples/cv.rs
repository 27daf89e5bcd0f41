//! Cross-validates training with the default parameters on the development corpus and prints the metrics as JSON:
//! `cargo run --release -p interop-spam-classifier --example cv -- [K] [SEED]` (defaults: 5 and `cli::CV_SEED`).

use interop_spam_classifier::{cli, corpus, eval, TrainParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let k: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let seed: u64 = args.next().map_or(Ok(cli::CV_SEED), |a| a.parse())?;
    let corpus = corpus::load_tsv(interop_spam_classifier::DEV_CORPUS)?;
    let metrics = eval::cross_validate(&corpus, k, &TrainParams::default(), seed);
    println!("{}", serde_json::to_string(&metrics)?);
    Ok(())
}
