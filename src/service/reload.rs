//! What a reload (SIGHUP) changes: the watch list, the log filter, retention, the sweep's
//! schedule, the Kafka producer's settings and the callback token (and clock skew). Everything
//! else takes a restart.

use super::start::load_watch_list;
use super::{RunOptions, ServiceError};
use crate::callback::{CallbackConfig, Endpoint};
use crate::config::{Config, KafkaConfig};
use crate::store::Store;
use crate::sweep::Sweeper;
use tokio::sync::watch;

/// Re-reads the configuration (when there is a file) and the watch list.
pub(super) async fn reload(
    options: &mut RunOptions,
    live: &mut Config,
    store: &Store,
    sweeper: &mut Sweeper,
    kafka: &watch::Sender<KafkaConfig>,
    callbacks: Option<&Endpoint>,
) -> Result<(), ServiceError> {
    if let Some(path) = &options.config_path {
        match Config::load(path) {
            Ok(new) => {
                if let Some(f) = &options.reload_log_filter {
                    if let Err(e) = f(&new.service.log_filter) {
                        tracing::error!(error = %e, "log filter not changed");
                    }
                }
                live.watch = new.watch;
                live.service.log_filter = new.service.log_filter;
                live.store.retention_days = new.store.retention_days;
                reload_kafka(live, new.kafka, kafka);
                reload_callback(live, new.callback, callbacks);
                reload_schedule(live, &new.sweep, sweeper).await?;
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration not reloaded; keeping the running one")
            }
        }
    }
    let ids = load_watch_list(live, store).await?;
    let before = sweeper.watch_list().len();
    let removed = sweeper.set_watch_list(ids).await?;
    tracing::info!(
        before,
        after = sweeper.watch_list().len(),
        forgotten = removed,
        "watch list reloaded"
    );
    Ok(())
}

/// Switches the sweep's schedule, or its adaptive settings, from the next sweep on. The
/// history is untouched: only the order of polls changes.
async fn reload_schedule(
    live: &mut Config,
    new: &crate::sweep::config::SweepConfig,
    sweeper: &mut Sweeper,
) -> Result<(), ServiceError> {
    let mut next = live.sweep.clone();
    next.schedule = new.schedule;
    next.max_staleness_secs = new.max_staleness_secs;
    next.prior_change_interval_secs = new.prior_change_interval_secs;
    if next.schedule_settings() == live.sweep.schedule_settings()
        && next.schedule == live.sweep.schedule
    {
        return Ok(());
    }
    // Checked against the running interval, which a reload does not change.
    if let Err(e) = crate::validation::Section::check(&next) {
        tracing::error!(key = e.key, "{}; keeping the running schedule", e.message);
        return Ok(());
    }
    sweeper
        .set_schedule(next.schedule, next.schedule_settings())
        .await?;
    tracing::info!(
        schedule = next.schedule.as_str(),
        max_staleness_secs = next.max_staleness_secs,
        "sweep schedule reloaded"
    );
    live.sweep = next;
    Ok(())
}

/// Hands changed `[kafka]` settings (brokers, credentials, TLS, tuning) to the publisher, which
/// re-creates its producer. The topics are what the outbox was published to so far: changing
/// them takes a restart.
fn reload_kafka(live: &mut Config, new: KafkaConfig, kafka: &watch::Sender<KafkaConfig>) {
    if new.topic != live.kafka.topic || new.state_topic != live.kafka.state_topic {
        tracing::warn!("kafka.topic and kafka.state_topic changes take effect at the next restart");
    }
    // The sink's kind and its producers' identity are chosen at start.
    if new.delivery != live.kafka.delivery || new.transactional_id != live.kafka.transactional_id {
        tracing::warn!(
            "kafka.delivery and kafka.transactional_id changes take effect at the next restart"
        );
    }
    let new = KafkaConfig {
        topic: live.kafka.topic.clone(),
        state_topic: live.kafka.state_topic.clone(),
        delivery: live.kafka.delivery,
        transactional_id: live.kafka.transactional_id.clone(),
        ..new
    };
    if new != live.kafka {
        live.kafka = new.clone();
        kafka.send_replace(new);
    }
}

