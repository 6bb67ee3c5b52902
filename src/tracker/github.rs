//! Open GitHub issues with `github.label` as the task queue.
//!
//! - ready: open, labelled, not claimed by another controller, not delivered by an open cwo pull
//!   request, and every "depends on #N" / "blocked by #N" in its body closed;
//! - order: `priority:urgent|high|medium|low` labels, then oldest first;
//! - acceptance criteria: the task list items of the body, or the list under an "Acceptance
//!   criteria" heading;
//! - claim: the `cwo:in-progress` label plus one status comment that says which worker took it,
//!   edited in place afterwards (blocked, done, released), never a stream of comments. Two
//!   controllers racing for an issue both post their claim and read the comments again: the
//!   earliest claim wins and the other deletes its comment and backs off;
//! - done: `cwo:done` (the issue closes when the pull request merges, through `Closes #N`);
//! - blocked: `cwo:blocked` and the reason in the status comment.
//!
//! The reads are conditional GETs (the client's ETag cache), so an idle poll costs no rate limit.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use super::{Priority, Task, Tracker, TrackerError, valid_task_id};
use crate::github::{Comment, Github, GithubError, Issue};

pub(crate) const IN_PROGRESS: &str = "cwo:in-progress";
pub(crate) const BLOCKED: &str = "cwo:blocked";
pub(crate) const DONE: &str = "cwo:done";

/// A label the GitHub tracker reads or writes, as `cwo github init` creates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LabelSpec {
    pub(crate) name: String,
    /// Six hex digits, no `#` (as the API takes it).
    pub(crate) color: &'static str,
    pub(crate) description: &'static str,
}

/// Every label cwo uses with `queue` as `github.label`: the queue, the three states, the four
/// priorities.
pub(crate) fn labels(queue: &str) -> Vec<LabelSpec> {
    let spec = |name: &str, color, description| LabelSpec {
        name: name.to_string(),
        color,
        description,
    };
    vec![
        spec(
            queue,
            "1d76db",
            "Work for cwo: open issues with this label are its queue",
        ),
        spec(IN_PROGRESS, "fbca04", "cwo: a worker is on it"),
        spec(
            BLOCKED,
            "d93f0b",
            "cwo: blocked, the reason is in cwo's comment",
        ),
        spec(DONE, "0e8a16", "cwo: delivered as a pull request"),
        spec("priority:urgent", "b60205", "cwo takes these first"),
        spec("priority:high", "e99695", "cwo takes these before medium"),
        spec("priority:medium", "fef2c0", "cwo's default priority"),
        spec("priority:low", "c2e0c6", "cwo takes these last"),
    ]
}

/// What `cwo github init` did with one label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LabelAction {
    Created,
    Exists,
    /// `--dry-run`: it would be created.
    WouldCreate,
}

/// Creates the labels of [`labels`] that `gh`'s repository lacks (an existing label is left as
/// it is, whatever its colour); `dry_run` only says which.
pub(crate) async fn ensure_labels(
    gh: &Github,
    queue: &str,
    dry_run: bool,
) -> Result<Vec<(LabelSpec, LabelAction)>, GithubError> {
    let existing: HashSet<String> = gh
        .labels()
        .await?
        .into_iter()
        .map(|l| l.name.to_lowercase())
        .collect();
    let mut out = Vec::new();
    for spec in labels(queue) {
        // GitHub's label names are case-insensitive.
        let action = if existing.contains(&spec.name.to_lowercase()) {
            LabelAction::Exists
        } else if dry_run {
            LabelAction::WouldCreate
        } else if gh
            .create_label(&spec.name, spec.color, spec.description)
            .await?
        {
            LabelAction::Created
        } else {
            LabelAction::Exists
        };
        out.push((spec, action));
    }
    Ok(out)
}

/// The hidden marker that makes a comment cwo's status comment for one controller.
const MARKER: &str = "<!-- cwo:status";

