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
    Json(state.stats.lock().expect("stats").clone())
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
