//! Before a round with nothing in flight: the sink gets ready, and what the destination already
//! holds (exactly-once: the topic's newest event of this app) is checked against the history
//! before the publish mark moves to it. A topic holding events this database did not publish
//! holds publishing until an operator decides.

use super::{Drained, Publisher};
use crate::publish::kafka::TopicPosition;
use crate::publish::sink::Sink;
use crate::publish::DeliveryError;
use crate::store::StoreError;

impl<S: Sink> Publisher<S> {
    /// Lets the sink get ready (exactly-once: a new producer initialised, the topic read back),
    /// checks that the newest event the topic holds for this app is this database's, and moves
    /// the mark to it. `Some` when the round ends here.
    pub(super) async fn recover(&mut self) -> Result<Option<Drained>, StoreError> {
        let floor = match self.sink.reads_back() {
            Some(topic) => {
                let topic = topic.to_owned();
                self.store.call(move |db| db.publish_floor(&topic)).await?
            }
            None => Default::default(),
        };
        let found = match self.sink.recover(&floor).await {
            Ok(None) => {
                self.set_held(None);
                return Ok(None);
            }
            Ok(Some(found)) => found,
            Err(DeliveryError::Fenced(_)) => return Ok(Some(Drained::Fenced)),
            Err(e) => {
                tracing::debug!(error = %e, "the sink is not ready; trying again after a pause");
                self.metrics.delivery_error(e.kind());
                return Ok(Some(Drained::Failed));
            }
        };
        let history_id = found.history_id;
        let (local, newest, before) = self
            .store
            .call(move |db| {
                Ok((
                    db.event_id_at(history_id)?,
                    db.newest_history_id()?,
                    db.published_mark()?,
                ))
            })
            .await?;
        let verdict = match local {
            Some(local) if local == found.event_id => Ok(()),
            Some(local) => Err(format!("this database has event {local} at that history id: two databases published to this topic (a copy of this database that went its own way, or a database created anew since)")),
            // Pruned long ago: nothing is decided from it, the mark stays.
            None if history_id <= before => Ok(()),
            None if history_id > newest => Err(format!("this database's newest history id is {newest}: it is not the database that published them (created anew, or restored from a backup older than the topic)")),
            None => Err(format!("this database has no row at that history id, above its publish mark ({before}): its unsent rows are gone (deleted by hand, or the database was switched from sink.kind = \"none\", whose retention does not wait for publishing)")),
        };
        if let Err(disagreement) = verdict {
            self.sink.read_back_again();
            self.set_held(Some((&found, &disagreement)));
            return Ok(Some(Drained::Held));
        }
        self.set_held(None);
        self.prefetch = None;
        if history_id > before {
            self.store
                .call(move |db| db.mark_published(history_id))
                .await?;
            tracing::info!(
                from = before,
                to = history_id,
                "the topic already holds events the outbox had not marked as sent (the last run stopped between a commit and its mark): the mark moves past them, nothing is sent twice"
            );
        }
        Ok(None)
    }

    /// Says, once per change, that publishing is held (with why and what to do) or goes on.
    pub(super) fn set_held(&mut self, held: Option<(&TopicPosition, &str)>) {
        self.metrics.publish_held.set(i64::from(held.is_some()));
        let Some(health) = &self.broker_health else {
            return;
        };
        if !health.set_held(held.is_some()) {
            return;
        }
        match held {
            Some((found, disagreement)) => tracing::error!(
                history_id = found.history_id,
                event_id = %found.event_id,
                partition = found.partition,
                offset = found.offset,
                "the events topic's newest event of this app disagrees with this database: {disagreement}. Publishing is held (nothing is sent, the publish mark stays, /readyz fails) so that two histories are not mixed on the topic. To publish this database's events after what the topic holds, run `presenced kafka adopt --config FILE` (unsent events the topic already holds count as sent); or set kafka.topic to a fresh topic. See docs/OPERATIONS.md, \"The topic and the database disagree\""
            ),
            None => {
                tracing::info!("the events topic and this database agree again; publishing resumes")
            }
        }
    }
}
