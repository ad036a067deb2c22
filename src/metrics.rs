//! The numbers the daemon exposes on `/metrics`. One shared instance, handed to each subsystem.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The result's name.
    pub result: String,
}

/// Labels of IM error counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    /// The IM error code.
    pub code: String,
    /// Its class.
    pub class: String,
}

/// Labels of transition counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// The state before (`none` for a first observation).
    pub from: String,
    /// The state after.
    pub to: String,
}

/// A `kind` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind's name.
    pub kind: String,
}

/// Which HTTP listener: `callback` or `metrics`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `callback` or `metrics`.
    pub listener: String,
}

/// Labels of callback counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallbackLabels {
    /// `CallbackCommand` (`State.StateChange`, `other`, or empty when unread).
    pub command: String,
    /// `Info.Action` (Login, Logout, Disconnect, CustomStatusChange, `other`, or empty).
    pub action: String,
    /// What became of it: accepted, merged, not_watched, overflow, stopping, ignored_action,
    /// unknown_command, bad_signature, stale, wrong_app, too_large, bad_body, no_account.
    pub outcome: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

/// Every metric the daemon exposes at `/metrics` (names and help in `Metrics::new`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `presenced_sweeps_total` by result.
    pub sweeps: Family<ResultLabel, Counter>,
    /// `presenced_sweep_duration_seconds`.
    pub sweep_duration: Histogram,
    /// `presenced_sweep_lag_seconds`: how far the last sweep overran the interval.
    pub sweep_lag_seconds: FloatGauge,
    /// `presenced_last_successful_sweep_timestamp_seconds`.
    pub last_sweep_success: FloatGauge,
    /// `presenced_watched_accounts`.
    pub watched_accounts: Gauge,
    /// `presenced_accounts_observed_total`.
    pub accounts_observed: Counter,
    /// `presenced_accounts_failed_total`.
    pub accounts_failed: Counter,
    /// `presenced_accounts_not_found`.
    pub accounts_not_found: Gauge,
    /// `presenced_transitions_total` by from and to.
    pub transitions: Family<TransitionLabels, Counter>,
    /// `presenced_api_calls_total` by result.
    pub api_calls: Family<ResultLabel, Counter>,
    /// `presenced_api_errors_total` by code and class.
    pub api_errors: Family<CodeLabels, Counter>,
    /// `presenced_api_call_duration_seconds`.
    pub api_call_duration: Histogram,
    /// `presenced_ratelimit_wait_seconds_total`.
    pub ratelimit_wait_seconds: FloatCounter,
    /// `presenced_ratelimit_calls_per_second`: the paced calls per second.
    pub ratelimit_rate: FloatGauge,
    /// `presenced_configuration_error`: 1 while IM rejects the configuration.
    pub configuration_error: Gauge,
    /// `presenced_outbox_backlog`: events not yet acknowledged.
    pub outbox_backlog: Gauge,
    /// `presenced_outbox_oldest_age_seconds`.
    pub outbox_oldest_age_seconds: FloatGauge,
    /// `presenced_events_published_total`.
    pub events_published: Counter,
    /// `presenced_delivery_latency_seconds`: commit to acknowledgement.
    pub delivery_latency: Histogram,
    /// `presenced_delivery_errors_total` by kind.
    pub delivery_errors: Family<KindLabel, Counter>,
    /// `presenced_ready`: 1 while `/readyz` answers 200 (set at each scrape).
    pub ready: Gauge,
    /// `presenced_callback_values_replaced_total` by field: callback values IM does not
    /// document, stored as `other`, and EventTimes clamped.
    pub callback_values_replaced: Family<KindLabel, Counter>,
    /// `presenced_publish_held`: 1 while exactly-once publishing is held because the events
    /// topic holds this app's events that this database did not publish.
    pub publish_held: Gauge,
    /// `presenced_callbacks_total` by command, action and outcome.
    pub callbacks: Family<CallbackLabels, Counter>,
    /// `presenced_hint_queue_length`: hinted accounts waiting for their re-query.
    pub hint_queue_length: Gauge,
    /// `presenced_hinted_calls_total`: IM calls made for hinted accounts.
    pub hinted_calls: Counter,
    /// `presenced_hinted_accounts_per_call`.
    pub hinted_accounts_per_call: Histogram,
    /// `presenced_callback_detection_seconds`: a hinted observation's time minus its
    /// callback's `EventTime`.
    pub callback_detection: Histogram,
    /// `presenced_stale_answers_total`: answers older than an applied re-query, skipped.
    pub stale_answers: Counter,
    /// `presenced_poll_interval_seconds`: time between two observations of an account (the
    /// adaptive schedule).
    pub poll_interval: Histogram,
    /// `presenced_oldest_observation_age_seconds`: how long ago the watched account observed
    /// longest ago was observed, at the start of the last sweep (the most any account has gone
    /// unobserved).
    pub oldest_observation_age: FloatGauge,
    /// `presenced_max_staleness_seconds`: `sweep.max_staleness_secs`.
    pub max_staleness: FloatGauge,
    /// `presenced_store_full`: 1 while the database has no room to write.
    pub store_full: Gauge,
    /// `presenced_db_size_bytes`: the database file and its WAL.
    pub db_size_bytes: Gauge,
    /// `presenced_db_free_bytes`: what the database may still grow by (its filesystem's room,
    /// less if `store.max_size_mb` leaves less).
    pub db_free_bytes: Gauge,
    /// `presenced_http_open_connections`: connections open per listener.
    pub http_open_connections: Family<ListenerLabels, Gauge>,
    /// `presenced_http_max_connections`: the cap per listener.
    pub http_max_connections: Family<ListenerLabels, Gauge>,
    /// `presenced_http_accept_errors_total`: failed accepts (out of descriptors) per listener.
    pub http_accept_errors: Family<ListenerLabels, Counter>,
    /// `presenced_standby_active`: 1 while this instance is the standby active, 0 while it
    /// follows (and without `[standby]`).
    pub standby_active: Gauge,
    /// `presenced_standby_lag_events`: events committed on the topic that this follower has not
    /// applied yet.
    pub standby_lag_events: Gauge,
    /// `presenced_standby_lag_seconds`: age of the newest event this follower applied, while
    /// it lags (0 when caught up).
    pub standby_lag_seconds: FloatGauge,
    /// `presenced_standby_heartbeat_age_seconds`: since this follower last saw the active's
    /// heartbeat (0 on the active).
    pub standby_heartbeat_age: FloatGauge,
    /// `presenced_standby_replicated_events_total`: events a follower applied from the topic.
    pub standby_replicated_events: Counter,
    /// `presenced_standby_seq_gaps_total`: replicated events whose seq did not follow on.
    pub standby_seq_gaps: Counter,
    /// `presenced_standby_takeovers_total`: times this instance became the active.
    pub standby_takeovers: Counter,
    /// `presenced_standby_last_takeover_timestamp_seconds`: when it last did.
    pub standby_last_takeover: FloatGauge,
    /// `presenced_standby_stand_downs_total`: times it stopped being the active, by reason
    /// (fenced, lease, handover, error).
    pub standby_stand_downs: Family<KindLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("presenced");
        let m = Metrics {
            sweeps: Family::default(),
            sweep_duration: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            sweep_lag_seconds: FloatGauge::default(),
            last_sweep_success: FloatGauge::default(),
            watched_accounts: Gauge::default(),
            accounts_observed: Counter::default(),
            accounts_failed: Counter::default(),
            accounts_not_found: Gauge::default(),
            transitions: Family::default(),
            api_calls: Family::default(),
            api_errors: Family::default(),
            api_call_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            ratelimit_wait_seconds: FloatCounter::default(),
            ratelimit_rate: FloatGauge::default(),
            configuration_error: Gauge::default(),
            outbox_backlog: Gauge::default(),
            outbox_oldest_age_seconds: FloatGauge::default(),
            events_published: Counter::default(),
            delivery_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            delivery_errors: Family::default(),
            ready: Gauge::default(),
            publish_held: Gauge::default(),
            callback_values_replaced: Family::default(),
            callbacks: Family::default(),
            hint_queue_length: Gauge::default(),
            hinted_calls: Counter::default(),
            hinted_accounts_per_call: Histogram::new([
                1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0,
            ]),
            callback_detection: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            stale_answers: Counter::default(),
            poll_interval: Histogram::new(exponential_buckets(0.5, 2.0, 16)),
            oldest_observation_age: FloatGauge::default(),
            max_staleness: FloatGauge::default(),
            store_full: Gauge::default(),
            db_size_bytes: Gauge::default(),
            db_free_bytes: Gauge::default(),
            http_open_connections: Family::default(),
            http_max_connections: Family::default(),
            http_accept_errors: Family::default(),
            standby_active: Gauge::default(),
            standby_lag_events: Gauge::default(),
            standby_lag_seconds: FloatGauge::default(),
            standby_heartbeat_age: FloatGauge::default(),
            standby_replicated_events: Counter::default(),
            standby_seq_gaps: Counter::default(),
            standby_takeovers: Counter::default(),
            standby_last_takeover: FloatGauge::default(),
            standby_stand_downs: Family::default(),
            registry: Registry::default(),
        };
        registry.register("sweeps", "Sweeps by result", m.sweeps.clone());
        registry.register(
            "sweep_duration_seconds",
            "Duration of a sweep",
            m.sweep_duration.clone(),
        );
        registry.register(
            "sweep_lag_seconds",
            "How far the last sweep ran past its interval",
            m.sweep_lag_seconds.clone(),
        );
        registry.register(
            "last_successful_sweep_timestamp_seconds",
            "Unix time the last sweep finished",
            m.last_sweep_success.clone(),
        );
        registry.register(
            "watched_accounts",
            "Accounts on the watch list",
            m.watched_accounts.clone(),
        );
        registry.register(
            "accounts_observed",
            "Account observations that succeeded",
            m.accounts_observed.clone(),
        );
        registry.register(
            "accounts_failed",
            "Account observations that failed (never counted as offline)",
            m.accounts_failed.clone(),
        );
        registry.register(
            "accounts_not_found",
            "Accounts IM reported as not existing (70107) in the last sweep",
            m.accounts_not_found.clone(),
        );
        registry.register(
            "transitions",
            "Transitions recorded, by from and to state",
            m.transitions.clone(),
        );
        registry.register("api_calls", "IM API calls by result", m.api_calls.clone());
        registry.register(
            "api_errors",
            "IM API errors by code and class",
            m.api_errors.clone(),
        );
        registry.register(
            "api_call_duration_seconds",
            "IM API call latency",
            m.api_call_duration.clone(),
        );
        registry.register(
            "ratelimit_wait_seconds",
            "Time spent waiting for the rate limiter",
            m.ratelimit_wait_seconds.clone(),
        );
        registry.register(
            "ratelimit_calls_per_second",
            "Current paced call rate",
            m.ratelimit_rate.clone(),
        );
        registry.register(
            "configuration_error",
            "1 while sweeping is stopped by a configuration error",
            m.configuration_error.clone(),
        );
        registry.register(
            "outbox_backlog",
            "Events written but not yet acknowledged by the sink",
            m.outbox_backlog.clone(),
        );
        registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest unsent event",
            m.outbox_oldest_age_seconds.clone(),
        );
        registry.register(
            "events_published",
            "Events acknowledged by the sink",
            m.events_published.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Time from SQLite commit to sink acknowledgement",
            m.delivery_latency.clone(),
        );
        registry.register(
            "delivery_errors",
            "Sink delivery errors by kind",
            m.delivery_errors.clone(),
        );
        registry.register(
            "ready",
            "1 while /readyz answers 200: sweeping works and Kafka accepts us",
            m.ready.clone(),
        );
        registry.register(
            "callback_values_replaced",
            "Callback values IM does not document (stored as other) and EventTimes clamped to the receive time within the allowed skew, by field",
            m.callback_values_replaced.clone(),
        );
        registry.register(
            "publish_held",
            "1 while exactly-once publishing is held: the events topic holds this app's events that this database did not publish (see presenced kafka adopt)",
            m.publish_held.clone(),
        );
        registry.register(
            "callbacks",
            "IM State.StateChange callbacks received, by command, action and outcome",
            m.callbacks.clone(),
        );
        registry.register(
            "store_full",
            "1 while the database has no room to write (disk full or store.max_size_mb reached)",
            m.store_full.clone(),
        );
        registry.register(
            "db_size_bytes",
            "The database file and its WAL",
            m.db_size_bytes.clone(),
        );
        registry.register(
            "db_free_bytes",
            "What the database may still grow by: its filesystem's room, or less under store.max_size_mb",
            m.db_free_bytes.clone(),
        );
        registry.register(
            "http_open_connections",
            "Connections open on an HTTP listener",
            m.http_open_connections.clone(),
        );
        registry.register(
            "http_max_connections",
            "Connections an HTTP listener keeps open at most (more wait in the kernel's backlog)",
            m.http_max_connections.clone(),
        );
        registry.register(
            "http_accept_errors",
            "Connections an HTTP listener failed to accept (out of file descriptors, say)",
            m.http_accept_errors.clone(),
        );
        registry.register(
            "hint_queue_length",
            "Accounts a callback hinted at, waiting for their re-query",
            m.hint_queue_length.clone(),
        );
        registry.register(
            "hinted_calls",
            "IM calls made to re-query accounts callbacks hinted at",
            m.hinted_calls.clone(),
        );
        registry.register(
            "hinted_accounts_per_call",
            "Accounts in one hinted call",
            m.hinted_accounts_per_call.clone(),
        );
        registry.register(
            "callback_detection_seconds",
            "Observation time of a hinted account minus its callback's EventTime",
            m.callback_detection.clone(),
        );
        registry.register(
            "stale_answers",
            "Answers skipped because a newer re-query of the account was already applied",
            m.stale_answers.clone(),
        );
        registry.register(
            "poll_interval_seconds",
            "Time between two observations of an account (adaptive schedule)",
            m.poll_interval.clone(),
        );
        registry.register(
            "oldest_observation_age_seconds",
            "Age of the oldest observation of a watched account, at the start of the last sweep",
            m.oldest_observation_age.clone(),
        );
        registry.register(
            "max_staleness_seconds",
            "sweep.max_staleness_secs: every account is to be observed at least this often",
            m.max_staleness.clone(),
        );
        registry.register(
            "standby_active",
            "1 while this instance is the standby active, 0 while it follows (and without [standby])",
            m.standby_active.clone(),
        );
        registry.register(
            "standby_lag_events",
            "Events committed on the topic that this follower has not applied yet",
            m.standby_lag_events.clone(),
        );
        registry.register(
            "standby_lag_seconds",
            "Age of the newest event this follower applied while it lags (0 when caught up)",
            m.standby_lag_seconds.clone(),
        );
        registry.register(
            "standby_heartbeat_age_seconds",
            "Since this follower last saw the active's heartbeat (0 on the active)",
            m.standby_heartbeat_age.clone(),
        );
        registry.register(
            "standby_replicated_events",
            "Events this follower applied from the topic",
            m.standby_replicated_events.clone(),
        );
        registry.register(
            "standby_seq_gaps",
            "Replicated events whose per-account seq did not follow on from the one before",
            m.standby_seq_gaps.clone(),
        );
        registry.register(
            "standby_takeovers",
            "Times this instance became the standby active",
            m.standby_takeovers.clone(),
        );
        registry.register(
            "standby_last_takeover_timestamp_seconds",
            "When this instance last became the standby active",
            m.standby_last_takeover.clone(),
        );
        registry.register(
            "standby_stand_downs",
            "Times this instance stopped being the active, by reason (fenced, lease, handover, error)",
            m.standby_stand_downs.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The classic Prometheus text format (0.0.4), for scrapers and tools that do not ask for
    /// OpenMetrics (promtool among them): counters are named with `_total` in their HELP and TYPE
    /// lines too, and there are no UNIT or EOF lines.
    pub fn encode_classic(&self) -> String {
        let open = self.encode();
        let counters: std::collections::HashSet<&str> = open
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(open.len());
        for line in open.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
                let rest = line.strip_prefix(prefix)?;
                let (name, tail) = rest.split_once(' ')?;
                counters
                    .contains(name)
                    .then(|| format!("{prefix}{name}_total {tail}"))
            });
            match renamed {
                Some(l) => out.push_str(&l),
                None => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }

    /// OpenMetrics text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Counts an IM error code.
    pub fn api_error(&self, code: &str, class: &str) {
        self.api_errors
            .get_or_create(&CodeLabels {
                code: code.into(),
                class: class.into(),
            })
            .inc();
    }

    /// Counts a call by result.
    pub fn api_call(&self, result: &str) {
        self.api_calls
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// Counts a delivery error by kind.
    pub fn delivery_error(&self, kind: &str) {
        self.delivery_errors
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// Counts a callback field replaced by `other` or clamped.
    pub fn callback_values_replaced(&self, field: &str) {
        self.callback_values_replaced
            .get_or_create(&KindLabel { kind: field.into() })
            .inc();
    }
}
