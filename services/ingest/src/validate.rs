//! Validation of `Send` and `SetConsent` frames. Every check returns a typed
//! rejection; nothing that fails here is ever published.

use interop_proto::address::is_provider_id;
use interop_proto::limits::*;
use interop_proto::v1::{
    envelope::Content, Encryption, Envelope, Inbox, RejectCode, RequestAction, RespondToRequest,
    SetConsent,
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

/// Checks a `Send` envelope from `provider` and returns the parsed
/// addresses.
pub fn validate_send(
    provider: &str,
    env: Option<&Envelope>,
) -> Result<(Address, Address), Rejection> {
    use RejectCode::*;
    let env = env.ok_or_else(|| Rejection::new(MissingField, "send.envelope is required"))?;
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
    if env.from.is_empty() || env.to.is_empty() {
        return Err(Rejection::new(MissingField, "from and to are required"));
    }
    let from = Address::parse(&env.from)
        .map_err(|e| Rejection::new(InvalidAddress, format!("from: {e}")))?;
    let to =
        Address::parse(&env.to).map_err(|e| Rejection::new(InvalidAddress, format!("to: {e}")))?;
    if from.provider() != provider {
        return Err(Rejection::new(
            SenderNotOwned,
            "from must be a user of the authenticated provider",
        ));
    }
    if env.sent_at_ms != 0 {
        let now = interop_proto::now_ms();
        if env.sent_at_ms < now - MAX_SENT_AT_AGE_MS || env.sent_at_ms > now + MAX_SENT_AT_SKEW_MS {
            return Err(Rejection::new(
                TimestampOutOfRange,
                "sent_at_ms must be within 7 days before and 10 minutes after the gateway's clock",
            ));
        }
    }
    if env.sender_account_created_at_ms < 0
        || env.sender_account_created_at_ms > interop_proto::now_ms() + MAX_SENT_AT_SKEW_MS
    {
        return Err(Rejection::new(
            TimestampOutOfRange,
            "sender_account_created_at_ms must not be negative or in the future",
        ));
    }
    if env.in_reply_to.len() > MAX_CLIENT_MESSAGE_ID_BYTES {
        return Err(Rejection::new(TooLong, "in_reply_to is too long"));
    }
    let encryption = Encryption::try_from(env.encryption).unwrap_or(Encryption::Unspecified);
    if encryption == Encryption::Unspecified {
        return Err(Rejection::new(
            EncryptionMismatch,
            "encryption must be E2EE or TRANSPORT_ONLY",
        ));
    }
    match &env.content {
        None => return Err(Rejection::new(EmptyContent, "content is required")),
        Some(Content::Text(t)) => {
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
        }
        Some(Content::Ciphertext(c)) => {
            if c.payload.is_empty() {
                return Err(Rejection::new(EmptyContent, "ciphertext payload is empty"));
            }
            if c.payload.len() > MAX_CIPHERTEXT_BYTES {
                return Err(Rejection::new(
                    TooLong,
                    format!("ciphertext is longer than {MAX_CIPHERTEXT_BYTES} bytes"),
                ));
            }
            if encryption != Encryption::E2ee {
                return Err(Rejection::new(
                    EncryptionMismatch,
                    "ciphertext must be E2EE",
                ));
            }
        }
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
        Some(_) => {
            return Err(Rejection::new(
                UnsupportedContent,
                "this gateway accepts text, ciphertext and media for now",
            ))
        }
    }
    Ok((from, to))
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
    use interop_proto::v1::{Ciphertext, Reaction, Text};

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
        assert!(validate_send("signal", Some(&text_env(&"a".repeat(MAX_TEXT_BYTES)))).is_ok());
        assert_eq!(
            code(validate_send(
                "signal",
                Some(&text_env(&"a".repeat(MAX_TEXT_BYTES + 1)))
            )),
            RejectCode::TooLong
        );
        assert_eq!(
            code(validate_send("signal", Some(&text_env("")))),
            RejectCode::EmptyContent
        );
        // Multi-byte characters count in bytes.
        let emoji = "😀".repeat(MAX_TEXT_BYTES / 4);
        assert!(validate_send("signal", Some(&text_env(&emoji))).is_ok());
        let emoji = "😀".repeat(MAX_TEXT_BYTES / 4 + 1);
        assert_eq!(
            code(validate_send("signal", Some(&text_env(&emoji)))),
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
                    e.content = Some(Content::Reaction(Reaction {
                        target_message_id: "m".into(),
                        emoji: "👍".into(),
                    }))
                }),
                UnsupportedContent,
            ),
            (
                Box::new(|e| {
                    e.content = Some(Content::Ciphertext(Ciphertext {
                        scheme: "signal".into(),
                        payload: vec![1u8; 10].into(),
                    }))
                }),
                EncryptionMismatch,
            ),
        ];
        for (i, (mutate, want)) in cases.iter().enumerate() {
            let mut e = base.clone();
            mutate(&mut e);
            assert_eq!(code(validate_send("signal", Some(&e))), *want, "case {i}");
        }
        assert_eq!(code(validate_send("signal", None)), MissingField);
    }

    #[test]
    fn ciphertext_limits() {
        let mut e = text_env("x");
        e.encryption = Encryption::E2ee as i32;
        e.content = Some(Content::Ciphertext(Ciphertext {
            scheme: "signal".into(),
            payload: vec![7u8; MAX_CIPHERTEXT_BYTES].into(),
        }));
        assert!(validate_send("signal", Some(&e)).is_ok());
        e.content = Some(Content::Ciphertext(Ciphertext {
            scheme: "signal".into(),
            payload: vec![7u8; MAX_CIPHERTEXT_BYTES + 1].into(),
        }));
        assert_eq!(code(validate_send("signal", Some(&e))), RejectCode::TooLong);
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
            if let Ok((from, _to)) = validate_send("signal", Some(&env)) {
                prop_assert_eq!(from.provider(), "signal");
                prop_assert!(!env.client_message_id.is_empty());
                prop_assert!(env.client_message_id.len() <= MAX_CLIENT_MESSAGE_ID_BYTES);
                prop_assert_eq!(env.encryption, Encryption::TransportOnly as i32);
            }
        }
    }
}
