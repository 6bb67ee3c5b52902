//! Where finished work goes for review: a pull request per task, and the review comments and
//! failed checks that come back. Independent of the tracker: a juggle ball gets a pull request
//! too. `github.rs` is the one forge so far.

pub mod github;

use async_trait::async_trait;

use crate::github::GithubError;

/// A pull request to open, or to update when one is open for the branch.
#[derive(Debug, Clone)]
pub struct PullRequestDraft {
    pub branch: String,
    pub title: String,
    pub body: String,
    pub draft: bool,
}

/// An opened pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedPullRequest {
    pub number: u64,
    pub url: String,
    /// It existed already (its title and body were updated).
    pub updated: bool,
}

/// Where a pull request is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullRequestLife {
    Open { head_sha: String },
    Merged { by: String },
    Closed { by: String },
}

/// How far feedback was already acted on (ids only grow on GitHub).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub review: u64,
    pub comment: u64,
    pub issue_comment: u64,
    /// The head commit whose failed checks started a follow-up already.
    pub failed_sha: String,
}

/// One thing a reviewer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewNote {
    pub author: String,
    /// A line comment's file and line ("" and None for a review or a conversation comment).
    pub path: String,
    pub line: Option<u64>,
    pub body: String,
    /// The review comment to reply to once it is addressed (None: not a line comment).
    pub reply_to: Option<u64>,
}

/// A check run or commit status that failed on the head commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedCheck {
    pub name: String,
    pub conclusion: String,
    pub output: String,
    pub url: String,
}

/// A pull request's state at one poll: its life, what reviewers said since `Seen`, which
/// checks failed on its head, and the new watermarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestReport {
    pub life: PullRequestLife,
    pub notes: Vec<ReviewNote>,
    pub failed: Vec<FailedCheck>,
    pub seen: Seen,
    /// approved | changes_requested | commented | "" (no review).
    pub review_state: String,
    /// success | failure | pending | "" (no checks).
    pub check_state: String,
}

impl PullRequestReport {
    /// Something a follow-up attempt should address.
    pub fn has_feedback(&self) -> bool {
        !self.notes.is_empty() || !self.failed.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    #[error(transparent)]
    Github(#[from] GithubError),
    #[error("{0}")]
    Other(String),
}

impl ForgeError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ForgeError::Github(e) if e.is_transient())
    }
}

/// What the loop needs from a forge.
#[async_trait]
pub trait Forge: Send + Sync {
    /// Where pull requests are opened (`owner/name`), for messages.
    fn describe(&self) -> String;
    /// Opens the pull request for `draft.branch`, or updates the open one.
    async fn open_or_update(
        &self,
        draft: &PullRequestDraft,
    ) -> Result<OpenedPullRequest, ForgeError>;
    /// The pull request's state and the feedback since `seen`, from accounts other than cwo's.
    async fn report(&self, number: u64, seen: &Seen) -> Result<PullRequestReport, ForgeError>;
    /// Answers a review comment cwo addressed.
    async fn reply(&self, number: u64, comment: u64, text: &str) -> Result<(), ForgeError>;
    /// A comment on the pull request's conversation.
    async fn comment(&self, number: u64, text: &str) -> Result<(), ForgeError>;
    /// The token for a git push to this forge (kept out of every argv and file: git reads it
    /// from its environment through a credential helper).
    async fn push_token(&self) -> Result<String, ForgeError>;
}

/// What a pull request's description says about the work behind it.
pub struct Delivery<'a> {
    pub task: &'a crate::tracker::Task,
    /// The agent's own closing words (the last text it printed).
    pub summary: &'a str,
    pub attempts: u32,
    pub duration: std::time::Duration,
    /// The worker time's cost at its launch price (None: unknown).
    pub cost_usd: Option<f64>,
    /// What the agent reported using on the LLM over the task's attempts (None: an attempt
    /// reported nothing).
    pub(crate) llm: Option<crate::model::Usage>,
    pub feedback_rounds: u32,
    /// The repository's checks still fail (`verify.push_on_failure`): why, and their output.
    pub unverified: Option<&'a str>,
}

