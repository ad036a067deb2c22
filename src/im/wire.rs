//! The JSON of `query_online_status` / `querystate`, and the strict reading of an answer into
//! per-account outcomes. Nothing here trusts the server: every oddity becomes an error for the
//! batch or for the account, never a guessed state.

use crate::model::{PlatformStatus, Presence, State};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The body of a query call.
#[derive(Debug, Serialize, Deserialize)]
pub struct QueryRequest<'a> {
    /// The accounts asked about (at most 500).
    #[serde(rename = "To_Account", borrow)]
    pub to_account: Vec<&'a str>,
    /// 1 for per-platform detail.
    #[serde(rename = "IsNeedDetail")]
    pub is_need_detail: u8,
}

/// The body of IM's answer, read strictly.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct QueryResponse {
    /// `OK` or `FAIL`.
    #[serde(rename = "ActionStatus", default)]
    pub action_status: Option<String>,
    /// 0, or the top-level error code.
    #[serde(rename = "ErrorCode", default)]
    pub error_code: Option<i64>,
    /// IM's error text.
    #[serde(rename = "ErrorInfo", default)]
    pub error_info: Option<String>,
    /// One entry per account IM knows.
    #[serde(rename = "QueryResult", default, skip_serializing_if = "Vec::is_empty")]
    pub query_result: Vec<AccountResult>,
    /// Accounts IM reports an error for (70107: does not exist).
    #[serde(rename = "ErrorList", default, skip_serializing_if = "Vec::is_empty")]
    pub error_list: Vec<AccountError>,
}

/// One account's answer.
#[derive(Debug, Deserialize, Serialize)]
pub struct AccountResult {
    /// The account.
    #[serde(rename = "To_Account")]
    pub to_account: String,
    /// `Status` in current docs, `State` in the seed page and older docs.
    #[serde(rename = "Status", alias = "State")]
    pub status: String,
    /// Per-platform states, when asked for.
    #[serde(rename = "Detail", default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Vec<PlatformDetail>>,
}

/// One platform's state.
#[derive(Debug, Deserialize, Serialize)]
pub struct PlatformDetail {
    /// The platform as IM names it (iPhone, Android, Web, PC, ...).
    #[serde(rename = "Platform")]
    pub platform: String,
    /// `Online`, `PushOnline` or `Offline`.
    #[serde(rename = "Status", alias = "State")]
    pub status: String,
}

/// An account IM reports an error for.
#[derive(Debug, Deserialize, Serialize)]
pub struct AccountError {
    /// The account.
    #[serde(rename = "To_Account")]
    pub to_account: String,
    /// The error code (70107: the account does not exist).
    #[serde(rename = "ErrorCode")]
    pub error_code: i64,
}

/// What one call said about one account that was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountOutcome {
    /// A state was observed.
    Observed(Presence),
    /// 70107: the account does not exist.
    NotFound,
    /// No usable answer for this account; the reason is for logs and metrics.
    Failed(AccountFailure),
}

/// Why an asked account has no observation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountFailure {
    /// IM answered with this error code for it.
    #[error("error code {0} in ErrorList")]
    Code(i64),
    /// The answer did not mention it.
    #[error("missing from both QueryResult and ErrorList")]
    Missing,
    /// The answer gave it two different states.
    #[error("answered more than once with different contents")]
    Conflicting,
    /// Its state was not one IM defines.
    #[error("unreadable state: {0}")]
    BadState(String),
}

/// Problems with an answer as a whole (the batch yields no observation at all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The body is not the JSON IM sends.
    #[error("body is not the expected JSON: {0}")]
    Malformed(String),
    /// A non-zero top-level error code.
    #[error("IM error {code}: {info}")]
    Api {
        /// The code.
        code: i64,
        /// IM's text.
        info: String,
    },
}

/// Parses a body. Only a clean top-level success yields per-account outcomes.
pub fn parse_answer(body: &[u8]) -> Result<QueryResponse, AnswerError> {
    let resp: QueryResponse =
        serde_json::from_slice(body).map_err(|e| AnswerError::Malformed(e.to_string()))?;
    let code = resp
        .error_code
        .ok_or_else(|| AnswerError::Malformed("no ErrorCode".into()))?;
    // IM's top-level code is non-zero only when every account failed; with an ErrorList beside
    // it (70107 for each when none exists) the answer still says what happened to each account.
    if code != 0 && resp.query_result.is_empty() && !resp.error_list.is_empty() {
        return Ok(resp);
    }
    if code != 0 {
        return Err(AnswerError::Api {
            code,
            info: resp.error_info.clone().unwrap_or_default(),
        });
    }
    match resp.action_status.as_deref() {
        Some("OK") | None => Ok(resp),
        Some(other) => Err(AnswerError::Malformed(format!(
            "ErrorCode 0 with ActionStatus {other:?}"
        ))),
    }
}

