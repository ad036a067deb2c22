//! Reading an event back from its Kafka record: the event v1 JSON and the history id header,
//! into the transition the active wrote.

use crate::model::{parse_time_arg, CallbackHint, Cause, PlatformStatus, State, TransitionRecord};
use crate::publish::kafka::HISTORY_ID_HEADER;
use crate::store::ReplicatedEvent;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use serde::Deserialize;

/// What a record of the events topic is to a follower.
#[derive(Debug)]
pub enum Record {
    /// One of this app's events, with its history id.
    Event(ReplicatedEvent),
    /// Another producer's record (another app, `presenced replay`, at-least-once delivery):
    /// not part of this app's log.
    Foreign,
}

/// A record of this app that cannot be read: the log of record is damaged.
#[derive(Debug, thiserror::Error)]
#[error("partition {partition} offset {offset}: {message}")]
pub struct UnreadableEvent {
    /// Where.
    pub partition: i32,
    /// Where.
    pub offset: i64,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
struct WireEvent {
    event_id: String,
    user_id: String,
    seq: u64,
    from: Option<State>,
    to: State,
    from_platforms: Option<Vec<PlatformStatus>>,
    to_platforms: Vec<PlatformStatus>,
    observed_at: String,
    previous_observed_at: Option<String>,
    sweep_id: i64,
    cause: String,
    callback: Option<WireCallback>,
}

#[derive(Deserialize)]
struct WireCallback {
    event_time: String,
    action: String,
    reason: Option<String>,
    kicked_devices: Vec<String>,
}

/// Reads `message`: this app's (its `ce_source` is `source`) event with a history id, or not ours.
pub fn decode(message: &BorrowedMessage<'_>, source: &str) -> Result<Record, UnreadableEvent> {
    let mut history_id = None;
    let mut ours = false;
    if let Some(headers) = message.headers() {
        for h in headers.iter() {
            match h.key {
                "ce_source" => ours = h.value == Some(source.as_bytes()),
                k if k == HISTORY_ID_HEADER => {
                    history_id = h
                        .value
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .and_then(|v| v.parse::<i64>().ok())
                }
                _ => {}
            }
        }
    }
    let (Some(history_id), true) = (history_id.filter(|id| *id > 0), ours) else {
        return Ok(Record::Foreign);
    };
    let bad = |text: String| UnreadableEvent {
        partition: message.partition(),
        offset: message.offset(),
        message: text,
    };
    let wire: WireEvent = serde_json::from_slice(message.payload().unwrap_or_default())
        .map_err(|e| bad(format!("not an event v1: {e}")))?;
    let time =
        |text: &str, field: &str| parse_time_arg(text).map_err(|e| bad(format!("{field}: {e}")));
    let cause = match (wire.cause.as_str(), wire.callback) {
        ("sweep", _) => Cause::Sweep,
        ("callback", Some(c)) => Cause::Callback(Box::new(CallbackHint {
            event_time: time(&c.event_time, "callback.event_time")?,
            action: c.action,
            reason: c.reason,
            kicked_devices: c.kicked_devices,
        })),
        (other, _) => return Err(bad(format!("cause {other:?} without its callback"))),
    };
    let event_id = uuid::Uuid::parse_str(&wire.event_id)
        .map_err(|e| bad(format!("event_id {:?}: {e}", wire.event_id)))?;
    let record = TransitionRecord {
        event_id,
        user_id: wire.user_id,
        seq: wire.seq,
        from: wire.from,
        from_platforms: wire.from_platforms,
        to: wire.to,
        to_platforms: wire.to_platforms,
        observed_at: time(&wire.observed_at, "observed_at")?,
        previous_observed_at: wire
            .previous_observed_at
            .as_deref()
            .map(|t| time(t, "previous_observed_at"))
            .transpose()?,
        sweep_id: wire.sweep_id,
        cause,
    };
    Ok(Record::Event(ReplicatedEvent { history_id, record }))
}
