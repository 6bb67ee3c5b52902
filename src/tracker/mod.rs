//! Task sources: `juggle.rs` (juggle 0.4's `.juggle/balls.jsonl`), `github.rs` (labelled GitHub
//! issues), `frontloop.rs` (juggle 1.x's `.frontloop/` task files).

pub mod frontloop;
pub mod github;
pub mod juggle;

use std::path::PathBuf;

use serde::Serialize;

/// The longest task id cwo accepts (juggle's are `<project>-<8 hex>`; a path component may have
/// 255 bytes, and cwo adds a suffix such as `-input.bundle`).
pub(crate) const MAX_TASK_ID_LEN: usize = 128;

/// Whether `id` is safe to use as one path component (`<state>/logs/<id>`, `tasks/<id>/…`,
/// `<id>-input.bundle`) and as one git ref component (`cwo/<id>`). Every tracker checks its ids
/// here before a task reaches the loop; `Err` says what is wrong.
///
/// Accepted: ASCII letters, digits, `-`, `_` and `.`; not starting with `.` or `-` (a hidden file,
/// an option to a command); no `..`; not ending with `.` or `.lock` (git refuses those ref
/// components); at most [`MAX_TASK_ID_LEN`] bytes. juggle's `<project>-<hex>`, its legacy
/// `<project>-<n>` and issue numbers all pass.
pub(crate) fn valid_task_id(id: &str) -> Result<(), InvalidTaskId> {
    if id.is_empty() {
        return Err(InvalidTaskId::Empty);
    }
    if id.len() > MAX_TASK_ID_LEN {
        return Err(InvalidTaskId::TooLong(id.len()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(InvalidTaskId::Character(c));
    }
    if id.starts_with(['.', '-']) {
        return Err(InvalidTaskId::Start);
    }
    if id.contains("..") {
        return Err(InvalidTaskId::DotDot);
    }
    if id.ends_with('.') || id.ends_with(".lock") {
        return Err(InvalidTaskId::End);
    }
    Ok(())
}

/// Why a task id cannot be used as a path component and a branch name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InvalidTaskId {
    #[error("it is empty")]
    Empty,
    #[error("it is {0} bytes long, more than {MAX_TASK_ID_LEN}")]
    TooLong(usize),
    #[error("it contains {0:?}; ids may only use ASCII letters, digits, `-`, `_` and `.`")]
    Character(char),
    #[error("it starts with `.` or `-`")]
    Start,
    #[error("it contains `..`")]
    DotDot,
    #[error("it ends with `.` or `.lock`, which git refuses in a branch name")]
    End,
}

/// Something in the tracker's data that cwo skips or treats specially: a line it cannot read, a
/// ball it will not run, a dependency that can never be met. `Display` is `path:line: message`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct TrackerProblem {
    pub path: PathBuf,
    /// 1-based line number in `path`.
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for TrackerProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    Medium,
    High,
    Urgent,
}

impl Priority {
    pub(crate) fn parse(s: &str) -> Option<Priority> {
        match s {
            "low" => Some(Priority::Low),
            "medium" => Some(Priority::Medium),
            "high" => Some(Priority::High),
            "urgent" => Some(Priority::Urgent),
            _ => None,
        }
    }
    pub(crate) fn as_str(self) -> &'static str {
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
    /// Dependencies on balls that are neither complete nor archived (an id no ball has counts as
    /// met, as in juggle).
    pub waiting_on: Vec<String>,
    /// The GitHub issue this task is (its pull request says `Closes #N`); None for other trackers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issue: Option<u64>,
    /// juggle's `model_override` (`opus`, `sonnet`, `haiku`, or a model id); "" for none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model_override: String,
    /// juggle's `model_size` (`small`, `medium`, `large`); "" for none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub model_size: String,
}

impl Task {
    pub(crate) fn is_ready(&self) -> bool {
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
    /// Another process (a `juggle` command, another cwo) held the tracker's lock too long.
    #[error(
        "another juggle process holds {path} (waited {}s); wait for it to finish, or stop it if it is stuck",
        waited.as_secs_f64().round()
    )]
    LockTimeout {
        path: String,
        waited: std::time::Duration,
    },
    /// Another controller claimed the task first (it is skipped, not an error of the run).
    #[error("{id} was claimed by {by} first")]
    Taken { id: String, by: String },
    /// The remote tracker (GitHub) could not be read or written.
    #[error("{0}")]
    Remote(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// What the loop needs from a task source.
pub trait Tracker: Send + Sync {
    /// Every active task, in file order.
    fn list(&self) -> Result<Vec<Task>, TrackerError>;
    /// What `list` skipped or cannot make ready, each with its place in the data.
    fn problems(&self) -> Result<Vec<TrackerProblem>, TrackerError> {
        Ok(vec![])
    }
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
    /// Takes the task for `worker`. `Err(Taken)`: another controller has it (the loop skips it).
    fn claim(&self, id: &str, worker: &str) -> Result<(), TrackerError>;
    fn complete(&self, id: &str, note: &str) -> Result<(), TrackerError>;
    fn block(&self, id: &str, reason: &str) -> Result<(), TrackerError>;
    /// Back to pending (an aborted attempt).
    fn release(&self, id: &str) -> Result<(), TrackerError>;
    /// A line in the progress log of every session the task belongs to (its tags), for trackers
    /// that keep one apart from the task (juggle); the others record the text with the move.
    fn progress(&self, task: &Task, text: &str) -> Result<(), TrackerError>;
    /// Whether a running task is still wanted (asked at each poll): a GitHub issue closed or
    /// unlabelled while its task runs is not, and its attempt is aborted. `Ok(true)` when the
    /// tracker cannot tell.
    fn wanted(&self, _id: &str) -> Result<bool, TrackerError> {
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every id `valid_task_id` accepts is one normal path component and a branch git takes.
    #[test]
    fn accepted_ids_are_single_path_components_and_valid_branch_names() {
        let longest = "x".repeat(MAX_TASK_ID_LEN);
        let too_long = "x".repeat(MAX_TASK_ID_LEN + 1);
        let candidates = [
            "proj-a1b2c3d4",
            "juggler-74",
            "123",
            "P_1.x",
            "a-",
            "_a",
            "a.b",
            "lock",
            "a.lock.b",
            &longest,
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a//b",
            "/a",
            ".a",
            "-a",
            "a..b",
            "a.",
            "a.lock",
            ".lock",
            "@",
            "a@{b",
            "a b",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[b",
            "a\\b",
            "a\tb",
            "a\u{7f}",
            "caf\u{e9}",
            "\u{feff}a",
            &too_long,
        ];
        let mut accepted = Vec::new();
        for id in candidates {
            if valid_task_id(id).is_err() {
                continue;
            }
            accepted.push(id);
            let components: Vec<_> = std::path::Path::new(id).components().collect();
            assert_eq!(
                components,
                [std::path::Component::Normal(id.as_ref())],
                "{id:?} is not one path component"
            );
            let git = std::process::Command::new("git")
                .args(["check-ref-format", &format!("refs/heads/cwo/{id}")])
                .status()
                .expect("git runs");
            assert!(git.success(), "git refuses the branch cwo/{id}");
        }
        assert_eq!(
            accepted,
            [
                "proj-a1b2c3d4",
                "juggler-74",
                "123",
                "P_1.x",
                "a-",
                "_a",
                "a.b",
                "lock",
                "a.lock.b",
                &longest,
            ]
        );
        assert_eq!(
            valid_task_id("../x").unwrap_err().to_string(),
            "it contains '/'; ids may only use ASCII letters, digits, `-`, `_` and `.`"
        );
    }
}
