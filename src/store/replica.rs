//! Standby: a follower applies the events it reads from the topic to its history, as the
//! active wrote them (same history ids, event ids and per-account seq), folding each into
//! current state and recording where it goes on reading, all in one transaction; a deposed
//! active drops the rows that never reached the topic.

use super::outbox::mark;
use super::write::{fold_by_account_sql, fold_current_sql, insert_history, INSERT_HISTORY_SQL};
use super::*;
use std::collections::{BTreeSet, HashMap};

/// An event read from the topic, with the history id the active gave it.
#[derive(Debug, Clone)]
pub struct ReplicatedEvent {
    /// Its `presenced_history_id` header.
    pub history_id: i64,
    /// The transition.
    pub record: TransitionRecord,
}

/// What applying a batch of replicated events did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replicated {
    /// Rows added to the history.
    pub applied: usize,
    /// Events the history already held (read again after a restart or a stand-down).
    pub already_held: usize,
    /// Accounts whose `seq` did not follow on from the one before: (account, expected, got).
    pub seq_gaps: Vec<(String, u64, u64)>,
    /// Accounts this history did not know whose first event here is not seq 1: the events
    /// before it are gone from the topic (retention), so this replica lacks their history and
    /// must not become the active (it would number their events from 1 again).
    pub missing_start: Vec<(String, u64)>,
}

/// One change of this instance's role.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RoleChange {
    /// When (Unix ms).
    pub changed_at: i64,
    /// The instance.
    pub instance: String,
    /// `follower` or `active`.
    pub role: String,
    /// Why.
    pub reason: String,
}

