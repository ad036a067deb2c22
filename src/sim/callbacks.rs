//! The simulator's `State.StateChange` callbacks: POSTed to a configured URL as its churn
//! changes accounts, shaped and signed as IM sends them, with IM's unreliability on demand
//! (drops, duplicates, delays that reorder, reconnects and kicks that announce nothing). The
//! 7-day PushOnline expiry announces nothing, as in IM.

use super::population::Change;
use crate::model::now_millis;
use crate::secret::Secret;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Where and how callbacks are sent (`[callback]` of the simulator's TOML).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SimCallbacks {
    /// The URL IM would call (the daemon's `callback.path` on its `callback.listen`); empty
    /// sends none.
    pub url: String,
    /// The console's callback token: each callback then carries `Sign` and `RequestTime`.
    #[serde(skip_serializing)]
    pub token: Secret,
    /// Share of callbacks never sent (IM does not retry).
    pub drop_rate: f64,
    /// Share of callbacks sent twice.
    pub duplicate_rate: f64,
    /// Each callback waits a random 0 to this many milliseconds, so they arrive out of order.
    pub max_delay_ms: f64,
    /// Share of disconnects announced by nothing (the client reconnected before IM noticed).
    pub silent_disconnect_rate: f64,
    /// Share of multi-device kicks announced by the Login alone (newer SDKs); the others also
    /// send a Logout for the kicked device first.
    pub kick_login_only_rate: f64,
}

impl SimCallbacks {
    /// Probabilities from 0 to 1 and delays up to a minute.
    pub fn check(&self) -> Result<(), String> {
        for (name, p) in [
            ("drop_rate", self.drop_rate),
            ("duplicate_rate", self.duplicate_rate),
            ("silent_disconnect_rate", self.silent_disconnect_rate),
            ("kick_login_only_rate", self.kick_login_only_rate),
        ] {
            if !(p.is_finite() && (0.0..=1.0).contains(&p)) {
                return Err(format!(
                    "callback.{name}: a probability is from 0 to 1, got {p}"
                ));
            }
        }
        if !(self.max_delay_ms.is_finite() && (0.0..=60_000.0).contains(&self.max_delay_ms)) {
            return Err(format!(
                "callback.max_delay_ms must be from 0 to 60000, got {}",
                self.max_delay_ms
            ));
        }
        if !self.url.is_empty() && reqwest::Url::parse(&self.url).is_err() {
            return Err(format!("callback.url {:?} is not a URL", self.url));
        }
        Ok(())
    }
}

/// What the sender did, for the control API's stats.
#[derive(Debug, Default)]
pub struct CallbackCounts {
    /// Callbacks posted and answered 200.
    pub sent: AtomicU64,
    /// Not sent by the configured faults (drops, silent disconnects, login-only kicks).
    pub suppressed: AtomicU64,
    /// Posted and refused, or not answered.
    pub failed: AtomicU64,
}

/// The callback platform name for a query platform name (`KickedDevice` and `OptPlatform`).
pub fn callback_platform(query_platform: &str) -> &str {
    match query_platform {
        "iPhone" => "iOS",
        "PC" => "Windows",
        other => other,
    }
}

/// One callback ready to post.
#[derive(Debug, Clone)]
pub struct Announcement {
    /// The account.
    pub user_id: String,
    /// Login, Logout, Disconnect.
    pub action: String,
    /// Register, Unregister, LinkClose, TimeOut.
    pub reason: String,
    /// Query name of the device's platform.
    pub platform: String,
    /// Query names of kicked platforms.
    pub kicked: Vec<String>,
    /// When the change happened (ms since the epoch): the callback's `EventTime`.
    pub event_time: i64,
}

impl Announcement {
    /// The callback of a churn change that happened now.
    pub fn of(change: Change) -> Self {
        Announcement {
            user_id: change.user_id,
            action: change.action.into(),
            reason: change.reason.into(),
            platform: change.platform,
            kicked: change.kicked,
            event_time: now_millis(),
        }
    }

