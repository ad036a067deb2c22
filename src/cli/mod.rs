//! The command line: its definition, one file per command (or small group), and one error type
//! mapped to exit codes in one place.

mod daemon;
mod db;
mod demo;
mod docs;
mod kafka;
mod replay;
mod report;
mod sim;
mod standby;
mod users;

use clap::{Args, Parser, Subcommand};
use presenced::config::ConfigError;
use presenced::publish::kafka::KafkaSetupError;
use presenced::publish::ReplayError;
use presenced::service::ServiceError;
use presenced::store::StoreError;
use std::path::PathBuf;
use std::process::ExitCode;

/// EX_CONFIG from sysexits.h: systemd's RestartPreventExitStatus= keeps a bad configuration from
/// restarting in a loop.
const EXIT_CONFIG: u8 = 78;
/// A command-line argument that does not parse (as clap's own usage errors).
const EXIT_USAGE: u8 = 2;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration file or environment.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another configuration problem (the simulator's file, an unreadable key file).
    #[error("{0}")]
    Configuration(String),
    /// An argument's value.
    #[error("{0}")]
    Usage(String),
    /// The daemon.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Setting up Kafka.
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    /// `replay`.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// Anything else, said in words.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    /// The process's exit code: 78 for whatever the configuration must change, 2 for a bad
    /// argument, 1 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Configuration(_) => EXIT_CONFIG,
            CliError::Service(e) if e.is_configuration() => EXIT_CONFIG,
            CliError::Kafka(e) if e.is_configuration() => EXIT_CONFIG,
            CliError::Usage(_) => EXIT_USAGE,
            _ => 1,
        }
    }

    /// Says what failed on stderr (and in the log, for the daemon) and gives the exit code.
    pub fn report(&self) -> ExitCode {
        if matches!(self, CliError::Service(_)) {
            tracing::error!("{self}");
        }
        eprintln!("presenced: {self}");
        ExitCode::from(self.exit_code())
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Run(ConfigArg { config }) => daemon::run(&config),
        Command::Demo(args) => demo::run(args),
        Command::Sim(args) => sim::run(args),
        Command::CheckConfig(ConfigArg { config }) => daemon::check_config(&config),
        Command::Users { db, action } => users::run(&db, action),
        Command::History {
            db,
            account,
            since,
            until,
            json,
        } => report::history(&db, &account, since, until, json),
        Command::Stats { db, json } => report::stats(&db, json),
        Command::Migrate { db } => db::migrate(&db),
        Command::Completions { shell } => docs::completions(shell),
        Command::Man { command } => docs::man_page(command.as_deref()),
        Command::Replay {
            config: ConfigArg { config },
            since,
            until,
            topic,
        } => replay::run(&config, &since, until.as_deref(), topic),
        Command::Kafka {
            action: KafkaAction::Adopt {
                config: ConfigArg { config },
            },
        } => kafka::adopt(&config),
        Command::Standby {
            action:
                StandbyAction::Status {
                    config: ConfigArg { config },
                    json,
                },
        } => standby::status(&config, json),
        Command::Standby {
            action:
                StandbyAction::Handover {
                    config: ConfigArg { config },
                },
        } => standby::handover(&config),
    }
}

/// The runtime the async commands run on.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Reads a time argument (RFC 3339 time, date or Unix ms).
fn time_arg(text: &str) -> Result<i64, CliError> {
    presenced::model::parse_time_arg(text).map_err(CliError::Usage)
}

#[derive(Parser)]
#[command(
    name = "presenced",
    version,
    about = "Watches which accounts of a Tencent Cloud IM app are online"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// The account id.
        account: String,
        /// RFC 3339 time, date or Unix ms.
        #[arg(long)]
        since: Option<String>,
        /// End of the range, exclusive: RFC 3339 time, date or Unix ms.
        #[arg(long)]
        until: Option<String>,
        /// One event v1 JSON document per line.
        #[arg(long)]
        json: bool,
    },
    /// Accounts per state, the last sweep, the outbox backlog.
    Stats {
        #[command(flatten)]
        db: DbArgs,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): presenced(1), or presenced-COMMAND(1) for one command.
    #[command(hide = true)]
    Man {
        /// The command whose page to print.
        command: Option<String>,
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
    /// Kafka positions of exactly-once delivery.
    Kafka {
        #[command(subcommand)]
        action: KafkaAction,
    },
    /// Several instances sharing the events topic (`[standby]`): which one is active, and a
    /// clean hand-over.
    Standby {
        #[command(subcommand)]
        action: StandbyAction,
    },
}

