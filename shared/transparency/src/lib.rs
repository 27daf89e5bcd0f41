//! # interop-transparency: key transparency for the key directory
//!
//! Every device identity key the key directory holds is to be committed to
//! an auditable key directory built on Meta's `akd` crate (issue 21), so a
//! provider, a user or an auditor can check that the key they were given is
//! the one committed to everyone.
//!
//! Built so far:
//! - the directory's storage ([`storage::JetStreamDatabase`]): akd's
//!   records in memory, made durable and replicated by a log in JetStream
//!   with one history (compare-and-set commits), replayed by every replica;
//! - epochs ([`epoch::Transparency`]): the key directory's writes since the
//!   last epoch, committed under each user's address, each root published
//!   for anyone to read ([`read_roots`]).
//!
//! Not yet: running it in ingest, proofs with fetches, the client's
//! verification and the audit command (docs/adr/0029).

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

pub mod audit;
pub mod epoch;
pub mod proof;
pub mod storage;

pub use audit::{audit, AuditProblem, AuditReport};
pub use epoch::{read_roots, KtDirectory, KtError, Root, Transparency, VrfKey};
pub use proof::{check_keys, foreign_keys, verify, verify_history, VerifyError, Version};
pub use storage::JetStreamDatabase;

/// The akd configuration the gateway uses (WhatsApp's: the same hashes and
/// commitments as a deployed key transparency system).
pub type Config = akd::WhatsAppV1Configuration;
