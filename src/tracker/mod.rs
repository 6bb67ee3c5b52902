//! Task sources. `juggle.rs` reads and writes juggle's `.juggle/balls.jsonl`.

pub mod juggle;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Medium,
    High,
    Urgent,
}

impl Priority {
    pub fn parse(s: &str) -> Option<Priority> {
        match s {
            "low" => Some(Priority::Low),
            "medium" => Some(Priority::Medium),
            "high" => Some(Priority::High),
            "urgent" => Some(Priority::Urgent),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Medium => "medium",
            Priority::High => "high",
            Priority::Urgent => "urgent",
        }
    }
}

/// One unit of work, as the orchestrator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Task {
    pub id: String,
    pub title: String,
    pub context: String,
    pub acceptance_criteria: Vec<String>,
    pub priority: Priority,
    pub state: String,
    pub blocked_reason: String,
    pub depends_on: Vec<String>,
    pub tags: Vec<String>,
    /// Dependencies that are neither complete nor archived.
    pub waiting_on: Vec<String>,
}

impl Task {
    pub fn is_ready(&self) -> bool {
        (self.state == "pending" || self.state == "in_progress") && self.waiting_on.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no ball `{0}` in the tracker")]
    NotFound(String),
    #[error("`{0}` matches several balls: {1}")]
    Ambiguous(String, String),
    #[error("{0}")]
    Invalid(String),
}

/// What the loop needs from a task source.
pub trait Tracker: Send + Sync {
    /// Every active task, in file order.
    fn list(&self) -> Result<Vec<Task>, TrackerError>;
    /// Ready tasks in run order: in_progress first, then priority, then file order.
    fn ready(&self) -> Result<Vec<Task>, TrackerError> {
        let mut ready: Vec<(usize, Task)> = self
            .list()?
            .into_iter()
            .filter(Task::is_ready)
            .enumerate()
            .collect();
        ready.sort_by_key(|(i, t)| (t.state != "in_progress", std::cmp::Reverse(t.priority), *i));
        Ok(ready.into_iter().map(|(_, t)| t).collect())
    }
    fn claim(&self, id: &str) -> Result<(), TrackerError>;
    fn complete(&self, id: &str, note: &str) -> Result<(), TrackerError>;
    fn block(&self, id: &str, reason: &str) -> Result<(), TrackerError>;
    /// Back to pending (an aborted attempt).
    fn release(&self, id: &str) -> Result<(), TrackerError>;
    /// A line in the progress log of every session the task belongs to (its tags).
    fn progress(&self, task: &Task, text: &str) -> Result<(), TrackerError>;
}
