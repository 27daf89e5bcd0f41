//! spam-scoring's flags and the [`Config`] they make. The binary also
//! carries the content classifier's tools (`train`, `eval`).

use std::path::PathBuf;
use std::sync::Arc;

use interop_service::{CommonArgs, ConfigError};
use interop_spam_classifier::{cli, Model};

use crate::{Config, Policy};

/// Scores every accepted message.
#[derive(Debug, clap::Parser)]
#[command(name = "spam-scoring", version)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Messages a sender may send per minute before SENDER_RATE fires
    /// (overrides the policy file's `sender_rate.max_per_minute`; default 600).
    #[arg(long, env = "INTEROP_SPAM_SCORING_MAX_SENDER_PER_MINUTE")]
    pub max_sender_per_minute: Option<u64>,
    /// Signal weights and verdict thresholds (TOML; docs/spam.md). Keys not
    /// in the file keep their defaults.
    #[arg(long, env = "INTEROP_SPAM_SCORING_POLICY")]
    pub policy: Option<PathBuf>,
    /// Content classifier model file (default: the model built into the binary).
    #[arg(long, env = "INTEROP_SPAM_SCORING_MODEL", global = true)]
    pub model: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The content classifier's tools; without one, the binary is the service.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
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

/// The model `--model` names, or the one built into the binary.
pub fn model(path: Option<&PathBuf>) -> Result<Model, ConfigError> {
    match path {
        Some(p) => cli::load_model(p).map_err(|e| ConfigError(format!("--model: {e}"))),
        None => interop_spam_classifier::embedded_model()
            .map_err(|e| ConfigError(format!("the built-in model: {e}"))),
    }
}

impl Config {
    /// The configuration `args` describe: loads the policy and the model.
    /// [`ConfigError`] when a flag is out of range or a file is unusable.
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let streams = args.common.stream_settings()?;
        let mut policy = match &args.policy {
            Some(path) => Policy::load(path).map_err(|e| ConfigError(e.to_string()))?,
            None => Policy::default(),
        };
        if let Some(max) = args.max_sender_per_minute {
            policy.sender_rate.max_per_minute = max;
        }
        Ok(Config {
            streams,
            policy,
            model: Arc::new(model(args.model.as_ref())?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn flags_make_the_config_and_bad_files_are_refused() {
        let config = Config::from_args(&Args::try_parse_from(["spam-scoring"]).unwrap()).unwrap();
        assert_eq!(config.policy, Policy::default());
        let args = Args::try_parse_from(["spam-scoring", "--max-sender-per-minute", "7"]).unwrap();
        assert_eq!(
            Config::from_args(&args)
                .unwrap()
                .policy
                .sender_rate
                .max_per_minute,
            7
        );
        for bad in [
            &["--policy", "/nonexistent/policy.toml"][..],
            &["--model", "/nonexistent/model.bin"],
            &["--stream-replicas", "0"],
        ] {
            let args = Args::try_parse_from(["spam-scoring"].iter().chain(bad)).unwrap();
            assert!(Config::from_args(&args).is_err(), "{bad:?}");
        }
    }
}
