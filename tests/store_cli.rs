//! Retention pruning and the `history` / `stats` commands on a real database file.

use presenced::model::{PlatformStatus, State};
use presenced::store::{Db, TransitionRecord, WriteSet};
use std::process::Command;
use std::time::Duration;

const DAY: i64 = 86_400_000;

fn record(user: &str, seq: u64, from: Option<State>, to: State, at: i64) -> TransitionRecord {
    TransitionRecord {
        event_id: uuid::Uuid::now_v7(),
        user_id: user.into(),
        seq,
        from,
        from_platforms: from.map(|_| vec![]),
        to,
        to_platforms: vec![PlatformStatus {
            platform: "Web".into(),
            status: to,
        }],
        observed_at: at,
        previous_observed_at: from.map(|_| at - 1_000),
        sweep_id: 1,
    }
}

/// alice: 3 old transitions and 1 recent; bob: 1 old (his latest); all published except one.
fn populated(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("p.db");
    let mut db = Db::open(&path, Duration::from_secs(5)).unwrap();
    db.begin_sweep(0, 2).unwrap();
    let now = presenced::model::now_millis();
    let old = now - 40 * DAY;
    let set = WriteSet {
        transitions: vec![
            record("alice", 1, None, State::Online, old),
            record("alice", 2, Some(State::Online), State::Offline, old + 1_000),
            record("alice", 3, Some(State::Offline), State::Online, old + 2_000),
            record("bob", 1, None, State::PushOnline, old + 3_000),
            record("alice", 4, Some(State::Online), State::Offline, now),
        ],
        not_found: vec![("ghost".into(), Some(now))],
    };
    db.apply(&set).unwrap();
    // Everything published except alice's second transition.
    db.connection()
        .execute("DELETE FROM outbox WHERE history_id IN (SELECT history_id FROM presence_history WHERE NOT (user_id = 'alice' AND seq = 2))", [])
        .unwrap();
    path
}

#[test]
fn retention_prunes_in_chunks_but_keeps_unsent_and_latest_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path());
    let mut db = Db::open(&path, Duration::from_secs(5)).unwrap();
    let before = presenced::model::now_millis() - 30 * DAY;
    let mut chunks = 0;
    while db.prune_history(before, 1).unwrap() > 0 {
        chunks += 1;
    }
    // Only alice seq 1 and 3 may go: seq 2 is unsent, seq 4 is recent, bob's only row is his latest.
    assert_eq!(chunks, 2);
    let left: Vec<(String, i64)> = db
        .connection()
        .prepare("SELECT user_id, seq FROM presence_history ORDER BY user_id, seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        left,
        vec![("alice".into(), 2), ("alice".into(), 4), ("bob".into(), 1)]
    );
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
    assert_eq!(stats["outbox_backlog"], 1);
    let out = Command::new(bin)
        .args(["stats", "--db"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("outbox backlog    1"));
}
