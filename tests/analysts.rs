//! Every query in docs/ANALYSTS.md runs against a generated history whose answers are known.

use presenced::model::TransitionRecord;
use presenced::model::{PlatformStatus, State};
use presenced::store::{Db, WriteSet};
use rusqlite::types::Value;
use std::time::Duration;

const T0: i64 = 1_761_955_200_000; // 2025-11-01T00:00:00Z
const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

fn p(platform: &str, status: State) -> Vec<PlatformStatus> {
    vec![PlatformStatus {
        platform: platform.into(),
        status,
    }]
}

/// alice: Online (iPhone) 01:00, Offline 03:00, Online (Web) next day 01:00, still online.
/// bob: Offline 00:00, then flaps between Online and PushOnline (Android), Offline at 04:00.
/// carol: PushOnline (iPhone) 00:30, Offline next day 02:00.
fn history() -> Vec<(&'static str, i64, State, Vec<PlatformStatus>)> {
    use State::*;
    vec![
        ("alice", T0 + HOUR, Online, p("iPhone", Online)),
        ("alice", T0 + 3 * HOUR, Offline, vec![]),
        ("alice", T0 + 25 * HOUR, Online, p("Web", Online)),
        ("bob", T0, Offline, vec![]),
        ("bob", T0 + 2 * HOUR, Online, p("Android", Online)),
        (
            "bob",
            T0 + 2 * HOUR + 30 * MIN,
            PushOnline,
            p("Android", PushOnline),
        ),
        (
            "bob",
            T0 + 2 * HOUR + 40 * MIN,
            Online,
            p("Android", Online),
        ),
        (
            "bob",
            T0 + 2 * HOUR + 50 * MIN,
            PushOnline,
            p("Android", PushOnline),
        ),
        ("bob", T0 + 3 * HOUR, Online, p("Android", Online)),
        ("bob", T0 + 4 * HOUR, Offline, vec![]),
        ("carol", T0 + 30 * MIN, PushOnline, p("iPhone", PushOnline)),
        ("carol", T0 + 26 * HOUR, Offline, vec![]),
    ]
}

fn build() -> (tempfile::TempDir, Db) {
    build_from(history(), None)
}

/// A database holding `history`, all but its last row folded; with `stopped_at`, the sweep that
/// recorded it finished then.
fn build_from(
    history: Vec<(&'static str, i64, State, Vec<PlatformStatus>)>,
    stopped_at: Option<i64>,
) -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("h.db"), Duration::from_secs(5)).unwrap();
    let sweep = db.begin_sweep(T0, 3).unwrap();
    let mut last: std::collections::HashMap<&str, (u64, State, Vec<PlatformStatus>, i64)> =
        Default::default();
    let mut set = WriteSet::default();
    for (user, at, to, platforms) in history {
        let prev = last.get(user).cloned();
        let record = TransitionRecord::builder(user, prev.as_ref().map_or(1, |p| p.0 + 1), to)
            .to_platforms(platforms.clone())
            .observed_at(at)
            .sweep(sweep);
        set.transitions.push(
            match &prev {
                Some(p) => record.from(Some(p.1), p.3).from_platforms(p.2.clone()),
                None => record,
            }
            .build(),
        );
        last.insert(user, (prev.map_or(1, |p| p.0 + 1), to, platforms, at));
    }
    // All but the last transition folded, as during a sweep: the queries on current state and on
    // one account's history must see the last one too.
    let last = set.transitions.pop().unwrap();
    db.apply(&set).unwrap();
    db.fold_all().unwrap();
    db.apply(&WriteSet {
        transitions: vec![last],
        not_found: vec![],
    })
    .unwrap();
    if let Some(at) = stopped_at {
        let counts = presenced::store::SweepCounts {
            asked: 3,
            observed: 3,
            ..Default::default()
        };
        db.finish_sweep(sweep, at, counts, "completed").unwrap();
    }
    (dir, db)
}

/// The SQL blocks of docs/ANALYSTS.md under the numbered questions, in order.
fn queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string("docs/ANALYSTS.md").unwrap();
    let mut out = Vec::new();
    let mut title = None;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(t) = line.strip_prefix("### ") {
            title = Some(t.to_owned());
        } else if line == "```sql" {
            let sql: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            if let Some(t) = title.take() {
                out.push((t, sql.join("\n")));
            }
        }
    }
    out
}

fn run(db: &Db, sql: &str, params: &[(&str, Value)]) -> Vec<Vec<String>> {
    let mut stmt = db
        .connection()
        .prepare(sql)
        .unwrap_or_else(|e| panic!("{e}\n{sql}"));
    for (name, value) in params {
        if let Some(i) = stmt.parameter_index(name).unwrap() {
            stmt.raw_bind_parameter(i, value).unwrap();
        }
    }
    let columns = stmt.column_count();
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while let Some(r) = rows.next().unwrap() {
        out.push(
            (0..columns)
                .map(|i| match r.get::<_, Value>(i).unwrap() {
                    Value::Null => "NULL".into(),
                    Value::Integer(n) => n.to_string(),
                    Value::Real(f) => format!("{f}"),
                    Value::Text(t) => t,
                    Value::Blob(_) => "<blob>".into(),
                })
                .collect(),
        );
    }
    out
}

