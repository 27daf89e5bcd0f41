//! `loadtest compare A.json B.json`: the ratios B/A between two runs' JSON
//! reports (`loadtest run --json`), step by step (steps matched by offered
//! rate) and over the measured phase: delivered throughput, p50 and p99
//! latency, CPU per delivered message (all processes and each), Redis
//! commands and scripts and NATS messages per delivered message, and each
//! run's ceiling, knee and knee/ceiling ratio.
//!
//! Reports are read leniently: only the fields compared are needed, and
//! figures an older report lacks (Redis, NATS) show as `–`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cost::{NatsCost, RedisCost};
use crate::report::fmt_num;

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{} is not a report of `loadtest run --json`: {detail}", path.display())]
    NotAReport { path: PathBuf, detail: String },
    #[error(
        "the runs have no offered rate in common (A: {a}; B: {b}): compare matches steps by \
         offered rate, so these runs cannot be compared"
    )]
    NoCommonStep { a: String, b: String },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct LatencySummary {
    pub p50: f64,
    pub p99: f64,
}

/// What `compare` reads of a step.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct StepSummary {
    pub offered_msgs_per_s: f64,
    pub delivered_msgs_per_s: f64,
    pub latency_ms: LatencySummary,
    pub cpu_percent: BTreeMap<String, f64>,
    pub redis: Option<RedisCost>,
    pub nats: Option<NatsCost>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ScenarioName {
    pub name: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct DerivedSummary {
    pub measured_s: f64,
}

/// What `compare` reads of a report.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunSummary {
    pub tool: String,
    #[serde(default)]
    pub run_id: Option<u64>,
    #[serde(default)]
    pub scenario: ScenarioName,
    pub throughput_msgs_per_s: f64,
    /// Reports before it was added lack it: the throughput stands in.
    #[serde(default)]
    pub measured_delivered: Option<u64>,
    #[serde(default)]
    pub derived: DerivedSummary,
    pub latency_ms: LatencySummary,
    #[serde(default)]
    pub cpu_percent: BTreeMap<String, f64>,
    #[serde(default)]
    pub redis: Option<RedisCost>,
    #[serde(default)]
    pub nats: Option<NatsCost>,
    #[serde(default)]
    pub ceiling_msgs_per_s: Option<f64>,
    #[serde(default)]
    pub knee_msgs_per_s: Option<f64>,
    pub steps: Vec<StepSummary>,
}

impl RunSummary {
    /// Deliveries per second over the whole measured phase: what CPU over
    /// the phase is divided by.
    fn measured_rate(&self) -> f64 {
        match self.measured_delivered {
            Some(n) if self.derived.measured_s > 0.0 => n as f64 / self.derived.measured_s,
            _ => self.throughput_msgs_per_s,
        }
    }
}

/// Reads a report written by `loadtest run --json`.
pub fn load(path: &Path) -> Result<RunSummary, CompareError> {
    let text = std::fs::read_to_string(path).map_err(|source| CompareError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// [`load`] on text already read; `path` names it in errors.
pub fn parse(path: &Path, text: &str) -> Result<RunSummary, CompareError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|source| CompareError::Json {
            path: path.to_owned(),
            source,
        })?;
    let not_a_report = |detail: String| CompareError::NotAReport {
        path: path.to_owned(),
        detail,
    };
    match value.get("tool").and_then(|t| t.as_str()) {
        Some("interop-loadtest") => {}
        Some(other) => return Err(not_a_report(format!("its tool is {other:?}"))),
        None if value.get("msgs_per_s").is_some() => {
            return Err(not_a_report(
                "it is a ceiling (`loadtest ceiling --json`)".into(),
            ))
        }
        None => {
            return Err(not_a_report(
                "it has no \"tool\": \"interop-loadtest\"".into(),
            ))
        }
    }
    serde_json::from_value(value).map_err(|e| not_a_report(e.to_string()))
}

/// `b / a`, when both are there and `a` is positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && a.is_finite() && b.is_finite() => Some(b / a),
        _ => None,
    }
}

