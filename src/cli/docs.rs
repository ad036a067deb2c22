//! `presenced completions SHELL` and `presenced man`: both generated from the command-line
//! definition, so they cannot drift from it.

use super::{Cli, CliError};
use clap::CommandFactory;

/// Writes the completion script for `shell` to standard output.
pub fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "presenced", &mut std::io::stdout());
    Ok(())
}

/// Writes the manual page, section 1, to standard output: the program's, or one command's
/// (`presenced-users(1)`, which the program's page lists).
pub fn man_page(sub: Option<&str>) -> Result<(), CliError> {
    let mut command = Cli::command();
    if let Some(name) = sub {
        let found = command
            .find_subcommand(name)
            .cloned()
            .ok_or_else(|| CliError::Usage(format!("no command {name:?}")))?;
        // clap names are &'static str; this process prints one page and exits.
        let title: &'static str = format!("presenced-{name}").leak();
        command = found.name(title);
    }
    clap_mangen::Man::new(command)
        .render(&mut std::io::stdout())
        .map_err(|e| CliError::Failed(format!("writing the manual page: {e}")))
}
