//! Configuration: TOML with every option defaulted, `PRESENCED_SECTION__KEY` environment
//! overrides, secrets from a file or systemd's credentials directory, and validation that runs
//! before the daemon does any work.

use crate::secret::{Secret, REDACTED};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The longest retention accepted: a thousand years. Anything meant as "forever" is 0.
pub const MAX_RETENTION_DAYS: u64 = 365_000;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("{origin}: {key}: {message}")]
    Invalid {
        origin: String,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub im: ImConfig,
    pub watch: WatchConfig,
    pub sweep: SweepConfig,
    pub store: StoreConfig,
    pub sink: SinkConfig,
    pub kafka: KafkaConfig,
    pub service: ServiceConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    QueryOnlineStatus,
    Querystate,
}

impl Command {
    pub fn path(self) -> &'static str {
        match self {
            Command::QueryOnlineStatus => "v4/openim/query_online_status",
            Command::Querystate => "v4/openim/querystate",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImConfig {
    pub sdkappid: u64,
    /// The app administrator account the UserSig is made for.
    pub identifier: String,
    #[serde(serialize_with = "redact", skip_serializing_if = "Secret::is_empty")]
    pub secret_key: Secret,
    pub secret_key_file: Option<PathBuf>,
    /// Name of the credential under `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
    pub secret_key_credential: String,
    /// china, singapore, seoul, tokyo, frankfurt, mumbai, silicon-valley, jakarta.
    pub region: String,
    pub use_backup_host: bool,
    /// Overrides `region`: a proxy or the local simulator, e.g. `http://127.0.0.1:8080`.
    pub base_url: Option<String>,
    pub command: Command,
    pub need_detail: bool,
    pub timeout_secs: f64,
    pub calls_per_second: f64,
    pub batch_size: usize,
    pub max_in_flight: usize,
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub usersig_ttl_secs: i64,
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

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// One account id per line; `#` comments and blank lines ignored. Used together with the
    /// table managed by `presenced users`.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweepConfig {
    pub interval_secs: f64,
    pub jitter_secs: f64,
    /// A change in the per-platform list is a transition even when the aggregate is unchanged.
    pub platform_changes_are_transitions: bool,
    /// Batches whose results are written in one SQLite transaction.
    pub batches_per_transaction: usize,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            interval_secs: 30.0,
            jitter_secs: 1.0,
            platform_changes_are_transitions: true,
            batches_per_transaction: 8,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub path: PathBuf,
    pub busy_timeout_ms: u64,
    /// History older than this is pruned; 0 keeps everything.
    pub retention_days: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("/var/lib/presenced/presenced.db"),
            busy_timeout_ms: 5_000,
            retention_days: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    Kafka,
    Stdout,
    /// Record in SQLite only; the outbox keeps growing until a sink is configured.
    None,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    pub kind: SinkKind,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            kind: SinkKind::Kafka,
        }
    }
}

/// `Debug` is written by hand: a derived one would print `properties` with the SASL password.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub client_id: String,
    pub compression: String,
    pub create_topic: bool,
    pub topic_partitions: i32,
    /// Replicas of a created topic; -1 takes the broker's `default.replication.factor`.
    pub topic_replication_factor: i32,
    /// `min.insync.replicas` of a created topic; 0 takes the broker's default.
    pub topic_min_insync_replicas: u32,
    /// Optional compacted topic keyed by account with its current state; a tombstone when an
    /// account leaves the watch list. Empty: off.
    pub state_topic: String,
    /// Extra topic configs for the state topic when it is created (it is always compacted).
    pub state_topic_config: BTreeMap<String, String>,
    /// Outbox rows read and sent per round.
    pub batch_size: usize,
    pub linger_ms: u64,
    /// No longer used: messages wait in librdkafka until acknowledged (a local timeout could
    /// reorder an account's events). Accepted so that older files still load; a warning says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_timeout_ms: Option<u64>,
    /// Bound on how long shutdown waits for acknowledgements.
    pub flush_timeout_secs: f64,
    /// Free-form librdkafka properties (SASL, TLS, ...). Values of keys that look secret are
    /// redacted wherever configuration is shown.
    #[serde(serialize_with = "redact_properties")]
    pub properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Redacted<'a>(&'a BTreeMap<String, String>);
        impl std::fmt::Debug for Redacted<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_map()
                    .entries(self.0.iter().map(|(k, v)| {
                        (
                            k,
                            if is_secret_property(k) {
                                REDACTED
                            } else {
                                v.as_str()
                            },
                        )
                    }))
                    .finish()
            }
        }
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("client_id", &self.client_id)
            .field("compression", &self.compression)
            .field("create_topic", &self.create_topic)
            .field("topic_partitions", &self.topic_partitions)
            .field("topic_replication_factor", &self.topic_replication_factor)
            .field("topic_min_insync_replicas", &self.topic_min_insync_replicas)
            .field("state_topic", &self.state_topic)
            .field("state_topic_config", &self.state_topic_config)
            .field("batch_size", &self.batch_size)
            .field("linger_ms", &self.linger_ms)
            .field("message_timeout_ms", &self.message_timeout_ms)
            .field("flush_timeout_secs", &self.flush_timeout_secs)
            .field("properties", &Redacted(&self.properties))
            .finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "presenced.transitions".into(),
            client_id: "presenced".into(),
            compression: "lz4".into(),
            create_topic: false,
            topic_partitions: 6,
            topic_replication_factor: -1,
            topic_min_insync_replicas: 0,
            state_topic: String::new(),
            state_topic_config: BTreeMap::new(),
            batch_size: 5_000,
            linger_ms: 5,
            message_timeout_ms: None,
            flush_timeout_secs: 10.0,
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Prometheus `/metrics`, `/healthz`, `/readyz`; empty to disable.
    pub metrics_listen: String,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub shutdown_timeout_secs: f64,
    /// `/readyz` fails after this many sweeps in a row that observed nothing.
    pub unready_after_failed_sweeps: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            metrics_listen: "127.0.0.1:9464".into(),
            log_format: LogFormat::Human,
            log_filter: "info".into(),
            shutdown_timeout_secs: 15.0,
            unready_after_failed_sweeps: 3,
        }
    }
}

