//! The `presenced` command line.

use clap::{Args, Parser, Subcommand};
use presenced::config::{Config, ConfigError, LogFormat, SinkKind};
use presenced::model::{format_millis, parse_time_arg};
use presenced::publish::StdoutStyle;
use presenced::service::{self, RunOptions};
use presenced::sim::{self, SimConfig};
use presenced::store::{Db, Stats};
use presenced::watchlist;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// EX_CONFIG from sysexits.h: systemd's RestartPreventExitStatus= keeps a bad configuration from
/// restarting in a loop.
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "presenced",
    version,
    about = "Watches which accounts of a Tencent Cloud IM app are online"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run(ConfigArg),
    /// Run against the built-in IM simulator with a local SQLite file and show transitions.
    Demo(DemoArgs),
    /// Run the local IM simulator (for tests, benchmarks and trying things out).
    Sim(SimArgs),
    /// Validate a configuration file and print the effective configuration, secrets redacted.
    CheckConfig(ConfigArg),
    /// Manage the watched_accounts table.
    Users {
        #[command(flatten)]
        db: DbArgs,
        #[command(subcommand)]
        action: UsersAction,
    },
    /// One account's transitions.
    History {
        #[command(flatten)]
        db: DbArgs,
        account: String,
        /// RFC 3339 time, date or Unix ms.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Accounts per state, the last sweep, the outbox backlog.
    Stats {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        json: bool,
    },
    /// Apply pending schema migrations now (ahead of restarting the service after an upgrade).
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Re-publish recorded transitions (with their original event ids) for a new consumer.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        /// RFC 3339 time, date or Unix ms.
        #[arg(long)]
        since: String,
        /// End of the range, exclusive (default: no end).
        #[arg(long)]
        until: Option<String>,
        /// Publish to this topic instead of kafka.topic.
        #[arg(long)]
        topic: Option<String>,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// The configuration file.
    #[arg(
        long,
        short,
        env = "PRESENCED_CONFIG",
        default_value = "/etc/presenced/presenced.toml"
    )]
    config: PathBuf,
}

#[derive(Args)]
struct DbArgs {
    /// The daemon's configuration (its store.path is used).
    #[arg(long, short, env = "PRESENCED_CONFIG", conflicts_with = "db")]
    config: Option<PathBuf>,
    /// The SQLite file directly.
    #[arg(long)]
    db: Option<PathBuf>,
}

#[derive(Subcommand)]
enum UsersAction {
    /// Add account ids.
    Add { ids: Vec<String> },
    /// Remove account ids (their events stop).
    Remove { ids: Vec<String> },
    /// Add every id of a file (one per line, # comments).
    Import { file: PathBuf },
    /// Print the watched ids.
    List,
}

#[derive(Args)]
struct DemoArgs {
    /// Simulated accounts.
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Share of accounts changing per second.
    #[arg(long, default_value_t = 0.001)]
    churn: f64,
    /// Seconds between sweeps.
    #[arg(long, default_value_t = 5.0)]
    interval: f64,
    #[arg(long, default_value = "presenced-demo.db")]
    db: PathBuf,
    /// Publish to Kafka instead of printing (e.g. 127.0.0.1:9092).
    #[arg(long)]
    brokers: Option<String>,
    #[arg(long, default_value = "presenced.transitions")]
    topic: String,
    /// Print every event as JSON lines instead of one line per change.
    #[arg(long)]
    json: bool,
    /// Stop after this many sweeps.
    #[arg(long)]
    sweeps: Option<u64>,
}

