//! routing's flags and the [`Config`] they make.

use interop_service::{CommonArgs, ConfigError};

use crate::Config;

/// Decides where each scored message goes.
#[derive(Debug, clap::Parser)]
#[command(name = "routing", version)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// The configuration `args` describe; [`ConfigError`] when one is out of
    /// range.
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        Ok(Self {
            streams: args.common.stream_settings()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn flags_make_the_config_and_bad_ones_are_refused() {
        let args = Args::try_parse_from(["routing", "--stream-replicas", "3"]).unwrap();
        assert_eq!(Config::from_args(&args).unwrap().streams.replicas, 3);
        let args = Args::try_parse_from(["routing", "--stream-replicas", "0"]).unwrap();
        assert!(Config::from_args(&args).is_err());
    }
}
