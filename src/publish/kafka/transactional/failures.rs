//! What the exactly-once sink does when a transactional call fails: librdkafka's classes
//! (retriable, abortable, fatal), a commit whose outcome is unknown (never aborted), and
//! fencing (another daemon took over, or the broker timed an old transaction out: the topic
//! tells which).

use super::{Ownership, TopicPosition, TransactionalSink};
use crate::publish::event::cloudevents_source;
use crate::publish::kafka::read_back::read_back;
use crate::publish::DeliveryError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use std::collections::HashMap;

impl TransactionalSink {
    /// Sorts a transactional error: fenced (stop for good), fatal (a new producer, then
    /// `init_transactions` and a read-back), abortable or other (abort, read back, send again).
    pub(super) fn failed(&mut self, lane: usize, what: &str, error: KafkaError) -> DeliveryError {
        self.poisoned = true;
        let (fatal, requires_abort) = match &error {
            KafkaError::Transaction(e) => (e.is_fatal(), e.txn_requires_abort()),
            _ => (false, true),
        };
        let l = &self.lanes[lane];
        let fatal_code = l.sink.producer.client().fatal_error().map(|(c, _)| c);
        let code = error.rdkafka_error_code().or(fatal_code);
        let young = l.began.is_none_or(|t| t.elapsed() < self.timeout());
        if is_fenced(code) && young {
            return self.stop_fenced(&format!("{what}: {error}"));
        }
        self.needs_read_back = true;
        if let Some(first) = l.first_id.filter(|_| is_fenced(code)) {
            // Decided at the next recovery, from the topic, before anything is re-created.
            tracing::warn!(error = %error, "{what}: fenced on a transaction older than kafka.transaction_timeout_ms; the topic tells whether the broker timed it out or another presenced took over");
            self.fencing_unclear = Some(self.fencing_unclear.map_or(first, |f| f.min(first)));
            return DeliveryError::Broker(format!("{what}: {error}"));
        }
        if fatal || fatal_code.is_some() {
            tracing::warn!(error = %error, "{what} failed with a fatal error; re-creating the transactional producer");
            self.recreate(lane);
        } else if requires_abort || self.lanes[lane].began.is_some() {
            self.lanes[lane].needs_abort = true;
            tracing::warn!(error = %error, "{what} failed; the transaction is aborted and its batch sent again");
        }
        DeliveryError::Broker(format!("{what}: {error}"))
    }

    /// Stops publishing for good: another daemon with our `transactional.id` took over.
    pub(super) fn stop_fenced(&mut self, why: &str) -> DeliveryError {
        let base = self.lanes[0].id.clone();
        if self.fenced.is_none() {
            self.health().fenced();
            tracing::error!(
                transactional_id = %base,
                error = %why,
                "another presenced with the same transactional.id took over: this one stops publishing for good (restart it only once the other is stopped)"
            );
        }
        self.fenced = Some(base.clone());
        DeliveryError::Fenced(base)
    }

    /// After fencing on an old transaction whose batch began at `first`: if the topic holds
    /// this app's events from `first` on, another daemon committed them (ours were aborted by
    /// the fencing, and ours commit in order), so it took over; otherwise the broker timed the
    /// transaction out, and the fenced producers are re-created.
    pub(super) async fn settle_fencing(
        &mut self,
        first: i64,
        floor: &HashMap<i32, i64>,
    ) -> Result<(), DeliveryError> {
        let found = self.read_topic_back(floor).await?;
        if let Some(found) = found.filter(|f| f.history_id >= first) {
            return Err(self.stop_fenced(&format!(
                "the topic holds history id {} (partition {} offset {}), committed after this daemon's last transaction began at {first}",
                found.history_id, found.partition, found.offset
            )));
        }
        tracing::warn!("no other presenced committed since the fenced transaction began: the broker timed it out; the producers are re-created");
        for lane in 0..2 {
            if self.lanes[lane]
                .sink
                .producer
                .client()
                .fatal_error()
                .is_some()
            {
                self.recreate(lane);
            }
        }
        self.fencing_unclear = None;
        Ok(())
    }

    /// Reads the topic back: this database's newest committed event there.
    pub(super) async fn read_topic_back(
        &mut self,
        floor: &HashMap<i32, i64>,
    ) -> Result<Option<TopicPosition>, DeliveryError> {
        let settings = self.settings().clone();
        let source = cloudevents_source(self.lanes[0].sink.sdkappid);
        let floor = floor.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let own = Ownership {
                source: &source,
                floor: &floor,
            };
            read_back(&settings, &own)
        })
        .await
        .expect("the read-back does not panic");
        match committed {
            Ok(committed) => {
                self.health().read_back_succeeded();
                Ok(committed)
            }
            Err(e) => {
                self.health().read_back_failed(&self.settings().topic, &e);
                Err(DeliveryError::Broker(format!(
                    "reading back the topic: {e}"
                )))
            }
        }
    }

    /// A commit that failed. Unless librdkafka says the transaction must be aborted (then it
    /// was not committed), its outcome is unknown: the coordinator may have written the commit
    /// marker. Aborting it then fails for good (`_CONFLICT` after a timed-out commit, `_STATE`
    /// after one that succeeded), so the transaction is never aborted: the lane gets a new
    /// producer, whose `init_transactions` makes the coordinator finish what the old one
    /// started, and the read-back tells which way it went.
    pub(super) fn commit_failed(&mut self, lane: usize, error: KafkaError) -> DeliveryError {
        let requires_abort = matches!(&error, KafkaError::Transaction(e) if e.txn_requires_abort());
        let outcome_known =
            requires_abort || is_fenced(error.rdkafka_error_code()) || self.fenced.is_some();
        if outcome_known {
            return self.failed(lane, "committing the transaction", error);
        }
        self.poisoned = true;
        self.needs_read_back = true;
        tracing::warn!(error = %error, "committing a transaction failed and its outcome is unknown; the producer is re-created (never aborted: the commit may have landed) and the topic read back before anything is sent again");
        self.lanes[lane].commit_unknown = true;
        self.recreate(lane);
        DeliveryError::Broker(format!("committing the transaction: {error}"))
    }

    /// A record was refused before the commit: the transaction is aborted and sent again.
    pub(super) fn abort_needed(
        &mut self,
        lane: usize,
        what: &str,
        error: DeliveryError,
    ) -> DeliveryError {
        tracing::warn!(error = %error, "{what} failed; the transaction is aborted and its batch sent again");
        self.lanes[lane].needs_abort = true;
        self.needs_read_back = true;
        self.poisoned = true;
        error
    }

    pub(super) fn recreate(&mut self, lane: usize) {
        let l = &mut self.lanes[lane];
        match crate::publish::kafka::create_producer(&l.sink.settings, Some(&l.id), &l.sink.health)
        {
            Ok(p) => {
                let old = std::mem::replace(&mut l.sink.producer, p);
                tokio::task::spawn_blocking(move || drop(old));
                l.needs_init = true;
                l.needs_abort = false;
                l.commit_unknown = false;
                l.began = None;
            }
            Err(e) => {
                tracing::error!(error = %e, "re-creating the transactional producer failed; will retry")
            }
        }
    }
}

/// Whether a code says another producer with our `transactional.id` took over.
fn is_fenced(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)
    )
}
