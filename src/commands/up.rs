//! `cwo up`: bring up a worker now; `cwo run` adopts it.

use crate::error::CliError;
use crate::journal::ControllerLock;
use crate::orchestrator::Orchestrator;
use crate::printer::Printer;
use crate::project::Project;

pub async fn up(project: &Project, printer: Printer) -> Result<u8, CliError> {
    let _lock = ControllerLock::acquire(&project.state_dir)?;
    let orch = Orchestrator::new(project, printer)?;
    if let Some(w) = orch.recover(true, "orphaned").await?.worker {
        printer.status(format!("worker {} is already up", w.instance.name));
        printer.out(&w.instance.name);
        return Ok(0);
    }
    let w = orch.bring_up().await?;
    printer.out(&w.instance.name);
    Ok(0)
}
