//! The Kafka event, version 1: JSON value, account id as key, CloudEvents headers (binary mode).

use crate::model::TransitionRecord;
use crate::model::{format_millis, PlatformStatus};
use serde::Serialize;

/// The `schema` of a transition event.
pub const SCHEMA: &str = "presenced.transition.v1";
/// The CloudEvents `ce_type` header of a transition event.
pub const CE_TYPE: &str = "io.presenced.transition.v1";

/// A transition event, version 1 (`schemas/transition.v1.json`).
#[derive(Debug, Serialize)]
pub struct EventV1<'a> {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// The transition's UUIDv7.
    pub event_id: String,
    /// The app.
    pub sdkappid: u64,
    /// The account.
    pub user_id: &'a str,
    /// Per-account sequence number.
    pub seq: u64,
    /// `initial` or `changed`.
    pub kind: &'static str,
    /// The state before (null for `initial`).
    pub from: Option<&'static str>,
    /// The state observed.
    pub to: &'static str,
    /// Per-platform states before.
    pub from_platforms: Option<&'a [PlatformStatus]>,
    /// Per-platform states observed.
    pub to_platforms: &'a [PlatformStatus],
    /// RFC 3339 time of the observation.
    pub observed_at: String,
    /// RFC 3339 time of the previous observation.
    pub previous_observed_at: Option<String>,
    /// The sweep that observed it (for a callback's re-query, the sweep running or last started).
    pub sweep_id: i64,
    /// How the change was found: `sweep` or `callback`.
    pub cause: &'static str,
    /// What the callback behind a `callback` change said; null for `sweep`.
    pub callback: Option<CallbackV1<'a>>,
}

/// The `callback` object of an event: the `State.StateChange` callback as IM sent it.
#[derive(Debug, Serialize)]
pub struct CallbackV1<'a> {
    /// RFC 3339 time of the callback's `EventTime`.
    pub event_time: String,
    /// `Info.Action` (Login, Logout, Disconnect, ...).
    pub action: &'a str,
    /// `Info.Reason` (Register, Unregister, LinkClose, TimeOut, ...), if IM sent one.
    pub reason: Option<&'a str>,
    /// `KickedDevice[].Platform`, in the callback's platform names.
    pub kicked_devices: &'a [String],
}

impl<'a> EventV1<'a> {
    /// The event of a transition of app `sdkappid`.
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
            cause: t.cause.as_str(),
            callback: t.cause.callback().map(|h| CallbackV1 {
                event_time: format_millis(h.event_time),
                action: &h.action,
                reason: h.reason.as_deref(),
                kicked_devices: &h.kicked_devices,
            }),
        }
    }

    /// The event as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // An event is 300-500 bytes: one allocation instead of a series of doublings.
        let mut out = Vec::with_capacity(512);
        serde_json::to_writer(&mut out, self).expect("events always serialize");
        out
    }
}

/// The `schema` of a current-state value on the state topic.
pub const STATE_SCHEMA: &str = "presenced.state.v1";

/// The value on the compacted current-state topic: the account's state after `event_id`.
#[derive(Debug, Serialize)]
pub struct StateV1<'a> {
    /// Always [`STATE_SCHEMA`].
    pub schema: &'static str,
    /// The app.
    pub sdkappid: u64,
    /// The account.
    pub user_id: &'a str,
    /// Its current state.
    pub state: &'static str,
    /// Its per-platform states.
    pub platforms: &'a [PlatformStatus],
    /// The `seq` of the event that set it.
    pub seq: u64,
    /// RFC 3339 time of that observation.
    pub observed_at: String,
    /// The id of the event that set it.
    pub event_id: String,
}

impl<'a> StateV1<'a> {
    /// The current-state value after transition `t`.
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

    /// The value as JSON.
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
