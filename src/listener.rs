//! Serves a router on a listener that defends its process: at most so many connections at
//! once (the rest wait in the kernel's backlog, holding no descriptor of ours), a connection
//! that sends no complete request head within the idle timeout is closed (an idle keep-alive
//! or a slow client alike), and accept errors (out of descriptors) are logged, rate-limited,
//! without ending the loop.

use crate::metrics::{ListenerLabels, Metrics};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How often an accept error is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(30);
/// The pause after an accept error, so that running out of descriptors is not a busy loop.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A listener's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// A connection sending no complete request head for this long is closed.
    pub idle_timeout: Duration,
}

impl Limits {
    /// `max_connections` lowered to a quarter of this process's descriptor limit, so that a
    /// full listener still leaves descriptors for the database, Kafka, IM and the other
    /// listener.
    pub fn within_descriptor_limit(self, name: &str) -> Limits {
        let Some(fds) = descriptor_limit() else {
            return self;
        };
        let most = (fds / 4).max(8);
        if self.max_connections <= most {
            return self;
        }
        tracing::warn!(
            listener = name,
            configured = self.max_connections,
            allowed = most,
            descriptor_limit = fds,
            "the connection cap is lowered to a quarter of the descriptor limit (raise LimitNOFILE to allow more)"
        );
        Limits {
            max_connections: most,
            ..self
        }
    }
}

/// The soft `RLIMIT_NOFILE`, if it has one.
fn descriptor_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as usize)
}

/// Serves `router` on `listener` until `shutdown`, then lets requests in progress finish.
pub fn spawn(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let labels = ListenerLabels {
        listener: name.into(),
    };
    metrics
        .http_max_connections
        .get_or_create(&labels)
        .set(limits.max_connections as i64);
    tokio::spawn(accept_loop(
        name, listener, router, limits, metrics, labels, shutdown,
    ));
}

async fn accept_loop(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    labels: ListenerLabels,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let open = metrics.http_open_connections.get_or_create(&labels).clone();
    let accept_errors = metrics.http_accept_errors.get_or_create(&labels).clone();
    let mut last_logged: Option<Instant> = None;
    let mut unlogged = 0u64;
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
            _ = shutdown.cancelled() => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_errors.inc();
                unlogged += 1;
                if last_logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    tracing::error!(listener = name, error = %e, errors_since_last = unlogged, "cannot accept connections (logged at most every 30 s; counted in presenced_http_accept_errors_total)");
                    last_logged = Some(Instant::now());
                    unlogged = 0;
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let open = OpenConnection::new(open.clone());
        let (router, shutdown) = (router.clone(), shutdown.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.idle_timeout)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(open);
            drop(permit);
        });
    }
}

/// One open connection in the gauge, for as long as it lives (a panicking task included).
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl OpenConnection {
    fn new(gauge: prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
