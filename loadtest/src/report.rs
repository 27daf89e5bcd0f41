//! The report of a run: JSON (`--json`), a table for the terminal, and the
//! data behind the HTML charts (`--html`, see `html.rs`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::ceiling::CeilingReport;
use crate::cost::{BusSample, NatsCost, RedisCost};
use crate::ledger::Tally;
use crate::plan::RunId;
use crate::recorder::{SpamStats, Stats};
use crate::scenario::{Scenario, ScenarioFile, Unsupported};
use crate::schedule::Schedule;

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Default)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    /// Samples behind these figures.
    pub count: u64,
}

/// Microseconds as milliseconds (exact to the µs: three decimals).
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Latency {
    pub fn of<T: hdrhistogram::Counter>(h: &Histogram<T>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: round3(h.mean() / 1000.0),
            count: h.len(),
        }
    }
}

/// One point of the latency-by-percentile curve.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct PercentilePoint {
    pub percentile: f64,
    pub corrected_ms: f64,
    pub uncorrected_ms: f64,
}

/// Percentiles drawn in the chart: up to 99.999 and the maximum.
pub const CURVE_PERCENTILES: [f64; 14] = [
    0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.995, 99.999, 100.0,
];

/// One second of the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SecondReport {
    /// Seconds since the start of the schedule.
    pub t_s: u64,
    /// Offered rate in this second (the schedule).
    pub offered: f64,
    pub sent: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub delivered: u64,
    /// Latency of the measured messages *intended* in this second.
    pub latency_ms: Option<Latency>,
}

/// One measured step (a constant-rate run has one).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepReport {
    pub index: usize,
    pub offered_msgs_per_s: f64,
    /// First deliveries received while the step ran, per second.
    pub delivered_msgs_per_s: f64,
    /// First deliveries received while the step ran: the divisor of the
    /// per-message figures.
    pub delivered_in_window: u64,
    pub start_s: f64,
    pub duration_s: f64,
    pub planned: u64,
    pub accepted: u64,
    pub delivered: u64,
    pub lost: u64,
    pub latency_ms: Latency,
    /// Within the knee criteria (`[knee]` in the scenario).
    pub healthy: bool,
    /// CPU per process during the step, percent of one core (`--pids-dir`).
    pub cpu_percent: crate::cpu::CpuPercent,
    /// Microseconds of CPU, all measured processes together, per message
    /// delivered in the step (`None` without CPU figures or deliveries).
    pub cpu_us_per_delivered_msg: Option<f64>,
    /// Redis's commands in the step, per delivered message (`--redis-url`).
    pub redis: Option<RedisCost>,
    /// NATS protocol messages in the step, per delivered message
    /// (`--nats-monitor-url`).
    pub nats: Option<NatsCost>,
}

/// Share of the machine's cores the measured processes may keep busy before
/// the report warns that the host bounds the run.
pub const HOST_BOUND_SHARE: f64 = 0.85;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TargetInfo {
    pub ingest_url: String,
    pub delivery_url: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Derived {
    pub senders: u32,
    pub receipt_senders: u32,
    pub spammers: u32,
    pub recipients: u32,
    pub ingest_connections: u32,
    pub planned_messages: u64,
    pub warmup_s: f64,
    pub measured_s: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Receipts {
    /// Normal senders with a receipt session (spammers always have one).
    pub tracked_senders: u32,
    pub delivered: u64,
    pub duplicate: u64,
    /// Tracked messages delivered whose `DELIVERED` receipt had not come
    /// by the end of the drain. Must be 0.
    pub missing: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Generator {
    /// How far the pacer fell behind its schedule at worst.
    pub max_lag_ms: f64,
    pub connection_errors: u64,
    /// Deliveries that were not messages of this run.
    pub foreign_deliveries: u64,
    pub cores: usize,
    pub drain_s: f64,
    /// Everything was resolved (delivered or failed) before the drain ended.
    pub drained: bool,
    /// Unanswered sends the client library wrote again after re-opening a
    /// lost ingest connection (same client message id; each re-send counts).
    pub resent_after_reconnect: u64,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub run_id: RunId,
    pub started_at_unix_ms: i64,
    pub scenario: ScenarioFile,
    pub derived: Derived,
    pub target: TargetInfo,
    pub sent: u64,
    pub accepted: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    /// Sends with no answer by the end of the drain (after a connection
    /// loss the client library re-sends them on the re-opened connection;
    /// these never got through, or were never written while it was down).
    pub unanswered: u64,
    pub delivered: u64,
    /// `FAILED` receipts seen, by code (only senders with a receipt session).
    pub failed: BTreeMap<&'static str, u64>,
    /// Accepted, and after the drain neither delivered nor failed.
    pub lost: u64,
    /// Sequence numbers of some lost messages, to look for in the logs.
    pub lost_sample: Vec<u64>,
    /// Deliveries of a message already delivered **on the wire**, before
    /// any de-duplication: `duplicates_seen_by_apps` +
    /// `duplicates_dropped_by_client`.
    pub duplicates: u64,
    /// Deliveries of a message already delivered that reached the
    /// application after the client library's de-duplication (its window
    /// of server message ids, kept across reconnects): what a user would
    /// see twice. Must be 0.
    pub duplicates_seen_by_apps: u64,
    /// Redeliveries the client library dropped (a server message id it had
    /// handed out already).
    pub duplicates_dropped_by_client: u64,
    /// Delivered although its `Accepted` never arrived.
    pub delivered_unacknowledged: u64,
    /// First deliveries that reached the app after a later message of the
    /// same sender to the same recipient (one device per recipient): what
    /// a user would see out of order, among accepted sends (the order the
    /// gateway promises is that of its `Accepted` answers). Must be 0.
    pub out_of_order: u64,
    /// The same for sends refused (`UNAVAILABLE` at the store's deadline)
    /// and stored after all, which docs/protocol.md allows: reported, not
    /// a broken promise.
    pub out_of_order_unaccepted: u64,
    /// The first few of `out_of_order`, in detail.
    pub out_of_order_sample: Vec<crate::recorder::OrderBreak>,
    /// First deliveries per second over the measured window (stepped runs:
    /// the best step's).
    pub throughput_msgs_per_s: f64,
    /// First deliveries received in the measured window, all steps.
    pub measured_delivered: u64,
    /// The highest offered rate.
    pub offered_msgs_per_s: f64,
    /// From the intended send time to delivery (corrected for coordinated omission).
    pub latency_ms: Latency,
    /// From the actual send time to delivery (what a naive tester reports).
    pub latency_uncorrected_ms: Latency,
    /// From the intended send time to `Accepted`.
    pub accept_latency_ms: Latency,
    /// From the intended send time to the sender's `DELIVERED` receipt.
    pub receipt_latency_ms: Latency,
    pub receipts: Receipts,
    pub spam: SpamStats,
    /// Spam accepted but neither delivered nor refused: held in the
    /// gateway's quarantine (not counted as lost).
    pub spam_held: u64,
    /// Share of accepted spam that reached a recipient (inbox or requests).
    pub spam_reached_share: Option<f64>,
    pub first_contacts: FirstContactReport,
    /// Messages to groups and their members' copies.
    pub groups: GroupReport,
    /// Media messages, the pool uploaded at set-up, recipients' downloads.
    pub media: MediaReport,
    pub steps: Vec<StepReport>,
    /// Stepped runs: the highest healthy rate before the first unhealthy step.
    pub knee_msgs_per_s: Option<f64>,
    pub ceiling_msgs_per_s: Option<f64>,
    pub ratio_to_ceiling: Option<f64>,
    pub ceiling: Option<CeilingReport>,
    /// CPU per process over the measured phase, percent of one core: the
    /// gateway's processes (`--pids-dir`) and the generator (`loadtest`).
    pub cpu_percent: crate::cpu::CpuPercent,
    /// Microseconds of CPU, all measured processes together, per delivered
    /// message over the measured phase: what a message costs the machine
    /// (docs/adr/0021), steadier than latency on a shared host.
    pub cpu_us_per_delivered_msg: Option<f64>,
    /// Redis's commands over the measured phase, per delivered message
    /// (`--redis-url`; `None`: not measured, `cost_notes` says why).
    pub redis: Option<RedisCost>,
    /// NATS protocol messages over the measured phase, per delivered
    /// message (`--nats-monitor-url`; `None`: not measured).
    pub nats: Option<NatsCost>,
    /// Why Redis or NATS figures are missing, when they are.
    pub cost_notes: Vec<String>,
    pub percentiles: Vec<PercentilePoint>,
    pub timeline: Vec<SecondReport>,
    pub unsupported: Vec<Unsupported>,
    pub generator: Generator,
    pub interrupted: bool,
    pub warnings: Vec<String>,
}

/// Normal senders' first contacts: how many were held beyond the usual
/// message request (accepted, never delivered: quarantined or refused).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FirstContactReport {
    pub sent: u64,
    pub accepted: u64,
    pub delivered: u64,
    /// Of `delivered`: filed as message requests.
    pub as_requests: u64,
    /// Accepted and not delivered (not counted as lost).
    pub held: u64,
    pub held_share: Option<f64>,
}

/// Group messages (`mix.group_share`): each is expected once at each of its
/// `members_per_group` members. A group message missing a copy after the
/// drain is in `lost` (and its missing copies in `copies_lost`); a copy
/// received twice is in `duplicates`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GroupReport {
    pub groups: u32,
    pub members_per_group: u32,
    pub sent: u64,
    pub accepted: u64,
    /// `accepted` × `members_per_group`.
    pub copies_expected: u64,
    pub copies_delivered: u64,
    pub copies_lost: u64,
}

/// Media messages (`mix.media_share`): E2EE blobs uploaded at set-up (a
/// pool, so uploads stay off the send schedule; `upload_ms` is each
/// upload's time) and referred to by the messages; with `mix.fetch_media`
/// recipients download each delivered blob (`download_ms`, each download).
/// Media messages are delivered, lost and duplicated like any other.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MediaReport {
    pub sent: u64,
    pub accepted: u64,
    pub pool_blobs: u64,
    pub pool_bytes: u64,
    pub upload_ms: Latency,
    pub fetch_media: bool,
    pub downloads: u64,
    pub download_errors: u64,
    pub download_ms: Latency,
}

