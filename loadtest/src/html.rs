//! The HTML report: one self-contained file (inline CSS and SVG, no
//! scripts, nothing fetched) with the headline numbers and charts of
//! latency by percentile, throughput over time and latency over time.

use std::fmt::Write as _;

use crate::report::{fmt_num, Latency, Report};

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const W: f64 = 920.0;
const H: f64 = 320.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 46.0;

/// A chart axis: linear or log10, with labelled ticks.
struct Axis {
    min: f64,
    max: f64,
    log: bool,
    ticks: Vec<(f64, String)>,
    label: String,
}

impl Axis {
    fn linear(max: f64, label: &str, unit: &str) -> Self {
        let max = if max > 0.0 { max } else { 1.0 };
        let step = nice_step(max / 5.0);
        let top = (max / step).ceil() * step;
        let ticks = (0..=((top / step).round() as usize))
            .map(|i| {
                let v = i as f64 * step;
                (v, format!("{}{unit}", short_num(v)))
            })
            .collect();
        Self {
            min: 0.0,
            max: top,
            log: false,
            ticks,
            label: label.to_owned(),
        }
    }

    /// Log scale over whole decades covering `lo..=hi` (values > 0).
    fn log10(lo: f64, hi: f64, label: &str, unit: &str) -> Self {
        let lo = lo.max(0.001).log10().floor();
        let hi = hi.max(0.001).log10().ceil().max(lo + 1.0);
        let ticks = (lo as i32..=hi as i32)
            .map(|e| {
                let v = 10f64.powi(e);
                (v, format!("{}{unit}", short_num(v)))
            })
            .collect();
        Self {
            min: 10f64.powf(lo),
            max: 10f64.powf(hi),
            log: true,
            ticks,
            label: label.to_owned(),
        }
    }

