//! SQLite: migrations, the watch-list table, current state, history, sweeps and the outbox.
//!
//! A sweep's commit only appends to `presence_history` (the outbox is the history after the
//! sink's mark). `presence_current_folded` and `presence_history_by_account` are derived from
//! the history by `fold`, behind the commits: once per sweep and at start-up. The view
//! `presence_current` lays the rows not folded yet over the folded table, so readers always see
//! the current state. A crash between a commit and its fold loses nothing; the next fold picks
//! the rows up.
//!
//! `Db` is the synchronous API over one connection. `Store` runs a `Db` on a dedicated thread
//! and takes work over a channel, so rusqlite never blocks the async runtime and every write
//! goes through one owner.

pub mod checkpoint;
pub mod migrate;

use crate::model::{platforms_from_json, platforms_to_json, PlatformStatus, State};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("migration {name} failed: {source}")]
    Migration {
        name: &'static str,
        source: rusqlite::Error,
    },
    #[error("the database was written by a newer presenced (schema version {found}; this build knows up to {supported}); refusing to touch it: use the newer presenced")]
    TooNew { found: i64, supported: i64 },
    #[error("the database has an older schema (version {found}; this build reads version {supported}) and this command only reads: run `presenced migrate` with this build, or restart the daemon with it, first")]
    TooOld { found: i64, supported: i64 },
    #[error("corrupt row for account {user_id:?}: {message}")]
    Corrupt { user_id: String, message: String },
    #[error("the store thread has stopped")]
    Closed,
}

/// One account's row in `presence_current`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentRow {
    pub user_id: String,
    pub state: Option<State>,
    pub platforms: Vec<PlatformStatus>,
    pub seq: u64,
    pub observed_at: Option<i64>,
    pub not_found_since: Option<i64>,
}

/// A transition as written: one history row (which is also the outbox entry until published).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRecord {
    pub event_id: uuid::Uuid,
    pub user_id: String,
    pub seq: u64,
    pub from: Option<State>,
    pub from_platforms: Option<Vec<PlatformStatus>>,
    pub to: State,
    pub to_platforms: Vec<PlatformStatus>,
    pub observed_at: i64,
    pub previous_observed_at: Option<i64>,
    pub sweep_id: i64,
}

impl TransitionRecord {
    pub fn kind(&self) -> &'static str {
        if self.from.is_none() {
            "initial"
        } else {
            "changed"
        }
    }
}

/// Everything one transaction writes for a group of batches.
#[derive(Debug, Default, Clone)]
pub struct WriteSet {
    pub transitions: Vec<TransitionRecord>,
    /// Changes of the not-found mark: (user_id, Some(since)) when IM newly reports the account
    /// as not existing, (user_id, None) when it exists again.
    pub not_found: Vec<(String, Option<i64>)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepCounts {
    pub asked: u64,
    pub observed: u64,
    pub failed: u64,
    pub not_found: u64,
    pub transitions: u64,
}

/// A pending event, read back from the outbox for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub history_id: i64,
    pub committed_at: i64,
    pub record: TransitionRecord,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    /// Accounts in the `watched_accounts` table (a watch-list file is not counted here).
    pub watched_in_table: u64,
    pub online: u64,
    pub push_online: u64,
    pub offline: u64,
    pub not_found: u64,
    pub history_rows: u64,
    /// Transitions committed since the last fold (the per-state counts include them).
    pub not_folded: u64,
    pub outbox_backlog: u64,
    pub outbox_oldest_ms: Option<i64>,
    pub last_sweep: Option<SweepRow>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SweepRow {
    pub sweep_id: i64,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub asked: u64,
    pub observed: u64,
    pub failed: u64,
    pub not_found: u64,
    pub transitions: u64,
    pub outcome: String,
}

/// History rows per fold transaction: large enough that each page of the account-keyed tables
/// is written once per sweep, small enough that a fold holds the write lock for well under a
/// second.
pub const FOLD_CHUNK: usize = 50_000;

/// SQLite page cache for the daemon's connection.
const CACHE_KIB: u32 = 64 * 1024;

pub struct Db {
    // Declared first so it stops first: the writer's connection then closes last and SQLite's
    // own checkpoint at close empties the WAL.
    checkpointer: Option<checkpoint::Checkpointer>,
    conn: Connection,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.conn.path())
            .finish()
    }
}

