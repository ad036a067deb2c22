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
}

impl KafkaEncoder {
    /// The encoder of a sink for app `sdkappid`, with current-state values when `with_state`.
    pub fn new(sdkappid: u64, with_state: bool) -> Self {
        KafkaEncoder {
            sdkappid,
            source: cloudevents_source(sdkappid),
            with_state,
        }
    }

    /// One event's records.
    pub fn encode(&self, t: &TransitionRecord) -> Records {
        let event = EventV1::new(self.sdkappid, t);
        let mut headers = OwnedHeaders::new_with_capacity(7);
        for (key, value) in cloudevents_headers(&event, &self.source) {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
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
            .map(|e| KafkaEncoder::encode(self, &e.record))
            .collect()
    }
}