fn rows(expected: &[&[&str]]) -> Vec<Vec<String>> {
    expected
        .iter()
        .map(|r| r.iter().map(|s| s.to_string()).collect())
        .collect()
}

#[test]
fn every_documented_query_gives_the_known_answer() {
    let (_dir, db) = build();
    let mut qs = queries();
    assert_eq!(qs.len(), 13, "thirteen numbered questions with SQL");
    qs.truncate(12); // the thirteenth needs callback-found rows: its own test
    let params: Vec<(&str, Value)> = vec![
        (":t", Value::Integer(T0 + 2 * HOUR + 15 * MIN)),
        (":from_day", Value::Text("2025-11-01".into())),
        (":to_day", Value::Text("2025-11-02".into())),
        (":max_changes", Value::Integer(3)),
        (":day", Value::Text("2025-11-01".into())),
        (":from_t", Value::Integer(T0 + 3 * HOUR)),
        (":to_t", Value::Integer(T0 + 5 * HOUR)),
        (":user", Value::Text("carol".into())),
        (":days", Value::Real(22.0 / 24.0)),
    ];
    let expected: Vec<Vec<Vec<String>>> = vec![
        rows(&[&["alice"], &["bob"]]),
        rows(&[&["2025-11-01", "2"], &["2025-11-02", "1"]]),
        rows(&[&["Android", "1800"], &["iPhone", "7200"]]),
        rows(&[&["bob", "2025-11-01T02:00Z", "4"]]),
        rows(&[&["1", "2"], &["2", "2"], &["3", "1"]]),
        rows(&[&["Offline", "2"], &["Online", "1"]]),
        rows(&[&["alice", "7200"], &["bob", "6000"]]),
        rows(&[
            &[
                "alice",
                "2025-11-01T03:00:00.000Z",
                "2025-11-01T01:00:00.000Z",
            ],
            &[
                "bob",
                "2025-11-01T04:00:00.000Z",
                "2025-11-01T03:00:00.000Z",
            ],
        ]),
        rows(&[&["bob", "2", "600"], &["carol", "1", "91800"]]),
        rows(&[
            &["Offline", "Online", "2"],
            &["Online", "Offline", "2"],
            &["Online", "PushOnline", "2"],
            &["PushOnline", "Offline", "1"],
            &["PushOnline", "Online", "2"],
        ]),
        rows(&[
            &["1", "NULL", "PushOnline", "2025-11-01T00:30:00.000Z"],
            &["2", "PushOnline", "Offline", "2025-11-02T02:00:00.000Z"],
        ]),
        // Known until +26 h; offline since at least 22 h before: bob (since 04:00), not carol.
        rows(&[&[
            "bob",
            "2025-11-01T04:00:00.000Z",
            "2025-11-01T03:00:00.000Z",
        ]]),
    ];
    for ((title, sql), want) in qs.iter().zip(expected) {
        assert_eq!(run(&db, sql, &params), want, "question: {title}");
    }
}

#[test]
fn iso_views_and_sessions_are_consistent() {
    let (_dir, db) = build();
    let got = run(
        &db,
        "SELECT observed_at FROM presence_history_iso WHERE user_id = 'alice' ORDER BY seq LIMIT 1",
        &[],
    );
    assert_eq!(got, rows(&[&["2025-11-01T01:00:00.000Z"]]));
    // One open session per account, and sessions tile each account's history.
    let open = run(
        &db,
        "SELECT user_id, state FROM presence_sessions WHERE ended_at IS NULL ORDER BY user_id",
        &[],
    );
    assert_eq!(
        open,
        rows(&[
            &["alice", "Online"],
            &["bob", "Offline"],
            &["carol", "Offline"]
        ])
    );
    let n = run(&db, "SELECT COUNT(*) FROM presence_sessions", &[]);
    assert_eq!(n, rows(&[&["12"]]));
}

#[test]
fn current_state_says_since_when_when_last_online_and_on_how_many_platforms() {
    let (_dir, db) = build();
    let got = run(
        &db,
        "SELECT user_id, state, state_since, last_online_at, platforms_online
         FROM presence_current ORDER BY user_id",
        &[],
    );
    // Nothing finished a sweep: what is known runs to the newest observation (carol, +26 h).
    let known = (T0 + 26 * HOUR).to_string();
    assert_eq!(
        got,
        rows(&[
            // Online again since +25 h, so "last online" is as far as anything is known.
            &[
                "alice",
                "Online",
                &(T0 + 25 * HOUR).to_string(),
                &known,
                "1"
            ],
            // Went offline at 04:00; last seen Online at 03:00, the observation before.
            &[
                "bob",
                "Offline",
                &(T0 + 4 * HOUR).to_string(),
                &(T0 + 3 * HOUR).to_string(),
                "0"
            ],
            // Never Online (PushOnline, then Offline in the row not folded yet).
            &[
                "carol",
                "Offline",
                &(T0 + 26 * HOUR).to_string(),
                "NULL",
                "0"
            ],
        ])
    );

    // A change of platforms alone is a transition but not a new state: state_since stays.
    use State::*;
    let both = vec![
        PlatformStatus {
            platform: "iPhone".into(),
            status: Online,
        },
        PlatformStatus {
            platform: "Web".into(),
            status: Online,
        },
    ];
    for fold_last in [false, true] {
        let (_dir, mut db) = build_from(
            vec![
                ("dave", T0 + HOUR, Online, p("iPhone", Online)),
                ("dave", T0 + 2 * HOUR, Online, both.clone()),
            ],
            None,
        );
        if fold_last {
            db.fold_all().unwrap();
        }
        let got = run(
            &db,
            "SELECT state_since, platforms_online FROM presence_current WHERE user_id = 'dave'",
            &[],
        );
        assert_eq!(
            got,
            rows(&[&[&(T0 + HOUR).to_string(), "2"]]),
            "folded: {fold_last}"
        );
    }
}

