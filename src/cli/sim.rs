//! `presenced sim`: the IM simulator as a process of its own.

use super::{runtime, CliError, SimArgs};
use presenced::config::LogFormat;
use presenced::sim::{self, SimConfig};

/// Runs the simulator until SIGINT or SIGTERM.
pub fn run(args: SimArgs) -> Result<(), CliError> {
    presenced::logging::init("info", LogFormat::Human);
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::Configuration(format!("cannot read {}: {e}", path.display()))
            })?;
            toml::from_str::<SimConfig>(&text).map_err(|e| {
                CliError::Configuration(format!("simulator configuration {}: {e}", path.display()))
            })?
        }
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
    if let Some(s) = args.hot_share {
        config.activity.hot_share = s;
    }
    if let Some(s) = args.hot_steps {
        config.activity.hot_step_share = s;
    }
    if let Some(l) = args.latency_ms {
        config.faults.latency_ms = l;
    }
    if let Some(s) = args.sdkappid {
        config.sdkappid = s;
    }
    if let Some(path) = &args.secret_key_file {
        let key = std::fs::read_to_string(path)
            .map_err(|e| CliError::Configuration(format!("cannot read {}: {e}", path.display())))?;
        config.secret_key = presenced::secret::Secret::new(key.trim());
    }
    if let Some(url) = &args.callback_url {
        config.callback.url = url.clone();
    }
    if let Some(path) = &args.callback_token_file {
        let token = std::fs::read_to_string(path)
            .map_err(|e| CliError::Configuration(format!("cannot read {}: {e}", path.display())))?;
        config.callback.token = presenced::secret::Secret::new(token.trim());
    }
    sim::check_churn(config.churn_per_second)
        .and(config.activity.check())
        .and(config.faults.check())
        .and(config.callback.check())
        .map_err(|e| CliError::Configuration(format!("sim: {e}")))?;
    runtime().block_on(async move {
        let population = config.population;
        let handle = sim::start(config, args.listen)
            .await
            .map_err(|e| CliError::Failed(e.to_string()))?;
        tracing::info!(addr = %handle.addr, population, "IM simulator listening");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        handle.stop().await;
        Ok(())
    })
}
