//! Presence types shared by the IM client, the store, the diff and the publisher.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Aggregate or per-platform presence as Tencent IM reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    Online,
    PushOnline,
    Offline,
}

impl State {
    pub const ALL: [State; 3] = [State::Online, State::PushOnline, State::Offline];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Online => "Online",
            State::PushOnline => "PushOnline",
            State::Offline => "Offline",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown presence state {0:?} (expected Online, PushOnline or Offline)")]
pub struct UnknownState(pub String);

impl FromStr for State {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Online" => Ok(State::Online),
            "PushOnline" => Ok(State::PushOnline),
            "Offline" => Ok(State::Offline),
            other => Err(UnknownState(other.to_owned())),
        }
    }
}

/// One device's state. Platform names are open strings: IM documents iPhone, Android, Web, PC,
/// iPad and Mac, but samples also spell "IPhone" and new platforms appear over time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PlatformStatus {
    pub platform: String,
    pub status: State,
}

/// What one successful observation says about one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub state: State,
    /// Sorted by platform name so that two answers listing the same devices compare equal.
    pub platforms: Vec<PlatformStatus>,
}

impl Presence {
    pub fn new(state: State, mut platforms: Vec<PlatformStatus>) -> Self {
        platforms.sort_by(|a, b| {
            a.platform
                .cmp(&b.platform)
                .then(a.status.as_str().cmp(b.status.as_str()))
        });
        Presence { state, platforms }
    }

    pub fn platforms_json(&self) -> String {
        platforms_to_json(&self.platforms)
    }
}

pub fn platforms_to_json(platforms: &[PlatformStatus]) -> String {
    serde_json::to_string(platforms).expect("platform lists always serialize")
}

pub fn platforms_from_json(text: &str) -> Result<Vec<PlatformStatus>, serde_json::Error> {
    serde_json::from_str(text)
}

/// Current wall-clock time as Unix milliseconds, the unit of every time stored in SQLite.
pub fn now_millis() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_millis() as i64
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds, e.g. `2026-11-26T12:00:05.123Z`.
pub fn format_millis(ms: i64) -> String {
    let ts = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    ts.format(&fmt).expect("UTC timestamps always format")
}

/// Parses a time given on the command line: RFC 3339, a plain date (`2026-11-26`, midnight UTC),
/// or Unix milliseconds.
pub fn parse_time_arg(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(ts) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok((ts.unix_timestamp_nanos() / 1_000_000) as i64);
    }
    let date_fmt = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(text, &date_fmt) {
        return Ok(date.midnight().assume_utc().unix_timestamp() * 1000);
    }
    Err(format!(
        "cannot read {text:?} as a time: use RFC 3339 (2026-11-26T12:00:00Z), a date (2026-11-26) or Unix milliseconds"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_times() {
        assert_eq!(format_millis(1_764_158_405_123), "2025-11-26T12:00:05.123Z");
        assert_eq!(
            parse_time_arg("2025-11-26T12:00:05.123Z").unwrap(),
            1_764_158_405_123
        );
        assert_eq!(parse_time_arg("1970-01-02").unwrap(), 86_400_000);
        assert!(parse_time_arg("yesterday").is_err());
    }

    #[test]
    fn presence_sorts_platforms() {
        let a = Presence::new(
            State::Online,
            vec![
                PlatformStatus {
                    platform: "Web".into(),
                    status: State::Online,
                },
                PlatformStatus {
                    platform: "Android".into(),
                    status: State::PushOnline,
                },
            ],
        );
        assert_eq!(a.platforms[0].platform, "Android");
    }
}
