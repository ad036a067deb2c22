//! `presenced demo`: the daemon against the built-in simulator, with a local SQLite file.

use super::daemon::signals;
use super::{runtime, CliError, DemoArgs};
use presenced::config::{Config, LogFormat};
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
        let sim = sim::start(sim_config.clone(), "127.0.0.1:0".parse().expect("address"))
            .await
            .map_err(|e| CliError::Failed(e.to_string()))?;
        let mut config = demo_config(&args, &sim_config, &sim.base_url())?;
        // The key is the simulator's own, kept out of the text above like any secret.
        config.im.secret_key = sim_config.secret_key.clone();
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

/// The demo's configuration, written as an operator would write the file, so it goes through the
/// same parser and defaults as `presenced run`.
fn demo_config(args: &DemoArgs, sim: &SimConfig, base_url: &str) -> Result<Config, CliError> {
    let quoted = |s: &str| toml::Value::from(s).to_string();
    let sink = match &args.brokers {
        Some(brokers) => format!(
            "[sink]\nkind = \"kafka\"\n[kafka]\nbrokers = {}\ntopic = {}\ncreate_topic = true\n",
            quoted(brokers),
            quoted(&args.topic)
        ),
        None => "[sink]\nkind = \"stdout\"\n".to_owned(),
    };
    let text = format!(
        "[im]\nsdkappid = {}\nidentifier = {}\nbase_url = {}\n\
         [sweep]\ninterval_secs = {}\njitter_secs = 0.0\n\
         [store]\npath = {}\n\
         [service]\nmetrics_listen = \"127.0.0.1:0\"\n{sink}",
        sim.sdkappid,
        quoted(&sim.admin),
        quoted(base_url),
        toml::Value::from(args.interval),
        quoted(&args.db.to_string_lossy()),
    );
    Ok(Config::from_toml(&text, std::path::Path::new("demo"), &[])?)
}
