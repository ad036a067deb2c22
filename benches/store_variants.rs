//! Schema variants for the store's 10% case (docs/BENCHMARKS.md, "How the 10% case went from
//! 36,000/s to over 100,000/s"): 100,000 sorted transitions, 4,000 per transaction, against a copy of a database
//! already holding 1,000,000 accounts, with raw rusqlite statements shaped like `Db::apply`.
//!
//! cargo bench --bench store_variants          (schema version 2, automatic checkpoint)
//! CURRENT=none USERIDX=0 OUTBOX=0 EVIDX=0 CKPT=bg cargo bench --bench store_variants
//!                                              (the commit path of schema version 3)
//! CURRENT=full|slim|none USERIDX=1|0 OUTBOX=1|0 EVIDX=1|0 CKPT=1000|0|bg PAGE=4096 SYNC=FULL \
//! UPD=0|1 TX=4000 N=1000000 DIR=target/store-variants cargo bench --bench store_variants
//!
//! The base database of each schema variant is built once (10-15 s) and kept in DIR.
use rusqlite::{params, Connection};
use std::time::Instant;

/// CPU seconds (user + system) of this process so far, from /proc.
fn cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn env(k: &str, d: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| d.into())
}

fn schema(current: &str, useridx: bool) -> String {
    let cur = match current {
        "full" => "CREATE TABLE presence_current (user_id TEXT PRIMARY KEY, state TEXT CHECK (state = 'Online' OR state = 'PushOnline' OR state = 'Offline'), platforms TEXT, seq INTEGER NOT NULL DEFAULT 0, observed_at INTEGER, changed_at INTEGER, not_found_since INTEGER) STRICT, WITHOUT ROWID;",
        "slim" => "CREATE TABLE presence_current (user_id TEXT PRIMARY KEY, history_id INTEGER, seq INTEGER NOT NULL DEFAULT 0, not_found_since INTEGER) STRICT, WITHOUT ROWID;",
        _ => "",
    };
    let evidx = if env("EVIDX", "1") == "1" {
        "event_id TEXT NOT NULL UNIQUE"
    } else {
        "event_id TEXT NOT NULL"
    };
    let uidx = if useridx {
        ", UNIQUE (user_id, seq)"
    } else {
        ""
    };
    format!("{cur}
    CREATE TABLE sweeps (sweep_id INTEGER PRIMARY KEY);
    INSERT INTO sweeps VALUES (1);
    CREATE TABLE presence_history (history_id INTEGER PRIMARY KEY, {evidx}, user_id TEXT NOT NULL, seq INTEGER NOT NULL,
      kind TEXT NOT NULL CHECK (kind = 'initial' OR kind = 'changed'),
      from_state TEXT CHECK (from_state = 'Online' OR from_state = 'PushOnline' OR from_state = 'Offline'),
      to_state TEXT NOT NULL CHECK (to_state = 'Online' OR to_state = 'PushOnline' OR to_state = 'Offline'),
      from_platforms TEXT, to_platforms TEXT NOT NULL, observed_at INTEGER NOT NULL, previous_observed_at INTEGER,
      sweep_id INTEGER NOT NULL REFERENCES sweeps (sweep_id){uidx}) STRICT;
    CREATE INDEX presence_history_by_time ON presence_history (observed_at);
    CREATE TABLE outbox (history_id INTEGER PRIMARY KEY REFERENCES presence_history (history_id), committed_at INTEGER NOT NULL) STRICT;")
}

fn open(path: &str) -> Connection {
    let c = Connection::open(path).unwrap();
    c.pragma_update(
        None,
        "page_size",
        env("PAGE", "4096").parse::<i64>().unwrap(),
    )
    .unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", env("SYNC", "FULL"))
        .unwrap();
    c.pragma_update(None, "foreign_keys", env("FK", "ON"))
        .unwrap();
    c.pragma_update(None, "cache_size", -65536i64).unwrap();
    c.pragma_update(None, "temp_store", "MEMORY").unwrap();
    c
}

struct Row {
    ev: String,
    u: String,
    topf: String,
    frompf: Option<String>,
}
#[allow(clippy::too_many_arguments)]
fn write(
    c: &mut Connection,
    current: &str,
    ids: &[String],
    seq: i64,
    tx_size: usize,
    from: Option<&str>,
    to: &str,
    at: i64,
) -> (f64, f64) {
    let pf = |s: &str| format!("[{{\"platform\":\"iPhone\",\"status\":\"{s}\"}}]");
    let rows: Vec<Row> = ids
        .iter()
        .map(|u| Row {
            ev: uuid::Uuid::now_v7().to_string(),
            u: u.clone(),
            topf: pf(to),
            frompf: from.map(pf),
        })
        .collect();
    let (t, c0) = (Instant::now(), cpu());
    for chunk in rows.chunks(tx_size) {
        let tx = c.transaction().unwrap();
        {
            let mut h = tx.prepare_cached("INSERT INTO presence_history (event_id, user_id, seq, kind, from_state, to_state, from_platforms, to_platforms, observed_at, previous_observed_at, sweep_id) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,1)").unwrap();
            let mut o = tx
                .prepare_cached("INSERT INTO outbox (history_id, committed_at) VALUES (?1, ?2)")
                .unwrap();
            let mut full = tx.prepare_cached(if current == "slim" {
                "INSERT INTO presence_current (user_id, history_id, seq) VALUES (?1, ?2, ?3) ON CONFLICT (user_id) DO UPDATE SET history_id = excluded.history_id, seq = excluded.seq, not_found_since = NULL"
            } else if current == "full" && env("UPD","0")=="1" {
                "UPDATE presence_current SET state = ?2, platforms = ?3, seq = ?4, observed_at = ?5, changed_at = ?5, not_found_since = NULL WHERE user_id = ?1"
            } else if current == "full" {
                "INSERT INTO presence_current (user_id, state, platforms, seq, observed_at, changed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, platforms = excluded.platforms, seq = excluded.seq, observed_at = excluded.observed_at, changed_at = excluded.changed_at, not_found_since = NULL"
            } else { "SELECT 1" }).unwrap();
            let outbox = env("OUTBOX", "1") == "1";
            for r in chunk {
                h.execute(params![
                    r.ev,
                    r.u,
                    seq,
                    if from.is_some() { "changed" } else { "initial" },
                    from,
                    to,
                    r.frompf,
                    r.topf,
                    at,
                    from.map(|_| at - 30000)
                ])
                .unwrap();
                let hid = tx.last_insert_rowid();
                if outbox {
                    o.execute(params![hid, at]).unwrap();
                }
                if current == "slim" {
                    full.execute(params![r.u, hid, seq]).unwrap();
                } else if current == "full" {
                    full.execute(params![r.u, to, r.topf, seq, at]).unwrap();
                }
            }
        }
        tx.commit().unwrap();
    }
    (t.elapsed().as_secs_f64(), cpu() - c0)
}

fn main() {
    let current = env("CURRENT", "full");
    let useridx = env("USERIDX", "1") == "1";
    let tx_size: usize = env("TX", "4000").parse().unwrap();
    let n: usize = env("N", "1000000").parse().unwrap();
    let dir = env("DIR", "target/store-variants");
    std::fs::create_dir_all(&dir).unwrap();
    let base = format!(
        "{dir}/base-{current}-{useridx}-{}-{}-{n}.db",
        env("EVIDX", "1"),
        env("PAGE", "4096")
    );
    let mut ids: Vec<String> = (0..n).map(|i| format!("user{i}")).collect();
    ids.sort();
    if !std::path::Path::new(&base).exists() {
        let mut c = open(&base);
        c.execute_batch(&schema(&current, useridx)).unwrap();
        let t = Instant::now();
        write(
            &mut c,
            &current,
            &ids,
            1,
            4000,
            None,
            "Online",
            1_700_000_000_000,
        );
        c.execute_batch("DELETE FROM outbox; PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        eprintln!("base built in {:.1}s", t.elapsed().as_secs_f64());
    }
    let work = format!("{dir}/work.db");
    let _ = std::fs::remove_file(format!("{work}-wal"));
    let _ = std::fs::remove_file(format!("{work}-shm"));
    std::fs::copy(&base, &work).unwrap();
    // Drop the copy from the page cache's point of view? (OS cache keeps it warm, like a running daemon.)
    let mut c = open(&work);
    let ckpt = env("CKPT", "1000");
    let bg = ckpt == "bg";
    let ckpt = if bg { "0".to_string() } else { ckpt };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bgt = if bg {
        let stop = stop.clone();
        let work = work.clone();
        Some(std::thread::spawn(move || {
            let c = open(&work);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r: (i64, i64, i64) = c
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .unwrap();
                n += 1;
                let _ = r;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            eprintln!("{n} background checkpoints");
        }))
    } else {
        None
    };
    c.pragma_update(None, "wal_autocheckpoint", ckpt.parse::<i64>().unwrap())
        .unwrap();
    let changed: Vec<String> = (0..n)
        .step_by(10)
        .map(|i| format!("user{i}"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let changed_sorted = {
        let mut v = changed.clone();
        v.sort();
        v
    };
    let (el, cp) = write(
        &mut c,
        &current,
        &changed_sorted,
        2,
        tx_size,
        Some("Online"),
        "Offline",
        1_700_000_030_000,
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(t) = bgt {
        t.join().unwrap();
    }
    let (t2, c1) = (Instant::now(), cpu());
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    println!("page={} current={current} useridx={useridx} tx={tx_size} ckpt={ckpt} sync={}: {} in {:.3}s = {:.0}/s, cpu {:.2}s; final checkpoint {:.3}s cpu {:.2}s",
        env("PAGE","4096"), env("SYNC","FULL"), changed_sorted.len(), el, changed_sorted.len() as f64 / el, cp, t2.elapsed().as_secs_f64(), cpu() - c1);
}
