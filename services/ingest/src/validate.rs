//! Validation of `Send` and `SetConsent` frames. Every check returns a typed
//! rejection; nothing that fails here is ever published.

use interop_proto::address::is_provider_id;
use interop_proto::limits::is_group_id;
use interop_proto::limits::*;
use interop_proto::v1::{
    envelope::Content, Ciphertext, DeviceCiphertext, Encryption, Envelope, Inbox, RejectCode,
    RequestAction, RespondToRequest, SetConsent, Text,
};
use interop_proto::Address;

/// A refused frame: its code and a detail for the provider's engineers.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: RejectCode,
    pub detail: String,
    pub retry_after_ms: u32,
}

impl Rejection {
    pub fn new(code: RejectCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            retry_after_ms: 0,
        }
    }

    pub fn retryable(code: RejectCode, detail: impl Into<String>, retry_after_ms: u32) -> Self {
        Self {
            code,
            detail: detail.into(),
            retry_after_ms,
        }
    }
}

/// Most media size the gateway accepts a reference to (the media issue sets
/// per-type limits).
pub const MAX_MEDIA_BYTES: u64 = 100 * 1024 * 1024;
/// Longest media id or content type.
pub const MAX_MEDIA_FIELD_BYTES: usize = 128;

fn is_client_message_id(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Checks a one-to-one `Send` envelope from `provider` and returns the
/// parsed sender and recipient. Group sends (`group_id` set) are checked by
/// [`validate_group_send`].
///
/// `max_sent_at_age_ms` is how old `sent_at_ms` may be: the idempotency
/// window less the clock skew (`interop_proto::limits::max_sent_at_age_ms`),
/// so that a re-send is never accepted twice (docs/adr/0027).
pub fn validate_send(
    provider: &str,
    env: Option<&Envelope>,
    max_sent_at_age_ms: i64,
) -> Result<(Address, Address), Rejection> {
    use RejectCode::*;
    let env = env.ok_or_else(|| Rejection::new(MissingField, "send.envelope is required"))?;
    let from = validate_common(provider, env, max_sent_at_age_ms)?;
    if env.to.is_empty() {
        return Err(Rejection::new(MissingField, "from and to are required"));
    }
    let to =
        Address::parse(&env.to).map_err(|e| Rejection::new(InvalidAddress, format!("to: {e}")))?;
    if !env.group_id.is_empty() {
        return Err(Rejection::new(
            MalformedFrame,
            "a group send leaves `to` empty and sets group_id",
        ));
    }
    validate_content(env)?;
    Ok((from, to))
}

/// Checks a `Send` to a group (`group_id` set, `to` empty) and returns the
/// sender; `max_sent_at_age_ms` as for [`validate_send`].
pub fn validate_group_send(
    provider: &str,
    env: &Envelope,
    max_sent_at_age_ms: i64,
) -> Result<Address, Rejection> {
    use RejectCode::*;
    let from = validate_common(provider, env, max_sent_at_age_ms)?;
    if !env.to.is_empty() {
        return Err(Rejection::new(
            MalformedFrame,
            "a group send leaves `to` empty and sets group_id",
        ));
    }
    check_group_id(&env.group_id)?;
    validate_content(env)?;
    if ciphertext_of(env).is_some_and(|c| !c.sender_devices.is_empty()) {
        return Err(Rejection::new(
            MalformedFrame,
            "sender_devices are for one-to-one sends; a group's members include the sender's devices",
        ));
    }
    Ok(from)
}

/// A group id as the gateway makes them: `g-` and 32 lowercase hex digits.
pub fn check_group_id(id: &str) -> Result<(), Rejection> {
    if is_group_id(id) {
        Ok(())
    } else {
        Err(Rejection::new(
            RejectCode::MalformedFrame,
            "group_id must be `g-` and 32 lowercase hex digits",
        ))
    }
}

/// What every `Send` must satisfy, one-to-one or group: ids, the sender,
/// the timestamp, the reply reference and the encryption.
fn validate_common(
    provider: &str,
    env: &Envelope,
    max_sent_at_age_ms: i64,
) -> Result<Address, Rejection> {
    use RejectCode::*;
    if !env.message_id.is_empty() || env.accepted_at_ms != 0 {
        return Err(Rejection::new(
            MalformedFrame,
            "message_id and accepted_at_ms are set by the gateway; leave them empty",
        ));
    }
    if env.client_message_id.is_empty() {
        return Err(Rejection::new(
            MissingField,
            "client_message_id is required",
        ));
    }
    if env.client_message_id.len() > MAX_CLIENT_MESSAGE_ID_BYTES {
        return Err(Rejection::new(
            TooLong,
            format!("client_message_id is longer than {MAX_CLIENT_MESSAGE_ID_BYTES} bytes"),
        ));
    }
    if !is_client_message_id(&env.client_message_id) {
        return Err(Rejection::new(
            MalformedFrame,
            "client_message_id must be [A-Za-z0-9._:-]",
        ));
    }
    if env.from.is_empty() {
        return Err(Rejection::new(MissingField, "from and to are required"));
    }
    let from = Address::parse(&env.from)
        .map_err(|e| Rejection::new(InvalidAddress, format!("from: {e}")))?;
    if from.provider() != provider {
        return Err(Rejection::new(
            SenderNotOwned,
            "from must be a user of the authenticated provider",
        ));
    }
    if env.sent_at_ms != 0 {
        check_sent_at(env.sent_at_ms, interop_proto::now_ms(), max_sent_at_age_ms)?;
    }
    if env.sender_account_created_at_ms < 0
        || env.sender_account_created_at_ms > interop_proto::now_ms() + MAX_SENT_AT_SKEW_MS
    {
        return Err(Rejection::new(
            TimestampOutOfRange,
            "sender_account_created_at_ms must not be negative or in the future",
        ));
    }
    if !env.in_reply_to.is_empty() {
        check_message_id("in_reply_to", &env.in_reply_to)?;
    }
    let encryption = Encryption::try_from(env.encryption).unwrap_or(Encryption::Unspecified);
    if encryption == Encryption::Unspecified {
        return Err(Rejection::new(
            EncryptionMismatch,
            "encryption must be E2EE or TRANSPORT_ONLY",
        ));
    }
    Ok(from)
}

/// A reference to a server message id (reply, reaction, edit, delete
/// targets): 1-64 bytes of [A-Za-z0-9._:-].
fn check_message_id(what: &str, id: &str) -> Result<(), Rejection> {
    use RejectCode::*;
    if id.is_empty() {
        return Err(Rejection::new(MissingField, format!("{what} is required")));
    }
    if id.len() > MAX_MESSAGE_ID_BYTES {
        return Err(Rejection::new(
            TooLong,
            format!("{what} is longer than {MAX_MESSAGE_ID_BYTES} bytes"),
        ));
    }
    if !is_client_message_id(id) {
        return Err(Rejection::new(
            MalformedFrame,
            format!("{what} must be [A-Za-z0-9._:-]"),
        ));
    }
    Ok(())
}

fn check_text(t: &Text, encryption: Encryption) -> Result<(), Rejection> {
    use RejectCode::*;
    if t.body.is_empty() {
        return Err(Rejection::new(EmptyContent, "text body is empty"));
    }
    if t.body.len() > MAX_TEXT_BYTES {
        return Err(Rejection::new(
            TooLong,
            format!("text is longer than {MAX_TEXT_BYTES} bytes"),
        ));
    }
    if encryption != Encryption::TransportOnly {
        return Err(Rejection::new(
            EncryptionMismatch,
            "server-visible text must be TRANSPORT_ONLY; send E2EE content as ciphertext",
        ));
    }
    Ok(())
}

/// The ciphertext of a ciphertext or an edit with one.
fn ciphertext_of(env: &Envelope) -> Option<&Ciphertext> {
    match env.content.as_ref()? {
        Content::Ciphertext(c) => Some(c),
        Content::Edit(e) => e.ciphertext.as_ref(),
        _ => None,
    }
}

/// Per-device ciphertexts: valid, distinct device ids, each 1..=65536 bytes.
fn check_device_ciphertexts(list: &[DeviceCiphertext]) -> Result<(), Rejection> {
    use RejectCode::*;
    let mut seen = std::collections::HashSet::new();
    for d in list {
        if !interop_proto::address::valid_device_id(&d.device_id) {
            return Err(Rejection::new(
                InvalidSetting,
                "a per-device ciphertext needs a device_id of 1 to 64 [A-Za-z0-9_-]",
            ));
        }
        if !seen.insert(d.device_id.as_str()) {
            return Err(Rejection::new(
                MalformedFrame,
                "two ciphertexts for one device",
            ));
        }
        check_ciphertext_bytes(&d.payload)?;
    }
    Ok(())
}

fn check_ciphertext(c: &Ciphertext, encryption: Encryption) -> Result<(), Rejection> {
    use RejectCode::*;
    if c.missing_for_device {
        return Err(Rejection::new(
            MalformedFrame,
            "missing_for_device is set by the gateway only",
        ));
    }
    if !c.devices.is_empty() {
        if !c.payload.is_empty() {
            return Err(Rejection::new(
                MalformedFrame,
                "a ciphertext has a payload for every device or one per device, not both",
            ));
        }
        if c.devices.len() + c.sender_devices.len() > MAX_DEVICE_CIPHERTEXTS {
            return Err(Rejection::new(
                TooLong,
                format!(
                    "at most {MAX_DEVICE_CIPHERTEXTS} per-device ciphertexts (devices and sender_devices)"
                ),
            ));
        }
        check_device_ciphertexts(&c.devices)?;
        check_device_ciphertexts(&c.sender_devices)?;
    } else if !c.sender_devices.is_empty() {
        return Err(Rejection::new(
            MalformedFrame,
            "sender_devices go with per-device ciphertexts (devices)",
        ));
    } else {
        check_ciphertext_bytes(&c.payload)?;
    }
    if encryption != Encryption::E2ee {
        return Err(Rejection::new(
            EncryptionMismatch,
            "ciphertext must be E2EE",
        ));
    }
    Ok(())
}

/// Per-device ciphertexts in one envelope: a user's devices and the sender's
/// own other devices (8 each at most, `interop_proto::keys`).
pub const MAX_DEVICE_CIPHERTEXTS: usize = 2 * interop_proto::keys::MAX_DEVICES_PER_USER;

fn check_ciphertext_bytes(payload: &[u8]) -> Result<(), Rejection> {
    if payload.is_empty() {
        return Err(Rejection::new(
            RejectCode::EmptyContent,
            "ciphertext payload is empty",
        ));
    }
    if payload.len() > MAX_CIPHERTEXT_BYTES {
        return Err(Rejection::new(
            RejectCode::TooLong,
            format!("ciphertext is longer than {MAX_CIPHERTEXT_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The content and its fit with the declared encryption.
/// `sent_at_ms` against the gateway's clock `now`: at most
/// `max_age_ms` before it (the idempotency window less the skew: an older
/// send's claim may have expired, so a re-send of it could be accepted
/// twice), at most [`MAX_SENT_AT_SKEW_MS`] after it.
fn check_sent_at(sent_at_ms: i64, now: i64, max_age_ms: i64) -> Result<(), Rejection> {
    if sent_at_ms < now.saturating_sub(max_age_ms) {
        return Err(Rejection::new(
            RejectCode::TimestampOutOfRange,
            format!(
                "sent_at_ms is more than {} before the gateway's clock: older than the idempotency window \
                 ({}) less the allowed clock skew, a re-send of it could not be recognised as a duplicate",
                human_duration(max_age_ms),
                human_duration(max_age_ms.saturating_add(MAX_SENT_AT_SKEW_MS)),
            ),
        ));
    }
    if sent_at_ms > now.saturating_add(MAX_SENT_AT_SKEW_MS) {
        return Err(Rejection::new(
            RejectCode::TimestampOutOfRange,
            format!(
                "sent_at_ms is more than {} after the gateway's clock (fix the client's clock)",
                human_duration(MAX_SENT_AT_SKEW_MS)
            ),
        ));
    }
    Ok(())
}

/// `ms` as days, hours and minutes (`23h50m`, `7d`, `50m`).
fn human_duration(ms: i64) -> String {
    let minutes = ms / 60_000;
    let (d, h, m) = (minutes / (24 * 60), minutes / 60 % 24, minutes % 60);
    let mut s = String::new();
    for (n, unit) in [(d, "d"), (h, "h"), (m, "m")] {
        if n != 0 {
            s.push_str(&format!("{n}{unit}"));
        }
    }
    if s.is_empty() {
        s = format!("{ms}ms");
    }
    s
}

fn validate_content(env: &Envelope) -> Result<(), Rejection> {
    use RejectCode::*;
    let encryption = Encryption::try_from(env.encryption).unwrap_or(Encryption::Unspecified);
    match &env.content {
        None => return Err(Rejection::new(EmptyContent, "content is required")),
        Some(Content::Text(t)) => check_text(t, encryption)?,
        Some(Content::Ciphertext(c)) => check_ciphertext(c, encryption)?,
        Some(Content::Media(m)) => {
            if m.media_id.is_empty() || m.content_type.is_empty() {
                return Err(Rejection::new(
                    MissingField,
                    "media needs media_id and content_type",
                ));
            }
            if m.media_id.len() > MAX_MEDIA_FIELD_BYTES
                || m.content_type.len() > MAX_MEDIA_FIELD_BYTES
            {
                return Err(Rejection::new(
                    TooLong,
                    "media_id or content_type is too long",
                ));
            }
            if m.size == 0 {
                return Err(Rejection::new(EmptyContent, "media size is 0"));
            }
            if m.size > MAX_MEDIA_BYTES {
                return Err(Rejection::new(
                    TooLong,
                    format!("media is larger than {MAX_MEDIA_BYTES} bytes"),
                ));
            }
        }
        Some(Content::Reaction(r)) => {
            check_message_id("reaction.target_message_id", &r.target_message_id)?;
            if r.emoji.len() > MAX_REACTION_BYTES {
                return Err(Rejection::new(
                    TooLong,
                    format!("reaction emoji is longer than {MAX_REACTION_BYTES} bytes"),
                ));
            }
            if encryption != Encryption::TransportOnly {
                return Err(Rejection::new(
                    EncryptionMismatch,
                    "a reaction is server-visible: TRANSPORT_ONLY; E2EE reactions go inside ciphertext",
                ));
            }
        }
        Some(Content::Edit(e)) => {
            check_message_id("edit.target_message_id", &e.target_message_id)?;
            match (&e.text, &e.ciphertext) {
                (Some(t), None) => check_text(t, encryption)?,
                (None, Some(c)) => check_ciphertext(c, encryption)?,
                (None, None) => {
                    return Err(Rejection::new(
                        EmptyContent,
                        "an edit needs text or ciphertext",
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(Rejection::new(
                        MalformedFrame,
                        "an edit has text or ciphertext, not both",
                    ))
                }
            }
        }
        Some(Content::Delete(d)) => {
            check_message_id("delete.target_message_id", &d.target_message_id)?;
        }
        Some(Content::Typing(_)) | Some(Content::Call(_)) => {}
        Some(Content::Receipt(_)) => {
            return Err(Rejection::new(
                UnsupportedContent,
                "receipts are written by the gateway; report reads with MarkRead on the delivery connection",
            ))
        }
        Some(Content::GroupChange(_)) => {
            return Err(Rejection::new(
                UnsupportedContent,
                "group changes are written by the gateway; use CreateGroup and ChangeGroup",
            ))
        }
        Some(Content::KeyNotice(_)) => {
            return Err(Rejection::new(
                UnsupportedContent,
                "key notices are written by the gateway",
            ))
        }
    }
    Ok(())
}

/// Checks a `SetConsent` from `provider` and returns the user's address.
pub fn validate_consent(provider: &str, sc: &SetConsent) -> Result<Address, Rejection> {
    use RejectCode::*;
    if sc.user.is_empty() {
        return Err(Rejection::new(MissingField, "user is required"));
    }
    let user = Address::parse(&sc.user)
        .map_err(|e| Rejection::new(InvalidAddress, format!("user: {e}")))?;
    if user.provider() != provider {
        return Err(Rejection::new(
            SenderNotOwned,
            "user must be a user of the authenticated provider",
        ));
    }
    if sc.allowed_providers.len() > MAX_ALLOWED_PROVIDERS {
        return Err(Rejection::new(
            TooLong,
            format!("at most {MAX_ALLOWED_PROVIDERS} allowed providers"),
        ));
    }
    if let Some(bad) = sc.allowed_providers.iter().find(|p| !is_provider_id(p)) {
        return Err(Rejection::new(
            InvalidAddress,
            format!("{bad:?} is not a provider id"),
        ));
    }
    match Inbox::try_from(sc.inbox) {
        Ok(Inbox::Unspecified | Inbox::ThirdParty | Inbox::Combined) => {}
        _ => {
            return Err(Rejection::new(
                InvalidSetting,
                "inbox must be INBOX_THIRD_PARTY or INBOX_COMBINED",
            ))
        }
    }
    Ok(user)
}

/// Checks that `user` is an address of `provider` (the recipient of a
/// `RespondToRequest` or the subject of a `GetConsent`).
pub fn validate_own_user(provider: &str, user: &str) -> Result<Address, Rejection> {
    use RejectCode::*;
    if user.is_empty() {
        return Err(Rejection::new(MissingField, "user is required"));
    }
    let user =
        Address::parse(user).map_err(|e| Rejection::new(InvalidAddress, format!("user: {e}")))?;
    if user.provider() != provider {
        return Err(Rejection::new(
            SenderNotOwned,
            "user must be a user of the authenticated provider",
        ));
    }
    Ok(user)
}

/// Checks a `RespondToRequest` from `provider`: returns the recipient, the
/// sender and the action.
pub fn validate_respond(
    provider: &str,
    r: &RespondToRequest,
) -> Result<(Address, Address, RequestAction), Rejection> {
    use RejectCode::*;
    let user = validate_own_user(provider, &r.user)?;
    if r.sender.is_empty() {
        return Err(Rejection::new(MissingField, "sender is required"));
    }
    let sender = Address::parse(&r.sender)
        .map_err(|e| Rejection::new(InvalidAddress, format!("sender: {e}")))?;
    if sender == user {
        return Err(Rejection::new(
            InvalidSetting,
            "a user cannot answer about themselves",
        ));
    }
    match RequestAction::try_from(r.action) {
        Ok(RequestAction::Unspecified) | Err(_) => Err(Rejection::new(
            InvalidSetting,
            "action must be ACCEPT, DECLINE, BLOCK, REPORT or RESET",
        )),
        Ok(action) => Ok((user, sender, action)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accepted age of `sent_at_ms` with the default idempotency window.
    const AGE: i64 = max_sent_at_age_ms(DEFAULT_IDEMPOTENCY_WINDOW_MS);

    #[test]
    fn sent_at_is_refused_just_past_the_idempotency_window_less_the_skew() {
        let now = 1_800_000_000_000;
        let day = 24 * 3600 * 1000;
        for window in [
            MIN_IDEMPOTENCY_WINDOW_MS,
            DEFAULT_IDEMPOTENCY_WINDOW_MS,
            MAX_IDEMPOTENCY_WINDOW_MS,
        ] {
            let age = max_sent_at_age_ms(window);
            assert!(check_sent_at(now - age, now, age).is_ok(), "{window}");
            let r = check_sent_at(now - age - 1, now, age).unwrap_err();
            assert_eq!(r.code, RejectCode::TimestampOutOfRange);
            assert!(r.detail.contains("idempotency window"), "{}", r.detail);
            assert!(check_sent_at(now + MAX_SENT_AT_SKEW_MS, now, age).is_ok());
            let r = check_sent_at(now + MAX_SENT_AT_SKEW_MS + 1, now, age).unwrap_err();
            assert_eq!(r.code, RejectCode::TimestampOutOfRange);
        }
        // With the default window (24 h): 23h50m accepted, a 3-day-old
        // re-send refused (it was accepted twice before ADR 27).
        let age = max_sent_at_age_ms(DEFAULT_IDEMPOTENCY_WINDOW_MS);
        let r = check_sent_at(now - 3 * day, now, age).unwrap_err();
        assert_eq!(
            r.detail,
            "sent_at_ms is more than 23h50m before the gateway's clock: older than the \
             idempotency window (1d) less the allowed clock skew, a re-send of it could not \
             be recognised as a duplicate"
        );
        // Through validate_send, a minute inside and a minute outside.
        let mut e = text_env("hi");
        e.sent_at_ms = interop_proto::now_ms() - AGE + 60_000;
        assert!(validate_send("signal", Some(&e), AGE).is_ok());
        e.sent_at_ms = interop_proto::now_ms() - AGE - 60_000;
        assert_eq!(
            code(validate_send("signal", Some(&e), AGE)),
            RejectCode::TimestampOutOfRange
        );
    }
    use interop_proto::v1::{CallAttempt, Delete, Edit, Reaction, Typing};

    fn text_env(body: &str) -> Envelope {
        Envelope {
            client_message_id: "c1".into(),
            from: "signal:alice".into(),
            to: "home:+4915112345678".into(),
            encryption: Encryption::TransportOnly as i32,
            content: Some(Content::Text(Text { body: body.into() })),
            ..Default::default()
        }
    }

    fn code(r: Result<(Address, Address), Rejection>) -> RejectCode {
        r.err().map(|r| r.code).unwrap_or(RejectCode::Unspecified)
    }

    #[test]
    fn text_limits_at_the_edge() {
        assert!(validate_send("signal", Some(&text_env(&"a".repeat(MAX_TEXT_BYTES))), AGE).is_ok());
        assert_eq!(
            code(validate_send(
                "signal",
                Some(&text_env(&"a".repeat(MAX_TEXT_BYTES + 1))),
                AGE
            )),
            RejectCode::TooLong
        );
        assert_eq!(
            code(validate_send("signal", Some(&text_env("")), AGE)),
            RejectCode::EmptyContent
        );
        // Multi-byte characters count in bytes.
        let emoji = "😀".repeat(MAX_TEXT_BYTES / 4);
        assert!(validate_send("signal", Some(&text_env(&emoji)), AGE).is_ok());
        let emoji = "😀".repeat(MAX_TEXT_BYTES / 4 + 1);
        assert_eq!(
            code(validate_send("signal", Some(&text_env(&emoji)), AGE)),
            RejectCode::TooLong
        );
    }

    #[test]
    fn each_field_is_checked() {
        use RejectCode::*;
        let base = text_env("hi");
        type Mutation = Box<dyn Fn(&mut Envelope)>;
        let cases: Vec<(Mutation, RejectCode)> = vec![
            (Box::new(|e| e.message_id = "x".into()), MalformedFrame),
            (Box::new(|e| e.client_message_id.clear()), MissingField),
            (Box::new(|e| e.client_message_id = "x".repeat(65)), TooLong),
            (
                Box::new(|e| e.client_message_id = "a b".into()),
                MalformedFrame,
            ),
            (Box::new(|e| e.from = "signal".into()), InvalidAddress),
            (Box::new(|e| e.to = "home:12345".into()), InvalidAddress),
            (Box::new(|e| e.to.clear()), MissingField),
            (Box::new(|e| e.from = "telegram:bob".into()), SenderNotOwned),
            (Box::new(|e| e.encryption = 0), EncryptionMismatch),
            (Box::new(|e| e.encryption = 99), EncryptionMismatch),
            (
                Box::new(|e| e.encryption = Encryption::E2ee as i32),
                EncryptionMismatch,
            ),
            (Box::new(|e| e.content = None), EmptyContent),
            (Box::new(|e| e.sent_at_ms = 1), TimestampOutOfRange),
            (
                Box::new(|e| e.sent_at_ms = interop_proto::now_ms() + 3_600_000),
                TimestampOutOfRange,
            ),
            (Box::new(|e| e.sent_at_ms = -5), TimestampOutOfRange),
            (
                Box::new(|e| {
                    e.content = Some(Content::Receipt(Default::default()));
                }),
                UnsupportedContent,
            ),
            (
                Box::new(|e| {
                    e.content = Some(Content::GroupChange(Default::default()));
                }),
                UnsupportedContent,
            ),
            (
                Box::new(|e| {
                    e.content = Some(Content::KeyNotice(Default::default()));
                }),
                UnsupportedContent,
            ),
            (
                Box::new(|e| {
                    e.content = Some(Content::Ciphertext(Ciphertext {
                        scheme: "signal".into(),
                        payload: vec![1u8; 10].into(),
                        ..Default::default()
                    }))
                }),
                EncryptionMismatch,
            ),
        ];
        for (i, (mutate, want)) in cases.iter().enumerate() {
            let mut e = base.clone();
            mutate(&mut e);
            assert_eq!(
                code(validate_send("signal", Some(&e), AGE)),
                *want,
                "case {i}"
            );
        }
        assert_eq!(code(validate_send("signal", None, AGE)), MissingField);
    }

    #[test]
    fn ciphertext_limits() {
        let mut e = text_env("x");
        e.encryption = Encryption::E2ee as i32;
        e.content = Some(Content::Ciphertext(Ciphertext {
            scheme: "signal".into(),
            payload: vec![7u8; MAX_CIPHERTEXT_BYTES].into(),
            ..Default::default()
        }));
        assert!(validate_send("signal", Some(&e), AGE).is_ok());
        e.content = Some(Content::Ciphertext(Ciphertext {
            scheme: "signal".into(),
            payload: vec![7u8; MAX_CIPHERTEXT_BYTES + 1].into(),
            ..Default::default()
        }));
        assert_eq!(
            code(validate_send("signal", Some(&e), AGE)),
            RejectCode::TooLong
        );
    }

    #[test]
    fn per_device_ciphertexts_are_limited_at_their_edges() {
        use interop_proto::v1::DeviceCiphertext;
        let device = |id: &str, len: usize| DeviceCiphertext {
            device_id: id.into(),
            payload: vec![7u8; len].into(),
        };
        let with_sender = |devices: Vec<DeviceCiphertext>,
                           sender_devices: Vec<DeviceCiphertext>,
                           payload: usize,
                           missing: bool| {
            let mut e = text_env("x");
            e.encryption = Encryption::E2ee as i32;
            e.content = Some(Content::Ciphertext(Ciphertext {
                scheme: "olm.v1".into(),
                payload: vec![1u8; payload].into(),
                devices,
                missing_for_device: missing,
                sender_devices,
            }));
            validate_send("signal", Some(&e), AGE)
                .map(|_| ())
                .map_err(|r| r.code)
        };
        let check = |devices: Vec<DeviceCiphertext>, payload: usize, missing: bool| {
            with_sender(devices, vec![], payload, missing)
        };
        let full: Vec<_> = (0..MAX_DEVICE_CIPHERTEXTS)
            .map(|i| device(&format!("d{i}"), 16))
            .collect();
        assert_eq!(check(full.clone(), 0, false), Ok(()));
        let mut over = full;
        over.push(device("one-more", 16));
        assert_eq!(check(over, 0, false), Err(RejectCode::TooLong));
        assert_eq!(
            check(vec![device("a", MAX_CIPHERTEXT_BYTES)], 0, false),
            Ok(())
        );
        assert_eq!(
            check(vec![device("a", MAX_CIPHERTEXT_BYTES + 1)], 0, false),
            Err(RejectCode::TooLong)
        );
        assert_eq!(
            check(vec![device("a", 0)], 0, false),
            Err(RejectCode::EmptyContent)
        );
        assert_eq!(
            check(vec![device("a b", 1)], 0, false),
            Err(RejectCode::InvalidSetting)
        );
        assert_eq!(
            check(vec![device("a", 1), device("a", 1)], 0, false),
            Err(RejectCode::MalformedFrame)
        );
        // A payload for all and per-device ones at once, or the gateway's own
        // flag set by a client: refused.
        assert_eq!(
            check(vec![device("a", 1)], 1, false),
            Err(RejectCode::MalformedFrame)
        );
        assert_eq!(check(vec![], 1, true), Err(RejectCode::MalformedFrame));
        assert_eq!(check(vec![], 0, false), Err(RejectCode::EmptyContent));
        // The sender's other devices count against the same 16, are checked
        // the same way, and only go with per-device ciphertexts.
        let half = |p: &str| -> Vec<_> {
            (0..MAX_DEVICE_CIPHERTEXTS / 2)
                .map(|i| device(&format!("{p}{i}"), 16))
                .collect()
        };
        assert_eq!(with_sender(half("r"), half("s"), 0, false), Ok(()));
        let mut over = half("s");
        over.push(device("one-more", 16));
        assert_eq!(
            with_sender(half("r"), over, 0, false),
            Err(RejectCode::TooLong)
        );
        // The same device id on both sides is fine: they are different users.
        assert_eq!(
            with_sender(vec![device("a", 1)], vec![device("a", 1)], 0, false),
            Ok(())
        );
        assert_eq!(
            with_sender(vec![device("a", 1)], vec![device("b", 0)], 0, false),
            Err(RejectCode::EmptyContent)
        );
        assert_eq!(
            with_sender(
                vec![device("a", 1)],
                vec![device("b", 1), device("b", 1)],
                0,
                false
            ),
            Err(RejectCode::MalformedFrame)
        );
        assert_eq!(
            with_sender(vec![], vec![device("b", 1)], 1, false),
            Err(RejectCode::MalformedFrame)
        );
        // Not in a group send.
        let mut g = text_env("x");
        g.to = String::new();
        g.group_id = "g-0123456789abcdef0123456789abcdef".into();
        g.encryption = Encryption::E2ee as i32;
        g.content = Some(Content::Ciphertext(Ciphertext {
            scheme: "olm.v1".into(),
            devices: vec![device("a", 1)],
            sender_devices: vec![device("b", 1)],
            ..Default::default()
        }));
        assert_eq!(
            validate_group_send("signal", &g, AGE)
                .map(|_| ())
                .map_err(|r| r.code),
            Err(RejectCode::MalformedFrame)
        );
        g.content = Some(Content::Ciphertext(Ciphertext {
            scheme: "olm.v1".into(),
            devices: vec![device("a", 1)],
            ..Default::default()
        }));
        assert!(validate_group_send("signal", &g, AGE).is_ok());
    }

    fn with(content: Content, encryption: Encryption) -> Envelope {
        Envelope {
            encryption: encryption as i32,
            content: Some(content),
            ..text_env("x")
        }
    }

    fn reaction(target: &str, emoji: &str) -> Content {
        Content::Reaction(Reaction {
            target_message_id: target.into(),
            emoji: emoji.into(),
        })
    }

    #[test]
    fn reactions_at_their_limits() {
        use Encryption::*;
        let ok = |e: Envelope| validate_send("signal", Some(&e), AGE).is_ok();
        assert!(ok(with(reaction("m1", "👍"), TransportOnly)));
        // An empty emoji removes a reaction.
        assert!(ok(with(reaction("m1", ""), TransportOnly)));
        assert!(ok(with(
            reaction("m1", &"a".repeat(MAX_REACTION_BYTES)),
            TransportOnly
        )));
        assert_eq!(
            code(validate_send(
                "signal",
                Some(&with(
                    reaction("m1", &"a".repeat(MAX_REACTION_BYTES + 1)),
                    TransportOnly
                )),
                AGE
            )),
            RejectCode::TooLong
        );
        assert!(ok(with(
            reaction(&"m".repeat(MAX_MESSAGE_ID_BYTES), "👍"),
            TransportOnly
        )));
        assert_eq!(
            code(validate_send(
                "signal",
                Some(&with(
                    reaction(&"m".repeat(MAX_MESSAGE_ID_BYTES + 1), "👍"),
                    TransportOnly
                )),
                AGE
            )),
            RejectCode::TooLong
        );
        assert_eq!(
            code(validate_send(
                "signal",
                Some(&with(reaction("", "👍"), TransportOnly)),
                AGE
            )),
            RejectCode::MissingField
        );
        assert_eq!(
            code(validate_send(
                "signal",
                Some(&with(reaction("a b", "👍"), TransportOnly)),
                AGE
            )),
            RejectCode::MalformedFrame
        );
        assert_eq!(
            code(validate_send(
                "signal",
                Some(&with(reaction("m1", "👍"), E2ee)),
                AGE
            )),
            RejectCode::EncryptionMismatch
        );
    }

    #[test]
    fn edits_deletes_replies_typing_calls() {
        use Encryption::*;
        let check = |e: Envelope| code(validate_send("signal", Some(&e), AGE));
        let edit = |text: Option<&str>, ct: Option<usize>| {
            Content::Edit(Edit {
                target_message_id: "m1".into(),
                text: text.map(|b| Text { body: b.into() }),
                ciphertext: ct.map(|n| Ciphertext {
                    scheme: "mls".into(),
                    payload: vec![1u8; n].into(),
                    ..Default::default()
                }),
            })
        };
        let max = "a".repeat(MAX_TEXT_BYTES);
        let over = "a".repeat(MAX_TEXT_BYTES + 1);
        assert_eq!(
            check(with(edit(Some(&max), None), TransportOnly)),
            RejectCode::Unspecified
        );
        assert_eq!(
            check(with(edit(Some(&over), None), TransportOnly)),
            RejectCode::TooLong
        );
        assert_eq!(
            check(with(edit(Some(""), None), TransportOnly)),
            RejectCode::EmptyContent
        );
        assert_eq!(
            check(with(edit(Some("x"), None), E2ee)),
            RejectCode::EncryptionMismatch
        );
        assert_eq!(
            check(with(edit(None, Some(MAX_CIPHERTEXT_BYTES)), E2ee)),
            RejectCode::Unspecified
        );
        assert_eq!(
            check(with(edit(None, Some(MAX_CIPHERTEXT_BYTES + 1)), E2ee)),
            RejectCode::TooLong
        );
        assert_eq!(
            check(with(edit(None, None), E2ee)),
            RejectCode::EmptyContent
        );
        assert_eq!(
            check(with(edit(Some("x"), Some(3)), E2ee)),
            RejectCode::MalformedFrame
        );
        let delete = |t: &str| {
            Content::Delete(Delete {
                target_message_id: t.into(),
            })
        };
        assert_eq!(check(with(delete("m1"), E2ee)), RejectCode::Unspecified);
        assert_eq!(
            check(with(delete("m1"), TransportOnly)),
            RejectCode::Unspecified
        );
        assert_eq!(check(with(delete(""), E2ee)), RejectCode::MissingField);
        assert_eq!(
            check(with(Content::Typing(Typing { active: true }), E2ee)),
            RejectCode::Unspecified
        );
        assert_eq!(
            check(with(Content::Call(CallAttempt { video: true }), E2ee)),
            RejectCode::Unspecified
        );
        let mut reply = text_env("re");
        reply.in_reply_to = "m".repeat(MAX_MESSAGE_ID_BYTES);
        assert_eq!(check(reply.clone()), RejectCode::Unspecified);
        reply.in_reply_to = "m".repeat(MAX_MESSAGE_ID_BYTES + 1);
        assert_eq!(check(reply.clone()), RejectCode::TooLong);
        reply.in_reply_to = "a/b".into();
        assert_eq!(check(reply), RejectCode::MalformedFrame);
    }

    #[test]
    fn group_sends() {
        let mut e = text_env("hi");
        e.to.clear();
        e.group_id = format!("g-{}", "0a".repeat(16));
        assert!(validate_group_send("signal", &e, AGE).is_ok());
        let mut bad = e.clone();
        bad.group_id = format!("g-{}", "0A".repeat(16));
        assert_eq!(
            validate_group_send("signal", &bad, AGE).unwrap_err().code,
            RejectCode::MalformedFrame
        );
        let mut bad = e.clone();
        bad.to = "home:+4915112345678".into();
        assert_eq!(
            validate_group_send("signal", &bad, AGE).unwrap_err().code,
            RejectCode::MalformedFrame
        );
        // Typing goes to groups too (to the members' open sessions).
        let mut typing = e.clone();
        typing.content = Some(Content::Typing(Typing { active: true }));
        assert!(validate_group_send("signal", &typing, AGE).is_ok());
        // A one-to-one send may not name a group.
        let mut bad = text_env("hi");
        bad.group_id.clone_from(&e.group_id);
        assert_eq!(
            code(validate_send("signal", Some(&bad), AGE)),
            RejectCode::MalformedFrame
        );
    }

    #[test]
    fn consent_checks() {
        let ok = SetConsent {
            user: "home:+4915112345678".into(),
            opted_in: true,
            allowed_providers: vec!["signal".into()],
            inbox: Inbox::Combined as i32,
        };
        assert!(validate_consent("home", &ok).is_ok());
        for inbox in [Inbox::Unspecified, Inbox::ThirdParty] {
            let fine = SetConsent {
                inbox: inbox as i32,
                ..ok.clone()
            };
            assert!(validate_consent("home", &fine).is_ok());
        }
        for inbox in [Inbox::Requests as i32, 99] {
            let bad = SetConsent {
                inbox,
                ..ok.clone()
            };
            assert_eq!(
                validate_consent("home", &bad).unwrap_err().code,
                RejectCode::InvalidSetting
            );
        }
        assert_eq!(
            validate_consent("signal", &ok).unwrap_err().code,
            RejectCode::SenderNotOwned
        );
        let bad = SetConsent {
            allowed_providers: vec!["Signal!".into()],
            ..ok.clone()
        };
        assert_eq!(
            validate_consent("home", &bad).unwrap_err().code,
            RejectCode::InvalidAddress
        );
        let at_limit = SetConsent {
            allowed_providers: vec!["p".into(); MAX_ALLOWED_PROVIDERS],
            ..ok.clone()
        };
        assert!(validate_consent("home", &at_limit).is_ok());
        let many = SetConsent {
            allowed_providers: vec!["p".into(); MAX_ALLOWED_PROVIDERS + 1],
            ..ok
        };
        assert_eq!(
            validate_consent("home", &many).unwrap_err().code,
            RejectCode::TooLong
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use interop_proto::v1::Text;
    use proptest::prelude::*;

    /// The accepted age of `sent_at_ms` with the default idempotency window.
    const AGE: i64 = max_sent_at_age_ms(DEFAULT_IDEMPOTENCY_WINDOW_MS);

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Whatever the fields hold, validation answers without panicking,
        /// and what it accepts is well-formed and owned by the provider.
        #[test]
        fn validation_is_total_and_sound(
            cmid in ".{0,80}",
            from in ".{0,40}",
            to in ".{0,40}",
            encryption in -3i32..5,
            body in ".{0,64}",
            sent_at in any::<i64>(),
        ) {
            let env = Envelope {
                client_message_id: cmid,
                from,
                to,
                encryption,
                sent_at_ms: sent_at,
                content: Some(Content::Text(Text { body })),
                ..Default::default()
            };
            if let Ok((from, _to)) = validate_send("signal", Some(&env), AGE) {
                prop_assert_eq!(from.provider(), "signal");
                prop_assert!(!env.client_message_id.is_empty());
                prop_assert!(env.client_message_id.len() <= MAX_CLIENT_MESSAGE_ID_BYTES);
                prop_assert_eq!(env.encryption, Encryption::TransportOnly as i32);
            }
        }

        /// Every generated valid send is accepted, and each one mutation
        /// that breaks one rule is refused with that rule's code: the
        /// soundness checks run on inputs that pass.
        #[test]
        fn valid_sends_pass_and_each_broken_rule_is_refused_with_its_code(
            env in valid_send(),
            mutation in 0usize..MUTATIONS,
        ) {
            prop_assert!(validate_send("signal", Some(&env), AGE).is_ok(), "{:?}", env);
            let (broken, code) = mutate(env, mutation);
            let refused = validate_send("signal", Some(&broken), AGE).map(|_| ()).map_err(|r| r.code);
            prop_assert_eq!(refused, Err(code), "mutation {} of {:?}", mutation, broken);
        }
    }

    /// A valid one-to-one send from a `signal:` user: text (TRANSPORT_ONLY)
    /// or a ciphertext (E2EE, one payload or one per device), with or
    /// without a reply reference and a send time within the window.
    fn valid_send() -> impl Strategy<Value = Envelope> {
        let content = prop_oneof![
            "[a-zA-Z0-9 éü🙂]{1,64}"
                .prop_map(|body| (Content::Text(Text { body }), Encryption::TransportOnly)),
            proptest::collection::vec(any::<u8>(), 1..256).prop_map(|p| (
                Content::Ciphertext(Ciphertext {
                    scheme: "signal".into(),
                    payload: p.into(),
                    ..Default::default()
                }),
                Encryption::E2ee
            )),
            proptest::collection::btree_set("[a-z0-9_-]{1,16}", 1..=MAX_DEVICE_CIPHERTEXTS)
                .prop_map(|ids| (
                    Content::Ciphertext(Ciphertext {
                        scheme: "olm.v1".into(),
                        devices: ids
                            .into_iter()
                            .map(|device_id| DeviceCiphertext {
                                device_id,
                                payload: vec![7u8; 8].into(),
                            })
                            .collect(),
                        ..Default::default()
                    }),
                    Encryption::E2ee
                )),
        ];
        (
            "[A-Za-z0-9._:-]{1,64}",
            "[a-z][a-z0-9_.]{0,30}",
            prop_oneof![
                "\\+49[0-9]{10}".prop_map(|n| format!("home:{n}")),
                "[a-z][a-z0-9_.]{0,30}".prop_map(|u| format!("telegram:{u}")),
            ],
            content,
            proptest::option::of("[A-Za-z0-9._:-]{1,64}"),
            proptest::option::of(-AGE / 2..MAX_SENT_AT_SKEW_MS / 2),
        )
            .prop_map(
                |(cmid, user, to, (content, encryption), reply, sent)| Envelope {
                    client_message_id: cmid,
                    from: format!("signal:{user}"),
                    to,
                    encryption: encryption as i32,
                    in_reply_to: reply.unwrap_or_default(),
                    sent_at_ms: sent.map_or(0, |d| interop_proto::now_ms() + d),
                    content: Some(content),
                    ..Default::default()
                },
            )
    }

    const MUTATIONS: usize = 12;

    /// Breaks one rule of a valid send; the code it must be refused with.
    fn mutate(mut e: Envelope, which: usize) -> (Envelope, RejectCode) {
        use RejectCode::*;
        let code = match which {
            0 => {
                e.client_message_id.clear();
                MissingField
            }
            1 => {
                e.client_message_id = "x".repeat(MAX_CLIENT_MESSAGE_ID_BYTES + 1);
                TooLong
            }
            2 => {
                // Same length, one character outside [A-Za-z0-9._:-].
                e.client_message_id.replace_range(0..1, " ");
                MalformedFrame
            }
            3 => {
                e.from = "telegram:mallory".into();
                SenderNotOwned
            }
            4 => {
                e.to = "nobody".into();
                InvalidAddress
            }
            5 => {
                e.message_id = "m1".into();
                MalformedFrame
            }
            6 => {
                e.sent_at_ms = interop_proto::now_ms() + 2 * MAX_SENT_AT_SKEW_MS;
                TimestampOutOfRange
            }
            7 => {
                e.encryption = if e.encryption == Encryption::E2ee as i32 {
                    Encryption::TransportOnly as i32
                } else {
                    Encryption::E2ee as i32
                };
                EncryptionMismatch
            }
            8 => {
                e.encryption = Encryption::Unspecified as i32;
                EncryptionMismatch
            }
            9 => {
                e.content = None;
                EmptyContent
            }
            10 => {
                match e.content.as_mut() {
                    Some(Content::Text(t)) => t.body = "x".repeat(MAX_TEXT_BYTES + 1),
                    Some(Content::Ciphertext(c)) if c.devices.is_empty() => {
                        c.payload = vec![1u8; MAX_CIPHERTEXT_BYTES + 1].into()
                    }
                    Some(Content::Ciphertext(c)) => {
                        c.devices[0].payload = vec![1u8; MAX_CIPHERTEXT_BYTES + 1].into()
                    }
                    _ => unreachable!("valid_send makes text or ciphertext"),
                }
                TooLong
            }
            _ => {
                e.group_id = "g-0123456789abcdef0123456789abcdef".into();
                MalformedFrame
            }
        };
        (e, code)
    }
}