#[derive(Subcommand)]
pub enum StandbyAction {
    /// This host's instance: its role, the active it follows, its lag, its last takeover
    /// (asked of the running daemon at service.metrics_listen), and its recent role changes.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// On the active's host: finish the sweep's commits, publish them, and hand over to a
    /// follower at once (for a kernel update without a gap). Waits until a follower is active.
    Handover {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand)]
pub enum KafkaAction {
    /// After the exactly-once publisher held because the events topic holds this app's events
    /// that this database did not publish (a database created anew, restored from a backup, or
    /// a copy that went its own way), or the daemon refused a topic that gained partitions:
    /// take what the topic holds now as not this database's, and publish this database's
    /// events after it. Its unsent events that the topic already holds (same event id) count as
    /// sent; the topic is read from its start to find them.
    Adopt {
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Args)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(
        long,
        short,
        env = "PRESENCED_CONFIG",
        default_value = "/etc/presenced/presenced.toml"
    )]
    pub config: PathBuf,
}

#[derive(Args)]
pub struct DbArgs {
    /// The daemon's configuration (its store.path is used).
    #[arg(long, short, env = "PRESENCED_CONFIG", conflicts_with = "db")]
    pub config: Option<PathBuf>,
    /// The SQLite file directly.
    #[arg(long)]
    pub db: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum UsersAction {
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
pub struct DemoArgs {
    /// Simulated accounts.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: usize,
    /// Share of accounts changing per second.
    #[arg(long, default_value_t = 0.001)]
    pub churn: f64,
    /// Seconds between sweeps.
    #[arg(long, default_value_t = 5.0)]
    pub interval: f64,
    /// The SQLite file the demo records into.
    #[arg(long, default_value = "presenced-demo.db")]
    pub db: PathBuf,
    /// Publish to Kafka instead of printing (e.g. 127.0.0.1:9092).
    #[arg(long)]
    pub brokers: Option<String>,
    /// The topic, with --brokers.
    #[arg(long, default_value = "presenced.transitions")]
    pub topic: String,
    /// Print every event as JSON lines instead of one line per change.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many sweeps.
    #[arg(long)]
    pub sweeps: Option<u64>,
}

#[derive(Args)]
pub struct SimArgs {
    /// Address the simulated IM API listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// TOML file with SimConfig fields (population, churn_per_second, faults, ...).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Accounts that exist (ids PREFIX0, PREFIX1, ...; default 10000, prefix "user").
    #[arg(long)]
    pub population: Option<usize>,
    /// Share of the population that changes state per second, from 0 to 10: 0.01 at 100000
    /// accounts is 1000 changes a second (not a count of changes).
    #[arg(long)]
    pub churn: Option<f64>,
    /// Calls per second before 60011 (0: unlimited).
    #[arg(long)]
    pub rate: Option<f64>,
    /// The share of accounts that are hot (0 to 1; default 0: every account alike). With
    /// --hot-steps, a watch list where a few accounts change all the time.
    #[arg(long)]
    pub hot_share: Option<f64>,
    /// The share of the churn's steps that go to the hot accounts (0 to 1): 0.9 with
    /// --hot-share 0.1 is "10% of the accounts make 90% of the changes". The daily rhythm is
    /// in --config's [activity] section (daily_amplitude, day_secs).
    #[arg(long)]
    pub hot_steps: Option<f64>,
    /// Latency added to every answer, in milliseconds (0 to 600000).
    #[arg(long)]
    pub latency_ms: Option<f64>,
    /// The SDKAppID whose UserSigs the simulator accepts.
    #[arg(long)]
    pub sdkappid: Option<u64>,
    /// File holding the secret key the simulator verifies UserSigs with.
    #[arg(long)]
    pub secret_key_file: Option<PathBuf>,
    /// URL to POST State.StateChange callbacks to as the churn changes accounts (the daemon's
    /// callback.listen and callback.path); faults go in --config's [callback] section.
    #[arg(long)]
    pub callback_url: Option<String>,
    /// File holding the console's callback token: callbacks then carry Sign and RequestTime.
    #[arg(long)]
    pub callback_token_file: Option<PathBuf>,
}
