//! `cwo serve`: the loop, as `cwo run` runs it (the same lock and signals), with the HTTP server
//! (src/serve) beside it; the server starts first and stops after the loop's teardown.

use std::net::SocketAddr;

use crate::cli::ServeArgs;
use crate::error::{CommandError, ExitStatus};
use crate::journal::ControllerLock;
use crate::orchestrator::{RunOptions, Shutdown};
use crate::printer::Printer;
use crate::project::Project;

pub(crate) async fn serve(
    project: &Project,
    printer: Printer,
    args: &ServeArgs,
) -> Result<ExitStatus, CommandError> {
    let _lock = ControllerLock::acquire(&project.state_dir)?;
    let listen: SocketAddr = match args.listen {
        Some(a) => a,
        // Checked when the settings were read.
        None => project.settings().serve.listen.parse().map_err(|e| {
            CommandError::usage(format!("serve.listen is not an address and port: {e}"))
        })?,
    };
    let shutdown = Shutdown::default();
    let server = crate::serve::start(project, printer, listen, shutdown.wake.clone()).await?;
    let orch = match project.orchestrator(printer).await {
        Ok(o) => o,
        Err(e) => {
            server.stop().await;
            return Err(e.into());
        }
    };
    super::run::watch_signals(shutdown.clone(), args.now, printer)?;
    let started = std::time::Instant::now();
    let result = orch.run(RunOptions { once: false }, shutdown).await;
    server.stop().await;
    let summary = result?;
    printer.status(summary.render(started.elapsed()));
    Ok(ExitStatus::Success)
}
