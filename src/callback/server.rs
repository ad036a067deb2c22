//! The HTTP endpoint IM posts callbacks to. It answers within IM's two seconds whatever
//! happens next: an accepted hint only joins the queue, and the re-query runs elsewhere.

use super::queue::{HintQueue, Pushed};
use super::verify::{parse_body, EventWindow, Params, Parsed, Rejection, Verifier};
use crate::metrics::{CallbackLabels, Metrics};
use crate::model::now_millis;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// IM's expected answer to a callback it may consider handled.
pub const OK_BODY: &str = r#"{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}"#;

/// How often one kind of refused or dropped callback is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// What the endpoint needs.
#[derive(Debug)]
pub struct Endpoint {
    /// Checks the query parameters; a reload may replace it (a rotated console token).
    verifier: RwLock<Verifier>,
    /// Where accepted hints go.
    pub queue: Arc<HintQueue>,
    /// Where they are counted.
    pub metrics: Arc<Metrics>,
    /// Larger bodies are refused.
    pub max_body_bytes: usize,
    /// Last time each kind was logged, and how many went unlogged since.
    logged: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Endpoint {
    /// An endpoint feeding `queue`.
    pub fn new(
        verifier: Verifier,
        queue: Arc<HintQueue>,
        metrics: Arc<Metrics>,
        max_body_bytes: usize,
    ) -> Self {
        Endpoint {
            verifier: RwLock::new(verifier),
            queue,
            metrics,
            max_body_bytes,
            logged: Mutex::new(HashMap::new()),
        }
    }

    /// Checks callbacks from now on with `verifier`: a reload with a new token or skew.
    pub fn set_verifier(&self, verifier: Verifier) {
        *self.verifier.write().expect("verifier lock") = verifier;
    }

    fn count(&self, command: &str, action: &str, outcome: &str) {
        self.metrics
            .callbacks
            .get_or_create(&CallbackLabels {
                command: command_label(command).into(),
                action: action_label(action).into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Logs a refused or dropped callback, once a minute per kind with the count since.
    fn log(&self, kind: &'static str, detail: &str) {
        let mut logged = self.logged.lock().expect("log times");
        let entry = logged
            .entry(kind)
            .or_insert((Instant::now() - LOG_EVERY * 2, 0));
        if entry.0.elapsed() < LOG_EVERY {
            entry.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut entry.1);
        entry.0 = Instant::now();
        drop(logged);
        tracing::warn!(
            kind,
            detail,
            suppressed_since_last = suppressed,
            "callback refused or dropped (logged once a minute per kind; all are counted in presenced_callbacks_total)"
        );
    }

    /// A refusal: counted, logged once a minute per kind, and IM's FAIL body.
    fn refuse(&self, command: &str, r: Rejection, detail: &str) -> (u16, String) {
        self.count(command, "", r.as_str());
        self.log(r.as_str(), detail);
        (
            r.status(),
            format!(
                r#"{{"ActionStatus":"FAIL","ErrorCode":{},"ErrorInfo":"{}"}}"#,
                r.status(),
                r.as_str()
            ),
        )
    }

    /// Checks a request's query (app, signature, freshness) before its body is read: a
    /// refusal to answer at once, or `None`.
    pub fn refuse_query(&self, query: &str) -> Option<(u16, String)> {
        let params = Params::parse(query);
        self.check_query(&params).err()
    }

    fn check_query(&self, params: &Params) -> Result<(), (u16, String)> {
        let command = params.command.clone().unwrap_or_default();
        let now_secs = now_millis() / 1000;
        let checked = {
            let verifier = self.verifier.read().expect("verifier lock");
            verifier.check(params, now_secs).map_err(|r| {
                let window = (verifier.max_skew_secs, verifier.max_future_secs);
                (r, verifier.sdkappid, window)
            })
        };
        let Err((r, sdkappid, (max_skew_secs, max_future_secs))) = checked else {
            return Ok(());
        };
        let detail = match r {
            Rejection::WrongApp => format!(
                "SdkAppid {:?}, expected {sdkappid}",
                params.sdkappid.as_deref().unwrap_or(""),
            ),
            Rejection::Stale => format!(
                "RequestTime more than {max_skew_secs} s in the past or {max_future_secs} s in the future (a replay, or this host's clock is off)",
            ),
            _ => "Sign does not match callback.token".into(),
        };
        Err(self.refuse(&command, r, &detail))
    }

    /// Refuses a request whose body could not be read: too large (by its Content-Length or as
    /// it arrived), too slow, or cut off.
    pub fn refuse_body(&self, query: &str, r: Rejection) -> (u16, String) {
        let command = Params::parse(query).command.unwrap_or_default();
        let detail = match r {
            Rejection::TooLarge => format!(
                "body over callback.max_body_bytes ({})",
                self.max_body_bytes
            ),
            Rejection::SlowBody => format!(
                "the body did not arrive within {} ms (a slow or stalled client)",
                BODY_DEADLINE.as_millis()
            ),
            _ => "the body was cut off before its end".into(),
        };
        self.refuse(&command, r, &detail)
    }

    /// Handles one request: the status and body to answer.
    pub fn handle(&self, query: &str, body: Result<&[u8], Rejection>) -> (u16, String) {
        let params = Params::parse(query);
        let command = params.command.clone().unwrap_or_default();
        let refuse = |r: Rejection, detail: &str| self.refuse(&command, r, detail);
        if let Err(refused) = self.check_query(&params) {
            return refused;
        }
        let body = match body {
            Ok(b) => b,
            Err(r) => return self.refuse_body(query, r),
        };
        let window = {
            let verifier = self.verifier.read().expect("verifier lock");
            let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
            EventWindow {
                past_ms: ms(verifier.max_skew_secs),
                future_ms: ms(verifier.max_future_secs),
            }
        };
        let parsed = match parse_body(body, params.command.as_deref(), now_millis(), window) {
            Ok(p) => p,
            Err(r) => {
                let detail = match r {
                    Rejection::NoAccount => "State.StateChange without Info.To_Account",
                    _ => "the body is not a callback's JSON",
                };
                return refuse(r, detail);
            }
        };
        match parsed {
            Parsed::Other { command } => self.count(&command, "", "unknown_command"),
            // A custom status says nothing about the connection.
            Parsed::StateChange { hint, .. } if hint.action == "CustomStatusChange" => {
                self.count(super::verify::STATE_CHANGE, &hint.action, "ignored_action")
            }
            Parsed::StateChange {
                user_id,
                hint,
                replaced,
            } => {
                for field in &replaced {
                    self.metrics.callback_values_replaced(field);
                }
                if !replaced.is_empty() {
                    self.log(
                        "replaced",
                        "a callback carried values IM does not document (stored as \"other\") or an EventTime outside the allowed skew (clamped)",
                    );
                }
                let action = hint.action.clone();
                let pushed = self.queue.push(&user_id, hint, tokio::time::Instant::now());
                self.count(super::verify::STATE_CHANGE, &action, pushed.as_str());
                self.metrics.hint_queue_length.set(self.queue.len() as i64);
                if pushed == Pushed::Overflow {
                    self.log(
                        "overflow",
                        "the hint queue is full (callback.queue_capacity): the next sweep sees these changes",
                    );
                }
            }
        }
        (200, OK_BODY.to_owned())
    }
}

fn command_label(command: &str) -> &'static str {
    match command {
        "State.StateChange" => "State.StateChange",
        "" => "",
        _ => "other",
    }
}

fn action_label(action: &str) -> &'static str {
    match action {
        "Login" => "Login",
        "Logout" => "Logout",
        "Disconnect" => "Disconnect",
        "CustomStatusChange" => "CustomStatusChange",
        "" => "",
        _ => "other",
    }
}

/// How long a callback's body may take to arrive once its headers are in: IM gives up after
/// two seconds, so a body slower than that is not IM's.
const BODY_DEADLINE: Duration = Duration::from_secs(2);

fn respond((status, text): (u16, String)) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        [(header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}

/// The query is checked before the body is read, and a declared length over the limit is
/// refused without reading it.
async fn callback(
    State(endpoint): State<Arc<Endpoint>>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    let query = query.unwrap_or_default();
    if let Some(refused) = endpoint.refuse_query(&query) {
        return respond(refused);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > endpoint.max_body_bytes as u64) {
        return respond(endpoint.refuse_body(&query, Rejection::TooLarge));
    }
    let read = tokio::time::timeout(
        BODY_DEADLINE,
        axum::body::to_bytes(body, endpoint.max_body_bytes),
    )
    .await;
    let bytes = match read {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|c| c.is::<http_body_util::LengthLimitError>());
            let r = match too_large {
                true => Rejection::TooLarge,
                false => Rejection::IncompleteBody,
            };
            return respond(endpoint.refuse_body(&query, r));
        }
        Err(_) => return respond(endpoint.refuse_body(&query, Rejection::SlowBody)),
    };
    respond(endpoint.handle(&query, Ok(&bytes)))
}

/// Requests for another path or with another method: counted, so a scan of the port shows.
async fn not_found(State(endpoint): State<Arc<Endpoint>>) -> Response {
    endpoint.count("", "", "not_found");
    respond((404, String::new()))
}

async fn method_not_allowed(State(endpoint): State<Arc<Endpoint>>) -> Response {
    endpoint.count("", "", "method_not_allowed");
    respond((405, String::new()))
}

/// Serves the endpoint on `addr` at `path` until `stop`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    path: &str,
    endpoint: Arc<Endpoint>,
    limits: crate::listener::Limits,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let metrics = endpoint.metrics.clone();
    let app = Router::new()
        .route(path, post(callback))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // The body limit is the endpoint's own, so that an oversized body is counted.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(endpoint);
    crate::listener::spawn("callback", listener, app, limits, metrics, stop);
    Ok(bound)
}