#[derive(Args)]
struct SimArgs {
    /// Address the simulated IM API listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// TOML file with SimConfig fields (population, churn_per_second, faults, ...).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Accounts that exist (ids PREFIX0, PREFIX1, ...; default 10000, prefix "user").
    #[arg(long)]
    population: Option<usize>,
    /// Share of the population that changes state per second, from 0 to 10: 0.01 at 100000
    /// accounts is 1000 changes a second (not a count of changes).
    #[arg(long)]
    churn: Option<f64>,
    /// Calls per second before 60011 (0: unlimited).
    #[arg(long)]
    rate: Option<f64>,
    /// Latency added to every answer, in milliseconds (0 to 600000).
    #[arg(long)]
    latency_ms: Option<f64>,
    /// The SDKAppID whose UserSigs the simulator accepts.
    #[arg(long)]
    sdkappid: Option<u64>,
    /// File holding the secret key the simulator verifies UserSigs with.
    #[arg(long)]
    secret_key_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(ConfigArg { config }) => run_daemon(&config),
        Command::Demo(args) => demo(args),
        Command::Sim(args) => run_sim(args),
        Command::CheckConfig(ConfigArg { config }) => match Config::load(&config) {
            Ok(c) => {
                print!("{}", c.to_redacted_toml());
                eprintln!("{}: configuration is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail_config(&e),
        },
        Command::Users { db, action } => {
            let access = match action {
                UsersAction::List => Access::ReadOnly,
                _ => Access::ReadWrite,
            };
            with_db(&db, access, |db| users(db, action))
        }
        Command::History {
            db,
            account,
            since,
            until,
            json,
        } => with_db(&db, Access::ReadOnly, |db| {
            history(db, &account, since, until, json)
        }),
        Command::Stats { db, json } => with_db(&db, Access::ReadOnly, |db| stats(db, json)),
        Command::Migrate { db } => migrate(&db),
        Command::Replay {
            config: ConfigArg { config },
            since,
            until,
            topic,
        } => replay(&config, &since, until.as_deref(), topic),
    }
}

fn fail_config(e: &ConfigError) -> ExitCode {
    eprintln!("presenced: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn run_daemon(path: &Path) -> ExitCode {
    // Configuration errors are reported before anything starts.
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return fail_config(&e),
    };
    let handle = presenced::logging::init(&config.service.log_filter, config.service.log_format);
    let options = RunOptions {
        reload_log_filter: Some(Box::new(move |f: &str| {
            let filter = tracing_subscriber::EnvFilter::try_new(f).map_err(|e| e.to_string())?;
            handle.reload(filter).map_err(|e| e.to_string())
        })),
        config_path: Some(path.to_owned()),
        ..Default::default()
    };
    finish(runtime().block_on(service::run(config, options)))
}

fn finish(result: Result<(), service::ServiceError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("presenced: {e}");
            if e.is_configuration() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn demo(args: DemoArgs) -> ExitCode {
    presenced::logging::init("info", LogFormat::Human);
    let rt = runtime();
    rt.block_on(async move {
        let sim_config = SimConfig {
            population: args.accounts,
            churn_per_second: args.churn,
            // A simulated week of PushOnline passes in about ten real minutes.
            time_compression: 1_000.0,
            ..SimConfig::default()
        };
        let mut config = Config::default();
        config.im.sdkappid = sim_config.sdkappid;
        config.im.identifier = sim_config.admin.clone();
        config.im.secret_key = sim_config.secret_key.clone();
        let sim =
            match sim::start(sim_config.clone(), "127.0.0.1:0".parse().expect("address")).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("presenced: {e}");
                    return ExitCode::FAILURE;
                }
            };
        config.im.base_url = Some(sim.base_url());
        config.sweep.interval_secs = args.interval;
        config.sweep.jitter_secs = 0.0;
        config.store.path = args.db.clone();
        config.service.metrics_listen = "127.0.0.1:0".into();
        match &args.brokers {
            Some(b) => {
                config.sink.kind = SinkKind::Kafka;
                config.kafka.brokers = b.clone();
                config.kafka.topic = args.topic.clone();
                config.kafka.create_topic = true;
            }
            None => config.sink.kind = SinkKind::Stdout,
        }
        if let Err(e) = config.validate("demo") {
            return fail_config(&e);
        }
        // Watch the whole simulated population plus three ids that do not exist.
        let mut ids: Vec<String> = (0..args.accounts)
            .map(|i| format!("{}{i}", sim_config.id_prefix))
            .collect();
        ids.extend(["ghost-1", "ghost-2", "ghost-3"].map(String::from));
        let db_path = args.db.clone();
        let added =
            tokio::task::spawn_blocking(move || -> Result<usize, presenced::store::StoreError> {
                let mut db = Db::open(&db_path, Duration::from_secs(5))?;
                db.add_watched(&ids, |_| {})
            })
            .await
            .expect("watch-list task");
        if let Err(e) = added {
            eprintln!("presenced: {e}");
            return ExitCode::FAILURE;
        }
        eprintln!(
            "presenced demo: simulator on {}, {} accounts, database {}; Ctrl-C to stop",
            sim.base_url(),
            args.accounts,
            args.db.display()
        );
        let options = RunOptions {
            stdout_style: Some(if args.json {
                StdoutStyle::JsonLines
            } else {
                StdoutStyle::Human
            }),
            max_sweeps: args.sweeps,
            ..Default::default()
        };
        let result = service::run(config, options).await;
        sim.stop().await;
        finish(result)
    })
}

