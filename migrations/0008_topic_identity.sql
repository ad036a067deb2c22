-- Version 8: what this database knows of the topics it publishes to.
--
-- publish_floor: where this database's events begin on a topic. `presenced kafka adopt` records,
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

-- topic_partitions: how many partitions a topic had when this database last started publishing
-- to it. Partitions added since move accounts to other partitions (consumers could read an
-- account's later events before its earlier ones): the daemon refuses to start until the
-- operator moves to a new topic or accepts the new layout (`presenced kafka adopt`).
CREATE TABLE topic_partitions (
    topic      TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
