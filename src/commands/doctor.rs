//! `cwo doctor`: what the configured tracker, provider and agent need, each with a fix.

use crate::cli::Format;
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::Project;
use crate::report::{self, doctor};

pub(crate) async fn doctor(
    project: &Project,
    printer: Printer,
    format: Format,
) -> Result<ExitStatus, CommandError> {
    let report = doctor::collect(project).await;
    report::print(&printer, &report, format == Format::Json);
    Ok(if report.ok {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}
