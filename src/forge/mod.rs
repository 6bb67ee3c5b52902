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
