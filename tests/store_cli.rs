//! Retention pruning and the `history` / `stats` commands on a real database file.

use presenced::model::TransitionRecord;
use presenced::model::{PlatformStatus, State};
use presenced::store::{Db, WriteSet};
use std::process::Command;
use std::time::Duration;

const DAY: i64 = 86_400_000;

fn record(user: &str, seq: u64, from: Option<State>, to: State, at: i64) -> TransitionRecord {
    let web = vec![PlatformStatus {
        platform: "Web".into(),
        status: to,
    }];
    TransitionRecord::builder(user, seq, to)
        .from(from, at - 1_000)
        .to_platforms(web)
        .observed_at(at)
        .build()
}

/// alice: 3 old transitions and 1 recent; bob: 1 old (his latest). Published: alice's first and
/// bob's (the first two rows); folded: everything, as after a sweep.
fn populated(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("p.db");
    let mut db = Db::open(&path, Duration::from_secs(5)).unwrap();
    db.begin_sweep(0, 2).unwrap();
    let now = presenced::model::now_millis();
    let old = now - 40 * DAY;
    let set = WriteSet {
        transitions: vec![
            record("alice", 1, None, State::Online, old),
            record("bob", 1, None, State::PushOnline, old + 500),
            record("alice", 2, Some(State::Online), State::Offline, old + 1_000),
            record("alice", 3, Some(State::Offline), State::Online, old + 2_000),
            record("alice", 4, Some(State::Online), State::Offline, now),
        ],
        not_found: vec![("ghost".into(), Some(now))],
    };
    db.apply(&set).unwrap();
    db.mark_published(2).unwrap();
    db.fold_all().unwrap();
    path
}

#[test]
fn retention_prunes_in_chunks_but_keeps_unsent_and_latest_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    let mut db = Db::open(&path, Duration::from_secs(5)).unwrap();
    let before = presenced::model::now_millis() - 30 * DAY;
    // Prunes in chunks of one row walked; returns how many history rows went.
    let prune = |db: &mut Db| {
        let rows = |db: &Db| -> i64 {
            db.connection()
                .query_row("SELECT COUNT(*) FROM presence_history", [], |r| r.get(0))
                .unwrap()
        };
        let before_rows = rows(db);
        while db.prune_history(before, 1, true).unwrap() > 0 {}
        before_rows - rows(db)
    };
    let left = |db: &Db, table: &str| -> Vec<(String, i64)> {
        db.connection()
            .prepare(&format!(
                "SELECT user_id, seq FROM {table} ORDER BY user_id, seq"
            ))
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    // Nothing goes yet: alice's first is old and sent, but the row after it (her 2) is unsent,
    // and an unsent row may still be dropped (a deposed standby active's), which would leave
    // her without the row before it. Her 4 is recent; bob's only row is his latest.
    assert_eq!(prune(&mut db), 0);
    let expected: Vec<(String, i64)> = vec![
        ("alice".into(), 1),
        ("alice".into(), 2),
        ("alice".into(), 3),
        ("alice".into(), 4),
        ("bob".into(), 1),
    ];
    assert_eq!(left(&db, "presence_history"), expected);
    assert_eq!(left(&db, "presence_history_by_account"), expected);
    // Without a sink (nothing will ever publish them) the unsent rows may go too.
    {
        let copy = dir.path().join("copy.db");
        db.connection()
            .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
            .unwrap();
        let mut unsinked = Db::open(&copy, Duration::from_secs(5)).unwrap();
        while unsinked.prune_history(before, 1, false).unwrap() > 0 {}
        let expected: Vec<(String, i64)> = vec![("alice".into(), 4), ("bob".into(), 1)];
        assert_eq!(left(&unsinked, "presence_history"), expected);
    }
    // Once they are published, alice's 1, 2 and 3 go.
    db.mark_published(5).unwrap();
    assert_eq!(prune(&mut db), 3);
    let expected: Vec<(String, i64)> = vec![("alice".into(), 4), ("bob".into(), 1)];
    assert_eq!(left(&db, "presence_history"), expected);
    assert_eq!(left(&db, "presence_history_by_account"), expected);
}

