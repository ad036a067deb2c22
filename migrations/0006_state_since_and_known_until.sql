-- Version 6: for analysts.
-- * presence_current gains state_since (when the current state began: the first observation of
--   the current run of that state, platform-only changes within it not counting),
--   last_online_at (the last moment the daemon saw the account Online) and platforms_online.
--   The fold keeps state_since and the moment an account last left Online in
--   presence_current_folded; this migration fills them from the history once.
-- * presence_known_until: the last moment the daemon actually knew the accounts' states (the
--   end of the newest sweep that observed anything, or the newest observation if later). Open
--   intervals in presence_sessions and presence_daily end there instead of at "now", so they do
--   not keep growing while the daemon is stopped or on a copy of the database.

ALTER TABLE presence_current_folded ADD COLUMN state_since INTEGER;
ALTER TABLE presence_current_folded ADD COLUMN left_online_at INTEGER;

-- From the folded history only: the rows after the 'folded' mark are laid over by the view.
UPDATE presence_current_folded
SET state_since = s.observed_at
FROM (SELECT user_id, observed_at
      FROM (SELECT user_id, observed_at,
                   ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY seq DESC) AS newest
            FROM presence_history
            WHERE (from_state IS NULL OR from_state != to_state)
              AND history_id <= (SELECT history_id FROM store_marks WHERE mark = 'folded'))
      WHERE newest = 1) AS s
WHERE s.user_id = presence_current_folded.user_id
  AND presence_current_folded.state IS NOT NULL;

UPDATE presence_current_folded
SET left_online_at = s.last_seen_online
FROM (SELECT user_id, MAX(previous_observed_at) AS last_seen_online
      FROM presence_history
      WHERE from_state = 'Online' AND to_state != 'Online'
        AND history_id <= (SELECT history_id FROM store_marks WHERE mark = 'folded')
      GROUP BY user_id) AS s
WHERE s.user_id = presence_current_folded.user_id;

CREATE VIEW presence_known_until AS
SELECT NULLIF(MAX(COALESCE((SELECT MAX(finished_at) FROM sweeps WHERE observed > 0), 0),
                  COALESCE((SELECT MAX(observed_at) FROM presence_history), 0)), 0) AS known_until;

DROP VIEW presence_current_iso;
DROP VIEW presence_current;

-- As in version 3, with the new columns. For a row not folded yet, state_since carries over
-- when it continues the folded state, and an account that left Online there left it after the
-- folded row's observation.
CREATE VIEW presence_current AS
WITH tail AS (
    SELECT user_id, from_state, to_state, to_platforms, seq, observed_at, previous_observed_at,
           ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY seq DESC) AS newest
    FROM presence_history
    WHERE history_id > (SELECT history_id FROM store_marks WHERE mark = 'folded')
),
merged AS (
    SELECT c.user_id,
           COALESCE(t.to_state, c.state)          AS state,
           COALESCE(t.to_platforms, c.platforms)  AS platforms,
           COALESCE(t.seq, c.seq)                 AS seq,
           COALESCE(t.observed_at, c.observed_at) AS observed_at,
           COALESCE(t.observed_at, c.changed_at)  AS changed_at,
           CASE WHEN t.user_id IS NULL OR c.not_found_since > t.observed_at
                THEN c.not_found_since END        AS not_found_since,
           CASE WHEN t.user_id IS NULL OR t.to_state IS c.state THEN c.state_since
                ELSE t.observed_at END            AS state_since,
           CASE WHEN t.from_state = 'Online' AND t.to_state != 'Online' THEN t.previous_observed_at
                ELSE c.left_online_at END         AS left_online_at
    FROM presence_current_folded c
    LEFT JOIN tail t ON t.user_id = c.user_id AND t.newest = 1
    UNION ALL
    SELECT t.user_id, t.to_state, t.to_platforms, t.seq, t.observed_at, t.observed_at, NULL,
           t.observed_at, NULL
    FROM tail t
    WHERE t.newest = 1
      AND NOT EXISTS (SELECT 1 FROM presence_current_folded c WHERE c.user_id = t.user_id)
)
SELECT m.user_id, m.state, m.platforms, m.seq, m.observed_at, m.changed_at, m.not_found_since,
       m.state_since,
       CASE WHEN m.state = 'Online' THEN (SELECT known_until FROM presence_known_until)
            ELSE m.left_online_at END AS last_online_at,
       (SELECT COUNT(*) FROM json_each(m.platforms) p WHERE p.value ->> 'status' = 'Online')
                                     AS platforms_online
FROM merged m;

CREATE VIEW presence_current_iso AS
SELECT user_id, state, platforms, seq,
       strftime('%Y-%m-%dT%H:%M:%fZ', observed_at / 1000.0, 'unixepoch')     AS observed_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', changed_at / 1000.0, 'unixepoch')      AS changed_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', not_found_since / 1000.0, 'unixepoch') AS not_found_since,
       strftime('%Y-%m-%dT%H:%M:%fZ', state_since / 1000.0, 'unixepoch')     AS state_since,
       strftime('%Y-%m-%dT%H:%M:%fZ', last_online_at / 1000.0, 'unixepoch')  AS last_online_at,
       platforms_online
FROM presence_current;

DROP VIEW presence_sessions_iso;
DROP VIEW presence_daily;
DROP VIEW presence_sessions;

-- The open interval (ended_at NULL) runs up to presence_known_until, not to "now".
CREATE VIEW presence_sessions AS
SELECT user_id,
       to_state                                                        AS state,
       to_platforms                                                    AS platforms,
       observed_at                                                     AS started_at,
       LEAD(observed_at) OVER w                                        AS ended_at,
       MAX(COALESCE(LEAD(observed_at) OVER w,
                    (SELECT known_until FROM presence_known_until)), observed_at) - observed_at
                                                                       AS duration_ms,
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

CREATE VIEW presence_sessions_iso AS
SELECT user_id, state, platforms,
       strftime('%Y-%m-%dT%H:%M:%fZ', started_at / 1000.0, 'unixepoch') AS started_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', ended_at / 1000.0, 'unixepoch')   AS ended_at,
       duration_ms / 1000.0                                             AS duration_seconds,
       seq
FROM presence_sessions;
