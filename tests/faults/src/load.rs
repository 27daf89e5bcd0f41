//! Steady load from the load generator while a fault is injected, and the
//! two measurements the fault suite makes of it:
//!
//! - **recovery**: from the moment the fault ended (the killed process was
//!   started again, the proxy healed) until the first message *sent after
//!   that moment* reached its recipient's session — "messages flow again",
//!   end to end, as a provider sees it. Polled every 20 ms.
//! - **the ledger** (from `interop-loadtest`): every message has a sequence
//!   number; one bitset marks the accepted ones, one the delivered ones.
//!   After the drain, *lost* = accepted and neither delivered nor answered
//!   by a `FAILED` receipt. *Duplicates* are counted before any
//!   de-duplication: a second delivery of a sequence number, plus the
//!   re-sent server ids the client library dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use interop_loadtest::recorder::Recorder;
use interop_loadtest::run::{run_observed, Finished, RunError};
use interop_loadtest::schedule::Clock;
use interop_loadtest::{Progress, Report, Scenario, Target};

/// A fault scenario's load: `rate` msgs/s from auto-sized senders of
/// provider `signal` to `recipients` users of `home`, half E2EE, a tenth
/// of senders tracking receipts. Sent until stopped (at most `max_s`).
pub fn scenario(
    name: &str,
    rate: u32,
    recipients: u32,
    receipt_share: f64,
    max_s: u32,
) -> Scenario {
    let text = format!(
        r#"
        name = "{name}"
        [rate]
        msgs_per_s = {rate}
        duration_s = {max_s}
        drain_s = 60
        [users]
        recipients = {recipients}
        ingest_connections = 2
        [mix]
        e2ee_share = 0.5
        receipt_share = {receipt_share}
        "#
    );
    // A fixed, valid scenario (checked by the tests that use it).
    Scenario::from_toml(&text).expect("the fault scenario is valid")
}

/// One load run in progress.
pub struct Load {
    recorder: Arc<Recorder>,
    clock: Clock,
    stop: CancellationToken,
    task: JoinHandle<Result<Finished, RunError>>,
    scenario: Scenario,
}

/// What a fault run measured.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    /// Time from the end of each fault to the first fresh delivery.
    pub recoveries: Vec<Duration>,
    /// Duplicates the client library suppressed (same server message id).
    pub duplicates_suppressed_by_client: u64,
    /// Some tracked messages that were delivered but whose `DELIVERED`
    /// receipt never came (at most 20; for failure messages).
    pub missing_receipts_sample: Vec<u64>,
    /// The run's recipients (to search their stores for lost messages).
    pub recipients: Vec<String>,
}

