//! `presenced history` and `presenced stats`: reading the database for people.

use super::db::{open, Access};
use super::{time_arg, CliError, DbArgs};
use presenced::model::format_millis;

/// `presenced history`: one account's transitions.
pub fn history(
    args: &DbArgs,
    account: &str,
    since: Option<String>,
    until: Option<String>,
    json: bool,
) -> Result<(), CliError> {
    let since = since.as_deref().map(time_arg).transpose()?;
    let until = until.as_deref().map(time_arg).transpose()?;
    let db = open(args, Access::ReadOnly)?;
    let rows = db.history(account, since, until)?;
    if json {
        for t in &rows {
            println!(
                "{}",
                String::from_utf8_lossy(&presenced::publish::event::EventV1::new(0, t).to_json())
            );
        }
        return Ok(());
    }
    if rows.is_empty() {
        println!("no transitions for {account:?} in that range");
        return Ok(());
    }
    println!(
        "{:<5} {:<24} {:<10} {:<10} {:<8} platforms",
        "seq", "observed_at", "from", "to", "kind"
    );
    for t in rows {
        let platforms: Vec<String> = t
            .to_platforms
            .iter()
            .map(|p| format!("{}:{}", p.platform, p.status))
            .collect();
        println!(
            "{:<5} {:<24} {:<10} {:<10} {:<8} {}",
            t.seq,
            format_millis(t.observed_at),
            t.from.map_or("-", |s| s.as_str()),
            t.to.as_str(),
            t.kind(),
            platforms.join(" ")
        );
    }
    Ok(())
}

/// `presenced stats`: accounts per state, the last sweep, the outbox backlog.
pub fn stats(args: &DbArgs, json: bool) -> Result<(), CliError> {
    let s = open(args, Access::ReadOnly)?.stats()?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s).expect("stats serialize")
        );
        return Ok(());
    }
    println!("watched (table)   {}", s.watched_in_table);
    println!("Online            {}", s.online);
    println!("PushOnline        {}", s.push_online);
    println!("Offline           {}", s.offline);
    println!("not found         {}", s.not_found);
    println!("history rows      {}", s.history_rows);
    if s.not_folded > 0 {
        // Normal during a sweep; after a crash, the next start folds them.
        println!("not folded yet    {}", s.not_folded);
    }
    println!("outbox backlog    {}", s.outbox_backlog);
    if let Some(oldest) = s.outbox_oldest_ms {
        println!("oldest unsent     {}", format_millis(oldest));
    }
    match s.last_sweep {
        Some(w) => {
            let duration = w
                .finished_at
                .map(|f| format!("{:.2}s", (f - w.started_at) as f64 / 1000.0))
                .unwrap_or("-".into());
            println!(
                "last sweep        #{} {} at {} ({}): {} asked, {} observed, {} failed, {} not found, {} transitions",
                w.sweep_id,
                w.outcome,
                format_millis(w.started_at),
                duration,
                w.asked,
                w.observed,
                w.failed,
                w.not_found,
                w.transitions
            );
        }
        None => println!("last sweep        none yet"),
    }
    if let Some(role) = &s.standby_role {
        println!(
            "standby role      {} since {} ({}; live role and lag: presenced standby status)",
            role.role,
            format_millis(role.changed_at),
            role.reason
        );
        if let Some(at) = s.standby_last_takeover {
            println!("last takeover     {}", format_millis(at));
        }
        if let Some(why) = &s.standby_incomplete {
            println!("NOT ELIGIBLE      {why}");
        }
    }
    Ok(())
}
