//! `interop-loadtest`: an open-loop load generator that speaks the real
//! protocol (WebSocket + protobuf, through `interop-client`) to a running
//! gateway, and measures what users would see.
//!
//! - [`scenario`]: the TOML scenario (rate, mix, users), checked.
//! - [`schedule`]: intended send times and the open-loop pacer.
//! - [`plan`]: who sends what to whom, a pure function of the sequence number.
//! - [`recorder`] and [`ledger`]: latency histograms (from the intended send
//!   time, correcting coordinated omission), counts, loss and duplicates.
//! - [`run`](mod@run): a run against a gateway; [`ceiling`]: the NATS reference ceiling.
//! - [`cpu`] and [`cost`]: CPU per process, and Redis commands and NATS
//!   messages per delivered message, over each measured step.
//! - [`report`] and [`html`]: JSON, the terminal table and the HTML page;
//!   [`compare`]: the ratios between two runs' JSON reports.
//!
//! `docs/loadtest.md` is the user guide.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

/// `write!` into a `String`; that cannot fail, so the result is dropped.
macro_rules! w {
    ($($arg:tt)*) => {
        write!($($arg)*).ok()
    };
}

/// `writeln!` into a `String` (cannot fail).
macro_rules! wln {
    ($($arg:tt)*) => {
        writeln!($($arg)*).ok()
    };
}

pub mod ceiling;
pub mod compare;
pub mod cost;
pub mod cpu;
pub mod delivery_bench;
pub mod html;
pub mod keys_bench;
pub mod ledger;
pub mod media;
pub mod plan;
pub mod recorder;
pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;

pub use ceiling::{CeilingOptions, CeilingReport};
pub use report::Report;
pub use run::{run, Progress, Target};
pub use scenario::{Scenario, ScenarioError};