/// Two offered rates are the same step.
fn same_rate(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

/// Pairs A's steps with B's by offered rate, in order (a rate that comes
/// twice pairs first with first); also the indices left unpaired on each
/// side.
pub fn match_steps(a: &[f64], b: &[f64]) -> (Vec<(usize, usize)>, Vec<usize>, Vec<usize>) {
    let mut used = vec![false; b.len()];
    let mut pairs = Vec::new();
    let mut only_a = Vec::new();
    for (i, &ra) in a.iter().enumerate() {
        match (0..b.len()).find(|&j| !used[j] && same_rate(ra, b[j])) {
            Some(j) => {
                used[j] = true;
                pairs.push((i, j));
            }
            None => only_a.push(i),
        }
    }
    let only_b = (0..b.len()).filter(|&j| !used[j]).collect();
    (pairs, only_a, only_b)
}

/// One compared figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub metric: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
    /// `b / a`.
    pub ratio: Option<f64>,
}

impl Row {
    fn new(metric: impl Into<String>, a: Option<f64>, b: Option<f64>) -> Self {
        Self {
            metric: metric.into(),
            a,
            b,
            ratio: ratio(a, b),
        }
    }
}

/// One side of a comparison: the measured phase or a step.
struct Side<'a> {
    delivered_per_s: f64,
    /// What CPU percentages are divided by.
    cpu_rate: f64,
    latency: LatencySummary,
    cpu: &'a BTreeMap<String, f64>,
    redis: Option<&'a RedisCost>,
    nats: Option<&'a NatsCost>,
}

impl<'a> Side<'a> {
    fn run(r: &'a RunSummary) -> Self {
        Self {
            delivered_per_s: r.throughput_msgs_per_s,
            cpu_rate: r.measured_rate(),
            latency: r.latency_ms,
            cpu: &r.cpu_percent,
            redis: r.redis.as_ref(),
            nats: r.nats.as_ref(),
        }
    }

    fn step(s: &'a StepSummary) -> Self {
        Self {
            delivered_per_s: s.delivered_msgs_per_s,
            cpu_rate: s.delivered_msgs_per_s,
            latency: s.latency_ms,
            cpu: &s.cpu_percent,
            redis: s.redis.as_ref(),
            nats: s.nats.as_ref(),
        }
    }

    /// Microseconds of CPU per delivered message of `percent` of a core.
    fn us_per_msg(&self, percent: Option<f64>) -> Option<f64> {
        percent
            .filter(|_| self.cpu_rate > 0.0)
            .map(|p| p / 100.0 * 1_000_000.0 / self.cpu_rate)
    }
}

/// The figures of two sides, row by row; rows neither side has are left
/// out.
fn rows(a: &Side, b: &Side) -> Vec<Row> {
    let mut out = vec![
        Row::new(
            "delivered msgs/s",
            Some(a.delivered_per_s),
            Some(b.delivered_per_s),
        ),
        Row::new("p50 latency ms", Some(a.latency.p50), Some(b.latency.p50)),
        Row::new("p99 latency ms", Some(a.latency.p99), Some(b.latency.p99)),
    ];
    let all = |s: &Side| (!s.cpu.is_empty()).then(|| s.cpu.values().sum::<f64>());
    if !a.cpu.is_empty() || !b.cpu.is_empty() {
        out.push(Row::new(
            "CPU µs per delivered msg, all",
            a.us_per_msg(all(a)),
            b.us_per_msg(all(b)),
        ));
        let names: BTreeSet<&String> = a.cpu.keys().chain(b.cpu.keys()).collect();
        for name in names {
            out.push(Row::new(
                format!("  {name}"),
                a.us_per_msg(a.cpu.get(name).copied()),
                b.us_per_msg(b.cpu.get(name).copied()),
            ));
        }
    }
    type Pick<C> = fn(&C) -> Option<f64>;
    let mut bus = |name: &str, ra: Option<f64>, rb: Option<f64>| {
        if ra.is_some() || rb.is_some() {
            out.push(Row::new(name, ra, rb));
        }
    };
    let redis: [(&str, Pick<RedisCost>); 2] = [
        ("Redis commands per delivered msg", |r| {
            r.commands_per_delivered_msg
        }),
        ("Redis scripts per delivered msg", |r| {
            r.scripts_per_delivered_msg
        }),
    ];
    for (name, pick) in redis {
        bus(name, a.redis.and_then(pick), b.redis.and_then(pick));
    }
    let nats: [(&str, Pick<NatsCost>); 2] = [
        ("NATS msgs in per delivered msg", |n| {
            n.in_msgs_per_delivered_msg
        }),
        ("NATS msgs out per delivered msg", |n| {
            n.out_msgs_per_delivered_msg
        }),
    ];
    for (name, pick) in nats {
        bus(name, a.nats.and_then(pick), b.nats.and_then(pick));
    }
    out
}

