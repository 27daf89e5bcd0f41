//! `loadtest`: runs a scenario against a gateway, or measures the NATS
//! reference ceiling. See docs/loadtest.md.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use interop_client::config::ClientConfig;
use interop_loadtest::ceiling::{self, CeilingOptions, CeilingReport};
use interop_loadtest::cost::{NatsMonitor, Probes, RedisProbe, READ_TIMEOUT};
use interop_loadtest::plan::RunId;
use interop_loadtest::{html, run, Progress, Scenario, Target};

#[derive(Parser)]
#[command(
    name = "loadtest",
    version,
    about = "Open-loop load generator for the interop gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario against a running gateway and report.
    Run(RunArgs),
    /// Measure only the reference ceiling: JetStream hops with no logic.
    Ceiling {
        #[command(flatten)]
        nats: NatsArgs,
        /// Write the result as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Print the ratios B/A between two runs' JSON reports: per step
    /// (matched by offered rate) and overall.
    Compare {
        /// The first run's report (`loadtest run --json`).
        a: PathBuf,
        /// The second run's report.
        b: PathBuf,
        /// Also write the comparison as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Check scenario files and print what each would do.
    Check {
        #[arg(required = true)]
        scenarios: Vec<PathBuf>,
    },
    /// Open idle delivery sessions and measure the delivery process's memory.
    IdleSessions(IdleArgs),
    /// Fan-out latency to a group whose members all have open sessions.
    GroupFanout(FanoutArgs),
    /// The session-setup storm: prekey-bundle fetches from the key directory.
    KeyFetches(KeyFetchArgs),
}

#[derive(Args)]
struct KeyFetchArgs {
    #[command(flatten)]
    target: BenchTarget,
    /// Users whose keys are fetched.
    #[arg(long, default_value_t = 500)]
    users: usize,
    /// One-time prekeys each of them publishes (beyond them: last-resort).
    #[arg(long, default_value_t = 100)]
    one_time_prekeys: usize,
    /// Distinct requesting users (each under its own fetch limit of 5/s).
    #[arg(long, default_value_t = 2000)]
    requesters: usize,
    /// Intended fetches per second.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    #[arg(long, default_value_t = 8)]
    connections: usize,
    #[arg(long, default_value = "home")]
    owner_provider: String,
    #[arg(long, default_value = "signal")]
    requester_provider: String,
}

#[derive(Args)]
struct BenchTarget {
    /// Client config with the URLs and tokens (default: .run/client.toml).
    #[arg(long, env = "INTEROP_CLIENT_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "INTEROP_INGEST_URL")]
    ingest_url: Option<String>,
    #[arg(long, env = "INTEROP_DELIVERY_URL")]
    delivery_url: Option<String>,
}

impl BenchTarget {
    fn resolve(&self) -> anyhow::Result<(String, String, HashMap<String, String>)> {
        let file = match ClientConfig::locate(self.config.as_deref()) {
            Some(path) => ClientConfig::load(&path)?,
            None => ClientConfig::default(),
        };
        Ok((
            self.ingest_url
                .clone()
                .or(file.ingest_url)
                .context("no ingest URL")?,
            self.delivery_url
                .clone()
                .or(file.delivery_url)
                .context("no delivery URL")?,
            file.tokens,
        ))
    }
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    target: BenchTarget,
    /// The delivery process to measure.
    #[arg(long)]
    delivery_pid: u32,
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    #[arg(long, default_value = "home")]
    provider: String,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds to wait after the last session opened, before measuring.
    #[arg(long, default_value_t = 10)]
    settle_secs: u64,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    target: BenchTarget,
    #[arg(long, default_value_t = 256)]
    members: usize,
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Messages per second sent to the group.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    #[arg(long, default_value = "signal")]
    sender_provider: String,
    #[arg(long, default_value = "home")]
    member_provider: String,
    /// Messages sent first and not measured (they wake the idle sessions).
    #[arg(long, default_value_t = 5)]
    warmup: usize,
}

async fn idle_command(args: IdleArgs) -> anyhow::Result<ExitCode> {
    let (_, delivery_url, tokens) = args.target.resolve()?;
    let token = tokens
        .get(&args.provider)
        .context("no token for the provider")?;
    let report = interop_loadtest::delivery_bench::idle_sessions(
        &delivery_url,
        &args.provider,
        token,
        args.sessions,
        args.concurrency,
        args.delivery_pid,
        std::time::Duration::from_secs(args.settle_secs),
    )
    .await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

async fn key_fetches_command(args: KeyFetchArgs) -> anyhow::Result<ExitCode> {
    let (ingest_url, _, tokens) = args.target.resolve()?;
    let token = |p: &str| tokens.get(p).cloned().context("no token for a provider");
    let report =
        interop_loadtest::keys_bench::key_fetches(&interop_loadtest::keys_bench::KeyFetchOptions {
            ingest_url,
            owner: (args.owner_provider.clone(), token(&args.owner_provider)?),
            requester: (
                args.requester_provider.clone(),
                token(&args.requester_provider)?,
            ),
            users: args.users,
            one_time_prekeys: args.one_time_prekeys,
            requesters: args.requesters,
            rate: args.rate,
            duration: std::time::Duration::from_secs(args.duration_secs),
            connections: args.connections,
        })
        .await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

async fn fanout_command(args: FanoutArgs) -> anyhow::Result<ExitCode> {
    let (ingest_url, delivery_url, tokens) = args.target.resolve()?;
    let token = |p: &str| tokens.get(p).cloned().context("no token for a provider");
    let report = interop_loadtest::delivery_bench::group_fanout(
        &ingest_url,
        &delivery_url,
        &args.sender_provider,
        &token(&args.sender_provider)?,
        &args.member_provider,
        &token(&args.member_provider)?,
        args.members,
        args.messages,
        args.rate,
        args.warmup,
    )
    .await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum When {
    Before,
    After,
}

#[derive(Args)]
struct NatsArgs {
    /// The NATS server the gateway uses.
    #[arg(
        long,
        env = "INTEROP_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// Messages pushed through the ceiling's chain.
    #[arg(long, default_value_t = 100_000)]
    ceiling_messages: u64,
    /// Hops of the ceiling's chain.
    #[arg(long, default_value_t = 4)]
    ceiling_hops: usize,
    /// Publish with Nats-Msg-Id (server de-duplication) in the ceiling, as
    /// the pipeline's stages do.
    #[arg(long)]
    ceiling_msg_id: bool,
}

#[derive(Args)]
struct RunArgs {
    /// The scenario file (TOML).
    #[arg(long, short)]
    scenario: PathBuf,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as a self-contained HTML page here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Also measure the NATS ceiling, before or after the run (default after).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "after")]
    ceiling: Option<When>,
    #[command(flatten)]
    nats: NatsArgs,
    /// Client config with the URLs and tokens (default: .run/client.toml
    /// here or in a parent, as scripts/up writes it).
    #[arg(long, env = "INTEROP_CLIENT_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "INTEROP_INGEST_URL")]
    ingest_url: Option<String>,
    #[arg(long, env = "INTEROP_DELIVERY_URL")]
    delivery_url: Option<String>,
    /// The media API, `http://host:port` (for mix.media_share).
    #[arg(long, env = "INTEROP_MEDIA_URL")]
    media_url: Option<String>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Exit with 3 if anything was lost, duplicated or unanswered.
    #[arg(long)]
    strict: bool,
    /// Where the gateway's `<process>.pid` files are, to report CPU per
    /// process (default: `.run/pids` when it exists, as `scripts/up`
    /// writes it; `none` to skip).
    #[arg(long)]
    pids_dir: Option<PathBuf>,
    /// The gateway's Redis, `redis://[user:password@]host:port`
    /// (comma-separated: several nodes, summed): the report gives Redis
    /// commands and scripts per delivered message (INFO commandstats read
    /// at the start and end of every measured step). Without it those
    /// figures are left out.
    #[arg(long, env = "INTEROP_LOADTEST_REDIS_URL")]
    redis_url: Option<String>,
    /// nats-server's monitoring endpoint, `http://host:8222`
    /// (comma-separated: a cluster's servers, summed): the report gives
    /// NATS protocol messages and bytes in and out per delivered message
    /// (`/varz` read with Redis). Without it those figures are left out.
    #[arg(long, env = "INTEROP_LOADTEST_NATS_MONITOR_URL")]
    nats_monitor_url: Option<String>,
}

/// Tokens come from the client config's `[tokens]`, and
/// `INTEROP_TOKEN_<PROVIDER>` (upper case, `-` as `_`) overrides them.
fn target(args: &RunArgs, scenario: &Scenario) -> anyhow::Result<Target> {
    let file = match ClientConfig::locate(args.config.as_deref()) {
        Some(path) => ClientConfig::load(&path)?,
        None => ClientConfig::default(),
    };
    let mut tokens: HashMap<String, String> = file.tokens;
    let u = &scenario.file.users;
    for provider in [&u.sender_provider, &u.recipient_provider] {
        let var = format!(
            "INTEROP_TOKEN_{}",
            provider.to_uppercase().replace('-', "_")
        );
        if let Ok(t) = std::env::var(&var) {
            tokens.insert(provider.clone(), t);
        }
    }
    Ok(Target {
        ingest_url: args
            .ingest_url
            .clone()
            .or(file.ingest_url)
            .context("no ingest URL: pass --ingest-url or run scripts/up")?,
        delivery_url: args
            .delivery_url
            .clone()
            .or(file.delivery_url)
            .context("no delivery URL: pass --delivery-url or run scripts/up")?,
        media_url: args.media_url.clone().or(file.media_url),
        tokens,
    })
}

fn load(path: &Path) -> Result<Scenario, ExitCode> {
    Scenario::load(path).map_err(|e| {
        eprintln!("loadtest: {}: {e}", path.display());
        ExitCode::from(64)
    })
}

async fn measure_ceiling(nats: &NatsArgs) -> anyhow::Result<CeilingReport> {
    let mut options = CeilingOptions::new(&nats.nats_url);
    options.messages = nats.ceiling_messages;
    options.hops = nats.ceiling_hops;
    options.msg_id = nats.ceiling_msg_id;
    eprintln!(
        "loadtest: measuring the ceiling ({} JetStream hops, {} messages)...",
        options.hops, options.messages
    );
    let tag = format!("{}_{}", RunId::fresh(), std::process::id());
    let report = ceiling::measure(&options, &tag).await?;
    eprintln!("loadtest: ceiling {:.0} msgs/s", report.msgs_per_s);
    Ok(report)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

async fn run_command(args: RunArgs) -> anyhow::Result<ExitCode> {
    let scenario = match load(&args.scenario) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let target = target(&args, &scenario)?;
    let probes = Probes {
        redis: args
            .redis_url
            .as_deref()
            .map(RedisProbe::parse)
            .transpose()?,
        nats: args
            .nats_monitor_url
            .as_deref()
            .map(NatsMonitor::parse)
            .transpose()?,
    };
    let redis_source = probes.redis.as_ref().map(RedisProbe::describe);
    let nats_source = probes.nats.as_ref().map(NatsMonitor::describe);
    // A reading now, so a wrong URL fails before the run, not after it.
    let first = probes.sample().await;
    if let Some(Err(e)) = &first.redis {
        anyhow::bail!("--redis-url: {e}");
    }
    if let Some(Err(e)) = &first.nats {
        anyhow::bail!("--nats-monitor-url: {e}");
    }
    for u in &scenario.unsupported {
        eprintln!("loadtest: {} is not sent: {}", u.feature, u.reason);
    }
    let mut ceiling = None;
    if args.ceiling == Some(When::Before) {
        ceiling = Some(measure_ceiling(&args.nats).await?);
    }
    let (stop, abort) = (CancellationToken::new(), CancellationToken::new());
    let (s, a) = (stop.clone(), abort.clone());
    tokio::spawn(async move {
        // The first Ctrl-C ends the send phase, the second the drain.
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nloadtest: stopping; Ctrl-C again to skip the drain");
            s.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                a.cancel();
            }
        }
    });
    eprintln!(
        "loadtest: {}: {} messages over {:.0} s against {}",
        scenario.file.name,
        scenario.schedule.total(),
        scenario.schedule.end_us() as f64 / 1e6,
        target.ingest_url
    );
    let progress = if args.quiet {
        Progress::Off
    } else {
        Progress::Stderr
    };
    let pids_dir = match &args.pids_dir {
        Some(p) if p.as_os_str() == "none" => None,
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(".run/pids")).filter(|p| p.is_dir()),
    };
    let processes = pids_dir
        .as_deref()
        .map(interop_loadtest::cpu::processes)
        .unwrap_or_default();
    // CPU snapshots, and Redis and NATS readings, at the start of every
    // measured step and at the end of the last one, on the run's clock.
    let boundaries: Vec<u64> = {
        let mut b: Vec<u64> = scenario.schedule.steps().map(|p| p.start_us).collect();
        b.extend(scenario.schedule.steps().last().map(|p| p.end_us()));
        b
    };
    let (snapshots_tx, snapshots_rx) = tokio::sync::oneshot::channel();
    let finished = run::run_observed(
        &scenario,
        &target,
        progress,
        stop,
        abort,
        move |_, clock| {
            tokio::spawn(async move {
                let mut snapshots = Vec::new();
                let mut bus = Vec::new();
                for us in boundaries {
                    tokio::time::sleep_until(clock.instant_at(us)).await;
                    snapshots.push(interop_loadtest::cpu::Snapshot::take(&processes));
                    bus.push(probes.sample().await);
                }
                snapshots_tx.send((snapshots, bus)).ok();
            });
        },
    )
    .await?;
    // Taken by the end of the send phase (the readings of Redis and NATS
    // within their timeout); a run stopped early has none.
    let wait = if finished.facts.interrupted {
        std::time::Duration::from_secs(1)
    } else {
        READ_TIMEOUT + std::time::Duration::from_secs(1)
    };
    let (snapshots, bus) = tokio::time::timeout(wait, snapshots_rx)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    if args.ceiling == Some(When::After) {
        ceiling = Some(measure_ceiling(&args.nats).await?);
    }
    let mut report = finished.report(&scenario, ceiling);
    for (step, pair) in report.steps.iter_mut().zip(snapshots.windows(2)) {
        step.cpu_percent = pair[0].percent_until(&pair[1]);
    }
    if let (Some(first), Some(last)) = (snapshots.first(), snapshots.last()) {
        report.cpu_percent = first.percent_until(last);
    }
    report.note_cpu_per_message();
    report.note_bus_costs(&bus, redis_source.as_deref(), nats_source.as_deref());
    report.warn_if_host_bound();
    print!("{}", report.to_table());
    if let Some(path) = &args.json {
        write(path, &report.to_json())?;
    }
    if let Some(path) = &args.html {
        write(path, &html::render(&report))?;
    }
    let bad =
        report.lost > 0 || report.duplicates > 0 || report.unanswered > 0 || report.interrupted;
    Ok(if args.strict && bad {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn compare_command(a: &Path, b: &Path, json: Option<&Path>) -> anyhow::Result<ExitCode> {
    match interop_loadtest::compare::compare_files(a, b) {
        Ok(c) => {
            print!("{}", c.to_text());
            if let Some(path) = json {
                write(path, &c.to_json())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("loadtest compare: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn check_command(paths: &[PathBuf]) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    for path in paths {
        match load(path) {
            Ok(s) => println!(
                "{}: ok: {} messages over {:.0} s (highest rate {:.0}/s), {} senders ({} with receipts), {} spammers, {} recipients",
                path.display(),
                s.schedule.total(),
                s.schedule.end_us() as f64 / 1e6,
                s.max_rate(),
                s.senders,
                s.receipt_senders,
                s.spammers,
                s.file.users.recipients
            ),
            Err(c) => code = c,
        }
    }
    code
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // Two workers at most: the load generator shares the machine with the
    // gateway it measures.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run_command(args).await,
            Command::Ceiling { nats, json } => {
                let report = measure_ceiling(&nats).await?;
                println!("{}", serde_json::to_string_pretty(&report)?);
                if let Some(path) = json {
                    write(&path, &serde_json::to_string_pretty(&report)?)?;
                }
                Ok(ExitCode::SUCCESS)
            }
            Command::Compare { a, b, json } => compare_command(&a, &b, json.as_deref()),
            Command::Check { scenarios } => Ok(check_command(&scenarios)),
            Command::IdleSessions(args) => idle_command(args).await,
            Command::GroupFanout(args) => fanout_command(args).await,
            Command::KeyFetches(args) => key_fetches_command(args).await,
        }
    })
}
