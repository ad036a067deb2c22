-- presenced schema, version 1. Times are integer Unix milliseconds; the *_iso views show text.
-- The CHECK constraints spell out OR chains instead of IN lists: SQLite builds a temporary
-- b-tree for an IN list of three or more constants on every insert, which made writes 3x slower.

CREATE TABLE watched_accounts (
    user_id  TEXT PRIMARY KEY,
    added_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE sweeps (
    sweep_id    INTEGER PRIMARY KEY,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    asked       INTEGER NOT NULL DEFAULT 0,
    observed    INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    not_found   INTEGER NOT NULL DEFAULT 0,
    transitions INTEGER NOT NULL DEFAULT 0,
    outcome     TEXT NOT NULL DEFAULT 'running'
                CHECK (outcome = 'running' OR outcome = 'completed' OR outcome = 'interrupted'
                       OR outcome = 'stopped')
) STRICT;

-- The last known state of every account ever observed. state is NULL until the first
-- observation and again after the account left the watch list; seq survives both so that
-- (user_id, seq) stays unique forever.
CREATE TABLE presence_current (
    user_id         TEXT PRIMARY KEY,
    state           TEXT CHECK (state = 'Online' OR state = 'PushOnline' OR state = 'Offline'),
    platforms       TEXT,
    seq             INTEGER NOT NULL DEFAULT 0,
    observed_at     INTEGER,
    changed_at      INTEGER,
    not_found_since INTEGER
) STRICT, WITHOUT ROWID;

CREATE TABLE presence_history (
    history_id           INTEGER PRIMARY KEY,
    event_id             TEXT NOT NULL UNIQUE,
    user_id              TEXT NOT NULL,
    seq                  INTEGER NOT NULL,
    kind                 TEXT NOT NULL CHECK (kind = 'initial' OR kind = 'changed'),
    from_state           TEXT CHECK (from_state = 'Online' OR from_state = 'PushOnline' OR from_state = 'Offline'),
    to_state             TEXT NOT NULL CHECK (to_state = 'Online' OR to_state = 'PushOnline' OR to_state = 'Offline'),
    from_platforms       TEXT,
    to_platforms         TEXT NOT NULL,
    -- The change happened after previous_observed_at and at or before observed_at.
    observed_at          INTEGER NOT NULL,
    previous_observed_at INTEGER,
    sweep_id             INTEGER NOT NULL REFERENCES sweeps (sweep_id),
    UNIQUE (user_id, seq)
) STRICT;

CREATE INDEX presence_history_by_time ON presence_history (observed_at);

-- Events not yet acknowledged by the sink. A row goes only after its delivery succeeded.
CREATE TABLE outbox (
    history_id   INTEGER PRIMARY KEY REFERENCES presence_history (history_id),
    committed_at INTEGER NOT NULL
) STRICT;

-- One row per interval an account spent in a state. The interval starts at the observation that
-- saw the new state; ended_at is NULL for the open interval, whose duration runs up to now.
CREATE VIEW presence_sessions AS
SELECT user_id,
       to_state                                                        AS state,
       to_platforms                                                    AS platforms,
       observed_at                                                     AS started_at,
       LEAD(observed_at) OVER w                                        AS ended_at,
       COALESCE(LEAD(observed_at) OVER w,
                CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)) - observed_at AS duration_ms,
       seq
FROM presence_history
WINDOW w AS (PARTITION BY user_id ORDER BY seq);

-- Seconds per account, UTC day and state; intervals crossing midnight are split.
CREATE VIEW presence_daily AS
WITH RECURSIVE pieces (user_id, state, piece_start, session_end) AS (
    SELECT user_id, state, started_at, started_at + duration_ms FROM presence_sessions
    UNION ALL
    SELECT user_id, state, (piece_start / 86400000 + 1) * 86400000, session_end
    FROM pieces
    WHERE (piece_start / 86400000 + 1) * 86400000 < session_end
)
SELECT user_id,
       date(piece_start / 1000, 'unixepoch')                                              AS day,
       state,
       SUM(MIN(session_end, (piece_start / 86400000 + 1) * 86400000) - piece_start) / 1000.0 AS seconds
FROM pieces
GROUP BY user_id, day, state;

CREATE VIEW presence_history_iso AS
SELECT history_id, event_id, user_id, seq, kind, from_state, to_state, from_platforms, to_platforms,
       strftime('%Y-%m-%dT%H:%M:%fZ', observed_at / 1000.0, 'unixepoch')          AS observed_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', previous_observed_at / 1000.0, 'unixepoch') AS previous_observed_at,
       sweep_id
FROM presence_history;

CREATE VIEW presence_current_iso AS
SELECT user_id, state, platforms, seq,
       strftime('%Y-%m-%dT%H:%M:%fZ', observed_at / 1000.0, 'unixepoch')     AS observed_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', changed_at / 1000.0, 'unixepoch')      AS changed_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', not_found_since / 1000.0, 'unixepoch') AS not_found_since
FROM presence_current;

CREATE VIEW presence_sessions_iso AS
SELECT user_id, state, platforms,
       strftime('%Y-%m-%dT%H:%M:%fZ', started_at / 1000.0, 'unixepoch') AS started_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', ended_at / 1000.0, 'unixepoch')   AS ended_at,
       duration_ms / 1000.0                                             AS duration_seconds,
       seq
FROM presence_sessions;

CREATE VIEW sweeps_iso AS
SELECT sweep_id,
       strftime('%Y-%m-%dT%H:%M:%fZ', started_at / 1000.0, 'unixepoch')  AS started_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', finished_at / 1000.0, 'unixepoch') AS finished_at,
       (finished_at - started_at) / 1000.0                                AS duration_seconds,
       asked, observed, failed, not_found, transitions, outcome
FROM sweeps;
