//! The write path: a sweep's commit appends history rows; the fold derives current state
//! from them behind the commits.

use super::outbox::mark;
use super::*;

/// Indexes the history rows that `$rows` selects by account.
macro_rules! fold_by_account_sql {
    ($rows:literal) => {
        concat!(
            "INSERT INTO presence_history_by_account (user_id, seq, history_id)
             SELECT user_id, seq, history_id FROM presence_history
             WHERE ",
            $rows,
            " ORDER BY user_id, seq"
        )
    };
}

/// Folds the history rows that `$rows` selects into current state, each account's in seq order.
macro_rules! fold_current_sql {
    ($rows:literal) => {
        concat!(
            "INSERT INTO presence_current_folded (user_id, state, platforms, seq, observed_at, changed_at,
                 not_found_since, state_since, left_online_at)
             SELECT user_id, to_state, to_platforms, seq, observed_at, observed_at, NULL, observed_at,
                    CASE WHEN from_state = 'Online' AND to_state != 'Online' THEN previous_observed_at END
             FROM presence_history WHERE ", $rows, " ORDER BY user_id, seq
             ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, platforms = excluded.platforms,
                 seq = excluded.seq, observed_at = excluded.observed_at, changed_at = excluded.changed_at,
                 not_found_since = CASE WHEN presence_current_folded.not_found_since > excluded.observed_at
                                        THEN presence_current_folded.not_found_since END,
                 state_since = CASE WHEN presence_current_folded.state IS excluded.state
                                    THEN COALESCE(presence_current_folded.state_since, excluded.state_since)
                                    ELSE excluded.state_since END,
                 left_online_at = COALESCE(excluded.left_online_at, presence_current_folded.left_online_at)
             WHERE excluded.seq > presence_current_folded.seq"
        )
    };
}
pub(super) use {fold_by_account_sql, fold_current_sql};

/// Appends one history row; a `None` history id takes the next one.
pub(super) const INSERT_HISTORY_SQL: &str =
    "INSERT INTO presence_history (history_id, event_id, user_id, seq, kind, from_state, to_state,
         from_platforms, to_platforms, observed_at, previous_observed_at, sweep_id, committed_at,
         cause, callback_event_time, callback_action, callback_reason, kicked_devices)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)";

/// Runs [`INSERT_HISTORY_SQL`] for transition `t`.
pub(super) fn insert_history(
    stmt: &mut rusqlite::CachedStatement<'_>,
    history_id: Option<i64>,
    event_id: &str,
    t: &TransitionRecord,
    committed_at: i64,
) -> rusqlite::Result<usize> {
    let hint = t.cause.callback();
    stmt.execute(params![
        history_id,
        event_id,
        t.user_id,
        t.seq as i64,
        t.kind(),
        t.from.map(State::as_str),
        t.to.as_str(),
        t.from_platforms.as_deref().map(platforms_to_json),
        platforms_to_json(&t.to_platforms),
        t.observed_at,
        t.previous_observed_at,
        t.sweep_id,
        committed_at,
        t.cause.as_str(),
        hint.map(|h| h.event_time),
        hint.map(|h| h.action.as_str()),
        hint.and_then(|h| h.reason.as_deref()),
        hint.and_then(|h| h.kicked_devices_json()),
    ])
}

impl Db {
    /// Makes a group of batches durable in one transaction: appends their history rows (the
    /// outbox is the history after the sink's mark) and records not-found marks. Current state
    /// follows in the next `fold`.
    pub fn apply(&mut self, set: &WriteSet) -> Result<(), StoreError> {
        let committed_at = crate::model::now_millis();
        let tx = self.conn.transaction()?;
        {
            let mut history = tx.prepare_cached(INSERT_HISTORY_SQL)?;
            let mut event_id_text = uuid::Uuid::encode_buffer();
            for t in &set.transitions {
                let event_id = &*t.event_id.hyphenated().encode_lower(&mut event_id_text);
                insert_history(&mut history, None, event_id, t, committed_at)?;
            }
            let mut not_found = tx.prepare_cached(
                "INSERT INTO presence_current_folded (user_id, not_found_since) VALUES (?1, ?2)
                 ON CONFLICT (user_id) DO UPDATE SET not_found_since = excluded.not_found_since",
            )?;
            for (user_id, since) in &set.not_found {
                not_found.execute(params![user_id, since])?;
            }
        }
        tx.commit()?;
        self.written();
        Ok(())
    }

    /// Brings `presence_current_folded` and `presence_history_by_account` up to date with the
    /// history, at most `limit` history rows per call (one transaction each, so that other work
    /// on this connection interleaves). Returns how many rows it folded; 0 means up to date.
    ///
    /// Idempotent and order-safe: a row only replaces an account's current state when its seq
    /// is higher, and a not-found mark written after the row's observation survives it.
    pub fn fold(&mut self, limit: usize) -> Result<usize, StoreError> {
        // Derived data, rebuilt from the history if a power cut loses it (the mark goes with it).
        let folded = self.without_fsync(|conn| {
            let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
            let from = mark(&tx, "folded")?;
            let Some(through): Option<i64> = tx.query_row(
                "SELECT MAX(history_id) FROM
                     (SELECT history_id FROM presence_history WHERE history_id > ?1
                      ORDER BY history_id LIMIT ?2)",
                params![from, limit as i64],
                |r| r.get(0),
            )?
            else {
                return Ok(Ok(0));
            };
            // In account order, so each page of the account-keyed tables is visited once.
            let folded = tx
                .prepare_cached(fold_by_account_sql!("history_id > ?1 AND history_id <= ?2"))?
                .execute([from, through]);
            let folded = match folded {
                Ok(n) => n,
                Err(e)
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) =>
                {
                    return Ok(Err(duplicate_seq(&tx, from, through)?));
                }
                Err(e) => return Err(e),
            };
            tx.prepare_cached(fold_current_sql!("history_id > ?1 AND history_id <= ?2"))?
                .execute([from, through])?;
            tx.prepare_cached("UPDATE store_marks SET history_id = ?1 WHERE mark = 'folded'")?
                .execute([through])?;
            tx.commit()?;
            Ok(Ok(folded))
        });
        folded?.map_err(|(user_id, seq)| StoreError::Corrupt {
            user_id,
            message: format!("two history rows with seq {seq}; current state cannot be folded"),
        })
    }

    /// Folds everything pending (see `fold`); returns how many rows.
    pub fn fold_all(&mut self) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            match self.fold(FOLD_CHUNK)? {
                0 => return Ok(total),
                n => total += n,
            }
        }
    }

    /// History rows not yet folded into current state.
    pub fn unfolded(&self) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM presence_history
             WHERE history_id > (SELECT history_id FROM store_marks WHERE mark = 'folded')",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }
}

/// The (account, seq) that a fold of `(from, through]` found twice: within those rows, or once
/// there and once already folded. A bug that wrote a transition twice; the error names the
/// account so that the history can be repaired by hand.
fn duplicate_seq(conn: &Connection, from: i64, through: i64) -> rusqlite::Result<(String, i64)> {
    conn.query_row(
        "SELECT user_id, seq FROM (
             SELECT user_id, seq FROM presence_history WHERE history_id > ?1 AND history_id <= ?2
             UNION ALL
             SELECT a.user_id, a.seq FROM presence_history_by_account a
             JOIN presence_history h ON h.user_id = a.user_id AND h.seq = a.seq
             WHERE h.history_id > ?1 AND h.history_id <= ?2)
         GROUP BY user_id, seq HAVING COUNT(*) > 1 LIMIT 1",
        [from, through],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}
