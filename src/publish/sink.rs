//! What the publisher needs from a sink: encode a batch (on the store thread, next to the read),
//! start delivering it, and later collect one result per event. Each sink has its own encoding
//! and in-flight types, so a batch can only reach the sink that encoded it.

use super::kafka::health::BrokerHealth;
use super::DeliveryError;
use crate::publish::kafka::TopicPosition;
use crate::store::OutboxEvent;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Turns outbox events into what a sink sends. `Send` and cheap to clone, so the publisher runs
/// it on the store thread together with the read, off its own sending loop.
pub trait EncodeBatch: Clone + Send + Sync + 'static {
    /// A batch's encoding.
    type Encoded: Send + Sync + 'static;
    /// Encodes `events`, in order.
    fn encode(&self, events: &[OutboxEvent]) -> Self::Encoded;
}

/// A batch of outbox events with their encoding.
pub struct Batch<E> {
    /// The events, in outbox order.
    pub events: Vec<OutboxEvent>,
    /// Their encoding for the sink.
    pub encoded: E,
}

impl<E> std::fmt::Debug for Batch<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Batch({} events)", self.events.len())
    }
}

/// Encodes `events` into a [`Batch`].
pub fn encode_batch<E: EncodeBatch>(encoder: &E, events: Vec<OutboxEvent>) -> Batch<E::Encoded> {
    let encoded = encoder.encode(&events);
    Batch { events, encoded }
}

/// Where the publisher delivers events.
pub trait Sink: Send + Sync + 'static {
    /// The sink's encoder.
    type Encoder: EncodeBatch;
    /// A started batch whose outcome may still be pending.
    type Pending: Send + Sync + 'static;
    /// What a reload may change (a Kafka sink's `[kafka]`; `()` for sinks with nothing to
    /// reload).
    type Settings: Clone + Send + Sync + 'static;

    /// A new encoder for this sink's current settings.
    fn encoder(&self) -> Self::Encoder;

    /// How many batches may be started before the oldest must be finished.
    fn window(&self) -> usize;

    /// The topic whose floor (`presenced kafka adopt`) the next [`Sink::recover`] needs: `Some`
    /// when a sink that can tell what its destination holds is due to read it back.
    fn reads_back(&self) -> Option<&str> {
        None
    }

    /// Called before a round while nothing is in flight. A sink that can tell what its
    /// destination already holds (exactly-once) gets ready and, when due, answers the newest
    /// event of this database committed there (looking only from `floor`, per partition, on);
    /// the publisher checks it against the history and moves its mark to it. Others answer
    /// `None`.
    fn recover(
        &mut self,
        _floor: &HashMap<i32, i64>,
    ) -> impl Future<Output = Result<Option<TopicPosition>, DeliveryError>> + Send {
        async { Ok(None) }
    }

    /// The publisher did not accept what [`Sink::recover`] found: read back again next time.
    fn read_back_again(&mut self) {}

    /// Starts delivering a batch, in order after every batch started before it.
    fn start(
        &mut self,
        events: &[OutboxEvent],
        encoded: <Self::Encoder as EncodeBatch>::Encoded,
    ) -> impl Future<Output = Self::Pending> + Send;

    /// Waits for a started batch's outcome: one result per event, in order.
    fn finish(
        &mut self,
        pending: Self::Pending,
    ) -> impl Future<Output = Vec<Result<(), DeliveryError>>> + Send;

    /// Waits up to `timeout` for whatever is in flight.
    fn flush(&self, timeout: Duration) -> impl Future<Output = ()> + Send;

    /// Whether pending tombstones go anywhere (a Kafka state topic). When they do not, the
    /// publisher drops them.
    fn has_state_topic(&self) -> bool {
        false
    }

    /// Delivers tombstones for accounts that left the watch list; one result per account.
    fn deliver_tombstones(
        &mut self,
        user_ids: &[String],
    ) -> impl Future<Output = Vec<Result<(), DeliveryError>>> + Send {
        let done = vec![Ok(()); user_ids.len()];
        async move { done }
    }

    /// The brokers' health as this sink sees it, if it talks to brokers.
    fn broker_health(&self) -> Option<Arc<BrokerHealth>> {
        None
    }

    /// Whether a round may be cut short to apply new settings (it is for a producer waiting on
    /// a long outage); when not, new settings wait for the round to end.
    fn rounds_interruptible(&self) -> bool {
        true
    }

    /// Applies reloaded settings (a Kafka sink's `[kafka]`); on an error nothing changed.
    fn reconfigure(&mut self, _settings: &Self::Settings) -> Result<(), String> {
        Ok(())
    }
}

/// Delivers `events` and waits for the outcome: for `replay`, which sends page by page.
pub async fn deliver<S: Sink>(
    sink: &mut S,
    events: Vec<OutboxEvent>,
) -> (Vec<OutboxEvent>, Vec<Result<(), DeliveryError>>) {
    let encoded = sink.encoder().encode(&events);
    let pending = sink.start(&events, encoded).await;
    let results = sink.finish(pending).await;
    (events, results)
}
