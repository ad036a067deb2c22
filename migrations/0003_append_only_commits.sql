-- Version 3: a sweep's commit only appends. At 10% of a million accounts changing, the commit
-- used to rewrite every page of presence_current, of the per-account history index and of the
-- outbox, and fsync them; now it appends history rows, and the account-keyed structures are
-- brought up to date behind it ("folded"), once per sweep, from the history itself.
--
-- * presence_history loses its UNIQUE (user_id, seq) and UNIQUE (event_id) indexes and gains
--   committed_at. Event ids are UUIDv7 made by the daemon and unique by construction; nothing
--   here looks rows up by them, and their index cost a fifth of the commit rate.
-- * presence_history_by_account is that index as a table of its own, filled by the fold.
-- * presence_current becomes a view: the table renamed presence_current_folded, filled by the
--   fold, overlaid with the newest history row of each account that is not folded yet (at most
--   the sweep in progress). It agrees with the history after every commit, whatever moment the
--   process died at.
-- * The outbox table becomes a view: history rows after the last one the sink acknowledged.
-- * store_marks holds how far the sink and the fold have got.

DROP VIEW presence_sessions_iso;
DROP VIEW presence_daily;
DROP VIEW presence_sessions;
DROP VIEW presence_history_iso;
DROP VIEW presence_current_iso;

CREATE TABLE presence_history_v3 (
    history_id           INTEGER PRIMARY KEY,
    event_id             TEXT NOT NULL,
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
    -- When the row was committed (Unix ms): the start of its delivery latency.
    committed_at         INTEGER NOT NULL
) STRICT;

INSERT INTO presence_history_v3
SELECT h.history_id, h.event_id, h.user_id, h.seq, h.kind, h.from_state, h.to_state, h.from_platforms,
       h.to_platforms, h.observed_at, h.previous_observed_at, h.sweep_id,
       COALESCE(o.committed_at, h.observed_at)
FROM presence_history h LEFT JOIN outbox o USING (history_id);

-- mark 'published': every history row up to this id was acknowledged by the sink.
-- mark 'folded': every history row up to this id is in presence_current_folded and
--                presence_history_by_account.
CREATE TABLE store_marks (
    mark       TEXT PRIMARY KEY CHECK (mark = 'published' OR mark = 'folded'),
    history_id INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

INSERT INTO store_marks (mark, history_id)
VALUES ('published', COALESCE((SELECT MIN(history_id) - 1 FROM outbox),
                              (SELECT MAX(history_id) FROM presence_history), 0)),
       ('folded', COALESCE((SELECT MAX(history_id) FROM presence_history), 0));

DROP TABLE outbox;
DROP TABLE presence_history;
ALTER TABLE presence_history_v3 RENAME TO presence_history;
CREATE INDEX presence_history_by_time ON presence_history (observed_at);

-- Each account's history in order: join on history_id. Rows of the sweep in progress (after
-- the 'folded' mark) are not here yet.
CREATE TABLE presence_history_by_account (
    user_id    TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    history_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, seq)
) STRICT, WITHOUT ROWID;

INSERT INTO presence_history_by_account (user_id, seq, history_id)
SELECT user_id, seq, history_id FROM presence_history ORDER BY user_id, seq;

ALTER TABLE presence_current RENAME TO presence_current_folded;

-- The last known state of every account ever observed (see version 1): the folded table, with the
-- newest row not folded yet of each account laid over it. A not-found mark stays when it was
-- written after that row's observation.
CREATE VIEW presence_current AS
WITH tail AS (
    SELECT user_id, to_state, to_platforms, seq, observed_at,
           ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY seq DESC) AS newest
    FROM presence_history
    WHERE history_id > (SELECT history_id FROM store_marks WHERE mark = 'folded')
)
SELECT c.user_id,
       COALESCE(t.to_state, c.state)          AS state,
       COALESCE(t.to_platforms, c.platforms)  AS platforms,
       COALESCE(t.seq, c.seq)                 AS seq,
       COALESCE(t.observed_at, c.observed_at) AS observed_at,
       COALESCE(t.observed_at, c.changed_at)  AS changed_at,
       CASE WHEN t.user_id IS NULL OR c.not_found_since > t.observed_at
            THEN c.not_found_since END        AS not_found_since
FROM presence_current_folded c
LEFT JOIN tail t ON t.user_id = c.user_id AND t.newest = 1
UNION ALL
SELECT t.user_id, t.to_state, t.to_platforms, t.seq, t.observed_at, t.observed_at, NULL
FROM tail t
WHERE t.newest = 1
  AND NOT EXISTS (SELECT 1 FROM presence_current_folded c WHERE c.user_id = t.user_id);

-- Events not yet acknowledged by the sink, in commit order.
CREATE VIEW outbox AS
SELECT history_id, committed_at
FROM presence_history
WHERE history_id > (SELECT history_id FROM store_marks WHERE mark = 'published');

-- The views of version 1, unchanged, on the new table.
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
       sweep_id,
       strftime('%Y-%m-%dT%H:%M:%fZ', committed_at / 1000.0, 'unixepoch')         AS committed_at
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
