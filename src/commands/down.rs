//! `cwo down`: delete every worker the journal knows for this project, confirmed.

use crate::error::{CommandError, ExitStatus};
use crate::journal::ControllerLock;
use crate::printer::Printer;
use crate::project::Project;

pub(crate) async fn down(project: &Project, printer: Printer) -> Result<ExitStatus, CommandError> {
    let _lock = ControllerLock::acquire(&project.state_dir)?;
    match project.lifecycle(printer)?.down().await? {
        0 => printer.status("no workers to tear down"),
        n => printer.status(format!("{n} worker(s) torn down")),
    }
    Ok(ExitStatus::Success)
}
