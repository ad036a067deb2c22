//! `presenced sim`: a local stand-in for Tencent IM's REST API, speaking the real wire format on
//! both command paths, verifying UserSigs, enforcing the limits with the real error codes, with a
//! churning population and fault injection. Tests, benchmarks and the demo run against it.

pub mod population;

use crate::im::usersig::{self, SigError};
use crate::im::wire::{AccountError, AccountResult, PlatformDetail, QueryResponse};
use crate::model::{now_millis, PlatformStatus};
use crate::secret::Secret;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use population::{AccountView, Population};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Faults injected into answers, each with its own probability per call.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added latency: a fixed part plus a uniformly random part.
    pub latency_ms: f64,
    pub latency_jitter_ms: f64,
    /// Top-level IM error codes, each answered with its probability.
    pub error_codes: Vec<(i64, f64)>,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    pub sdkappid: u64,
    pub admin: String,
    #[serde(skip_serializing)]
    pub secret_key: Secret,
    pub population: usize,
    pub id_prefix: String,
    pub online_share: f64,
    /// Share of the population that changes state per second.
    pub churn_per_second: f64,
    /// Real time runs this many times faster for PushOnline expiry (7 days / compression).
    pub time_compression: f64,
    /// Calls per second before 60011; 0 disables the limit.
    pub calls_per_second: f64,
    pub max_accounts_per_call: usize,
    /// Answer with the older per-account `State` field instead of `Status` (as the original
    /// querystate page shows; `Detail` entries keep `Status`).
    pub legacy_state_field: bool,
    pub faults: Faults,
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
            faults: Faults::default(),
        }
    }
}

/// Counters the control API reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SimStats {
    pub calls: u64,
    pub accounts_queried: u64,
    pub answered_ok: u64,
    /// Rejections and injected faults by code ("60011", "http_502", ...).
    pub errors: BTreeMap<String, u64>,
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
    started: std::time::Instant,
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
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl SimHandle {
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.addr)
    }

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
        &mut rng,
        0,
    );
    let state = Arc::new(SimState {
        population: Mutex::new(population),
        config: Mutex::new(config),
        stats: Mutex::new(SimStats::default()),
        pacer: Mutex::new(Pacer { tat: 0.0 }),
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
        .with_state(state.clone());
    let shutdown = CancellationToken::new();
    let churn_stop = shutdown.clone();
    tokio::spawn(churn_loop(state.clone(), churn_stop));
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

async fn churn_loop(state: Arc<SimState>, stop: CancellationToken) {
    let tick = Duration::from_millis(100);
    let mut owed = 0.0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = stop.cancelled() => return,
        }
        let (rate, compression) = {
            let c = state.config.lock().expect("config");
            (c.churn_per_second, c.time_compression)
        };
        let now = state.now_ms(compression);
        let mut population = state.population.lock().expect("population");
        owed += rate * population.len() as f64 * tick.as_secs_f64();
        let count = owed.floor() as usize;
        owed -= count as f64;
        population.churn(count, &mut rand::rng(), now);
    }
}

fn im_error(code: i64, info: &str) -> Response {
    let body = serde_json::json!({"ActionStatus": "FAIL", "ErrorInfo": info, "ErrorCode": code});
    (StatusCode::OK, Json(body)).into_response()
}

fn sig_code(e: &SigError) -> i64 {
    match e {
        SigError::Empty => 70002,
        SigError::Malformed => 70003,
        SigError::Expired => 70001,
        SigError::BadHmac => 70009,
        SigError::IdentifierMismatch => 70013,
        SigError::SdkAppIdMismatch => 70014,
    }
}

#[derive(Deserialize)]
struct RawRequest {
    #[serde(rename = "To_Account")]
    to_account: Option<serde_json::Value>,
    #[serde(rename = "IsNeedDetail", default)]
    is_need_detail: Option<serde_json::Value>,
}

