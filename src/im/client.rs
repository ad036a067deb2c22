//! The `query_online_status` client: signs, paces, retries, and reads answers strictly.

use super::codes::{self, ErrorClass};
use super::config::{Command, ImConfig};
use super::lease::CallLease;
use super::ratelimit::{Grant, Lane, RateLimiter};
use super::usersig;
use super::wire::{self, AccountOutcome, AnswerError, QueryRequest};
use crate::metrics::Metrics;
use crate::secret::Secret;
use rand::Rng;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Everything the client needs, resolved from configuration.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Base URL without the command path, e.g. `https://console.tim.qq.com/`.
    pub base_url: reqwest::Url,
    /// `query_online_status` or the older `querystate`.
    pub command: Command,
    /// The app's SDKAppID.
    pub sdkappid: u64,
    /// The administrator account the UserSig is made for.
    pub identifier: String,
    /// The key UserSigs are signed with.
    pub secret_key: Secret,
    /// Whether to ask for per-platform detail.
    pub need_detail: bool,
    /// Per-call timeout.
    pub timeout: Duration,
    /// The configured ceiling of calls per second.
    pub calls_per_second: f64,
    /// Calls outstanding at once.
    pub max_in_flight: usize,
    /// Attempts per batch before its accounts count as failed.
    pub max_attempts: u32,
    /// First wait between attempts; doubles per attempt...
    pub backoff_initial: Duration,
    /// ...up to this.
    pub backoff_max: Duration,
    /// Lifetime of a generated UserSig.
    pub usersig_ttl_secs: i64,
    /// How long to wait for another task regenerating the UserSig.
    pub signature_lock_wait: Duration,
}

impl ClientSettings {
    /// The client's settings from `[im]`; fails when the endpoint is not usable.
    pub fn from_config(c: &ImConfig) -> Result<Self, QueryError> {
        let base_url = c.endpoint().map_err(|e| QueryError::Configuration {
            code: None,
            message: format!("{}: {}", e.key, e.message),
        })?;
        Ok(ClientSettings {
            base_url,
            command: c.command,
            sdkappid: c.sdkappid,
            identifier: c.identifier.clone(),
            secret_key: c.secret_key.clone(),
            need_detail: c.need_detail,
            timeout: Duration::from_secs_f64(c.timeout_secs),
            calls_per_second: c.calls_per_second,
            max_in_flight: c.max_in_flight,
            max_attempts: c.max_attempts,
            backoff_initial: Duration::from_millis(c.backoff_initial_ms),
            backoff_max: Duration::from_millis(c.backoff_max_ms),
            usersig_ttl_secs: c.usersig_ttl_secs,
            signature_lock_wait: Duration::from_secs(c.signature_lock_wait_secs),
        })
    }
}

/// Why one HTTP exchange produced no answer. Never carries the URL (it holds the UserSig).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No answer within the timeout.
    #[error("timed out")]
    Timeout,
    /// The connection failed (DNS, TCP, TLS).
    #[error("connection failed: {0}")]
    Transport(String),
    /// An HTTP status other than 200.
    #[error("HTTP status {0}")]
    Http(u16),
    /// A 200 whose body is not a usable answer.
    #[error(transparent)]
    Answer(#[from] AnswerError),
}

impl CallError {
    fn class(&self) -> ErrorClass {
        match self {
            CallError::Timeout | CallError::Transport(_) => ErrorClass::Transient,
            CallError::Http(status) if *status >= 500 || *status == 429 => ErrorClass::Transient,
            CallError::Http(_) => ErrorClass::ClientBug,
            CallError::Answer(AnswerError::Malformed(_)) => ErrorClass::Transient,
            CallError::Answer(AnswerError::Api { code, .. }) => ErrorClass::of(*code),
        }
    }

