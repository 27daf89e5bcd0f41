//! The opt-in and consent registry.

use interop_proto::v1::Inbox;

use crate::{Records, StateError};

/// A user's interoperability settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consent {
    pub opted_in: bool,
    /// Provider ids allowed to reach the user.
    pub allowed_providers: Vec<String>,
    /// One inbox with the user's other chats, instead of a separate
    /// third-party inbox (the default).
    pub combined_inbox: bool,
}

/// The `inbox` hash field's value for a combined inbox.
pub const INBOX_COMBINED: &str = "combined";
/// The `inbox` hash field's value for a separate third-party inbox.
pub const INBOX_THIRD_PARTY: &str = "third-party";

impl Consent {
    /// The inbox messages from accepted senders go to.
    pub fn inbox(&self) -> Inbox {
        if self.combined_inbox {
            Inbox::Combined
        } else {
            Inbox::ThirdParty
        }
    }

    /// Builds a record from the `opted_in`, `allowed` and `inbox` hash fields.
    pub fn from_hash(opted_in: Option<&str>, allowed: Option<&str>, inbox: Option<&str>) -> Self {
        Self {
            combined_inbox: inbox == Some(INBOX_COMBINED),
            ..Self::from_fields(opted_in, allowed)
        }
    }

    /// Builds a record from the `opted_in` and `allowed` hash fields.
    pub fn from_fields(opted_in: Option<&str>, allowed: Option<&str>) -> Self {
        Self {
            combined_inbox: false,
            opted_in: opted_in == Some("1"),
            allowed_providers: allowed
                .unwrap_or_default()
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Whether a message from `sender_provider` may reach this user.
    pub fn admits(&self, sender_provider: &str) -> bool {
        self.opted_in && self.allowed_providers.iter().any(|p| p == sender_provider)
    }
}

/// The Redis key of a user's consent record (ingest reads it in its
/// send's round trip).
pub use crate::keys::consent as key;

/// Reads and writes consent records: written to the user-state stream and
/// cached in Redis, read from the cache and loaded on a miss
/// ([`crate::records`]).
#[derive(Clone)]
pub struct ConsentStore {
    records: Records,
}

impl ConsentStore {
    pub fn new(records: Records) -> Self {
        Self { records }
    }

    /// The user's settings; a user never seen is not opted in.
    pub async fn get(&self, address: &str) -> Result<Consent, StateError> {
        let mut conn = self.records.redis().clone();
        let (rev, opted_in, allowed, inbox): (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        ) = redis::cmd("HMGET")
            .arg(key(address))
            .arg("rev")
            .arg("opted_in")
            .arg("allowed")
            .arg("inbox")
            .query_async(&mut conn)
            .await?;
        if rev.is_none() {
            return self.records.load_consent(address).await;
        }
        Ok(Consent::from_hash(
            opted_in.as_deref(),
            allowed.as_deref(),
            inbox.as_deref(),
        ))
    }

    /// Replaces the user's settings.
    pub async fn set(&self, address: &str, consent: &Consent) -> Result<(), StateError> {
        self.records.put_consent(address, consent).await
    }

    /// Whether a message from `sender_provider` may reach `recipient`.
    pub async fn admits(&self, recipient: &str, sender_provider: &str) -> Result<bool, StateError> {
        Ok(self.get(recipient).await?.admits(sender_provider))
    }
}