async fn query(
    State(state): State<Arc<SimState>>,
    method: Method,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let config = state.config.lock().expect("config").clone();
    state.stats.lock().expect("stats").calls += 1;
    let result = check_request(&state, &config, method, raw.as_deref(), &body);
    let (ids, detail) = match result {
        Ok(ok) => ok,
        Err((code, info)) => {
            state.count_error(code.to_string());
            return im_error(code, info);
        }
    };
    let scripted = state
        .config
        .lock()
        .expect("config")
        .faults
        .script
        .pop_front();
    let faults = &config.faults;
    let (latency, fault) = if let Some(step) = scripted {
        let fault = match step.as_str() {
            "http_502" => Some(Fault::Http502),
            "truncated" => Some(Fault::Truncated),
            "html" => Some(Fault::Html),
            code => code.parse().ok().map(Fault::Code),
        };
        (faults.latency_ms, fault)
    } else {
        let mut rng = rand::rng();
        let latency = faults.latency_ms + faults.latency_jitter_ms * rng.random::<f64>();
        let mut fault = None;
        for (code, p) in &faults.error_codes {
            if rng.random_bool(p.clamp(0.0, 1.0)) {
                fault = Some(Fault::Code(*code));
                break;
            }
        }
        if fault.is_none() && rng.random_bool(faults.http_502.clamp(0.0, 1.0)) {
            fault = Some(Fault::Http502);
        } else if fault.is_none() && rng.random_bool(faults.truncated_body.clamp(0.0, 1.0)) {
            fault = Some(Fault::Truncated);
        } else if fault.is_none() && rng.random_bool(faults.html_body.clamp(0.0, 1.0)) {
            fault = Some(Fault::Html);
        }
        (latency, fault)
    };
    if latency > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(latency / 1000.0)).await;
    }
    match fault {
        Some(Fault::Code(code)) => {
            state.count_error(code.to_string());
            return im_error(code, "injected fault");
        }
        Some(Fault::Http502) => {
            state.count_error("http_502");
            return (
                StatusCode::BAD_GATEWAY,
                "<html><body>502 Bad Gateway</body></html>",
            )
                .into_response();
        }
        Some(Fault::Html) => {
            state.count_error("html_body");
            return (
                StatusCode::OK,
                [("content-type", "text/html")],
                "<html><body>maintenance</body></html>",
            )
                .into_response();
        }
        _ => {}
    }
    let now = state.now_ms(config.time_compression);
    let mut response = QueryResponse {
        action_status: Some("OK".into()),
        error_code: Some(0),
        error_info: Some(String::new()),
        ..Default::default()
    };
    {
        let mut population = state.population.lock().expect("population");
        let mut rng = rand::rng();
        for id in &ids {
            if let Some((code, p)) = faults.account_error {
                if rng.random_bool(p.clamp(0.0, 1.0)) {
                    response.error_list.push(AccountError {
                        to_account: id.clone(),
                        error_code: code,
                    });
                    continue;
                }
            }
            match population.view(id, now) {
                Some(view) => response.query_result.push(AccountResult {
                    to_account: id.clone(),
                    status: view.status.as_str().to_owned(),
                    detail: detail.then(|| {
                        view.platforms
                            .iter()
                            .map(|p| PlatformDetail {
                                platform: p.platform.clone(),
                                status: p.status.as_str().to_owned(),
                            })
                            .collect()
                    }),
                }),
                None => response.error_list.push(AccountError {
                    to_account: id.clone(),
                    error_code: crate::im::codes::ACCOUNT_NOT_FOUND,
                }),
            }
        }
    }
    // As IM does: the top-level code is non-zero only when every account failed, and then it
    // is the accounts' own code (70107 when none of them exists), with the ErrorList beside it.
    if response.query_result.is_empty() {
        if let Some(first) = response.error_list.first() {
            response.error_code = Some(first.error_code);
            response.action_status = Some("FAIL".into());
            response.error_info = Some("no account of the request could be queried".into());
        }
    }
    {
        let mut stats = state.stats.lock().expect("stats");
        stats.answered_ok += 1;
        stats.accounts_queried += ids.len() as u64;
    }
    let mut doc = serde_json::to_value(&response).expect("answers serialize");
    if config.legacy_state_field {
        // As on the original querystate page: `State` per account, `Status` inside `Detail`.
        for item in doc["QueryResult"].as_array_mut().into_iter().flatten() {
            if let Some(status) = item.as_object_mut().and_then(|o| o.remove("Status")) {
                item["State"] = status;
            }
        }
    }
    let mut body = doc.to_string();
    if fault == Some(Fault::Truncated) {
        state.count_error("truncated_body");
        body.truncate(body.len() / 2);
    }
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Code(i64),
    Http502,
    Truncated,
    Html,
}