    /// Position in 0..=1 along the axis.
    fn frac(&self, v: f64) -> f64 {
        let f = if self.log {
            let v = v.max(self.min);
            (v.log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
        } else {
            (v - self.min) / (self.max - self.min)
        };
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

fn nice_step(raw: f64) -> f64 {
    if raw <= 0.0 || !raw.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    let nice = if n <= 1.0 {
        1.0
    } else if n <= 2.0 {
        2.0
    } else if n <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn short_num(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{}M", short_num(v / 1_000_000.0))
    } else if v >= 10_000.0 {
        format!("{}k", short_num(v / 1000.0))
    } else if v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').to_owned()
    }
}

struct Series {
    name: String,
    color: &'static str,
    dashed: bool,
    /// Stroke width; a wide, light line stays visible under a thin one.
    width: f64,
    /// Draw as steps (a rate held until the next point).
    step: bool,
    points: Vec<(f64, f64)>,
}

fn x_px(a: &Axis, v: f64) -> f64 {
    LEFT + a.frac(v) * (W - LEFT - RIGHT)
}

fn y_px(a: &Axis, v: f64) -> f64 {
    H - BOTTOM - a.frac(v) * (H - TOP - BOTTOM)
}

/// An SVG line chart; `shade` greys out an x range (the warm-up).
fn line_chart(
    title: &str,
    x: &Axis,
    y: &Axis,
    series: &[Series],
    note: &str,
    shade: Option<(f64, f64)>,
) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail (here and below).
    w!(
        s,
        r#"<svg viewBox="0 0 {W} {H}" role="img" aria-label="{t}" xmlns="http://www.w3.org/2000/svg">"#,
        t = esc(title)
    );
    w!(
        s,
        r#"<text x="{LEFT}" y="22" class="ct">{}</text>"#,
        esc(title)
    );
    if let Some((from, to)) = shade.filter(|(a, b)| b > a) {
        let (x1, x2) = (x_px(x, from), x_px(x, to));
        w!(
            s,
            r#"<rect x="{x1:.1}" y="{TOP}" width="{w:.1}" height="{h}" class="shade"/><text x="{tx:.1}" y="{ty}" class="note" text-anchor="middle">warm-up</text>"#,
            w = x2 - x1,
            h = H - TOP - BOTTOM,
            tx = (x1 + x2) / 2.0,
            ty = TOP + 14.0
        );
    }
    for (v, label) in &y.ticks {
        let py = y_px(y, *v);
        w!(
            s,
            r#"<line x1="{LEFT}" x2="{x2}" y1="{py:.1}" y2="{py:.1}" class="grid"/><text x="{tx}" y="{ty:.1}" class="tick" text-anchor="end">{l}</text>"#,
            x2 = W - RIGHT,
            tx = LEFT - 6.0,
            ty = py + 4.0,
            l = esc(label)
        );
    }
    for (v, label) in &x.ticks {
        let px = x_px(x, *v);
        w!(
            s,
            r#"<line x1="{px:.1}" x2="{px:.1}" y1="{TOP}" y2="{y2}" class="grid"/><text x="{px:.1}" y="{ty}" class="tick" text-anchor="middle">{l}</text>"#,
            y2 = H - BOTTOM,
            ty = H - BOTTOM + 16.0,
            l = esc(label)
        );
    }
    w!(
        s,
        r#"<text x="{cx}" y="{ly}" class="axis" text-anchor="middle">{xl}</text><text x="14" y="{cy}" class="axis" text-anchor="middle" transform="rotate(-90 14 {cy})">{yl}</text>"#,
        cx = (LEFT + W - RIGHT) / 2.0,
        ly = H - 8.0,
        cy = (TOP + H - BOTTOM) / 2.0,
        xl = esc(&x.label),
        yl = esc(&y.label)
    );
    for se in series {
        if se.points.is_empty() {
            continue;
        }
        let mut d = String::new();
        let mut prev_y: Option<f64> = None;
        for (i, (vx, vy)) in se.points.iter().enumerate() {
            let (px, py) = (x_px(x, *vx), y_px(y, *vy));
            if i == 0 {
                w!(d, "M{px:.1},{py:.1}");
            } else {
                if let (true, Some(prev)) = (se.step, prev_y) {
                    w!(d, " L{px:.1},{prev:.1}");
                }
                w!(d, " L{px:.1},{py:.1}");
            }
            prev_y = Some(py);
        }
        w!(
            s,
            r#"<path d="{d}" fill="none" stroke="{c}" stroke-width="{w}"{dash} stroke-linejoin="round"/>"#,
            c = se.color,
            w = se.width,
            dash = if se.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            }
        );
        if se.points.len() <= 40 {
            for (vx, vy) in &se.points {
                w!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{}"><title>{}: {}</title></circle>"#,
                    x_px(x, *vx),
                    y_px(y, *vy),
                    se.color,
                    esc(&se.name),
                    short_num((vy * 1000.0).round() / 1000.0)
                );
            }
        }
    }
    // Legend, top right.
    let mut lx = W - RIGHT;
    for se in series.iter().rev() {
        let width = 30.0 + 7.0 * se.name.len() as f64;
        lx -= width;
        w!(
            s,
            r#"<line x1="{lx}" x2="{x2}" y1="18" y2="18" stroke="{c}" stroke-width="3"{dash}/><text x="{tx}" y="22" class="legend">{n}</text>"#,
            x2 = lx + 18.0,
            c = se.color,
            dash = if se.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            },
            tx = lx + 22.0,
            n = esc(&se.name)
        );
    }
    if !note.is_empty() {
        w!(
            s,
            r#"<text x="{x}" y="{y}" class="note" text-anchor="end">{n}</text>"#,
            x = W - RIGHT,
            y = H - 8.0,
            n = esc(note)
        );
    }
    s.push_str("</svg>");
    s
}

/// The percentile axis position: how many nines (0 = p0, 2 = p99, …).
fn nines(percentile: f64) -> f64 {
    let rest = 1.0 - percentile / 100.0;
    if rest <= 1e-5 {
        5.0
    } else {
        -rest.log10()
    }
}