    fn metric_code(&self) -> String {
        match self {
            CallError::Timeout => "timeout".into(),
            CallError::Transport(_) => "transport".into(),
            CallError::Http(s) => format!("http_{s}"),
            CallError::Answer(AnswerError::Malformed(_)) => "malformed".into(),
            CallError::Answer(AnswerError::Api { code, .. }) => code.to_string(),
        }
    }
}

/// A batch that yielded no observation. Distinct from any per-account outcome on purpose: a
/// failed batch can never be read as "these accounts are offline".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Every attempt failed with a retriable error.
    #[error("batch failed after {attempts} attempts: {last}")]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: CallError,
    },
    /// IM rejected the call in a way retrying cannot fix (for this batch).
    #[error("IM rejected the request as malformed (a client bug, not retried): {0}")]
    Rejected(CallError),
    /// IM says the configuration is wrong (key, administrator, region): sweeping stops.
    #[error("configuration error{}: {message}", code.map(|c| format!(" (IM code {c})")).unwrap_or_default())]
    Configuration {
        /// IM's error code, when IM said so.
        code: Option<i64>,
        /// What is wrong.
        message: String,
    },
    /// This instance may not call IM now: it is a standby active whose lease ran out (it could
    /// not commit a heartbeat in time), and a follower may be taking over.
    #[error("not called: this instance's standby lease ran out")]
    Withheld,
}

/// The per-account outcomes of one successful call, in the order asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAnswer {
    /// Each asked account's outcome.
    pub outcomes: Vec<(String, AccountOutcome)>,
}

#[derive(Debug)]
struct CachedSig {
    sig: Secret,
    refresh_after: SystemTime,
}

/// The IM REST client: signs, paces, retries; shared by the sweep's tasks.
#[derive(Debug)]
pub struct ImClient {
    http: reqwest::Client,
    settings: ClientSettings,
    endpoint: reqwest::Url,
    limiter: RateLimiter,
    sig: Mutex<Option<CachedSig>>,
    metrics: Arc<Metrics>,
    /// Unix ms of the last moment a deliberate wait (a backoff, 70050's lock) was still on
    /// schedule: a sweep waiting a minute for IM is alive, not hung, for the watchdog.
    waiting: Arc<std::sync::atomic::AtomicI64>,
    /// Set in standby mode: no call goes out while it is not held.
    lease: OnceLock<Arc<CallLease>>,
}

impl ImClient {
    /// A client with these settings, reporting into `metrics`.
    pub fn new(settings: ClientSettings, metrics: Arc<Metrics>) -> Result<Self, QueryError> {
        // Never follow a redirect, and never say where a request came from: the URL carries
        // the UserSig, which is for IM (or the configured proxy) and no one else.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .timeout(settings.timeout)
            .pool_max_idle_per_host(settings.max_in_flight)
            .tcp_nodelay(true)
            .tcp_keepalive(Duration::from_secs(60))
            .build()
            .map_err(|e| QueryError::Configuration {
                code: None,
                message: e.without_url().to_string(),
            })?;
        let endpoint = settings
            .base_url
            .join(settings.command.path())
            .map_err(|e| QueryError::Configuration {
                code: None,
                message: format!("cannot build the endpoint URL: {e}"),
            })?;
        // Evenly spaced calls, no burst after an idle spell: IM's own counting window is not
        // documented, and spacing loses no throughput while enough calls are in flight.
        let limiter = RateLimiter::new(settings.calls_per_second);
        metrics.ratelimit_rate.set(limiter.current_rate());
        Ok(ImClient {
            http,
            endpoint,
            limiter,
            sig: Mutex::new(None),
            metrics,
            settings,
            waiting: Arc::new(std::sync::atomic::AtomicI64::new(0)),
            lease: OnceLock::new(),
        })
    }

    /// When a deliberate wait last showed it was on schedule (Unix ms), for the watchdog.
    pub fn waiting(&self) -> Arc<std::sync::atomic::AtomicI64> {
        self.waiting.clone()
    }

