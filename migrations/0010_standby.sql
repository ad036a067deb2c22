-- Version 10: standby (`[standby]`). A follower replicates the events topic into this history;
-- replica_positions is where it goes on reading (the next offset of each partition), written in
-- the same transaction as the rows it applied. standby_roles is a log of this instance's role
-- changes (`presenced standby status`, analysts asking who was active when). A row in
-- replica_incomplete says this replica lacks part of the log (an account whose first event here
-- is not seq 1, events gone to retention before it read them, or an event it could not read): it
-- goes on following but never becomes the active, which would number events again.

CREATE TABLE replica_positions (
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) STRICT, WITHOUT ROWID;

CREATE TABLE standby_roles (
    changed_at INTEGER NOT NULL,
    instance   TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role = 'follower' OR role = 'active'),
    reason     TEXT NOT NULL
) STRICT;

CREATE TABLE replica_incomplete (
    what     TEXT PRIMARY KEY,
    found_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