fn redact<S: Serializer>(_: &Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(REDACTED)
}

/// Whether a librdkafka property holds a credential.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "sasl.jaas",
        "ssl.key.pem",
        "ssl_key",
        "token",
    ]
    .iter()
    .any(|m| k.contains(m))
}

fn redact_properties<S: Serializer>(p: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    let shown: BTreeMap<&str, &str> = p
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                if is_secret_property(k) {
                    REDACTED
                } else {
                    v.as_str()
                },
            )
        })
        .collect();
    shown.serialize(s)
}

/// Says where an invalid value came from: the environment variable that set it, or the line of
/// the file that holds it.
fn locate(e: ConfigError, path: &Path, text: &str, env: &[(String, String)]) -> ConfigError {
    let ConfigError::Invalid { key, message, .. } = e else {
        return e;
    };
    let (section, name) = key.split_once('.').unwrap_or(("", key));
    let var = format!(
        "PRESENCED_{}__{}",
        section.to_ascii_uppercase(),
        name.to_ascii_uppercase()
    );
    let origin = if env.iter().any(|(k, _)| *k == var) {
        format!("environment variable {var}")
    } else {
        match line_of(text, section, name) {
            Some(line) => format!("{}, line {line}", path.display()),
            None => path.display().to_string(),
        }
    };
    ConfigError::Invalid {
        origin,
        key,
        message,
    }
}

/// The 1-based line of `key = ...` inside `[section]`, if the file sets it.
fn line_of(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header.trim().to_owned();
        } else if current == section
            && line
                .split_once('=')
                .is_some_and(|(k, _)| k.trim().trim_matches('"') == key)
        {
            return Some(i + 1);
        }
    }
    None
}

/// Sets `[section] key = value` in a parsed configuration document.
fn set_override(
    doc: &mut toml::Table,
    section: &str,
    key: &str,
    value: toml::Value,
) -> Result<(), String> {
    match doc
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(Default::default()))
    {
        toml::Value::Table(t) => {
            t.insert(key.to_owned(), value);
            Ok(())
        }
        _ => Err(format!("[{section}] is not a table")),
    }
}