pub struct GithubTracker {
    gh: Github,
    label: String,
    /// Task branches are `<branch_prefix><issue number>`: an open pull request from one means
    /// the issue is delivered.
    branch_prefix: String,
    /// This controller's id in its status comments (stable across restarts of the same
    /// controller, so a restarted one resumes its own claims).
    controller: String,
    /// Our status comment per issue, once known.
    comments: Arc<Mutex<HashMap<u64, u64>>>,
}

/// What a status comment says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Status {
    controller: String,
    state: String,
    worker: String,
}

impl Status {
    fn parse(body: &str) -> Option<Status> {
        let start = body.find(MARKER)?;
        let rest = &body[start + MARKER.len()..];
        let end = rest.find("-->")?;
        let mut s = Status {
            controller: String::new(),
            state: String::new(),
            worker: String::new(),
        };
        for kv in rest[..end].split_whitespace() {
            match kv.split_once('=') {
                Some(("controller", v)) => s.controller = v.into(),
                Some(("state", v)) => s.state = v.into(),
                Some(("worker", v)) => s.worker = v.into(),
                _ => {}
            }
        }
        Some(s)
    }
}

fn status_body(controller: &str, state: &str, worker: &str, text: &str) -> String {
    format!("{MARKER} controller={controller} state={state} worker={worker} -->\n{text}")
}

impl GithubTracker {
    pub fn new(
        gh: Github,
        label: String,
        branch_prefix: String,
        controller: String,
    ) -> GithubTracker {
        GithubTracker {
            gh,
            label,
            branch_prefix,
            controller,
            comments: Arc::default(),
        }
    }

    /// The issue number of task `id`: an id no task could have is `Invalid`, one that is not an
    /// issue number `NotFound`.
    fn number(id: &str) -> Result<u64, TrackerError> {
        valid_task_id(id).map_err(|why| {
            TrackerError::Invalid(format!("task id {id:?} cannot be used: {why}"))
        })?;
        id.parse().map_err(|_| {
            TrackerError::NotFound(format!("{id} (GitHub task ids are issue numbers)"))
        })
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T, GithubError>> + Send + 'static,
    ) -> Result<T, TrackerError> {
        self.gh.block_on(f).map_err(remote)
    }

    /// Writes our status comment on issue `n` (edited in place when we have one).
    async fn write_status(
        gh: &Github,
        comments: &Mutex<HashMap<u64, u64>>,
        controller: &str,
        n: u64,
        state: &str,
        worker: &str,
        text: &str,
    ) -> Result<u64, GithubError> {
        let body = status_body(controller, state, worker, text);
        let known = comments.lock().unwrap().get(&n).copied();
        let id = match known {
            Some(id) => Some(id),
            None => own_comment(&gh.comments(n).await?, controller).map(|c| c.id),
        };
        let id = match id {
            Some(id) => match gh.edit_comment(id, &body).await {
                Ok(c) => c.id,
                // Deleted by someone: write a new one.
                Err(GithubError::NotFound { .. }) => gh.create_comment(n, &body).await?.id,
                Err(e) => return Err(e),
            },
            None => gh.create_comment(n, &body).await?.id,
        };
        comments.lock().unwrap().insert(n, id);
        Ok(id)
    }

    /// Sets the state labels of issue `n`: `add` on, the other state labels off.
    async fn set_state_label(gh: &Github, n: u64, add: Option<&str>) -> Result<(), GithubError> {
        if let Some(l) = add {
            gh.add_labels(n, &[l]).await?;
        }
        for l in [IN_PROGRESS, BLOCKED, DONE] {
            if Some(l) != add {
                gh.remove_label(n, l).await?;
            }
        }
        Ok(())
    }

