//! The outbox: the history after the sink's `published` mark, read in commit order.

use super::*;

impl Db {
    /// The oldest pending events after `after`, in commit order (which is per-account order).
    pub fn outbox_batch(&self, after: i64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        self.outbox_batch_upto(after, i64::MAX, limit)
    }

    /// [`Db::outbox_batch`], reading no event after `upto`.
    pub fn outbox_batch_upto(
        &self,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            concat!(
                "SELECT history_id, committed_at, ",
                event_columns!(),
                " FROM presence_history
             WHERE history_id > MAX(?1, (SELECT history_id FROM store_marks WHERE mark = 'published'))
               AND history_id <= ?3
             ORDER BY history_id LIMIT ?2"
            ),
        )?;
        let mut rows = stmt.query([after, limit as i64, upto])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(read_event(r)?);
        }
        Ok(out)
    }

    /// The publish mark: every event up to this history id was acknowledged.
    pub fn published_mark(&self) -> Result<i64, StoreError> {
        Ok(mark(&self.conn, "published")?)
    }

    /// Records that every event up to and including `history_id` was acknowledged: they leave
    /// the outbox. The mark only moves forward.
    pub fn mark_published(&mut self, history_id: i64) -> Result<(), StoreError> {
        self.without_fsync(|conn| {
            conn.prepare_cached(
                "UPDATE store_marks SET history_id = MAX(history_id, ?1) WHERE mark = 'published'",
            )?
            .execute([history_id])
        })?;
        Ok(())
    }

    /// Moves the publish mark past every event: with no sink configured nothing waits to be
    /// published (`presenced replay` still sends any stretch of the history).
    pub fn mark_all_published(&mut self) -> Result<(), StoreError> {
        let newest = self.newest_history_id()?;
        self.mark_published(newest)
    }

    /// Runs `f` with commits that skip the fsync. Only for writes whose loss at a power cut is
    /// harmless: a lost publish mark means a re-send, which consumers drop by event id; a lost
    /// fold is done again from the history. The next ordinary commit syncs the WAL, these
    /// frames included.
    pub(super) fn without_fsync<R>(
        &mut self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        let result = f(&self.conn);
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        self.written();
        Ok(result?)
    }

    /// (pending events, commit time of the oldest), in two index lookups however long Kafka was
    /// away: history ids above the publish mark have no gaps (SQLite hands out max + 1, and
    /// retention never deletes past the mark), so the count is a difference.
    pub fn outbox_backlog(&self) -> Result<(u64, Option<i64>), StoreError> {
        Ok(self.conn.query_row(
            "SELECT MAX(0, COALESCE((SELECT MAX(history_id) FROM presence_history), 0) - m.history_id),
                    (SELECT committed_at FROM presence_history WHERE history_id > m.history_id
                     ORDER BY history_id LIMIT 1)
             FROM store_marks m WHERE m.mark = 'published'",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
        )?)
    }
}

pub(super) fn mark(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT history_id FROM store_marks WHERE mark = ?1")?
        .query_row([name], |r| r.get(0))
}

/// The columns [`read_event`] reads after `history_id` and a commit time, in its order.
macro_rules! event_columns {
    () => {
        "event_id, user_id, seq, from_state, to_state, from_platforms, to_platforms, observed_at,
         previous_observed_at, sweep_id, cause, callback_event_time, callback_action,
         callback_reason, kicked_devices"
    };
}
pub(super) use event_columns;

/// The cause of a history row from its columns (12 to 16).
fn read_cause(r: &rusqlite::Row<'_>, user_id: &str) -> Result<Cause, StoreError> {
    match text(r, 12)? {
        Some("sweep") | None => Ok(Cause::Sweep),
        Some("callback") => {
            let kicked = match text(r, 16)? {
                Some(json) => serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
                    user_id: user_id.to_owned(),
                    message: format!("kicked_devices {json:?}: {e}"),
                })?,
                None => vec![],
            };
            Ok(Cause::Callback(Box::new(CallbackHint {
                event_time: r.get::<_, Option<i64>>(13)?.unwrap_or_default(),
                action: text(r, 14)?.unwrap_or_default().to_owned(),
                reason: text(r, 15)?.map(str::to_owned),
                kicked_devices: kicked,
            })))
        }
        Some(other) => Err(StoreError::Corrupt {
            user_id: user_id.to_owned(),
            message: format!("unknown cause {other:?}"),
        }),
    }
}

pub(super) fn read_event(r: &rusqlite::Row<'_>) -> Result<OutboxEvent, StoreError> {
    let user_id: String = r.get(3)?;
    let event_text = text(r, 2)?.unwrap_or_default();
    let event_id = uuid::Uuid::parse_str(event_text).map_err(|e| StoreError::Corrupt {
        user_id: user_id.clone(),
        message: format!("event id {event_text:?}: {e}"),
    })?;
    let to = parse_state(&user_id, text(r, 6)?)?.ok_or_else(|| StoreError::Corrupt {
        user_id: user_id.clone(),
        message: "history row without to_state".into(),
    })?;
    Ok(OutboxEvent {
        history_id: r.get(0)?,
        committed_at: r.get(1)?,
        record: TransitionRecord {
            event_id,
            seq: r.get::<_, i64>(4)? as u64,
            from: parse_state(&user_id, text(r, 5)?)?,
            to,
            from_platforms: parse_platforms(&user_id, text(r, 7)?)?,
            to_platforms: parse_platforms(&user_id, text(r, 8)?)?.unwrap_or_default(),
            observed_at: r.get(9)?,
            previous_observed_at: r.get(10)?,
            sweep_id: r.get(11)?,
            cause: read_cause(r, &user_id)?,
            user_id,
        },
    })
}
