-- Version 8: where this database's events begin on a topic. `presenced kafka adopt` records,
-- per partition of the events topic, the offset after the records that were already there
-- (another database's, or this database's before a restore); the exactly-once read-back then
-- looks for this database's events only from those offsets on. A topic without rows here is
-- read from its start.

CREATE TABLE publish_floor (
    topic        TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    adopted_at   INTEGER NOT NULL,
    PRIMARY KEY (topic, partition_id)
) STRICT, WITHOUT ROWID;