impl Outcome {
    /// A one-line summary for logs and docs/reliability.md.
    pub fn summary(&self, name: &str) -> String {
        let r = &self.report;
        let recoveries = self
            .recoveries
            .iter()
            .map(|d| format!("{:.2}", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" / ");
        format!(
            "FAULT {name}: recovery_s {recoveries} | sent {} accepted {} rejected {:?} unanswered {} resent_after_reconnect {} delivered {} failed {:?} lost {} duplicates_seen_by_apps {} (on the wire {}, dropped by the client {}) out_of_order {} (refused and stored after all: {}) receipts {} missing {} delivered_unacknowledged {} drained {} drain_s {:.1}",
            r.sent,
            r.accepted,
            r.rejected,
            r.unanswered,
            r.generator.resent_after_reconnect,
            r.delivered,
            r.failed,
            r.lost,
            r.duplicates_seen_by_apps,
            r.duplicates,
            r.duplicates_dropped_by_client,
            r.out_of_order,
            r.out_of_order_unaccepted,
            r.receipts.delivered,
            r.receipts.missing,
            r.delivered_unacknowledged,
            r.generator.drained,
            r.generator.drain_s,
        )
    }
}

impl Load {
    /// Starts the load and returns once messages flow (a first delivery
    /// was seen), so a fault hits a system in steady state.
    pub async fn start(target: &Target, scenario: Scenario) -> Self {
        let stop = CancellationToken::new();
        let (observed, mut started) = tokio::sync::oneshot::channel::<(Arc<Recorder>, Clock)>();
        let mut task = {
            let (scenario, target, stop) = (scenario.clone(), target.clone(), stop.clone());
            // The run's future is not `Send` (a higher-ranked lifetime in
            // its set-up), so it is driven on a blocking thread; the tasks it
            // spawns run on this runtime as usual.
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                handle.block_on(run_observed(
                    &scenario,
                    &target,
                    Progress::Off,
                    stop,
                    CancellationToken::new(),
                    move |recorder, clock| {
                        // The receiver waits below unless the test gave up.
                        observed.send((recorder, clock)).ok();
                    },
                ))
            })
        };
        // The sender is dropped without a value if the run ends first.
        let (recorder, clock) = tokio::select! {
            o = &mut started => match o {
                Ok(o) => o,
                Err(_) => match (&mut task).await {
                    Ok(Err(e)) => panic!("the load could not start: {e}"),
                    other => panic!("the load ended before it started: {:?}", other.err()),
                },
            },
            () = tokio::time::sleep(Duration::from_secs(60)) => panic!("the load did not start in 60 s"),
        };
        let load = Self {
            recorder,
            clock,
            stop,
            task,
            scenario,
        };
        let first = load.first_delivery_after(0, Duration::from_secs(60)).await;
        assert!(first.is_some(), "no message was delivered in 60 s of load");
        load
    }

    /// Microseconds since the run's start (the recorder's clock).
    pub fn now_us(&self) -> u64 {
        self.clock.now_us()
    }

    /// The moment `us` of the run's clock.
    pub fn instant_at(&self, us: u64) -> Instant {
        self.clock.instant_at(us)
    }

    /// Waits until a message intended to be sent at or after `since_us`
    /// has been delivered, for at most `timeout`; returns when that was.
    pub async fn first_delivery_after(&self, since_us: u64, timeout: Duration) -> Option<Instant> {
        let schedule = self.recorder.schedule();
        let total = schedule.total();
        // The first sequence number meant for `since_us` or later.
        let (mut lo, mut hi) = (0u64, total);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if schedule.offset_us(mid).unwrap_or(u64::MAX) < since_us {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let first = lo;
        let deadline = Instant::now() + timeout;
        let delivered = &self.recorder.ledger.delivered;
        let mut next = first;
        loop {
            // Only numbers whose time has come can have been sent.
            let now = self.clock.now_us();
            while next < total && schedule.offset_us(next).unwrap_or(u64::MAX) <= now {
                next += 1;
            }
            if (first..next).any(|seq| delivered.contains(seq)) {
                return Some(Instant::now());
            }
            if Instant::now() > deadline || next >= total {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Time from `fault_end` (taken with [`Load::now_us`] when the fault
    /// ended) until fresh messages are delivered again; panics after
    /// `timeout`, the scenario's stated recovery bound.
    pub async fn recovery(&self, fault_end_us: u64, timeout: Duration, what: &str) -> Duration {
        let start = self.clock.instant_at(fault_end_us);
        match self.first_delivery_after(fault_end_us, timeout).await {
            Some(at) => at.saturating_duration_since(start),
            None => {
                panic!("{what}: no message sent after the fault was delivered within {timeout:?}")
            }
        }
    }

    /// Keeps the load on for `d`.
    pub async fn steady(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Ends the send phase, waits for the drain and builds the report.
    pub async fn finish(self, recoveries: Vec<Duration>) -> Outcome {
        self.stop.cancel();
        let finished = self
            .task
            .await
            .expect("the load task did not panic")
            .expect("the load run ended without an error");
        let report = finished.report(&self.scenario, None);
        Outcome {
            report,
            recoveries,
            duplicates_suppressed_by_client: finished.facts.duplicates_suppressed_by_client,
            missing_receipts_sample: missing_receipts(&finished.recorder, 20),
            recipients: finished.recorder.plan().recipients().to_vec(),
        }
    }

    /// The recipients of the run (to re-send their consent).
    pub fn recipients(&self) -> Vec<String> {
        self.recorder.plan().recipients().to_vec()
    }
}

/// Tracked messages (their sender has a receipt session) that were
/// delivered and neither receipted `DELIVERED` nor failed: at most `limit`.
fn missing_receipts(recorder: &Recorder, limit: usize) -> Vec<u64> {
    let (plan, ledger) = (recorder.plan(), &recorder.ledger);
    (0..recorder.schedule().total())
        .filter(|&seq| {
            ledger.delivered.contains(seq)
                && !ledger.receipted.contains(seq)
                && !ledger.failed.contains(seq)
                && plan.has_receipts(&plan.at(seq))
        })
        .take(limit)
        .collect()
}