fn percentile_chart(r: &Report) -> String {
    let max = r
        .percentiles
        .iter()
        .map(|p| p.corrected_ms.max(p.uncorrected_ms))
        .fold(0.0, f64::max);
    let x = Axis {
        min: 0.0,
        max: 5.0,
        log: false,
        ticks: [
            (0.0, "p0"),
            (1.0, "p90"),
            (2.0, "p99"),
            (3.0, "p99.9"),
            (4.0, "p99.99"),
            (5.0, "max"),
        ]
        .iter()
        .map(|(v, l)| (*v, (*l).to_owned()))
        .collect(),
        label: "percentile".into(),
    };
    let y = Axis::linear(max * 1.05, "latency", " ms");
    let pick = |f: fn(&crate::report::PercentilePoint) -> f64| {
        r.percentiles
            .iter()
            .map(|p| (nines(p.percentile), f(p)))
            .collect::<Vec<_>>()
    };
    line_chart(
        "Latency by percentile",
        &x,
        &y,
        &[
            Series {
                name: "from intended send (corrected)".into(),
                color: "#d6336c",
                dashed: false,
                width: 2.0,
                step: false,
                points: pick(|p| p.corrected_ms),
            },
            Series {
                name: "from actual send (naive)".into(),
                color: "#868e96",
                dashed: true,
                width: 2.0,
                step: false,
                points: pick(|p| p.uncorrected_ms),
            },
        ],
        &format!("{} messages measured", fmt_num(r.latency_ms.count as f64)),
        None,
    )
}

fn throughput_chart(r: &Report) -> String {
    let max = r
        .timeline
        .iter()
        .map(|s| s.offered.max(s.sent as f64).max(s.delivered as f64))
        .fold(0.0, f64::max);
    let end = r.timeline.len().max(1) as f64;
    let x = Axis::linear(end, "seconds since start", " s");
    let y = Axis::linear(max * 1.1, "messages per second", "");
    let t = |f: fn(&crate::report::SecondReport) -> f64| {
        r.timeline
            .iter()
            .map(|s| (s.t_s as f64, f(s)))
            .collect::<Vec<_>>()
    };
    let mut offered = t(|s| s.offered);
    if let Some(&(last, v)) = offered.last() {
        offered.push((last + 1.0, v));
    }
    line_chart(
        "Throughput over time",
        &x,
        &y,
        &[
            Series {
                name: "offered".into(),
                color: "#adb5bd",
                dashed: true,
                width: 2.0,
                step: true,
                points: offered,
            },
            Series {
                name: "sent".into(),
                color: "#a5d8ff",
                dashed: false,
                width: 6.0,
                step: false,
                points: t(|s| s.sent as f64),
            },
            Series {
                name: "delivered".into(),
                color: "#2b8a3e",
                dashed: false,
                width: 2.0,
                step: false,
                points: t(|s| s.delivered as f64),
            },
        ],
        "per-second buckets",
        Some((0.0, r.derived.warmup_s)),
    )
}

fn latency_time_chart(r: &Report) -> String {
    let lat: Vec<(f64, Latency)> = r
        .timeline
        .iter()
        .filter_map(|s| s.latency_ms.map(|l| (s.t_s as f64, l)))
        .collect();
    let lo = lat.iter().map(|(_, l)| l.p50).fold(f64::INFINITY, f64::min);
    let hi = lat.iter().map(|(_, l)| l.max).fold(0.0, f64::max);
    let x = Axis::linear(
        r.timeline.len().max(1) as f64,
        "second the messages were meant to be sent",
        " s",
    );
    let y = Axis::log10(
        if lo.is_finite() { lo } else { 1.0 },
        hi.max(1.0),
        "latency (log scale)",
        " ms",
    );
    let pick = |f: fn(&Latency) -> f64| lat.iter().map(|(t, l)| (*t, f(l))).collect::<Vec<_>>();
    line_chart(
        "Latency over time",
        &x,
        &y,
        &[
            Series {
                name: "p50".into(),
                color: "#2b8a3e",
                dashed: false,
                width: 2.0,
                step: false,
                points: pick(|l| l.p50),
            },
            Series {
                name: "p99".into(),
                color: "#e8590c",
                dashed: false,
                width: 2.0,
                step: false,
                points: pick(|l| l.p99),
            },
            Series {
                name: "max".into(),
                color: "#c92a2a",
                dashed: true,
                width: 2.0,
                step: false,
                points: pick(|l| l.max),
            },
        ],
        "corrected for coordinated omission",
        Some((0.0, r.derived.warmup_s)),
    )
}