/// A text column borrowed from the row: the read paths run per event and per account, and an
/// owned `String` per column was a measurable part of them.
fn text<'r>(r: &'r rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Option<&'r str>> {
    r.get_ref(idx)?.as_str_or_null().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

fn parse_state(user_id: &str, text: Option<&str>) -> Result<Option<State>, StoreError> {
    text.map(|s| {
        s.parse()
            .map_err(|e: crate::model::UnknownState| StoreError::Corrupt {
                user_id: user_id.to_owned(),
                message: e.to_string(),
            })
    })
    .transpose()
}

fn parse_platforms(
    user_id: &str,
    text: Option<&str>,
) -> Result<Option<Vec<PlatformStatus>>, StoreError> {
    text.map(|t| {
        platforms_from_json(t).map_err(|e| StoreError::Corrupt {
            user_id: user_id.to_owned(),
            message: format!("platforms: {e}"),
        })
    })
    .transpose()
}

impl Db {
    /// Opens (creating if needed) and migrates. WAL so analysts read while we write; FULL sync
    /// so an acknowledged commit survives power loss, not only a process kill.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<Db, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let mut conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        conn.busy_timeout(busy_timeout)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Current state and history indexes take random writes: with a million accounts the
        // default 2 MiB page cache thrashes and writes slow down several times over.
        conn.pragma_update(None, "cache_size", -(CACHE_KIB as i64))?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        migrate::apply(&mut conn)?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Db {
            checkpointer: None,
            conn,
        })
    }

    /// Opens an existing database for reading only: nothing is created or migrated, so a new
    /// binary's read-only command does not change the schema under the daemon that runs.
    pub fn open_read_only(path: &Path, busy_timeout: Duration) -> Result<Db, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        conn.busy_timeout(busy_timeout)?;
        let found: i64 = conn
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get(0),
            )
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        let supported = migrate::latest_version();
        if found > supported {
            return Err(StoreError::TooNew { found, supported });
        }
        if found < supported {
            return Err(StoreError::TooOld { found, supported });
        }
        Ok(Db {
            checkpointer: None,
            conn,
        })
    }

    /// Moves WAL checkpoints off this connection's commits onto a thread of their own (see
    /// `checkpoint`). For the daemon's long-lived writer; short CLI runs keep SQLite's default.
    pub fn checkpoint_in_background(&mut self, busy_timeout: Duration) -> Result<(), StoreError> {
        let Some(path) = self
            .conn
            .path()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
        else {
            return Ok(()); // in memory: there is no WAL
        };
        self.checkpointer = Some(checkpoint::Checkpointer::start(&path, busy_timeout)?);
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // After a large sweep the WAL is reset for reuse; keep at most this much of its file.
        self.conn
            .pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        Ok(())
    }

    fn written(&self) {
        if let Some(c) = &self.checkpointer {
            c.poke();
        }
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    // ---- watch list -------------------------------------------------------------------------

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

    // ---- current state ----------------------------------------------------------------------

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
                 not_found_since = NULL WHERE user_id = ?1",
            )?;
            // The tombstone waits for every event already in the outbox (see pending
            // tombstones): the newest history id is a bound on the account's own.
            let mut tombstone = tx.prepare_cached(
                "INSERT INTO state_tombstones (user_id, removed_at, after_history_id)
                 VALUES (?1, ?2, (SELECT COALESCE(MAX(history_id), 0) FROM presence_history))
                 ON CONFLICT (user_id) DO UPDATE SET removed_at = excluded.removed_at,
                     after_history_id = excluded.after_history_id",
            )?;
            let now = crate::model::now_millis();
            for id in ids {
                stmt.execute([id])?;
                tombstone.execute(params![id, now])?;
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

    // ---- sweeps -----------------------------------------------------------------------------

    /// Marks sweeps that were running when the process died.
    pub fn close_interrupted_sweeps(&self) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE sweeps SET outcome = 'interrupted' WHERE outcome = 'running'",
            [],
        )?)
    }

    pub fn begin_sweep(&self, started_at: i64, asked: u64) -> Result<i64, StoreError> {
        self.conn.execute(
            "INSERT INTO sweeps (started_at, asked) VALUES (?1, ?2)",
            params![started_at, asked as i64],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

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

    // ---- the write path ---------------------------------------------------------------------

    /// Makes a group of batches durable in one transaction: appends their history rows (the
    /// outbox is the history after the sink's mark) and records not-found marks. Current state
    /// follows in the next `fold`.
    pub fn apply(&mut self, set: &WriteSet) -> Result<(), StoreError> {
        let committed_at = crate::model::now_millis();
        let tx = self.conn.transaction()?;
        {
            let mut history = tx.prepare_cached(
                "INSERT INTO presence_history (event_id, user_id, seq, kind, from_state, to_state,
                     from_platforms, to_platforms, observed_at, previous_observed_at, sweep_id, committed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            let mut event_id_text = uuid::Uuid::encode_buffer();
            for t in &set.transitions {
                history.execute(params![
                    &*t.event_id.hyphenated().encode_lower(&mut event_id_text),
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
                ])?;
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
                .prepare_cached(
                    "INSERT INTO presence_history_by_account (user_id, seq, history_id)
                     SELECT user_id, seq, history_id FROM presence_history
                     WHERE history_id > ?1 AND history_id <= ?2 ORDER BY user_id, seq",
                )?
                .execute([from, through]);
            let folded = match folded {
                Ok(n) => n,
                Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) => {
                    return Ok(Err(duplicate_seq(&tx, from, through)?));
                }
                Err(e) => return Err(e),
            };
            tx.prepare_cached(
                "INSERT INTO presence_current_folded (user_id, state, platforms, seq, observed_at, changed_at, not_found_since)
                 SELECT user_id, to_state, to_platforms, seq, observed_at, observed_at, NULL
                 FROM presence_history WHERE history_id > ?1 AND history_id <= ?2 ORDER BY user_id, seq
                 ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, platforms = excluded.platforms,
                     seq = excluded.seq, observed_at = excluded.observed_at, changed_at = excluded.changed_at,
                     not_found_since = CASE WHEN presence_current_folded.not_found_since > excluded.observed_at
                                            THEN presence_current_folded.not_found_since END
                 WHERE excluded.seq > presence_current_folded.seq",
            )?
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

    // ---- outbox -----------------------------------------------------------------------------

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
            "SELECT history_id, committed_at, event_id, user_id, seq, from_state, to_state,
                    from_platforms, to_platforms, observed_at, previous_observed_at, sweep_id
             FROM presence_history
             WHERE history_id > MAX(?1, (SELECT history_id FROM store_marks WHERE mark = 'published'))
               AND history_id <= ?3
             ORDER BY history_id LIMIT ?2",
        )?;
        let mut rows = stmt.query([after, limit as i64, upto])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(read_event(r)?);
        }
        Ok(out)
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

    /// Runs `f` with commits that skip the fsync. Only for writes whose loss at a power cut is
    /// harmless: a lost publish mark means a re-send, which consumers drop by event id; a lost
    /// fold is done again from the history. The next ordinary commit syncs the WAL, these
    /// frames included.
    fn without_fsync<R>(
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

    // ---- reading for people -----------------------------------------------------------------

    pub fn history(
        &self,
        user_id: &str,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<Vec<TransitionRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT history_id, 0, event_id, user_id, seq, from_state, to_state, from_platforms, to_platforms,
                    observed_at, previous_observed_at, sweep_id
             FROM presence_history
             WHERE history_id IN (
                     SELECT history_id FROM presence_history_by_account WHERE user_id = ?1
                     UNION ALL -- the rows not folded yet
                     SELECT history_id FROM presence_history
                     WHERE history_id > (SELECT history_id FROM store_marks WHERE mark = 'folded')
                       AND user_id = ?1)
               AND observed_at >= ?2 AND observed_at < ?3 ORDER BY seq",
        )?;
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
        let mut stmt = self.conn.prepare_cached(
            "SELECT history_id, 0, event_id, user_id, seq, from_state, to_state, from_platforms, to_platforms,
                    observed_at, previous_observed_at, sweep_id
             FROM presence_history
             WHERE history_id > ?1 AND observed_at >= ?2 AND observed_at < ?3 ORDER BY history_id LIMIT ?4",
        )?;
        let mut rows = stmt.query(params![after_id, since, until, limit as i64])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(read_event(r)?);
        }
        Ok(out)
    }

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
        })
    }

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

    // ---- retention --------------------------------------------------------------------------

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
            .query_map(params![cursor, folded, chunk as i64], |r| {
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

fn mark(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT history_id FROM store_marks WHERE mark = ?1")?
        .query_row([name], |r| r.get(0))
}

fn read_event(r: &rusqlite::Row<'_>) -> Result<OutboxEvent, StoreError> {
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
            user_id,
        },
    })
}

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// A `Db` owned by one thread; async callers send it closures.
#[derive(Clone, Debug)]
pub struct Store {
    jobs: mpsc::Sender<Job>,
}

