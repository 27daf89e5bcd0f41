//! Media types, kinds and their limits, and the formats recipients accept.
//!
//! Limits (documented in docs/protocol.md, "Media"):
//!
//! | kind | declared type | bytes | other |
//! |---|---|---|---|
//! | image, sticker | `image/*` | 16 MiB | 40 megapixels |
//! | voice | `audio/*` | 16 MiB | 15 minutes |
//! | video, animated GIF | `video/*`, `image/gif` | 100 MiB (GIF: 16 MiB) | 5 minutes, frames up to 3840x2160 |
//! | file | anything else | 100 MiB | |

use std::fmt;
use std::time::Duration;

const MIB: u64 = 1024 * 1024;

/// Largest image or sticker upload.
pub const IMAGE_MAX_BYTES: u64 = 16 * MIB;
/// Most pixels an image may have (checked from its header before decoding).
pub const IMAGE_MAX_PIXELS: u64 = 40_000_000;
/// Largest voice upload.
pub const VOICE_MAX_BYTES: u64 = 16 * MIB;
/// Longest voice note.
pub const VOICE_MAX_DURATION: Duration = Duration::from_secs(15 * 60);
/// Largest video upload.
pub const VIDEO_MAX_BYTES: u64 = 100 * MIB;
/// Longest video (and animated GIF).
pub const VIDEO_MAX_DURATION: Duration = Duration::from_secs(5 * 60);
/// Most pixels per video frame (3840x2160).
pub const VIDEO_MAX_PIXELS: u64 = 3840 * 2160;
/// Longest side of a video frame.
pub const VIDEO_MAX_SIDE: u32 = 4096;
/// Largest file upload.
pub const FILE_MAX_BYTES: u64 = 100 * MIB;
/// Longest media type, in bytes (as the envelope's `content_type`).
pub const MAX_MEDIA_TYPE_BYTES: usize = 128;

/// What the gateway does with a piece of media. `label()` is the `kind`
/// label of the transcode metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Image,
    Sticker,
    Voice,
    Video,
    Gif,
    File,
}

impl Kind {
    /// The kind of a declared media type; `sticker` marks images sent as
    /// stickers.
    pub fn of(media_type: &MediaType, sticker: bool) -> Self {
        match media_type.top() {
            "image" if media_type.as_str() == "image/gif" && !sticker => Self::Gif,
            "image" if sticker => Self::Sticker,
            "image" => Self::Image,
            "audio" => Self::Voice,
            "video" => Self::Video,
            _ => Self::File,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Sticker => "sticker",
            Self::Voice => "voice",
            Self::Video => "video",
            Self::Gif => "gif",
            Self::File => "file",
        }
    }

    /// Largest upload of this kind, in bytes.
    pub fn max_bytes(self) -> u64 {
        match self {
            Self::Image | Self::Sticker | Self::Gif => IMAGE_MAX_BYTES,
            Self::Voice => VOICE_MAX_BYTES,
            Self::Video => VIDEO_MAX_BYTES,
            Self::File => FILE_MAX_BYTES,
        }
    }
}

/// Declared types the gateway can transcode; server-visible uploads of other
/// `image/`, `audio/` or `video/` types are refused (`UNSUPPORTED_TYPE`).
/// Types outside those three families are files and pass through.
const PROCESSABLE: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "audio/ogg",
    "audio/opus",
    "audio/mpeg",
    "audio/mp4",
    "audio/aac",
    "audio/x-m4a",
    "audio/wav",
    "audio/x-wav",
    "audio/wave",
    "audio/webm",
    "audio/flac",
    "audio/amr",
    "video/mp4",
    "video/quicktime",
    "video/webm",
    "video/x-matroska",
    "video/3gpp",
];

/// A media type, lowercase `type/subtype` without parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MediaType(String);

/// Why a media type was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a media type (type/subtype)")]
pub struct BadMediaType(pub String);

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#' | b'$' | b'&' | b'-' | b'^' | b'_' | b'.' | b'+'
                )
        })
}

