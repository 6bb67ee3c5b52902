//! Pull requests on GitHub: one per task branch, opened or updated; feedback read from reviews,
//! review comments, conversation comments, check runs and commit statuses on the head commit.

use async_trait::async_trait;
use tokio::sync::OnceCell;

use super::{
    FailedCheck, Forge, ForgeError, OpenedPullRequest, PullRequestDraft, PullRequestLife,
    PullRequestReport, ReviewNote, Seen,
};
use crate::github::{Github, GithubError, NewPull};

/// Check conclusions that count as failed
/// (<https://docs.github.com/en/rest/checks/runs#get-a-check-run>).
const FAILED: &[&str] = &[
    "failure",
    "timed_out",
    "cancelled",
    "action_required",
    "startup_failure",
];

pub struct GithubForge {
    gh: Github,
    default_branch: OnceCell<String>,
}

impl GithubForge {
    pub fn new(gh: Github) -> GithubForge {
        GithubForge {
            gh,
            default_branch: OnceCell::new(),
        }
    }

    async fn base(&self) -> Result<String, GithubError> {
        let gh = self.gh.clone();
        self.default_branch
            .get_or_try_init(|| async move {
                let g = gh.clone();
                gh.run(async move { g.repository().await.map(|r| r.default_branch) })
                    .await
            })
            .await
            .cloned()
    }
}

/// Is this comment one of cwo's own status comments (never feedback)?
fn is_cwo_status(body: &str) -> bool {
    body.contains("<!-- cwo:status")
}

#[async_trait]
impl Forge for GithubForge {
    fn describe(&self) -> String {
        self.gh.repo().to_string()
    }

