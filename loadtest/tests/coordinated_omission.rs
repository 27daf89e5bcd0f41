//! The coordinated-omission correction, end to end through the pacer, the
//! recorder and the report the binary uses: a sink that stalls once for a
//! second must show up in the p99 measured from intended send times, and
//! would not in a naive measurement from actual send times.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use interop_loadtest::plan::{Plan, RunId};
use interop_loadtest::recorder::{Answer, Recorder};
use interop_loadtest::report::{Report, RunFacts, TargetInfo};
use interop_loadtest::schedule::{pace, Clock, Job, Sink};
use interop_loadtest::Scenario;

/// A fake gateway: accepts and delivers every message the moment it is
/// sent, except that sending stalls once, for `stall`, at `stall_at`.
struct StallingGateway {
    recorder: Arc<Recorder>,
    clock: Clock,
    stall_at: u64,
    stall: Duration,
}

impl Sink for StallingGateway {
    async fn submit(&mut self, job: Job) -> bool {
        if job.seq == self.stall_at {
            tokio::time::sleep(self.stall).await;
        }
        let sent = self.clock.now_us();
        self.recorder.sent(job.seq, sent);
        self.recorder.answered(job.seq, Answer::Accepted, sent);
        self.recorder
            .delivered(&[(job.seq, sent)], self.clock.now_us());
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_second_stall_shows_in_the_corrected_p99_and_not_in_the_naive_one() {
    // 3 s at 500 msgs/s; the stall at 1 s holds back the 500 messages due
    // between 1 s and 2 s: a third of all messages waited 0..1 s.
    let scenario = Scenario::from_toml(
        "name = 'stall'\n[rate]\nmsgs_per_s = 500\nduration_s = 3\ndrain_s = 1",
    )
    .unwrap();
    let plan = Arc::new(Plan::new(&scenario, RunId(1)));
    let recorder = Arc::new(Recorder::new(scenario.schedule.clone(), plan));
    let clock = Clock::starting_at(Instant::now());
    let mut gateway = StallingGateway {
        recorder: recorder.clone(),
        clock,
        stall_at: 500,
        stall: Duration::from_secs(1),
    };
    let outcome = pace(
        &scenario.schedule,
        clock,
        &mut gateway,
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.submitted, 1500);

    let facts = RunFacts {
        run_id: RunId(1),
        started_at_unix_ms: 0,
        target: TargetInfo {
            ingest_url: "fake".into(),
            delivery_url: "fake".into(),
        },
        max_lag_us: outcome.max_lag_us,
        drain_s: 0.0,
        drained: true,
        interrupted: false,
        duplicates_suppressed_by_client: 0,
        resent_after_reconnect: 0,
    };
    let report = Report::build(&scenario, &recorder.stats(), &recorder.ledger, &facts, None);
    let corrected = report.latency_ms;
    let naive = report.latency_uncorrected_ms;
    eprintln!("corrected {corrected:?}\nnaive {naive:?}");
    assert_eq!(corrected.count, 1500);
    assert_eq!(
        (report.lost, report.duplicates, report.delivered),
        (0, 0, 1500)
    );
    // With the correction, the stall is in the p99 (the top 1% waited
    // ~970..1000 ms) and in the p90.
    assert!(corrected.p99 >= 900.0, "corrected p99 {corrected:?}");
    assert!(corrected.p90 >= 600.0, "corrected p90 {corrected:?}");
    assert!(corrected.max >= 990.0, "corrected max {corrected:?}");
    // Measured from the actual send, only the stalled message itself waited:
    // the p99 does not see the stall at all.
    assert!(naive.p99 < 50.0, "naive p99 {naive:?}");
    // The generator noticed it fell behind, and says so.
    assert!(report.generator.max_lag_ms >= 900.0);
    assert!(report.warnings.iter().any(|w| w.contains("fell up to")));
    // The latency-over-time chart data shows where: messages meant for the
    // second 1..2 waited, the others did not.
    let p99_by_second: Vec<f64> = report
        .timeline
        .iter()
        .filter_map(|s| s.latency_ms.map(|l| l.p99))
        .collect();
    assert!(p99_by_second[1] >= 900.0, "{p99_by_second:?}");
    assert!(
        p99_by_second[0] < 50.0 && p99_by_second[2] < 50.0,
        "{p99_by_second:?}"
    );
}
