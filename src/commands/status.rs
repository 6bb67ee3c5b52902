//! `cwo status`: workers and tasks.

use crate::cli::Format;
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::Project;
use crate::report;

pub(crate) async fn status(
    project: &Project,
    printer: Printer,
    format: Format,
) -> Result<ExitStatus, CommandError> {
    let report = report::status::collect(project, printer).await?;
    if let Some(e) = &report.provider_list_error {
        printer.warn(format!(
            "the provider could not list workers ({e}); showing the journal only"
        ));
    }
    if let Some(e) = &report.tracker_error {
        printer.warn(format!(
            "the tracker could not be read ({e}); no tasks are shown"
        ));
    }
    report::print(&printer, &report, format == Format::Json);
    Ok(ExitStatus::Success)
}
