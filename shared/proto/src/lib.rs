//! Protocol v1 of the interop gateway.
//!
//! The types are generated at build time from `proto/interop/v1/*.proto`
//! (see `build.rs`); `docs/protocol.md` explains them to providers. This crate
//! adds what the `.proto` files cannot say: address syntax and the limits
//! every endpoint enforces.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

pub mod address;
pub mod keys;
pub mod limits;

/// Generated protobuf types, package `interop.v1`. Their docs are the
/// `.proto` comments, written for every language's reader (`<key>` is a
/// placeholder there, not HTML), so rustdoc's HTML and link checks are off
/// for them.
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    rustdoc::invalid_html_tags,
    rustdoc::broken_intra_doc_links,
    rustdoc::bare_urls
)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/interop.v1.rs"));
}

pub use address::{Address, AddressError};
pub use prost::Message;

/// The protocol major version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The provider id of the gatekeeper's own users.
pub const HOME_PROVIDER: &str = "home";

/// The ciphertext of an envelope's content: a ciphertext, or an edit's
/// (both may carry one ciphertext per device).
pub fn ciphertext_mut(env: &mut v1::Envelope) -> Option<&mut v1::Ciphertext> {
    match env.content.as_mut()? {
        v1::envelope::Content::Ciphertext(c) => Some(c),
        v1::envelope::Content::Edit(e) => e.ciphertext.as_mut(),
        _ => None,
    }
}

/// Current time as Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
