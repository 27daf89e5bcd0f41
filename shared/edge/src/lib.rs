//! The provider edge: what ingest, delivery and the media API share to face
//! providers. TLS and mutual TLS with handshake and header timeouts
//! ([`tls`]), WebSocket framing with size checks before decoding ([`ws`]),
//! and the `Hello` checks beyond the registry: the failed-authentication
//! throttle and the per-provider connection cap ([`EdgeGuard`]).
//!
//! Services without a provider-facing endpoint (routing, spam-scoring) do
//! not link this crate, nor rustls, hyper or the provider registry.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

mod guard;
pub mod tls;
pub mod ws;

pub use guard::*;