/// The pull request's title and description: the task, its acceptance criteria as a checklist,
/// the agent's summary, attempts, duration and cost, and `Closes #N` for a GitHub issue.
pub fn describe(d: &Delivery<'_>) -> (String, String) {
    let t = d.task;
    let mut body = String::new();
    if let Some(n) = t.issue {
        body.push_str(&format!("Closes #{n}\n\n"));
    }
    body.push_str(&format!("## Task `{}`: {}\n\n", t.id, t.title));
    if !t.context.trim().is_empty() && t.issue.is_none() {
        body.push_str(t.context.trim());
        body.push_str("\n\n");
    }
    if !t.acceptance_criteria.is_empty() {
        body.push_str("## Acceptance criteria\n\n");
        for c in &t.acceptance_criteria {
            body.push_str(&format!("- [ ] {c}\n"));
        }
        body.push('\n');
    }
    if let Some(why) = d.unverified {
        body.push_str("## ⚠ The repository's checks fail on this branch\n\n");
        body.push_str(
            "cwo pushed it as a draft because `verify.push_on_failure = true` in `.cwo/workflow.toml`; the task stays blocked.\n\n```\n",
        );
        body.push_str(why.trim());
        body.push_str("\n```\n\n");
    }
    body.push_str("## What the agent says\n\n");
    if d.summary.trim().is_empty() {
        body.push_str("(the agent printed no summary)\n\n");
    } else {
        for line in d.summary.trim().lines() {
            body.push_str(&format!("> {line}\n"));
        }
        body.push('\n');
    }
    let worker = match d.cost_usd {
        Some(c) => format!("${c:.4} of worker time at its launch price"),
        None => "unknown worker time (no price for the worker)".into(),
    };
    let llm = match d.llm.map(|u| (u, u.cost_usd())) {
        Some((u, Some(c))) => format!("${c:.4} of LLM ({} tokens)", u.tokens()),
        Some((u, None)) => format!("LLM unknown ({} tokens, some without a cost)", u.tokens()),
        None => "LLM unknown (the agent reported no usage)".into(),
    };
    let cost = format!("{worker} + {llm}");
    body.push_str(&format!(
        "---\n🤖 Opened by cwo: {} attempt(s), {} of agent time, cost {cost}{}.\n",
        d.attempts,
        humantime::format_duration(std::time::Duration::from_secs(d.duration.as_secs())),
        if d.feedback_rounds > 0 {
            format!(", {} feedback round(s)", d.feedback_rounds)
        } else {
            String::new()
        }
    ));
    (t.title.clone(), body)
}

/// The part of a follow-up attempt's prompt that carries the feedback: the reviewers' comments
/// (file, line, text) and the failed checks (name and output).
pub fn feedback_prompt(number: u64, notes: &[ReviewNote], failed: &[FailedCheck]) -> String {
    let mut out = format!(
        "\n\n## Feedback on pull request #{number}\n\nYour earlier work on this branch is under review. Address the feedback below with new commits on top of the branch (do not rewrite its history).\n"
    );
    if !notes.is_empty() {
        out.push_str("\n### Review comments\n");
        for n in notes {
            let place = match (n.path.as_str(), n.line) {
                ("", _) => String::new(),
                (p, Some(l)) => format!(" on `{p}` line {l}"),
                (p, None) => format!(" on `{p}`"),
            };
            out.push_str(&format!("\n- **{}**{place}:\n", n.author));
            for line in n.body.trim().lines() {
                out.push_str(&format!("  > {line}\n"));
            }
        }
    }
    if !failed.is_empty() {
        out.push_str("\n### Failed checks\n");
        for f in failed {
            out.push_str(&format!("\n- **{}** ({})", f.name, f.conclusion));
            if !f.url.is_empty() {
                out.push_str(&format!(" {}", f.url));
            }
            out.push('\n');
            // The end of a long output is where the error usually is.
            let text: String = {
                let t = f.output.trim();
                let skip = t.chars().count().saturating_sub(4000);
                t.chars().skip(skip).collect()
            };
            if !text.is_empty() {
                out.push_str("\n```\n");
                out.push_str(&text);
                out.push_str("\n```\n");
            }
        }
    }
    out
}
