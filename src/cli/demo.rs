//! `presenced demo`: the daemon against the built-in simulator, with a local SQLite file.

use super::daemon::signals;
use super::{runtime, CliError, DemoArgs};
use presenced::config::{Config, LogFormat, SinkKind};
use presenced::publish::StdoutStyle;
use presenced::service::{self, RunOptions};
use presenced::sim::{self, SimConfig};
use presenced::store::Db;
use std::time::Duration;

/// Runs the demo: the simulator in-process, a local SQLite file, transitions on stdout.
pub fn run(args: DemoArgs) -> Result<(), CliError> {
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
        let sim = sim::start(sim_config.clone(), "127.0.0.1:0".parse().expect("address"))
            .await
            .map_err(|e| CliError::Failed(e.to_string()))?;
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
        config.validate("demo")?;
        // Watch the whole simulated population plus three ids that do not exist.
        let mut ids: Vec<String> = (0..args.accounts)
            .map(|i| format!("{}{i}", sim_config.id_prefix))
            .collect();
        ids.extend(["ghost-1", "ghost-2", "ghost-3"].map(String::from));
        let db_path = args.db.clone();
        tokio::task::spawn_blocking(move || -> Result<usize, presenced::store::StoreError> {
            let mut db = Db::open(&db_path, Duration::from_secs(5))?;
            db.add_watched(&ids, |_| {})
        })
        .await
        .expect("watch-list task")?;
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
        let (shutdown, _reloads) = signals()?;
        let result = service::run(config, options, shutdown).await;
        sim.stop().await;
        Ok(result?)
    })
}
