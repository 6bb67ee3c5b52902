//! `cwo task list`: the tracker's balls, and what it skipped or can never make ready.

use serde::Serialize;

use super::table::Table;
use super::{Report, SCHEMA_VERSION};
use crate::error::CommandError;
use crate::tracker::{Task, Tracker, TrackerProblem};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct TaskListReport {
    pub(crate) schema_version: u32,
    pub(crate) tasks: Vec<Task>,
    pub(crate) problems: Vec<TrackerProblem>,
}

pub(crate) fn collect(tracker: &dyn Tracker) -> Result<TaskListReport, CommandError> {
    Ok(TaskListReport {
        schema_version: SCHEMA_VERSION,
        tasks: tracker.list()?,
        problems: tracker.problems()?,
    })
}

impl Report for TaskListReport {
    fn text(&self) -> String {
        let mut t = Table::new(&["id", "state", "prio", "ready", "title"]);
        for task in &self.tasks {
            let mut title = task.title.lines().next().unwrap_or("").to_string();
            if !task.waiting_on.is_empty() {
                title.push_str(&format!("  (waits on {})", task.waiting_on.join(", ")));
            }
            if !task.blocked_reason.is_empty() {
                title.push_str(&format!(
                    "  (blocked: {})",
                    task.blocked_reason.lines().next().unwrap_or("")
                ));
            }
            t.row(vec![
                task.id.clone(),
                task.state.clone(),
                task.priority.as_str().to_string(),
                if task.is_ready() { "yes" } else { "no" }.to_string(),
                title,
            ]);
        }
        t.render()
    }
}
