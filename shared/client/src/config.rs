//! Where the `interop` tool finds the gateway and its credentials.
//!
//! `scripts/up` writes `.run/client.toml` in the repository:
//!
//! ```toml
//! ingest_url = "ws://127.0.0.1:8080/v1/ws"
//! delivery_url = "ws://127.0.0.1:8081/v1/ws"
//! [tokens]
//! home = "<token>"
//! signal = "<token>"
//! ```
//!
//! The tool reads the file named by `INTEROP_CLIENT_CONFIG`, else the first
//! `.run/client.toml` in the current directory or one of its parents. Flags
//! and environment variables override what it says.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub ingest_url: Option<String>,
    pub delivery_url: Option<String>,
    #[serde(default)]
    pub tokens: HashMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// The file to use: `explicit` if given, else `.run/client.toml` here or
    /// in a parent directory.
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return Some(p.to_owned());
        }
        let mut dir = std::env::current_dir().ok()?;
        loop {
            let candidate = dir.join(".run/client.toml");
            if candidate.is_file() {
                return Some(candidate);
            }
            if !dir.pop() {
                return None;
            }
        }
    }
}
