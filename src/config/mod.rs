//! Configuration: TOML with every option defaulted, `PRESENCED_SECTION__KEY` environment
//! overrides, secrets from a file or systemd's credentials directory, and validation that runs
//! before the daemon does any work.

//!
//! Each section lives beside the module it configures and validates itself (see
//! [`crate::validation::Section`]); this module gathers them.

pub use crate::callback::CallbackConfig;
pub use crate::im::config::{Command, ImConfig};
pub use crate::logging::LogFormat;
pub use crate::publish::kafka::{is_secret_property, Delivery, KafkaConfig};
pub use crate::publish::{SinkConfig, SinkKind};
pub use crate::service::config::ServiceConfig;
pub use crate::standby::StandbyConfig;
pub use crate::store::config::{StoreConfig, MAX_RETENTION_DAYS};
pub use crate::sweep::config::SweepConfig;
pub use crate::watchlist::WatchConfig;

use crate::secret::Secret;
use crate::validation::{Invalid, Section};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A configuration that cannot be used; it says where (file and line, or variable) and what.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown or mistyped key (the message has the line).
    #[error("configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said, with the line and column.
        message: String,
    },
    /// An environment override is malformed or has a value its option cannot take.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong (never the value, which may be a secret).
        message: String,
    },
    /// A value is out of range or breaks a rule.
    #[error("{origin}: {key}: {message}")]
    Invalid {
        /// Where: the file and line, or the environment variable.
        origin: String,
        /// The option, as `section.key`.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration file, one field per section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[im]`: reaching Tencent IM.
    pub im: ImConfig,
    /// `[watch]`: the watch-list file.
    pub watch: WatchConfig,
    /// `[sweep]`: how often and how answers are committed.
    pub sweep: SweepConfig,
    /// `[store]`: the SQLite file and retention.
    pub store: StoreConfig,
    /// `[sink]`: where events go, and the publisher's waits.
    pub sink: SinkConfig,
    /// `[kafka]`: brokers, topics, producer settings.
    pub kafka: KafkaConfig,
    /// `[service]`: HTTP endpoints, logging, shutdown.
    pub service: ServiceConfig,
    /// `[callback]`: IM's state-change callbacks, off by default.
    pub callback: CallbackConfig,
    /// `[standby]`: several instances sharing the events topic, one active; off by default.
    pub standby: StandbyConfig,
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
            .callback
            .resolve_token()
            .map_err(|Invalid { key, message }| ConfigError::Invalid {
                origin: path.display().to_string(),
                key,
                message,
            })?;
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
        warn_if_readable_by_others(&file, "the secret key file");
        let key = text.trim();
        if key.is_empty() {
            return Err(invalid(format!("{} is empty", file.display())));
        }
        self.im.secret_key = Secret::new(key);
        Ok(())
    }

    /// Checks every section: all numeric ranges first, then each section's own rules. `origin`
    /// names the file in errors; [`Config::load`] adds the line or the variable.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let sections: [&dyn Section; 8] = [
            &self.im,
            &self.sweep,
            &self.store,
            &self.kafka,
            &self.service,
            &self.sink,
            &self.callback,
            &self.standby,
        ];
        let checked = sections
            .iter()
            .flat_map(|s| s.ranges())
            .try_for_each(|r| r.check())
            .and_then(|()| self.im.check())
            .and_then(|()| self.sweep.check())
            .and_then(|()| match self.sink.kind {
                SinkKind::Kafka => self.kafka.check_for_sink(),
                _ => Ok(()),
            })
            .and_then(|()| self.kafka.check())
            .and_then(|()| self.service.check())
            .and_then(|()| self.sink.check())
            .and_then(|()| self.callback.check())
            .and_then(|()| self.check_listeners())
            .and_then(|()| self.check_standby());
        checked.map_err(|Invalid { key, message }| ConfigError::Invalid {
            origin: origin.to_owned(),
            key,
            message,
        })
    }

    /// The callback endpoint and the metrics endpoint cannot share an address.
    fn check_listeners(&self) -> Result<(), Invalid> {
        if self.callback.enabled() && self.callback.listen == self.service.metrics_listen {
            return Err(Invalid::new(
                "callback.listen",
                "is service.metrics_listen's address too; give the callback endpoint its own",
            ));
        }
        Ok(())
    }

    /// `[standby]` needs the events topic as a log of record: Kafka, exactly-once.
    fn check_standby(&self) -> Result<(), Invalid> {
        if !self.standby.enabled {
            return Ok(());
        }
        self.standby.check()?;
        if self.sink.kind != SinkKind::Kafka || self.kafka.delivery != Delivery::ExactlyOnce {
            return Err(Invalid::new(
                "standby.enabled",
                "needs sink.kind = \"kafka\" and kafka.delivery = \"exactly-once\": the events topic is the log the instances share, and fencing through the transactional id is what keeps two from publishing",
            ));
        }
        let heartbeats = self.standby.heartbeat_topic_for(&self.kafka.topic);
        if heartbeats == self.kafka.topic || heartbeats == self.kafka.state_topic {
            return Err(Invalid::new(
                "standby.heartbeat_topic",
                format!("{heartbeats:?} is the events or state topic; heartbeats need a topic of their own"),
            ));
        }
        Ok(())
    }

    /// The effective configuration as TOML, with every secret replaced by a marker.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configuration always serializes")
    }
}

/// Warns when a file holding a credential (`what`) can be read by other users.
#[cfg(unix)]
pub(crate) fn warn_if_readable_by_others(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o044 != 0 {
            tracing::warn!(
                file = %path.display(),
                "{what} is readable by other users; chmod 600 it"
            );
        }
    }
}

/// Warns when a file holding a credential (`what`) can be read by other users.
#[cfg(not(unix))]
pub(crate) fn warn_if_readable_by_others(_: &Path, _: &str) {}

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
    fn a_state_topic_that_is_the_events_topic_is_refused() {
        let c = parse(
            "[im]\nsdkappid = 1\nsecret_key = \"k\"\n[sink]\nkind = \"kafka\"\n[kafka]\nbrokers = \"b:9092\"\ntopic = \"events\"\nstate_topic = \"events\"\n",
        )
        .unwrap();
        let err = c.validate("test.toml").unwrap_err().to_string();
        assert!(
            err.contains("kafka.state_topic") && err.contains("events topic"),
            "{err}"
        );
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
