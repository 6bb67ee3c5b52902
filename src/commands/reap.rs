//! `cwo reap [--yes] [--dry-run]`: the label-based reaper, safe to run from cron.

use crate::cli::{Format, ReapArgs};
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::Project;
use crate::report;

pub(crate) async fn reap(
    project: &Project,
    printer: Printer,
    args: &ReapArgs,
) -> Result<ExitStatus, CommandError> {
    let report = report::reap::collect(project, printer, args.yes && !args.dry_run).await?;
    let gone = report.gone();
    if gone > 0 {
        // Gone is done: not a failure, and nothing to do about it.
        printer.status(format!(
            "{gone} worker(s) vanished before cwo got to them (deleted outside cwo or by their TTL)"
        ));
    }
    report::print(&printer, &report, args.format == Format::Json);
    match report.failure() {
        Some(err) => Err(err),
        None => Ok(ExitStatus::Success),
    }
}