impl MediaType {
    /// Parses `type/subtype[; parameters]`; parameters are dropped.
    pub fn parse(raw: &str) -> Result<Self, BadMediaType> {
        let bad = || BadMediaType(raw.chars().take(MAX_MEDIA_TYPE_BYTES).collect());
        let essence = raw.split(';').next().unwrap_or("").trim();
        if essence.len() > MAX_MEDIA_TYPE_BYTES {
            return Err(bad());
        }
        let (top, sub) = essence.split_once('/').ok_or_else(bad)?;
        if !is_token(top) || !is_token(sub) {
            return Err(bad());
        }
        Ok(Self(essence.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The top-level type (`image` of `image/png`).
    pub fn top(&self) -> &str {
        self.0.split('/').next().unwrap_or("")
    }

    /// Whether the gateway can process server-visible media of this type
    /// (transcode it, or pass it through as a file).
    pub fn processable(&self) -> bool {
        match self.top() {
            "image" | "audio" | "video" => PROCESSABLE.contains(&self.as_str()),
            _ => true,
        }
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The formats a recipient's client can play: `type/subtype`, `type/*` or
/// `*/*`, in order of preference.
///
/// Built from the recipient provider's `capabilities.media_formats` in the
/// registry, or from `--accept-formats` when the provider declares none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptFormats(Vec<String>);

/// The default list: JPEG and WebP images, Opus voice in Ogg, H.264/AAC MP4
/// video, and files.
pub const DEFAULT_ACCEPT_FORMATS: &str =
    "image/jpeg,image/webp,audio/ogg,video/mp4,application/*,text/plain";

impl AcceptFormats {
    /// Parses a comma-separated list.
    pub fn parse(list: &str) -> Result<Self, BadMediaType> {
        let mut out = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let item = item.to_ascii_lowercase();
            let ok = item == "*/*"
                || item
                    .strip_suffix("/*")
                    .is_some_and(|top| is_token(top) && !top.contains('/'))
                || MediaType::parse(&item).is_ok_and(|t| t.as_str() == item);
            if !ok {
                return Err(BadMediaType(item));
            }
            out.push(item);
        }
        if out.is_empty() {
            return Err(BadMediaType(list.to_owned()));
        }
        Ok(Self(out))
    }

    /// Whether a recipient can play `t`.
    pub fn accepts(&self, t: &str) -> bool {
        let top = t.split('/').next().unwrap_or("");
        self.0
            .iter()
            .any(|a| a == "*/*" || a == t || a.strip_suffix("/*").is_some_and(|p| p == top))
    }
}

impl Default for AcceptFormats {
    fn default() -> Self {
        // The default list is a constant that parses.
        Self::parse(DEFAULT_ACCEPT_FORMATS).expect("the default accept list is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_normalised_and_checked() {
        let t = MediaType::parse("Image/JPEG; charset=binary").unwrap();
        assert_eq!(t.as_str(), "image/jpeg");
        assert_eq!(t.top(), "image");
        assert!(MediaType::parse("jpeg").is_err());
        assert!(MediaType::parse("image/").is_err());
        assert!(MediaType::parse("image/jp eg").is_err());
        assert!(MediaType::parse(&format!("a/{}", "b".repeat(200))).is_err());
    }

    #[test]
    fn kinds_and_limits() {
        let k = |s: &str, sticker| Kind::of(&MediaType::parse(s).unwrap(), sticker);
        assert_eq!(k("image/png", false), Kind::Image);
        assert_eq!(k("image/png", true), Kind::Sticker);
        assert_eq!(k("image/gif", false), Kind::Gif);
        assert_eq!(k("audio/ogg", false), Kind::Voice);
        assert_eq!(k("video/mp4", false), Kind::Video);
        assert_eq!(k("application/pdf", false), Kind::File);
        assert_eq!(Kind::Image.max_bytes(), 16 * 1024 * 1024);
        assert_eq!(Kind::Video.max_bytes(), 100 * 1024 * 1024);
        assert!(!MediaType::parse("image/heic").unwrap().processable());
        assert!(MediaType::parse("application/pdf").unwrap().processable());
    }

    #[test]
    fn accept_lists_match_exact_types_and_wildcards() {
        let a = AcceptFormats::default();
        assert!(a.accepts("image/jpeg"));
        assert!(a.accepts("application/pdf"));
        assert!(!a.accepts("image/heic"));
        assert!(!a.accepts("video/webm"));
        assert!(AcceptFormats::parse("*/*").unwrap().accepts("image/heic"));
        assert!(AcceptFormats::parse("image/jpeg,nonsense").is_err());
        assert!(AcceptFormats::parse("").is_err());
    }
}
