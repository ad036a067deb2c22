//! `presenced sim`: a local stand-in for Tencent IM's REST API, speaking the real wire format on
//! both command paths, verifying UserSigs, enforcing the limits with the real error codes, with a
//! churning population and fault injection. Tests, benchmarks and the demo run against it.

pub mod activity;
pub mod callbacks;
mod control;
pub mod population;
mod query;

pub use activity::Activity;
pub use callbacks::SimCallbacks;
use callbacks::{Announcement, CallbackSender};
use control::{
    delete_account, get_account, get_activity, get_callbacks, get_faults, get_stats, list_accounts,
    post_callback, put_account, put_callbacks, put_churn, put_faults,
};
use query::query;

use crate::model::{now_millis, PlatformStatus};
use crate::secret::Secret;
use axum::routing::{any, get};
use axum::Router;
use population::{AccountView, Population};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The change log could not be created.
    #[error("cannot create the change log {path}: {source}")]
    ChangeLog {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Faults injected into answers, each with its own probability per call.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added latency: a fixed part plus a uniformly random part.
    pub latency_ms: f64,
    /// Added latency's random part, ms.
    pub latency_jitter_ms: f64,
    /// Top-level IM error codes, each answered with its probability.
    pub error_codes: Vec<(i64, f64)>,
    /// Share of calls answered with HTTP 502.
    pub http_502: f64,
    /// A body cut off in the middle.
    pub truncated_body: f64,
    /// A 200 carrying an HTML page instead of JSON.
    pub html_body: f64,
    /// Per-account ErrorList entries with this code (e.g. 70500), each account with this probability.
    pub account_error: Option<(i64, f64)>,
    /// Deterministic faults for tests: the next calls are answered with these, one each, in
    /// order: an IM error code ("70001"), "http_502", "truncated", "html", or "ok".
    pub script: std::collections::VecDeque<String>,
}

/// The simulator's settings (also a TOML file for `presenced sim --config`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// The SDKAppID whose UserSigs it accepts.
    pub sdkappid: u64,
    /// The administrator account UserSigs must be made for.
    pub admin: String,
    /// The key UserSigs are verified with.
    #[serde(skip_serializing)]
    pub secret_key: Secret,
    /// Accounts that exist.
    pub population: usize,
    /// Their ids are this prefix and a number.
    pub id_prefix: String,
    /// Share of accounts online at start.
    pub online_share: f64,
    /// Share of the population that changes state per second.
    pub churn_per_second: f64,
    /// Real time runs this many times faster for PushOnline expiry (7 days / compression).
    pub time_compression: f64,
    /// Calls per second before 60011; 0 disables the limit.
    pub calls_per_second: f64,
    /// Accounts per call before error 90033-like rejection.
    pub max_accounts_per_call: usize,
    /// Answer with the older per-account `State` field instead of `Status` (as the original
    /// querystate page shows; `Detail` entries keep `Status`).
    pub legacy_state_field: bool,
    /// Uneven activity: hot accounts and a daily rhythm (`[activity]`).
    pub activity: Activity,
    /// Injected faults.
    pub faults: Faults,
    /// `State.StateChange` callbacks sent as the churn changes accounts.
    pub callback: SimCallbacks,
    /// A file the churn appends each visible change to, one JSON line each (`at` in ms since
    /// the epoch, the account, its state and platforms after): the ground truth benchmarks
    /// measure detection latency against. The first query to answer for an account after it
    /// changed is logged too (`shown_at`, the account): when a poll could first see the change,
    /// or a later one that overwrote it.
    pub change_log: Option<std::path::PathBuf>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            sdkappid: 1_400_000_000,
            admin: "administrator".into(),
            secret_key: Secret::new("presenced-simulator-secret-key"),
            population: 10_000,
            id_prefix: "user".into(),
            online_share: 0.3,
            churn_per_second: 0.002,
            time_compression: 1.0,
            calls_per_second: 200.0,
            max_accounts_per_call: 500,
            legacy_state_field: false,
            activity: Activity::default(),
            faults: Faults::default(),
            callback: SimCallbacks::default(),
            change_log: None,
        }
    }
}

