//! What the publisher checks a topic against: which event this database holds at a history id,
//! where on a topic this database's events begin (`presenced kafka adopt`), and how many
//! partitions the topic had.

use super::*;
use std::collections::HashMap;

impl Db {
    /// The event id of the history row `history_id`, if the row exists (it may have been pruned,
    /// or never written).
    pub fn event_id_at(&self, history_id: i64) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT event_id FROM presence_history WHERE history_id = ?1")?
            .query_row([history_id], |r| r.get(0))
            .optional()?)
    }

    /// The newest history id (0 for an empty history).
    pub fn newest_history_id(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(MAX(history_id), 0) FROM presence_history",
            [],
            |r| r.get(0),
        )?)
    }

    /// Per partition of `topic`, the offset from which records may be this database's.
    pub fn publish_floor(&self, topic: &str) -> Result<HashMap<i32, i64>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT partition_id, start_offset FROM publish_floor WHERE topic = ?1",
        )?;
        let rows = stmt.query_map([topic], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that this database's events on `topic` begin at these offsets (replacing what
    /// was recorded before), and that the topic has as many partitions as `floor` names. With
    /// `on_topic`, the unsent events the topic already holds count as sent: the longest run of
    /// them from the publish mark on, so that the first one it lacks, and all after it, are
    /// still published. Returns how many were counted as sent.
    pub fn adopt_topic(
        &mut self,
        topic: &str,
        floor: &[(i32, i64)],
        on_topic: Option<&std::collections::HashSet<String>>,
    ) -> Result<u64, StoreError> {
        let now = crate::model::now_millis();
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM publish_floor WHERE topic = ?1", [topic])?;
        for (partition, offset) in floor {
            tx.execute(
                "INSERT INTO publish_floor (topic, partition_id, start_offset, adopted_at)
                 VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![topic, partition, offset, now],
            )?;
        }
        tx.execute(
            "INSERT INTO topic_partitions (topic, partitions, seen_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (topic) DO UPDATE SET partitions = excluded.partitions, seen_at = excluded.seen_at",
            rusqlite::params![topic, floor.len() as i64, now],
        )?;
        let mut skipped = 0;
        if let Some(on_topic) = on_topic {
            let mark = super::outbox::mark(&tx, "published")?;
            let mut through = mark;
            {
                let mut stmt = tx.prepare(
                    "SELECT history_id, event_id FROM presence_history
                     WHERE history_id > ?1 ORDER BY history_id",
                )?;
                let mut rows = stmt.query([mark])?;
                while let Some(row) = rows.next()? {
                    let event_id: String = row.get(1)?;
                    if !on_topic.contains(&event_id) {
                        break;
                    }
                    through = row.get(0)?;
                    skipped += 1;
                }
            }
            tx.execute(
                "UPDATE store_marks SET history_id = MAX(history_id, ?1) WHERE mark = 'published'",
                [through],
            )?;
        }
        tx.commit()?;
        Ok(skipped)
    }

    /// How many partitions `topic` had when this database last started publishing to it.
    pub fn topic_partitions(&self, topic: &str) -> Result<Option<i32>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT partitions FROM topic_partitions WHERE topic = ?1")?
            .query_row([topic], |r| r.get(0))
            .optional()?)
    }

    /// Records how many partitions `topic` has now.
    pub fn record_topic_partitions(
        &mut self,
        topic: &str,
        partitions: i32,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO topic_partitions (topic, partitions, seen_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (topic) DO UPDATE SET partitions = excluded.partitions, seen_at = excluded.seen_at",
            rusqlite::params![topic, partitions, crate::model::now_millis()],
        )?;
        Ok(())
    }
}