    fn transition(
        &self,
        id: &str,
        label: Option<&'static str>,
        state: &'static str,
        text: String,
    ) -> Result<(), TrackerError> {
        let n = Self::number(id)?;
        let (gh, comments, controller) = (
            self.gh.clone(),
            self.comments.clone(),
            self.controller.clone(),
        );
        self.run(async move {
            // The comment first: once the label says so, the comment says why.
            Self::write_status(&gh, &comments, &controller, n, state, "-", &text).await?;
            Self::set_state_label(&gh, n, label).await?;
            Ok(())
        })
    }
}

/// Our status comment among an issue's comments.
fn own_comment<'a>(comments: &'a [Comment], controller: &str) -> Option<&'a Comment> {
    comments.iter().find(|c| {
        c.body
            .as_deref()
            .and_then(Status::parse)
            .is_some_and(|s| s.controller == controller)
    })
}

/// The active claims on an issue, earliest first: (comment id, status).
fn claims(comments: &[Comment]) -> Vec<(u64, Status)> {
    let mut out: Vec<(u64, Status)> = comments
        .iter()
        .filter_map(|c| Some((c.id, Status::parse(c.body.as_deref()?)?)))
        .filter(|(_, s)| s.state == "claimed")
        .collect();
    out.sort_by_key(|(id, _)| *id);
    out
}

/// A missing issue is a task that does not exist; every other failure is GitHub's.
fn remote(e: GithubError) -> TrackerError {
    match e {
        GithubError::NotFound { .. } => TrackerError::NotFound(e.to_string()),
        e => TrackerError::Remote(Box::new(e)),
    }
}

