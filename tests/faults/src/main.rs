//! `soak`: the gateway as processes under mixed load for a long time, with a
//! fault every so often, printing each process's resident memory over time
//! (a table on stdout, and a CSV with `--csv`). Run through `scripts/soak`,
//! which builds everything in release mode first. Not part of CI.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tokio::time::Instant;

use interop_faults::impact::{self, FaultAt};
use interop_faults::load::Load;
use interop_faults::rss::rss_kib;
use interop_faults::{Binaries, Gateway, GatewayOptions, SERVICES};
use interop_loadtest::Scenario;
use interop_test_support::{NatsServer, RedisServer};

/// Mixed load with periodic faults; memory per process over time.
#[derive(Parser)]
#[command(name = "soak")]
struct Args {
    /// How long to run the load: `90s`, `30m`, `2h` or seconds.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// Offered load, messages per second: half E2EE, half text, a fifth of
    /// senders tracking receipts, and (from 30 msgs/s) one spammer at 15/s.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// A fault every this long (`0` for none). Faults rotate: kill -9 each
    /// service in turn, kill -9 nats-server, restart redis-server.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    fault_every: Duration,
    /// How often to sample memory.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    sample_every: Duration,
    /// Also write the samples here as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Which faults to rotate through, comma-separated: service names
    /// (`ingest`, `spam-scoring`, `routing`, `media-transcoding`,
    /// `delivery`), `nats` and `redis`. Default: all, in that order.
    #[arg(long, value_delimiter = ',', value_parser = parse_fault)]
    faults: Vec<Fault>,
    /// Make each Redis restart load its data for about this long (Redis's
    /// `key-load-delay`, set from the key count at the restart), as a
    /// production data set of many gigabytes does. `0`: the soak's own data
    /// at full speed.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    redis_load: Duration,
    /// The stores' count limit (`--inbox-max-per-recipient` of every
    /// service): a small one fills the stores of senders that never read
    /// within minutes, as the default 10,000 does in half an hour.
    #[arg(long)]
    inbox_max_per_recipient: Option<i64>,
    /// Also write the load report (with its per-second timeline) here as
    /// JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Service(&'static str),
    Nats,
    Redis,
}

