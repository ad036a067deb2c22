//! The `sweeps` table: one row per sweep, its counts and outcome, and the summary `stats`.

use super::*;

impl Db {
    /// Marks sweeps that were running when the process died.
    pub fn close_interrupted_sweeps(&self) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE sweeps SET outcome = 'interrupted' WHERE outcome = 'running'",
            [],
        )?)
    }

    /// Records a sweep's start; returns its id.
    pub fn begin_sweep(&self, started_at: i64, asked: u64) -> Result<i64, StoreError> {
        self.conn.execute(
            "INSERT INTO sweeps (started_at, asked) VALUES (?1, ?2)",
            params![started_at, asked as i64],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records a sweep's end, counts and outcome.
    pub fn finish_sweep(
        &self,
        sweep_id: i64,
        finished_at: i64,
        c: SweepCounts,
        outcome: &str,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE sweeps SET finished_at = ?2, asked = ?3, observed = ?4, failed = ?5, not_found = ?6,
             transitions = ?7, outcome = ?8 WHERE sweep_id = ?1",
            params![
                sweep_id,
                finished_at,
                c.asked as i64,
                c.observed as i64,
                c.failed as i64,
                c.not_found as i64,
                c.transitions as i64,
                outcome
            ],
        )?;
        Ok(())
    }

    /// What `presenced stats` shows.
    pub fn stats(&self) -> Result<Stats, StoreError> {
        let c = &self.conn;
        let count = |sql: &str| -> Result<u64, StoreError> {
            Ok(c.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
        };
        let (outbox_backlog, outbox_oldest_ms) = self.outbox_backlog()?;
        // One pass over the view: it merges the rows not folded yet on every read.
        let (online, push_online, offline, not_found) = c.query_row(
            "SELECT COALESCE(SUM(state = 'Online' AND not_found_since IS NULL), 0),
                    COALESCE(SUM(state = 'PushOnline' AND not_found_since IS NULL), 0),
                    COALESCE(SUM(state = 'Offline' AND not_found_since IS NULL), 0),
                    COALESCE(SUM(not_found_since IS NOT NULL), 0)
             FROM presence_current",
            [],
            |r| {
                let n = |i| r.get::<_, i64>(i).map(|v| v as u64);
                Ok((n(0)?, n(1)?, n(2)?, n(3)?))
            },
        )?;
        Ok(Stats {
            watched_in_table: count("SELECT COUNT(*) FROM watched_accounts")?,
            online,
            push_online,
            offline,
            not_found,
            history_rows: count("SELECT COUNT(*) FROM presence_history")?,
            not_folded: self.unfolded()?,
            outbox_backlog,
            outbox_oldest_ms,
            last_sweep: self.last_sweep()?,
            standby_role: self.role_changes(1)?.pop(),
            standby_last_takeover: self.last_takeover()?,
            standby_incomplete: self.replica_incomplete()?,
        })
    }

    /// The latest sweep.
    pub fn last_sweep(&self) -> Result<Option<SweepRow>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT sweep_id, started_at, finished_at, asked, observed, failed, not_found, transitions, outcome
                 FROM sweeps ORDER BY sweep_id DESC LIMIT 1",
                [],
                |r| {
                    Ok(SweepRow {
                        sweep_id: r.get(0)?,
                        started_at: r.get(1)?,
                        finished_at: r.get(2)?,
                        asked: r.get::<_, i64>(3)? as u64,
                        observed: r.get::<_, i64>(4)? as u64,
                        failed: r.get::<_, i64>(5)? as u64,
                        not_found: r.get::<_, i64>(6)? as u64,
                        transitions: r.get::<_, i64>(7)? as u64,
                        outcome: r.get(8)?,
                    })
                },
            )
            .optional()?)
    }
}