    fn body(&self) -> serde_json::Value {
        let kicked: Vec<_> = self
            .kicked
            .iter()
            .map(|p| serde_json::json!({ "Platform": callback_platform(p) }))
            .collect();
        let mut body = serde_json::json!({
            "CallbackCommand": "State.StateChange",
            "EventTime": self.event_time,
            "Info": { "Action": self.action, "To_Account": self.user_id, "Reason": self.reason },
        });
        if !kicked.is_empty() {
            body["KickedDevice"] = serde_json::Value::Array(kicked);
        }
        body
    }
}

/// Posts announcements to the configured URL in the background.
#[derive(Debug, Clone)]
pub struct CallbackSender {
    tx: mpsc::Sender<Announcement>,
    /// What it did.
    pub counts: Arc<CallbackCounts>,
}

impl CallbackSender {
    /// Starts the sender for `sdkappid`; `settings` are read for every callback, so faults can
    /// change while it runs.
    pub fn start(sdkappid: u64, settings: Arc<std::sync::Mutex<SimCallbacks>>) -> Self {
        let (tx, mut rx) = mpsc::channel::<Announcement>(100_000);
        let counts = Arc::new(CallbackCounts::default());
        let task_counts = counts.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client");
            while let Some(a) = rx.recv().await {
                let s = settings.lock().expect("callback settings").clone();
                for a in expand(a, &s, &task_counts) {
                    let (copies, delay) = {
                        let mut rng = rand::rng();
                        let copies = 1 + usize::from(rng.random_bool(s.duplicate_rate));
                        let delay = match s.max_delay_ms > 0.0 {
                            true => rng.random_range(0.0..s.max_delay_ms),
                            false => 0.0,
                        };
                        (copies, Duration::from_secs_f64(delay / 1000.0))
                    };
                    for _ in 0..copies {
                        let http = http.clone();
                        let (a, s, counts) = (a.clone(), s.clone(), task_counts.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let ok = post(&http, &s, sdkappid, &a).await;
                            let counter = if ok { &counts.sent } else { &counts.failed };
                            counter.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                }
            }
        });
        CallbackSender { tx, counts }
    }

    /// Queues a callback; dropped (and counted as failed) if the sender is far behind.
    pub fn announce(&self, a: Announcement) {
        if self.tx.try_send(a).is_err() {
            self.counts.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The callbacks one change sends under the configured faults.
fn expand(a: Announcement, s: &SimCallbacks, counts: &CallbackCounts) -> Vec<Announcement> {
    let mut rng = rand::rng();
    let suppressed = rng.random_bool(s.drop_rate)
        || (a.action == "Disconnect" && rng.random_bool(s.silent_disconnect_rate));
    if s.url.is_empty() || suppressed {
        counts.suppressed.fetch_add(1, Ordering::Relaxed);
        return vec![];
    }
    if a.kicked.is_empty() || rng.random_bool(s.kick_login_only_rate) {
        return vec![a];
    }
    let logout = Announcement {
        action: "Logout".into(),
        reason: "Unregister".into(),
        platform: a.kicked[0].clone(),
        kicked: vec![],
        ..a.clone()
    };
    vec![logout, a]
}

/// Posts one callback at once, outside the faults; whether it was answered 200.
pub async fn post_now(s: &SimCallbacks, sdkappid: u64, a: &Announcement) -> bool {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    post(&http, s, sdkappid, a).await
}

/// Posts one callback as IM does; whether it was answered 200.
async fn post(http: &reqwest::Client, s: &SimCallbacks, sdkappid: u64, a: &Announcement) -> bool {
    let Ok(mut url) = reqwest::Url::parse(&s.url) else {
        return false;
    };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("SdkAppid", &sdkappid.to_string())
            .append_pair("CallbackCommand", "State.StateChange")
            .append_pair("contenttype", "json")
            .append_pair("ClientIP", "127.0.0.1")
            .append_pair(
                "OptPlatform",
                &callback_platform(&a.platform).to_ascii_uppercase(),
            );
        if !s.token.is_empty() {
            let time = (now_millis() / 1000).to_string();
            q.append_pair("Sign", &crate::callback::sign(s.token.expose(), &time))
                .append_pair("RequestTime", &time);
        }
    }
    match http.post(url).json(&a.body()).send().await {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    }
}
