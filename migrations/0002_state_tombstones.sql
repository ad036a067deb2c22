-- Accounts that left the watch list and still need a tombstone on the compacted current-state
-- topic (kafka.state_topic). A row goes once the tombstone is acknowledged, or at once when no
-- state topic is configured.
CREATE TABLE state_tombstones (
    user_id    TEXT PRIMARY KEY,
    removed_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