/// What the runner knows beyond the recorder.
#[derive(Debug, Clone)]
pub struct RunFacts {
    pub run_id: RunId,
    pub started_at_unix_ms: i64,
    pub target: TargetInfo,
    pub max_lag_us: u64,
    pub drain_s: f64,
    pub drained: bool,
    pub interrupted: bool,
    /// Redeliveries the client library dropped (a server message id it had
    /// handed out already), all sessions together.
    pub duplicates_suppressed_by_client: u64,
    /// Sends the client library re-sent after reconnecting, all ingest
    /// connections together.
    pub resent_after_reconnect: u64,
}

fn percentile_curve(stats: &Stats) -> Vec<PercentilePoint> {
    if stats.corrected.is_empty() {
        return Vec::new();
    }
    CURVE_PERCENTILES
        .iter()
        .map(|&p| PercentilePoint {
            percentile: p,
            corrected_ms: ms(stats.corrected.value_at_percentile(p)),
            uncorrected_ms: ms(stats.uncorrected.value_at_percentile(p)),
        })
        .collect()
}

fn step_reports(
    scenario: &Scenario,
    stats: &Stats,
    tally_of: &dyn Fn(u64, u64) -> Tally,
) -> Vec<StepReport> {
    let k = &scenario.file.knee;
    scenario
        .schedule
        .steps()
        .zip(&stats.steps)
        .enumerate()
        .map(|(index, (phase, st))| {
            let t = tally_of(phase.first_seq, phase.first_seq + phase.count);
            let duration_s = phase.duration_us as f64 / 1e6;
            let delivered_msgs_per_s = st.delivered_in_window as f64 / duration_s;
            let latency_ms = Latency::of(&st.latency);
            let healthy = t.lost == 0
                && delivered_msgs_per_s >= k.min_delivered_ratio * phase.rate * (1.0 - 1e-9)
                && latency_ms.p99 <= k.max_p99_ms;
            StepReport {
                index,
                offered_msgs_per_s: phase.rate,
                delivered_msgs_per_s: round3(delivered_msgs_per_s),
                delivered_in_window: st.delivered_in_window,
                start_s: phase.start_us as f64 / 1e6,
                duration_s,
                planned: phase.count,
                accepted: t.accepted,
                delivered: t.delivered,
                lost: t.lost,
                latency_ms,
                healthy,
                cpu_percent: Default::default(),
                cpu_us_per_delivered_msg: None,
                redis: None,
                nats: None,
            }
        })
        .collect()
}

/// The knee: the offered rate of the last healthy step before the first
/// unhealthy one; `None` if the first step is unhealthy or none is (the
/// knee is then above the highest step).
pub fn knee(steps: &[StepReport]) -> Option<f64> {
    let first_bad = steps.iter().position(|s| !s.healthy)?;
    first_bad
        .checked_sub(1)
        .map(|i| steps[i].offered_msgs_per_s)
}

fn timeline(schedule: &Schedule, stats: &Stats) -> Vec<SecondReport> {
    // Up to the last second in which anything happened.
    let used = stats
        .seconds
        .iter()
        .rposition(|s| s.sent + s.accepted + s.rejected + s.delivered > 0)
        .map_or(0, |i| i + 1);
    stats.seconds[..used]
        .iter()
        .enumerate()
        .map(|(i, s)| SecondReport {
            t_s: i as u64,
            offered: schedule.rate_at_us(i as u64 * 1_000_000 + 500_000),
            sent: s.sent,
            accepted: s.accepted,
            rejected: s.rejected,
            delivered: s.delivered,
            latency_ms: s.latency.as_ref().map(Latency::of),
        })
        .collect()
}

