//! What each fault of a soak run cost the messages sent around it, read
//! from the load report's timeline (latency per second of intended send):
//! which fault a slow tail comes from, and slow seconds that follow no
//! fault at all.

use interop_loadtest::report::SecondReport;

/// A fault the soak injected, at `at_s` seconds of the load's clock (when
/// it ended: the process started again).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultAt {
    pub what: String,
    pub at_s: u64,
}

/// The messages intended from 10 s before a fault until the next fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Impact {
    pub what: String,
    pub at_s: u64,
    /// The slowest delivery among them, ms.
    pub max_ms: f64,
    /// The second whose messages were slowest, and its p99, ms.
    pub worst_second: Option<(u64, f64)>,
    /// Seconds in the window whose p99 was over [`SLOW_P99_MS`].
    pub slow_seconds: u64,
}

/// A second whose p99 to delivery is over this counts as slow.
pub const SLOW_P99_MS: f64 = 1000.0;

/// A fault's window starts this long before it (the kill came up to a
/// few seconds before the recorded end of the fault).
const BEFORE_S: u64 = 10;

/// One [`Impact`] per fault, over `timeline`.
pub fn impacts(timeline: &[SecondReport], faults: &[FaultAt]) -> Vec<Impact> {
    faults
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let from = f.at_s.saturating_sub(BEFORE_S);
            let to = faults
                .get(i + 1)
                .map_or(u64::MAX, |n| n.at_s.saturating_sub(BEFORE_S));
            let window = timeline.iter().filter(|s| s.t_s >= from && s.t_s < to);
            let mut impact = Impact {
                what: f.what.clone(),
                at_s: f.at_s,
                max_ms: 0.0,
                worst_second: None,
                slow_seconds: 0,
            };
            for s in window {
                let Some(l) = &s.latency_ms else { continue };
                impact.max_ms = impact.max_ms.max(l.max);
                if impact.worst_second.is_none_or(|(_, p99)| l.p99 > p99) {
                    impact.worst_second = Some((s.t_s, l.p99));
                }
                impact.slow_seconds += u64::from(l.p99 > SLOW_P99_MS);
            }
            impact
        })
        .collect()
}

/// The `n` seconds with the highest p99 to delivery, slowest first, each
/// with the last fault before it (if any within a fault's window).
pub fn slowest_seconds<'a>(
    timeline: &'a [SecondReport],
    faults: &'a [FaultAt],
    n: usize,
) -> Vec<(&'a SecondReport, Option<&'a FaultAt>)> {
    let mut with_latency: Vec<&SecondReport> = timeline
        .iter()
        .filter(|s| s.latency_ms.is_some_and(|l| l.p99 > SLOW_P99_MS))
        .collect();
    with_latency.sort_by(|a, b| {
        let p = |s: &SecondReport| s.latency_ms.map_or(0.0, |l| l.p99);
        p(b).total_cmp(&p(a))
    });
    with_latency
        .into_iter()
        .take(n)
        .map(|s| {
            let before = faults
                .iter()
                .rev()
                .find(|f| f.at_s.saturating_sub(BEFORE_S) <= s.t_s);
            (s, before)
        })
        .collect()
}

/// The table the soak prints after its report.
pub fn table(timeline: &[SecondReport], faults: &[FaultAt]) -> String {
    let mut out = String::from(
        "per fault: messages intended from 10 s before it to the next one\n  \
         fault                          at (s)   slowest (ms)   worst second (s, p99 ms)   seconds p99 > 1 s\n",
    );
    for i in impacts(timeline, faults) {
        let worst = i
            .worst_second
            .map_or("-".to_owned(), |(t, p)| format!("{t}, {p:.0}"));
        out.push_str(&format!(
            "  {:<30} {:>6}   {:>12.0}   {:>24}   {:>17}\n",
            i.what, i.at_s, i.max_ms, worst, i.slow_seconds
        ));
    }
    let slow = slowest_seconds(timeline, faults, 10);
    if slow.is_empty() {
        out.push_str("no second had a p99 to delivery over 1 s\n");
    } else {
        out.push_str("slowest seconds (p99 to delivery over 1 s), with the fault before each\n");
        for (s, f) in slow {
            let l = s.latency_ms.unwrap_or_default();
            let after = f.map_or("no fault before it".to_owned(), |f| {
                if s.t_s >= f.at_s {
                    format!("{} s after {}", s.t_s - f.at_s, f.what)
                } else {
                    format!("{} s before the end of {}", f.at_s - s.t_s, f.what)
                }
            });
            out.push_str(&format!(
                "  t {:>5} s   p99 {:>8.0} ms   max {:>8.0} ms   {after}\n",
                s.t_s, l.p99, l.max
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use interop_loadtest::report::Latency;

    fn second(t_s: u64, p99: Option<f64>) -> SecondReport {
        SecondReport {
            t_s,
            offered: 1000.0,
            sent: 1000,
            accepted: 1000,
            rejected: 0,
            delivered: 1000,
            latency_ms: p99.map(|p99| Latency {
                p99,
                max: p99 * 1.5,
                ..Latency::default()
            }),
        }
    }

    fn fault(what: &str, at_s: u64) -> FaultAt {
        FaultAt {
            what: what.into(),
            at_s,
        }
    }

    #[test]
    fn each_fault_gets_the_seconds_up_to_the_next_one() {
        let mut timeline: Vec<_> = (0..200).map(|t| second(t, Some(5.0))).collect();
        timeline[55] = second(55, Some(2000.0)); // 5 s before the first fault's end
        timeline[56] = second(56, Some(3000.0));
        timeline[95] = second(95, Some(4000.0)); // 5 s before the second fault: its window
        timeline[150] = second(150, None); // nothing measured that second
        let faults = [
            fault("kill -9 routing", 60),
            fault("kill -9 nats-server", 100),
        ];
        let got = impacts(&timeline, &faults);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].worst_second, Some((56, 3000.0)));
        assert_eq!(got[0].max_ms, 4500.0);
        assert_eq!(got[0].slow_seconds, 2);
        assert_eq!(got[1].worst_second, Some((95, 4000.0)));
        assert_eq!(got[1].slow_seconds, 1);
    }

    #[test]
    fn slow_seconds_name_the_fault_before_them_or_none() {
        let mut timeline: Vec<_> = (0..100).map(|t| second(t, Some(5.0))).collect();
        timeline[20] = second(20, Some(1500.0));
        timeline[70] = second(70, Some(9000.0));
        let faults = [fault("restart redis-server (AOF)", 65)];
        let got = slowest_seconds(&timeline, &faults, 10);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.t_s, 70);
        assert_eq!(got[0].1.map(|f| f.at_s), Some(65));
        assert_eq!(got[1].0.t_s, 20);
        assert!(got[1].1.is_none());
        let text = table(&timeline, &faults);
        assert!(
            text.contains("5 s after restart redis-server (AOF)"),
            "{text}"
        );
        assert!(text.contains("no fault before it"), "{text}");
    }

    #[test]
    fn a_quiet_run_says_so() {
        let timeline: Vec<_> = (0..10).map(|t| second(t, Some(5.0))).collect();
        assert!(table(&timeline, &[]).contains("no second had a p99 to delivery over 1 s"));
    }
}