    async fn open_or_update(&self, d: &PullRequestDraft) -> Result<OpenedPullRequest, ForgeError> {
        let base = self.base().await?;
        let (gh, d) = (self.gh.clone(), d.clone());
        let opened = self
            .gh
            .run(async move {
                let find = |pulls: Vec<crate::github::PullRequest>| {
                    pulls.into_iter().find(|p| p.state == "open")
                };
                if let Some(p) = find(gh.pulls_from(&d.branch).await?) {
                    let p = gh.update_pull(p.number, &d.title, &d.body).await?;
                    return Ok(OpenedPullRequest {
                        number: p.number,
                        url: p.html_url,
                        updated: true,
                    });
                }
                let new = NewPull {
                    title: &d.title,
                    head: &d.branch,
                    base: &base,
                    body: &d.body,
                    draft: d.draft,
                };
                match gh.create_pull(&new).await {
                    Ok(p) => Ok(OpenedPullRequest {
                        number: p.number,
                        url: p.html_url,
                        updated: false,
                    }),
                    // Opened by a run that was killed before it could record it: update that one.
                    Err(GithubError::Validation { message, .. })
                        if message.contains("already exists") =>
                    {
                        match find(gh.pulls_from(&d.branch).await?) {
                            Some(p) => {
                                let p = gh.update_pull(p.number, &d.title, &d.body).await?;
                                Ok(OpenedPullRequest {
                                    number: p.number,
                                    url: p.html_url,
                                    updated: true,
                                })
                            }
                            None => Err(GithubError::Validation {
                                method: "POST".into(),
                                path: "/pulls".into(),
                                message,
                            }),
                        }
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(opened)
    }

    async fn report(&self, number: u64, seen: &Seen) -> Result<PullRequestReport, ForgeError> {
        let (gh, seen) = (self.gh.clone(), seen.clone());
        let report = self
            .gh
            .run(async move {
                let own = gh.own_login().await?;
                let pr = gh.pull(number).await?;
                let mut report = PullRequestReport {
                    life: PullRequestLife::Open {
                        head_sha: pr.head.sha.clone(),
                    },
                    notes: vec![],
                    failed: vec![],
                    seen: seen.clone(),
                    review_state: String::new(),
                    check_state: String::new(),
                };
                if pr.merged() {
                    let by = pr
                        .merged_by
                        .map(|u| u.login)
                        .unwrap_or_else(|| "someone".into());
                    report.life = PullRequestLife::Merged { by };
                    return Ok::<_, GithubError>(report);
                }
                if pr.state != "open" {
                    let issue = gh.issue(number).await?;
                    let by = issue
                        .closed_by
                        .map(|u| u.login)
                        .unwrap_or_else(|| "someone".into());
                    report.life = PullRequestLife::Closed { by };
                    return Ok(report);
                }
                let others =
                    |u: &Option<crate::github::User>| u.as_ref().is_some_and(|u| u.login != own);
                let mut reviews = gh.reviews(number).await?;
                reviews.sort_by_key(|r| r.id);
                if let Some(last) = reviews
                    .iter()
                    .rev()
                    .find(|r| others(&r.user) && r.state != "PENDING")
                {
                    report.review_state = last.state.to_ascii_lowercase();
                }
                for r in &reviews {
                    report.seen.review = report.seen.review.max(r.id);
                    let body = r.body.clone().unwrap_or_default();
                    if r.id <= seen.review || !others(&r.user) || r.state == "APPROVED" {
                        continue;
                    }
                    if body.trim().is_empty() && r.state != "CHANGES_REQUESTED" {
                        continue;
                    }
                    report.notes.push(ReviewNote {
                        author: r.user.as_ref().map(|u| u.login.clone()).unwrap_or_default(),
                        path: String::new(),
                        line: None,
                        body: if body.trim().is_empty() {
                            "(changes requested; see the line comments)".into()
                        } else {
                            body
                        },
                        reply_to: None,
                    });
                }
                let mut comments = gh.review_comments(number).await?;
                comments.sort_by_key(|c| c.id);
                for c in &comments {
                    report.seen.comment = report.seen.comment.max(c.id);
                    if c.id <= seen.comment || !others(&c.user) {
                        continue;
                    }
                    report.notes.push(ReviewNote {
                        author: c.user.as_ref().map(|u| u.login.clone()).unwrap_or_default(),
                        path: c.path.clone(),
                        line: c.line.or(c.original_line),
                        body: c.body.clone(),
                        reply_to: Some(c.in_reply_to_id.unwrap_or(c.id)),
                    });
                }
                let mut talk = gh.comments(number).await?;
                talk.sort_by_key(|c| c.id);
                for c in &talk {
                    report.seen.issue_comment = report.seen.issue_comment.max(c.id);
                    let body = c.body.clone().unwrap_or_default();
                    if c.id <= seen.issue_comment || !others(&c.user) || is_cwo_status(&body) {
                        continue;
                    }
                    report.notes.push(ReviewNote {
                        author: c.user.as_ref().map(|u| u.login.clone()).unwrap_or_default(),
                        path: String::new(),
                        line: None,
                        body,
                        reply_to: None,
                    });
                }
                let head = pr.head.sha.clone();
                let runs = gh.check_runs(&head).await?;
                let status = gh.combined_status(&head).await?;
                let mut failed = Vec::new();
                let mut pending = false;
                for r in &runs {
                    match (r.status.as_str(), r.conclusion.as_deref()) {
                        ("completed", Some(c)) if FAILED.contains(&c) => {
                            let out = r.output.as_ref();
                            let text = [
                                out.and_then(|o| o.title.clone()),
                                out.and_then(|o| o.summary.clone()),
                                out.and_then(|o| o.text.clone()),
                            ]
                            .into_iter()
                            .flatten()
                            .filter(|s| !s.trim().is_empty())
                            .collect::<Vec<_>>()
                            .join("\n\n");
                            failed.push(FailedCheck {
                                name: r.name.clone(),
                                conclusion: c.to_string(),
                                output: text,
                                url: r.details_url.clone().unwrap_or_default(),
                            });
                        }
                        ("completed", _) => {}
                        _ => pending = true,
                    }
                }
                for s in &status.statuses {
                    match s.state.as_str() {
                        "failure" | "error" => failed.push(FailedCheck {
                            name: s.context.clone(),
                            conclusion: s.state.clone(),
                            output: s.description.clone().unwrap_or_default(),
                            url: s.target_url.clone().unwrap_or_default(),
                        }),
                        "pending" => pending = true,
                        _ => {}
                    }
                }
                report.check_state = if !failed.is_empty() {
                    "failure"
                } else if pending {
                    "pending"
                } else if runs.is_empty() && status.statuses.is_empty() {
                    ""
                } else {
                    "success"
                }
                .to_string();
                if !failed.is_empty() && head != seen.failed_sha {
                    report.failed = failed;
                    report.seen.failed_sha = head;
                }
                Ok(report)
            })
            .await?;
        Ok(report)
    }

    async fn reply(&self, number: u64, comment: u64, text: &str) -> Result<(), ForgeError> {
        let (gh, text) = (self.gh.clone(), text.to_string());
        self.gh
            .run(async move { gh.reply_to_review_comment(number, comment, &text).await })
            .await?;
        Ok(())
    }

    async fn comment(&self, number: u64, text: &str) -> Result<(), ForgeError> {
        let (gh, text) = (self.gh.clone(), text.to_string());
        self.gh
            .run(async move { gh.create_comment(number, &text).await.map(drop) })
            .await?;
        Ok(())
    }

    async fn push_token(&self) -> Result<String, ForgeError> {
        let gh = self.gh.clone();
        Ok(self.gh.run(async move { gh.git_token().await }).await?)
    }
}
