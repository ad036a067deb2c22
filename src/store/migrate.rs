//! Numbered SQL migrations embedded in the binary, applied in order and recorded in the database.

use super::StoreError;
use rusqlite::Connection;

/// (version, name, SQL). Append only: a released migration is never edited.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "0001_initial.sql",
        include_str!("../../migrations/0001_initial.sql"),
    ),
    (
        2,
        "0002_state_tombstones.sql",
        include_str!("../../migrations/0002_state_tombstones.sql"),
    ),
    (
        3,
        "0003_append_only_commits.sql",
        include_str!("../../migrations/0003_append_only_commits.sql"),
    ),
    (
        4,
        "0004_tombstone_order.sql",
        include_str!("../../migrations/0004_tombstone_order.sql"),
    ),
    (
        5,
        "0005_prune_cursor.sql",
        include_str!("../../migrations/0005_prune_cursor.sql"),
    ),
    (
        6,
        "0006_state_since_and_known_until.sql",
        include_str!("../../migrations/0006_state_since_and_known_until.sql"),
    ),
    (
        7,
        "0007_callback_cause.sql",
        include_str!("../../migrations/0007_callback_cause.sql"),
    ),
    (
        8,
        "0008_topic_identity.sql",
        include_str!("../../migrations/0008_topic_identity.sql"),
    ),
    (
        9,
        "0009_poll_estimates.sql",
        include_str!("../../migrations/0009_poll_estimates.sql"),
    ),
    (
        10,
        "0010_standby.sql",
        include_str!("../../migrations/0010_standby.sql"),
    ),
];

/// What opening a database would migrate: the names of the pending migrations and the size of
/// the history they carry along (the newest history id). Version 3 rebuilds the history (6 s
/// per million rows here, `scripts/bench.sh migrate`): a service manager's start timeout needs
/// to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Migrations not applied yet.
    pub names: Vec<&'static str>,
    /// History rows they carry along.
    pub history_rows: i64,
}

/// Reads, without changing anything, what opening the database at `path` would migrate.
pub fn pending(path: &std::path::Path) -> Result<Pending, StoreError> {
    if !path.exists() {
        // A new database: every migration, and nothing to carry along.
        return Ok(Pending {
            names: MIGRATIONS.iter().map(|m| m.1).collect(),
            history_rows: 0,
        });
    }
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
    let scalar = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap_or(0);
    let current = scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations");
    Ok(Pending {
        names: MIGRATIONS
            .iter()
            .filter(|m| m.0 > current)
            .map(|m| m.1)
            .collect(),
        history_rows: scalar("SELECT COALESCE(MAX(history_id), 0) FROM presence_history"),
    })
}

/// The schema version this build writes.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Applies every migration newer than the database, each in its own transaction.
pub fn apply(conn: &mut Connection) -> Result<Vec<i64>, StoreError> {
    apply_through(conn, latest_version())
}

/// Applies the migrations up to and including `version`: `apply` with the latest, and tests of
/// upgrades build the database an older release left with it.
pub fn apply_through(conn: &mut Connection, version: i64) -> Result<Vec<i64>, StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT;",
    )?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    if current > latest_version() {
        return Err(StoreError::TooNew {
            found: current,
            supported: latest_version(),
        });
    }
    let mut applied = Vec::new();
    let target = version;
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current && m.0 <= target) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .map_err(|e| StoreError::Migration { name, source: e })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![version, name, crate::model::now_millis()],
        )?;
        tx.commit()?;
        applied.push(*version);
    }
    Ok(applied)
}
