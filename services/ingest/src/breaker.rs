//! Refusing sends at once while Redis is out, instead of each waiting for
//! the store timeout.
//!
//! Every send's checks need Redis (rate limits, consent, the idempotency
//! claim). While Redis does not answer (restarting, or loading a large data
//! set for a minute or more, `LOADING`), each round trip waited the whole
//! `--store-timeout-ms` (1.5 s) before its sends were refused
//! `UNAVAILABLE`. With two round trips in flight per replica that refused
//! about 340 sends a second; at 1,000 offered, the rest queued behind them
//! and providers' clients waited up to 50 s for an answer (the soak's
//! Redis restart). Once a round trip fails on an outage, the breaker is
//! open: sends are refused at once (`UNAVAILABLE`, with the usual retry
//! hint), and one round trip at a time, every [`PROBE_EVERY`], goes to
//! Redis to see whether it is back; the first that succeeds closes it.
//! A failure about the call itself (a wrong-typed key) does not open it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long sends are refused without a round trip after a failed one,
/// before the next probe.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(250);

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Redis answered last time: go ahead.
    Closed,
    /// Redis did not; this call is the one that looks whether it is back
    /// (report with `probe = true`).
    Probe,
    /// Redis did not, and it is not time to look again (or another call
    /// is looking): refuse at once.
    Refuse,
}

/// The breaker's state, shared by the replica's connections.
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    /// When the last failure was seen; `None` while closed.
    open_since: Mutex<Option<Instant>>,
    /// A probe is in flight.
    probing: AtomicBool,
}

impl Breaker {
    /// Whether a round trip may go to Redis at `now`.
    pub(crate) fn pass(&self, now: Instant) -> Pass {
        let open = *self.open_since.lock().expect("never poisoned");
        match open {
            None => Pass::Closed,
            Some(at) if now.duration_since(at) < PROBE_EVERY => Pass::Refuse,
            Some(_) => {
                if self
                    .probing
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    Pass::Probe
                } else {
                    Pass::Refuse
                }
            }
        }
    }

    /// The outcome of a round trip let through (`probe`: it was the
    /// probe). An answer closes the breaker; an outage opens it (again)
    /// from `now`. Returns whether it was open before.
    pub(crate) fn record(&self, probe: bool, outcome: Outcome, now: Instant) -> bool {
        let was_open = std::mem::replace(
            &mut *self.open_since.lock().expect("never poisoned"),
            match outcome {
                Outcome::Answered => None,
                Outcome::Outage => Some(now),
            },
        )
        .is_some();
        if probe {
            self.probing.store(false, Ordering::Release);
        }
        was_open
    }

    /// Whether it is open (sends refused without a round trip).
    #[cfg(test)]
    fn is_open(&self) -> bool {
        self.open_since.lock().expect("never poisoned").is_some()
    }
}

/// How a round trip went, for [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Redis answered it (with an error about the call itself, too).
    Answered,
    /// Redis is out: unreachable, timed out, loading its data.
    Outage,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_until_an_outage_then_refuses_until_the_probe_time() {
        let b = Breaker::default();
        let t0 = Instant::now();
        assert_eq!(b.pass(t0), Pass::Closed);
        b.record(false, Outcome::Outage, t0);
        assert!(b.is_open());
        assert_eq!(b.pass(t0), Pass::Refuse);
        assert_eq!(
            b.pass(t0 + PROBE_EVERY - Duration::from_millis(1)),
            Pass::Refuse
        );
        // At the probe time, one call looks; the others are still refused.
        let t1 = t0 + PROBE_EVERY;
        assert_eq!(b.pass(t1), Pass::Probe);
        assert_eq!(b.pass(t1), Pass::Refuse);
        assert_eq!(b.pass(t1 + Duration::from_secs(5)), Pass::Refuse);
    }

    #[test]
    fn a_probe_that_fails_opens_it_again_from_then() {
        let b = Breaker::default();
        let t0 = Instant::now();
        b.record(false, Outcome::Outage, t0);
        let t1 = t0 + PROBE_EVERY;
        assert_eq!(b.pass(t1), Pass::Probe);
        let t2 = t1 + Duration::from_millis(1500); // it timed out
        b.record(true, Outcome::Outage, t2);
        assert_eq!(b.pass(t2 + PROBE_EVERY / 2), Pass::Refuse);
        assert_eq!(b.pass(t2 + PROBE_EVERY), Pass::Probe);
    }

    #[test]
    fn a_probe_that_is_answered_closes_it() {
        let b = Breaker::default();
        let t0 = Instant::now();
        b.record(false, Outcome::Outage, t0);
        let t1 = t0 + PROBE_EVERY;
        assert_eq!(b.pass(t1), Pass::Probe);
        b.record(true, Outcome::Answered, t1);
        assert!(!b.is_open());
        assert_eq!(b.pass(t1), Pass::Closed);
        assert_eq!(b.pass(t1), Pass::Closed);
    }
}
