//! Unit tests of the store across its files.

use super::*;

#[test]
fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let db = Db::open(&path, Duration::from_secs(1)).unwrap();
    db.connection()
        .execute(
            "INSERT INTO schema_migrations VALUES (999, 'future.sql', 0)",
            [],
        )
        .unwrap();
    drop(db);
    let err = Db::open(&path, Duration::from_secs(1)).unwrap_err();
    assert!(err.to_string().contains("newer presenced"), "{err}");
}

#[test]
fn migrations_are_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    drop(Db::open(&path, Duration::from_secs(1)).unwrap());
    let db = Db::open(&path, Duration::from_secs(1)).unwrap();
    let n: i64 = db
        .connection()
        .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, migrate::latest_version());
    let mode: String = db
        .connection()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

fn record(user: &str, seq: u64, from: Option<State>, to: State, at: i64) -> TransitionRecord {
    TransitionRecord::builder(user, seq, to)
        .from(from, at - 1)
        .observed_at(at)
        .build()
}

fn db_with_sweep(dir: &tempfile::TempDir) -> Db {
    let db = Db::open(&dir.path().join("p.db"), Duration::from_secs(1)).unwrap();
    db.begin_sweep(0, 1).unwrap();
    db
}

/// Commits transitions as one sweep group.
fn commit(db: &mut Db, transitions: Vec<TransitionRecord>) {
    db.apply(&WriteSet {
        transitions,
        not_found: vec![],
    })
    .unwrap();
}

fn current(db: &Db, user: &str) -> CurrentRow {
    db.load_current()
        .unwrap()
        .into_iter()
        .find(|r| r.user_id == user)
        .unwrap()
}

fn folded_seq(db: &Db, user: &str) -> Option<i64> {
    db.connection()
        .query_row(
            "SELECT seq FROM presence_current_folded WHERE user_id = ?1",
            [user],
            |r| r.get(0),
        )
        .optional()
        .unwrap()
}

#[test]
fn the_fold_brings_current_state_to_the_latest_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = db_with_sweep(&dir);
    // Several sweeps' rows for one account, unfolded (as after a crash), in two chunks.
    commit(&mut db, vec![record("a", 1, None, State::Online, 10)]);
    commit(
        &mut db,
        vec![record("a", 2, Some(State::Online), State::Offline, 20)],
    );
    commit(
        &mut db,
        vec![record("a", 3, Some(State::Offline), State::PushOnline, 30)],
    );
    assert_eq!(folded_seq(&db, "a"), None, "commits only append");
    let latest = |db: &Db| {
        let a = current(db, "a");
        (a.state, a.seq, a.observed_at)
    };
    // The view shows the newest row whatever has been folded.
    assert_eq!(latest(&db), (Some(State::PushOnline), 3, Some(30)));
    assert_eq!(db.unfolded().unwrap(), 3);
    assert_eq!(db.fold(2).unwrap(), 2);
    assert_eq!(folded_seq(&db, "a"), Some(2));
    assert_eq!(latest(&db), (Some(State::PushOnline), 3, Some(30)));
    assert_eq!(db.fold_all().unwrap(), 1);
    assert_eq!(db.fold_all().unwrap(), 0);
    assert_eq!(folded_seq(&db, "a"), Some(3));
    assert_eq!(latest(&db), (Some(State::PushOnline), 3, Some(30)));
    assert_eq!(db.unfolded().unwrap(), 0);
}

#[test]
fn an_accounts_history_includes_rows_not_folded_yet() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = db_with_sweep(&dir);
    commit(&mut db, vec![record("a", 1, None, State::Online, 10)]);
    commit(&mut db, vec![record("b", 1, None, State::Online, 10)]);
    db.fold_all().unwrap();
    commit(
        &mut db,
        vec![record("a", 2, Some(State::Online), State::Offline, 20)],
    );
    let seqs: Vec<u64> = db
        .history("a", None, None)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(db.history("a", Some(15), None).unwrap().len(), 1);
}

#[test]
fn a_not_found_mark_after_an_unfolded_row_survives_the_fold() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = db_with_sweep(&dir);
    commit(&mut db, vec![record("a", 1, None, State::Online, 10)]);
    db.apply(&WriteSet {
        transitions: vec![],
        not_found: vec![("a".into(), Some(20))],
    })
    .unwrap();
    assert_eq!(
        current(&db, "a").not_found_since,
        Some(20),
        "before the fold"
    );
    db.fold_all().unwrap();
    assert_eq!(current(&db, "a").not_found_since, Some(20));
    // Seen again with another state: the transition, later than the mark, clears it.
    commit(
        &mut db,
        vec![record("a", 2, Some(State::Online), State::Offline, 30)],
    );
    assert_eq!(current(&db, "a").not_found_since, None, "before the fold");
    db.fold_all().unwrap();
    assert_eq!(current(&db, "a").not_found_since, None);
}