fn run_sim(args: SimArgs) -> ExitCode {
    presenced::logging::init("info", LogFormat::Human);
    let mut config = match &args.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => match toml::from_str::<SimConfig>(&text) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("presenced: simulator configuration {}: {e}", path.display());
                    return ExitCode::from(EXIT_CONFIG);
                }
            },
            Err(e) => {
                eprintln!("presenced: cannot read {}: {e}", path.display());
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => SimConfig::default(),
    };
    if let Some(n) = args.population {
        config.population = n;
    }
    if let Some(c) = args.churn {
        config.churn_per_second = c;
    }
    if let Some(r) = args.rate {
        config.calls_per_second = r;
    }
    if let Some(l) = args.latency_ms {
        config.faults.latency_ms = l;
    }
    if let Some(s) = args.sdkappid {
        config.sdkappid = s;
    }
    if let Some(path) = &args.secret_key_file {
        match std::fs::read_to_string(path) {
            Ok(k) => config.secret_key = presenced::secret::Secret::new(k.trim()),
            Err(e) => {
                eprintln!("presenced: cannot read {}: {e}", path.display());
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    if let Err(e) = sim::check_churn(config.churn_per_second).and(config.faults.check()) {
        eprintln!("presenced sim: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    runtime().block_on(async move {
        let population = config.population;
        let handle = match sim::start(config, args.listen).await {
            Ok(h) => h,
            Err(e) => {
                eprintln!("presenced: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(addr = %handle.addr, population, "IM simulator listening");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        handle.stop().await;
        ExitCode::SUCCESS
    })
}

/// The database a command works on: `--db`, else the configuration's `store.path`.
fn db_path(args: &DbArgs) -> Result<PathBuf, ExitCode> {
    match (&args.db, &args.config) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(c)) => {
            let text = std::fs::read_to_string(c).map_err(|e| {
                eprintln!("presenced: cannot read {}: {e}", c.display());
                ExitCode::from(EXIT_CONFIG)
            })?;
            Config::from_toml(&text, c, &std::env::vars().collect::<Vec<_>>())
                .map(|cfg| cfg.store.path)
                .map_err(|e| fail_config(&e))
        }
        (None, None) => Ok(Config::default().store.path),
    }
}

/// Applies pending schema migrations and says what it did: ahead of a restart, so that a long one
/// does not run inside the service's start.
fn migrate(args: &DbArgs) -> ExitCode {
    let path = match db_path(args) {
        Ok(p) => p,
        Err(code) => return code,
    };
    match presenced::store::migrate::pending(&path) {
        Ok(p) if p.names.is_empty() => {
            println!("{}: schema up to date", path.display());
            return ExitCode::SUCCESS;
        }
        Ok(p) => println!(
            "{}: applying {} ({} history rows to carry along)",
            path.display(),
            p.names.join(", "),
            p.history_rows
        ),
        Err(e) => {
            eprintln!("presenced: {e}");
            return ExitCode::FAILURE;
        }
    }
    let started = std::time::Instant::now();
    with_db(args, Access::ReadWrite, |_| {
        println!(
            "done in {:.1} s; schema version {}",
            started.elapsed().as_secs_f64(),
            presenced::store::migrate::latest_version()
        );
        Ok(())
    })
}

/// Whether a command writes the database (and may create and migrate it) or only reads it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    ReadOnly,
    ReadWrite,
}

fn with_db(
    args: &DbArgs,
    access: Access,
    f: impl FnOnce(&mut Db) -> Result<(), String>,
) -> ExitCode {
    let path = match db_path(args) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let opened = match access {
        Access::ReadOnly => Db::open_read_only(&path, Duration::from_secs(5)),
        Access::ReadWrite => Db::open(&path, Duration::from_secs(5)),
    };
    let mut db = match opened {
        Ok(db) => db,
        Err(e) => {
            eprintln!("presenced: {e}");
            return ExitCode::FAILURE;
        }
    };
    match f(&mut db) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("presenced: {e}");
            ExitCode::FAILURE
        }
    }
}

fn users(db: &mut Db, action: UsersAction) -> Result<(), String> {
    let check = |ids: Vec<String>| -> Result<Vec<String>, String> {
        for id in &ids {
            watchlist::validate_id(id).map_err(|e| format!("{id:?}: {e}"))?;
        }
        Ok(ids)
    };
    match action {
        UsersAction::Add { ids } => {
            let ids = check(ids)?;
            let added = db.add_watched(&ids, |_| {}).map_err(|e| e.to_string())?;
            println!("added {added} of {} ids", ids.len());
        }
        UsersAction::Remove { ids } => {
            let removed = db.remove_watched(&ids).map_err(|e| e.to_string())?;
            println!(
                "removed {removed} of {} ids; a running daemon picks this up on SIGHUP",
                ids.len()
            );
        }
        UsersAction::Import { file } => {
            let parsed = watchlist::read_file(&file).map_err(|e| e.to_string())?;
            for bad in &parsed.invalid {
                eprintln!("{bad}; skipped");
            }
            let total = parsed.ids.len();
            let started = std::time::Instant::now();
            let added = db
                .add_watched(&parsed.ids, |done| {
                    eprint!(
                        "\rimporting: {done}/{total} ({:.0}%)",
                        done as f64 * 100.0 / total.max(1) as f64
                    );
                })
                .map_err(|e| e.to_string())?;
            eprintln!();
            println!(
                "imported {total} ids from {} in {:.1}s: {added} new, {} duplicates folded, {} invalid lines skipped",
                file.display(),
                started.elapsed().as_secs_f64(),
                parsed.duplicates,
                parsed.invalid.len()
            );
        }
        UsersAction::List => {
            use std::io::Write;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            for id in db.watched_ids().map_err(|e| e.to_string())? {
                let _ = writeln!(out, "{id}");
            }
        }
    }
    Ok(())
}

