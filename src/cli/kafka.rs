//! `presenced kafka adopt`: what an operator runs when the exactly-once publisher holds because
//! the events topic and the database disagree (a database created anew, restored from a
//! backup, or a copy that went its own way).

use super::{runtime, CliError};
use presenced::config::Config;
use presenced::publish::kafka::high_watermarks;
use presenced::store::Store;
use std::path::Path;
use std::time::Duration;

/// Records that this database's events on `kafka.topic` begin after what the topic holds now;
/// with `skip_unsent`, every row of the history counts as sent.
pub fn adopt(path: &Path, skip_unsent: bool) -> Result<(), CliError> {
    let config = Config::load(path)?;
    presenced::logging::init(&config.service.log_filter, config.service.log_format);
    let settings = config.kafka.clone();
    let topic = settings.topic.clone();
    runtime().block_on(async move {
        let store = Store::open(
            &config.store.path,
            Duration::from_millis(config.store.busy_timeout_ms),
        )
        .await?;
        let floor = tokio::task::spawn_blocking(move || high_watermarks(&settings))
            .await
            .expect("reading watermarks does not panic")
            .map_err(|e| {
                CliError::Failed(format!(
                    "reading the end of topic {topic:?} on {}: {e}",
                    config.kafka.brokers
                ))
            })?;
        let (mark_before, unsent) = {
            let topic = topic.clone();
            let floor = floor.clone();
            store
                .call(move |db| {
                    let before = db.published_mark()?;
                    let (backlog, _) = db.outbox_backlog()?;
                    db.adopt_topic(&topic, &floor, skip_unsent)?;
                    Ok((before, backlog))
                })
                .await?
        };
        let offsets: Vec<String> = floor
            .iter()
            .map(|(p, o)| format!("partition {p} from offset {o}"))
            .collect();
        println!(
            "{}: this database's events on topic {topic:?} now begin at {}",
            config.store.path.display(),
            offsets.join(", ")
        );
        match skip_unsent {
            true => println!(
                "the {unsent} unsent events (after history id {mark_before}) are marked as sent and will not be published"
            ),
            false => println!(
                "the {unsent} unsent events (after history id {mark_before}) will be published after them"
            ),
        }
        println!("a running daemon picks this up within 10 s; one started later at once");
        Ok(())
    })
}
