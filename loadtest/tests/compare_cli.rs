//! `loadtest compare A.json B.json` as a user runs it: two small reports
//! written here, the ratios printed, and what it says about files it
//! cannot compare.

use std::path::Path;
use std::process::Command;

/// A report as `loadtest run --json` writes it, cut down to what compare
/// reads (plus a field it ignores), with two steps.
fn report(delivered: [f64; 2], scripts: f64, nats_in: f64, ceiling: Option<f64>) -> String {
    let step = |offered: f64, delivered: f64| {
        serde_json::json!({
            "index": 0,
            "offered_msgs_per_s": offered,
            "delivered_msgs_per_s": delivered,
            "delivered_in_window": (delivered * 10.0) as u64,
            "latency_ms": {"p50": 10.0, "p90": 20.0, "p99": 40.0, "p999": 50.0, "max": 60.0, "mean": 12.0, "count": 10},
            "cpu_percent": {"nats": 50.0, "redis": 20.0},
            "redis": {"commands_per_delivered_msg": 30.0, "scripts_per_delivered_msg": scripts},
            "nats": {"in_msgs_per_delivered_msg": nats_in, "out_msgs_per_delivered_msg": 4.0}
        })
    };
    serde_json::json!({
        "tool": "interop-loadtest",
        "version": "0.1.0",
        "run_id": 123,
        "scenario": {"name": "knee"},
        "derived": {"measured_s": 20.0},
        "throughput_msgs_per_s": delivered[1],
        "measured_delivered": ((delivered[0] + delivered[1]) * 10.0) as u64,
        "latency_ms": {"p50": 10.0, "p99": 40.0},
        "cpu_percent": {"nats": 50.0, "redis": 20.0},
        "redis": {"commands_per_delivered_msg": 30.0, "scripts_per_delivered_msg": scripts},
        "nats": {"in_msgs_per_delivered_msg": nats_in, "out_msgs_per_delivered_msg": 4.0},
        "ceiling_msgs_per_s": ceiling,
        "knee_msgs_per_s": 1000.0,
        "steps": [step(1000.0, delivered[0]), step(2000.0, delivered[1])],
        "timeline": []
    })
    .to_string()
}

fn compare(a: &Path, b: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .arg("compare")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn compare_prints_the_ratios_of_two_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    std::fs::write(&a, report([1000.0, 1500.0], 3.5, 4.4, Some(10_000.0))).unwrap();
    std::fs::write(&b, report([1000.0, 2000.0], 1.75, 4.4, Some(8_000.0))).unwrap();
    let (ok, out, err) = compare(&a, &b);
    assert!(ok, "{err}");
    let line = |prefix: &str, section: &str| {
        let start = out
            .find(section)
            .unwrap_or_else(|| panic!("{section}: {out}"));
        out[start..]
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} in {section}: {out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let step = "step at 2,000 msgs/s offered";
    assert_eq!(
        line("delivered msgs/s", step),
        "delivered msgs/s 1,500 2,000 1.333"
    );
    assert_eq!(
        line("Redis scripts per delivered msg", step),
        "Redis scripts per delivered msg 3.50 1.75 0.500"
    );
    assert_eq!(
        line("NATS msgs in per delivered msg", step),
        "NATS msgs in per delivered msg 4.40 4.40 1.000"
    );
    // 50 % of a core at 1,500 and at 2,000 msgs/s.
    assert_eq!(line("nats", step), "nats 333.3 250.0 0.750");
    assert_eq!(
        line("ceiling msgs/s", "overall"),
        "ceiling msgs/s 10,000 8,000 0.800"
    );
    assert_eq!(
        line("knee / ceiling", "overall"),
        "knee / ceiling 0.10 0.12 1.250"
    );
    assert!(out.contains("step at 1,000 msgs/s offered"), "{out}");
}

#[test]
fn compare_says_what_is_wrong_with_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(&good, report([1000.0, 1500.0], 3.5, 4.4, None)).unwrap();
    let ceiling = dir.path().join("ceiling.json");
    std::fs::write(&ceiling, r#"{"msgs_per_s": 20000.0, "hops": 4}"#).unwrap();
    let (ok, out, err) = compare(&good, &ceiling);
    assert!(!ok && out.is_empty());
    assert!(
        err.contains("ceiling.json is not a report of `loadtest run --json`: it is a ceiling"),
        "{err}"
    );
    let (ok, _, err) = compare(&dir.path().join("missing.json"), &good);
    assert!(!ok);
    assert!(
        err.contains("cannot read") && err.contains("missing.json"),
        "{err}"
    );
    let other = dir.path().join("other.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&report([1.0, 2.0], 1.0, 1.0, None)).unwrap();
    v["steps"][0]["offered_msgs_per_s"] = 300.0.into();
    v["steps"][1]["offered_msgs_per_s"] = 600.0.into();
    std::fs::write(&other, v.to_string()).unwrap();
    let (ok, _, err) = compare(&good, &other);
    assert!(!ok);
    assert!(
        err.contains("no offered rate in common (A: 1,000, 2,000 msgs/s; B: 300, 600 msgs/s)"),
        "{err}"
    );
}