/// Everything IM checks before it looks at accounts, in roughly IM's order.
fn check_request(
    state: &SimState,
    config: &SimConfig,
    method: Method,
    raw_query: Option<&str>,
    body: &[u8],
) -> Result<(Vec<String>, bool), (i64, &'static str)> {
    if method != Method::POST {
        return Err((60002, "HTTP method must be POST"));
    }
    let params: BTreeMap<String, String> = raw_query
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let sdkappid: u64 = params
        .get("sdkappid")
        .and_then(|s| s.parse().ok())
        .ok_or((60012, "sdkappid missing or invalid"))?;
    if sdkappid != config.sdkappid {
        return Err((70020, "SDKAppID not found in this region"));
    }
    if params.get("contenttype").map(String::as_str) != Some("json") {
        return Err((60002, "contenttype must be json"));
    }
    match params.get("random").map(|r| r.parse::<u64>()) {
        Some(Ok(r)) if r <= u64::from(u32::MAX) => {}
        _ => return Err((60003, "random must be a 32-bit unsigned integer")),
    }
    let identifier = params
        .get("identifier")
        .ok_or((60003, "identifier missing"))?;
    let sig = params.get("usersig").map(String::as_str).unwrap_or("");
    let unix_now = now_millis() / 1000;
    usersig::verify(sig, &config.secret_key, sdkappid, identifier, unix_now)
        .map_err(|e| (sig_code(&e), "UserSig check failed"))?;
    if *identifier != config.admin {
        return Err((90009, "identifier is not an app administrator"));
    }
    if config.calls_per_second > 0.0 && !admit(state, config.calls_per_second) {
        return Err((60011, "call frequency exceeded"));
    }
    let req: RawRequest =
        serde_json::from_slice(body).map_err(|_| (90001, "Fail to Parse json data"))?;
    let ids = match req.to_account {
        Some(serde_json::Value::Array(items)) if !items.is_empty() => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) if !s.is_empty() => Ok(s),
                _ => Err((90003, "To_Account must hold non-empty strings")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err((90003, "To_Account must be a non-empty array")),
    };
    if ids.len() > config.max_accounts_per_call {
        return Err((90011, "too many accounts in one call"));
    }
    let detail = match req.is_need_detail {
        None => false,
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(0) => false,
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(1) => true,
        Some(_) => return Err((90001, "IsNeedDetail must be 0 or 1")),
    };
    Ok((ids, detail))
}

/// GCRA with a tolerance of a twentieth of a second's calls: at most `rate` calls per second
/// on average, small bursts allowed.
fn admit(state: &SimState, rate: f64) -> bool {
    let now = state.started.elapsed().as_secs_f64();
    let interval = 1.0 / rate;
    let tolerance = (rate / 20.0).max(1.0) * interval;
    let mut pacer = state.pacer.lock().expect("pacer");
    let tat = pacer.tat.max(now);
    if tat - now > tolerance {
        return false;
    }
    pacer.tat = tat + interval;
    true
}

// ---- control API ---------------------------------------------------------------------------

#[derive(Serialize)]
struct AccountList {
    accounts: Vec<AccountView>,
}

async fn list_accounts(State(state): State<Arc<SimState>>) -> Json<AccountList> {
    let compression = state.config.lock().expect("config").time_compression;
    let now = state.now_ms(compression);
    Json(AccountList {
        accounts: state.population.lock().expect("population").all(now),
    })
}

async fn get_account(State(state): State<Arc<SimState>>, Path(id): Path<String>) -> Response {
    let compression = state.config.lock().expect("config").time_compression;
    let now = state.now_ms(compression);
    match state.population.lock().expect("population").view(&id, now) {
        Some(v) => Json(v).into_response(),
        None => (StatusCode::NOT_FOUND, "no such account").into_response(),
    }
}

#[derive(Deserialize)]
struct SetAccount {
    platforms: Vec<PlatformStatus>,
}

async fn put_account(
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

async fn delete_account(State(state): State<Arc<SimState>>, Path(id): Path<String>) -> StatusCode {
    if state.population.lock().expect("population").delete(&id) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn get_stats(State(state): State<Arc<SimState>>) -> Json<SimStats> {
    Json(state.stats.lock().expect("stats").clone())
}

async fn get_faults(State(state): State<Arc<SimState>>) -> Json<Faults> {
    Json(state.config.lock().expect("config").faults.clone())
}

async fn put_faults(
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
struct Churn {
    churn_per_second: f64,
}

async fn put_churn(
    State(state): State<Arc<SimState>>,
    Json(churn): Json<Churn>,
) -> Result<Json<Churn>, (StatusCode, String)> {
    check_churn(churn.churn_per_second).map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))?;
    state.config.lock().expect("config").churn_per_second = churn.churn_per_second;
    Ok(Json(churn))
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