impl Report {
    pub fn build(
        scenario: &Scenario,
        stats: &Stats,
        ledger: &crate::ledger::Ledger,
        facts: &RunFacts,
        ceiling: Option<CeilingReport>,
    ) -> Self {
        let tally = ledger.tally();
        let steps = step_reports(scenario, stats, &|a, b| ledger.tally_range(a, b));
        let measured_s: f64 = scenario
            .schedule
            .steps()
            .map(|p| p.duration_us as f64 / 1e6)
            .sum();
        let delivered_in_windows: u64 = stats.steps.iter().map(|s| s.delivered_in_window).sum();
        // A stepped run's throughput is its best step (what the gateway can
        // sustain); a constant run's is its measured window.
        let throughput = if scenario.is_stepped() {
            steps
                .iter()
                .map(|s| s.delivered_msgs_per_s)
                .fold(0.0, f64::max)
        } else if measured_s > 0.0 {
            round3(delivered_in_windows as f64 / measured_s)
        } else {
            0.0
        };
        let ceiling_msgs_per_s = ceiling.as_ref().map(|c| round3(c.msgs_per_s));
        let ratio_to_ceiling = ceiling_msgs_per_s
            .filter(|c| *c > 0.0)
            .map(|c| (throughput / c * 10_000.0).round() / 10_000.0);
        let u = &scenario.file.users;
        let fc = stats.first_contacts;
        let spam_held = stats
            .spam
            .accepted
            .saturating_sub(stats.spam.reached_inboxes + stats.spam.refused_as_spam);
        let first_contacts_held = fc.accepted.saturating_sub(fc.delivered);
        let mut report = Self {
            tool: "interop-loadtest",
            version: env!("CARGO_PKG_VERSION"),
            run_id: facts.run_id,
            started_at_unix_ms: facts.started_at_unix_ms,
            scenario: scenario.file.clone(),
            derived: Derived {
                senders: scenario.senders,
                receipt_senders: scenario.receipt_senders,
                spammers: scenario.spammers,
                recipients: u.recipients,
                ingest_connections: u.ingest_connections,
                planned_messages: scenario.schedule.total(),
                warmup_s: scenario.schedule.measured_start_us() as f64 / 1e6,
                measured_s,
            },
            target: facts.target.clone(),
            sent: stats.sent,
            accepted: tally.accepted,
            rejected: stats.rejected.clone(),
            unanswered: stats.unanswered,
            delivered: tally.delivered,
            failed: stats.failed.clone(),
            lost: tally.lost.saturating_sub(spam_held + first_contacts_held),
            lost_sample: ledger.lost_sample(20),
            duplicates: tally.duplicates_seen_by_apps + facts.duplicates_suppressed_by_client,
            duplicates_seen_by_apps: tally.duplicates_seen_by_apps,
            duplicates_dropped_by_client: facts.duplicates_suppressed_by_client,
            delivered_unacknowledged: tally.delivered_unacknowledged,
            out_of_order: stats.out_of_order,
            out_of_order_unaccepted: stats.out_of_order_unaccepted,
            out_of_order_sample: stats.out_of_order_sample.clone(),
            throughput_msgs_per_s: throughput,
            measured_delivered: delivered_in_windows,
            offered_msgs_per_s: scenario.max_rate(),
            latency_ms: Latency::of(&stats.corrected),
            latency_uncorrected_ms: Latency::of(&stats.uncorrected),
            accept_latency_ms: Latency::of(&stats.accept),
            receipt_latency_ms: Latency::of(&stats.receipt),
            receipts: Receipts {
                tracked_senders: scenario.receipt_senders,
                delivered: stats.receipts_delivered,
                duplicate: stats.duplicate_receipts,
                missing: stats
                    .tracked_delivered
                    .saturating_sub(stats.receipts_delivered),
            },
            spam: stats.spam,
            spam_held,
            spam_reached_share: (stats.spam.accepted > 0)
                .then(|| round4(stats.spam.reached_inboxes as f64 / stats.spam.accepted as f64)),
            first_contacts: FirstContactReport {
                sent: fc.sent,
                accepted: fc.accepted,
                delivered: fc.delivered,
                as_requests: fc.as_requests,
                held: first_contacts_held,
                held_share: (fc.accepted > 0)
                    .then(|| round4(first_contacts_held as f64 / fc.accepted as f64)),
            },
            groups: {
                let g = stats.groups;
                let members = if g.sent > 0 { u.members_per_group } else { 0 };
                let expected = g.accepted * u64::from(members);
                GroupReport {
                    groups: if scenario.file.mix.group_share > 0.0 {
                        u.groups
                    } else {
                        0
                    },
                    members_per_group: members,
                    sent: g.sent,
                    accepted: g.accepted,
                    copies_expected: expected,
                    copies_delivered: g.copies_delivered,
                    copies_lost: expected.saturating_sub(g.copies_delivered),
                }
            },
            media: MediaReport {
                sent: stats.media.sent,
                accepted: stats.media.accepted,
                pool_blobs: stats.media.pool_blobs,
                pool_bytes: stats.media.pool_bytes,
                upload_ms: Latency::of(&stats.media_upload),
                fetch_media: scenario.file.mix.fetch_media && scenario.file.mix.media_share > 0.0,
                downloads: stats.media.downloads,
                download_errors: stats.media.download_errors,
                download_ms: Latency::of(&stats.media_download),
            },
            knee_msgs_per_s: if scenario.is_stepped() {
                knee(&steps)
            } else {
                None
            },
            steps,
            ceiling_msgs_per_s,
            ratio_to_ceiling,
            ceiling,
            cpu_percent: Default::default(),
            cpu_us_per_delivered_msg: None,
            redis: None,
            nats: None,
            cost_notes: Vec::new(),
            percentiles: percentile_curve(stats),
            timeline: timeline(&scenario.schedule, stats),
            unsupported: scenario.unsupported.clone(),
            generator: Generator {
                max_lag_ms: ms(facts.max_lag_us),
                connection_errors: stats.connection_errors,
                foreign_deliveries: stats.foreign,
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
                drain_s: round3(facts.drain_s),
                drained: facts.drained,
                resent_after_reconnect: facts.resent_after_reconnect,
            },
            interrupted: facts.interrupted,
            warnings: Vec::new(),
        };
        report.warnings = report.find_warnings(scenario);
        report
    }

    /// First deliveries per second over the whole measured phase (for a
    /// stepped run, all steps together, unlike `throughput_msgs_per_s`).
    pub fn measured_delivered_per_s(&self) -> f64 {
        if self.derived.measured_s > 0.0 {
            self.measured_delivered as f64 / self.derived.measured_s
        } else {
            0.0
        }
    }

