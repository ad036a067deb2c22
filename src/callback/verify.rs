//! Checking one callback request as IM sends it: the query parameters (`SdkAppid`,
//! `CallbackCommand`, `Sign`, `RequestTime`, ...) and the JSON body of `State.StateChange`.

use crate::model::CallbackHint;
use crate::secret::Secret;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Why a request was refused; each is counted under its [`Rejection::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// A token is configured and `Sign` is missing or wrong.
    BadSignature,
    /// `RequestTime` is missing, malformed, or outside the allowed clock skew (a replay).
    Stale,
    /// `SdkAppid` is not the configured app's.
    WrongApp,
    /// The body is larger than `callback.max_body_bytes` (declared or as it arrived).
    TooLarge,
    /// The body did not arrive within IM's two seconds.
    SlowBody,
    /// The body was cut off before its end.
    IncompleteBody,
    /// The body is not the JSON of a callback.
    BadBody,
    /// A `State.StateChange` without `Info.To_Account`.
    NoAccount,
}

impl Rejection {
    /// The metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::BadSignature => "bad_signature",
            Rejection::Stale => "stale",
            Rejection::WrongApp => "wrong_app",
            Rejection::TooLarge => "too_large",
            Rejection::SlowBody => "slow_body",
            Rejection::IncompleteBody => "incomplete_body",
            Rejection::BadBody => "bad_body",
            Rejection::NoAccount => "no_account",
        }
    }

    /// The HTTP status answered.
    pub fn status(self) -> u16 {
        match self {
            Rejection::BadSignature | Rejection::Stale => 401,
            Rejection::WrongApp => 403,
            Rejection::TooLarge => 413,
            Rejection::SlowBody => 408,
            Rejection::BadBody | Rejection::NoAccount | Rejection::IncompleteBody => 400,
        }
    }
}

/// `Sign` for a token and `RequestTime`: hex SHA-256 of the token followed by the time.
pub fn sign(token: &str, request_time: &str) -> String {
    let digest = Sha256::new()
        .chain_update(token.as_bytes())
        .chain_update(request_time.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without stopping at the first difference, so the time taken does not tell an
/// attacker how much of a guessed signature was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The query parameters that matter, as IM names them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params {
    /// `SdkAppid`.
    pub sdkappid: Option<String>,
    /// `CallbackCommand`.
    pub command: Option<String>,
    /// `OptPlatform` (upper case, e.g. IOS).
    pub platform: Option<String>,
    sign: Option<String>,
    request_time: Option<String>,
}

impl Params {
    /// Reads a raw query string.
    pub fn parse(query: &str) -> Params {
        let mut p = Params::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match &*k {
                "SdkAppid" => &mut p.sdkappid,
                "CallbackCommand" => &mut p.command,
                "OptPlatform" => &mut p.platform,
                "Sign" => &mut p.sign,
                "RequestTime" => &mut p.request_time,
                _ => continue,
            };
            *slot = Some(v.into_owned());
        }
        p
    }
}

/// Checks a request's query: signature and freshness when a token is configured, then the app.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// The app whose callbacks are accepted.
    pub sdkappid: u64,
    /// The console's token; empty when the console has none.
    pub token: Secret,
    /// How far `RequestTime` may lie in this host's past, seconds.
    pub max_skew_secs: u64,
    /// How far `RequestTime` may lie in this host's future, seconds.
    pub max_future_secs: u64,
}

impl Verifier {
    /// Accepts or refuses a request's parameters at `now_secs` (Unix seconds).
    pub fn check(&self, p: &Params, now_secs: i64) -> Result<(), Rejection> {
        if !self.token.is_empty() {
            let (Some(sign_given), Some(time)) = (&p.sign, &p.request_time) else {
                return Err(Rejection::BadSignature);
            };
            let expected = sign(self.token.expose(), time);
            if !constant_time_eq(
                expected.as_bytes(),
                sign_given.to_ascii_lowercase().as_bytes(),
            ) {
                return Err(Rejection::BadSignature);
            }
            // IM sends Unix seconds; milliseconds are read as such rather than as a far future.
            let at: i64 = time.trim().parse().map_err(|_| Rejection::Stale)?;
            let at = if at > 100_000_000_000 { at / 1000 } else { at };
            let too_old = at < now_secs && at.abs_diff(now_secs) > self.max_skew_secs;
            let too_new = at > now_secs && at.abs_diff(now_secs) > self.max_future_secs;
            if too_old || too_new {
                return Err(Rejection::Stale);
            }
        }
        match p.sdkappid.as_deref().map(str::parse::<u64>) {
            Some(Ok(app)) if app == self.sdkappid => Ok(()),
            _ => Err(Rejection::WrongApp),
        }
    }
}

/// What an accepted body asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// `State.StateChange` for one account.
    StateChange {
        /// `Info.To_Account`.
        user_id: String,
        /// What the callback said, as stored: values IM does not document replaced by
        /// [`OTHER`], `EventTime` clamped to the receive time ± the allowed skew.
        hint: CallbackHint,
        /// Which fields were replaced or clamped (`action`, `reason`, `platform`,
        /// `kicked_devices`, `event_time`), to be counted.
        replaced: Vec<&'static str>,
    },
    /// Any other command (custom status changes, ...): answered OK, counted, ignored.
    Other {
        /// The command's name.
        command: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Body {
    callback_command: Option<String>,
    event_time: Option<serde_json::Value>,
    info: Option<Info>,
    #[serde(default)]
    kicked_device: Vec<Kicked>,
}

#[derive(Deserialize)]
struct Info {
    #[serde(rename = "Action")]
    action: Option<String>,
    #[serde(rename = "To_Account")]
    to_account: Option<String>,
    #[serde(rename = "Reason")]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct Kicked {
    #[serde(rename = "Platform")]
    platform: Option<String>,
}

/// The command a request names: the query's `CallbackCommand`, else the body's.
pub const STATE_CHANGE: &str = "State.StateChange";

/// What a value IM does not document is stored and published as.
pub const OTHER: &str = "other";

/// `Info.Action` values IM documents.
const ACTIONS: [&str; 4] = ["Login", "Logout", "Disconnect", "CustomStatusChange"];
/// `Info.Reason` values IM documents.
const REASONS: [&str; 5] = [
    "Register",
    "Unregister",
    "LinkClose",
    "TimeOut",
    "SetCustomStatus",
];
/// `KickedDevice[].Platform` values IM documents (callback names).
const PLATFORMS: [&str; 7] = ["iOS", "Android", "Web", "Windows", "iPad", "Mac", "Linux"];
/// Kicked devices kept per callback: one per platform IM has, and `other`.
const MAX_KICKED: usize = PLATFORMS.len() + 1;

/// `value` when IM documents it, else [`OTHER`] (and `field` is noted as replaced).
fn documented(
    value: String,
    known: &[&str],
    field: &'static str,
    replaced: &mut Vec<&'static str>,
) -> String {
    if known.contains(&value.as_str()) {
        value
    } else {
        if !replaced.contains(&field) {
            replaced.push(field);
        }
        OTHER.to_owned()
    }
}

/// How far an `EventTime` may lie from the receive time (ms): before it, and after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventWindow {
    /// Into the past.
    pub past_ms: i64,
    /// Into the future.
    pub future_ms: i64,
}

/// Reads a body; `command` is the query's `CallbackCommand`, `received_ms` stands in for a
/// missing `EventTime`, and an `EventTime` outside `window` around it is clamped (a forged far
/// past or future would skew the detection metrics and win every merge).
pub fn parse_body(
    body: &[u8],
    command: Option<&str>,
    received_ms: i64,
    window: EventWindow,
) -> Result<Parsed, Rejection> {
    let body: Body = serde_json::from_slice(body).map_err(|_| Rejection::BadBody)?;
    let command = command
        .map(str::to_owned)
        .or(body.callback_command)
        .unwrap_or_default();
    if command != STATE_CHANGE {
        return Ok(Parsed::Other { command });
    }
    let info = body.info.ok_or(Rejection::NoAccount)?;
    let user_id = info
        .to_account
        .filter(|a| !a.is_empty())
        .ok_or(Rejection::NoAccount)?;
    let mut replaced = Vec::new();
    // EventTime is a number in IM's samples; a numeric string is read too.
    let event_time = match body.event_time {
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(received_ms);
    let earliest = received_ms.saturating_sub(window.past_ms.max(0));
    let latest = received_ms.saturating_add(window.future_ms.max(0));
    let clamped = event_time.clamp(earliest, latest);
    if clamped != event_time {
        replaced.push("event_time");
    }
    let action = documented(
        info.action.unwrap_or_default(),
        &ACTIONS,
        "action",
        &mut replaced,
    );
    let reason = info
        .reason
        .filter(|r| !r.is_empty())
        .map(|r| documented(r, &REASONS, "reason", &mut replaced));
    let mut kicked_devices: Vec<String> = Vec::new();
    for platform in body.kicked_device.into_iter().filter_map(|k| k.platform) {
        let platform = documented(platform, &PLATFORMS, "platform", &mut replaced);
        if !kicked_devices.contains(&platform) {
            if kicked_devices.len() == MAX_KICKED {
                replaced.push("kicked_devices");
                break;
            }
            kicked_devices.push(platform);
        }
    }
    Ok(Parsed::StateChange {
        user_id,
        hint: CallbackHint {
            event_time: clamped,
            action,
            reason,
            kicked_devices,
        },
        replaced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_matches_values_computed_elsewhere() {
        // printf '%s' 'presenced-test-token1764300000' | sha256sum
        assert_eq!(
            sign("presenced-test-token", "1764300000"),
            "d836102164c992fed9d6c3773f4d028e5ba4ca90fb813285b458f81710141c8e"
        );
        // printf '%s' 'abc1629883332' | sha256sum
        assert_eq!(
            sign("abc", "1629883332"),
            "7615a021db5fbbb9273ca153011849f0a223fda006daa96595775212c0486935"
        );
    }

    const WINDOW: EventWindow = EventWindow {
        past_ms: 300_000,
        future_ms: 5_000,
    };

    fn verifier(token: &str) -> Verifier {
        Verifier {
            sdkappid: 1400000000,
            token: Secret::new(token),
            max_skew_secs: 300,
            max_future_secs: 5,
        }
    }

    fn query(sign: &str, time: i64) -> Params {
        Params::parse(&format!(
            "SdkAppid=1400000000&CallbackCommand=State.StateChange&contenttype=json&ClientIP=1.2.3.4&OptPlatform=IOS&Sign={sign}&RequestTime={time}"
        ))
    }

    #[test]
    fn signature_and_freshness() {
        let v = verifier("abc");
        let now = 1629883332;
        let good = "7615a021db5fbbb9273ca153011849f0a223fda006daa96595775212c0486935";
        assert_eq!(v.check(&query(good, now), now), Ok(()));
        assert_eq!(v.check(&query(&good.to_uppercase(), now), now), Ok(()));
        assert_eq!(v.check(&query(good, now), now + 300), Ok(()));
        // The same signed request replayed later than the window.
        assert_eq!(v.check(&query(good, now), now + 301), Err(Rejection::Stale));
        // A RequestTime from this host's future: a few seconds of clock difference, no more.
        assert_eq!(v.check(&query(good, now), now - 5), Ok(()));
        assert_eq!(v.check(&query(good, now), now - 6), Err(Rejection::Stale));
        let wrong = format!("{}0", &good[..63]);
        assert_eq!(
            v.check(&query(&wrong, now), now),
            Err(Rejection::BadSignature)
        );
        // A fresh time with the old signature does not pass.
        assert_eq!(
            v.check(&query(good, now + 10), now + 10),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            v.check(&Params::parse("SdkAppid=1400000000"), now),
            Err(Rejection::BadSignature)
        );
    }

    #[test]
    fn wrong_app_is_refused_with_or_without_a_token() {
        let p = Params::parse("SdkAppid=1400000001&CallbackCommand=State.StateChange");
        assert_eq!(verifier("").check(&p, 0), Err(Rejection::WrongApp));
        assert_eq!(
            verifier("").check(&Params::parse("CallbackCommand=x"), 0),
            Err(Rejection::WrongApp)
        );
        let p = Params::parse("SdkAppid=1400000000");
        assert_eq!(verifier("").check(&p, 0), Ok(()));
    }

    #[test]
    fn bodies() {
        let body = br#"{"CallbackCommand":"State.StateChange","EventTime":1629883332497,
            "Info":{"Action":"Login","To_Account":"u1","Reason":"Register"},
            "KickedDevice":[{"Platform":"Windows"},{"Platform":"iOS"}]}"#;
        assert_eq!(
            parse_body(body, Some(STATE_CHANGE), 1629883332500, WINDOW),
            Ok(Parsed::StateChange {
                user_id: "u1".into(),
                hint: CallbackHint {
                    event_time: 1629883332497,
                    action: "Login".into(),
                    reason: Some("Register".into()),
                    kicked_devices: vec!["Windows".into(), "iOS".into()],
                },
                replaced: vec![],
            })
        );
        let other = br#"{"CallbackCommand":"State.CustomStatusChange","Info":{"To_Account":"u1"}}"#;
        assert_eq!(
            parse_body(other, None, 5, WINDOW),
            Ok(Parsed::Other {
                command: "State.CustomStatusChange".into()
            })
        );
        assert_eq!(
            parse_body(b"<html>", Some(STATE_CHANGE), 5, WINDOW),
            Err(Rejection::BadBody)
        );
        assert_eq!(
            parse_body(
                br#"{"Info":{"Action":"Login"}}"#,
                Some(STATE_CHANGE),
                5,
                WINDOW
            ),
            Err(Rejection::NoAccount)
        );
        let no_time = br#"{"Info":{"Action":"Logout","To_Account":"u2"}}"#;
        match parse_body(no_time, Some(STATE_CHANGE), 5, WINDOW) {
            Ok(Parsed::StateChange { hint, .. }) => {
                assert_eq!(hint.event_time, 5);
                assert_eq!(hint.reason, None);
            }
            other => panic!("{other:?}"),
        }
    }

    /// Forged contents, as a prober sent them: an Action with a line separator and markup, a
    /// 4,000-character Reason, 400 kicked devices, EventTime 0 and i64::MIN and i64::MAX. Stored
    /// as `other`, capped, clamped; nothing overflows.
    #[test]
    fn forged_contents_are_stored_as_other_capped_and_clamped() {
        let now = 1_764_300_000_000;
        let skew = 60_000;
        let window = EventWindow {
            past_ms: skew,
            future_ms: 5_000,
        };
        let devices: Vec<String> = (0..400)
            .map(|i| format!(r#"{{"Platform":"P{i}"}}"#))
            .chain([r#"{"Platform":"iOS"}"#.to_owned()])
            .collect();
        for (event_time, expected) in [
            ("0".to_owned(), now - skew),
            (i64::MIN.to_string(), now - skew),
            (i64::MAX.to_string(), now + 5_000),
            ((now - 5_000).to_string(), now - 5_000),
        ] {
            let body = format!(
                r#"{{"EventTime":{event_time},"Info":{{"Action":"Login\u2028<script>x</script>","To_Account":"u1","Reason":"{}"}},"KickedDevice":[{}]}}"#,
                "R".repeat(4_000),
                devices.join(",")
            );
            let Ok(Parsed::StateChange { hint, replaced, .. }) =
                parse_body(body.as_bytes(), Some(STATE_CHANGE), now, window)
            else {
                panic!("a callback with forged contents is still a callback");
            };
            assert_eq!(hint.event_time, expected, "EventTime {event_time}");
            assert_eq!(hint.action, OTHER);
            assert_eq!(hint.reason.as_deref(), Some(OTHER));
            assert_eq!(
                hint.kicked_devices,
                vec![OTHER.to_owned(), "iOS".to_owned()]
            );
            for field in ["action", "reason", "platform"] {
                assert!(replaced.contains(&field), "{field} in {replaced:?}");
            }
            assert_eq!(replaced.contains(&"event_time"), expected != now - 5_000);
        }
    }
}
