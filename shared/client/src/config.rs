//! Where the `interop` tool finds the gateway and its credentials.
//!
//! `scripts/up` writes `.run/client.toml` in the repository:
//!
//! ```toml
//! ingest_url = "ws://127.0.0.1:8080/v1/ws"
//! delivery_url = "ws://127.0.0.1:8081/v1/ws"
//! media_url = "http://127.0.0.1:8082"
//! kt_vrf_public_key = "<64 hex digits>"
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
    /// The media API, e.g. `http://127.0.0.1:8082`.
    pub media_url: Option<String>,
    /// The provider admin API, e.g. `http://127.0.0.1:8090`.
    pub admin_url: Option<String>,
    pub admin_token: Option<String>,
    /// The gateway's key transparency VRF public key (64 hex digits): apps
    /// refuse proofs under another key (`interop_client::trust`).
    pub kt_vrf_public_key: Option<String>,
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

    /// The file to use: `explicit` if given, else `.run/client.toml` in the
    /// current directory or a parent, else beside the binary's checkout (the
    /// binary built in `target/release` finds the `.run/` of its repository,
    /// wherever it is run from).
    pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return Some(p.to_owned());
        }
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.canonicalize().ok())
            .and_then(|p| p.parent().map(Path::to_owned));
        [std::env::current_dir().ok(), exe_dir]
            .into_iter()
            .flatten()
            .find_map(|start| find_upwards(&start))
    }
}

fn find_upwards(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(".run/client.toml"))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_file_in_a_parent_and_reads_it() {
        let root =
            std::env::temp_dir().join(format!("interop-client-config-{}", std::process::id()));
        std::fs::create_dir_all(root.join(".run")).unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        let file = root.join(".run/client.toml");
        std::fs::write(
            &file,
            "ingest_url = \"ws://x/v1/ws\"\n[tokens]\nhome = \"t\"\n",
        )
        .unwrap();
        assert_eq!(find_upwards(&root.join("a/b")), Some(file.clone()));
        let config = ClientConfig::load(&file).unwrap();
        assert_eq!(config.ingest_url.as_deref(), Some("ws://x/v1/ws"));
        assert_eq!(config.tokens["home"], "t");
        std::fs::write(&file, "bogus = 1\n").unwrap();
        assert!(matches!(
            ClientConfig::load(&file),
            Err(ConfigError::Parse { .. })
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
