//! Opening the database for the commands that work on it directly, and `presenced migrate`.

use super::{CliError, DbArgs};
use presenced::config::Config;
use presenced::store::{migrate as schema, Db};
use std::path::PathBuf;
use std::time::Duration;

/// Whether a command writes the database (and may create and migrate it) or only reads it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only: nothing is created or migrated under a running daemon.
    ReadOnly,
    /// Writes: the file is created and migrated when needed.
    ReadWrite,
}

/// The database a command works on: `--db`, else the configuration's `store.path`.
fn db_path(args: &DbArgs) -> Result<PathBuf, CliError> {
    match (&args.db, &args.config) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(c)) => {
            let text = std::fs::read_to_string(c).map_err(|e| {
                CliError::Configuration(format!("cannot read {}: {e}", c.display()))
            })?;
            let env: Vec<(String, String)> = std::env::vars().collect();
            Ok(Config::from_toml(&text, c, &env)?.store.path)
        }
        (None, None) => Ok(Config::default().store.path),
    }
}

/// Opens the command's database.
pub fn open(args: &DbArgs, access: Access) -> Result<Db, CliError> {
    let path = db_path(args)?;
    Ok(match access {
        Access::ReadOnly => Db::open_read_only(&path, Duration::from_secs(5))?,
        Access::ReadWrite => Db::open(&path, Duration::from_secs(5))?,
    })
}

/// Applies pending schema migrations and says what it did: ahead of a restart, so that a long
/// one does not run inside the service's start.
pub fn migrate(args: &DbArgs) -> Result<(), CliError> {
    let path = db_path(args)?;
    let pending = schema::pending(&path)?;
    if pending.names.is_empty() {
        println!("{}: schema up to date", path.display());
        return Ok(());
    }
    println!(
        "{}: applying {} ({} history rows to carry along)",
        path.display(),
        pending.names.join(", "),
        pending.history_rows
    );
    let started = std::time::Instant::now();
    drop(open(args, Access::ReadWrite)?);
    println!(
        "done in {:.1} s; schema version {}",
        started.elapsed().as_secs_f64(),
        schema::latest_version()
    );
    Ok(())
}
