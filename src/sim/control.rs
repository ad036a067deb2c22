//! The simulator's control API: accounts, faults and churn set on demand by tests and
//! benchmarks, and its counters.

use super::*;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Serialize)]
pub(super) struct AccountList {
    accounts: Vec<AccountView>,
}

pub(super) async fn list_accounts(State(state): State<Arc<SimState>>) -> Json<AccountList> {
    let compression = state.config.lock().expect("config").time_compression;
    let now = state.now_ms(compression);
    Json(AccountList {
        accounts: state.population.lock().expect("population").all(now),
    })
}

pub(super) async fn get_account(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
) -> Response {
    let compression = state.config.lock().expect("config").time_compression;
    let now = state.now_ms(compression);
    match state.population.lock().expect("population").view(&id, now) {
        Some(v) => Json(v).into_response(),
        None => (StatusCode::NOT_FOUND, "no such account").into_response(),
    }
}

#[derive(Deserialize)]
pub(super) struct SetAccount {
    platforms: Vec<PlatformStatus>,
}

pub(super) async fn put_account(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    Json(req): Json<SetAccount>,
) -> Response {
    let compression = state.config.lock().expect("config").time_compression;
    let now = state.now_ms(compression);
    let mut population = state.population.lock().expect("population");
    population.set(&id, &req.platforms, now);
    Json(population.view(&id, now)).into_response()
}

pub(super) async fn delete_account(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
) -> StatusCode {
    if state.population.lock().expect("population").delete(&id) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

pub(super) async fn get_stats(State(state): State<Arc<SimState>>) -> Json<SimStats> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut stats = state.stats.lock().expect("stats").clone();
    let c = &state.callbacks.counts;
    stats.callbacks_sent = c.sent.load(Relaxed);
    stats.callbacks_suppressed = c.suppressed.load(Relaxed);
    stats.callbacks_failed = c.failed.load(Relaxed);
    Json(stats)
}

pub(super) async fn get_callbacks(State(state): State<Arc<SimState>>) -> Json<SimCallbacks> {
    Json(state.callback_settings.lock().expect("callbacks").clone())
}

/// Replaces the callback settings; the token is kept when the new settings carry none (it is
/// never shown, so a read-modify-write would otherwise drop it).
pub(super) async fn put_callbacks(
    State(state): State<Arc<SimState>>,
    Json(mut settings): Json<SimCallbacks>,
) -> Result<Json<SimCallbacks>, (StatusCode, String)> {
    settings
        .check()
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))?;
    let mut current = state.callback_settings.lock().expect("callbacks");
    if settings.token.is_empty() {
        settings.token = current.token.clone();
    }
    *current = settings.clone();
    Ok(Json(settings))
}

/// A callback to send now, whatever the faults say.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct SendCallback {
    action: Option<String>,
    reason: Option<String>,
    kicked: Vec<String>,
    event_time: Option<i64>,
}

#[derive(Serialize)]
pub(super) struct CallbackSent {
    /// Whether the receiver answered 200.
    answered_ok: bool,
}

/// Posts one callback for an account at once (defaults: Login/Register when it is Online,
/// else Logout/Unregister) and says whether the receiver accepted it.
pub(super) async fn post_callback(
    State(state): State<Arc<SimState>>,
    Path(id): Path<String>,
    body: Option<Json<SendCallback>>,
) -> Result<Json<CallbackSent>, (StatusCode, String)> {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let (compression, sdkappid) = {
        let c = state.config.lock().expect("config");
        (c.time_compression, c.sdkappid)
    };
    let now = state.now_ms(compression);
    let view = state.population.lock().expect("population").view(&id, now);
    let online = view
        .as_ref()
        .is_some_and(|v| v.status == crate::model::State::Online);
    let platform = view
        .and_then(|v| v.platforms.first().map(|p| p.platform.clone()))
        .unwrap_or_else(|| "Android".into());
    let (action, reason) = match online {
        true => ("Login", "Register"),
        false => ("Logout", "Unregister"),
    };
    let announcement = Announcement {
        user_id: id,
        action: req.action.unwrap_or_else(|| action.into()),
        reason: req.reason.unwrap_or_else(|| reason.into()),
        platform,
        kicked: req.kicked,
        event_time: req.event_time.unwrap_or_else(now_millis),
    };
    let settings = state.callback_settings.lock().expect("callbacks").clone();
    if settings.url.is_empty() {
        return Err((StatusCode::CONFLICT, "no callback url configured\n".into()));
    }
    let answered_ok = callbacks::post_now(&settings, sdkappid, &announcement).await;
    Ok(Json(CallbackSent { answered_ok }))
}

pub(super) async fn get_faults(State(state): State<Arc<SimState>>) -> Json<Faults> {
    Json(state.config.lock().expect("config").faults.clone())
}

pub(super) async fn put_faults(
    State(state): State<Arc<SimState>>,
    Json(faults): Json<Faults>,
) -> Result<Json<Faults>, (StatusCode, String)> {
    faults
        .check()
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))?;
    state.config.lock().expect("config").faults = faults.clone();
    Ok(Json(faults))
}

#[derive(Serialize, Deserialize)]
pub(super) struct Churn {
    churn_per_second: f64,
}

pub(super) async fn put_churn(
    State(state): State<Arc<SimState>>,
    Json(churn): Json<Churn>,
) -> Result<Json<Churn>, (StatusCode, String)> {
    check_churn(churn.churn_per_second).map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))?;
    state.config.lock().expect("config").churn_per_second = churn.churn_per_second;
    Ok(Json(churn))
}

/// The hot accounts' and the cold ones' mean step rates now (daily rhythm averaged out), and
/// the hot accounts: the ground truth for an adaptive poller's estimates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActivityView {
    /// The settings.
    pub activity: Activity,
    /// Steps per second per account, by kind.
    pub rates: activity::StepRates,
    /// The hot accounts' ids.
    pub hot: Vec<String>,
}

pub(super) async fn get_activity(State(state): State<Arc<SimState>>) -> Json<ActivityView> {
    let (activity, churn) = {
        let c = state.config.lock().expect("config");
        (c.activity.clone(), c.churn_per_second)
    };
    let population = state.population.lock().expect("population");
    let (rates, hot) = population.step_rates(churn * population.len() as f64);
    Json(ActivityView {
        activity,
        rates,
        hot,
    })
}
