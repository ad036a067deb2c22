//! `presenced run` and `presenced check-config`; the signals the daemon answers.

use super::{runtime, CliError};
use presenced::config::Config;
use presenced::service::{self, RunOptions};
use std::path::Path;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Runs the daemon with the configuration at `path`. Configuration errors are reported before
/// anything starts.
pub fn run(path: &Path) -> Result<(), CliError> {
    let config = Config::load(path)?;
    let handle = presenced::logging::init(&config.service.log_filter, config.service.log_format);
    runtime().block_on(async move {
        let (shutdown, reloads) = signals()?;
        let handovers = handover_requests()?;
        let options = RunOptions {
            reload_log_filter: Some(Box::new(move |f: &str| {
                let filter =
                    tracing_subscriber::EnvFilter::try_new(f).map_err(|e| e.to_string())?;
                handle.reload(filter).map_err(|e| e.to_string())
            })),
            config_path: Some(path.to_owned()),
            reloads: Some(reloads),
            handovers: Some(handovers),
            ..Default::default()
        };
        Ok(service::run(config, options, shutdown).await?)
    })
}

/// Validates the configuration and prints the effective one, secrets redacted.
pub fn check_config(path: &Path) -> Result<(), CliError> {
    let config = Config::load(path)?;
    print!("{}", config.to_redacted_toml());
    eprintln!("{}: configuration is valid", path.display());
    Ok(())
}

/// SIGTERM and SIGINT cancel the returned token; each SIGHUP is a reload request.
pub fn signals() -> Result<(CancellationToken, mpsc::Receiver<()>), CliError> {
    let failed = |e: std::io::Error| CliError::Failed(format!("signal handling: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(failed)?;
    let mut int = signal(SignalKind::interrupt()).map_err(failed)?;
    let mut hup = signal(SignalKind::hangup()).map_err(failed)?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight batches, then stopping"),
            _ = int.recv() => tracing::info!("SIGINT: finishing in-flight batches, then stopping"),
        }
        stop.cancel();
    });
    // One pending request is enough: reloads that arrive during a reload fold into the next.
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = tx.try_send(());
        }
    });
    Ok((shutdown, rx))
}

/// Each SIGUSR2 asks a standby active for a clean hand-over (`presenced standby handover`).
fn handover_requests() -> Result<mpsc::Receiver<()>, CliError> {
    let mut usr2 = signal(SignalKind::user_defined2())
        .map_err(|e| CliError::Failed(format!("signal handling: {e}")))?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while usr2.recv().await.is_some() {
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
}
