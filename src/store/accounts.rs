//! The watch-list table, current state and the tombstones of forgotten accounts.

use super::*;

impl Db {
    /// The ids in the `watched_accounts` table, sorted.
    pub fn watched_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT user_id FROM watched_accounts ORDER BY user_id")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Adds ids in chunks of one transaction each; returns how many were new. `progress` is told
    /// how many ids have been handled so far.
    pub fn add_watched(
        &mut self,
        ids: &[String],
        mut progress: impl FnMut(usize),
    ) -> Result<usize, StoreError> {
        let now = crate::model::now_millis();
        let mut added = 0;
        for (i, chunk) in ids.chunks(50_000).enumerate() {
            let tx = self.conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO watched_accounts (user_id, added_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                )?;
                for id in chunk {
                    added += stmt.execute(params![id, now])?;
                }
            }
            tx.commit()?;
            progress((i * 50_000 + chunk.len()).min(ids.len()));
        }
        Ok(added)
    }

    /// Removes ids from the table; returns how many were there.
    pub fn remove_watched(&mut self, ids: &[String]) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let mut removed = 0;
        {
            let mut stmt = tx.prepare_cached("DELETE FROM watched_accounts WHERE user_id = ?1")?;
            for id in ids {
                removed += stmt.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(removed)
    }

    /// Every row of `presence_current`.
    pub fn load_current(&self) -> Result<Vec<CurrentRow>, StoreError> {
        let mut out = Vec::new();
        self.for_each_current(|row| out.push(row))?;
        Ok(out)
    }

    /// Accounts with a folded current state, to size the snapshot before loading it (exact
    /// once `fold_all` ran, as at start-up).
    pub fn current_count(&self) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM presence_current_folded", [], |r| {
                r.get::<_, i64>(0)
            })? as usize)
    }

    /// Streams every `presence_current` row to `f` (rows not folded yet included); returns how
    /// many there were.
    pub fn for_each_current(&self, mut f: impl FnMut(CurrentRow)) -> Result<usize, StoreError> {
        // With nothing left to fold (as at start-up) the table is the view without its merge.
        let source = if self.unfolded()? == 0 {
            "presence_current_folded"
        } else {
            "presence_current"
        };
        let mut stmt = self.conn.prepare(&format!(
            "SELECT user_id, state, platforms, seq, observed_at, not_found_since FROM {source}"
        ))?;
        let mut rows = stmt.query([])?;
        let mut n = 0;
        while let Some(r) = rows.next()? {
            let user_id: String = r.get(0)?;
            let state = parse_state(&user_id, text(r, 1)?)?;
            let platforms = parse_platforms(&user_id, text(r, 2)?)?.unwrap_or_default();
            f(CurrentRow {
                state,
                platforms,
                seq: r.get::<_, i64>(3)? as u64,
                observed_at: r.get(4)?,
                not_found_since: r.get(5)?,
                user_id,
            });
            n += 1;
        }
        Ok(n)
    }

    /// The account left the watch list: forget its state (its next observation, if it comes
    /// back, is `initial` again) but keep its sequence number.
    pub fn forget(&mut self, ids: &[String]) -> Result<(), StoreError> {
        // A later fold of older rows must not bring the state back.
        self.fold_all()?;
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE presence_current_folded SET state = NULL, platforms = NULL, observed_at = NULL,
                 not_found_since = NULL, state_since = NULL WHERE user_id = ?1",
            )?;
            // The tombstone waits for every event already in the outbox (see pending
            // tombstones): the newest history id is a bound on the account's own.
            let mut tombstone = tx.prepare_cached(
                "INSERT INTO state_tombstones (user_id, removed_at, after_history_id)
                 VALUES (?1, ?2, (SELECT COALESCE(MAX(history_id), 0) FROM presence_history))
                 ON CONFLICT (user_id) DO UPDATE SET removed_at = excluded.removed_at,
                     after_history_id = excluded.after_history_id",
            )?;
            let mut estimates =
                tx.prepare_cached("DELETE FROM poll_estimates WHERE user_id = ?1")?;
            let now = crate::model::now_millis();
            for id in ids {
                stmt.execute([id])?;
                tombstone.execute(params![id, now])?;
                estimates.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Accounts waiting for a tombstone on the state topic, oldest first.
    pub fn pending_tombstones(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT user_id FROM state_tombstones ORDER BY removed_at, user_id LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The tombstones the publisher may send now, oldest first: every one when `all` (no state
    /// topic, so order does not matter), else those whose account's events committed before its
    /// removal are all published, so its last state record is on the topic before its tombstone.
    pub fn tombstones_due(&self, limit: usize, all: bool) -> Result<Vec<String>, StoreError> {
        if self.tombstone_barrier()?.is_none() {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT user_id FROM state_tombstones
             WHERE ?2 OR after_history_id <= (SELECT history_id FROM store_marks WHERE mark = 'published')
             ORDER BY after_history_id, removed_at, user_id LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64, all], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// While a tombstone is pending, the history id the outbox may be read up to: no further,
    /// so that the state records of an account removed and added again follow its tombstone.
    pub fn tombstone_barrier(&self) -> Result<Option<i64>, StoreError> {
        // Asked every publisher round; MIN over the (almost always empty) table is one lookup,
        // where an ordered query would build a sorter even over nothing.
        Ok(self
            .conn
            .prepare_cached("SELECT MIN(after_history_id) FROM state_tombstones")?
            .query_row([], |r| r.get(0))?)
    }

    /// Forgets tombstones that were delivered (or have nowhere to go).
    pub fn delete_tombstones(&mut self, ids: &[String]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached("DELETE FROM state_tombstones WHERE user_id = ?1")?;
            for id in ids {
                stmt.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}