impl Db {
    /// Where a follower goes on reading `topic`: the next offset of each partition it applied.
    pub fn replica_positions(&self, topic: &str) -> Result<HashMap<i32, i64>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT partition, next_offset FROM replica_positions WHERE topic = ?1",
        )?;
        let rows = stmt.query_map([topic], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Applies `events` (each partition's in offset order) and records `positions` of `topic`
    /// in one transaction. An event the history already holds (same account and seq, same
    /// event id) is skipped; one that contradicts the history is an error that names the
    /// account, and nothing of the batch is applied.
    pub fn apply_replicated(
        &mut self,
        topic: &str,
        events: &[ReplicatedEvent],
        positions: &[(i32, i64)],
    ) -> Result<Replicated, StoreError> {
        let committed_at = crate::model::now_millis();
        let tx = self.conn.transaction()?;
        let mut done = Replicated::default();
        let mut newest = 0i64;
        {
            let mut held = tx.prepare_cached(
                "SELECT h.event_id FROM presence_history_by_account a
                 JOIN presence_history h ON h.history_id = a.history_id
                 WHERE a.user_id = ?1 AND a.seq = ?2",
            )?;
            let mut at_id =
                tx.prepare_cached("SELECT event_id FROM presence_history WHERE history_id = ?1")?;
            let mut current =
                tx.prepare_cached("SELECT seq FROM presence_current_folded WHERE user_id = ?1")?;
            let mut sweep = tx.prepare_cached(
                "INSERT OR IGNORE INTO sweeps (sweep_id, started_at, finished_at, outcome)
                 VALUES (?1, ?2, ?2, 'completed')",
            )?;
            let mut history = tx.prepare_cached(INSERT_HISTORY_SQL)?;
            let mut by_account =
                tx.prepare_cached(fold_by_account_sql!("history_id > ?1 AND history_id <= ?2"))?;
            let mut fold =
                tx.prepare_cached(fold_current_sql!("history_id > ?1 AND history_id <= ?2"))?;
            for e in events {
                let t = &e.record;
                let event_id = t.event_id.hyphenated().to_string();
                let seq = t.seq as i64;
                let contradiction = |message: String| StoreError::Corrupt {
                    user_id: t.user_id.clone(),
                    message,
                };
                let held_id: Option<String> = held
                    .query_row(params![t.user_id, seq], |r| r.get(0))
                    .optional()?;
                match held_id {
                    Some(id) if id == event_id => {
                        done.already_held += 1;
                        continue;
                    }
                    Some(id) => {
                        return Err(contradiction(format!(
                            "the topic holds event {event_id} as seq {seq}, this history holds {id}: the history went its own way (restored or copied from another database)"
                        )))
                    }
                    None => {}
                }
                if let Some(id) = at_id
                    .query_row([e.history_id], |r| r.get::<_, String>(0))
                    .optional()?
                {
                    return Err(contradiction(format!(
                        "the topic holds event {event_id} at history id {}, this history holds {id} there",
                        e.history_id
                    )));
                }
                let before: Option<i64> =
                    current.query_row([&t.user_id], |r| r.get(0)).optional()?;
                match before {
                    Some(b) if b + 1 != seq && b != 0 => {
                        done.seq_gaps
                            .push((t.user_id.clone(), (b + 1) as u64, t.seq))
                    }
                    Some(0) | None if seq != 1 => {
                        done.missing_start.push((t.user_id.clone(), t.seq))
                    }
                    _ => {}
                }
                sweep.execute(params![t.sweep_id, t.observed_at])?;
                insert_history(&mut history, Some(e.history_id), &event_id, t, committed_at)?;
                by_account.execute([e.history_id - 1, e.history_id])?;
                fold.execute([e.history_id - 1, e.history_id])?;
                newest = newest.max(e.history_id);
                done.applied += 1;
            }
            let mut position = tx.prepare_cached(
                "INSERT INTO replica_positions (topic, partition, next_offset) VALUES (?1, ?2, ?3)
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            )?;
            for (partition, next) in positions {
                position.execute(params![topic, partition, next])?;
            }
        }
        if !done.missing_start.is_empty() {
            let mut incomplete = tx.prepare_cached(
                "INSERT OR IGNORE INTO replica_incomplete (what, found_at) VALUES (?1, ?2)",
            )?;
            for (user, seq) in &done.missing_start {
                let what = format!("account {user} starts at seq {seq} here: its earlier events were gone from the topic");
                incomplete.execute(params![what, committed_at])?;
            }
        }
        if newest > 0 {
            // Every row is on the topic, and every row is folded: a follower folds as it applies.
            tx.execute(
                "UPDATE store_marks SET history_id = MAX(history_id, ?1)
                 WHERE mark = 'published' OR mark = 'folded'",
                [newest],
            )?;
        }
        tx.commit()?;
        self.written();
        Ok(done)
    }

    /// Drops the history rows after the publish mark (a deposed active's, which never reached
    /// the topic, or may have: following reads those back) and re-folds the current state of
    /// their accounts from what is left. Returns how many rows went.
    pub fn drop_unpublished(&mut self) -> Result<usize, StoreError> {
        self.fold_all()?;
        let tx = self.conn.transaction()?;
        let published = mark(&tx, "published")?;
        let accounts: BTreeSet<String> = tx
            .prepare("SELECT DISTINCT user_id FROM presence_history WHERE history_id > ?1")?
            .query_map([published], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        tx.execute(
            "DELETE FROM presence_history_by_account WHERE history_id > ?1",
            [published],
        )?;
        let dropped = tx.execute(
            "DELETE FROM presence_history WHERE history_id > ?1",
            [published],
        )?;
        {
            let mut not_found = tx.prepare(
                "SELECT not_found_since FROM presence_current_folded WHERE user_id = ?1",
            )?;
            let mut forget =
                tx.prepare("DELETE FROM presence_current_folded WHERE user_id = ?1")?;
            let mut refold = tx.prepare(fold_current_sql!("user_id = ?1"))?;
            let mut keep_not_found = tx.prepare(
                "INSERT INTO presence_current_folded (user_id, not_found_since) VALUES (?1, ?2)
                 ON CONFLICT (user_id) DO UPDATE SET not_found_since = excluded.not_found_since",
            )?;
            for user in &accounts {
                let since: Option<i64> = not_found
                    .query_row([user], |r| r.get(0))
                    .optional()?
                    .flatten();
                forget.execute([user])?;
                refold.execute([user])?;
                if let Some(since) = since {
                    keep_not_found.execute(params![user, since])?;
                }
            }
        }
        tx.execute(
            "UPDATE store_marks SET history_id = ?1 WHERE mark = 'folded'",
            [published],
        )?;
        // The ids of the dropped rows are given again: retention walks them then.
        tx.execute(
            "UPDATE prune_cursor SET history_id = MIN(history_id, ?1)",
            [published],
        )?;
        tx.commit()?;
        self.written();
        Ok(dropped)
    }

    /// Why this replica lacks part of the log, if it does (then it must not become the active).
    pub fn replica_incomplete(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT what FROM replica_incomplete ORDER BY found_at LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Records that this replica lacks part of the log: `what`.
    pub fn mark_replica_incomplete(&mut self, what: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO replica_incomplete (what, found_at) VALUES (?1, ?2)",
            params![what, crate::model::now_millis()],
        )?;
        Ok(())
    }

    /// When this database's instance last became the active (ms).
    pub fn last_takeover(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.conn.query_row(
            "SELECT MAX(changed_at) FROM standby_roles WHERE role = 'active'",
            [],
            |r| r.get(0),
        )?)
    }

    /// Logs a change of this instance's role.
    pub fn record_role(
        &mut self,
        instance: &str,
        role: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO standby_roles (changed_at, instance, role, reason) VALUES (?1, ?2, ?3, ?4)",
            params![crate::model::now_millis(), instance, role, reason],
        )?;
        Ok(())
    }

    /// The newest `limit` role changes, newest first.
    pub fn role_changes(&self, limit: usize) -> Result<Vec<RoleChange>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT changed_at, instance, role, reason FROM standby_roles
             ORDER BY rowid DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(RoleChange {
                changed_at: r.get(0)?,
                instance: r.get(1)?,
                role: r.get(2)?,
                reason: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
