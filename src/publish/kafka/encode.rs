//! Encoding an event into its Kafka records: the event v1 JSON value with CloudEvents headers,
//! and the current-state value for the state topic.

use crate::model::TransitionRecord;
use crate::publish::event::{cloudevents_headers, cloudevents_source, EventV1, StateV1};
use crate::publish::sink::EncodeBatch;
use crate::store::OutboxEvent;
use rdkafka::message::{Header, OwnedHeaders};

/// One event's Kafka records, encoded: the event value with its CloudEvents headers, and the
/// current-state value when a state topic is configured.
pub struct Records {
    pub(super) value: Vec<u8>,
    pub(super) headers: OwnedHeaders,
    pub(super) state_value: Option<Vec<u8>>,
}

/// Encodes events into [`Records`]; cheap to clone and `Send`, so encoding can run on the store
/// thread while the publisher's task sends the previous batch.
#[derive(Debug, Clone)]
pub struct KafkaEncoder {
    sdkappid: u64,
    /// `ce_source`, the same for every event.
    source: String,
    with_state: bool,
    /// Exactly-once mode: each record carries its history id (header [`HISTORY_ID_HEADER`]), which
    /// a restart reads back to find what was committed.
    with_history_id: bool,
}

/// The header that carries an event's history id (its position in the outbox) in exactly-once
/// mode, as decimal text.
pub const HISTORY_ID_HEADER: &str = "presenced_history_id";

impl KafkaEncoder {
    /// The encoder of a sink for app `sdkappid`, with current-state values when `with_state`.
    pub fn new(sdkappid: u64, with_state: bool) -> Self {
        KafkaEncoder {
            sdkappid,
            source: cloudevents_source(sdkappid),
            with_state,
            with_history_id: false,
        }
    }

    /// Also puts each event's history id in the header [`HISTORY_ID_HEADER`] of its records.
    pub fn with_history_ids(mut self) -> Self {
        self.with_history_id = true;
        self
    }

    /// One event's records.
    pub fn encode(&self, t: &TransitionRecord) -> Records {
        self.encode_with_id(t, None)
    }

    /// One event's records, with its history id in a header when this encoder adds them.
    fn encode_with_id(&self, t: &TransitionRecord, history_id: Option<i64>) -> Records {
        let event = EventV1::new(self.sdkappid, t);
        let mut headers = OwnedHeaders::new_with_capacity(8);
        for (key, value) in cloudevents_headers(&event, &self.source) {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let id_text = history_id
            .filter(|_| self.with_history_id)
            .map(|id| id.to_string());
        if let Some(id) = &id_text {
            headers = headers.insert(Header {
                key: HISTORY_ID_HEADER,
                value: Some(id.as_bytes()),
            });
        }
        Records {
            value: event.to_json(),
            headers,
            state_value: self
                .with_state
                .then(|| StateV1::new(self.sdkappid, t).to_json()),
        }
    }
}

impl EncodeBatch for KafkaEncoder {
    type Encoded = Vec<Records>;

    fn encode(&self, events: &[OutboxEvent]) -> Vec<Records> {
        events
            .iter()
            .map(|e| self.encode_with_id(&e.record, Some(e.history_id)))
            .collect()
    }
}