    /// Fills in `cpu_us_per_delivered_msg`, of the run and of each step,
    /// from `cpu_percent` and the rate delivered over the same time (the
    /// run's: the whole measured phase). Call it once the CPU figures are
    /// in.
    pub fn note_cpu_per_message(&mut self) {
        let per_message = |cpu: &crate::cpu::CpuPercent, delivered_per_s: f64| {
            let busy: f64 = cpu.values().sum();
            (busy > 0.0 && delivered_per_s > 0.0)
                .then(|| busy / 100.0 * 1_000_000.0 / delivered_per_s)
        };
        self.cpu_us_per_delivered_msg =
            per_message(&self.cpu_percent, self.measured_delivered_per_s());
        for s in &mut self.steps {
            s.cpu_us_per_delivered_msg = per_message(&s.cpu_percent, s.delivered_msgs_per_s);
        }
    }

    /// Fills in `redis` and `nats`, of the run and of each step, from
    /// readings taken at the start of every step and the end of the last
    /// (`samples`, as many as the steps and one more; fewer when the run
    /// stopped early). `redis_source` and `nats_source` say what was read
    /// (`None`: not asked for). Readings that failed leave their windows
    /// out and add a warning; `cost_notes` says what is missing and why.
    pub fn note_bus_costs(
        &mut self,
        samples: &[BusSample],
        redis_source: Option<&str>,
        nats_source: Option<&str>,
    ) {
        let complete = samples.len() == self.steps.len() + 1;
        let delivered: Vec<u64> = self.steps.iter().map(|s| s.delivered_in_window).collect();
        let measured = self.measured_delivered;
        match redis_source {
            None => self
                .cost_notes
                .push("Redis per delivered message: not measured (pass --redis-url)".to_owned()),
            Some(source) => {
                let w = windows(
                    samples,
                    |s| s.redis.as_ref(),
                    &delivered,
                    measured,
                    complete,
                    crate::cost::redis_cost_over,
                );
                for (step, cost) in self.steps.iter_mut().zip(w.steps) {
                    step.redis = cost;
                }
                self.redis = w.run;
                let went_back = self.redis.as_ref().is_some_and(|r| r.counters_went_back);
                self.explain_costs(
                    ("Redis", "Redis's INFO commandstats", source),
                    samples.len(),
                    complete,
                    &w.errors,
                    (self.redis.is_none(), went_back),
                );
            }
        }
        match nats_source {
            None => self.cost_notes.push(
                "NATS per delivered message: not measured (pass --nats-monitor-url)".to_owned(),
            ),
            Some(source) => {
                let w = windows(
                    samples,
                    |s| s.nats.as_ref(),
                    &delivered,
                    measured,
                    complete,
                    crate::cost::nats_cost_over,
                );
                for (step, cost) in self.steps.iter_mut().zip(w.steps) {
                    step.nats = cost;
                }
                self.nats = w.run;
                let went_back = self.nats.as_ref().is_some_and(|n| n.counters_went_back);
                self.explain_costs(
                    ("NATS", "nats-server's /varz", source),
                    samples.len(),
                    complete,
                    &w.errors,
                    (self.nats.is_none(), went_back),
                );
            }
        }
    }

    /// Warnings for failed readings and counters that went back, and a
    /// note when the run's figure is missing.
    fn explain_costs(
        &mut self,
        (name, what, source): (&str, &str, &str),
        points: usize,
        complete: bool,
        errors: &[String],
        (missing, went_back): (bool, bool),
    ) {
        if let Some(first) = errors.first() {
            self.warnings.push(format!(
                "Reading {what} at {source} failed at {} of {points} points ({first}): the windows around them have no figures.",
                errors.len()
            ));
        }
        if went_back {
            self.warnings.push(format!(
                "{what} counters at {source} went back during the run (a reset or a restart): the {name} figures are too low."
            ));
        }
        if missing {
            let why = if !errors.is_empty() {
                "a reading failed, see the warnings"
            } else if !complete {
                "the run stopped before its measured phase ended"
            } else {
                "no readings"
            };
            self.cost_notes.push(format!(
                "{name} per delivered message: not measured ({why})"
            ));
        }
    }

    /// Adds a warning when the measured processes (`cpu_percent`, all on
    /// this machine) kept at least [`HOST_BOUND_SHARE`] of its cores busy,
    /// over the whole run or from some step on: then latency is mostly
    /// waiting for a core, and the run measures the host as much as the
    /// gateway (docs/adr/0017). Call it once the CPU figures are in.
    pub fn warn_if_host_bound(&mut self) {
        let capacity = self.generator.cores as f64 * 100.0;
        let bound = |cpu: &crate::cpu::CpuPercent| {
            let busy: f64 = cpu.values().sum();
            (busy >= HOST_BOUND_SHARE * capacity).then_some(busy)
        };
        let first_step = self
            .steps
            .iter()
            .find_map(|s| bound(&s.cpu_percent).map(|busy| (s.offered_msgs_per_s, busy)));
        let when = match (bound(&self.cpu_percent), first_step) {
            (_, Some((rate, busy))) if self.steps.len() > 1 => {
                format!("from the {rate:.0} msgs/s step on ({busy:.0} % of {capacity:.0} %)")
            }
            (Some(busy), _) => format!("over the run ({busy:.0} % of {capacity:.0} %)"),
            _ => return,
        };
        self.warnings.push(format!(
            "The measured processes kept this machine's {} cores busy {when}: latency \
             includes waiting for a core, so this run is bound by the host; give the \
             gateway its own cores to measure its design.",
            self.generator.cores
        ));
    }

