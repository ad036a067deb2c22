//! The simulator's change log (`change_log`, one JSON line per visible change) against the
//! daemon's history: when each change was first recorded.

use std::collections::HashMap;

/// Per account, its changes in order: (at, state, platforms).
pub type Changes = HashMap<String, Vec<(i64, String, String)>>;

/// Platforms in one comparable form, however they are ordered.
pub fn normalize(platforms: &serde_json::Value) -> String {
    let mut p: Vec<String> = platforms
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| format!("{}:{}", d["platform"], d["status"]))
        .collect();
    p.sort();
    p.join(",")
}

/// The changes logged from `from` to `until` (Unix ms).
pub fn read_changes(path: &std::path::Path, from: i64, until: i64) -> Changes {
    let mut out: Changes = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let Some(at) = v["at"].as_i64() else {
            continue; // a `shown_at` line
        };
        if at < from || at > until {
            continue;
        }
        out.entry(v["user_id"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                at,
                v["state"].as_str().unwrap().to_owned(),
                normalize(&v["platforms"]),
            ));
    }
    out
}

/// Per account, when queries answered for it first after a change (Unix ms, in order), from
/// `from` on.
pub fn read_shown(path: &std::path::Path, from: i64) -> HashMap<String, Vec<i64>> {
    let mut out: HashMap<String, Vec<i64>> = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(at) = v["shown_at"].as_i64().filter(|at| *at >= from) {
            let user = v["user_id"].as_str().unwrap().to_owned();
            out.entry(user).or_default().push(at);
        }
    }
    for times in out.values_mut() {
        times.sort_unstable();
    }
    out
}

/// For every change, how long until a query first answered for its account (ms): when a poll
/// could first see it, or a later change that overwrote it. The delay the refresh-scheduling
/// literature minimises. Also how many changes no query answered for.
pub fn shown_delays(changes: &Changes, shown: &HashMap<String, Vec<i64>>) -> (Vec<i64>, usize) {
    let none = Vec::new();
    let (mut out, mut unshown) = (Vec::new(), 0);
    for (user, list) in changes {
        let times = shown.get(user).unwrap_or(&none);
        for (at, _, _) in list {
            let next = times.partition_point(|t| t < at);
            match times.get(next) {
                Some(t) => out.push(t - at),
                None => unshown += 1,
            }
        }
    }
    out.sort_unstable();
    (out, unshown)
}

/// One change and the history row that recorded it, if any.
pub struct Found {
    pub user: String,
    /// When the simulator made the change.
    pub at: i64,
    /// When the daemon observed it: the first history row in the changed-to state observed
    /// after the change and before the account's next one.
    pub observed: Option<i64>,
    /// That row's cause (`sweep`, `callback`).
    pub cause: String,
}

impl Found {
    /// Detection delay (ms).
    pub fn delay(&self) -> Option<i64> {
        self.observed.map(|o| o - self.at)
    }
}

/// Every change in `changes` with what recorded it, reading the history rows observed since
/// `from` in one pass.
pub fn detections(db: &std::path::Path, changes: &Changes, from: i64) -> Vec<Found> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT user_id, observed_at, to_state, to_platforms, cause FROM presence_history
             WHERE observed_at >= ?1 ORDER BY history_id",
        )
        .unwrap();
    type Row = (i64, String, String, String);
    let mut by_user: HashMap<String, Vec<Row>> = HashMap::new();
    let rows = stmt
        .query_map([from], |r| {
            Ok((
                r.get::<_, String>(0)?,
                (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
            ))
        })
        .unwrap();
    for row in rows {
        let (user, row) = row.unwrap();
        by_user.entry(user).or_default().push(row);
    }
    let none = Vec::new();
    let mut out = Vec::new();
    for (user, list) in changes {
        let rows = by_user.get(user).unwrap_or(&none);
        for (i, (at, state, platforms)) in list.iter().enumerate() {
            let next = list.get(i + 1).map_or(i64::MAX, |c| c.0);
            let found = rows.iter().find(|(observed, to, to_platforms, _)| {
                *observed >= *at
                    && *observed < next
                    && to == state
                    && normalize(&serde_json::from_str(to_platforms).unwrap()) == *platforms
            });
            out.push(Found {
                user: user.clone(),
                at: *at,
                observed: found.map(|f| f.0),
                cause: found.map(|f| f.3.clone()).unwrap_or_default(),
            });
        }
    }
    out
}

/// The `p` quantile of sorted delays (ms), in seconds.
pub fn quantile(sorted: &[i64], p: f64) -> f64 {
    match sorted.is_empty() {
        true => f64::NAN,
        false => sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0,
    }
}

/// The mean of delays (ms), in seconds.
pub fn mean(delays: &[i64]) -> f64 {
    delays.iter().sum::<i64>() as f64 / delays.len().max(1) as f64 / 1000.0
}