/// Matches an answer against the ids asked for. Every asked id gets exactly one outcome; ids the
/// answer names but were never asked for are returned separately so the caller can log them.
pub fn outcomes(
    asked: &[String],
    resp: QueryResponse,
) -> (Vec<(String, AccountOutcome)>, Vec<String>) {
    let mut by_id: HashMap<&str, Option<AccountOutcome>> =
        asked.iter().map(|id| (id.as_str(), None)).collect();
    let mut unasked = Vec::new();
    let mut put = |id: String, outcome: AccountOutcome, unasked: &mut Vec<String>| match by_id
        .get_mut(id.as_str())
    {
        None => unasked.push(id),
        Some(slot @ None) => *slot = Some(outcome),
        Some(Some(existing)) => {
            if *existing != outcome {
                *existing = AccountOutcome::Failed(AccountFailure::Conflicting);
            }
        }
    };
    for r in resp.query_result {
        let outcome = match presence_of(&r) {
            Ok(p) => AccountOutcome::Observed(p),
            Err(why) => AccountOutcome::Failed(AccountFailure::BadState(why)),
        };
        put(r.to_account, outcome, &mut unasked);
    }
    for e in resp.error_list {
        let outcome = if e.error_code == super::codes::ACCOUNT_NOT_FOUND {
            AccountOutcome::NotFound
        } else {
            AccountOutcome::Failed(AccountFailure::Code(e.error_code))
        };
        put(e.to_account, outcome, &mut unasked);
    }
    let result = asked
        .iter()
        .map(|id| {
            let outcome = by_id
                .get_mut(id.as_str())
                .and_then(Option::take)
                .unwrap_or(AccountOutcome::Failed(AccountFailure::Missing));
            (id.clone(), outcome)
        })
        .collect();
    (result, unasked)
}

fn presence_of(r: &AccountResult) -> Result<Presence, String> {
    let state: State = r
        .status
        .parse()
        .map_err(|e: crate::model::UnknownState| e.to_string())?;
    let mut platforms = Vec::new();
    for d in r.detail.iter().flatten() {
        let status = d
            .status
            .parse()
            .map_err(|e: crate::model::UnknownState| e.to_string())?;
        platforms.push(PlatformStatus {
            platform: d.platform.clone(),
            status,
        });
    }
    Ok(Presence::new(state, platforms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_status_or_state_detail_and_errors() {
        let body = br#"{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0,"Extra":1,
            "QueryResult":[{"To_Account":"a","Status":"Online","Detail":[{"Platform":"iPhone","Status":"PushOnline"},{"Platform":"Web","Status":"Online"}]},
                           {"To_Account":"b","State":"Offline"}],
            "ErrorList":[{"To_Account":"c","ErrorCode":70107},{"To_Account":"d","ErrorCode":70500}]}"#;
        let resp = parse_answer(body).unwrap();
        let (out, unasked) = outcomes(&ids(&["a", "b", "c", "d", "e"]), resp);
        assert!(unasked.is_empty());
        match &out[0].1 {
            AccountOutcome::Observed(p) => {
                assert_eq!(p.state, State::Online);
                assert_eq!(p.platforms.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            out[1].1,
            AccountOutcome::Observed(Presence::new(State::Offline, vec![]))
        );
        assert_eq!(out[2].1, AccountOutcome::NotFound);
        assert_eq!(
            out[3].1,
            AccountOutcome::Failed(AccountFailure::Code(70500))
        );
        assert_eq!(out[4].1, AccountOutcome::Failed(AccountFailure::Missing));
    }

    #[test]
    fn top_level_error_is_an_error_not_offline() {
        let body =
            br#"{"ActionStatus":"FAIL","ErrorInfo":"Fail to Parse json data","ErrorCode":90001}"#;
        assert_eq!(
            parse_answer(body).unwrap_err(),
            AnswerError::Api {
                code: 90001,
                info: "Fail to Parse json data".into()
            }
        );
        assert!(matches!(
            parse_answer(b"<html>502</html>"),
            Err(AnswerError::Malformed(_))
        ));
        assert!(matches!(
            parse_answer(br#"{"ActionStatus":"OK","Query"#),
            Err(AnswerError::Malformed(_))
        ));
        assert!(matches!(
            parse_answer(br#"{"ActionStatus":"OK"}"#),
            Err(AnswerError::Malformed(_))
        ));
    }

    #[test]
    fn unasked_duplicate_and_unknown_state() {
        let body = br#"{"ActionStatus":"OK","ErrorCode":0,"QueryResult":[
            {"To_Account":"a","Status":"Online"},{"To_Account":"a","Status":"Offline"},
            {"To_Account":"b","Status":"Away"},{"To_Account":"zz","Status":"Online"},
            {"To_Account":"c","Status":"Online"},{"To_Account":"c","Status":"Online"}]}"#;
        let (out, unasked) = outcomes(&ids(&["a", "b", "c"]), parse_answer(body).unwrap());
        assert_eq!(unasked, vec!["zz".to_string()]);
        assert_eq!(
            out[0].1,
            AccountOutcome::Failed(AccountFailure::Conflicting)
        );
        assert!(matches!(
            out[1].1,
            AccountOutcome::Failed(AccountFailure::BadState(_))
        ));
        assert_eq!(
            out[2].1,
            AccountOutcome::Observed(Presence::new(State::Online, vec![]))
        );
    }
}
