//! `cwo task add|list`: juggle-compatible balls for people without juggle.

use crate::cli::{Format, PriorityArg, TaskAddArgs};
use crate::error::{CommandError, ExitStatus};
use crate::model::ids::slug;
use crate::printer::Printer;
use crate::project::Project;
use crate::report;
use crate::tracker::Priority;
use crate::tracker::juggle::NewBall;

pub(crate) fn add(
    project: &Project,
    printer: Printer,
    args: &TaskAddArgs,
) -> Result<ExitStatus, CommandError> {
    let priority = match args.priority {
        PriorityArg::Low => Priority::Low,
        PriorityArg::Medium => Priority::Medium,
        PriorityArg::High => Priority::High,
        PriorityArg::Urgent => Priority::Urgent,
    };
    let tracker = project.tracker();
    let id = tracker.add(
        &slug(&project.name),
        &NewBall {
            title: &args.title,
            context: &args.context,
            criteria: &args.acceptance_criteria,
            priority,
            depends_on: &args.depends_on,
            tags: &args.tags,
        },
    )?;
    printer.status(format!("added {id} to {}", tracker.balls_path().display()));
    printer.out(&id);
    Ok(ExitStatus::Success)
}

pub(crate) fn list(
    project: &Project,
    printer: Printer,
    format: Format,
) -> Result<ExitStatus, CommandError> {
    // Lines the tracker skips, and balls that can never be ready, are warnings on stderr.
    let tracker = project.tracker();
    let report = report::tasks::collect(&tracker)?;
    if report.tasks.is_empty() && format == Format::Table {
        printer.status(format!(
            "no balls in {}; add one with `cwo task add \"title\" --ac \"criterion\"`",
            tracker.balls_path().display()
        ));
        return Ok(ExitStatus::Success);
    }
    report::print(&printer, &report, format == Format::Json);
    Ok(ExitStatus::Success)
}