fn steps_chart(r: &Report) -> String {
    let max = r
        .steps
        .iter()
        .map(|s| s.offered_msgs_per_s.max(s.delivered_msgs_per_s))
        .fold(0.0, f64::max);
    let x = Axis::linear(max * 1.05, "offered (msgs/s)", "");
    let y = Axis::linear(max * 1.05, "delivered (msgs/s)", "");
    let mut out = line_chart(
        "Offered vs delivered, by step",
        &x,
        &y,
        &[
            Series {
                name: "ideal".into(),
                color: "#adb5bd",
                dashed: true,
                width: 2.0,
                step: false,
                points: vec![(0.0, 0.0), (x.max, x.max)],
            },
            Series {
                name: "delivered".into(),
                color: "#1971c2",
                dashed: false,
                width: 2.0,
                step: false,
                points: r
                    .steps
                    .iter()
                    .map(|s| (s.offered_msgs_per_s, s.delivered_msgs_per_s))
                    .collect(),
            },
        ],
        "",
        None,
    );
    let p99max = r.steps.iter().map(|s| s.latency_ms.p99).fold(0.0, f64::max);
    let y2 = Axis::log10(
        r.steps
            .iter()
            .map(|s| s.latency_ms.p50)
            .fold(f64::INFINITY, f64::min)
            .min(1.0),
        p99max.max(1.0),
        "p99 latency (log scale)",
        " ms",
    );
    out.push_str(&line_chart(
        "p99 latency by step",
        &x,
        &y2,
        &[
            Series {
                name: "p50".into(),
                color: "#2b8a3e",
                dashed: false,
                width: 2.0,
                step: false,
                points: r
                    .steps
                    .iter()
                    .map(|s| (s.offered_msgs_per_s, s.latency_ms.p50))
                    .collect(),
            },
            Series {
                name: "p99".into(),
                color: "#e8590c",
                dashed: false,
                width: 2.0,
                step: false,
                points: r
                    .steps
                    .iter()
                    .map(|s| (s.offered_msgs_per_s, s.latency_ms.p99))
                    .collect(),
            },
        ],
        &match r.knee_msgs_per_s {
            Some(k) => format!("knee: {} msgs/s", fmt_num(k)),
            None => String::new(),
        },
        None,
    ));
    out
}

fn card(o: &mut String, label: &str, value: &str, class: &str) {
    w!(
        o,
        r#"<div class="card {class}"><div class="v">{}</div><div class="l">{}</div></div>"#,
        esc(value),
        esc(label)
    );
}

fn latency_row(o: &mut String, name: &str, l: &Latency) {
    w!(
        o,
        "<tr><th>{}</th><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td></tr>",
        esc(name),
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        fmt_num(l.count as f64)
    );
}

/// CPU per process (% of one core): the measured phase, and each step of a
/// stepped run; nothing when no process was sampled.
fn cpu_table(o: &mut String, r: &Report) {
    if r.cpu_percent.is_empty() {
        return;
    }
    let stepped = r.steps.len() > 1;
    o.push_str(
        "<h2>CPU (% of one core)</h2><table><thead><tr><th>process</th><th>measured phase</th>",
    );
    if stepped {
        for s in &r.steps {
            w!(o, "<th>{}/s</th>", fmt_num(s.offered_msgs_per_s));
        }
    }
    o.push_str("</tr></thead><tbody>");
    for (name, pct) in &r.cpu_percent {
        w!(o, "<tr><th>{}</th><td>{pct:.1}</td>", esc(name));
        if stepped {
            for s in &r.steps {
                match s.cpu_percent.get(name) {
                    Some(p) => w!(o, "<td>{p:.1}</td>"),
                    None => w!(o, "<td>–</td>"),
                };
            }
        }
        o.push_str("</tr>");
    }
    o.push_str("</tbody></table>");
}

