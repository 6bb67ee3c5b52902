//! `cwo config show`: every resolved setting and where it came from.

use crate::cli::Format;
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::Project;
use crate::report;

pub(crate) fn show(
    project: &Project,
    printer: Printer,
    format: Format,
) -> Result<ExitStatus, CommandError> {
    let report = report::config::collect(project);
    report::print(&printer, &report, format == Format::Json);
    Ok(ExitStatus::Success)
}
