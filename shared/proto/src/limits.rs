//! Limits of protocol v1. Each is documented in `docs/protocol.md` and tested
//! at its edge.

/// Largest WebSocket message (one frame) a client may send, in bytes.
pub const MAX_FRAME_BYTES: usize = 128 * 1024;
/// Frames larger than this are not even read into memory: the connection is
/// closed with WebSocket code 1009. Between `MAX_FRAME_BYTES` and this, the
/// frame is answered with `FRAME_TOO_LARGE` and the connection stays open.
pub const HARD_MAX_FRAME_BYTES: usize = 4 * MAX_FRAME_BYTES;
/// Longest server-visible text body, in UTF-8 bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Longest end-to-end-encrypted payload, in bytes.
pub const MAX_CIPHERTEXT_BYTES: usize = 64 * 1024;
/// Longest client message id, in bytes.
pub const MAX_CLIENT_MESSAGE_ID_BYTES: usize = 64;
/// Longest device id, in bytes.
pub const MAX_DEVICE_ID_BYTES: usize = 64;
/// Longest provider id, in bytes.
pub const MAX_PROVIDER_ID_BYTES: usize = 32;
/// Longest user part of a non-home address, in bytes.
pub const MAX_USER_BYTES: usize = 128;
/// Most providers a user may allow in one `SetConsent`.
pub const MAX_ALLOWED_PROVIDERS: usize = 64;
/// Deliver frames a delivery session may have un-acked at once.
pub const MAX_UNACKED: usize = 256;
/// Seconds a connection may take to send its `Hello`.
pub const HELLO_TIMEOUT_SECS: u64 = 10;
/// The most a message's `sent_at_ms` may ever be in the past, whatever the
/// idempotency window: 7 days (a phone offline for a week still delivers
/// its queue, if the operator keeps claims that long).
pub const MAX_SENT_AT_AGE_MS: i64 = 7 * 24 * 3600 * 1000;
/// How far in the future a message's `sent_at_ms` may be (clock skew).
pub const MAX_SENT_AT_SKEW_MS: i64 = 10 * 60 * 1000;
/// How long ingest keeps a send's idempotency claim (`client_message_id` →
/// `message_id`) by default: 24 hours (docs/adr/0027).
pub const DEFAULT_IDEMPOTENCY_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// The shortest idempotency window an operator may set: 1 hour (sends
/// may then be at most 50 minutes old).
pub const MIN_IDEMPOTENCY_WINDOW_MS: i64 = 3600 * 1000;
/// The longest idempotency window that means anything: the oldest accepted
/// `sent_at_ms` plus the skew. A longer one would only cost Redis memory.
pub const MAX_IDEMPOTENCY_WINDOW_MS: i64 = MAX_SENT_AT_AGE_MS + MAX_SENT_AT_SKEW_MS;

/// How far in the past a send's `sent_at_ms` may be when claims are kept
/// `idempotency_window_ms`: the window less the clock skew allowed ahead, at
/// most [`MAX_SENT_AT_AGE_MS`]. A send is claimed when it is accepted, which
/// is no earlier than `sent_at_ms - MAX_SENT_AT_SKEW_MS`, so its claim lasts
/// until at least `sent_at_ms - skew + window`: a re-send whose `sent_at_ms`
/// is within this age always finds the claim and gets `duplicate: true`;
/// one older is refused (`TIMESTAMP_OUT_OF_RANGE`) rather than accepted
/// twice (docs/adr/0027).
pub const fn max_sent_at_age_ms(idempotency_window_ms: i64) -> i64 {
    let age = idempotency_window_ms.saturating_sub(MAX_SENT_AT_SKEW_MS);
    if age < 0 {
        0
    } else if age > MAX_SENT_AT_AGE_MS {
        MAX_SENT_AT_AGE_MS
    } else {
        age
    }
}
/// Longest reaction emoji, in UTF-8 bytes (a flag or a ZWJ family sequence
/// fits; an empty emoji removes a reaction).
pub const MAX_REACTION_BYTES: usize = 64;
/// Longest server message id a reply, reaction, edit or delete may name.
pub const MAX_MESSAGE_ID_BYTES: usize = 64;
/// Most members of a group, admins included.
pub const MAX_GROUP_MEMBERS: usize = 256;
/// Longest group name (UTF-8 bytes).
pub const MAX_GROUP_NAME_BYTES: usize = 128;
/// Most addresses one `ChangeGroup` names in `add`, `remove` and
/// `add_admins` together (so its `GroupChange` stays well under a frame).
pub const MAX_GROUP_CHANGE_ADDRESSES: usize = 256;
/// Most delivery tags in one `MarkRead`.
pub const MAX_MARK_READ_TAGS: usize = 256;
/// Most items of one ingest `Transaction` (provider sessions). The frame
/// size limit holds too: a transaction is one frame.
pub const MAX_TRANSACTION_ITEMS: usize = 256;
/// Most messages in one `DeliverBatch` (provider sessions); a batch is also
/// kept under [`MAX_FRAME_BYTES`] unless its one message is larger.
pub const MAX_BATCH_MESSAGES: usize = 256;
/// `DeliverBatch` frames a provider session may leave un-acked at once, all
/// its partitions together (bounds what it must hold: this many frames).
pub const MAX_UNACKED_BATCHES: usize = 32;
/// `DeliverBatch` frames of one partition a provider session may leave
/// un-acked at once. Per partition, so that the partitions' batches do not
/// queue behind each other's acks: at a low rate most batches hold one
/// message, and a window shared by all partitions made every message wait
/// for acks of other partitions' (p50 0.2-0.9 s at 100 msgs/s).
pub const MAX_UNACKED_BATCHES_PER_PARTITION: usize = 2;
/// How many partitions each provider's users are split into. A recipient's
/// partition is part of its store subject, so this never changes on a
/// running gateway; provider sessions own partitions, and streams are split
/// along them.
pub const PARTITIONS: u32 = 64;

/// Whether `s` is a group id as the gateway makes them: `g-` and 32
/// lowercase hex digits.
pub fn is_group_id(s: &str) -> bool {
    s.len() == 34
        && s.starts_with("g-")
        && s[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accepted_sent_at_age_is_the_idempotency_window_less_the_skew() {
        let day = 24 * 3600 * 1000;
        assert_eq!(
            max_sent_at_age_ms(DEFAULT_IDEMPOTENCY_WINDOW_MS),
            day - MAX_SENT_AT_SKEW_MS
        );
        assert_eq!(
            max_sent_at_age_ms(MAX_IDEMPOTENCY_WINDOW_MS),
            MAX_SENT_AT_AGE_MS
        );
        assert_eq!(max_sent_at_age_ms(30 * day), MAX_SENT_AT_AGE_MS);
        assert_eq!(
            max_sent_at_age_ms(MIN_IDEMPOTENCY_WINDOW_MS),
            50 * 60 * 1000
        );
        assert_eq!(max_sent_at_age_ms(0), 0);
        // The claim of a send accepted at the earliest (its sent_at less
        // the skew) outlives every re-send of it that is accepted.
        for window in [
            MIN_IDEMPOTENCY_WINDOW_MS,
            DEFAULT_IDEMPOTENCY_WINDOW_MS,
            3 * day,
        ] {
            let sent_at = 0;
            let claim_ends = sent_at - MAX_SENT_AT_SKEW_MS + window;
            assert!(sent_at + max_sent_at_age_ms(window) <= claim_ends);
        }
    }
}