    /// Sleeps `delay` in steps of at most a second, marking each as progress.
    async fn wait(&self, delay: Duration) {
        let until = tokio::time::Instant::now() + delay;
        loop {
            self.waiting.store(
                crate::model::now_millis(),
                std::sync::atomic::Ordering::Relaxed,
            );
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        }
    }

    /// Calls go out only while `lease` is held (standby mode).
    pub fn require_lease(&self, lease: Arc<CallLease>) {
        let _ = self.lease.set(lease);
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// The pacing of its calls.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Queries one batch (at most 500 ids) in the sweep's lane, retrying as the error table says.
    pub async fn query(&self, ids: &[String]) -> Result<BatchAnswer, QueryError> {
        self.query_in(ids, Lane::Sweep, None).await
    }

    /// [`ImClient::query`] in the hinted lane (a callback's re-query), its first attempt in
    /// the slot of `grant` (from [`RateLimiter::try_acquire`]).
    pub async fn query_hinted(
        &self,
        ids: &[String],
        grant: Grant,
    ) -> Result<BatchAnswer, QueryError> {
        self.query_in(ids, Lane::Hinted, Some(grant)).await
    }

    async fn query_in(
        &self,
        ids: &[String],
        lane: Lane,
        mut reserved: Option<Grant>,
    ) -> Result<BatchAnswer, QueryError> {
        let mut regenerated_for_invalid = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let grant = self.pace(lane, reserved.take()).await;
            if self.lease.get().is_some_and(|l| !l.held()) {
                return Err(QueryError::Withheld);
            }
            let err = match self.call_once(ids).await {
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            };
            let class = err.class();
            self.metrics.api_error(&err.metric_code(), class.as_str());
            let code = match &err {
                CallError::Answer(AnswerError::Api { code, .. }) => Some(*code),
                _ => None,
            };
            match class {
                ErrorClass::Configuration => {
                    let code = code.unwrap_or_default();
                    return Err(QueryError::Configuration {
                        code: Some(code),
                        message: format!("{}: {}", codes::hint(code), err),
                    });
                }
                ErrorClass::ClientBug => return Err(QueryError::Rejected(err)),
                ErrorClass::SignatureInvalid if regenerated_for_invalid => {
                    let code = code.unwrap_or_default();
                    return Err(QueryError::Configuration {
                        code: Some(code),
                        message: format!("{}: {}", codes::hint(code), err),
                    });
                }
                ErrorClass::SignatureInvalid => {
                    regenerated_for_invalid = true;
                    self.invalidate_signature();
                }
                ErrorClass::SignatureExpired => self.invalidate_signature(),
                ErrorClass::RateLimited => {
                    self.limiter.on_throttled(grant);
                    self.metrics.ratelimit_rate.set(self.limiter.current_rate());
                }
                ErrorClass::SignatureLocked | ErrorClass::Transient | ErrorClass::Unknown => {}
            }
            if attempt >= self.settings.max_attempts {
                tracing::warn!(accounts = ids.len(), attempts = attempt, error = %err, "IM batch failed; its accounts stay unobserved this sweep");
                return Err(QueryError::Exhausted {
                    attempts: attempt,
                    last: err,
                });
            }
            let delay = if class == ErrorClass::SignatureLocked {
                self.settings.signature_lock_wait
            } else if matches!(
                class,
                ErrorClass::SignatureExpired | ErrorClass::SignatureInvalid
            ) {
                Duration::ZERO
            } else {
                self.backoff(attempt)
            };
            tracing::debug!(attempt, error = %err, class = class.as_str(), delay_ms = delay.as_millis() as u64, "retrying IM call");
            self.wait(delay).await;
        }
    }

