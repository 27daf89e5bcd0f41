//! User state of the gateway. What users decide (consent and their answers
//! about senders) is kept in JetStream and cached in Redis ([`records`],
//! docs/adr/0028); the rest here lives in Redis only: groups, counters,
//! reputation, media grants (see docs/architecture.md). Messages themselves
//! live in NATS JetStream, never here.
//!
//! Keys (all under `interop:`, every one spelled in [`keys`]):
//! - `interop:consent:<address>` — hash: `opted_in` (`0`/`1`), `allowed`
//!   (comma-separated provider ids), `inbox` (`third-party`/`combined`),
//!   `updated_at_ms`, `rev` (the record's stream sequence; [`records`]).
//! - `interop:group:<id>:members`, `interop:group:<id>:admins` — sets of
//!   addresses, `interop:group:<id>:name`, and `interop:groups:<address>` —
//!   the groups a user is in (see [`group`]).
//! - `interop:media:grant:<id>`, `interop:media:sent:<key>` ([`media`]).
//! - `interop:rate:<scope>:<id>:<window>` — counter with a TTL of two windows.
//! - `interop:contacts:<recipient>` — accepted/declined/blocked senders
//!   ([`contacts`]), each with its stream sequence ([`records`]).
//! - `interop:spam:*` — spam-scoring's counters ([`spam`]) and reputation
//!   ([`reputation`]).
//! - `interop:keys:watchers:<address>` — who fetched a user's keys
//!   ([`key_watchers`]).

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

pub mod consent;
pub mod contacts;
pub mod erase;
pub mod gcra;
pub mod group;
pub mod key_watchers;
pub mod keys;
pub mod media;
pub mod rate;
pub mod records;
pub mod reputation;
pub mod spam;

pub use consent::{Consent, ConsentStore};
pub use contacts::{Admission, ContactState, ContactStore, Refusal};
pub use group::{Group, GroupStore};
pub use rate::RateCounter;
pub use records::Records;

/// A Redis or user-state-stream failure. Callers treat every one as
/// retryable: the pipeline pauses and retries, it never drops a message
/// because Redis or JetStream is down.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("user-state stream: {0}")]
    Records(String),
}

impl StateError {
    /// Whether the failure is an outage of the store rather than something
    /// about this call: Redis unreachable, its connection dropped or timing
    /// out, loading its data (`LOADING`) or without a master; the
    /// user-state stream not read. A Redis error about the call itself (a
    /// wrong type, a script error) is not one.
    pub fn is_unavailable(&self) -> bool {
        use redis::{ErrorKind, ServerErrorKind};
        match self {
            Self::Records(_) => true,
            Self::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || matches!(
                        e.kind(),
                        ErrorKind::Server(
                            ServerErrorKind::BusyLoading
                                | ServerErrorKind::TryAgain
                                | ServerErrorKind::MasterDown
                                | ServerErrorKind::ClusterDown
                                | ServerErrorKind::ReadOnly
                        ) | ErrorKind::ClusterConnectionNotFound
                    )
            }
        }
    }
}