    fn find_warnings(&self, scenario: &Scenario) -> Vec<String> {
        let mut w = Vec::new();
        if self.interrupted {
            w.push("The run was interrupted before the schedule ended.".to_owned());
        }
        if self.lost > 0 {
            w.push(format!(
                "{} accepted messages were neither delivered nor failed within the {:.0} s drain.",
                self.lost, self.generator.drain_s
            ));
            if !self.lost_sample.is_empty() {
                let seqs: Vec<String> = self.lost_sample.iter().map(u64::to_string).collect();
                w.push(format!(
                    "  the first of them, by message number (the order they were planned): {}",
                    seqs.join(", ")
                ));
            }
        }
        if self.duplicates_seen_by_apps > 0 {
            w.push(format!(
                "{} duplicates reached apps after the client library's de-duplication \
                 (users would see these messages twice).",
                self.duplicates_seen_by_apps
            ));
        }
        if self.out_of_order > 0 {
            w.push(format!(
                "{} accepted messages reached apps after a later message of the same sender \
                 (users would see them out of order).",
                self.out_of_order
            ));
            for b in &self.out_of_order_sample {
                w.push(format!(
                    "  message {} (planned at {} ms) reached its app at {} ms, after message {} \
                     (planned at {} ms)",
                    b.seq, b.planned_ms, b.delivered_ms, b.after_seq, b.after_planned_ms
                ));
            }
        }
        if self.out_of_order_unaccepted > 0 {
            w.push(format!(
                "{} sends refused UNAVAILABLE (the store did not acknowledge in time) were \
                 stored after all and reached apps after a later message of the same sender \
                 (docs/protocol.md: such a send may have been stored).",
                self.out_of_order_unaccepted
            ));
        }
        if self.receipts.missing > 0 {
            w.push(format!(
                "{} DELIVERED receipts for delivered messages did not arrive within the drain.",
                self.receipts.missing
            ));
        }
        if self.duplicates_dropped_by_client > 0 {
            w.push(format!(
                "{} redeliveries on the wire, dropped by the client library's de-duplication.",
                self.duplicates_dropped_by_client
            ));
        }
        if self.media.download_errors > 0 {
            w.push(format!(
                "{} downloads of delivered media failed.",
                self.media.download_errors
            ));
        }
        if self.groups.copies_lost > 0 {
            w.push(format!(
                "{} copies of group messages did not reach their member.",
                self.groups.copies_lost
            ));
        }
        if let Some(n) = self.rejected.get("RATE_LIMITED") {
            w.push(format!(
                "{n} sends were RATE_LIMITED: the gateway's edge limits (ingest \
                 --provider-max-per-second / --sender-max-per-second) are below the offered load."
            ));
        }
        if self.unanswered > 0 {
            w.push(format!(
                "{} sends got no answer by the end of the drain, re-sends after reconnects included.",
                self.unanswered
            ));
        }
        let normal_spam_failures = self
            .failed
            .get("SPAM")
            .copied()
            .unwrap_or(0)
            .saturating_sub(self.spam.refused_as_spam);
        if normal_spam_failures > 0 {
            w.push(format!(
                "{normal_spam_failures} messages of normal senders were refused as spam: use more senders."
            ));
        }
        if self.generator.max_lag_ms > 100.0 {
            w.push(format!(
                "The load generator fell up to {:.0} ms behind its schedule; the corrected latency \
                 includes that wait (the generator itself may be the bottleneck).",
                self.generator.max_lag_ms
            ));
        }
        // Spam is expected to be refused, not delivered.
        let deliverable = self.offered_msgs_per_s * (1.0 - scenario.spam_share);
        if !scenario.is_stepped()
            && !self.interrupted
            && self.throughput_msgs_per_s < 0.95 * deliverable
        {
            w.push(format!(
                "Delivered {:.0} msgs/s of {:.0} offered (not counting spam): the gateway did not keep up.",
                self.throughput_msgs_per_s, deliverable
            ));
        }
        for u in &self.unsupported {
            w.push(format!(
                "{} ({:.0}% of the mix) not sent: {}.",
                u.feature,
                u.share * 100.0,
                u.reason
            ));
        }
        if self.first_contacts.held > 0 {
            w.push(format!(
                "{} first contacts of normal senders were held beyond the usual message request.",
                self.first_contacts.held
            ));
        }
        if self.spam.sent > 0 && self.spam.refused_as_spam == 0 && self.spam_held == 0 {
            w.push("Spammers were not refused at all: is spam-scoring's limit higher than users.spam_limit_per_min?".to_owned());
        }
        w
    }

    /// Redis and NATS per delivered message, or why not, for the table.
    fn cost_lines(&self, o: &mut String) {
        wln!(o);
        wln!(o, "  per delivered message (measured phase)");
        if let Some(r) = &self.redis {
            wln!(
                o,
                "  redis commands         {:>8}   of them scripts {} ({} µs in scripts, {} µs in all)",
                opt2(r.commands_per_delivered_msg),
                opt2(r.scripts_per_delivered_msg),
                opt0(r.script_usec_per_delivered_msg),
                opt0(r.usec_per_delivered_msg)
            );
            let top: Vec<String> = r
                .top
                .iter()
                .map(|c| format!("{} {}", c.command, opt2(c.per_delivered_msg)))
                .collect();
            wln!(o, "    most called: {}", top.join(", "));
        }
        if let Some(n) = &self.nats {
            wln!(
                o,
                "  nats msgs in / out     {:>8} / {}   bytes in / out {} / {}",
                opt2(n.in_msgs_per_delivered_msg),
                opt2(n.out_msgs_per_delivered_msg),
                n.in_bytes_per_delivered_msg
                    .map_or_else(|| "–".to_owned(), fmt_num),
                n.out_bytes_per_delivered_msg
                    .map_or_else(|| "–".to_owned(), fmt_num)
            );
        }
        for note in &self.cost_notes {
            wln!(o, "  {note}");
        }
    }

    pub fn to_json(&self) -> String {
        // Plain data (strings, numbers, maps with string keys): serializing
        // it cannot fail.
        serde_json::to_string_pretty(self).expect("the report serializes")
    }