/// The daemon stopped a day ago (or the database was copied to a laptop): open intervals end
/// where its knowledge ended, not at the reader's "now".
#[test]
fn open_intervals_end_where_the_daemon_stopped_knowing() {
    use State::*;
    let stopped = T0 + 2 * HOUR;
    let (_dir, db) = build_from(
        vec![
            ("erin", T0, Offline, vec![]),
            ("erin", T0 + HOUR, Online, p("Web", Online)),
        ],
        Some(stopped),
    );
    let known = run(&db, "SELECT known_until FROM presence_known_until", &[]);
    assert_eq!(known, rows(&[&[&stopped.to_string()]]));
    let open = run(
        &db,
        "SELECT state, ended_at, duration_ms FROM presence_sessions WHERE ended_at IS NULL",
        &[],
    );
    assert_eq!(open, rows(&[&["Online", "NULL", &HOUR.to_string()]]));
    // One day, one hour online, however long ago that day was.
    let daily = run(
        &db,
        "SELECT day, state, seconds FROM presence_daily ORDER BY day, state",
        &[],
    );
    assert_eq!(
        daily,
        rows(&[
            &["2025-11-01", "Offline", "3600"],
            &["2025-11-01", "Online", "3600"]
        ])
    );
    let current = run(
        &db,
        "SELECT state_since, last_online_at FROM presence_current",
        &[],
    );
    assert_eq!(
        current,
        rows(&[&[&(T0 + HOUR).to_string(), &stopped.to_string()]])
    );
}

#[test]
fn drops_by_reason_and_platform_come_from_callback_found_rows() {
    use presenced::model::{CallbackHint, Cause};
    use State::*;
    let dir = tempfile::tempdir().unwrap();
    let mut db = Db::open(&dir.path().join("c.db"), Duration::from_secs(5)).unwrap();
    let sweep = db.begin_sweep(T0, 3).unwrap();
    let hint = |action: &str, reason: &str| {
        Cause::Callback(Box::new(CallbackHint {
            event_time: T0,
            action: action.into(),
            reason: Some(reason.into()),
            kicked_devices: vec![],
        }))
    };
    let two = vec![
        PlatformStatus {
            platform: "Android".into(),
            status: Online,
        },
        PlatformStatus {
            platform: "Web".into(),
            status: Online,
        },
    ];
    let t =
        |user: &'static str, seq: u64| TransitionRecord::builder(user, seq, Offline).sweep(sweep);
    let transitions = vec![
        // dan: Android times out into PushOnline, found by a callback.
        t("dan", 1).to_platforms(p("Android", Online)).build(),
        TransitionRecord::builder("dan", 2, PushOnline)
            .from(Some(Online), T0)
            .from_platforms(p("Android", Online))
            .to_platforms(p("Android", PushOnline))
            .observed_at(T0 + HOUR)
            .sweep(sweep)
            .cause(hint("Disconnect", "TimeOut"))
            .build(),
        // erin: logs out of Web, keeps Android, found by a callback.
        t("erin", 1).to_platforms(two.clone()).build(),
        TransitionRecord::builder("erin", 2, Online)
            .from(Some(Online), T0)
            .from_platforms(two)
            .to_platforms(p("Android", Online))
            .observed_at(T0 + HOUR)
            .sweep(sweep)
            .cause(hint("Logout", "Unregister"))
            .build(),
        // fay: goes offline, found by a sweep: not a callback's.
        t("fay", 1).to_platforms(p("Web", Online)).build(),
        TransitionRecord::builder("fay", 2, Offline)
            .from(Some(Online), T0)
            .from_platforms(p("Web", Online))
            .observed_at(T0 + HOUR)
            .sweep(sweep)
            .build(),
    ];
    db.apply(&WriteSet {
        transitions,
        not_found: vec![],
    })
    .unwrap();
    let (_, sql) = queries().pop().unwrap();
    let params: Vec<(&str, Value)> = vec![
        (":from_t", Value::Integer(T0)),
        (":to_t", Value::Integer(T0 + 2 * HOUR)),
    ];
    assert_eq!(
        run(&db, &sql, &params),
        rows(&[&["Android", "TimeOut", "1"], &["Web", "Unregister", "1"]])
    );
}