impl Store {
    pub fn spawn(db: Db) -> Store {
        let (jobs, mut rx) = mpsc::channel::<Job>(64);
        std::thread::Builder::new()
            .name("presenced-store".into())
            .spawn(move || {
                let mut db = db;
                while let Some(job) = rx.blocking_recv() {
                    job(&mut db);
                }
            })
            .expect("spawning the store thread");
        Store { jobs }
    }

    pub async fn open(path: &Path, busy_timeout: Duration) -> Result<Store, StoreError> {
        let path = path.to_owned();
        let db = tokio::task::spawn_blocking(move || {
            let mut db = Db::open(&path, busy_timeout)?;
            db.checkpoint_in_background(busy_timeout)?;
            Ok::<_, StoreError>(db)
        })
        .await
        .map_err(|_| StoreError::Closed)??;
        Ok(Store::spawn(db))
    }

    /// Copies the WAL back into the database file before the process exits, without waiting
    /// for readers (what an analyst still holds stays in the WAL, which is just as safe).
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.call(|db| {
            db.connection()
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> Result<R, StoreError> + Send + 'static,
    {
        self.submit(f).await?.result().await
    }

    /// Queues `f` behind the jobs already queued and returns at once; the result is collected
    /// later. Jobs run in the order they were submitted.
    pub async fn submit<R, F>(&self, f: F) -> Result<Submitted<R>, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Db) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |db: &mut Db| {
                let _ = tx.send(f(db));
            }))
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Submitted(rx))
    }
}

