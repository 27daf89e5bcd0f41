//! The spam-scoring binary: the service (no subcommand), or the content
//! classifier's `train` and `eval` tools. Wiring only; see the library.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use interop_service::CommonArgs;
use interop_spam_classifier::{cli, corpus, eval, Model};

/// Scores every accepted message.
#[derive(Parser)]
#[command(name = "spam-scoring", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Messages a sender may send per minute before SENDER_RATE fires
    /// (overrides the policy file's `sender_rate.max_per_minute`; default 600).
    #[arg(long, env = "INTEROP_SPAM_SCORING_MAX_SENDER_PER_MINUTE")]
    max_sender_per_minute: Option<u64>,
    /// Signal weights and verdict thresholds (TOML; docs/spam.md). Keys not
    /// in the file keep their defaults.
    #[arg(long, env = "INTEROP_SPAM_SCORING_POLICY")]
    policy: Option<PathBuf>,
    /// Content classifier model file (default: the model built into the binary).
    #[arg(long, env = "INTEROP_SPAM_SCORING_MODEL", global = true)]
    model: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Train the content classifier on a labeled corpus (`ham|spam<TAB>text`).
    Train {
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Evaluate the model (or, with --cv K, K-fold cross-validation of
    /// training) on a labeled corpus; prints one JSON object.
    Eval {
        #[arg(long)]
        corpus: PathBuf,
        #[arg(long)]
        cv: Option<usize>,
    },
}

fn fail(e: impl std::fmt::Display, code: i32) -> ! {
    eprintln!("spam-scoring: {e}");
    std::process::exit(code);
}

fn model(path: Option<&PathBuf>) -> Model {
    match path {
        Some(p) => cli::load_model(p).unwrap_or_else(|e| fail(e, 64)),
        None => interop_spam_classifier::embedded_model().unwrap_or_else(|e| fail(e, 70)),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match args.command {
        Some(Command::Train { corpus, out }) => {
            let report = cli::train(&corpus, &out).unwrap_or_else(|e| fail(e, 1));
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            return;
        }
        Some(Command::Eval {
            corpus,
            cv: Some(k),
        }) => {
            let metrics = cli::cross_validate(&corpus, k).unwrap_or_else(|e| fail(e, 1));
            println!("{}", serde_json::to_string(&metrics).unwrap_or_default());
            return;
        }
        Some(Command::Eval {
            corpus: path,
            cv: None,
        }) => {
            let model = model(args.model.as_ref());
            let corpus = corpus::load_tsv(&path).unwrap_or_else(|e| fail(e, 1));
            let metrics = eval::evaluate(&model, &corpus);
            println!("{}", serde_json::to_string(&metrics).unwrap_or_default());
            return;
        }
        None => {}
    }
    let streams = args
        .common
        .stream_settings()
        .unwrap_or_else(|e| fail(e, 64));
    let mut policy = match &args.policy {
        Some(path) => interop_spam_scoring::Policy::load(path).unwrap_or_else(|e| fail(e, 64)),
        None => interop_spam_scoring::Policy::default(),
    };
    if let Some(max) = args.max_sender_per_minute {
        policy.sender_rate.max_per_minute = max;
    }
    let config = interop_spam_scoring::Config {
        streams,
        policy,
        model: std::sync::Arc::new(model(args.model.as_ref())),
    };
    let code = interop_service::run_main("spam-scoring", &args.common, |deps, shutdown| {
        interop_spam_scoring::run(config, deps, shutdown)
    })
    .await;
    std::process::exit(code);
}
