//! Test-only: the gateway as real processes under steady load, with faults
//! injected one at a time, for the fault-injection suite
//! (`tests/faults.rs`) and the soak run (`soak`, run by `scripts/soak`).
//!
//! - [`binaries`]: the five service executables, built by Cargo with the
//!   test's own profile and target dir.
//! - [`gateway`]: the services as processes (the flags `scripts/up` passes),
//!   killed with SIGKILL and started again with the same flags.
//! - [`load`]: the load generator (`interop-loadtest`) running while a
//!   fault happens, recovery measured, and its loss/duplicate ledger.
//! - [`impact`]: what each fault of a soak run cost the messages sent
//!   around it (from the load report's per-second latency).
//! - [`inspect`]: where lost messages are (which stream), for failure
//!   messages.
//! - [`rss`]: resident memory of a process, from `/proc`.
//!
//! NATS (single node or a cluster), Redis and the TCP chaos proxy come from
//! `interop-test-support`. `docs/reliability.md` lists the scenarios and
//! what they measured.

pub mod binaries;
pub mod gateway;
pub mod impact;
pub mod inspect;
pub mod load;
pub mod rss;

pub use binaries::{Binaries, SERVICES};
pub use gateway::{Gateway, GatewayOptions};
pub use load::{Load, Outcome};
