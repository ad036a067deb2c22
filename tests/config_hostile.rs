//! Every numeric option of config.example.toml taken through hostile values (negative, zero,
//! NaN, infinities, the largest integers, 1e300): `presenced check-config` either rejects the
//! value with exit 78 and an error that names the key and its line, or accepts it, and then the
//! daemon runs two sweeps with it (set through its environment variable) and stops cleanly.

mod common;

use common::pipeline::{add_watched, query_number};
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

const HOSTILE: &[&str] = &[
    "-1",
    "0",
    "nan",
    "inf",
    "-inf",
    "3000000000",
    "9223372036854775807",
    "18446744073709551615",
    "1e20",
    "1e300",
    "-1e300",
];

/// (section, key, 0-based line) of every option whose example value is a number.
fn numeric_keys(text: &str) -> Vec<(String, String, usize)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = h.to_owned();
        } else if let Some((key, value)) = line.split_once(" = ") {
            if !key.starts_with('#') && value.trim().parse::<f64>().is_ok() {
                out.push((section.clone(), key.trim().to_owned(), i));
            }
        }
    }
    out
}

#[test]
fn every_numeric_option_rejects_hostile_values_or_runs_with_them() {
    let example = std::fs::read_to_string("config.example.toml").unwrap();
    let keys = numeric_keys(&example);
    assert!(keys.len() >= 19, "numeric options found: {keys:?}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.toml");
    let mut accepted = Vec::new();
    for (section, key, line) in &keys {
        for value in HOSTILE {
            let text: String = example
                .lines()
                .enumerate()
                .map(|(i, l)| match i == *line {
                    true => format!("{key} = {value}\n"),
                    false => format!("{l}\n"),
                })
                .collect();
            std::fs::write(&path, text).unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_presenced"))
                .args(["check-config", "--config"])
                .arg(&path)
                .env("PRESENCED_IM__SECRET_KEY", "hostile-test-key")
                .output()
                .unwrap();
            if out.status.success() {
                accepted.push((section.clone(), key.clone(), *value));
                continue;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(78),
                "{section}.{key} = {value}: exit {:?}: {err}",
                out.status
            );
            assert!(
                err.contains(key.as_str()) && err.contains(&format!("line {}", line + 1)),
                "{section}.{key} = {value}: the error names neither the key nor line {}: {err}",
                line + 1
            );
        }
    }
    eprintln!("accepted: {accepted:?}");

    // What check-config accepts, the daemon runs with and stops on cleanly.
    let sim = SimProcess::start(&["--population", "10", "--churn", "0.5", "--rate", "0"]);
    for (section, key, value) in accepted {
        let dir = tempfile::tempdir().unwrap();
        let config =
            write_daemon_config(dir.path(), &sim.base_url(), "[sink]\nkind = \"stdout\"\n");
        let db = dir.path().join("presence.db");
        add_watched(
            &db,
            &(0..10).map(|i| format!("user{i}")).collect::<Vec<_>>(),
        );
        let var = format!(
            "PRESENCED_{}__{}",
            section.to_ascii_uppercase(),
            key.to_ascii_uppercase()
        );
        let mut daemon = Reaped(
            Command::new(env!("CARGO_BIN_EXE_presenced"))
                .args(["run", "--config"])
                .arg(&config)
                .env(&var, value)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        // Two sweeps, or five seconds alive (an app id IM does not know stops sweeping with a
        // configuration error and keeps the daemon up, as designed).
        let deadline = Instant::now() + Duration::from_secs(5);
        while query_number(&db, "SELECT COUNT(*) FROM sweeps") < 2 && Instant::now() < deadline {
            if let Some(status) = daemon.try_wait().unwrap() {
                panic!("{var}={value}: the daemon exited with {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        signal(&daemon, "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = daemon.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "{var}={value}: did not stop");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut log = String::new();
        std::io::Read::read_to_string(daemon.stderr.as_mut().unwrap(), &mut log).unwrap();
        assert!(
            status.success(),
            "{var}={value}: stopped with {status}: {log}"
        );
    }
}