/// Redis and NATS per delivered message: the measured phase and each step
/// of a stepped run, the most called Redis commands, and why a figure is
/// missing.
fn cost_table(o: &mut String, r: &Report) {
    o.push_str("<h2>Redis and NATS per delivered message</h2>");
    let stepped = r.steps.len() > 1;
    if r.redis.is_some() || r.nats.is_some() {
        o.push_str("<table><thead><tr><th></th><th>measured phase</th>");
        if stepped {
            for s in &r.steps {
                w!(o, "<th>{}/s</th>", fmt_num(s.offered_msgs_per_s));
            }
        }
        o.push_str("</tr></thead><tbody>");
        type Pick = fn(&crate::report::StepReport) -> Option<f64>;
        let mut rows: Vec<(&str, Option<f64>, Pick)> = Vec::new();
        if let Some(x) = &r.redis {
            rows.push(("Redis commands", x.commands_per_delivered_msg, |s| {
                s.redis.as_ref()?.commands_per_delivered_msg
            }));
            rows.push(("Redis scripts", x.scripts_per_delivered_msg, |s| {
                s.redis.as_ref()?.scripts_per_delivered_msg
            }));
            rows.push((
                "µs inside Redis's scripts",
                x.script_usec_per_delivered_msg,
                |s| s.redis.as_ref()?.script_usec_per_delivered_msg,
            ));
        }
        if let Some(x) = &r.nats {
            rows.push(("NATS messages in", x.in_msgs_per_delivered_msg, |s| {
                s.nats.as_ref()?.in_msgs_per_delivered_msg
            }));
            rows.push(("NATS messages out", x.out_msgs_per_delivered_msg, |s| {
                s.nats.as_ref()?.out_msgs_per_delivered_msg
            }));
            rows.push(("NATS bytes in", x.in_bytes_per_delivered_msg, |s| {
                s.nats.as_ref()?.in_bytes_per_delivered_msg
            }));
            rows.push(("NATS bytes out", x.out_bytes_per_delivered_msg, |s| {
                s.nats.as_ref()?.out_bytes_per_delivered_msg
            }));
        }
        let cell = |o: &mut String, v: Option<f64>| match v {
            Some(v) => w!(o, "<td>{v:.2}</td>"),
            None => w!(o, "<td>–</td>"),
        };
        for (name, run, pick) in rows {
            w!(o, "<tr><th>{}</th>", esc(name));
            cell(o, run);
            if stepped {
                for s in &r.steps {
                    cell(o, pick(s));
                }
            }
            o.push_str("</tr>");
        }
        o.push_str("</tbody></table>");
        if let Some(x) = &r.redis {
            let top: Vec<String> = x
                .top
                .iter()
                .map(|c| {
                    format!(
                        "{} {:.2}",
                        esc(&c.command),
                        c.per_delivered_msg.unwrap_or(0.0)
                    )
                })
                .collect();
            w!(
                o,
                "<p>Most called Redis commands per delivered message: {}</p>",
                top.join(", ")
            );
        }
    }
    for note in &r.cost_notes {
        w!(o, "<p>{}</p>", esc(note));
    }
}

