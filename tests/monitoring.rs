//! The monitoring kit in monitoring/ against a running daemon: every metric the Grafana
//! dashboard and the alerting rules name exists in its /metrics, promtool accepts the
//! exposition, and `promtool test rules` passes for every alert.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn promtool() -> Command {
    assert!(
        Command::new("promtool").arg("--version").output().is_ok(),
        "promtool is missing: run the suite with scripts/test.sh, which installs Debian's prometheus package"
    );
    Command::new("promtool")
}

/// `presenced_...` names in a text (PromQL in the dashboard or the rules), as the exposition's
/// `# TYPE` lines name them (counters without `_total`, histograms without their suffixes).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("presenced_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let mut name = &text[start..end];
        for suffix in ["_total", "_bucket", "_sum", "_count"] {
            name = name.strip_suffix(suffix).unwrap_or(name);
        }
        out.insert(name.to_owned());
        i = end;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerts_name_only_metrics_the_daemon_exposes() {
    let sim = SimProcess::start(&["--population", "20", "--churn", "0.05", "--rate", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_daemon_config(dir.path(), &sim.base_url(), "[sink]\nkind = \"stdout\"\n");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "metrics_listen = \"\"",
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&config, text).unwrap();
    common::pipeline::add_watched(&dir.path().join("presence.db"), &ids("user", 20));
    let daemon = Reaped(
        Command::new(env!("CARGO_BIN_EXE_presenced"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exposition = loop {
        if let Ok(r) = reqwest::get(&url).await {
            let body = r.text().await.unwrap();
            if body.contains("presenced_sweeps_total{result=\"completed\"}") {
                break body;
            }
        }
        assert!(Instant::now() < deadline, "no completed sweep in /metrics");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // What Prometheus gets: it asks for OpenMetrics.
    let openmetrics = reqwest::Client::new()
        .get(&url)
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(openmetrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let openmetrics = openmetrics.text().await.unwrap();
    assert!(openmetrics.ends_with("# EOF\n"));
    drop(daemon);
    let exposed: BTreeSet<String> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let dashboard = std::fs::read_to_string("monitoring/grafana-dashboard.json").unwrap();
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    let rules = std::fs::read_to_string("monitoring/presenced.rules.yml").unwrap();
    for (what, text) in [("dashboard", &dashboard), ("rules", &rules)] {
        let named = metric_names(text);
        assert!(named.len() > 5, "{what} names metrics");
        let missing: Vec<&String> = named.difference(&exposed).collect();
        assert!(
            missing.is_empty(),
            "{what} names metrics /metrics lacks: {missing:?}"
        );
    }

    // Without OpenMetrics in Accept, the classic text format, which promtool checks.
    let mut check = promtool()
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(out.status.success(), "promtool check metrics: {out:?}");
    drop(sim);
}

#[test]
fn every_alert_has_a_passing_promtool_unit_test() {
    let rules = std::fs::read_to_string("monitoring/presenced.rules.yml").unwrap();
    let tests = std::fs::read_to_string("monitoring/presenced.rules.test.yml").unwrap();
    let operations = std::fs::read_to_string("docs/OPERATIONS.md").unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no promtool test"
        );
        assert!(
            operations.contains(&format!("### {alert}")),
            "docs/OPERATIONS.md does not explain {alert}"
        );
    }
    let out = promtool()
        .args(["test", "rules", "monitoring/presenced.rules.test.yml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "promtool test rules: {out:?}");
}
