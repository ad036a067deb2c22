//! `/metrics`, `/healthz` and `/readyz`, bound to localhost by default.

use crate::listener::Limits;
use crate::metrics::Metrics;
use crate::publish::kafka::health::BrokerHealth;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What the health endpoints report.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once start-up finished and cleared when sweeping stops for a configuration error.
    pub ready: AtomicBool,
    /// The Kafka producer's view of its brokers: not ready while they refuse our credentials.
    /// Replaced each time a standby instance becomes the active.
    pub kafka: std::sync::Mutex<Option<Arc<BrokerHealth>>>,
    /// Set after `service.unready_after_failed_sweeps` sweeps in a row observed nothing.
    pub sweeps_failing: AtomicBool,
    /// Set while the database has no room to write.
    pub store_full: AtomicBool,
    /// The standby role and where following stands (`GET /standby`); `None` without `[standby]`.
    pub standby: std::sync::Mutex<Option<crate::standby::StandbyStatus>>,
}

impl Health {
    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && !self.sweeps_failing.load(Ordering::Relaxed)
            && !self.store_full.load(Ordering::Relaxed)
            && !self.publisher().is_some_and(|k| k.blocks_readiness())
    }

    /// The running publisher's view of its brokers, if one runs.
    fn publisher(&self) -> Option<Arc<BrokerHealth>> {
        self.kafka.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Says which publisher's health counts (`None` once it stopped).
    pub fn set_publisher(&self, health: Option<Arc<BrokerHealth>>) {
        *self.kafka.lock().unwrap_or_else(|e| e.into_inner()) = health;
    }

    /// Whether the running publisher was fenced by another producer with its ids.
    pub fn publisher_fenced(&self) -> bool {
        self.publisher().is_some_and(|k| k.is_fenced())
    }
}

/// Scrapers and probes are few and quick: a flood on this port cannot take the descriptors
/// the rest of the daemon needs.
const LIMITS: Limits = Limits {
    max_connections: 64,
    idle_timeout: std::time::Duration::from_secs(10),
};

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Serves the endpoints on `addr` until `stop`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/standby", get(standby))
        .with_state(AppState {
            metrics: metrics.clone(),
            health,
        });
    crate::listener::spawn("metrics", listener, app, LIMITS, metrics, shutdown);
    Ok(bound)
}

/// OpenMetrics when the scraper asks for it (Prometheus does), the classic text format otherwise.
async fn metrics_text(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
) -> ([(&'static str, &'static str); 1], String) {
    s.metrics.ready.set(i64::from(s.health.is_ready()));
    let openmetrics = headers
        .get_all(axum::http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    match openmetrics {
        true => (
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            s.metrics.encode(),
        ),
        false => (
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            s.metrics.encode_classic(),
        ),
    }
}

async fn ready(State(s): State<AppState>) -> (StatusCode, String) {
    // With `[standby]`, the role and the lag say which instance this is.
    let role = s
        .health
        .standby
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|st| match st.role.as_str() {
            "active" => " (standby: active)".to_owned(),
            role => format!(
                " (standby: {role}, lag {} events, {:.1} s)",
                st.lag_events, st.lag_seconds
            ),
        })
        .unwrap_or_default();
    if s.health.is_ready() {
        (StatusCode::OK, format!("ready{role}\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready{role}\n"),
        )
    }
}

/// The standby role, as JSON; 404 without `[standby]`.
async fn standby(State(s): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let status = s
        .health
        .standby
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match status {
        Some(status) => axum::Json(status).into_response(),
        None => (StatusCode::NOT_FOUND, "standby is not enabled\n").into_response(),
    }
}