/// Counters the control API reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SimStats {
    /// Query calls received.
    pub calls: u64,
    /// Accounts asked about.
    pub accounts_queried: u64,
    /// Calls answered with ErrorCode 0.
    pub answered_ok: u64,
    /// Rejections and injected faults by code ("60011", "http_502", ...).
    pub errors: BTreeMap<String, u64>,
    /// Callbacks posted and answered 200.
    pub callbacks_sent: u64,
    /// Callbacks the configured faults kept back (drops, silent disconnects, login-only kicks).
    pub callbacks_suppressed: u64,
    /// Callbacks refused or not answered.
    pub callbacks_failed: u64,
}

#[derive(Debug)]
struct Pacer {
    /// GCRA: the theoretical arrival time of the next call, in seconds on the sim clock.
    tat: f64,
}

#[derive(Debug)]
struct SimState {
    config: Mutex<SimConfig>,
    population: Mutex<Population>,
    stats: Mutex<SimStats>,
    pacer: Mutex<Pacer>,
    /// Accounts a query answered for first since they changed, and when (ms since the epoch),
    /// for the change log; None without one.
    shown: Mutex<Option<Vec<(String, i64)>>>,
    started: std::time::Instant,
    callback_settings: Arc<Mutex<SimCallbacks>>,
    callbacks: CallbackSender,
}

impl SimState {
    /// Sim clock in ms: real time since start, sped up by the time compression factor.
    fn now_ms(&self, compression: f64) -> i64 {
        (self.started.elapsed().as_secs_f64() * 1000.0 * compression.max(1.0)) as i64
    }

    fn count_error(&self, key: impl Into<String>) {
        *self
            .stats
            .lock()
            .expect("stats")
            .errors
            .entry(key.into())
            .or_default() += 1;
    }
}

