//! Every Redis key the gateway uses, spelled once (docs/architecture.md,
//! "Redis keys", says what each holds and how long it lives).
//!
//! A family whose keys are found by `SCAN` (an erasure, docs/adr/0013) has
//! a `*_PREFIX` constant or a `*_prefix` function here too, and its keys
//! are built from it, so the patterns that find them cannot drift from the
//! keys written. `crate::erase` builds its patterns only from these.

use std::fmt::Display;

/// Every consent record starts with this.
pub const CONSENT_PREFIX: &str = "interop:consent:";

/// A user's consent record (hash; the one family without a TTL, except a
/// cached absence: `crate::records`).
pub fn consent(address: &str) -> String {
    format!("{CONSENT_PREFIX}{address}")
}

/// Every contact record starts with this.
pub const CONTACTS_PREFIX: &str = "interop:contacts:";

/// A recipient's contact record: sender address → their answer (hash).
pub fn contacts(recipient: &str) -> String {
    format!("{CONTACTS_PREFIX}{recipient}")
}

/// Every idempotency claim starts with this.
pub const IDEM_PREFIX: &str = "interop:idem:";

/// What every idempotency claim of `from` starts with.
pub fn idem_prefix(from: &str) -> String {
    format!("{IDEM_PREFIX}{from}:")
}

/// The claim of one client message id: the server message id it got.
pub fn idem(from: &str, client_message_id: &str) -> String {
    format!("{}{client_message_id}", idem_prefix(from))
}

/// A provider's GCRA bucket (ingest's rate limit).
pub fn gcra_provider(provider: &str) -> String {
    format!("interop:gcra:provider:{provider}")
}

/// A sender's GCRA bucket (ingest's rate limit).
pub fn gcra_sender(address: &str) -> String {
    format!("interop:gcra:sender:{address}")
}

/// A provider's key-fetch GCRA bucket (the key directory, docs/adr/0025).
pub fn gcra_key_fetch_provider(provider: &str) -> String {
    format!("interop:gcra:keys:provider:{provider}")
}

/// A requesting user's key-fetch GCRA bucket (the key directory).
pub fn gcra_key_fetch_user(address: &str) -> String {
    format!("interop:gcra:keys:user:{address}")
}

/// Every key-watcher set starts with this.
pub const KEY_WATCHERS_PREFIX: &str = "interop:keys:watchers:";

/// Who fetched `owner`'s keys (sorted set; `crate::key_watchers`).
pub fn key_watchers(owner: &str) -> String {
    format!("{KEY_WATCHERS_PREFIX}{owner}")
}

/// What every fixed-window counter of `id` in `scope` starts with.
pub fn rate_prefix(scope: &str, id: &str) -> String {
    format!("interop:rate:{scope}:{id}:")
}

/// A fixed-window counter: events of `id` in `scope` during `window`.
pub fn rate(scope: &str, id: &str, window: impl Display) -> String {
    format!("{}{window}", rate_prefix(scope, id))
}

/// The scope of spam-scoring's per-sender message counter.
pub const SENDER_RATE_SCOPE: &str = "sender";

/// Messages `from` sent in one minute (spam-scoring, `SENDER_RATE`).
pub fn sender_rate(from: &str, minute: i64) -> String {
    rate(SENDER_RATE_SCOPE, from, minute)
}

/// What every hourly sketch of `from`'s distinct recipients starts with.
pub fn spam_recipients_prefix(from: &str) -> String {
    format!("interop:spam:recipients:{from}:")
}

/// HyperLogLog of `from`'s distinct recipients in one hour.
pub fn spam_recipients(from: &str, hour: i64) -> String {
    format!("{}{hour}", spam_recipients_prefix(from))
}

/// What every hourly sketch of `from`'s distinct strangers starts with.
pub fn spam_strangers_prefix(from: &str) -> String {
    format!("interop:spam:strangers:{from}:")
}

/// HyperLogLog of the recipients in one hour who had not accepted `from`.
pub fn spam_strangers(from: &str, hour: i64) -> String {
    format!("{}{hour}", spam_strangers_prefix(from))
}

/// HyperLogLog of the distinct recipients of one payload in one hour.
pub fn spam_payload(fingerprint: &str, hour: i64) -> String {
    format!("interop:spam:payload:{fingerprint}:{hour}")
}

/// A sender's reputation: per-day counters (hash).
pub fn reputation_sender(address: &str) -> String {
    format!("interop:spam:rep:sender:{address}")
}

/// A provider's reputation: per-day counters (hash).
pub fn reputation_provider(provider: &str) -> String {
    format!("interop:spam:rep:provider:{provider}")
}

