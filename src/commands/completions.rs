//! `cwo completions <shell>`.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::CliError;

pub fn completions(shell: clap_complete::Shell) -> Result<u8, CliError> {
    clap_complete::generate(shell, &mut Cli::command(), "cwo", &mut std::io::stdout());
    Ok(0)
}