impl Config {
    /// Reads, applies environment overrides, resolves the secret key and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let env: Vec<(String, String)> = std::env::vars().collect();
        let mut config = Config::from_toml(&text, path, &env)?;
        config.resolve_secret(
            path,
            std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        )?;
        config
            .validate(&path.display().to_string())
            .map_err(|e| locate(e, path, &text, &env))?;
        Ok(config)
    }

    /// Parses TOML text, then applies `PRESENCED_SECTION__KEY=value` overrides from `env`.
    pub fn from_toml(
        text: &str,
        path: &Path,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        // Parse straight into the struct first: its errors carry the line and column.
        let config: Config = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        let overrides: Vec<&(String, String)> = env
            .iter()
            .filter(|(k, _)| k.starts_with("PRESENCED_") && k.contains("__"))
            .collect();
        if overrides.is_empty() {
            return Ok(config);
        }
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        for (var, value) in overrides {
            let rest = var["PRESENCED_".len()..].to_ascii_lowercase();
            let mut parts = rest.split("__");
            let (Some(section), Some(key), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: "expected PRESENCED_SECTION__KEY".into(),
                });
            };
            // The value is read as the type of the field it sets: as a TOML scalar (number,
            // bool, array) where it reads as one and the field takes it, else as text, so a
            // numeric secret key or administrator stays text.
            let scalar = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .filter(|v| !v.is_str());
            let mut rejected = None;
            for candidate in scalar
                .into_iter()
                .chain([toml::Value::String(value.clone())])
            {
                set_override(&mut doc, section, key, candidate).map_err(|message| {
                    ConfigError::Env {
                        var: var.clone(),
                        message,
                    }
                })?;
                // Checked one variable at a time, so that an error names its variable.
                match toml::Value::Table(doc.clone()).try_into::<Config>() {
                    Ok(_) => {
                        rejected = None;
                        break;
                    }
                    Err(e) => rejected = Some(e),
                }
            }
            if let Some(e) = rejected {
                // Rebuilt without the value, which may be a secret.
                let expected = e
                    .message()
                    .split_once("expected ")
                    .map_or_else(String::new, |(_, x)| format!(": expected {x}"));
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: format!("not a valid value for {section}.{key}{expected}"),
                });
            }
        }
        Ok(toml::Value::Table(doc)
            .try_into()
            .expect("every override was checked"))
    }

    /// Fills `im.secret_key` from the file or the systemd credential when it is not inline.
    pub fn resolve_secret(
        &mut self,
        origin: &Path,
        credentials_dir: Option<PathBuf>,
    ) -> Result<(), ConfigError> {
        if !self.im.secret_key.is_empty() {
            return Ok(());
        }
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.display().to_string(),
            key: "im.secret_key_file",
            message,
        };
        let file = match (&self.im.secret_key_file, credentials_dir) {
            (Some(f), _) => f.clone(),
            (None, Some(dir)) => dir.join(&self.im.secret_key_credential),
            (None, None) => return Ok(()), // validate() reports the missing key
        };
        let text = std::fs::read_to_string(&file).map_err(|e| {
            invalid(format!(
                "cannot read the secret key from {}: {e}",
                file.display()
            ))
        })?;
        warn_if_readable_by_others(&file);
        let key = text.trim();
        if key.is_empty() {
            return Err(invalid(format!("{} is empty", file.display())));
        }
        self.im.secret_key = Secret::new(key);
        Ok(())
    }

    /// Every numeric option with its accepted range, inclusive, as config.example.toml documents
    /// them: whatever passes can be converted and multiplied without overflow or panic.
    fn numeric_ranges(&self) -> [(&'static str, f64, f64, f64); 22] {
        let (im, sweep, kafka) = (&self.im, &self.sweep, &self.kafka);
        [
            // SDKAppIDs are 32-bit numbers; 0 is reported as missing below.
            ("im.sdkappid", im.sdkappid as f64, 0.0, f64::from(u32::MAX)),
            ("im.timeout_secs", im.timeout_secs, 0.001, 3_600.0),
            ("im.calls_per_second", im.calls_per_second, 0.001, 100_000.0),
            ("im.batch_size", im.batch_size as f64, 1.0, 500.0),
            ("im.max_in_flight", im.max_in_flight as f64, 1.0, 4_096.0),
            ("im.max_attempts", f64::from(im.max_attempts), 1.0, 100.0),
            (
                "im.backoff_initial_ms",
                im.backoff_initial_ms as f64,
                0.0,
                3_600_000.0,
            ),
            (
                "im.backoff_max_ms",
                im.backoff_max_ms as f64,
                0.0,
                3_600_000.0,
            ),
            (
                "im.usersig_ttl_secs",
                im.usersig_ttl_secs as f64,
                60.0,
                315_360_000.0,
            ),
            (
                "im.signature_lock_wait_secs",
                im.signature_lock_wait_secs as f64,
                0.0,
                3_600.0,
            ),
            ("sweep.interval_secs", sweep.interval_secs, 0.001, 86_400.0),
            ("sweep.jitter_secs", sweep.jitter_secs, 0.0, 86_400.0),
            (
                "sweep.batches_per_transaction",
                sweep.batches_per_transaction as f64,
                1.0,
                10_000.0,
            ),
            (
                "store.busy_timeout_ms",
                self.store.busy_timeout_ms as f64,
                0.0,
                600_000.0,
            ),
            (
                "store.retention_days",
                self.store.retention_days as f64,
                0.0,
                MAX_RETENTION_DAYS as f64,
            ),
            (
                "kafka.topic_partitions",
                f64::from(kafka.topic_partitions),
                1.0,
                100_000.0,
            ),
            (
                "kafka.topic_min_insync_replicas",
                f64::from(kafka.topic_min_insync_replicas),
                0.0,
                32_767.0,
            ),
            (
                "kafka.batch_size",
                kafka.batch_size as f64,
                1.0,
                1_000_000.0,
            ),
            ("kafka.linger_ms", kafka.linger_ms as f64, 0.0, 900_000.0),
            (
                "kafka.flush_timeout_secs",
                kafka.flush_timeout_secs,
                0.0,
                3_600.0,
            ),
            (
                "service.shutdown_timeout_secs",
                self.service.shutdown_timeout_secs,
                0.0,
                3_600.0,
            ),
            (
                "service.unready_after_failed_sweeps",
                f64::from(self.service.unready_after_failed_sweeps),
                1.0,
                1_000.0,
            ),
        ]
    }

    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let fail = |key: &'static str, message: String| {
            Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                key,
                message,
            })
        };
        for (key, value, min, max) in self.numeric_ranges() {
            if !(value.is_finite() && (min..=max).contains(&value)) {
                return fail(key, format!("must be from {min} to {max}, got {value}"));
            }
        }
        let im = &self.im;
        if im.sdkappid == 0 {
            return fail("im.sdkappid", "is required (the app's SDKAppID)".into());
        }
        if im.identifier.trim().is_empty() {
            return fail(
                "im.identifier",
                "must name the app administrator account".into(),
            );
        }
        if im.secret_key.is_empty() {
            return fail(
                "im.secret_key",
                format!(
                    "no secret key: set im.secret_key_file, or im.secret_key, or pass a systemd credential named {:?}",
                    im.secret_key_credential
                ),
            );
        }
        if im.base_url.is_none() && crate::im::region_host(&im.region, im.use_backup_host).is_none()
        {
            return fail(
                "im.region",
                format!(
                    "unknown region {:?}; expected one of {}",
                    im.region,
                    crate::im::REGIONS.join(", ")
                ),
            );
        }
        if let Some(url) = &im.base_url {
            if reqwest::Url::parse(url)
                .map(|u| !matches!(u.scheme(), "http" | "https"))
                .unwrap_or(true)
            {
                return fail("im.base_url", format!("{url:?} is not an http(s) URL"));
            }
        }
        if self.sink.kind == SinkKind::Kafka {
            if self.kafka.brokers.trim().is_empty() {
                return fail(
                    "kafka.brokers",
                    "is required when sink.kind = \"kafka\"".into(),
                );
            }
            if self.kafka.topic.trim().is_empty() {
                return fail(
                    "kafka.topic",
                    "is required when sink.kind = \"kafka\"".into(),
                );
            }
            if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&self.kafka.compression.as_str())
            {
                return fail(
                    "kafka.compression",
                    format!(
                        "{:?} is not one of none, gzip, snappy, lz4, zstd",
                        self.kafka.compression
                    ),
                );
            }
        }
        // The ranges above cover every other number; these two depend on each other.
        let replicas = self.kafka.topic_replication_factor;
        if !(replicas == -1 || (1..=i32::from(i16::MAX)).contains(&replicas)) {
            return fail(
                "kafka.topic_replication_factor",
                format!("must be -1 (the broker's default) or from 1 to 32767, got {replicas}"),
            );
        }
        let min_isr = self.kafka.topic_min_insync_replicas;
        if replicas > 0 && i64::from(min_isr) > i64::from(replicas) {
            return fail(
                "kafka.topic_min_insync_replicas",
                format!("{min_isr} is more than kafka.topic_replication_factor ({replicas}): nothing could be written"),
            );
        }
        if !self.service.metrics_listen.is_empty()
            && self
                .service
                .metrics_listen
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return fail(
                "service.metrics_listen",
                format!(
                    "{:?} is not an address such as 127.0.0.1:9464",
                    self.service.metrics_listen
                ),
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.service.log_filter).is_err() {
            return fail(
                "service.log_filter",
                format!("{:?} is not a valid filter", self.service.log_filter),
            );
        }
        Ok(())
    }

    /// The effective configuration as TOML, with every secret replaced by a marker.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configuration always serializes")
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o044 != 0 {
            tracing::warn!(
                file = %path.display(),
                "the secret key file is readable by other users; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"), &[])
    }

    #[test]
    fn defaults_fill_everything() {
        let c = parse("[im]\nsdkappid = 1400000000\nsecret_key = \"k\"\n").unwrap();
        assert_eq!(c.im.batch_size, 500);
        assert_eq!(c.im.calls_per_second, 200.0);
        c.validate("test.toml").unwrap();
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = parse("[im]\nsdkappid = 1\n\n[sweep]\ninterval = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("test.toml"), "{err}");
        assert!(err.contains("line 5"), "{err}");
        assert!(err.contains("interval"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let c = parse("[im]\nsdkappid = 1\nsecret_key = \"k\"\nbatch_size = 501\n").unwrap();
        let err = c.validate("test.toml").unwrap_err().to_string();
        assert!(
            err.contains("im.batch_size") && err.contains("501"),
            "{err}"
        );
        let c = parse("[im]\nsdkappid = 1\nsecret_key = \"k\"\nregion = \"mars\"\n").unwrap();
        assert!(c
            .validate("x")
            .unwrap_err()
            .to_string()
            .contains("im.region"));
    }

    #[test]
    fn environment_overrides() {
        let env = vec![
            (
                "PRESENCED_IM__CALLS_PER_SECOND".to_string(),
                "50".to_string(),
            ),
            ("PRESENCED_KAFKA__TOPIC".to_string(), "t2".to_string()),
        ];
        let c = Config::from_toml("[im]\nsdkappid = 1\n", Path::new("x"), &env).unwrap();
        assert_eq!(c.im.calls_per_second, 50.0);
        assert_eq!(c.kafka.topic, "t2");
        let bad = vec![("PRESENCED_IM__NOPE".to_string(), "1".to_string())];
        let err = Config::from_toml("", Path::new("x"), &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn environment_overrides_take_the_type_of_their_field_and_never_echo_the_value() {
        let env = vec![
            (
                "PRESENCED_IM__SECRET_KEY".to_string(),
                "314159265358979".to_string(),
            ),
            ("PRESENCED_IM__IDENTIFIER".to_string(), "10001".to_string()),
        ];
        let c = Config::from_toml("[im]\nsdkappid = 1\n", Path::new("x"), &env).unwrap();
        assert_eq!(c.im.secret_key.expose(), "314159265358979");
        assert_eq!(c.im.identifier, "10001");
        let bad = vec![(
            "PRESENCED_IM__CALLS_PER_SECOND".to_string(),
            "fast-please-271828".to_string(),
        )];
        let err = Config::from_toml("[im]\nsdkappid = 1\n", Path::new("x"), &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("PRESENCED_IM__CALLS_PER_SECOND"), "{err}");
        assert!(!err.contains("271828"), "the value is echoed: {err}");
    }

    #[test]
    fn secrets_never_shown() {
        let mut c = parse(
            "[im]\nsdkappid = 1\nsecret_key = \"topsecretkey\"\n[kafka.properties]\n\"sasl.password\" = \"pw123456\"\n\"sasl.username\" = \"bob\"\n",
        )
        .unwrap();
        let shown = c.to_redacted_toml();
        assert!(
            !shown.contains("topsecretkey") && !shown.contains("pw123456"),
            "{shown}"
        );
        assert!(shown.contains("bob"));
        let debug = format!("{c:?} {:?}", c.kafka);
        assert!(
            !debug.contains("topsecretkey") && !debug.contains("pw123456"),
            "{debug}"
        );
        assert!(debug.contains("bob"), "{debug}");
        c.im.secret_key = Secret::default();
        assert!(c
            .validate("x")
            .unwrap_err()
            .to_string()
            .contains("im.secret_key"));
    }

    #[test]
    fn a_retention_meant_as_forever_is_rejected_not_wrapped() {
        let c = parse(&format!(
            "[im]\nsdkappid = 1\nsecret_key = \"k\"\n[store]\nretention_days = {}\n",
            i64::MAX
        ))
        .unwrap();
        let err = c.validate("f.toml").unwrap_err().to_string();
        assert!(err.contains("store.retention_days"), "{err}");
        let c = parse("[im]\nsdkappid = 1\nsecret_key = \"k\"\n[store]\nretention_days = 365000\n")
            .unwrap();
        c.validate("f.toml").unwrap();
    }

    #[test]
    fn secret_from_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("im-secret-key"), "abc\n").unwrap();
        let mut c = parse("[im]\nsdkappid = 1\n").unwrap();
        c.resolve_secret(Path::new("x"), Some(dir.path().to_owned()))
            .unwrap();
        assert_eq!(c.im.secret_key.expose(), "abc");
    }
}
