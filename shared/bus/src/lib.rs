//! The NATS bus of the interop gateway: subject and stream names, stream and
//! consumer set-up, the pipeline stage loop, and trace context in headers.

pub mod metrics;
pub mod pipeline;
pub mod stage;
pub mod streams;
pub mod subjects;
pub mod trace;

use sha2::{Digest, Sha256};

pub use async_nats;
pub use stage::{run_stage, HandleError, Handler, Input, Outgoing, StageOptions};
pub use streams::{ensure_streams, StreamSettings};

/// Errors of bus set-up.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("nats-server {found} is too old: the gateway needs 2.9.0 or newer")]
    ServerTooOld { found: String },
    #[error("cannot create or update stream {name}: {source}")]
    Stream {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot create or bind consumer {name}: {source}")]
    Consumer {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot open key-value bucket {name}: {source}")]
    KeyValue {
        name: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The servers in a `--nats-url` value: one URL, or several separated by
/// commas (a cluster). async-nats parses a `&str` as one URL, so a list has
/// to be split first.
pub fn server_list(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Connects to NATS (`url` may list several servers, comma-separated),
/// retrying forever in the background after the first success, and checks
/// the server version.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, BusError> {
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(std::time::Duration::from_secs(5))
        .connect(server_list(url))
        .await
        .map_err(|source| BusError::Connect {
            url: url.to_owned(),
            source,
        })?;
    // With retry_on_initial_connect, wait for the first connection so the
    // version can be read.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    check_version(&client.server_info().version)?;
    Ok(client)
}

/// Fails for servers older than 2.9 (no consumer-create-with-name API).
/// 2.10-only features are not used (see docs/adr/0003).
pub fn check_version(version: &str) -> Result<(), BusError> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version.is_empty() || (major, minor) >= (2, 9) {
        Ok(())
    } else {
        Err(BusError::ServerTooOld {
            found: version.to_owned(),
        })
    }
}

/// The key under which a recipient's messages are stored: 32 hex digits of
/// the SHA-256 of the address. Subjects and stream state never contain
/// phone numbers.
pub fn recipient_key(address: &str) -> String {
    let digest = Sha256::digest(address.as_bytes());
    hex::encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_keys_are_stable_and_hide_the_address() {
        let k = recipient_key("home:+4915112345678");
        assert_eq!(k.len(), 32);
        assert_eq!(k, recipient_key("home:+4915112345678"));
        assert_ne!(k, recipient_key("home:+4915112345679"));
        assert!(!k.contains("4915112345678"));
    }

    #[test]
    fn a_comma_separated_url_is_a_server_list() {
        assert_eq!(server_list("nats://a:4222"), vec!["nats://a:4222"]);
        assert_eq!(
            server_list("nats://a:4222, nats://b:4222,nats://c:4222"),
            vec!["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        assert_eq!(server_list("nats://a:4222,"), vec!["nats://a:4222"]);
    }

    #[test]
    fn version_check() {
        assert!(check_version("2.9.10").is_ok());
        assert!(check_version("2.10.4").is_ok());
        assert!(check_version("3.0.0").is_ok());
        assert!(matches!(
            check_version("2.8.4"),
            Err(BusError::ServerTooOld { .. })
        ));
    }
}
