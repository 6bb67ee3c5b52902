//! cwo, the Cloud Worker Orchestrator: runs an AI coding agent's backlog on ephemeral workers.

pub mod agent;
pub mod bootstrap;
pub mod cli;
pub mod commands;
pub mod config;
pub mod connector;
pub mod cost;
pub(crate) mod demo;
pub mod error;
pub mod forge;
pub mod git;
pub mod github;
pub mod journal;
pub mod model;
pub mod orchestrator;
pub mod printer;
pub mod project;
pub mod provider;
pub mod report;
pub(crate) mod schedule;
pub mod secrets;
pub(crate) mod serve;
pub mod tracker;
pub mod transport;
pub mod util;
pub(crate) mod workflow;

use std::process::ExitCode;

use clap::Parser;

/// Parses the command line before any runtime exists, runs the command on a tokio runtime, and
/// turns its result into an exit code.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_tracing(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return error::ExitStatus::Failure.into();
        }
    };
    let result = runtime.block_on(commands::dispatch(cli));
    // Every command awaits its own teardown; nothing is left to the runtime's shutdown.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(status) => status.into(),
        Err(e) => {
            eprint!("{}", e.render());
            e.exit_status().into()
        }
    }
}

fn init_tracing(verbose: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("CWO_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(if verbose { "cwo=debug" } else { "warn" }));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
