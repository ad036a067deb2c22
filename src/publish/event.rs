//! The Kafka event, version 1: JSON value, account id as key, CloudEvents headers (binary mode).

use crate::model::TransitionRecord;
use crate::model::{format_millis, PlatformStatus};
use serde::Serialize;

pub const SCHEMA: &str = "presenced.transition.v1";
pub const CE_TYPE: &str = "io.presenced.transition.v1";

#[derive(Debug, Serialize)]
pub struct EventV1<'a> {
    pub schema: &'static str,
    pub event_id: String,
    pub sdkappid: u64,
    pub user_id: &'a str,
    pub seq: u64,
    pub kind: &'static str,
    pub from: Option<&'static str>,
    pub to: &'static str,
    pub from_platforms: Option<&'a [PlatformStatus]>,
    pub to_platforms: &'a [PlatformStatus],
    pub observed_at: String,
    pub previous_observed_at: Option<String>,
    pub sweep_id: i64,
}

impl<'a> EventV1<'a> {
    pub fn new(sdkappid: u64, t: &'a TransitionRecord) -> Self {
        EventV1 {
            schema: SCHEMA,
            event_id: t.event_id.hyphenated().to_string(),
            sdkappid,
            user_id: &t.user_id,
            seq: t.seq,
            kind: t.kind(),
            from: t.from.map(|s| s.as_str()),
            to: t.to.as_str(),
            from_platforms: t.from_platforms.as_deref(),
            to_platforms: &t.to_platforms,
            observed_at: format_millis(t.observed_at),
            previous_observed_at: t.previous_observed_at.map(format_millis),
            sweep_id: t.sweep_id,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // An event is 300-500 bytes: one allocation instead of a series of doublings.
        let mut out = Vec::with_capacity(512);
        serde_json::to_writer(&mut out, self).expect("events always serialize");
        out
    }
}

pub const STATE_SCHEMA: &str = "presenced.state.v1";

/// The value on the compacted current-state topic: the account's state after `event_id`.
#[derive(Debug, Serialize)]
pub struct StateV1<'a> {
    pub schema: &'static str,
    pub sdkappid: u64,
    pub user_id: &'a str,
    pub state: &'static str,
    pub platforms: &'a [PlatformStatus],
    pub seq: u64,
    pub observed_at: String,
    pub event_id: String,
}

impl<'a> StateV1<'a> {
    pub fn new(sdkappid: u64, t: &'a TransitionRecord) -> Self {
        StateV1 {
            schema: STATE_SCHEMA,
            sdkappid,
            user_id: &t.user_id,
            state: t.to.as_str(),
            platforms: &t.to_platforms,
            seq: t.seq,
            observed_at: format_millis(t.observed_at),
            event_id: t.event_id.hyphenated().to_string(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("states always serialize")
    }
}

/// `ce_source` of every event from one app.
pub fn cloudevents_source(sdkappid: u64) -> String {
    format!("/presenced/{sdkappid}")
}

/// CloudEvents binary-mode headers for one event, as (name, value) pairs. The values borrow
/// from the encoded event, so the id and time are formatted once for both.
pub fn cloudevents_headers<'e>(
    event: &'e EventV1<'_>,
    source: &'e str,
) -> [(&'static str, &'e str); 7] {
    [
        ("ce_specversion", "1.0"),
        ("ce_id", &event.event_id),
        ("ce_type", CE_TYPE),
        ("ce_source", source),
        ("ce_subject", event.user_id),
        ("ce_time", &event.observed_at),
        ("content-type", "application/json"),
    ]
}
