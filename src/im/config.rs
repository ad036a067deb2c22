//! `[im]`: how to reach Tencent IM and how hard to push it.

use crate::secret::{serialize_redacted, Secret};
use crate::validation::{Invalid, Range, Section};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which REST command queries presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// `v4/openim/query_online_status` (current name).
    QueryOnlineStatus,
    /// `v4/openim/querystate` (former name, same answer).
    Querystate,
}

impl Command {
    /// The command's path under the base URL.
    pub fn path(self) -> &'static str {
        match self {
            Command::QueryOnlineStatus => "v4/openim/query_online_status",
            Command::Querystate => "v4/openim/querystate",
        }
    }
}

/// `[im]`: how to reach Tencent IM and how hard to push it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImConfig {
    /// The app's SDKAppID (required).
    pub sdkappid: u64,
    /// The app administrator account the UserSig is made for.
    pub identifier: String,
    #[serde(
        serialize_with = "serialize_redacted",
        skip_serializing_if = "Secret::is_empty"
    )]
    /// The secret key inline (prefer a file or a systemd credential).
    pub secret_key: Secret,
    /// A file holding the secret key.
    pub secret_key_file: Option<PathBuf>,
    /// Name of the credential under `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
    pub secret_key_credential: String,
    /// china, singapore, seoul, tokyo, frankfurt, mumbai, silicon-valley, jakarta.
    pub region: String,
    /// Use the region's backup host.
    pub use_backup_host: bool,
    /// Overrides `region`: a proxy or the local simulator, e.g. `http://127.0.0.1:8080`.
    pub base_url: Option<String>,
    /// `query_online_status` or `querystate`.
    pub command: Command,
    /// Ask for per-platform detail (`IsNeedDetail`).
    pub need_detail: bool,
    /// Per-call timeout, seconds.
    pub timeout_secs: f64,
    /// Calls per second at most (IM allows 200).
    pub calls_per_second: f64,
    /// Accounts per call (IM allows 500).
    pub batch_size: usize,
    /// Calls outstanding at once.
    pub max_in_flight: usize,
    /// Attempts per batch.
    pub max_attempts: u32,
    /// First wait between attempts, ms.
    pub backoff_initial_ms: u64,
    /// Longest wait between attempts, ms.
    pub backoff_max_ms: u64,
    /// Lifetime of generated UserSigs, seconds.
    pub usersig_ttl_secs: i64,
    /// How long a task waits for another regenerating the UserSig, seconds.
    pub signature_lock_wait_secs: u64,
}

impl Default for ImConfig {
    fn default() -> Self {
        ImConfig {
            sdkappid: 0,
            identifier: "administrator".into(),
            secret_key: Secret::default(),
            secret_key_file: None,
            secret_key_credential: "im-secret-key".into(),
            region: "china".into(),
            use_backup_host: false,
            base_url: None,
            command: Command::QueryOnlineStatus,
            need_detail: true,
            timeout_secs: 10.0,
            calls_per_second: 200.0,
            batch_size: 500,
            max_in_flight: 64,
            max_attempts: 5,
            backoff_initial_ms: 200,
            backoff_max_ms: 10_000,
            usersig_ttl_secs: 86_400,
            signature_lock_wait_secs: 60,
        }
    }
}

impl ImConfig {
    /// The base URL requests go to: `base_url` when set, else the region's host. The one place
    /// both are checked, for validation and for the client alike.
    pub fn endpoint(&self) -> Result<reqwest::Url, Invalid> {
        let base = match &self.base_url {
            Some(url) => {
                let parsed = reqwest::Url::parse(url)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https"));
                if parsed.is_none() {
                    return Err(Invalid::new(
                        "im.base_url",
                        format!("{url:?} is not an http(s) URL"),
                    ));
                }
                url.clone()
            }
            None => match super::region_host(&self.region, self.use_backup_host) {
                Some(host) => format!("https://{host}/"),
                None => {
                    return Err(Invalid::new(
                        "im.region",
                        format!(
                            "unknown region {:?}; expected one of {}",
                            self.region,
                            super::REGIONS.join(", ")
                        ),
                    ))
                }
            },
        };
        let mut url = reqwest::Url::parse(&base)
            .map_err(|e| Invalid::new("im.base_url", format!("{base:?}: {e}")))?;
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        Ok(url)
    }
}

impl Section for ImConfig {
    fn ranges(&self) -> Vec<Range> {
        vec![
            // SDKAppIDs are 32-bit numbers; 0 is reported as missing in `check`.
            Range::new(
                "im.sdkappid",
                self.sdkappid as f64,
                0.0,
                f64::from(u32::MAX),
            ),
            Range::new("im.timeout_secs", self.timeout_secs, 0.001, 3_600.0),
            Range::new(
                "im.calls_per_second",
                self.calls_per_second,
                0.001,
                100_000.0,
            ),
            Range::new("im.batch_size", self.batch_size as f64, 1.0, 500.0),
            Range::new("im.max_in_flight", self.max_in_flight as f64, 1.0, 4_096.0),
            Range::new("im.max_attempts", f64::from(self.max_attempts), 1.0, 100.0),
            Range::new(
                "im.backoff_initial_ms",
                self.backoff_initial_ms as f64,
                0.0,
                3_600_000.0,
            ),
            Range::new(
                "im.backoff_max_ms",
                self.backoff_max_ms as f64,
                0.0,
                3_600_000.0,
            ),
            Range::new(
                "im.usersig_ttl_secs",
                self.usersig_ttl_secs as f64,
                60.0,
                315_360_000.0,
            ),
            Range::new(
                "im.signature_lock_wait_secs",
                self.signature_lock_wait_secs as f64,
                0.0,
                3_600.0,
            ),
        ]
    }

    fn check(&self) -> Result<(), Invalid> {
        if self.sdkappid == 0 {
            return Err(Invalid::new(
                "im.sdkappid",
                "is required (the app's SDKAppID)",
            ));
        }
        if self.identifier.trim().is_empty() {
            return Err(Invalid::new(
                "im.identifier",
                "must name the app administrator account",
            ));
        }
        if self.secret_key.is_empty() {
            return Err(Invalid::new(
                "im.secret_key",
                format!(
                    "no secret key: set im.secret_key_file, or im.secret_key, or pass a systemd credential named {:?}",
                    self.secret_key_credential
                ),
            ));
        }
        self.endpoint().map(drop)
    }
}
