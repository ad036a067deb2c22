//! `presenced replay`: re-publishes recorded transitions, with their original event ids.

use super::{runtime, time_arg, CliError};
use presenced::config::Config;
use presenced::publish::kafka::KafkaSink;
use presenced::store::Store;
use std::path::Path;
use std::time::Duration;

/// Replays the history observed in `[since, until)` to `topic` (default: `kafka.topic`).
pub fn run(
    path: &Path,
    since: &str,
    until: Option<&str>,
    topic: Option<String>,
) -> Result<(), CliError> {
    let mut config = Config::load(path)?;
    presenced::logging::init(&config.service.log_filter, config.service.log_format);
    let since = time_arg(since)?;
    let until = until.map(time_arg).transpose()?.unwrap_or(i64::MAX);
    if let Some(t) = topic {
        config.kafka.topic = t;
    }
    // Replay sends with a plain idempotent producer whatever kafka.delivery says: it must not
    // take the daemon's transactional.id (that would fence the running daemon), and replayed
    // copies of events already on a topic are duplicates by event id in any mode.
    config.kafka.delivery = presenced::publish::kafka::Delivery::AtLeastOnce;
    runtime().block_on(async move {
        let store = Store::open(
            &config.store.path,
            Duration::from_millis(config.store.busy_timeout_ms),
        )
        .await?;
        let (mut sink, reachable) = KafkaSink::connect(&config.kafka, config.im.sdkappid).await?;
        if !reachable {
            return Err(CliError::Failed(format!(
                "Kafka at {} is not reachable",
                config.kafka.brokers
            )));
        }
        let started = std::time::Instant::now();
        let sent = presenced::publish::replay(
            &store,
            &mut sink,
            &config.sink,
            since,
            until,
            |done, total| {
                eprint!(
                    "\rreplaying: {done}/{total} ({:.0}%)",
                    done as f64 * 100.0 / total.max(1) as f64
                );
            },
        )
        .await?;
        eprintln!();
        println!(
            "replayed {sent} events to {} in {:.1}s",
            config.kafka.topic,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
}
