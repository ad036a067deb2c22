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

mod accounts;
mod checkpoint;
pub mod config;
mod estimates;
mod history;
pub mod migrate;
mod outbox;
mod position;
mod replica;
pub mod space;
mod sweeps;
#[cfg(test)]
mod tests;
mod thread;
mod write;

pub use replica::{Replicated, ReplicatedEvent, RoleChange};
pub use thread::{Store, Submitted};

use crate::model::{
    platforms_from_json, platforms_to_json, CallbackHint, Cause, PlatformStatus, State,
    TransitionRecord,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file could not be opened.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// A migration failed (its transaction rolled back).
    #[error("migration {name} failed: {source}")]
    Migration {
        /// The migration's file.
        name: &'static str,
        /// Why.
        source: rusqlite::Error,
    },
    /// A newer build wrote the database.
    #[error("the database was written by a newer presenced (schema version {found}; this build knows up to {supported}); refusing to touch it: use the newer presenced")]
    TooNew {
        /// The version found.
        found: i64,
        /// The newest this build knows.
        supported: i64,
    },
    /// A read-only command found a schema older than this build's.
    #[error("the database has an older schema (version {found}; this build reads version {supported}) and this command only reads: run `presenced migrate` with this build, or restart the daemon with it, first")]
    TooOld {
        /// The version found.
        found: i64,
        /// The version this build reads.
        supported: i64,
    },
    /// A row that does not parse.
    #[error("corrupt row for account {user_id:?}: {message}")]
    Corrupt {
        /// The account of the row.
        user_id: String,
        /// What does not parse.
        message: String,
    },
    /// The store thread is gone.
    #[error("the store thread has stopped")]
    Closed,
}

impl StoreError {
    /// Whether the configured database is at fault (cannot be opened, or is too new for this
    /// build) rather than a failure while working with it.
    pub fn is_configuration(&self) -> bool {
        matches!(self, StoreError::TooNew { .. } | StoreError::Open { .. })
    }

    /// Whether the write failed for want of space: the filesystem is full, or the database
    /// reached `store.max_size_mb`. Nothing committed is lost; the write can be retried later.
    pub fn is_full(&self) -> bool {
        let source = match self {
            StoreError::Sqlite(e) => e,
            StoreError::Migration { source, .. } => source,
            _ => return false,
        };
        source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
    }
}

/// One account's row in `presence_current`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentRow {
    /// The account.
    pub user_id: String,
    /// Its state; `None` once it left the watch list.
    pub state: Option<State>,
    /// Its per-platform states.
    pub platforms: Vec<PlatformStatus>,
    /// The `seq` of its latest event.
    pub seq: u64,
    /// When its state was last written (ms).
    pub observed_at: Option<i64>,
    /// Since when IM says it does not exist (ms).
    pub not_found_since: Option<i64>,
}

/// Everything one transaction writes for a group of batches.
#[derive(Debug, Default, Clone)]
pub struct WriteSet {
    /// History rows to append.
    pub transitions: Vec<TransitionRecord>,
    /// Changes of the not-found mark: (user_id, Some(since)) when IM newly reports the account
    /// as not existing, (user_id, None) when it exists again.
    pub not_found: Vec<(String, Option<i64>)>,
}

/// A sweep's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepCounts {
    /// Accounts asked about.
    pub asked: u64,
    /// Accounts with an observation.
    pub observed: u64,
    /// Accounts without one.
    pub failed: u64,
    /// Accounts IM says do not exist.
    pub not_found: u64,
    /// Transitions committed.
    pub transitions: u64,
}

/// A pending event, read back from the outbox for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Its position in the history.
    pub history_id: i64,
    /// When it was committed (ms).
    pub committed_at: i64,
    /// The transition.
    pub record: TransitionRecord,
}

/// What `presenced stats` shows.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    /// Accounts in the `watched_accounts` table (a watch-list file is not counted here).
    pub watched_in_table: u64,
    /// Accounts Online.
    pub online: u64,
    /// Accounts PushOnline.
    pub push_online: u64,
    /// Accounts Offline.
    pub offline: u64,
    /// Accounts that do not exist.
    pub not_found: u64,
    /// Rows in the history.
    pub history_rows: u64,
    /// Transitions committed since the last fold (the per-state counts include them).
    pub not_folded: u64,
    /// Events not yet acknowledged by the sink.
    pub outbox_backlog: u64,
    /// Commit time of the oldest of them (ms).
    pub outbox_oldest_ms: Option<i64>,
    /// The latest sweep.
    pub last_sweep: Option<SweepRow>,
    /// `[standby]`: this database's latest role change, if it ever had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby_role: Option<RoleChange>,
    /// `[standby]`: when it last became the active (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby_last_takeover: Option<i64>,
    /// `[standby]`: why this replica may not become the active, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby_incomplete: Option<String>,
}

/// A row of the `sweeps` table.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SweepRow {
    /// Its id.
    pub sweep_id: i64,
    /// When it started (ms).
    pub started_at: i64,
    /// When it finished (ms), if it did.
    pub finished_at: Option<i64>,
    /// Accounts asked about.
    pub asked: u64,
    /// Accounts observed.
    pub observed: u64,
    /// Accounts without an observation.
    pub failed: u64,
    /// Accounts that do not exist.
    pub not_found: u64,
    /// Transitions committed.
    pub transitions: u64,
    /// `running`, `completed`, `stopped` or `interrupted`.
    pub outcome: String,
}

/// History rows per fold transaction: large enough that each page of the account-keyed tables
/// is written once per sweep, small enough that a fold holds the write lock for well under a
/// second.
pub const FOLD_CHUNK: usize = 50_000;

/// SQLite page cache for the daemon's connection.
const CACHE_KIB: u32 = 64 * 1024;

/// The synchronous API over one SQLite connection.
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

    /// The connection, for reads the API does not cover (tests, benchmarks).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}
