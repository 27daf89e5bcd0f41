//! Announcing that what a recipient admits changed (docs/adr/0018).
//!
//! Routing decides, from Redis, whether a message may reach its recipient
//! and in which inbox. delivery asks again before a push only when
//! something may have changed since: every write that changes the answer
//! (consent set, a request answered or reset, routing's implicit
//! acceptance, an erasure) announces it here, on core NATS, after the
//! write. A session that heard of no change since a message was accepted
//! pushes it as routing filed it.

use std::time::Duration;

use crate::recipient_path;
use crate::subjects::{session_changed, ADMISSIONS_CHANGED_ALL};

/// How long an announcement may take to reach the server.
pub const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);

/// The announcement did not reach the server in time.
#[derive(Debug, thiserror::Error)]
#[error("cannot announce an admission change: {0}")]
pub struct AnnounceError(String);

/// Announces that what `user` admits changed (their consent record, or
/// their answer about some sender), and waits until it is written to the
/// server's connection, so a caller that answers its client afterwards has
/// announced it first. Call it after the write. Core NATS is at most once:
/// a connection lost at that moment loses it. What that costs is bounded
/// (docs/adr/0018): routing reads Redis for every message, so only
/// messages routed before the write and pushed after it are shown as
/// routing filed them.
pub async fn announce(client: &async_nats::Client, user: &str) -> Result<(), AnnounceError> {
    send(client, session_changed(&recipient_path(user))).await
}

/// [`announce`] without waiting for the write: the connection sends it
/// with whatever it writes next (for a caller that publishes more right
/// after and answers no client about the change).
pub async fn announce_soon(client: &async_nats::Client, user: &str) -> Result<(), AnnounceError> {
    client
        .publish(session_changed(&recipient_path(user)), bytes::Bytes::new())
        .await
        .map_err(|e| AnnounceError(e.to_string()))
}

/// Announces that what any recipient admits may have changed (an erasure
/// removed many users' answers about one user).
pub async fn announce_all(client: &async_nats::Client) -> Result<(), AnnounceError> {
    send(client, ADMISSIONS_CHANGED_ALL.to_owned()).await
}

async fn send(client: &async_nats::Client, subject: String) -> Result<(), AnnounceError> {
    let sent = async {
        client
            .publish(subject, bytes::Bytes::new())
            .await
            .map_err(|e| AnnounceError(e.to_string()))?;
        client
            .flush()
            .await
            .map_err(|e| AnnounceError(e.to_string()))
    };
    tokio::time::timeout(ANNOUNCE_TIMEOUT, sent)
        .await
        .unwrap_or_else(|_| {
            Err(AnnounceError(format!(
                "no flush within {ANNOUNCE_TIMEOUT:?}"
            )))
        })
}
