//! `cwo task add|list`: juggle-compatible balls for people without juggle.

use serde_json::json;

use crate::cli::{Format, PriorityArg, TaskAddArgs};
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::{Project, slug};
use crate::tracker::juggle::NewBall;
use crate::tracker::{Priority, Tracker};

pub fn add(
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

pub fn list(
    project: &Project,
    printer: Printer,
    format: Format,
) -> Result<ExitStatus, CommandError> {
    // Lines the tracker skips, and balls that can never be ready, are warnings on stderr.
    let tracker = project.tracker();
    let tasks = tracker.list()?;
    if format == Format::Json {
        printer.json(json!({ "tasks": tasks, "problems": tracker.problems()? }));
        return Ok(ExitStatus::Success);
    }
    if tasks.is_empty() {
        printer.status(format!(
            "no balls in {}; add one with `cwo task add \"title\" --ac \"criterion\"`",
            tracker.balls_path().display()
        ));
        return Ok(ExitStatus::Success);
    }
    let mut out = format!(
        "{:<24} {:<12} {:<7} {:<5} TITLE\n",
        "ID", "STATE", "PRIO", "READY"
    );
    for t in &tasks {
        let mut title = t.title.lines().next().unwrap_or("").to_string();
        if !t.waiting_on.is_empty() {
            title.push_str(&format!("  (waits on {})", t.waiting_on.join(", ")));
        }
        if !t.blocked_reason.is_empty() {
            title.push_str(&format!(
                "  (blocked: {})",
                t.blocked_reason.lines().next().unwrap_or("")
            ));
        }
        out.push_str(&format!(
            "{:<24} {:<12} {:<7} {:<5} {}\n",
            t.id,
            t.state,
            t.priority.as_str(),
            if t.is_ready() { "yes" } else { "no" },
            title
        ));
    }
    printer.out(out);
    Ok(ExitStatus::Success)
}
