//! Reading the history for people (`presenced history`) and retention.

use super::outbox::{event_columns, mark, read_event};
use super::*;

impl Db {
    /// How many history rows were observed in `[since, until)`.
    pub fn history_count_between(&self, since: i64, until: i64) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM presence_history WHERE observed_at >= ?1 AND observed_at < ?2",
            [since, until],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// One account's transitions observed in `[since, until)`, oldest first.
    pub fn history(
        &self,
        user_id: &str,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<Vec<TransitionRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(concat!(
            "SELECT history_id, 0, ",
            event_columns!(),
            " FROM presence_history
             WHERE history_id IN (
                     SELECT history_id FROM presence_history_by_account WHERE user_id = ?1
                     UNION ALL -- the rows not folded yet
                     SELECT history_id FROM presence_history
                     WHERE history_id > (SELECT history_id FROM store_marks WHERE mark = 'folded')
                       AND user_id = ?1)
               AND observed_at >= ?2 AND observed_at < ?3 ORDER BY seq"
        ))?;
        let mut rows = stmt.query(params![
            user_id,
            since.unwrap_or(i64::MIN),
            until.unwrap_or(i64::MAX)
        ])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(read_event(r)?.record);
        }
        Ok(out)
    }

    /// History in commit order between two times, for `replay`.
    pub fn history_range(
        &self,
        since: i64,
        until: i64,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let mut stmt = self.conn.prepare_cached(concat!(
            "SELECT history_id, 0, ",
            event_columns!(),
            " FROM presence_history
             WHERE history_id > ?1 AND observed_at >= ?2 AND observed_at < ?3
             ORDER BY history_id LIMIT ?4"
        ))?;
        let mut rows = stmt.query(params![after_id, since, until, limit as i64])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(read_event(r)?);
        }
        Ok(out)
    }

    /// Retention, one chunk: walks the history in order from where the last call stopped (at
    /// most `chunk` rows, each folded) and deletes, for each row, the row before it of the same
    /// account, if that one was observed before `before` and, when `wait_for_publish`, was
    /// published. So an account's latest row always stays (it anchors the open session), and a
    /// call costs the rows added since the last one, not the idle accounts' old rows. The walk
    /// stops at a row whose predecessor is too young or unpublished and goes on from there next
    /// time. Returns how many rows it walked; call until 0, each call its own short transaction.
    pub fn prune_history(
        &mut self,
        before: i64,
        chunk: usize,
        wait_for_publish: bool,
    ) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let cursor: i64 = tx.query_row("SELECT history_id FROM prune_cursor", [], |r| r.get(0))?;
        let folded = mark(&tx, "folded")?;
        let published = match wait_for_publish {
            true => mark(&tx, "published")?,
            false => i64::MAX,
        };
        let rows: Vec<(i64, String, i64)> = tx
            .prepare_cached(
                "SELECT history_id, user_id, seq FROM presence_history
                 WHERE history_id > ?1 AND history_id <= ?2 ORDER BY history_id LIMIT ?3",
            )?
            // Only rows that reached the sink: a row that may still be dropped (a deposed
            // standby active's) never deletes the published row before it.
            .query_map(params![cursor, folded.min(published), chunk as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut walked_to = cursor;
        let mut walked = 0;
        {
            let mut predecessor = tx.prepare_cached(
                "SELECT a.history_id, h.observed_at FROM presence_history_by_account a
                 JOIN presence_history h USING (history_id) WHERE a.user_id = ?1 AND a.seq = ?2",
            )?;
            let mut delete_row =
                tx.prepare_cached("DELETE FROM presence_history WHERE history_id = ?1")?;
            let mut delete_index = tx.prepare_cached(
                "DELETE FROM presence_history_by_account WHERE user_id = ?1 AND seq = ?2",
            )?;
            for (history_id, user_id, seq) in rows {
                let previous: Option<(i64, i64)> = predecessor
                    .query_row(params![user_id, seq - 1], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((previous_id, observed_at)) = previous {
                    if observed_at >= before || previous_id > published {
                        break;
                    }
                    delete_row.execute([previous_id])?;
                    delete_index.execute(params![user_id, seq - 1])?;
                }
                walked_to = history_id;
                walked += 1;
            }
        }
        tx.execute("UPDATE prune_cursor SET history_id = ?1", [walked_to])?;
        tx.commit()?;
        Ok(walked)
    }
}
