//! The simulated `query_online_status` / `querystate` endpoint: IM's checks in IM's order,
//! with its error codes, then the accounts' answers.

use super::*;
use crate::im::usersig::{self, SigError};
use crate::im::wire::{AccountError, AccountResult, PlatformDetail, QueryResponse};
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

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

pub(super) async fn query(
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
        let mut shown_log = state.shown.lock().expect("shown");
        let at = crate::model::now_millis();
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
            // A truncated answer shows the poller nothing.
            let reaches = fault != Some(Fault::Truncated);
            let answered = population.answer(id, now, reaches);
            if let (Some((_, true)), Some(log)) = (&answered, shown_log.as_mut()) {
                log.push((id.clone(), at));
            }
            let view = answered.map(|(view, _)| view);
            match view {
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