fn parse_fault(s: &str) -> Result<Fault, String> {
    match s {
        "nats" => Ok(Fault::Nats),
        "redis" => Ok(Fault::Redis),
        _ => SERVICES
            .iter()
            .find(|name| **name == s)
            .map(|name| Fault::Service(name))
            .ok_or_else(|| {
                format!(
                    "unknown fault {s:?}: one of {}, nats, redis",
                    SERVICES.join(", ")
                )
            }),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("unknown unit in {s:?} (s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

fn builtin_scenario(rate: u32, duration: Duration) -> String {
    // One spammer at 15 msgs/s: over spam-scoring's 600 per minute, under
    // ingest's 20 per second per sender.
    let spammers = if rate >= 30 {
        format!(
            "[spammers]\ncount = 1\nshare = {}\n",
            15.0 / f64::from(rate)
        )
    } else {
        String::new()
    };
    format!(
        r#"
name = "soak"
description = "mixed load with periodic faults (scripts/soak)"
[rate]
msgs_per_s = {rate}
duration_s = {}
drain_s = 120
[users]
recipients = 50
ingest_connections = 2
[mix]
e2ee_share = 0.5
receipt_share = 0.2
{spammers}"#,
        duration.as_secs().max(1)
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.faults.is_empty() {
        args.faults = SERVICES.iter().map(|s| Fault::Service(s)).collect();
        args.faults.extend([Fault::Nats, Fault::Redis]);
    }
    let text = builtin_scenario(args.rate, args.duration);
    let scenario = Scenario::from_toml(&text)?;

    let binaries = Binaries::beside_current_exe()?;
    let mut nats = NatsServer::start();
    let mut redis = RedisServer::start_persistent();
    let mut options = GatewayOptions::new(nats.url(), redis.url());
    options.inbox_max_per_recipient = args.inbox_max_per_recipient;
    let mut gateway = Gateway::start(&binaries, &options).await;
    eprintln!(
        "soak: gateway up (logs in {}); load for {:?}, a fault every {:?}",
        gateway.dir().display(),
        args.duration,
        args.fault_every
    );
    let load = Load::start(&gateway.target(), scenario).await;

    let mut csv = match &args.csv {
        Some(p) => Some(std::fs::File::create(p)?),
        None => None,
    };
    let mut header = vec!["t_s".to_owned()];
    header.extend(SERVICES.iter().map(|s| format!("{s}_rss_kib")));
    header.extend([
        "nats_rss_kib".into(),
        "redis_rss_kib".into(),
        "event".into(),
    ]);
    println!("{}", header.join("\t"));
    if let Some(f) = &mut csv {
        writeln!(f, "{}", header.join(","))?;
    }

    let start = Instant::now();
    let end = start + args.duration;
    let mut next_sample = start;
    let mut next_fault = (!args.fault_every.is_zero()).then(|| start + args.fault_every);
    let mut fault_index = 0usize;
    let mut recoveries = Vec::new();
    let mut faults = Vec::new();
    let mut event = String::new();
    while Instant::now() < end {
        // No fault in the last 30 s: recovery is measured on messages sent
        // after the fault, so the load must still be running.
        let room = end.saturating_duration_since(Instant::now()) > Duration::from_secs(30);
        if room && next_fault.is_some_and(|t| Instant::now() >= t) {
            let what = match args.faults[fault_index % args.faults.len()] {
                Fault::Service(s) => {
                    gateway.kill(s);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    gateway.spawn(s);
                    format!("kill -9 {s}")
                }
                Fault::Nats => {
                    nats.stop();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    nats.restart();
                    "kill -9 nats-server".to_owned()
                }
                Fault::Redis => {
                    // Blocking calls (an AOF rewrite, a start): off the
                    // load generator's worker threads.
                    if !args.redis_load.is_zero() {
                        tokio::task::block_in_place(|| redis.slow_next_load(args.redis_load));
                    }
                    redis.stop();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    tokio::task::block_in_place(|| redis.restart());
                    "restart redis-server (AOF)".to_owned()
                }
            };
            let fault_end = load.now_us();
            let recovery = load
                .first_delivery_after(fault_end, Duration::from_secs(120))
                .await
                .map(|at| at.saturating_duration_since(load.instant_at(fault_end)));
            match recovery {
                Some(d) => {
                    eprintln!("soak: {what}: flowing again after {:.2} s", d.as_secs_f64());
                    recoveries.push(d);
                }
                None => eprintln!("soak: {what}: NOT flowing again within 120 s"),
            }
            faults.push(FaultAt {
                what: what.clone(),
                at_s: fault_end / 1_000_000,
            });
            event = what;
            fault_index += 1;
            next_fault = Some(Instant::now() + args.fault_every);
        }
        if Instant::now() >= next_sample {
            let mut row = vec![format!("{:.0}", start.elapsed().as_secs_f64())];
            for s in SERVICES {
                row.push(
                    gateway
                        .pid(s)
                        .and_then(rss_kib)
                        .map_or("-".into(), |k| k.to_string()),
                );
            }
            row.push(
                nats.pid()
                    .and_then(rss_kib)
                    .map_or("-".into(), |k| k.to_string()),
            );
            row.push(
                redis
                    .pid()
                    .and_then(rss_kib)
                    .map_or("-".into(), |k| k.to_string()),
            );
            row.push(std::mem::take(&mut event));
            println!("{}", row.join("\t"));
            if let Some(f) = &mut csv {
                writeln!(f, "{}", row.join(","))?;
            }
            next_sample += args.sample_every;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let outcome = load.finish(recoveries).await;
    eprintln!("{}", outcome.report.to_table());
    eprintln!("{}", impact::table(&outcome.report.timeline, &faults));
    eprintln!("{}", outcome.summary("soak"));
    if let Some(p) = &args.json {
        std::fs::write(p, outcome.report.to_json())?;
    }
    if outcome.report.lost > 0 {
        anyhow::bail!("{} accepted messages were lost", outcome.report.lost);
    }
    Ok(())
}
