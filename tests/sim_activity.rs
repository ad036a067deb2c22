//! The simulator's uneven activity (issue 22, item 5) through the `presenced sim` binary: hot
//! accounts take their share of the churn, and the control API says which they are and at what
//! rates they step.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_accounts_take_their_share_of_the_changes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("changes.jsonl");
    let config = dir.path().join("sim.toml");
    std::fs::write(
        &config,
        format!(
            "change_log = \"{}\"\n[activity]\ndaily_amplitude = 0.5\nday_secs = 60.0\n",
            log.display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let sim = SimProcess::start(&[
        "--population",
        "5000",
        "--churn",
        "0.2",
        "--hot-share",
        "0.1",
        "--hot-steps",
        "0.9",
        "--config",
        &config,
    ]);
    let view: serde_json::Value = reqwest::get(format!("{}control/activity", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hot: std::collections::HashSet<String> = view["hot"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(
        (400..600).contains(&hot.len()),
        "{} hot of 5,000",
        hot.len()
    );
    let rates = &view["rates"];
    let (hot_rate, cold_rate) = (
        rates["hot_per_second"].as_f64().unwrap(),
        rates["cold_per_second"].as_f64().unwrap(),
    );
    // 1,000 steps a second: 900 over ~500 hot accounts, 100 over ~4,500 cold ones.
    assert!(
        (1.5..2.3).contains(&hot_rate),
        "{hot_rate} steps a second per hot account"
    );
    assert!(
        (0.018..0.026).contains(&cold_rate),
        "{cold_rate} per cold account"
    );
    assert_eq!(view["activity"]["day_secs"].as_f64(), Some(60.0));

    tokio::time::sleep(Duration::from_secs(2)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let changed: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("at").is_some()) // not a `shown_at` line
        .map(|v| v["user_id"].to_string())
        .map(|id| id.trim_matches('"').to_owned())
        .collect();
    assert!(changed.len() > 500, "{} visible changes", changed.len());
    let to_hot = changed.iter().filter(|id| hot.contains(*id)).count();
    let share = to_hot as f64 / changed.len() as f64;
    assert!(
        (0.8..0.97).contains(&share),
        "{share} of the visible changes were hot accounts'"
    );
}

#[test]
fn activity_outside_its_range_is_a_configuration_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_presenced"))
        .args(["sim", "--listen", "127.0.0.1:0", "--hot-share", "1.5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("activity.hot_share"), "{stderr}");
}