    /// The summary printed at the end of a run.
    pub fn to_table(&self) -> String {
        let mut o = String::new();
        // Writing into a String cannot fail (here and below).
        wln!(
            o,
            "\ninterop loadtest: {} (run {}, {} cores)",
            self.scenario.name,
            self.run_id,
            self.generator.cores
        );
        wln!(
            o,
            "offered {} msgs/s{} for {} s after {} s warm-up; {} senders, {} spammers, {} recipients",
            fmt_num(self.offered_msgs_per_s),
            if self.steps.len() > 1 { " (highest step)" } else { "" },
            fmt_num(self.derived.measured_s),
            fmt_num(self.derived.warmup_s),
            self.derived.senders,
            self.derived.spammers,
            self.derived.recipients,
        );
        wln!(o);
        let rejected: u64 = self.rejected.values().sum();
        let failed: u64 = self.failed.values().sum();
        let rows = [
            ("sent", self.sent),
            ("accepted", self.accepted),
            ("rejected", rejected),
            ("unanswered", self.unanswered),
            ("delivered", self.delivered),
            ("failed (receipt)", failed),
            ("lost", self.lost),
            ("duplicates on the wire", self.duplicates),
            ("duplicates seen by apps", self.duplicates_seen_by_apps),
            ("out of order", self.out_of_order),
            ("receipts missing", self.receipts.missing),
        ];
        for (name, v) in rows {
            wln!(o, "  {name:<24}{v:>12}");
        }
        for (code, n) in self
            .rejected
            .iter()
            .map(|(c, n)| ("rejected ", (c, n)))
            .chain(self.failed.iter().map(|(c, n)| ("failed ", (c, n))))
        {
            wln!(o, "    {}{:<22}{:>8}", code, n.0, n.1);
        }
        if self.spam.sent > 0 {
            wln!(
                o,
                "  spam: {} sent, {} accepted, {} refused as SPAM, {} held in quarantine, {} reached inboxes ({} of them as requests)",
                self.spam.sent,
                self.spam.accepted,
                self.spam.refused_as_spam,
                self.spam_held,
                self.spam.reached_inboxes,
                self.spam.reached_requests
            );
        }
        if self.groups.sent > 0 {
            let g = &self.groups;
            wln!(
                o,
                "  groups: {} messages sent to {} groups of {} members, {} accepted; copies {} expected, {} delivered, {} lost",
                g.sent,
                g.groups,
                g.members_per_group,
                g.accepted,
                g.copies_expected,
                g.copies_delivered,
                g.copies_lost
            );
        }
        if self.media.sent > 0 {
            let m = &self.media;
            wln!(
                o,
                "  media: {} messages sent, {} accepted; pool of {} blobs ({} bytes) uploaded at set-up{}",
                m.sent,
                m.accepted,
                m.pool_blobs,
                fmt_num(m.pool_bytes as f64),
                if m.fetch_media {
                    format!("; {} downloaded, {} download errors", m.downloads, m.download_errors)
                } else {
                    String::new()
                }
            );
        }
        if self.first_contacts.sent > 0 {
            let fc = &self.first_contacts;
            wln!(
                o,
                "  first contacts: {} sent, {} accepted, {} delivered ({} as requests), {} held beyond the request ({:.2}%)",
                fc.sent,
                fc.accepted,
                fc.delivered,
                fc.as_requests,
                fc.held,
                fc.held_share.unwrap_or(0.0) * 100.0
            );
        }
        wln!(o);
        let ceiling = match (self.ceiling_msgs_per_s, self.ratio_to_ceiling) {
            (Some(c), Some(r)) => {
                format!(", ceiling {} msgs/s: {:.1}% of it", fmt_num(c), r * 100.0)
            }
            _ => String::new(),
        };
        wln!(
            o,
            "  throughput        {} msgs/s delivered{ceiling}",
            fmt_num(self.throughput_msgs_per_s)
        );
        wln!(o);
        wln!(
            o,
            "  latency (ms)          p50       p90       p99     p99.9       max     count"
        );
        for (name, l) in [
            ("to delivery", &self.latency_ms),
            ("  uncorrected", &self.latency_uncorrected_ms),
            ("to accepted", &self.accept_latency_ms),
            ("to receipt", &self.receipt_latency_ms),
            ("media upload", &self.media.upload_ms),
            ("media download", &self.media.download_ms),
        ]
        .into_iter()
        .filter(|(name, l)| !name.starts_with("media") || l.count > 0)
        {
            wln!(
                o,
                "  {name:<16}{:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9}",
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
                l.count
            );
        }
        if !self.cpu_percent.is_empty() {
            wln!(o);
            wln!(o, "  cpu (% of one core, measured phase)");
            for (name, pct) in &self.cpu_percent {
                wln!(o, "  {name:<22} {pct:>6.1}");
            }
            if let Some(us) = self.cpu_us_per_delivered_msg {
                let all: f64 = self.cpu_percent.values().sum();
                wln!(
                    o,
                    "  {:<22} {all:>6.1}   ({us:.0} µs of CPU per delivered message)",
                    "all"
                );
            }
        }
        self.cost_lines(&mut o);
        if self.steps.len() > 1 {
            wln!(o);
            wln!(
                o,
                "  step   offered  delivered/s      p50      p99      max   lost  healthy"
            );
            for s in &self.steps {
                wln!(
                    o,
                    "  {:>4} {:>9} {:>12} {:>8.1} {:>8.1} {:>8.1} {:>6}  {}",
                    s.index + 1,
                    fmt_num(s.offered_msgs_per_s),
                    fmt_num(s.delivered_msgs_per_s),
                    s.latency_ms.p50,
                    s.latency_ms.p99,
                    s.latency_ms.max,
                    s.lost,
                    if s.healthy { "yes" } else { "NO" }
                );
                if !s.cpu_percent.is_empty() {
                    let cpu: Vec<String> = s
                        .cpu_percent
                        .iter()
                        .map(|(name, pct)| format!("{name} {pct:.0}%"))
                        .collect();
                    let per_message = s
                        .cpu_us_per_delivered_msg
                        .map(|us| format!("; {us:.0} µs per delivered message"))
                        .unwrap_or_default();
                    wln!(o, "         cpu: {}{per_message}", cpu.join(", "));
                }
                let mut bus = Vec::new();
                if let Some(r) = &s.redis {
                    bus.push(format!(
                        "redis {} commands, {} scripts",
                        opt2(r.commands_per_delivered_msg),
                        opt2(r.scripts_per_delivered_msg)
                    ));
                }
                if let Some(n) = &s.nats {
                    bus.push(format!(
                        "nats {} msgs in, {} out",
                        opt2(n.in_msgs_per_delivered_msg),
                        opt2(n.out_msgs_per_delivered_msg)
                    ));
                }
                if !bus.is_empty() {
                    wln!(o, "         per delivered message: {}", bus.join("; "));
                }
            }
            match self.knee_msgs_per_s {
                Some(k) => wln!(o, "  knee: {} msgs/s (last healthy step)", fmt_num(k)),
                None if self.steps.iter().all(|s| s.healthy) => {
                    wln!(o, "  knee: above the highest step")
                }
                None => wln!(o, "  knee: below the first step"),
            };
        }
        for w in &self.warnings {
            wln!(o, "  ! {w}");
        }
        o
    }
}

/// Per-window costs from a series of readings.
struct Windows<C> {
    steps: Vec<Option<C>>,
    run: Option<C>,
    errors: Vec<String>,
}

/// Each step's cost (from its reading to the next), the run's (first to
/// last, when the series is `complete`), and the failed readings' errors.
fn windows<S, C>(
    samples: &[BusSample],
    pick: impl Fn(&BusSample) -> Option<&Result<S, String>>,
    step_delivered: &[u64],
    run_delivered: u64,
    complete: bool,
    cost: impl Fn(&[Option<&S>], u64) -> Option<C>,
) -> Windows<C> {
    let readings: Vec<Option<&S>> = samples
        .iter()
        .map(|s| pick(s).and_then(|r| r.as_ref().ok()))
        .collect();
    let steps = step_delivered
        .iter()
        .enumerate()
        .map(|(i, &delivered)| cost(readings.get(i..i + 2)?, delivered))
        .collect();
    let run = if complete {
        cost(&readings, run_delivered)
    } else {
        None
    };
    let errors = samples
        .iter()
        .filter_map(|s| pick(s).and_then(|r| r.as_ref().err()).cloned())
        .collect();
    Windows { steps, run, errors }
}

/// `x` rounded, `–` for none.
fn opt0(x: Option<f64>) -> String {
    x.map_or_else(|| "–".to_owned(), fmt_num)
}

/// `x` with up to two decimals, `–` for none.
fn opt2(x: Option<f64>) -> String {
    x.map_or_else(|| "–".to_owned(), |x| format!("{x:.2}"))
}

