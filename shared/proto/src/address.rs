//! Addresses: `<provider>:<user>`.
//!
//! - provider: 1..=32 bytes of `[a-z0-9-]`, starting with a letter.
//! - user of the `home` provider: an E.164 number, `+` and 8..=15 digits, the
//!   first not 0.
//! - user of any other provider: 1..=128 bytes of printable ASCII without
//!   spaces (`!`..=`~`).

use std::fmt;

use crate::limits::{MAX_DEVICE_ID_BYTES, MAX_PROVIDER_ID_BYTES, MAX_USER_BYTES};
use crate::HOME_PROVIDER;

/// Why a string is not an address. Each variant maps to the
/// `INVALID_ADDRESS` reject code with its text as the detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address must be <provider>:<user>")]
    MissingSeparator,
    #[error("provider id must be 1-32 bytes of [a-z0-9-] starting with a letter")]
    BadProvider,
    #[error("home users must be E.164 numbers, e.g. +4915112345678")]
    BadPhoneNumber,
    #[error("user must be 1-128 printable ASCII bytes without spaces")]
    BadUser,
}

/// A parsed, valid address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    raw: String,
    split: usize,
}

impl Address {
    /// Parses and validates an address.
    pub fn parse(raw: &str) -> Result<Self, AddressError> {
        let split = raw.find(':').ok_or(AddressError::MissingSeparator)?;
        let (provider, user) = (&raw[..split], &raw[split + 1..]);
        if !is_provider_id(provider) {
            return Err(AddressError::BadProvider);
        }
        if provider == HOME_PROVIDER {
            if !is_e164(user) {
                return Err(AddressError::BadPhoneNumber);
            }
        } else if user.is_empty()
            || user.len() > MAX_USER_BYTES
            || !user.bytes().all(|b| (b'!'..=b'~').contains(&b))
        {
            return Err(AddressError::BadUser);
        }
        Ok(Self {
            raw: raw.to_owned(),
            split,
        })
    }

    /// The provider id, e.g. `signal`.
    pub fn provider(&self) -> &str {
        &self.raw[..self.split]
    }

    /// The user part, e.g. `alice` or `+4915112345678`.
    pub fn user(&self) -> &str {
        &self.raw[self.split + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// A form safe for logs: the provider and at most the last two characters
    /// of the user (`home:…78`). Full phone numbers never go into logs.
    pub fn redacted(&self) -> Redacted<'_> {
        Redacted(self)
    }
}

impl fmt::Display for Address {
    /// Displays the full address. Use [`Address::redacted`] in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// See [`Address::redacted`].
pub struct Redacted<'a>(&'a Address);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = self.0.user();
        let tail: String = user
            .chars()
            .rev()
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        write!(f, "{}:…{}", self.0.provider(), tail)
    }
}

/// Whether `s` is a valid device id: 1 to 64 bytes of `[A-Za-z0-9_-]`.
pub fn valid_device_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DEVICE_ID_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `s` is a valid provider id.
pub fn is_provider_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PROVIDER_ID_BYTES
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_addresses() {
        let a = Address::parse("home:+4915112345678").unwrap();
        assert_eq!(a.provider(), "home");
        assert_eq!(a.user(), "+4915112345678");
        assert_eq!(a.redacted().to_string(), "home:…78");
        let b = Address::parse("signal:alice").unwrap();
        assert_eq!(b.provider(), "signal");
        assert_eq!(b.user(), "alice");
        Address::parse(&format!("x:{}", "u".repeat(128))).unwrap();
        Address::parse(&format!("{}:u", "p".repeat(32))).unwrap();
        Address::parse("home:+12345678").unwrap();
        Address::parse("home:+123456789012345").unwrap();
    }

    #[test]
    fn rejects_invalid_addresses() {
        use AddressError::*;
        let cases = [
            ("", MissingSeparator),
            ("alice", MissingSeparator),
            (":alice", BadProvider),
            ("Signal:alice", BadProvider),
            ("1signal:alice", BadProvider),
            ("sig_nal:alice", BadProvider),
            ("signal:", BadUser),
            ("signal:al ice", BadUser),
            ("signal:al\u{e9}", BadUser),
            ("home:4915112345678", BadPhoneNumber),
            ("home:+0915112345678", BadPhoneNumber),
            ("home:+1234567", BadPhoneNumber),
            ("home:+1234567890123456", BadPhoneNumber),
            ("home:+49151a2345678", BadPhoneNumber),
        ];
        for (input, want) in cases {
            assert_eq!(Address::parse(input), Err(want), "{input:?}");
        }
        let long_user = format!("x:{}", "u".repeat(129));
        assert_eq!(Address::parse(&long_user), Err(BadUser));
        let long_provider = format!("{}:u", "p".repeat(33));
        assert_eq!(Address::parse(&long_provider), Err(BadProvider));
    }
}