/// Gives the running endpoint a changed token or clock skew (the console's token was rotated);
/// the endpoint's address, path, limits and pacing take a restart.
fn reload_callback(live: &mut Config, new: CallbackConfig, endpoint: Option<&Endpoint>) {
    if new.differs_past_reload(&live.callback) {
        tracing::warn!("callback settings other than the token and the clock skews take effect at the next restart");
    }
    let Some(endpoint) = endpoint else {
        return;
    };
    if new.token.is_empty() && !live.callback.token.is_empty() {
        tracing::error!("callback.token was removed: the reload keeps the running token (callbacks stay signed); to accept unsigned callbacks set callback.allow_unsigned = true and restart");
        return;
    }
    let token_changed = new.token != live.callback.token;
    if token_changed
        || new.max_clock_skew_secs != live.callback.max_clock_skew_secs
        || new.max_future_skew_secs != live.callback.max_future_skew_secs
    {
        endpoint.set_verifier(new.verifier(live.im.sdkappid));
        live.callback.token = new.token;
        live.callback.max_clock_skew_secs = new.max_clock_skew_secs;
        live.callback.max_future_skew_secs = new.max_future_skew_secs;
        tracing::info!(
            token_changed,
            max_clock_skew_secs = live.callback.max_clock_skew_secs,
            "callback verification reloaded"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::kafka::Delivery;

    /// The sink's kind and its producers' transactional id are chosen at start: a reload that
    /// changes them hands the publisher the running values (with a WARN), never a mix.
    #[test]
    fn delivery_and_transactional_id_keep_their_running_values() {
        let mut live = Config::default();
        live.kafka.delivery = Delivery::ExactlyOnce;
        live.kafka.transactional_id = "presenced-a".into();
        let (tx, rx) = watch::channel(live.kafka.clone());
        let new = KafkaConfig {
            delivery: Delivery::AtLeastOnce,
            transactional_id: "presenced-b".into(),
            linger_ms: 42,
            ..live.kafka.clone()
        };
        reload_kafka(&mut live, new, &tx);
        let sent = rx.borrow().clone();
        assert_eq!(sent.delivery, Delivery::ExactlyOnce);
        assert_eq!(sent.transactional_id, "presenced-a");
        assert_eq!(sent.linger_ms, 42, "the other settings are applied");
        assert_eq!(live.kafka, sent);
    }

    /// A reload whose configuration drops the callback token (with allow_unsigned) keeps the
    /// running token: the endpoint goes on refusing unsigned callbacks.
    #[test]
    fn a_reload_cannot_remove_the_callback_token() {
        use crate::callback::{CallbackConfig, Endpoint, HintQueue};
        use crate::metrics::Metrics;
        use crate::secret::Secret;
        use std::sync::Arc;
        use std::time::Duration;
        let mut live = Config {
            callback: CallbackConfig {
                listen: "127.0.0.1:9465".into(),
                token: Secret::new("the-console-token"),
                ..CallbackConfig::default()
            },
            ..Config::default()
        };
        let endpoint = Endpoint::new(
            live.callback.verifier(live.im.sdkappid),
            Arc::new(HintQueue::new(10, 10, Duration::ZERO, Duration::ZERO)),
            Arc::new(Metrics::new()),
            4096,
        );
        let unsigned = CallbackConfig {
            token: Secret::default(),
            allow_unsigned: true,
            ..live.callback.clone()
        };
        reload_callback(&mut live, unsigned, Some(&endpoint));
        assert_eq!(live.callback.token.expose(), "the-console-token");
        let query = format!(
            "SdkAppid={}&CallbackCommand=State.StateChange",
            live.im.sdkappid
        );
        let (status, _) = endpoint.handle(&query, Ok(br#"{"Info":{"To_Account":"u1"}}"#));
        assert_eq!(status, 401, "unsigned callbacks are still refused");
    }
}
