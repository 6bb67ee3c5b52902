//! `cwo run`: the loop, under the project's controller lock, with signal handling.

use tokio::signal::unix::{SignalKind, signal};

use crate::cli::RunArgs;
use crate::error::{CommandError, ExitStatus};
use crate::journal::ControllerLock;
use crate::orchestrator::{RunOptions, Shutdown};
use crate::printer::Printer;
use crate::project::Project;

pub(crate) async fn run(
    project: &Project,
    printer: Printer,
    args: &RunArgs,
) -> Result<ExitStatus, CommandError> {
    let _lock = ControllerLock::acquire(&project.state_dir)?;
    let orch = project.orchestrator(printer).await?;
    let shutdown = Shutdown::default();
    watch_signals(shutdown.clone(), args.now, printer)?;
    let started = std::time::Instant::now();
    let summary = orch.run(RunOptions { once: args.once }, shutdown).await?;
    printer.status(summary.render(started.elapsed()));
    Ok(ExitStatus::Success)
}

/// First SIGINT/SIGTERM: stop claiming (and abort with --now); the second aborts running attempts.
pub(super) fn watch_signals(
    shutdown: Shutdown,
    now: bool,
    printer: Printer,
) -> Result<(), CommandError> {
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| CommandError::user(format!("cannot install the SIGINT handler: {e}")))?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CommandError::user(format!("cannot install the SIGTERM handler: {e}")))?;
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            seen += 1;
            if seen == 1 && !now {
                printer.status("signal received: finishing running attempts, then tearing down");
                shutdown.stop_claiming.cancel();
            } else {
                printer.status("signal received: aborting running attempts, then tearing down");
                shutdown.stop_claiming.cancel();
                shutdown.abort.cancel();
            }
        }
    });
    Ok(())
}