/// A number with thousands separators, no decimals above 100.
pub fn fmt_num(x: f64) -> String {
    if x.abs() < 100.0 && x.fract() != 0.0 {
        return format!("{x:.1}");
    }
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ceiling::CeilingReport;
    use crate::plan::Plan;
    use crate::recorder::{Answer, Recorder};
    use std::sync::Arc;

    fn sample_report(toml_extra: &str, ceiling: bool) -> Report {
        let s = Scenario::from_toml(&format!(
            "name='t'\n[rate]\nmsgs_per_s=10\nduration_s=2\nwarmup_s=1\n{toml_extra}"
        ))
        .unwrap();
        let plan = Arc::new(Plan::new(&s, RunId(5)));
        let r = Recorder::new(s.schedule.clone(), plan);
        for seq in 0..30 {
            let at = s.schedule.offset_us(seq).unwrap();
            r.sent(seq, at);
            r.answered(seq, Answer::Accepted, at + 1_000);
            if seq != 17 {
                r.delivered(&[(seq, at)], at + 20_000);
            }
        }
        r.delivered(&[(3, 0)], 2_500_000);
        let facts = RunFacts {
            run_id: RunId(5),
            started_at_unix_ms: 1,
            target: TargetInfo {
                ingest_url: "ws://i".into(),
                delivery_url: "ws://d".into(),
            },
            max_lag_us: 0,
            drain_s: 1.0,
            drained: false,
            interrupted: false,
            duplicates_suppressed_by_client: 2,
            resent_after_reconnect: 0,
        };
        let c = ceiling.then(|| CeilingReport {
            msgs_per_s: 1000.0,
            messages: 1,
            hops: 4,
            payload_bytes: 256,
            elapsed_s: 1.0,
            msg_id: false,
            nats_server_version: "2.9.10".into(),
        });
        Report::build(&s, &r.stats(), &r.ledger, &facts, c)
    }

    #[test]
    fn the_json_has_the_documented_shape() {
        let report = sample_report("", true);
        let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        for key in [
            "sent",
            "accepted",
            "delivered",
            "lost",
            "duplicates",
            "duplicates_seen_by_apps",
            "duplicates_dropped_by_client",
            "out_of_order",
            "throughput_msgs_per_s",
            "ceiling_msgs_per_s",
            "ratio_to_ceiling",
            "rejected",
            "failed",
            "scenario",
            "steps",
            "timeline",
            "percentiles",
            "spam",
            "warnings",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        for key in ["p50", "p90", "p99", "p999", "max"] {
            assert!(v["latency_ms"][key].is_number(), "latency_ms.{key}");
        }
        assert_eq!(v["sent"], 30);
        assert_eq!(v["accepted"], 30);
        assert_eq!(v["delivered"], 29);
        assert_eq!(v["lost"], 1);
        assert_eq!(v["lost_sample"], serde_json::json!([17]));
        // Seq 3 reached the app twice; the client dropped 2 more on the wire.
        assert_eq!(v["duplicates"], 3);
        assert_eq!(v["duplicates_seen_by_apps"], 1);
        assert_eq!(v["duplicates_dropped_by_client"], 2);
        assert_eq!(v["generator"]["resent_after_reconnect"], 0);
        // 19 of the 20 measured messages arrived within the 2 s window.
        assert_eq!(v["throughput_msgs_per_s"], 9.5);
        assert_eq!(v["ratio_to_ceiling"], 0.0095);
        let p50 = v["latency_ms"]["p50"].as_f64().unwrap();
        assert!((p50 - 20.0).abs() < 0.05, "{p50}");
        assert_eq!(v["scenario"]["rate"]["msgs_per_s"], 10.0);
        assert_eq!(v["scenario"]["name"], "t");
        assert_eq!(v["target"]["ingest_url"], "ws://i");
        assert!(v["timeline"].as_array().unwrap().len() >= 3);
        assert!(report
            .warnings
            .iter()
            .any(|w| w.contains("1 accepted messages")));
        // Nothing secret or personal: no tokens, no full addresses.
        let text = report.to_json();
        assert!(!text.contains("token") && !text.contains("+49"), "{text}");
        let table = report.to_table();
        assert!(
            table.contains("lost") && table.contains("ceiling 1,000 msgs/s"),
            "{table}"
        );
        assert!(
            table.contains("duplicates on the wire             3\n")
                && table.contains("duplicates seen by apps            1\n"),
            "{table}"
        );
        assert!(report
            .warnings
            .iter()
            .any(|w| w.starts_with("1 duplicates reached apps")));
    }

    /// A healthy 10 s step that delivered `rate`, with nats-server `busy` %.
    fn nats_step(rate: f64, busy: f64) -> StepReport {
        StepReport {
            index: 0,
            offered_msgs_per_s: rate,
            delivered_msgs_per_s: rate,
            start_s: 0.0,
            duration_s: 10.0,
            planned: 0,
            accepted: 0,
            delivered: 0,
            lost: 0,
            latency_ms: Latency::default(),
            healthy: true,
            cpu_percent: [("nats".to_owned(), busy)].into_iter().collect(),
            cpu_us_per_delivered_msg: None,
            delivered_in_window: (rate * 10.0) as u64,
            redis: None,
            nats: None,
        }
    }

    #[test]
    fn cpu_per_delivered_message_sums_the_processes() {
        let mut report = sample_report("", false);
        // 2,000 msgs/s over the 2 s measured phase.
        report.measured_delivered = 4_000;
        report.cpu_percent.insert("nats".into(), 51.0);
        report.cpu_percent.insert("redis".into(), 35.0);
        report.cpu_percent.insert("loadtest".into(), 20.0);
        report.steps = vec![nats_step(1_000.0, 50.0)];
        report.note_cpu_per_message();
        // 106 % of one core over 2,000 messages a second: 530 µs each.
        let us = report.cpu_us_per_delivered_msg.unwrap();
        assert!((us - 530.0).abs() < 1e-6, "{us}");
        assert!((report.steps[0].cpu_us_per_delivered_msg.unwrap() - 500.0).abs() < 1e-6);
        assert!(report
            .to_table()
            .contains("(530 µs of CPU per delivered message)"));
        assert!(report
            .to_json()
            .contains("\"cpu_us_per_delivered_msg\": 530.0"));
        // Nothing delivered, or no CPU figures: no figure.
        report.measured_delivered = 0;
        report.cpu_percent.clear();
        report.note_cpu_per_message();
        assert_eq!(report.cpu_us_per_delivered_msg, None);
    }

    fn bus_sample(scripts: u64, in_msgs: u64) -> BusSample {
        use crate::cost::{CommandCounts, NatsSample, RedisSample, Varz};
        BusSample {
            redis: Some(Ok(RedisSample {
                stats: [
                    ("evalsha", scripts),
                    ("hget", 2 * scripts),
                    ("info", scripts / 100),
                ]
                .into_iter()
                .map(|(n, calls)| (n.to_owned(), CommandCounts { calls, usec: 0 }))
                .collect(),
                own_before_info: BTreeMap::new(),
                nodes: 1,
            })),
            nats: Some(Ok(NatsSample {
                varz: Varz {
                    in_msgs,
                    out_msgs: in_msgs / 2,
                    in_bytes: in_msgs * 100,
                    out_bytes: 0,
                },
                servers: 1,
            })),
        }
    }

    #[test]
    fn redis_and_nats_per_delivered_message_are_in_the_table_json_and_html() {
        let mut report = sample_report("", false);
        // 19 messages delivered in the measured window.
        assert_eq!(report.measured_delivered, 19);
        assert_eq!(report.steps[0].delivered_in_window, 19);
        let samples = [bus_sample(100, 1_000), bus_sample(138, 1_076)];
        report.note_bus_costs(&samples, Some("127.0.0.1:6379"), Some("http://n:8222/varz"));
        // 38 EVALSHA, 76 HGET (and our own INFO, left out) for 19 messages.
        let redis = report.redis.clone().unwrap();
        assert_eq!(redis.commands, 114);
        assert_eq!(redis.scripts_per_delivered_msg, Some(2.0));
        assert_eq!(redis.commands_per_delivered_msg, Some(6.0));
        assert_eq!(report.steps[0].redis, Some(redis));
        let nats = report.nats.clone().unwrap();
        assert_eq!(nats.in_msgs_per_delivered_msg, Some(4.0));
        assert_eq!(nats.out_msgs_per_delivered_msg, Some(2.0));
        assert!(report.cost_notes.is_empty(), "{:?}", report.cost_notes);
        let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(v["redis"]["scripts_per_delivered_msg"], 2.0);
        assert_eq!(v["redis"]["top"][0]["command"], "hget");
        assert_eq!(v["nats"]["in_msgs_per_delivered_msg"], 4.0);
        assert_eq!(v["steps"][0]["nats"]["in_bytes_per_delivered_msg"], 400.0);
        assert_eq!(v["measured_delivered"], 19);
        let table = report.to_table();
        assert!(
            table.contains("  redis commands             6.00   of them scripts 2.00"),
            "{table}"
        );
        assert!(
            table.contains("most called: hget 4.00, evalsha 2.00"),
            "{table}"
        );
        assert!(
            table.contains("  nats msgs in / out         4.00 / 2.00"),
            "{table}"
        );
        let page = crate::html::render(&report);
        assert!(
            page.contains("<tr><th>Redis scripts</th><td>2.00</td></tr>"),
            "{page}"
        );
        assert!(page.contains("<tr><th>NATS messages in</th><td>4.00</td></tr>"));
    }

    #[test]
    fn missing_redis_and_nats_figures_say_why() {
        let mut report = sample_report("", false);
        report.note_bus_costs(&[bus_sample(1, 1), bus_sample(2, 2)], None, None);
        assert_eq!((report.redis.clone(), report.nats.clone()), (None, None));
        assert!(report
            .to_table()
            .contains("Redis per delivered message: not measured (pass --redis-url)"));
        assert!(crate::html::render(&report)
            .contains("NATS per delivered message: not measured (pass --nats-monitor-url)"));
        assert!(report.warnings.iter().all(|w| !w.contains("Reading")));

        // The end reading of Redis failed; NATS's went back (a restart).
        let mut report = sample_report("", false);
        let mut end = bus_sample(200, 10);
        end.redis = Some(Err("Redis at r:6379 did not answer within 2s".into()));
        report.note_bus_costs(
            &[bus_sample(100, 1_000), end],
            Some("r:6379"),
            Some("http://n:8222/varz"),
        );
        assert_eq!(report.redis, None);
        assert!(report.nats.as_ref().unwrap().counters_went_back);
        assert!(report.cost_notes.iter().any(|n| n == "Redis per delivered message: not measured (a reading failed, see the warnings)"), "{:?}", report.cost_notes);
        assert!(report.warnings.iter().any(|w| w.starts_with("Reading Redis's INFO commandstats at r:6379 failed at 1 of 2 points (Redis at r:6379 did not answer")), "{:?}", report.warnings);
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("the NATS figures are too low")),
            "{:?}",
            report.warnings
        );

        // A run stopped early has one reading.
        let mut report = sample_report("", false);
        report.note_bus_costs(&[bus_sample(1, 1)], Some("r"), None);
        assert!(report
            .cost_notes
            .iter()
            .any(|n| n.contains("the run stopped before its measured phase ended")));
    }

    #[test]
    fn cpu_per_process_is_in_the_html_when_sampled() {
        let mut report = sample_report("", false);
        assert!(!crate::html::render(&report).contains("CPU (% of one core)"));
        report.cpu_percent.insert("ingest".into(), 12.5);
        report.cpu_percent.insert("loadtest".into(), 30.0);
        let page = crate::html::render(&report);
        assert!(page.contains("CPU (% of one core)"), "{page}");
        assert!(page.contains("<tr><th>ingest</th><td>12.5</td>"), "{page}");
        assert!(
            page.contains("<tr><th>loadtest</th><td>30.0</td>"),
            "{page}"
        );
    }

    #[test]
    fn a_run_that_kept_the_cores_busy_says_the_host_bounds_it() {
        let mut report = sample_report("", false);
        report.generator.cores = 2;
        let warned = |r: &Report, text: &str| r.warnings.iter().any(|w| w.contains(text));
        let host_bound = |r: &Report| warned(r, "bound by the host");
        // 84 % of 2 cores: just under the edge.
        report.cpu_percent.insert("nats".into(), 100.0);
        report.cpu_percent.insert("ingest".into(), 68.0);
        report.warn_if_host_bound();
        assert!(!host_bound(&report), "{:?}", report.warnings);
        // 85 %: at the edge.
        report.cpu_percent.insert("loadtest".into(), 2.0);
        report.warn_if_host_bound();
        assert!(host_bound(&report), "{:?}", report.warnings);
        assert!(
            warned(&report, "over the run (170 % of 200 %)"),
            "{:?}",
            report.warnings
        );

        // A stepped run names the first step that was bound.
        let mut report = sample_report("", false);
        report.generator.cores = 2;
        report.steps = vec![
            nats_step(500.0, 90.0),
            nats_step(1000.0, 175.0),
            nats_step(2000.0, 190.0),
        ];
        report.warn_if_host_bound();
        assert!(
            warned(&report, "from the 1000 msgs/s step on (175 % of 200 %)"),
            "{:?}",
            report.warnings
        );
    }

    #[test]
    fn without_a_ceiling_the_ratio_is_null() {
        let v: serde_json::Value =
            serde_json::from_str(&sample_report("", false).to_json()).unwrap();
        assert!(v["ceiling_msgs_per_s"].is_null());
        assert!(v["ratio_to_ceiling"].is_null());
    }

    #[test]
    fn the_knee_is_the_last_healthy_step_before_the_first_bad_one() {
        let step = |rate: f64, healthy: bool| StepReport {
            index: 0,
            offered_msgs_per_s: rate,
            delivered_msgs_per_s: rate,
            start_s: 0.0,
            duration_s: 1.0,
            planned: 0,
            accepted: 0,
            delivered: 0,
            lost: 0,
            latency_ms: Latency::default(),
            healthy,
            cpu_percent: Default::default(),
            cpu_us_per_delivered_msg: None,
            delivered_in_window: 0,
            redis: None,
            nats: None,
        };
        assert_eq!(
            knee(&[
                step(1.0, true),
                step(2.0, true),
                step(3.0, false),
                step(4.0, true)
            ]),
            Some(2.0)
        );
        assert_eq!(knee(&[step(1.0, false)]), None);
        assert_eq!(knee(&[step(1.0, true)]), None);
        assert_eq!(fmt_num(1234567.0), "1,234,567");
        assert_eq!(fmt_num(12.5), "12.5");
        assert_eq!(fmt_num(100.0), "100");
    }
}