/// Every feedback key starts with this.
pub const FEEDBACK_PREFIX: &str = "interop:spam:fed:";

/// One recipient's feedback of one `kind` about one sender, counted once.
pub fn feedback(kind: &str, recipient: &str, sender: &str) -> String {
    format!("{FEEDBACK_PREFIX}{kind}:{recipient}:{sender}")
}

/// Every group's cache starts with this (and so did an earlier version's
/// group sets).
pub const LEGACY_GROUP_PREFIX: &str = "interop:group:";

/// A group's cache (hash; `crate::group`).
pub fn group(group_id: &str) -> String {
    format!("{LEGACY_GROUP_PREFIX}{group_id}")
}

/// An earlier version's per-user group index (moved by the migration,
/// `crate::group`).
pub const LEGACY_USER_GROUPS_PREFIX: &str = "interop:groups:";

/// An earlier version's set of group ids `address` was a member of.
pub fn legacy_user_groups(address: &str) -> String {
    format!("{LEGACY_USER_GROUPS_PREFIX}{address}")
}

/// An earlier version's members set of a group.
pub fn legacy_group_members(group_id: &str) -> String {
    format!("{LEGACY_GROUP_PREFIX}{group_id}:members")
}

/// An earlier version's admins set of a group.
pub fn legacy_group_admins(group_id: &str) -> String {
    format!("{LEGACY_GROUP_PREFIX}{group_id}:admins")
}

/// An earlier version's group name.
pub fn legacy_group_name(group_id: &str) -> String {
    format!("{LEGACY_GROUP_PREFIX}{group_id}:name")
}

/// The recipient keys allowed to download one media id (set).
pub fn media_grant(media_id: &str) -> String {
    format!("interop:media:grant:{media_id}")
}

/// The media ids a user (by recipient key) sent (set).
pub fn media_sent(user_key: &str) -> String {
    format!("interop:media:sent:{user_key}")
}

/// Failed authentications from one IP address in the current window.
pub fn authfail_addr(ip: impl Display) -> String {
    format!("interop:edge:authfail:addr:{ip}")
}

/// Failed authentications as one provider in the current window.
pub fn authfail_provider(provider: &str) -> String {
    format!("interop:edge:authfail:provider:{provider}")
}

/// This IP address authenticated as this provider (passes its throttle).
pub fn authok(provider: &str, ip: impl Display) -> String {
    format!("interop:edge:authok:{provider}:{ip}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_under_the_gateways_prefix_and_names_its_parts() {
        let a = "signal:alice";
        for (key, want) in [
            (consent(a), "interop:consent:signal:alice"),
            (contacts(a), "interop:contacts:signal:alice"),
            (idem(a, "c1"), "interop:idem:signal:alice:c1"),
            (gcra_provider("signal"), "interop:gcra:provider:signal"),
            (gcra_sender(a), "interop:gcra:sender:signal:alice"),
            (rate("x", a, 7), "interop:rate:x:signal:alice:7"),
            (sender_rate(a, 7), "interop:rate:sender:signal:alice:7"),
            (
                spam_recipients(a, 3),
                "interop:spam:recipients:signal:alice:3",
            ),
            (
                spam_strangers(a, 3),
                "interop:spam:strangers:signal:alice:3",
            ),
            (spam_payload("ab", 3), "interop:spam:payload:ab:3"),
            (reputation_sender(a), "interop:spam:rep:sender:signal:alice"),
            (
                reputation_provider("signal"),
                "interop:spam:rep:provider:signal",
            ),
            (
                feedback("block", "home:+1", a),
                "interop:spam:fed:block:home:+1:signal:alice",
            ),
            (group("g"), "interop:group:g"),
            (legacy_user_groups(a), "interop:groups:signal:alice"),
            (legacy_group_members("g"), "interop:group:g:members"),
            (legacy_group_admins("g"), "interop:group:g:admins"),
            (legacy_group_name("g"), "interop:group:g:name"),
            (media_grant("m"), "interop:media:grant:m"),
            (media_sent("k"), "interop:media:sent:k"),
            (
                authfail_addr(std::net::Ipv4Addr::LOCALHOST),
                "interop:edge:authfail:addr:127.0.0.1",
            ),
            (
                authfail_provider("signal"),
                "interop:edge:authfail:provider:signal",
            ),
            (
                authok("signal", std::net::Ipv4Addr::LOCALHOST),
                "interop:edge:authok:signal:127.0.0.1",
            ),
        ] {
            assert_eq!(key, want);
        }
    }
}
