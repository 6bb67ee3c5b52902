//! `cwo down`: delete every worker the journal knows for this project, confirmed.

use crate::error::{CommandError, ExitStatus};
use crate::journal::ControllerLock;
use crate::printer::Printer;
use crate::project::Project;

pub(crate) async fn down(project: &Project, printer: Printer) -> Result<ExitStatus, CommandError> {
    let _lock = ControllerLock::acquire(&project.state_dir)?;
    let orch = project.lifecycle(printer)?;
    let live = orch.journal().live_workers()?;
    if live.is_empty() {
        printer.status("no workers to tear down");
        return Ok(ExitStatus::Success);
    }
    let mut pending = orch.recover(false, "user").await?.pending;
    let mut failed = orch
        .settle_pending(&mut pending, crate::orchestrator::PENDING_WAIT)
        .await;
    orch.warn_unsettled(&pending);
    if let Some(e) = failed.pop() {
        return Err(e.into());
    }
    // Creates that never appeared stay journaled (warned about) for the next down or the reaper.
    let left: Vec<_> = orch
        .journal()
        .live_workers()?
        .into_iter()
        .filter(|w| w.state != "intent")
        .collect();
    if !left.is_empty() {
        let names: Vec<String> = left.into_iter().map(|w| w.name).collect();
        return Err(
            CommandError::user(format!("still live: {}", names.join(", ")))
                .hint("run `cwo down` again"),
        );
    }
    printer.status(format!("{} worker(s) torn down", live.len()));
    Ok(ExitStatus::Success)
}
