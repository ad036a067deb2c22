-- Version 9: what the adaptive schedule (sweep.schedule = "adaptive") learned of each account,
-- so that a restart does not start from the prior again. Soft state: saved every five minutes
-- and at a clean stop; a row whose account left the watch list is deleted with it.
--
-- observed_at: the account's last observation (Unix ms); polls, changes, span_secs: its
-- decayed count of polls, of polls that found a change, and of the seconds they covered
-- (src/schedule/estimate.rs).

CREATE TABLE poll_estimates (
    user_id     TEXT PRIMARY KEY,
    observed_at INTEGER NOT NULL,
    polls       REAL NOT NULL,
    changes     REAL NOT NULL,
    span_secs   REAL NOT NULL
) STRICT, WITHOUT ROWID;