#[test]
fn a_transition_written_twice_stops_the_fold_with_the_account_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = db_with_sweep(&dir);
    commit(&mut db, vec![record("a", 1, None, State::Online, 10)]);
    db.fold_all().unwrap();
    commit(
        &mut db,
        vec![
            record("b", 1, None, State::Online, 20),
            record("a", 1, None, State::Offline, 20),
        ],
    );
    let err = db.fold_all().unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { user_id, message }
            if user_id == "a" && message.contains("seq 1")),
        "{err}"
    );
    assert_eq!(
        db.unfolded().unwrap(),
        2,
        "nothing of the failed chunk is kept"
    );
}

#[test]
fn forgetting_an_account_is_not_undone_by_a_later_fold() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = db_with_sweep(&dir);
    commit(&mut db, vec![record("a", 1, None, State::Online, 10)]);
    db.forget(&["a".to_owned()]).unwrap();
    db.fold_all().unwrap();
    let a = current(&db, "a");
    assert_eq!((a.state, a.seq), (None, 1));
}

#[test]
fn version_2_databases_keep_their_history_and_pending_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    {
        let mut conn = Connection::open(&path).unwrap();
        migrate::apply_through(&mut conn, 2).unwrap();
        conn.execute_batch(
            "INSERT INTO sweeps (sweep_id, started_at) VALUES (1, 0);
             INSERT INTO presence_history (history_id, event_id, user_id, seq, kind, to_state, to_platforms, observed_at, sweep_id)
             VALUES (1, '01900000-0000-7000-8000-000000000001', 'a', 1, 'initial', 'Online', '[]', 10, 1),
                    (2, '01900000-0000-7000-8000-000000000002', 'b', 1, 'initial', 'Online', '[]', 10, 1),
                    (3, '01900000-0000-7000-8000-000000000003', 'a', 2, 'changed', 'Offline', '[]', 20, 1);
             INSERT INTO presence_current (user_id, state, platforms, seq, observed_at, changed_at)
             VALUES ('a', 'Offline', '[]', 2, 20, 20), ('b', 'Online', '[]', 1, 10, 10);
             -- the first row was published, the other two not yet
             INSERT INTO outbox (history_id, committed_at) VALUES (2, 11), (3, 21);",
        )
        .unwrap();
    }
    let mut db = Db::open(&path, Duration::from_secs(1)).unwrap();
    assert_eq!(db.outbox_backlog().unwrap(), (2, Some(11)));
    let pending: Vec<i64> = db
        .outbox_batch(0, 10)
        .unwrap()
        .iter()
        .map(|e| e.history_id)
        .collect();
    assert_eq!(pending, vec![2, 3]);
    assert_eq!(db.unfolded().unwrap(), 0);
    assert_eq!(db.history("a", None, None).unwrap().len(), 2);
    // The next transition continues the history.
    commit(
        &mut db,
        vec![record("a", 3, Some(State::Offline), State::Online, 30)],
    );
    db.fold_all().unwrap();
    assert_eq!(current(&db, "a").seq, 3);
    assert_eq!(db.history("a", None, None).unwrap().len(), 3);
}

