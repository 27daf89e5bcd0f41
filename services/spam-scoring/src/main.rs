//! The spam-scoring binary: wiring only; see the library.

use clap::Parser;
use interop_service::CommonArgs;

/// Scores every accepted message.
#[derive(Parser)]
#[command(name = "spam-scoring", version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Messages a sender may send per minute before they are rejected as spam.
    #[arg(
        long,
        env = "INTEROP_SPAM_SCORING_MAX_SENDER_PER_MINUTE",
        default_value_t = 600
    )]
    max_sender_per_minute: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let streams = match args.common.stream_settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("spam-scoring: {e}");
            std::process::exit(64);
        }
    };
    let config = interop_spam_scoring::Config {
        streams,
        max_sender_per_minute: args.max_sender_per_minute,
    };
    let code = interop_service::run_main("spam-scoring", &args.common, |deps, shutdown| {
        interop_spam_scoring::run(config, deps, shutdown)
    })
    .await;
    std::process::exit(code);
}
