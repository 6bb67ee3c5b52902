//! `cwo up [--plan]`: bring up a worker now (`cwo run` adopts it), or show what would be made.

use crate::cli::{Format, UpArgs};
use crate::error::{CommandError, ExitStatus};
use crate::journal::ControllerLock;
use crate::printer::Printer;
use crate::project::Project;
use crate::report;

pub(crate) async fn up(
    project: &Project,
    printer: Printer,
    args: &UpArgs,
) -> Result<ExitStatus, CommandError> {
    if args.plan {
        let report = report::plan::collect(project).await?;
        report::print(&printer, &report, args.format == Format::Json);
        return Ok(ExitStatus::Success);
    }
    let _lock = ControllerLock::acquire(&project.state_dir)?;
    let orch = project.lifecycle(printer)?;
    // The workers a stopped `cwo run` left are kept, up to `workers.max`, for the next run.
    let max = project.settings().workers.max.get();
    let recovered = orch.recover(max, "orphaned").await?;
    let mut pending = recovered.pending;
    let mut failed = orch
        .settle_pending(&mut pending, std::time::Duration::ZERO)
        .await;
    orch.warn_unsettled(&pending);
    if let Some(e) = failed.pop() {
        return Err(e.into());
    }
    if let Some(w) = recovered.workers.first() {
        printer.status(format!("worker {} is already up", w.instance.name));
        printer.out(&w.instance.name);
        return Ok(ExitStatus::Success);
    }
    let w = orch
        .bring_up(&tokio_util::sync::CancellationToken::new())
        .await?
        .ok_or_else(|| CommandError::user("stopped before the worker was up"))?;
    printer.out(&w.instance.name);
    Ok(ExitStatus::Success)
}