#[test]
fn version_5_databases_get_state_since_and_last_online_from_their_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    {
        let mut conn = Connection::open(&path).unwrap();
        migrate::apply_through(&mut conn, 5).unwrap();
        // a: Online 10, Online on another platform 20, Offline 30. b: Online 10, and 40 not
        // folded yet. Everything up to history id 3 folded.
        conn.execute_batch(
            "INSERT INTO sweeps (sweep_id, started_at) VALUES (1, 0);
             INSERT INTO presence_history (history_id, event_id, user_id, seq, kind, from_state, to_state,
                 to_platforms, observed_at, previous_observed_at, sweep_id, committed_at)
             VALUES (1, '01900000-0000-7000-8000-000000000001', 'a', 1, 'initial', NULL, 'Online', '[]', 10, NULL, 1, 10),
                    (2, '01900000-0000-7000-8000-000000000002', 'b', 1, 'initial', NULL, 'Online', '[]', 10, NULL, 1, 10),
                    (3, '01900000-0000-7000-8000-000000000003', 'a', 2, 'changed', 'Online', 'Online', '[]', 20, 10, 1, 20),
                    (4, '01900000-0000-7000-8000-000000000004', 'a', 3, 'changed', 'Online', 'Offline', '[]', 30, 20, 1, 30);
             INSERT INTO presence_current_folded (user_id, state, platforms, seq, observed_at, changed_at)
             VALUES ('a', 'Online', '[]', 2, 20, 20), ('b', 'Online', '[]', 1, 10, 10);
             UPDATE store_marks SET history_id = 3 WHERE mark = 'folded';",
        )
        .unwrap();
    }
    let mut db = Db::open(&path, Duration::from_secs(1)).unwrap();
    let read = |db: &Db| -> Vec<(String, Option<i64>, Option<i64>)> {
        let mut stmt = db
            .connection()
            .prepare("SELECT user_id, state_since, left_online_at FROM presence_current_folded ORDER BY user_id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    // Filled from the folded rows: a's platform change did not restart its Online run.
    assert_eq!(
        read(&db),
        vec![("a".into(), Some(10), None), ("b".into(), Some(10), None)]
    );
    // The fold carries them on: a went Offline at 30, last seen Online at 20.
    db.fold_all().unwrap();
    assert_eq!(
        read(&db),
        vec![
            ("a".into(), Some(30), Some(20)),
            ("b".into(), Some(10), None)
        ]
    );
}

fn replicated(history_id: i64, record: TransitionRecord) -> ReplicatedEvent {
    ReplicatedEvent { history_id, record }
}

#[test]
fn replicated_events_apply_once_with_their_position_and_fold_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("p.db"), Duration::from_secs(1)).unwrap();
    let first = record("alice", 1, None, State::Online, 1_000);
    let second = record("alice", 2, Some(State::Online), State::Offline, 2_000);
    let batch = vec![replicated(7, first.clone()), replicated(9, second.clone())];
    let done = db.apply_replicated("t", &batch, &[(0, 12)]).unwrap();
    assert_eq!((done.applied, done.already_held), (2, 0));
    assert!(done.seq_gaps.is_empty());
    assert_eq!(db.replica_positions("t").unwrap()[&0], 12);
    // The same events read again (a restart from an older position) change nothing.
    let again = db.apply_replicated("t", &batch, &[(0, 12)]).unwrap();
    assert_eq!((again.applied, again.already_held), (0, 2));
    assert_eq!(current(&db, "alice").state, Some(State::Offline));
    assert_eq!(folded_seq(&db, "alice"), Some(2));
    assert_eq!(
        db.published_mark().unwrap(),
        9,
        "replicated rows are on the topic"
    );
    // A gap in seq is applied (the topic is the log of record) and reported.
    let fourth = record("alice", 4, Some(State::Online), State::Offline, 4_000);
    let gap = db
        .apply_replicated("t", &[replicated(11, fourth)], &[])
        .unwrap();
    assert_eq!(gap.seq_gaps, vec![("alice".to_owned(), 3, 4)]);
}

#[test]
fn a_replicated_event_that_contradicts_the_history_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("p.db"), Duration::from_secs(1)).unwrap();
    let ours = record("bob", 1, None, State::Online, 1_000);
    db.apply_replicated("t", &[replicated(1, ours)], &[(0, 1)])
        .unwrap();
    let theirs = record("bob", 1, None, State::Offline, 1_000);
    let other = record("carol", 1, None, State::Online, 1_000);
    let err = db
        .apply_replicated(
            "t",
            &[replicated(2, other), replicated(3, theirs)],
            &[(0, 3)],
        )
        .unwrap_err();
    assert!(err.to_string().contains("bob"), "{err}");
    assert_eq!(
        db.replica_positions("t").unwrap()[&0],
        1,
        "nothing of the batch applied"
    );
    assert_eq!(
        folded_seq(&db, "carol"),
        None,
        "nothing of the batch applied"
    );
}

#[test]
fn dropping_unpublished_rows_rewinds_current_state_to_what_the_topic_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = db_with_sweep(&dir);
    commit(&mut db, vec![record("dave", 1, None, State::Online, 1_000)]);
    let published = db.newest_history_id().unwrap();
    db.mark_published(published).unwrap();
    commit(
        &mut db,
        vec![
            record("dave", 2, Some(State::Online), State::Offline, 2_000),
            record("erin", 1, None, State::PushOnline, 2_000),
        ],
    );
    db.fold_all().unwrap();
    assert_eq!(current(&db, "dave").state, Some(State::Offline));
    assert_eq!(db.drop_unpublished().unwrap(), 2);
    assert_eq!(current(&db, "dave").state, Some(State::Online));
    assert_eq!(current(&db, "dave").seq, 1);
    assert!(db
        .load_current()
        .unwrap()
        .iter()
        .all(|r| r.user_id != "erin" || r.state.is_none()));
    // The next transition of dave is seq 2 again, and folds.
    commit(
        &mut db,
        vec![record(
            "dave",
            2,
            Some(State::Online),
            State::PushOnline,
            3_000,
        )],
    );
    db.fold_all().unwrap();
    assert_eq!(current(&db, "dave").state, Some(State::PushOnline));
}
