//! `presenced standby status` and `presenced standby handover`: asked of the daemon running on
//! this host (its `/standby` endpoint at service.metrics_listen), with the database's log of
//! role changes beside it.

use super::{runtime, CliError};
use presenced::config::Config;
use presenced::model::format_millis;
use presenced::store::Store;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long `handover` waits for the active to hand over.
const HANDOVER_WAIT: Duration = Duration::from_secs(60);

/// Prints this instance's role, lag and last takeover, and its recent role changes.
pub fn status(path: &Path, json: bool) -> Result<(), CliError> {
    let config = Config::load(path)?;
    if !config.standby.enabled {
        return Err(CliError::Configuration(format!(
            "{}: standby.enabled is off: this instance runs alone",
            path.display()
        )));
    }
    runtime().block_on(async {
        let live = ask(&config).await;
        let store = Store::open(
            &config.store.path,
            Duration::from_millis(config.store.busy_timeout_ms),
        )
        .await?;
        let changes = store.call(|db| db.role_changes(10)).await?;
        if json {
            let changes: Vec<_> = changes
                .iter()
                .map(|c| {
                    serde_json::json!({
                        "changed_at": format_millis(c.changed_at),
                        "instance": c.instance, "role": c.role, "reason": c.reason,
                    })
                })
                .collect();
            let out = serde_json::json!({
                "running": live.as_ref().ok(),
                "not_running": live.as_ref().err(),
                "role_changes": changes,
            });
            println!("{out:#}");
            return Ok(());
        }
        match &live {
            Ok(s) => {
                let field = |k: &str| s.get(k).cloned().unwrap_or_default();
                println!(
                    "instance:        {}",
                    field("instance").as_str().unwrap_or("?")
                );
                println!("role:            {}", field("role").as_str().unwrap_or("?"));
                if let Some(since) = field("since").as_i64() {
                    println!("since:           {}", format_millis(since));
                }
                println!(
                    "active:          {}",
                    field("active").as_str().unwrap_or("none seen")
                );
                if let Some(age) = field("heartbeat_age_seconds").as_f64() {
                    println!("last heartbeat:  {age:.1} s ago");
                }
                println!(
                    "lag:             {} events, {:.1} s",
                    field("lag_events").as_i64().unwrap_or(0),
                    field("lag_seconds").as_f64().unwrap_or(0.0)
                );
                if let Some(at) = field("last_takeover").as_i64() {
                    println!(
                        "last takeover:   {} ({} ms from deciding to sweeping)",
                        format_millis(at),
                        field("last_takeover_ms").as_u64().unwrap_or(0)
                    );
                }
                if let Some(why) = field("last_stand_down").as_str() {
                    println!("last stood down: {why}");
                }
                if let Some(why) = field("ineligible").as_str() {
                    println!("NOT ELIGIBLE:    {why}");
                }
            }
            Err(e) => println!("not running here: {e}"),
        }
        println!("recent role changes of this database:");
        for c in &changes {
            println!(
                "  {}  {:<8} {}  ({})",
                format_millis(c.changed_at),
                c.role,
                c.instance,
                c.reason
            );
        }
        Ok(())
    })
}

/// Asks the active on this host to hand over, and waits until it follows.
pub fn handover(path: &Path) -> Result<(), CliError> {
    let config = Config::load(path)?;
    if !config.standby.enabled {
        return Err(CliError::Configuration(format!(
            "{}: standby.enabled is off: there is no one to hand over to",
            path.display()
        )));
    }
    runtime().block_on(async {
        let s = ask(&config).await.map_err(CliError::Failed)?;
        let role = s.get("role").and_then(|r| r.as_str()).unwrap_or("?");
        if role != "active" {
            return Err(CliError::Failed(format!(
                "this host's instance is {role}, not the active: run this on the active's host (`presenced standby status` there says which)"
            )));
        }
        let pid = s.get("pid").and_then(|p| p.as_i64()).unwrap_or(0);
        if pid <= 0 || i32::try_from(pid).is_err() {
            return Err(CliError::Failed("the daemon did not say its pid".into()));
        }
        // SAFETY: kill(2) with a pid the daemon gave and a signal it handles.
        if unsafe { libc::kill(pid as i32, libc::SIGUSR2) } != 0 {
            return Err(CliError::Failed(format!(
                "signalling pid {pid}: {}",
                std::io::Error::last_os_error()
            )));
        }
        let asked = Instant::now();
        while asked.elapsed() < HANDOVER_WAIT {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Ok(now) = ask(&config).await else { continue };
            let role = now.get("role").and_then(|r| r.as_str()).unwrap_or("?");
            let active = now.get("active").and_then(|r| r.as_str());
            if role == "follower" {
                if let Some(active) = active {
                    println!(
                        "handed over in {} ms: {active} is the active",
                        asked.elapsed().as_millis()
                    );
                    return Ok(());
                }
            }
        }
        Err(CliError::Failed(format!(
            "no follower took over within {} s; `presenced standby status` tells where things stand",
            HANDOVER_WAIT.as_secs()
        )))
    })
}

/// The running daemon's `/standby`, or why it cannot be asked.
async fn ask(config: &Config) -> Result<serde_json::Value, String> {
    let listen = &config.service.metrics_listen;
    if listen.is_empty() {
        return Err("service.metrics_listen is off, so the daemon cannot be asked".into());
    }
    let url = format!("http://{listen}/standby");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| e.to_string())?;
    let answer = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", e.without_url()))?;
    if !answer.status().is_success() {
        return Err(format!("{url}: {}", answer.status()));
    }
    answer
        .json()
        .await
        .map_err(|e| format!("{url}: {}", e.without_url()))
}
