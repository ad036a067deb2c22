//! `[callback]`: the endpoint IM's `State.StateChange` callbacks are sent to, and how the
//! re-queries they ask for are coalesced.

use super::verify::Verifier;
use crate::secret::{serialize_redacted, Secret};
use crate::validation::{Invalid, Range, Section};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// `[callback]`. Off while `listen` is empty.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallbackConfig {
    /// Address the endpoint listens on, e.g. `127.0.0.1:9465` behind a TLS reverse proxy;
    /// empty (the default) turns callbacks off.
    pub listen: String,
    /// The URL path IM posts to (the console's callback URL ends with it).
    pub path: String,
    /// The console's callback authentication token; when set, every callback must carry a
    /// valid `Sign` and a fresh `RequestTime`. Prefer `token_file`.
    #[serde(serialize_with = "serialize_redacted")]
    pub token: Secret,
    /// A file holding the token (read when `token` is empty).
    pub token_file: Option<PathBuf>,
    /// Accept callbacks without a token (unsigned): anyone who reaches the endpoint can then
    /// ask for re-queries. Off: an endpoint without a token is refused at start.
    pub allow_unsigned: bool,
    /// How far `RequestTime` may lie in the past of this host's clock, seconds; older callbacks
    /// are refused as replays (a captured signature authorises any body within this window).
    pub max_clock_skew_secs: u64,
    /// How far `RequestTime` may lie in the future of this host's clock, seconds.
    pub max_future_skew_secs: u64,
    /// Larger bodies are refused (IM's callbacks are a few hundred bytes).
    pub max_body_bytes: usize,
    /// How long a hinted account waits for others to share its call, milliseconds.
    pub coalesce_ms: u64,
    /// One account is re-queried at most once per this many milliseconds (flapping clients);
    /// a hint inside the interval waits for its end.
    pub min_requery_interval_ms: u64,
    /// Hinted accounts waiting at most; beyond, hints are counted and left to the next sweep.
    pub queue_capacity: usize,
    /// Connections open at once at most (lowered to a quarter of the descriptor limit); more
    /// wait in the kernel's backlog.
    pub max_connections: usize,
    /// A connection that sends no complete request head for this long, idle or slow, is closed.
    pub idle_timeout_secs: u64,
    /// The share of `im.calls_per_second` (of the rate learned under it) kept for hinted
    /// re-queries; sweeps are paced at the rest, so a flood of callbacks never slows them.
    pub hinted_call_share: f64,
}

impl Default for CallbackConfig {
    fn default() -> Self {
        CallbackConfig {
            listen: String::new(),
            path: "/im/callback".into(),
            token: Secret::default(),
            token_file: None,
            allow_unsigned: false,
            max_clock_skew_secs: 60,
            max_future_skew_secs: 5,
            max_body_bytes: 16_384,
            coalesce_ms: 20,
            min_requery_interval_ms: 1_000,
            queue_capacity: 100_000,
            max_connections: 1_024,
            idle_timeout_secs: 10,
            hinted_call_share: 0.25,
        }
    }
}

impl CallbackConfig {
    /// Whether the endpoint runs.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty()
    }

    /// What checks callbacks for app `sdkappid` with this token and skew.
    pub fn verifier(&self, sdkappid: u64) -> Verifier {
        Verifier {
            sdkappid,
            token: self.token.clone(),
            max_skew_secs: self.max_clock_skew_secs,
            max_future_secs: self.max_future_skew_secs,
        }
    }

    /// Whether `other` differs in what only a restart applies: all but the token (inline or
    /// from its file) and the skew.
    pub fn differs_past_reload(&self, other: &CallbackConfig) -> bool {
        let reloadable = CallbackConfig {
            token: other.token.clone(),
            token_file: other.token_file.clone(),
            max_clock_skew_secs: other.max_clock_skew_secs,
            max_future_skew_secs: other.max_future_skew_secs,
            ..self.clone()
        };
        reloadable != *other
    }

    /// The endpoint's connection bounds.
    pub fn limits(&self) -> crate::listener::Limits {
        crate::listener::Limits {
            max_connections: self.max_connections,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
        }
        .within_descriptor_limit("callback")
    }

    /// [`CallbackConfig::coalesce_ms`] as a duration.
    pub fn coalesce(&self) -> Duration {
        Duration::from_millis(self.coalesce_ms)
    }

    /// [`CallbackConfig::min_requery_interval_ms`] as a duration.
    pub fn min_requery_interval(&self) -> Duration {
        Duration::from_millis(self.min_requery_interval_ms)
    }

    /// Reads `token_file` when the token is not inline. The error never holds the token.
    pub fn resolve_token(&mut self) -> Result<(), Invalid> {
        let Some(file) = self.token_file.as_ref().filter(|_| self.token.is_empty()) else {
            return Ok(());
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            Invalid::new(
                "callback.token_file",
                format!("cannot read {}: {e}", file.display()),
            )
        })?;
        crate::config::warn_if_readable_by_others(file, "the callback token file");
        let token = text.trim();
        if token.is_empty() {
            return Err(Invalid::new(
                "callback.token_file",
                format!("{} is empty", file.display()),
            ));
        }
        self.token = Secret::new(token);
        Ok(())
    }
}

