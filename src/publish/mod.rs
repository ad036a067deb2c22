//! Drains the outbox into a sink (Kafka or stdout). An event leaves the outbox (the publish mark
//! moves past it) only after its delivery and every delivery before it succeeded, so a sink that
//! is down means a backlog, never a loss.
//!
//! - `publisher`: the loop that reads, sends and settles batches, and moves the mark.
//! - `sink`: what a sink does for it; `kafka` and `stdout` are the sinks.
//! - `settle`: which events of a settled batch leave the outbox.
//! - `config`: `[sink]`, the publisher's waits and retry limits.
//! - `replay`: `presenced replay`.
//! - `event`: the event v1 format.

pub mod config;
pub mod event;
pub mod kafka;
mod publisher;
mod replay;
mod settle;
mod sink;
mod stdout;

pub use config::{SinkConfig, SinkKind};
pub use publisher::{Drained, Publisher};
pub use replay::{replay, ReplayError};
pub use sink::{EncodeBatch, Sink};
pub use stdout::{StdoutSink, StdoutStyle};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Why an event was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The broker did not answer in time.
    #[error("message timed out before the broker acknowledged it")]
    Timeout,
    /// The broker refused the event with an error that may pass (a leader moving, a throttle).
    #[error("broker error: {0}")]
    Broker(String),
    /// The broker refused the event in a way that sending it again cannot fix.
    #[error("broker rejected the event: {0}")]
    Rejected(String),
    /// Another daemon with the same `transactional.id` took over (exactly-once mode): this one
    /// must never write to the topic again.
    #[error("fenced: another presenced with the same transactional.id ({0}) took over publishing")]
    Fenced(String),
    /// The producer went away before the outcome was known.
    #[error("delivery was canceled (producer went away)")]
    Canceled,
    /// Writing to standard output failed.
    #[error("write failed: {0}")]
    Io(String),
}

impl DeliveryError {
    /// Classifies a librdkafka error: final when the broker's answer will not change until an
    /// operator acts (the message is too large for the topic, we are not authorized, the topic
    /// does not exist).
    pub fn from_kafka(e: &KafkaError) -> Self {
        match e.rdkafka_error_code() {
            Some(RDKafkaErrorCode::MessageTimedOut) => DeliveryError::Timeout,
            Some(code) if is_final(code) => DeliveryError::Rejected(e.to_string()),
            _ => DeliveryError::Broker(e.to_string()),
        }
    }

    /// Whether sending the same event again cannot succeed without an operator's change.
    pub fn is_final(&self) -> bool {
        matches!(self, DeliveryError::Rejected(_))
    }

    /// The `kind` label of the delivery-error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            DeliveryError::Timeout => "timeout",
            DeliveryError::Broker(_) => "broker",
            DeliveryError::Rejected(_) => "rejected",
            DeliveryError::Fenced(_) => "fenced",
            DeliveryError::Canceled => "canceled",
            DeliveryError::Io(_) => "io",
        }
    }
}

/// Broker answers that sending again does not change.
fn is_final(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageSizeTooLarge
            | C::InvalidMessageSize
            | C::MessageBatchTooLarge
            | C::TopicAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::TransactionalIdAuthorizationFailed
            | C::UnknownTopic
            | C::InvalidTopic
            | C::InvalidRecord
            | C::UnsupportedForMessageFormat
            | C::PolicyViolation
    )
}