/// Who a side is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunLabel {
    pub path: String,
    pub scenario: String,
    pub run_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepComparison {
    pub offered_msgs_per_s: f64,
    pub rows: Vec<Row>,
}

/// Everything `loadtest compare` prints (`--json` writes it as is).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub a: RunLabel,
    pub b: RunLabel,
    /// The measured phase, then each run's ceiling, knee and knee/ceiling.
    pub overall: Vec<Row>,
    /// Matched steps, in A's order.
    pub steps: Vec<StepComparison>,
    /// Offered rates of steps only one run has.
    pub only_in_a: Vec<f64>,
    pub only_in_b: Vec<f64>,
    pub notes: Vec<String>,
}

fn rates(steps: &[StepSummary]) -> Vec<f64> {
    steps.iter().map(|s| s.offered_msgs_per_s).collect()
}

fn list(rates: &[f64]) -> String {
    if rates.is_empty() {
        return "no steps".to_owned();
    }
    let r: Vec<String> = rates.iter().map(|&r| fmt_num(r)).collect();
    format!("{} msgs/s", r.join(", "))
}

/// Compares two reports; `a_path` and `b_path` only label them.
pub fn compare(
    a: &RunSummary,
    a_path: &str,
    b: &RunSummary,
    b_path: &str,
) -> Result<Comparison, CompareError> {
    let (ra, rb) = (rates(&a.steps), rates(&b.steps));
    let (pairs, only_a, only_b) = match_steps(&ra, &rb);
    if pairs.is_empty() {
        return Err(CompareError::NoCommonStep {
            a: list(&ra),
            b: list(&rb),
        });
    }
    let mut overall = rows(&Side::run(a), &Side::run(b));
    let knee_ratio = |r: &RunSummary| match (r.knee_msgs_per_s, r.ceiling_msgs_per_s) {
        (Some(k), Some(c)) if c > 0.0 => Some(k / c),
        _ => None,
    };
    for (name, va, vb) in [
        ("ceiling msgs/s", a.ceiling_msgs_per_s, b.ceiling_msgs_per_s),
        ("knee msgs/s", a.knee_msgs_per_s, b.knee_msgs_per_s),
        ("knee / ceiling", knee_ratio(a), knee_ratio(b)),
    ] {
        if va.is_some() || vb.is_some() {
            overall.push(Row::new(name, va, vb));
        }
    }
    let steps = pairs
        .iter()
        .map(|&(i, j)| StepComparison {
            offered_msgs_per_s: ra[i],
            rows: rows(&Side::step(&a.steps[i]), &Side::step(&b.steps[j])),
        })
        .collect();
    let mut notes = Vec::new();
    if a.scenario.name != b.scenario.name {
        notes.push(format!(
            "The runs are of different scenarios ({:?} and {:?}).",
            a.scenario.name, b.scenario.name
        ));
    }
    if a.steps.len() > 1 || b.steps.len() > 1 {
        notes.push(
            "Overall delivered msgs/s is each run's best step; CPU per message overall divides \
             the measured phase's CPU by what the whole phase delivered."
                .to_owned(),
        );
    }
    let label = |r: &RunSummary, path: &str| RunLabel {
        path: path.to_owned(),
        scenario: r.scenario.name.clone(),
        run_id: r.run_id,
    };
    Ok(Comparison {
        a: label(a, a_path),
        b: label(b, b_path),
        overall,
        steps,
        only_in_a: only_a.iter().map(|&i| ra[i]).collect(),
        only_in_b: only_b.iter().map(|&j| rb[j]).collect(),
        notes,
    })
}

/// Reads both files and compares them.
pub fn compare_files(a: &Path, b: &Path) -> Result<Comparison, CompareError> {
    let (ra, rb) = (load(a)?, load(b)?);
    compare(&ra, &a.display().to_string(), &rb, &b.display().to_string())
}

