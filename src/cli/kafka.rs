//! `presenced kafka adopt`: what an operator runs when the exactly-once publisher holds because
//! the events topic and the database disagree (a database created anew, restored from a
//! backup, or a copy that went its own way), or when the daemon refuses a topic that gained
//! partitions.

use super::{runtime, CliError};
use presenced::config::Config;
use presenced::publish::event::cloudevents_source;
use presenced::publish::kafka::{high_watermarks, own_event_ids_after};
use presenced::store::Store;
use std::path::Path;
use std::time::Duration;

/// Records that this database's events on `kafka.topic` begin after what the topic holds now
/// (and that its partitions are as they are now). The unsent events the topic already holds
/// (same event id: a batch committed just before a crash, a restored backup's) count as sent,
/// so that none goes twice.
pub fn adopt(path: &Path) -> Result<(), CliError> {
    let config = Config::load(path)?;
    presenced::logging::init(&config.service.log_filter, config.service.log_format);
    let settings = config.kafka.clone();
    let topic = settings.topic.clone();
    let unreachable = |e: rdkafka::error::KafkaError| {
        CliError::Failed(format!(
            "reading topic {topic:?} on {}: {e}",
            config.kafka.brokers
        ))
    };
    runtime().block_on(async {
        let store = Store::open(
            &config.store.path,
            Duration::from_millis(config.store.busy_timeout_ms),
        )
        .await?;
        let floor = {
            let settings = settings.clone();
            tokio::task::spawn_blocking(move || high_watermarks(&settings))
                .await
                .expect("reading watermarks does not panic")
                .map_err(unreachable)?
        };
        let mark = store.call(|db| db.published_mark()).await?;
        let on_topic = {
            let settings = settings.clone();
            let source = cloudevents_source(config.im.sdkappid);
            eprintln!("reading topic {topic:?} for this database's unsent events");
            tokio::task::spawn_blocking(move || own_event_ids_after(&settings, &source, mark))
                .await
                .expect("reading the topic does not panic")
                .map_err(unreachable)?
        };
        let (skipped, unsent) = {
            let topic = topic.clone();
            let floor = floor.clone();
            store
                .call(move |db| {
                    let skipped = db.adopt_topic(&topic, &floor, Some(&on_topic))?;
                    let (unsent, _) = db.outbox_backlog()?;
                    Ok((skipped, unsent))
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
        println!("{skipped} unsent events are on the topic already and count as sent");
        println!("{unsent} unsent events will be published after what the topic holds");
        println!("a daemon that holds picks this up within 10 s; one that starts later, at once");
        Ok(())
    })
}