/// A running simulator.
#[derive(Debug)]
pub struct SimHandle {
    /// The address it listens on.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl SimHandle {
    /// `http://ADDR/`, for `im.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops serving and churning.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Starts the simulator on `addr` (port 0 picks a free one) and its churn loop.
pub async fn start(config: SimConfig, addr: SocketAddr) -> Result<SimHandle, SimError> {
    let mut rng = rand::rng();
    let ttl_ms = (7.0 * 86_400_000.0 / config.time_compression.max(1.0)) as i64;
    let population = Population::new(
        &config.id_prefix,
        config.population,
        config.online_share,
        ttl_ms,
        config.activity.clone(),
        &mut rng,
        0,
    );
    let callback_settings = Arc::new(Mutex::new(config.callback.clone()));
    let callbacks = CallbackSender::start(config.sdkappid, callback_settings.clone());
    let state = Arc::new(SimState {
        callback_settings,
        callbacks,
        population: Mutex::new(population),
        config: Mutex::new(config),
        stats: Mutex::new(SimStats::default()),
        pacer: Mutex::new(Pacer { tat: 0.0 }),
        shown: Mutex::new(None),
        started: std::time::Instant::now(),
    });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| SimError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| SimError::Bind { addr, source })?;
    let app = Router::new()
        .route("/v4/openim/query_online_status", any(query))
        .route("/v4/openim/querystate", any(query))
        .route("/control/accounts", get(list_accounts))
        .route(
            "/control/accounts/{id}",
            get(get_account).put(put_account).delete(delete_account),
        )
        .route("/control/stats", get(get_stats))
        .route("/control/faults", get(get_faults).put(put_faults))
        .route("/control/churn", axum::routing::put(put_churn))
        .route("/control/activity", get(get_activity))
        .route("/control/callbacks", get(get_callbacks).put(put_callbacks))
        .route(
            "/control/callbacks/{id}",
            axum::routing::post(post_callback),
        )
        .with_state(state.clone());
    let shutdown = CancellationToken::new();
    let churn_stop = shutdown.clone();
    let change_log = match &state.config.lock().expect("config").change_log {
        Some(path) => Some(
            std::fs::File::create(path)
                .map(std::io::BufWriter::new)
                .map_err(|source| SimError::ChangeLog {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    if change_log.is_some() {
        *state.shown.lock().expect("shown") = Some(Vec::new());
    }
    tokio::spawn(churn_loop(state.clone(), change_log, churn_stop));
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok(SimHandle {
        addr,
        shutdown,
        task,
    })
}

async fn churn_loop(
    state: Arc<SimState>,
    mut change_log: Option<std::io::BufWriter<std::fs::File>>,
    stop: CancellationToken,
) {
    use std::io::Write;
    let tick = Duration::from_millis(100);
    let mut owed = 0.0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.cancelled() => return,
        }
        let (rate, compression) = {
            let c = state.config.lock().expect("config");
            let day = state.started.elapsed().as_secs_f64();
            (
                c.churn_per_second * c.activity.daily_factor(day),
                c.time_compression,
            )
        };
        let now = state.now_ms(compression);
        // Stamped under the lock, as a query's answer is: no answer given after a change can
        // carry an earlier time.
        let (changes, at) = {
            let mut population = state.population.lock().expect("population");
            owed += rate * population.len() as f64 * tick.as_secs_f64();
            let count = owed.floor() as usize;
            owed -= count as f64;
            (population.churn(count, &mut rand::rng(), now), now_millis())
        };
        if let Some(log) = &mut change_log {
            for view in changes.iter().filter_map(|c| c.visible.as_ref()) {
                let line = serde_json::json!({"at": at, "user_id": view.user_id,
                    "state": view.status, "platforms": view.platforms});
                let _ = writeln!(log, "{line}");
            }
            let shown = state
                .shown
                .lock()
                .expect("shown")
                .as_mut()
                .map(std::mem::take);
            for (user_id, at) in shown.into_iter().flatten() {
                let line = serde_json::json!({"shown_at": at, "user_id": user_id});
                let _ = writeln!(log, "{line}");
            }
            let _ = log.flush();
        }
        let announce = !state
            .callback_settings
            .lock()
            .expect("callback settings")
            .url
            .is_empty();
        if announce {
            for change in changes {
                state.callbacks.announce(Announcement::of(change));
            }
        }
    }
}

/// The highest churn accepted: every account changing ten times a second is far past anything
/// a test needs, and a larger share spins the churn loop while it holds the population.
pub const MAX_CHURN_PER_SECOND: f64 = 10.0;

/// Checks a churn rate (a share of the population per second).
pub fn check_churn(share: f64) -> Result<(), String> {
    if share.is_finite() && (0.0..=MAX_CHURN_PER_SECOND).contains(&share) {
        Ok(())
    } else {
        Err(format!(
            "churn_per_second is a share of the population changing per second, from 0 to {MAX_CHURN_PER_SECOND}; got {share}"
        ))
    }
}

impl Faults {
    /// Latencies from 0 to ten minutes, probabilities from 0 to 1: anything else would hang or
    /// panic the query handlers.
    pub fn check(&self) -> Result<(), String> {
        for (name, ms) in [
            ("latency_ms", self.latency_ms),
            ("latency_jitter_ms", self.latency_jitter_ms),
        ] {
            if !(ms.is_finite() && (0.0..=600_000.0).contains(&ms)) {
                return Err(format!("{name} must be from 0 to 600000, got {ms}"));
            }
        }
        let mut probabilities = vec![
            ("http_502", self.http_502),
            ("truncated_body", self.truncated_body),
            ("html_body", self.html_body),
        ];
        probabilities.extend(self.error_codes.iter().map(|(_, p)| ("error_codes", *p)));
        probabilities.extend(
            self.account_error
                .iter()
                .map(|(_, p)| ("account_error", *p)),
        );
        for (name, p) in probabilities {
            if !(p.is_finite() && (0.0..=1.0).contains(&p)) {
                return Err(format!("{name}: a probability is from 0 to 1, got {p}"));
            }
        }
        Ok(())
    }
}
