//! Presence types shared by the IM client, the store, the diff and the publisher.

mod cause;
mod transition;

pub use cause::{CallbackHint, Cause};
pub use transition::{TransitionBuilder, TransitionKind, TransitionRecord};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Aggregate or per-platform presence as Tencent IM reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum State {
    /// Connected.
    Online,
    /// Not connected, but reachable by offline push.
    PushOnline,
    /// Neither.
    Offline,
}

impl State {
    /// Every state.
    pub const ALL: [State; 3] = [State::Online, State::PushOnline, State::Offline];

    /// The name IM uses.
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

/// A state name IM does not define.
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
    /// The platform as IM names it.
    pub platform: String,
    /// Its state.
    pub status: State,
}

/// What one successful observation says about one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The account's state.
    pub state: State,
    /// Sorted by platform name so that two answers listing the same devices compare equal.
    pub platforms: Vec<PlatformStatus>,
}

impl Presence {
    /// A presence with its platforms sorted, so equal presences compare equal.
    pub fn new(state: State, mut platforms: Vec<PlatformStatus>) -> Self {
        platforms.sort_by(|a, b| {
            a.platform
                .cmp(&b.platform)
                .then(a.status.as_str().cmp(b.status.as_str()))
        });
        Presence { state, platforms }
    }

    /// The platforms as stored in SQLite (JSON).
    pub fn platforms_json(&self) -> String {
        platforms_to_json(&self.platforms)
    }
}

/// Platforms as stored in SQLite (JSON).
pub fn platforms_to_json(platforms: &[PlatformStatus]) -> String {
    serde_json::to_string(platforms).expect("platform lists always serialize")
}

/// Platforms from their SQLite JSON.
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
    // Every event carries two of these: done by hand for 1970..=9999 (a tenth of the cost of
    // the general formatter, which the rest of the range still uses).
    const END_OF_9999: i64 = 253_402_300_800_000;
    if !(0..END_OF_9999).contains(&ms) {
        return format_millis_general(ms);
    }
    let (days, in_day) = (ms / 86_400_000, ms % 86_400_000);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute) = (in_day / 3_600_000, in_day / 60_000 % 60);
    let (second, milli) = (in_day / 1000 % 60, in_day % 1000);
    let mut out = [0u8; 24];
    let mut put = |at: usize, value: i64, digits: usize| {
        let mut v = value;
        for i in (at..at + digits).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, hour, 2);
    put(14, minute, 2);
    put(17, second, 2);
    put(20, milli, 3);
    for (at, c) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        out[at] = c;
    }
    String::from_utf8(out.to_vec()).expect("ASCII digits and separators")
}

/// (year, month, day) of a day counted from 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn format_millis_general(ms: i64) -> String {
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

    proptest::proptest! {
        #[test]
        fn fast_time_formatting_agrees_with_the_general_one(ms in -100_000_000_000_000i64..300_000_000_000_000) {
            proptest::prop_assert_eq!(format_millis(ms), format_millis_general(ms));
        }
    }

    #[test]
    fn time_formatting_at_the_edges() {
        for ms in [
            0,
            951_782_400_000, /* 2000-02-29 */
            253_402_300_799_999,
            253_402_300_800_000,
            -1,
        ] {
            assert_eq!(format_millis(ms), format_millis_general(ms), "{ms}");
        }
        assert_eq!(format_millis(1_764_158_405_123), "2025-11-26T12:00:05.123Z");
    }

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
