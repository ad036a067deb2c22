//! `presenced users`: the `watched_accounts` table.

use super::db::{open, Access};
use super::{CliError, DbArgs, UsersAction};
use presenced::watchlist;

/// Changes or lists the `watched_accounts` table.
pub fn run(args: &DbArgs, action: UsersAction) -> Result<(), CliError> {
    let access = match action {
        UsersAction::List => Access::ReadOnly,
        _ => Access::ReadWrite,
    };
    let mut db = open(args, access)?;
    let db = &mut db;
    let check = |ids: Vec<String>| -> Result<Vec<String>, CliError> {
        for id in &ids {
            watchlist::validate_id(id).map_err(|e| CliError::Failed(format!("{id:?}: {e}")))?;
        }
        Ok(ids)
    };
    match action {
        UsersAction::Add { ids } => {
            let ids = check(ids)?;
            let added = db.add_watched(&ids, |_| {})?;
            println!("added {added} of {} ids", ids.len());
        }
        UsersAction::Remove { ids } => {
            let removed = db.remove_watched(&ids)?;
            println!(
                "removed {removed} of {} ids; a running daemon picks this up on SIGHUP",
                ids.len()
            );
        }
        UsersAction::Import { file } => {
            let parsed =
                watchlist::read_file(&file).map_err(|e| CliError::Failed(e.to_string()))?;
            for bad in &parsed.invalid {
                eprintln!("{bad}; skipped");
            }
            let total = parsed.ids.len();
            let started = std::time::Instant::now();
            let added = db.add_watched(&parsed.ids, |done| {
                eprint!(
                    "\rimporting: {done}/{total} ({:.0}%)",
                    done as f64 * 100.0 / total.max(1) as f64
                );
            })?;
            eprintln!();
            println!(
                "imported {total} ids from {} in {:.1}s: {added} new, {} duplicates folded, {} invalid lines skipped",
                file.display(),
                started.elapsed().as_secs_f64(),
                parsed.duplicates,
                parsed.invalid.len()
            );
        }
        UsersAction::List => {
            use std::io::Write;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            for id in db.watched_ids()? {
                let _ = writeln!(out, "{id}");
            }
        }
    }
    Ok(())
}
