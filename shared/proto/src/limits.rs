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
/// How far in the past a message's `sent_at_ms` may be (a phone that was
/// offline for days still delivers its queue).
pub const MAX_SENT_AT_AGE_MS: i64 = 7 * 24 * 3600 * 1000;
/// How far in the future a message's `sent_at_ms` may be (clock skew).
pub const MAX_SENT_AT_SKEW_MS: i64 = 10 * 60 * 1000;
