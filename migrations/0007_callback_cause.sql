-- Version 7: how each change was found. A sweep found it (cause 'sweep', every row written
-- before this version), or a re-query that one of IM's State.StateChange callbacks asked for
-- (cause 'callback'), with what that callback said, as IM sent it: its EventTime (ms), its
-- Info.Action and Info.Reason, and the platforms of KickedDevice (a JSON array, callback names:
-- iOS, Windows, ... where queries say iPhone, PC, ...). Columns only: every row is kept.

ALTER TABLE presence_history ADD COLUMN cause TEXT NOT NULL DEFAULT 'sweep'
    CHECK (cause = 'sweep' OR cause = 'callback');
ALTER TABLE presence_history ADD COLUMN callback_event_time INTEGER;
ALTER TABLE presence_history ADD COLUMN callback_action TEXT;
ALTER TABLE presence_history ADD COLUMN callback_reason TEXT;
ALTER TABLE presence_history ADD COLUMN kicked_devices TEXT;

DROP VIEW presence_history_iso;

CREATE VIEW presence_history_iso AS
SELECT history_id, event_id, user_id, seq, kind, from_state, to_state, from_platforms, to_platforms,
       strftime('%Y-%m-%dT%H:%M:%fZ', observed_at / 1000.0, 'unixepoch')          AS observed_at,
       strftime('%Y-%m-%dT%H:%M:%fZ', previous_observed_at / 1000.0, 'unixepoch') AS previous_observed_at,
       sweep_id,
       strftime('%Y-%m-%dT%H:%M:%fZ', committed_at / 1000.0, 'unixepoch')         AS committed_at,
       cause,
       strftime('%Y-%m-%dT%H:%M:%fZ', callback_event_time / 1000.0, 'unixepoch')  AS callback_event_time,
       callback_action, callback_reason, kicked_devices
FROM presence_history;