/// A figure for the table: thousands separators from 1,000, else up to
/// three significant decimals.
fn value(x: Option<f64>) -> String {
    match x {
        None => "–".to_owned(),
        Some(x) if x.abs() >= 1_000.0 => fmt_num(x),
        Some(x) if x.abs() >= 100.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

impl Comparison {
    /// The table `loadtest compare` prints.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        wln!(o, "loadtest compare: B / A");
        for (side, l) in [("A", &self.a), ("B", &self.b)] {
            let run = l
                .run_id
                .map(|id| format!(", run {id:06}"))
                .unwrap_or_default();
            wln!(o, "  {side}: {} ({}{run})", l.path, l.scenario);
        }
        let section = |o: &mut String, title: &str, rows: &[Row]| {
            wln!(o);
            wln!(o, "{title:<40}{:>12} {:>12} {:>8}", "A", "B", "B/A");
            for r in rows {
                let ratio = r
                    .ratio
                    .map_or_else(|| "–".to_owned(), |x| format!("{x:.3}"));
                wln!(
                    o,
                    "  {:<38}{:>12} {:>12} {:>8}",
                    r.metric,
                    value(r.a),
                    value(r.b),
                    ratio
                );
            }
        };
        section(&mut o, "overall (measured phase)", &self.overall);
        if self.steps.len() > 1 || !self.only_in_a.is_empty() || !self.only_in_b.is_empty() {
            for s in &self.steps {
                let title = format!("step at {} msgs/s offered", fmt_num(s.offered_msgs_per_s));
                section(&mut o, &title, &s.rows);
            }
        }
        if !self.only_in_a.is_empty() || !self.only_in_b.is_empty() {
            wln!(o);
        }
        if !self.only_in_a.is_empty() {
            wln!(o, "  only in A: {}", list(&self.only_in_a));
        }
        if !self.only_in_b.is_empty() {
            wln!(o, "  only in B: {}", list(&self.only_in_b));
        }
        if !self.notes.is_empty() {
            wln!(o);
        }
        for n in &self.notes {
            wln!(o, "  {n}");
        }
        o
    }

    pub fn to_json(&self) -> String {
        // Plain data: serializing cannot fail.
        serde_json::to_string_pretty(self).expect("the comparison serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_matched_by_offered_rate_in_order() {
        let (pairs, a, b) = match_steps(&[500.0, 1000.0, 500.0, 8000.0], &[1000.0, 500.0, 2000.0]);
        assert_eq!(pairs, [(0, 1), (1, 0)]);
        assert_eq!((a, b), (vec![2, 3], vec![2]));
        // Rounding in a rate written to JSON is the same step.
        let (pairs, _, _) = match_steps(&[333.333_333_3], &[333.333_333_4]);
        assert_eq!(pairs, [(0, 0)]);
        let (pairs, a, b) = match_steps(&[], &[1.0]);
        assert!(pairs.is_empty() && a.is_empty());
        assert_eq!(b, [0]);
    }

    #[test]
    fn ratios_are_b_over_a_when_both_are_there() {
        assert_eq!(ratio(Some(2.0), Some(3.0)), Some(1.5));
        assert_eq!(ratio(Some(4.0), Some(0.0)), Some(0.0));
        assert_eq!(ratio(Some(0.0), Some(3.0)), None);
        assert_eq!(ratio(None, Some(3.0)), None);
        assert_eq!(ratio(Some(3.0), None), None);
        assert_eq!(ratio(Some(f64::INFINITY), Some(1.0)), None);
    }

    fn step(rate: f64, delivered: f64, cpu: &[(&str, f64)]) -> StepSummary {
        StepSummary {
            offered_msgs_per_s: rate,
            delivered_msgs_per_s: delivered,
            latency_ms: LatencySummary {
                p50: 10.0,
                p99: 40.0,
            },
            cpu_percent: cpu.iter().map(|&(n, p)| (n.to_owned(), p)).collect(),
            redis: None,
            nats: None,
        }
    }

    #[test]
    fn cpu_per_message_is_per_process_and_bus_rows_appear_when_either_run_has_them() {
        let a = step(1_000.0, 1_000.0, &[("nats", 50.0), ("redis", 30.0)]);
        let mut b = step(1_000.0, 500.0, &[("nats", 50.0), ("ingest", 10.0)]);
        b.redis = Some(RedisCost {
            commands_per_delivered_msg: Some(30.0),
            scripts_per_delivered_msg: Some(3.5),
            ..Default::default()
        });
        let rows = rows(&Side::step(&a), &Side::step(&b));
        let get = |m: &str| rows.iter().find(|r| r.metric == m).cloned().unwrap();
        // 50 % of a core over 1,000 msgs/s: 500 µs; over 500 msgs/s: 1,000 µs.
        let nats = get("  nats");
        assert_eq!(
            (nats.a, nats.b, nats.ratio),
            (Some(500.0), Some(1_000.0), Some(2.0))
        );
        let all = get("CPU µs per delivered msg, all");
        assert_eq!((all.a, all.b), (Some(800.0), Some(1_200.0)));
        assert_eq!((get("  redis").a, get("  redis").b), (Some(300.0), None));
        assert_eq!(get("  ingest").b, Some(200.0));
        assert_eq!(get("delivered msgs/s").ratio, Some(0.5));
        let cmds = get("Redis commands per delivered msg");
        assert_eq!((cmds.a, cmds.b, cmds.ratio), (None, Some(30.0), None));
        assert!(rows.iter().all(|r| !r.metric.starts_with("NATS")));
    }

    fn run(steps: Vec<StepSummary>) -> RunSummary {
        RunSummary {
            tool: "interop-loadtest".into(),
            run_id: Some(42),
            scenario: ScenarioName {
                name: "knee".into(),
            },
            throughput_msgs_per_s: steps
                .iter()
                .map(|s| s.delivered_msgs_per_s)
                .fold(0.0, f64::max),
            measured_delivered: None,
            derived: DerivedSummary::default(),
            latency_ms: LatencySummary {
                p50: 10.0,
                p99: 40.0,
            },
            cpu_percent: BTreeMap::new(),
            redis: None,
            nats: None,
            ceiling_msgs_per_s: None,
            knee_msgs_per_s: None,
            steps,
        }
    }

    #[test]
    fn runs_without_a_common_step_are_refused_and_the_rest_is_listed() {
        let a = run(vec![step(500.0, 500.0, &[]), step(1_000.0, 990.0, &[])]);
        let b = run(vec![step(2_000.0, 1_500.0, &[])]);
        let e = compare(&a, "a", &b, "b").unwrap_err();
        assert!(
            e.to_string()
                .contains("no offered rate in common (A: 500, 1,000 msgs/s; B: 2,000 msgs/s)"),
            "{e}"
        );
        let mut b = run(vec![step(1_000.0, 900.0, &[]), step(2_000.0, 1_500.0, &[])]);
        b.ceiling_msgs_per_s = Some(10_000.0);
        b.knee_msgs_per_s = Some(1_000.0);
        let mut a = a;
        a.ceiling_msgs_per_s = Some(8_000.0);
        a.knee_msgs_per_s = Some(1_000.0);
        let c = compare(&a, "a", &b, "b").unwrap();
        assert_eq!(c.steps.len(), 1);
        assert_eq!(c.steps[0].offered_msgs_per_s, 1_000.0);
        assert_eq!(
            (c.only_in_a.clone(), c.only_in_b.clone()),
            (vec![500.0], vec![2_000.0])
        );
        let kc = c
            .overall
            .iter()
            .find(|r| r.metric == "knee / ceiling")
            .unwrap();
        assert_eq!((kc.a, kc.b), (Some(0.125), Some(0.1)));
        assert!((kc.ratio.unwrap() - 0.8).abs() < 1e-12);
        let text = c.to_text();
        assert!(text.contains("only in A: 500 msgs/s"), "{text}");
        assert!(text.contains("step at 1,000 msgs/s offered"), "{text}");
    }

    #[test]
    fn what_is_not_a_report_says_so() {
        let p = Path::new("x.json");
        let e = parse(p, "{").unwrap_err();
        assert!(matches!(e, CompareError::Json { .. }), "{e}");
        let e = parse(p, r#"{"msgs_per_s": 1.0, "hops": 4}"#).unwrap_err();
        assert!(e.to_string().contains("it is a ceiling"), "{e}");
        let e = parse(p, r#"{"tool": "other"}"#).unwrap_err();
        assert!(e.to_string().contains("its tool is \"other\""), "{e}");
        let e = parse(p, r#"{"tool": "interop-loadtest", "steps": []}"#).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("x.json is not a report of `loadtest run --json`: missing field"),
            "{e}"
        );
        let e = load(Path::new("/nonexistent/a.json")).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read /nonexistent/a.json"),
            "{e}"
        );
    }

    /// Two real reports (built like a run builds them, with CPU, Redis and
    /// NATS figures), written to files, compared.
    #[test]
    fn two_written_reports_are_compared() {
        use crate::cost::{BusSample, CommandCounts, NatsSample, RedisSample, Varz};
        use crate::plan::{Plan, RunId};
        use crate::recorder::{Answer, Recorder};
        use crate::report::{Report, RunFacts, TargetInfo};
        use crate::Scenario;
        use std::sync::Arc;

        let report = |every: u64, scripts: u64, nats_in: u64, ceiling: Option<f64>| {
            let s = Scenario::from_toml(
                "name='cmp'\n[rate]\nsteps=[10, 20]\nstep_s=2\nwarmup_s=1\n[knee]\nmax_p99_ms=1000",
            )
            .unwrap();
            let plan = Arc::new(Plan::new(&s, RunId(7)));
            let r = Recorder::new(s.schedule.clone(), plan);
            for seq in 0..s.schedule.total() {
                let at = s.schedule.offset_us(seq).unwrap();
                r.sent(seq, at);
                r.answered(seq, Answer::Accepted, at + 1_000);
                if seq % every == 0 {
                    r.delivered(&[(seq, at)], at + 5_000);
                }
            }
            let facts = RunFacts {
                run_id: RunId(7),
                started_at_unix_ms: 1,
                target: TargetInfo {
                    ingest_url: "ws://i".into(),
                    delivery_url: "ws://d".into(),
                },
                max_lag_us: 0,
                drain_s: 1.0,
                drained: true,
                interrupted: false,
                duplicates_suppressed_by_client: 0,
                resent_after_reconnect: 0,
            };
            let ceiling = ceiling.map(|c| crate::CeilingReport {
                msgs_per_s: c,
                messages: 1,
                hops: 4,
                payload_bytes: 256,
                elapsed_s: 1.0,
                msg_id: false,
                nats_server_version: "2.9.10".into(),
            });
            let mut report = Report::build(&s, &r.stats(), &r.ledger, &facts, ceiling);
            report.cpu_percent.insert("nats".into(), 30.0);
            for st in &mut report.steps {
                st.cpu_percent.insert("nats".into(), 30.0);
            }
            report.note_cpu_per_message();
            // Readings at the three step boundaries: `scripts` EVALSHA and
            // `nats_in` messages in per delivered message.
            let mut samples = Vec::new();
            let mut delivered_so_far = 0;
            for i in 0..=report.steps.len() {
                let mut stats = crate::cost::CommandStats::new();
                stats.insert(
                    "evalsha".into(),
                    CommandCounts {
                        calls: scripts * delivered_so_far,
                        usec: 0,
                    },
                );
                stats.insert(
                    "info".into(),
                    CommandCounts {
                        calls: i as u64,
                        usec: 0,
                    },
                );
                samples.push(BusSample {
                    redis: Some(Ok(RedisSample {
                        stats,
                        own_before_info: BTreeMap::new(),
                        nodes: 1,
                    })),
                    nats: Some(Ok(NatsSample {
                        varz: Varz {
                            in_msgs: nats_in * delivered_so_far,
                            ..Varz::default()
                        },
                        servers: 1,
                    })),
                });
                delivered_so_far += report.steps.get(i).map_or(0, |s| s.delivered_in_window);
            }
            report.note_bus_costs(&samples, Some("redis://r"), Some("http://n:8222"));
            report
        };
        let a = report(1, 3, 4, Some(10_000.0));
        assert_eq!(
            a.redis.as_ref().unwrap().scripts_per_delivered_msg,
            Some(3.0)
        );
        assert_eq!(
            a.redis.as_ref().unwrap().commands_per_delivered_msg,
            Some(3.0)
        );
        assert_eq!(
            a.steps[1].nats.as_ref().unwrap().in_msgs_per_delivered_msg,
            Some(4.0)
        );
        let b = report(2, 6, 4, None);
        let dir = tempfile::tempdir().unwrap();
        let (pa, pb) = (dir.path().join("a.json"), dir.path().join("b.json"));
        std::fs::write(&pa, a.to_json()).unwrap();
        std::fs::write(&pb, b.to_json()).unwrap();
        let c = compare_files(&pa, &pb).unwrap();
        assert_eq!(c.steps.len(), 2);
        let get = |rows: &[Row], m: &str| rows.iter().find(|r| r.metric == m).cloned().unwrap();
        let step = &c.steps[1].rows;
        assert_eq!(get(step, "delivered msgs/s").ratio, Some(0.5));
        assert_eq!(
            get(step, "Redis scripts per delivered msg").ratio,
            Some(2.0)
        );
        assert_eq!(get(step, "NATS msgs in per delivered msg").ratio, Some(1.0));
        // Same CPU, half the deliveries: twice the CPU per message.
        let cpu = get(&c.overall, "  nats");
        assert!((cpu.ratio.unwrap() - 2.0).abs() < 1e-9, "{cpu:?}");
        assert_eq!(get(&c.overall, "ceiling msgs/s").b, None);
        let text = c.to_text();
        assert!(text.contains("step at 20 msgs/s offered"), "{text}");
        assert!(text.contains("Redis scripts per delivered msg"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(json["steps"].as_array().unwrap().len(), 2);
    }
}