    /// Full jitter: a random delay up to an exponentially growing, bounded ceiling.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self.settings.backoff_initial.as_secs_f64();
        let cap = self.settings.backoff_max.as_secs_f64();
        let ceiling = (base * 2f64.powi(attempt.saturating_sub(1).min(30) as i32)).min(cap);
        Duration::from_secs_f64(rand::rng().random_range(0.0..=ceiling.max(0.0)))
    }

    /// Waits for the call's slot (`reserved`, or the next in `lane`), and returns it.
    async fn pace(&self, lane: Lane, reserved: Option<Grant>) -> Grant {
        let asked = tokio::time::Instant::now();
        let grant = match reserved {
            Some(grant) => {
                tokio::time::sleep_until(grant.at).await;
                grant
            }
            None => self.limiter.acquire(lane).await,
        };
        self.metrics
            .ratelimit_wait_seconds
            .inc_by(grant.at.saturating_duration_since(asked).as_secs_f64());
        // The rate also climbs inside the limiter: keep the gauge current.
        self.metrics.ratelimit_rate.set(self.limiter.current_rate());
        grant
    }

    async fn call_once(&self, ids: &[String]) -> Result<BatchAnswer, CallError> {
        let sig = self.signature();
        let random: u32 = rand::rng().random();
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair("sdkappid", &self.settings.sdkappid.to_string())
            .append_pair("identifier", &self.settings.identifier)
            .append_pair("usersig", sig.expose())
            .append_pair("random", &random.to_string())
            .append_pair("contenttype", "json");
        let body = serde_json::to_vec(&QueryRequest {
            to_account: ids.iter().map(String::as_str).collect(),
            is_need_detail: u8::from(self.settings.need_detail),
        })
        .expect("request always serializes");
        let started = std::time::Instant::now();
        let result = self.exchange(url, body).await;
        self.metrics
            .api_call_duration
            .observe(started.elapsed().as_secs_f64());
        let bytes = result.inspect_err(|_| self.metrics.api_call("error"))?;
        let parsed = wire::parse_answer(&bytes).inspect_err(|_| self.metrics.api_call("error"))?;
        self.metrics.api_call("ok");
        let (outcomes, unasked) = wire::outcomes(ids, parsed);
        if !unasked.is_empty() {
            tracing::warn!(count = unasked.len(), first = %unasked[0], "IM answered for accounts that were not asked for; ignored");
        }
        Ok(BatchAnswer { outcomes })
    }

    async fn exchange(&self, url: reqwest::Url, body: Vec<u8>) -> Result<bytes::Bytes, CallError> {
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if status.is_redirection() {
            // Only the target's origin is shown: a Location may carry anything.
            let target = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| reqwest::Url::parse(l).ok())
                .map_or_else(|| "?".to_owned(), |u| u.origin().ascii_serialization());
            tracing::warn!(
                status = status.as_u16(),
                target,
                "IM answered with a redirect, which is not followed (the request carries the UserSig); point im.base_url at the final address"
            );
        }
        if !status.is_success() {
            return Err(CallError::Http(status.as_u16()));
        }
        response.bytes().await.map_err(transport_error)
    }

    /// The cached UserSig, regenerated when a fifth of its lifetime is left.
    fn signature(&self) -> Secret {
        let mut cache = self.sig.lock().expect("signature lock");
        let now = SystemTime::now();
        if let Some(c) = cache.as_ref() {
            if now < c.refresh_after {
                return c.sig.clone();
            }
        }
        let unix = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
        let ttl = self.settings.usersig_ttl_secs;
        let sig = usersig::generate(
            &self.settings.secret_key,
            &self.settings.identifier,
            self.settings.sdkappid,
            unix,
            ttl,
        );
        *cache = Some(CachedSig {
            sig: sig.clone(),
            refresh_after: now + Duration::from_secs((ttl as u64) * 4 / 5),
        });
        sig
    }

    fn invalidate_signature(&self) {
        *self.sig.lock().expect("signature lock") = None;
    }
}

/// reqwest's errors print the URL, which carries the UserSig: strip it before anything sees it.
fn transport_error(e: reqwest::Error) -> CallError {
    if e.is_timeout() {
        return CallError::Timeout;
    }
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    CallError::Transport(text)
}