fn history(
    db: &mut Db,
    account: &str,
    since: Option<String>,
    until: Option<String>,
    json: bool,
) -> Result<(), String> {
    let since = since.as_deref().map(parse_time_arg).transpose()?;
    let until = until.as_deref().map(parse_time_arg).transpose()?;
    let rows = db
        .history(account, since, until)
        .map_err(|e| e.to_string())?;
    if json {
        for t in &rows {
            println!(
                "{}",
                String::from_utf8_lossy(&presenced::publish::event::EventV1::new(0, t).to_json())
            );
        }
        return Ok(());
    }
    if rows.is_empty() {
        println!("no transitions for {account:?} in that range");
        return Ok(());
    }
    println!(
        "{:<5} {:<24} {:<10} {:<10} {:<8} platforms",
        "seq", "observed_at", "from", "to", "kind"
    );
    for t in rows {
        let platforms: Vec<String> = t
            .to_platforms
            .iter()
            .map(|p| format!("{}:{}", p.platform, p.status))
            .collect();
        println!(
            "{:<5} {:<24} {:<10} {:<10} {:<8} {}",
            t.seq,
            format_millis(t.observed_at),
            t.from.map_or("-", |s| s.as_str()),
            t.to.as_str(),
            t.kind(),
            platforms.join(" ")
        );
    }
    Ok(())
}

fn stats(db: &mut Db, json: bool) -> Result<(), String> {
    let s: Stats = db.stats().map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s).expect("stats serialize")
        );
        return Ok(());
    }
    println!("watched (table)   {}", s.watched_in_table);
    println!("Online            {}", s.online);
    println!("PushOnline        {}", s.push_online);
    println!("Offline           {}", s.offline);
    println!("not found         {}", s.not_found);
    println!("history rows      {}", s.history_rows);
    if s.not_folded > 0 {
        // Normal during a sweep; after a crash, the next start folds them.
        println!("not folded yet    {}", s.not_folded);
    }
    println!("outbox backlog    {}", s.outbox_backlog);
    if let Some(oldest) = s.outbox_oldest_ms {
        println!("oldest unsent     {}", format_millis(oldest));
    }
    match s.last_sweep {
        Some(w) => {
            let duration = w
                .finished_at
                .map(|f| format!("{:.2}s", (f - w.started_at) as f64 / 1000.0))
                .unwrap_or("-".into());
            println!(
                "last sweep        #{} {} at {} ({}): {} asked, {} observed, {} failed, {} not found, {} transitions",
                w.sweep_id,
                w.outcome,
                format_millis(w.started_at),
                duration,
                w.asked,
                w.observed,
                w.failed,
                w.not_found,
                w.transitions
            );
        }
        None => println!("last sweep        none yet"),
    }
    Ok(())
}

fn replay(path: &Path, since: &str, until: Option<&str>, topic: Option<String>) -> ExitCode {
    let mut config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => return fail_config(&e),
    };
    presenced::logging::init(&config.service.log_filter, config.service.log_format);
    let (since, until) = match (parse_time_arg(since), until.map(parse_time_arg).transpose()) {
        (Ok(s), Ok(u)) => (s, u.unwrap_or(i64::MAX)),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("presenced: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(t) = topic {
        config.kafka.topic = t;
    }
    runtime().block_on(async move {
        let result = async {
            let store = presenced::store::Store::open(
                &config.store.path,
                Duration::from_millis(config.store.busy_timeout_ms),
            )
            .await?;
            let sink =
                presenced::publish::kafka::KafkaSink::new(&config.kafka, config.im.sdkappid)?;
            if !sink.check_topic().await? {
                return Err(format!("Kafka at {} is not reachable", config.kafka.brokers).into());
            }
            let mut sink = presenced::publish::Sink::Kafka(sink);
            let started = std::time::Instant::now();
            let sent =
                presenced::publish::replay(&store, &mut sink, since, until, |done, total| {
                    eprint!(
                        "\rreplaying: {done}/{total} ({:.0}%)",
                        done as f64 * 100.0 / total.max(1) as f64
                    );
                })
                .await?;
            eprintln!();
            println!(
                "replayed {sent} events to {} in {:.1}s",
                config.kafka.topic,
                started.elapsed().as_secs_f64()
            );
            Ok::<(), Box<dyn std::error::Error>>(())
        }
        .await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("presenced: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