const STYLE: &str = r#"
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;color:#212529}
main{max-width:960px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px}
.sub{color:#6c757d;margin-bottom:18px}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:10px}
.card{background:#fff;border-radius:8px;padding:12px 14px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.card .v{font-size:24px;font-weight:650}.card .l{color:#6c757d;font-size:13px}
.card.bad .v{color:#c92a2a}.card.good .v{color:#2b8a3e}
.panel{background:#fff;border-radius:8px;padding:8px;margin-top:12px;box-shadow:0 1px 2px rgba(0,0,0,.08)}
svg{width:100%;height:auto;display:block}
.ct{font-size:15px;font-weight:600;fill:#212529}.tick{font-size:11px;fill:#6c757d}
.axis{font-size:12px;fill:#495057}.legend{font-size:12px;fill:#495057}.note{font-size:11px;fill:#868e96}
.grid{stroke:#e9ecef;stroke-width:1}.shade{fill:#f1f3f5}
table{border-collapse:collapse;background:#fff;border-radius:8px;overflow:hidden;box-shadow:0 1px 2px rgba(0,0,0,.08)}
th,td{padding:5px 12px;text-align:right;border-bottom:1px solid #f1f3f5}th:first-child{text-align:left}
thead th{background:#f8f9fa;font-weight:600}
.warn{background:#fff4e6;border-left:4px solid #e8590c;padding:8px 12px;margin:6px 0;border-radius:4px}
pre{background:#fff;padding:12px;border-radius:8px;overflow:auto;font-size:12px}
.two{display:grid;grid-template-columns:1fr 1fr;gap:16px;align-items:start}
"#;

/// The whole page.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    w!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>loadtest: {name}</title><style>{STYLE}</style></head><body><main>",
        name = esc(&r.scenario.name)
    );
    w!(
        o,
        "<h1>interop load test: {}</h1><div class=\"sub\">run {} · offered {} msgs/s{} · {} s measured after {} s warm-up · {} senders, {} spammers, {} recipients · {} cores{}</div>",
        esc(&r.scenario.name),
        r.run_id,
        fmt_num(r.offered_msgs_per_s),
        if r.steps.len() > 1 { " (highest step)" } else { "" },
        fmt_num(r.derived.measured_s),
        fmt_num(r.derived.warmup_s),
        r.derived.senders,
        r.derived.spammers,
        r.derived.recipients,
        r.generator.cores,
        if r.interrupted { " · <b>interrupted</b>" } else { "" }
    );
    if !r.scenario.description.is_empty() {
        w!(o, "<p>{}</p>", esc(&r.scenario.description));
    }
    o.push_str("<div class=\"cards\">");
    card(
        &mut o,
        "delivered msgs/s (measured window)",
        &fmt_num(r.throughput_msgs_per_s),
        "",
    );
    card(
        &mut o,
        "p50 latency",
        &format!("{:.1} ms", r.latency_ms.p50),
        "",
    );
    card(
        &mut o,
        "p99 latency",
        &format!("{:.1} ms", r.latency_ms.p99),
        "",
    );
    card(
        &mut o,
        "p99.9 latency",
        &format!("{:.1} ms", r.latency_ms.p999),
        "",
    );
    card(&mut o, "delivered", &fmt_num(r.delivered as f64), "");
    card(
        &mut o,
        "lost",
        &fmt_num(r.lost as f64),
        if r.lost > 0 { "bad" } else { "good" },
    );
    card(
        &mut o,
        "duplicates seen by apps",
        &fmt_num(r.duplicates_seen_by_apps as f64),
        if r.duplicates_seen_by_apps > 0 {
            "bad"
        } else {
            "good"
        },
    );
    card(
        &mut o,
        "duplicates on the wire (before de-duplication)",
        &fmt_num(r.duplicates as f64),
        "",
    );
    match (r.ceiling_msgs_per_s, r.ratio_to_ceiling) {
        (Some(c), Some(ratio)) => card(
            &mut o,
            &format!("of the {} msgs/s NATS ceiling", fmt_num(c)),
            &format!("{:.1}%", ratio * 100.0),
            "",
        ),
        _ => card(&mut o, "ceiling (run with --ceiling)", "n/a", ""),
    }
    o.push_str("</div>");
    for w in &r.warnings {
        w!(o, "<div class=\"warn\">{}</div>", esc(w));
    }
    if !r.percentiles.is_empty() {
        w!(o, "<div class=\"panel\">{}</div>", percentile_chart(r));
    }
    w!(o, "<div class=\"panel\">{}</div>", throughput_chart(r));
    if r.timeline.iter().any(|s| s.latency_ms.is_some()) {
        w!(o, "<div class=\"panel\">{}</div>", latency_time_chart(r));
    }
    if r.steps.len() > 1 {
        w!(o, "<div class=\"panel\">{}</div>", steps_chart(r));
        o.push_str("<h2>Steps</h2><table><thead><tr><th>step</th><th>offered/s</th><th>delivered/s</th><th>p50 ms</th><th>p99 ms</th><th>max ms</th><th>lost</th><th>healthy</th></tr></thead><tbody>");
        for s in &r.steps {
            w!(
                o,
                "<tr><th>{}</th><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
                s.index + 1,
                fmt_num(s.offered_msgs_per_s),
                fmt_num(s.delivered_msgs_per_s),
                s.latency_ms.p50,
                s.latency_ms.p99,
                s.latency_ms.max,
                s.lost,
                if s.healthy { "yes" } else { "<b>no</b>" }
            );
        }
        o.push_str("</tbody></table>");
    }
    o.push_str("<div class=\"two\"><div><h2>Messages</h2><table><tbody>");
    let mut rows: Vec<(String, u64)> =
        vec![("sent".into(), r.sent), ("accepted".into(), r.accepted)];
    rows.extend(
        r.rejected
            .iter()
            .map(|(c, n)| (format!("rejected {c}"), *n)),
    );
    rows.push(("unanswered".into(), r.unanswered));
    rows.push(("delivered".into(), r.delivered));
    rows.extend(
        r.failed
            .iter()
            .map(|(c, n)| (format!("failed {c} (receipt)"), *n)),
    );
    rows.push(("lost".into(), r.lost));
    rows.push(("duplicates on the wire".into(), r.duplicates));
    rows.push((
        "dropped by the client's de-duplication".into(),
        r.duplicates_dropped_by_client,
    ));
    rows.push(("duplicates seen by apps".into(), r.duplicates_seen_by_apps));
    rows.push((
        "re-sent after a reconnect".into(),
        r.generator.resent_after_reconnect,
    ));
    rows.push(("DELIVERED receipts".into(), r.receipts.delivered));
    for (name, n) in rows {
        w!(
            o,
            "<tr><th>{}</th><td>{}</td></tr>",
            esc(&name),
            fmt_num(n as f64)
        );
    }
    o.push_str("</tbody></table></div><div>");
    if r.spam.sent > 0 {
        o.push_str("<h2>Spammers</h2><table><tbody>");
        for (name, n) in [
            ("spam sent", r.spam.sent),
            ("accepted", r.spam.accepted),
            ("refused as SPAM", r.spam.refused_as_spam),
            ("held in quarantine", r.spam_held),
            ("reached inboxes", r.spam.reached_inboxes),
            ("… of them as requests", r.spam.reached_requests),
        ] {
            w!(o, "<tr><th>{name}</th><td>{}</td></tr>", fmt_num(n as f64));
        }
        o.push_str("</tbody></table>");
    }
    if r.media.sent > 0 {
        let m = &r.media;
        o.push_str("<h2>Media</h2><table><tbody>");
        for (name, n) in [
            ("messages sent", m.sent),
            ("accepted", m.accepted),
            ("blobs uploaded at set-up", m.pool_blobs),
            ("bytes uploaded", m.pool_bytes),
            ("downloads", m.downloads),
            ("download errors", m.download_errors),
        ] {
            w!(o, "<tr><th>{name}</th><td>{}</td></tr>", fmt_num(n as f64));
        }
        o.push_str("</tbody></table>");
    }
    if r.groups.sent > 0 {
        let g = &r.groups;
        w!(
            o,
            "<h2>Groups</h2><table><tbody><tr><th>groups × members</th><td>{} × {}</td></tr>",
            g.groups,
            g.members_per_group
        );
        for (name, n) in [
            ("messages sent", g.sent),
            ("accepted", g.accepted),
            ("copies expected", g.copies_expected),
            ("copies delivered", g.copies_delivered),
            ("copies lost", g.copies_lost),
        ] {
            w!(o, "<tr><th>{name}</th><td>{}</td></tr>", fmt_num(n as f64));
        }
        o.push_str("</tbody></table>");
    }
    if r.first_contacts.sent > 0 {
        let fc = &r.first_contacts;
        o.push_str("<h2>First contacts</h2><table><tbody>");
        for (name, n) in [
            ("sent", fc.sent),
            ("accepted", fc.accepted),
            ("delivered", fc.delivered),
            ("… as requests", fc.as_requests),
            ("held beyond the request", fc.held),
        ] {
            w!(o, "<tr><th>{name}</th><td>{}</td></tr>", fmt_num(n as f64));
        }
        o.push_str("</tbody></table>");
    }
    if let Some(c) = &r.ceiling {
        w!(
            o,
            "<h2>Ceiling</h2><table><tbody><tr><th>{} JetStream hops, no logic{}</th><td>{} msgs/s</td></tr><tr><th>messages × payload</th><td>{} × {} B</td></tr><tr><th>nats-server</th><td>{}</td></tr></tbody></table>",
            c.hops,
            if c.msg_id { ", with Nats-Msg-Id" } else { "" },
            fmt_num(c.msgs_per_s),
            fmt_num(c.messages as f64),
            c.payload_bytes,
            esc(&c.nats_server_version)
        );
    }
    o.push_str("</div></div>");
    cpu_table(&mut o, r);
    cost_table(&mut o, r);
    o.push_str("<h2>Latency (ms)</h2><table><thead><tr><th></th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>count</th></tr></thead><tbody>");
    latency_row(&mut o, "intended send → delivery", &r.latency_ms);
    latency_row(
        &mut o,
        "actual send → delivery (naive)",
        &r.latency_uncorrected_ms,
    );
    latency_row(&mut o, "intended send → accepted", &r.accept_latency_ms);
    latency_row(
        &mut o,
        "intended send → DELIVERED receipt",
        &r.receipt_latency_ms,
    );
    if r.media.upload_ms.count > 0 {
        latency_row(&mut o, "media upload (set-up)", &r.media.upload_ms);
    }
    if r.media.download_ms.count > 0 {
        latency_row(&mut o, "media download (recipient)", &r.media.download_ms);
    }
    o.push_str("</tbody></table>");
    o.push_str("<h2>How to read this</h2><p>Latency is measured from when each message was <i>meant</i> to be sent by the open-loop schedule, so a stall anywhere (gateway or load generator) shows up in every message it delayed. The dashed grey curve is what a naive tester that timestamps the actual send would report. Lost means accepted by the gateway but neither delivered nor refused with a receipt within the drain period; duplicates on the wire are counted before any de-duplication (a message delivered again, whatever its server id), duplicates seen by apps after the client library's de-duplication by server message id, which a device keeps across reconnects: the second must be 0.</p>");
    // Serializing the scenario (plain data) cannot fail.
    let config = serde_json::to_string_pretty(&r.scenario).expect("the scenario serializes");
    w!(
        o,
        "<h2>Scenario</h2><pre>{}</pre><p class=\"sub\">target {} · {} · interop-loadtest {}</p></main></body></html>",
        esc(&config),
        esc(&r.target.ingest_url),
        esc(&r.target.delivery_url),
        r.version
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_axes() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let a = Axis::linear(93.0, "x", "");
        assert_eq!(a.max, 100.0);
        assert_eq!(a.ticks.len(), 6);
        let l = Axis::log10(0.4, 2500.0, "y", " ms");
        assert_eq!((l.min, l.max), (0.1, 10_000.0));
        assert!((l.frac(100.0) - 0.6).abs() < 1e-9);
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
        assert_eq!(nines(100.0), 5.0);
        assert_eq!(short_num(25_000.0), "25k");
        assert_eq!(short_num(0.25), "0.25");
    }
}