/// A job queued on the store thread; dropping it discards the result, not the job.
#[derive(Debug)]
pub struct Submitted<R>(oneshot::Receiver<Result<R, StoreError>>);

impl<R> Submitted<R> {
    pub async fn result(self) -> Result<R, StoreError> {
        self.0.await.map_err(|_| StoreError::Closed)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let db = Db::open(&path, Duration::from_secs(1)).unwrap();
        db.connection()
            .execute(
                "INSERT INTO schema_migrations VALUES (999, 'future.sql', 0)",
                [],
            )
            .unwrap();
        drop(db);
        let err = Db::open(&path, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("newer presenced"), "{err}");
    }

    #[test]
    fn migrations_are_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        drop(Db::open(&path, Duration::from_secs(1)).unwrap());
        let db = Db::open(&path, Duration::from_secs(1)).unwrap();
        let n: i64 = db
            .connection()
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, migrate::latest_version());
        let mode: String = db
            .connection()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    fn record(user: &str, seq: u64, from: Option<State>, to: State, at: i64) -> TransitionRecord {
        TransitionRecord {
            event_id: uuid::Uuid::now_v7(),
            user_id: user.into(),
            seq,
            from,
            from_platforms: from.map(|_| vec![]),
            to,
            to_platforms: vec![],
            observed_at: at,
            previous_observed_at: from.map(|_| at - 1),
            sweep_id: 1,
        }
    }

    fn db_with_sweep(dir: &tempfile::TempDir) -> Db {
        let db = Db::open(&dir.path().join("p.db"), Duration::from_secs(1)).unwrap();
        db.begin_sweep(0, 1).unwrap();
        db
    }

    /// Commits transitions as one sweep group.
    fn commit(db: &mut Db, transitions: Vec<TransitionRecord>) {
        db.apply(&WriteSet {
            transitions,
            not_found: vec![],
        })
        .unwrap();
    }

    fn current(db: &Db, user: &str) -> CurrentRow {
        db.load_current()
            .unwrap()
            .into_iter()
            .find(|r| r.user_id == user)
            .unwrap()
    }

    fn folded_seq(db: &Db, user: &str) -> Option<i64> {
        db.connection()
            .query_row(
                "SELECT seq FROM presence_current_folded WHERE user_id = ?1",
                [user],
                |r| r.get(0),
            )
            .optional()
            .unwrap()
    }

    #[test]
    fn the_fold_brings_current_state_to_the_latest_row_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = db_with_sweep(&dir);
        // Several sweeps' rows for one account, unfolded (as after a crash), in two chunks.
        commit(&mut db, vec![record("a", 1, None, State::Online, 10)]);
        commit(
            &mut db,
            vec![record("a", 2, Some(State::Online), State::Offline, 20)],
        );
        commit(
            &mut db,
            vec![record("a", 3, Some(State::Offline), State::PushOnline, 30)],
        );
        assert_eq!(folded_seq(&db, "a"), None, "commits only append");
        let latest = |db: &Db| {
            let a = current(db, "a");
            (a.state, a.seq, a.observed_at)
        };
        // The view shows the newest row whatever has been folded.
        assert_eq!(latest(&db), (Some(State::PushOnline), 3, Some(30)));
        assert_eq!(db.unfolded().unwrap(), 3);
        assert_eq!(db.fold(2).unwrap(), 2);
        assert_eq!(folded_seq(&db, "a"), Some(2));
        assert_eq!(latest(&db), (Some(State::PushOnline), 3, Some(30)));
        assert_eq!(db.fold_all().unwrap(), 1);
        assert_eq!(db.fold_all().unwrap(), 0);
        assert_eq!(folded_seq(&db, "a"), Some(3));
        assert_eq!(latest(&db), (Some(State::PushOnline), 3, Some(30)));
        assert_eq!(db.unfolded().unwrap(), 0);
    }

    #[test]
    fn an_accounts_history_includes_rows_not_folded_yet() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = db_with_sweep(&dir);
        commit(&mut db, vec![record("a", 1, None, State::Online, 10)]);
        commit(&mut db, vec![record("b", 1, None, State::Online, 10)]);
        db.fold_all().unwrap();
        commit(
            &mut db,
            vec![record("a", 2, Some(State::Online), State::Offline, 20)],
        );
        let seqs: Vec<u64> = db
            .history("a", None, None)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(db.history("a", Some(15), None).unwrap().len(), 1);
    }

    #[test]
    fn a_not_found_mark_after_an_unfolded_row_survives_the_fold() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = db_with_sweep(&dir);
        commit(&mut db, vec![record("a", 1, None, State::Online, 10)]);
        db.apply(&WriteSet {
            transitions: vec![],
            not_found: vec![("a".into(), Some(20))],
        })
        .unwrap();
        assert_eq!(
            current(&db, "a").not_found_since,
            Some(20),
            "before the fold"
        );
        db.fold_all().unwrap();
        assert_eq!(current(&db, "a").not_found_since, Some(20));
        // Seen again with another state: the transition, later than the mark, clears it.
        commit(
            &mut db,
            vec![record("a", 2, Some(State::Online), State::Offline, 30)],
        );
        assert_eq!(current(&db, "a").not_found_since, None, "before the fold");
        db.fold_all().unwrap();
        assert_eq!(current(&db, "a").not_found_since, None);
    }

    #[test]
    fn a_transition_written_twice_stops_the_fold_with_the_account_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = db_with_sweep(&dir);
        commit(&mut db, vec![record("a", 1, None, State::Online, 10)]);
        db.fold_all().unwrap();
        commit(
            &mut db,
            vec![
                record("b", 1, None, State::Online, 20),
                record("a", 1, None, State::Offline, 20),
            ],
        );
        let err = db.fold_all().unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { user_id, message }
                if user_id == "a" && message.contains("seq 1")),
            "{err}"
        );
        assert_eq!(
            db.unfolded().unwrap(),
            2,
            "nothing of the failed chunk is kept"
        );
    }

    #[test]
    fn forgetting_an_account_is_not_undone_by_a_later_fold() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = db_with_sweep(&dir);
        commit(&mut db, vec![record("a", 1, None, State::Online, 10)]);
        db.forget(&["a".to_owned()]).unwrap();
        db.fold_all().unwrap();
        let a = current(&db, "a");
        assert_eq!((a.state, a.seq), (None, 1));
    }

    #[test]
    fn version_2_databases_keep_their_history_and_pending_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            migrate::apply_through(&mut conn, 2).unwrap();
            conn.execute_batch(
                "INSERT INTO sweeps (sweep_id, started_at) VALUES (1, 0);
                 INSERT INTO presence_history (history_id, event_id, user_id, seq, kind, to_state, to_platforms, observed_at, sweep_id)
                 VALUES (1, '01900000-0000-7000-8000-000000000001', 'a', 1, 'initial', 'Online', '[]', 10, 1),
                        (2, '01900000-0000-7000-8000-000000000002', 'b', 1, 'initial', 'Online', '[]', 10, 1),
                        (3, '01900000-0000-7000-8000-000000000003', 'a', 2, 'changed', 'Offline', '[]', 20, 1);
                 INSERT INTO presence_current (user_id, state, platforms, seq, observed_at, changed_at)
                 VALUES ('a', 'Offline', '[]', 2, 20, 20), ('b', 'Online', '[]', 1, 10, 10);
                 -- the first row was published, the other two not yet
                 INSERT INTO outbox (history_id, committed_at) VALUES (2, 11), (3, 21);",
            )
            .unwrap();
        }
        let mut db = Db::open(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(db.outbox_backlog().unwrap(), (2, Some(11)));
        let pending: Vec<i64> = db
            .outbox_batch(0, 10)
            .unwrap()
            .iter()
            .map(|e| e.history_id)
            .collect();
        assert_eq!(pending, vec![2, 3]);
        assert_eq!(db.unfolded().unwrap(), 0);
        assert_eq!(db.history("a", None, None).unwrap().len(), 2);
        // The next transition continues the history.
        commit(
            &mut db,
            vec![record("a", 3, Some(State::Offline), State::Online, 30)],
        );
        db.fold_all().unwrap();
        assert_eq!(current(&db, "a").seq, 3);
        assert_eq!(db.history("a", None, None).unwrap().len(), 3);
    }
}
