//! `cwo completions <shell>`.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::{CommandError, ExitStatus};

pub(crate) fn completions(shell: clap_complete::Shell) -> Result<ExitStatus, CommandError> {
    clap_complete::generate(shell, &mut Cli::command(), "cwo", &mut std::io::stdout());
    Ok(ExitStatus::Success)
}
