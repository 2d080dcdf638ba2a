//! `kwasm completions SHELL` and `kwasm man`: generated from the same clap
//! definitions as `--help` (clap_complete, clap_mangen), so they cannot
//! drift from the commands.

use super::{CliError, emit};

/// The completion script of `command` for `shell`.
pub fn completions(
    shell: clap_complete::Shell,
    mut command: clap::Command,
) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "kwasm", &mut script);
    emit(&String::from_utf8_lossy(&script))
}

/// The man page (roff) of `command`.
pub fn man(command: clap::Command) -> Result<(), CliError> {
    let mut page = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut page)
        .map_err(CliError::Stdout)?;
    emit(&String::from_utf8_lossy(&page))
}