#[test]
fn history_and_stats_commands() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    let bin = env!("CARGO_BIN_EXE_presenced");
    let out = Command::new(bin)
        .args(["history", "--db"])
        .arg(&path)
        .arg("alice")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 5, "{text}");
    assert!(text.lines().nth(1).unwrap().contains("initial"), "{text}");

    let since = presenced::model::format_millis(presenced::model::now_millis() - DAY);
    let out = Command::new(bin)
        .args(["history", "--db"])
        .arg(&path)
        .args(["alice", "--since", &since, "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0]["seq"].as_u64(), events[0]["to"].as_str()),
        (Some(4), Some("Offline"))
    );

    let out = Command::new(bin)
        .args(["history", "--db"])
        .arg(&path)
        .args(["alice", "--since", "last tuesday"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));

    let out = Command::new(bin)
        .args(["stats", "--db"])
        .arg(&path)
        .arg("--json")
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["offline"], 1);
    assert_eq!(stats["push_online"], 1);
    assert_eq!(stats["not_found"], 1);
    assert_eq!(stats["history_rows"], 5);
    assert_eq!(stats["outbox_backlog"], 3);
    let out = Command::new(bin)
        .args(["stats", "--db"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("outbox backlog    3"));
    assert_eq!(stats["not_folded"], 0);

    // A sweep in progress: its rows are committed, not folded yet. history and stats show them.
    let mut db = Db::open(&path, Duration::from_secs(5)).unwrap();
    let now = presenced::model::now_millis();
    db.apply(&WriteSet {
        transitions: vec![record(
            "bob",
            2,
            Some(State::PushOnline),
            State::Online,
            now,
        )],
        not_found: vec![],
    })
    .unwrap();
    drop(db);
    let out = Command::new(bin)
        .args(["history", "--db"])
        .arg(&path)
        .arg("bob")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    let out = Command::new(bin)
        .args(["stats", "--db"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not folded yet    1"), "{text}");
    assert!(text.contains("Online            1"), "{text}");
    assert!(text.contains("PushOnline        0"), "{text}");
}

#[test]
fn migrate_upgrades_a_version_2_database_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        presenced::store::migrate::apply_through(&mut conn, 2).unwrap();
        conn.execute_batch(
            "INSERT INTO sweeps (sweep_id, started_at) VALUES (1, 0);
             INSERT INTO presence_history (history_id, event_id, user_id, seq, kind, to_state, to_platforms, observed_at, sweep_id)
             VALUES (1, '01900000-0000-7000-8000-000000000001', 'a', 1, 'initial', 'Online', '[]', 10, 1);
             INSERT INTO presence_current (user_id, state, platforms, seq, observed_at, changed_at)
             VALUES ('a', 'Online', '[]', 1, 10, 10);",
        )
        .unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_presenced");
    let migrate = || {
        let out = Command::new(bin)
            .args(["migrate", "--db"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = migrate();
    assert!(
        first.contains(
            "applying 0003_append_only_commits.sql, 0004_tombstone_order.sql, 0005_prune_cursor.sql, 0006_state_since_and_known_until.sql, 0007_callback_cause.sql, 0008_topic_identity.sql, 0009_poll_estimates.sql, 0010_standby.sql (1 history rows"
        ),
        "{first}"
    );
    assert!(first.contains("schema version 10"), "{first}");
    assert!(migrate().contains("schema up to date"));
    let db = Db::open(&path, Duration::from_secs(5)).unwrap();
    let history = db.history("a", None, None).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(
        history[0].cause,
        presenced::model::Cause::Sweep,
        "rows from before callbacks were found by sweeps"
    );
}

/// `stats`, `history` and `users list` only read: on a database an older daemon still runs they
/// migrate nothing and say what to do; on one a newer presenced wrote they say so.
#[test]
fn read_only_commands_never_migrate_and_name_the_schema_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        presenced::store::migrate::apply_through(&mut conn, 3).unwrap();
    }
    let version = || -> i64 {
        rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                r.get(0)
            })
            .unwrap()
    };
    let bin = env!("CARGO_BIN_EXE_presenced");
    for args in [
        vec!["stats", "--db"],
        vec!["history", "alice", "--db"],
        vec!["users", "--db", path.to_str().unwrap(), "list"],
    ] {
        let mut cmd = Command::new(bin);
        cmd.args(&args);
        if args[0] != "users" {
            cmd.arg(&path);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {out:?}");
        assert!(
            err.contains("older") && err.contains("presenced migrate"),
            "{args:?}: {err}"
        );
        assert_eq!(version(), 3, "{args:?} migrated the database");
    }
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch("INSERT INTO schema_migrations VALUES (999, 'future.sql', 0)")
        .unwrap();
    let out = Command::new(bin)
        .args(["stats", "--db"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("newer"), "{err}");
}
