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
    /// The body is larger than `callback.max_body_bytes`.
    TooLarge,
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
            Rejection::BadBody | Rejection::NoAccount => 400,
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
    /// Allowed distance of `RequestTime` from this host's clock, seconds.
    pub max_skew_secs: u64,
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
            if at.abs_diff(now_secs) > self.max_skew_secs {
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
        /// What the callback said.
        hint: CallbackHint,
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

/// Reads a body; `command` is the query's `CallbackCommand`, `received_ms` stands in for a
/// missing `EventTime`.
pub fn parse_body(
    body: &[u8],
    command: Option<&str>,
    received_ms: i64,
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
    // EventTime is a number in IM's samples; a numeric string is read too.
    let event_time = match body.event_time {
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(received_ms);
    Ok(Parsed::StateChange {
        user_id,
        hint: CallbackHint {
            event_time,
            action: info.action.unwrap_or_default(),
            reason: info.reason.filter(|r| !r.is_empty()),
            kicked_devices: body
                .kicked_device
                .into_iter()
                .filter_map(|k| k.platform)
                .collect(),
        },
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

    fn verifier(token: &str) -> Verifier {
        Verifier {
            sdkappid: 1400000000,
            token: Secret::new(token),
            max_skew_secs: 300,
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
            parse_body(body, Some(STATE_CHANGE), 5),
            Ok(Parsed::StateChange {
                user_id: "u1".into(),
                hint: CallbackHint {
                    event_time: 1629883332497,
                    action: "Login".into(),
                    reason: Some("Register".into()),
                    kicked_devices: vec!["Windows".into(), "iOS".into()],
                }
            })
        );
        let other = br#"{"CallbackCommand":"State.CustomStatusChange","Info":{"To_Account":"u1"}}"#;
        assert_eq!(
            parse_body(other, None, 5),
            Ok(Parsed::Other {
                command: "State.CustomStatusChange".into()
            })
        );
        assert_eq!(
            parse_body(b"<html>", Some(STATE_CHANGE), 5),
            Err(Rejection::BadBody)
        );
        assert_eq!(
            parse_body(br#"{"Info":{"Action":"Login"}}"#, Some(STATE_CHANGE), 5),
            Err(Rejection::NoAccount)
        );
        let no_time = br#"{"Info":{"Action":"Logout","To_Account":"u2"}}"#;
        match parse_body(no_time, Some(STATE_CHANGE), 5) {
            Ok(Parsed::StateChange { hint, .. }) => {
                assert_eq!(hint.event_time, 5);
                assert_eq!(hint.reason, None);
            }
            other => panic!("{other:?}"),
        }
    }
}
