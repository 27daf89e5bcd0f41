//! The spam-scoring binary: the service (no subcommand), or the content
//! classifier's `train` and `eval` tools. Wiring only; see the library.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

use clap::Parser as _;
use interop_service::EXIT_CONFIG;
use interop_spam_classifier::{cli, corpus, eval};
use interop_spam_scoring::args::{model, Command};
use interop_spam_scoring::{Args, Config};

fn fail(e: impl std::fmt::Display, code: i32) -> ! {
    eprintln!("spam-scoring: {e}");
    std::process::exit(code);
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match &args.command {
        Some(Command::Train { corpus, out }) => {
            let report = cli::train(corpus, out).unwrap_or_else(|e| fail(e, 1));
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            return;
        }
        Some(Command::Eval {
            corpus,
            cv: Some(k),
        }) => {
            let metrics = cli::cross_validate(corpus, *k).unwrap_or_else(|e| fail(e, 1));
            println!("{}", serde_json::to_string(&metrics).unwrap_or_default());
            return;
        }
        Some(Command::Eval {
            corpus: path,
            cv: None,
        }) => {
            let model = model(args.model.as_ref()).unwrap_or_else(|e| fail(e, EXIT_CONFIG));
            let corpus = corpus::load_tsv(path).unwrap_or_else(|e| fail(e, 1));
            let metrics = eval::evaluate(&model, &corpus);
            println!("{}", serde_json::to_string(&metrics).unwrap_or_default());
            return;
        }
        None => {}
    }
    let config = Config::from_args(&args);
    std::process::exit(
        interop_service::run_main(
            "spam-scoring",
            &args.common,
            config,
            interop_spam_scoring::run,
        )
        .await,
    );
}