/// The reason in the newest blocked status comment (quoted in it by `block`).
fn blocked_reason(comments: &[Comment]) -> String {
    comments
        .iter()
        .filter_map(|c| Some((c.id, Status::parse(c.body.as_deref()?)?, c.body.as_deref()?)))
        .filter(|(_, s, _)| s.state == "blocked")
        .max_by_key(|(id, _, _)| *id)
        .map(|(_, _, body)| {
            body.lines()
                .filter_map(|l| l.strip_prefix("> ").or_else(|| (l == ">").then_some("")))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// `#N` references after "depends on" / "blocked by" in the body, in order, without repeats.
pub(crate) fn dependencies(body: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for line in body.lines() {
        let lower = line.to_ascii_lowercase();
        let Some(at) = ["depends on", "blocked by"]
            .iter()
            .filter_map(|k| lower.find(k))
            .min()
        else {
            continue;
        };
        let rest = &line[at..];
        for (i, c) in rest.char_indices() {
            if c != '#' {
                continue;
            }
            let digits: String = rest[i + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(n) = digits.parse::<u64>()
                && !out.contains(&n)
            {
                out.push(n);
            }
        }
    }
    out
}

/// The acceptance criteria of an issue body: the items under an "Acceptance criteria" heading
/// (a Markdown heading or a line of its own, bold or not) up to the next heading, else every
/// task list item (`- [ ] …`) of the body.
pub(crate) fn acceptance_criteria(body: &str) -> Vec<String> {
    let item = |line: &str| -> Option<String> {
        let t = line.trim_start();
        let t = t
            .strip_prefix("- ")
            .or_else(|| t.strip_prefix("* "))
            .or_else(|| t.strip_prefix("+ "))?;
        let t = t
            .strip_prefix("[ ] ")
            .or_else(|| t.strip_prefix("[x] "))
            .or_else(|| t.strip_prefix("[X] "))
            .unwrap_or(t);
        let t = t.trim();
        (!t.is_empty()).then(|| t.to_string())
    };
    let is_heading = |line: &str| {
        let t = line.trim();
        t.starts_with('#') || (t.starts_with("**") && t.ends_with("**") && t.len() > 4)
    };
    let mut section = Vec::new();
    let mut inside = false;
    for line in body.lines() {
        let norm = line
            .trim()
            .trim_start_matches('#')
            .trim_matches('*')
            .trim()
            .trim_end_matches(':')
            .to_ascii_lowercase();
        if norm == "acceptance criteria" {
            inside = true;
            continue;
        }
        if inside {
            if is_heading(line) {
                break;
            }
            if let Some(i) = item(line) {
                section.push(i);
            }
        }
    }
    if !section.is_empty() {
        return section;
    }
    body.lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("- [") || t.starts_with("* [")
        })
        .filter_map(item)
        .collect()
}

fn priority(issue: &Issue) -> Priority {
    issue
        .labels
        .iter()
        .filter_map(|l| l.name.strip_prefix("priority:").and_then(Priority::parse))
        .max()
        .unwrap_or(Priority::Medium)
}

impl Tracker for GithubTracker {
    fn list(&self) -> Result<Vec<Task>, TrackerError> {
        let (gh, label, prefix, controller) = (
            self.gh.clone(),
            self.label.clone(),
            self.branch_prefix.clone(),
            self.controller.clone(),
        );
        self.run(async move {
            let issues = gh.labelled_issues(&label).await?;
            let open_numbers: HashSet<u64> = issues.iter().map(|i| i.number).collect();
            let delivered: HashSet<u64> = gh
                .open_pulls()
                .await?
                .iter()
                .filter_map(|p| p.head.branch.strip_prefix(&prefix)?.parse().ok())
                .collect();
            let mut closed_cache: HashMap<u64, bool> = HashMap::new();
            let mut tasks = Vec::new();
            for issue in issues {
                let body = issue.body.clone().unwrap_or_default();
                let deps = dependencies(&body);
                let mut waiting_on = Vec::new();
                for d in &deps {
                    let open = if open_numbers.contains(d) {
                        true
                    } else if let Some(o) = closed_cache.get(d) {
                        *o
                    } else {
                        let o = match gh.issue(*d).await {
                            Ok(i) => i.state == "open",
                            // An issue that does not exist cannot block (as juggle's unknown ids).
                            Err(GithubError::NotFound { .. }) => false,
                            Err(e) => return Err(e),
                        };
                        closed_cache.insert(*d, o);
                        o
                    };
                    if open {
                        waiting_on.push(d.to_string());
                    }
                }
                let mut reason = String::new();
                let state = if issue.has_label(DONE) || delivered.contains(&issue.number) {
                    "complete".to_string()
                } else if issue.has_label(BLOCKED) {
                    // One more conditional GET per blocked issue: free while nothing changes.
                    reason = blocked_reason(&gh.comments(issue.number).await?);
                    "blocked".to_string()
                } else if issue.has_label(IN_PROGRESS) {
                    // Ours (a restarted controller resumes it) or another controller's.
                    let comments = gh.comments(issue.number).await?;
                    match claims(&comments).first() {
                        Some((_, s)) if s.controller == controller => "in_progress".into(),
                        Some(_) => "claimed".into(),
                        // Labelled by hand, or a claim that was released: free.
                        None => "pending".into(),
                    }
                } else {
                    "pending".to_string()
                };
                tasks.push(Task {
                    id: issue.number.to_string(),
                    title: issue.title.clone(),
                    acceptance_criteria: acceptance_criteria(&body),
                    context: body,
                    priority: priority(&issue),
                    state,
                    blocked_reason: reason,
                    depends_on: deps.iter().map(u64::to_string).collect(),
                    tags: issue.labels.iter().map(|l| l.name.clone()).collect(),
                    waiting_on,
                    issue: Some(issue.number),
                    model_override: String::new(),
                    model_size: String::new(),
                });
            }
            Ok(tasks)
        })
    }

    fn claim(&self, id: &str, worker: &str) -> Result<(), TrackerError> {
        let n = Self::number(id)?;
        let (gh, comments, controller, worker) = (
            self.gh.clone(),
            self.comments.clone(),
            self.controller.clone(),
            worker.to_string(),
        );
        let taken = self.run(async move {
            let issue = gh.issue(n).await?;
            if issue.state != "open" {
                return Ok(Some("closed".to_string()));
            }
            // Someone else holds it already: back off before writing anything.
            if let Some((_, s)) = claims(&gh.comments(n).await?).first()
                && s.controller != controller
            {
                return Ok(Some(format!(
                    "worker {} of controller {}",
                    s.worker, s.controller
                )));
            }
            gh.add_labels(n, &[IN_PROGRESS]).await?;
            gh.remove_label(n, BLOCKED).await?;
            let text = format!(
                "🤖 **cwo**: worker `{worker}` took this issue at {} UTC.",
                chrono::Utc::now().format("%Y-%m-%d %H:%M:%S")
            );
            let mine =
                Self::write_status(&gh, &comments, &controller, n, "claimed", &worker, &text)
                    .await?;
            // Read again: the earliest claim wins; the loser deletes its comment and backs off.
            let after = gh.comments(n).await?;
            match claims(&after).first() {
                Some((id, s)) if *id != mine && s.controller != controller => {
                    gh.delete_comment(mine).await?;
                    comments.lock().unwrap().remove(&n);
                    Ok(Some(format!(
                        "worker {} of controller {}",
                        s.worker, s.controller
                    )))
                }
                _ => Ok(None),
            }
        })?;
        match taken {
            Some(by) => Err(TrackerError::Taken {
                id: id.to_string(),
                by,
            }),
            None => Ok(()),
        }
    }

    fn complete(&self, id: &str, note: &str) -> Result<(), TrackerError> {
        self.transition(id, Some(DONE), "done", format!("🤖 **cwo**: done. {note}"))
    }

    fn block(&self, id: &str, reason: &str) -> Result<(), TrackerError> {
        self.transition(
            id,
            Some(BLOCKED),
            "blocked",
            format!(
                "🤖 **cwo**: blocked, this needs a human.\n\n> {}",
                reason.replace('\n', "\n> ")
            ),
        )
    }

    fn release(&self, id: &str) -> Result<(), TrackerError> {
        self.transition(
            id,
            None,
            "released",
            "🤖 **cwo**: stopped; the issue is back in the queue.".into(),
        )
    }

    /// The status comment already says every transition; nothing more is written (no stream of
    /// comments).
    fn progress(&self, _task: &Task, _text: &str) -> Result<(), TrackerError> {
        Ok(())
    }

    fn wanted(&self, id: &str) -> Result<bool, TrackerError> {
        let n = Self::number(id)?;
        let (gh, label) = (self.gh.clone(), self.label.clone());
        self.run(async move {
            match gh.issue(n).await {
                Ok(i) => Ok(i.state == "open" && i.has_label(&label)),
                Err(GithubError::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_read_from_depends_on_and_blocked_by_lines() {
        let body = "Do it.\n\nDepends on #12 and #7.\nSee #99 for context.\nBlocked by: #12, #40\n";
        assert_eq!(dependencies(body), [12, 7, 40]);
        assert!(dependencies("mentions #5 only").is_empty());
    }

    #[test]
    fn acceptance_criteria_come_from_their_section_or_the_task_list() {
        let body = "Goal.\n\n## Acceptance criteria\n- it builds\n- [ ] tests pass\n\n## Notes\n- not a criterion\n";
        assert_eq!(acceptance_criteria(body), ["it builds", "tests pass"]);
        let body = "**Acceptance criteria:**\n* one\n* two\n";
        assert_eq!(acceptance_criteria(body), ["one", "two"]);
        let body = "Steps\n- [ ] first\n- [x] second\n- plain item\n";
        assert_eq!(acceptance_criteria(body), ["first", "second"]);
        assert!(acceptance_criteria("nothing here").is_empty());
    }

    #[test]
    fn status_comments_round_trip() {
        let b = status_body("c1", "claimed", "w-1", "text");
        assert_eq!(
            Status::parse(&b),
            Some(Status {
                controller: "c1".into(),
                state: "claimed".into(),
                worker: "w-1".into()
            })
        );
        assert_eq!(Status::parse("a comment"), None);
    }
}
