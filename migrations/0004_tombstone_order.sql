-- A tombstone goes to the state topic only after every event its account had in the outbox when
-- it left the watch list: sent earlier, the account's last state record would follow its
-- tombstone and the compacted topic would keep a removed account forever. after_history_id is
-- the newest history id at removal; the publisher reads no further than the smallest pending
-- one until that tombstone is acknowledged.
ALTER TABLE state_tombstones ADD COLUMN after_history_id INTEGER NOT NULL DEFAULT 0;

-- Tombstones pending from an older version wait for everything in the outbox today.
UPDATE state_tombstones
SET after_history_id = (SELECT COALESCE(MAX(history_id), 0) FROM presence_history);
