//! Errors of media processing.

use std::time::Duration;

use interop_proto::v1::RejectCode;

/// Why a piece of media could not be delivered. Every variant but
/// [`MediaError::Unavailable`] is the sender's media's fault and reaches the
/// sender as a FAILED receipt with [`MediaError::code`] and the message as
/// detail; `Unavailable` is ours and the message is retried.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// No media with this id from this provider.
    #[error(
        "no media with this id was uploaded by this provider (unknown, expired or someone else's)"
    )]
    NotFound,
    /// Over a byte, pixel or duration limit.
    #[error("{0}")]
    TooLarge(String),
    /// Corrupt, truncated, empty, mislabeled, or not what the envelope says.
    #[error("{0}")]
    Invalid(String),
    /// The recipient cannot play it, or the gateway cannot process the type.
    #[error("{0}")]
    Unsupported(String),
    /// The envelope's encryption is not the one the media was uploaded with.
    #[error("{0}")]
    EncryptionMismatch(String),
    /// Processing took too long (treated as bad media: it would again).
    #[error("processing the {kind} took longer than {limit:?}; it may be corrupt or too complex")]
    Timeout { kind: &'static str, limit: Duration },
    /// Storage, Redis, a temp dir or ffmpeg itself is not available: retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl MediaError {
    /// The code of the FAILED receipt to the sender.
    pub fn code(&self) -> RejectCode {
        match self {
            Self::NotFound => RejectCode::MediaNotFound,
            Self::TooLarge(_) => RejectCode::TooLong,
            Self::Invalid(_) | Self::Timeout { .. } => RejectCode::MediaInvalid,
            Self::Unsupported(_) => RejectCode::UnsupportedContent,
            Self::EncryptionMismatch(_) => RejectCode::EncryptionMismatch,
            Self::Unavailable(_) => RejectCode::Unavailable,
        }
    }

    /// Whether a retry could succeed (our side is down, not the media bad).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}
