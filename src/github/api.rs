//! The endpoints cwo calls, and the few fields it reads of each answer
//! (<https://docs.github.com/en/rest>). Unknown fields are ignored; the ones cwo needs are
//! required, the ones GitHub may leave out are `Option` or defaulted.

use chrono::{DateTime, Utc};
use http::Method;
use serde::Deserialize;
use serde_json::json;

use super::{Github, GithubError};

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct User {
    pub login: String,
    #[serde(default, rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Label {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Issue {
    pub number: u64,
    pub title: String,
    #[serde(default)]
    pub body: Option<String>,
    pub state: String,
    #[serde(default)]
    pub labels: Vec<Label>,
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub html_url: String,
    pub created_at: DateTime<Utc>,
    /// Who closed it (GET of one issue only).
    #[serde(default)]
    pub closed_by: Option<User>,
    /// Present when the "issue" is a pull request (the issues list returns both).
    #[serde(default)]
    pub pull_request: Option<serde_json::Value>,
}

impl Issue {
    pub fn has_label(&self, name: &str) -> bool {
        self.labels
            .iter()
            .any(|l| l.name.eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Comment {
    pub id: u64,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub html_url: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GitRef {
    #[serde(rename = "ref")]
    pub branch: String,
    pub sha: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PullRequest {
    pub number: u64,
    pub title: String,
    #[serde(default)]
    pub body: Option<String>,
    pub state: String,
    #[serde(default)]
    pub draft: bool,
    #[serde(default)]
    pub merged_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub merged_by: Option<User>,
    #[serde(default)]
    pub html_url: String,
    pub head: GitRef,
    pub base: GitRef,
}

impl PullRequest {
    pub fn merged(&self) -> bool {
        self.merged_at.is_some()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Review {
    pub id: u64,
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub body: Option<String>,
    pub state: String,
    #[serde(default)]
    pub submitted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReviewComment {
    pub id: u64,
    #[serde(default)]
    pub user: Option<User>,
    pub body: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub line: Option<u64>,
    #[serde(default)]
    pub original_line: Option<u64>,
    #[serde(default)]
    pub in_reply_to_id: Option<u64>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CheckOutput {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CheckRun {
    pub id: u64,
    pub name: String,
    pub status: String,
    #[serde(default)]
    pub conclusion: Option<String>,
    #[serde(default)]
    pub head_sha: String,
    #[serde(default)]
    pub details_url: Option<String>,
    #[serde(default)]
    pub output: Option<CheckOutput>,
}

#[derive(Debug, Clone, Deserialize)]
struct CheckRuns {
    check_runs: Vec<CheckRun>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CommitStatus {
    pub context: String,
    pub state: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub target_url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CombinedStatus {
    pub state: String,
    #[serde(default)]
    pub statuses: Vec<CommitStatus>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct Permissions {
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub push: bool,
    #[serde(default)]
    pub pull: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Repository {
    pub full_name: String,
    pub default_branch: String,
    #[serde(default)]
    pub permissions: Option<Permissions>,
}

/// What opening a pull request needs.
pub struct NewPull<'a> {
    pub title: &'a str,
    pub head: &'a str,
    pub base: &'a str,
    pub body: &'a str,
    pub draft: bool,
}

impl Github {
    fn repo_path(&self, rest: &str) -> String {
        format!("/repos/{}{rest}", self.repo())
    }

    /// The account the token acts as (`<app>[bot]` for a GitHub App), asked once.
    pub async fn own_login(&self) -> Result<String, GithubError> {
        let this = self.clone();
        self.inner
            .login
            .get_or_try_init(|| async move {
                if let super::Auth::App { app, .. } = &this.inner.credentials.auth {
                    let v = this.app_call(app, Method::GET, "/app").await?;
                    let slug = v["slug"].as_str().unwrap_or("app");
                    return Ok(format!("{slug}[bot]"));
                }
                let u: User = this.get("/user").await?;
                Ok(u.login)
            })
            .await
            .cloned()
    }

    pub async fn repository(&self) -> Result<Repository, GithubError> {
        self.get(&self.repo_path("")).await
    }

    /// Open issues (not pull requests) with `label`, oldest first.
    pub async fn labelled_issues(&self, label: &str) -> Result<Vec<Issue>, GithubError> {
        let path = self.repo_path(&format!(
            "/issues?state=open&labels={}&sort=created&direction=asc",
            encode(label)
        ));
        let all: Vec<Issue> = self.get_all(&path).await?;
        Ok(all
            .into_iter()
            .filter(|i| i.pull_request.is_none())
            .collect())
    }

    pub async fn issue(&self, n: u64) -> Result<Issue, GithubError> {
        self.get(&self.repo_path(&format!("/issues/{n}"))).await
    }

    pub async fn add_labels(&self, n: u64, labels: &[&str]) -> Result<(), GithubError> {
        let body = json!({ "labels": labels });
        let path = self.repo_path(&format!("/issues/{n}/labels"));
        self.write::<serde_json::Value>(Method::POST, &path, Some(&body), true)
            .await
            .map(drop)
    }

    /// Removes a label; one the issue does not have is no error.
    pub async fn remove_label(&self, n: u64, label: &str) -> Result<(), GithubError> {
        let path = self.repo_path(&format!("/issues/{n}/labels/{}", encode(label)));
        match self
            .write::<serde_json::Value>(Method::DELETE, &path, None, true)
            .await
        {
            Ok(_) | Err(GithubError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn comments(&self, n: u64) -> Result<Vec<Comment>, GithubError> {
        self.get_all(&self.repo_path(&format!("/issues/{n}/comments")))
            .await
    }

    pub async fn create_comment(&self, n: u64, body: &str) -> Result<Comment, GithubError> {
        let path = self.repo_path(&format!("/issues/{n}/comments"));
        self.write(Method::POST, &path, Some(&json!({ "body": body })), false)
            .await
    }

    pub async fn edit_comment(&self, id: u64, body: &str) -> Result<Comment, GithubError> {
        let path = self.repo_path(&format!("/issues/comments/{id}"));
        self.write(Method::PATCH, &path, Some(&json!({ "body": body })), true)
            .await
    }

    pub async fn delete_comment(&self, id: u64) -> Result<(), GithubError> {
        let path = self.repo_path(&format!("/issues/comments/{id}"));
        match self
            .write::<serde_json::Value>(Method::DELETE, &path, None, true)
            .await
        {
            Ok(_) | Err(GithubError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn labels(&self) -> Result<Vec<Label>, GithubError> {
        self.get_all(&self.repo_path("/labels")).await
    }

    /// Creates a label; `Ok(false)` when it exists already.
    pub async fn create_label(
        &self,
        name: &str,
        color: &str,
        description: &str,
    ) -> Result<bool, GithubError> {
        let body = json!({ "name": name, "color": color, "description": description });
        match self
            .write::<serde_json::Value>(Method::POST, &self.repo_path("/labels"), Some(&body), true)
            .await
        {
            Ok(_) => Ok(true),
            Err(GithubError::Validation { message, .. }) if message.contains("already_exists") => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn open_pulls(&self) -> Result<Vec<PullRequest>, GithubError> {
        self.get_all(&self.repo_path("/pulls?state=open")).await
    }

    pub async fn pull(&self, n: u64) -> Result<PullRequest, GithubError> {
        self.get(&self.repo_path(&format!("/pulls/{n}"))).await
    }

    /// Pull requests (any state) from `branch` of this repository, newest first.
    pub async fn pulls_from(&self, branch: &str) -> Result<Vec<PullRequest>, GithubError> {
        let path = self.repo_path(&format!(
            "/pulls?state=all&head={}:{}",
            encode(&self.repo().owner),
            encode(branch)
        ));
        let mut all: Vec<PullRequest> = self.get_all(&path).await?;
        all.sort_by_key(|p| std::cmp::Reverse(p.number));
        Ok(all)
    }

    pub async fn create_pull(&self, p: &NewPull<'_>) -> Result<PullRequest, GithubError> {
        let body = json!({
            "title": p.title, "head": p.head, "base": p.base, "body": p.body, "draft": p.draft,
        });
        // Idempotent by GitHub's own rule: a second PR for an open head is refused (422).
        self.write(Method::POST, &self.repo_path("/pulls"), Some(&body), false)
            .await
    }

    pub async fn update_pull(
        &self,
        n: u64,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, GithubError> {
        let path = self.repo_path(&format!("/pulls/{n}"));
        self.write(
            Method::PATCH,
            &path,
            Some(&json!({ "title": title, "body": body })),
            true,
        )
        .await
    }

    pub async fn reviews(&self, n: u64) -> Result<Vec<Review>, GithubError> {
        self.get_all(&self.repo_path(&format!("/pulls/{n}/reviews")))
            .await
    }

    pub async fn review_comments(&self, n: u64) -> Result<Vec<ReviewComment>, GithubError> {
        self.get_all(&self.repo_path(&format!("/pulls/{n}/comments")))
            .await
    }

    pub async fn reply_to_review_comment(
        &self,
        pr: u64,
        comment: u64,
        body: &str,
    ) -> Result<(), GithubError> {
        let path = self.repo_path(&format!("/pulls/{pr}/comments/{comment}/replies"));
        self.write::<serde_json::Value>(Method::POST, &path, Some(&json!({ "body": body })), false)
            .await
            .map(drop)
    }

    pub async fn check_runs(&self, sha: &str) -> Result<Vec<CheckRun>, GithubError> {
        let r: CheckRuns = self
            .get(&self.repo_path(&format!("/commits/{sha}/check-runs?per_page=100")))
            .await?;
        Ok(r.check_runs)
    }

    pub async fn combined_status(&self, sha: &str) -> Result<CombinedStatus, GithubError> {
        self.get(&self.repo_path(&format!("/commits/{sha}/status")))
            .await
    }
}

/// Percent-encodes a path or query component.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