impl Section for CallbackConfig {
    fn ranges(&self) -> Vec<Range> {
        vec![
            Range::new(
                "callback.max_connections",
                self.max_connections as f64,
                1.0,
                1_000_000.0,
            ),
            Range::new(
                "callback.idle_timeout_secs",
                self.idle_timeout_secs as f64,
                1.0,
                300.0,
            ),
            Range::new(
                "callback.hinted_call_share",
                self.hinted_call_share,
                0.01,
                0.9,
            ),
            Range::new(
                "callback.max_clock_skew_secs",
                self.max_clock_skew_secs as f64,
                1.0,
                600.0,
            ),
            Range::new(
                "callback.max_future_skew_secs",
                self.max_future_skew_secs as f64,
                0.0,
                60.0,
            ),
            Range::new(
                "callback.max_body_bytes",
                self.max_body_bytes as f64,
                256.0,
                1_048_576.0,
            ),
            Range::new(
                "callback.coalesce_ms",
                self.coalesce_ms as f64,
                0.0,
                10_000.0,
            ),
            Range::new(
                "callback.min_requery_interval_ms",
                self.min_requery_interval_ms as f64,
                0.0,
                3_600_000.0,
            ),
            Range::new(
                "callback.queue_capacity",
                self.queue_capacity as f64,
                1.0,
                10_000_000.0,
            ),
        ]
    }

    fn check(&self) -> Result<(), Invalid> {
        if self.enabled() && self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(Invalid::new(
                "callback.listen",
                format!("{:?} is not an address such as 127.0.0.1:9465", self.listen),
            ));
        }
        if !self.path.starts_with('/') || self.path.contains(['?', '#', ' ']) {
            return Err(Invalid::new(
                "callback.path",
                format!("{:?} is not a URL path such as /im/callback", self.path),
            ));
        }
        if self.enabled() && self.token.is_empty() && !self.allow_unsigned {
            return Err(Invalid::new(
                "callback.token",
                "is required while callbacks are on (callback.listen): set the console's callback token in callback.token_file (or token), or set callback.allow_unsigned = true to accept unsigned callbacks from anyone who reaches the endpoint",
            ));
        }
        // IM's console takes tokens of 1 to 128 characters.

        if self.token.expose().len() > 128 {
            return Err(Invalid::new(
                "callback.token",
                "is longer than the 128 characters IM's console accepts",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_and_the_skew_are_applied_by_a_reload() {
        let running = CallbackConfig::default();
        let rotated = CallbackConfig {
            token: Secret::new("rotated"),
            token_file: Some("/etc/presenced/callback-token".into()),
            max_clock_skew_secs: 60,
            ..running.clone()
        };
        assert!(!running.differs_past_reload(&rotated));
        let moved = CallbackConfig {
            coalesce_ms: 200,
            ..rotated
        };
        assert!(running.differs_past_reload(&moved));
    }

    #[test]
    fn an_endpoint_without_a_token_is_refused_unless_unsigned_is_allowed() {
        let unsigned = CallbackConfig {
            listen: "127.0.0.1:9465".into(),
            ..CallbackConfig::default()
        };
        let refused = unsigned.check().unwrap_err();
        assert_eq!(refused.key, "callback.token");
        assert!(
            refused.message.contains("allow_unsigned"),
            "{}",
            refused.message
        );
        let allowed = CallbackConfig {
            allow_unsigned: true,
            ..unsigned.clone()
        };
        assert!(allowed.check().is_ok());
        let signed = CallbackConfig {
            token: Secret::new("a-token-of-the-console"),
            ..unsigned
        };
        assert!(signed.check().is_ok());
        assert!(CallbackConfig::default().check().is_ok(), "callbacks off");
    }
}
