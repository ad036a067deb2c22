-- Retention walks the history once, in order, instead of scanning every old row at each sweep
-- (0.9 s a sweep with a million idle accounts): for each row it meets, the row before it of the
-- same account may go. prune_cursor is how far the walk has got.
CREATE TABLE prune_cursor (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    history_id INTEGER NOT NULL
) STRICT;

INSERT INTO prune_cursor (id, history_id) VALUES (1, 0);
