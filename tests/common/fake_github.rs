//! A fake of GitHub (REST v3 in the GitHub Enterprise Server layout, `/api/v3`, plus git smart
//! HTTP through the real `git http-backend`) for cwo's GitHub integration, with fault injection.
//! It speaks the JSON shapes of the real API (field names as GitHub spells them, complete enough
//! for octocrab's typed models) on 127.0.0.1 and records every request.
//!
//! It models GitHub's awkward parts on purpose: pull requests share the number space with issues
//! and appear in the issues list with a `pull_request` key; the pull request list leaves out
//! `merged`; check runs are filtered to the latest per name; the combined status keeps the latest
//! status per context; a merge with the default `merge_method` always makes a merge commit;
//! conditional requests answered 304 cost no rate-limit point; timestamps have second precision.
//!
//! The test side plays the humans and CI through plain methods (`add_issue`, `add_review`,
//! `add_check_run`, `merge_pr`, ...). Those act on the first repository `create_repo` made.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// The login the test-side helpers use for "a human" when none is given (issue authors).
pub const HUMAN: &str = "octocat";

/// Ids increase globally, across every resource kind (as GitHub's database ids do).
static NEXT_ID: AtomicU64 = AtomicU64::new(1000);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::SeqCst)
}

/// One API request as the fake saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Req {
    pub method: String,
    pub path_and_query: String,
    pub status: u16,
    /// It carried `If-None-Match` (a conditional request).
    pub conditional: bool,
    /// It carried a token the fake knows.
    pub authorized: bool,
}

/// One git smart-HTTP request.
#[derive(Debug, Clone, PartialEq)]
pub struct GitReq {
    pub method: String,
    pub path_and_query: String,
    pub status: u16,
    pub authorized: bool,
    /// The login of the token used, when it was known.
    pub user: Option<String>,
}

/// A push the bare repository refused: a non-fast-forward update or a deletion.
#[derive(Debug, Clone, PartialEq)]
pub struct ForcedPush {
    pub refname: String,
    /// git's reason ("non-fast-forward", "deletion prohibited").
    pub reason: String,
    pub user: Option<String>,
}

struct Token {
    login: String,
    push: bool,
    /// Installation tokens expire.
    expires: Option<DateTime<Utc>>,
    installation: bool,
}

struct Label {
    id: u64,
    name: String,
    color: String,
    description: Option<String>,
    default: bool,
}

struct Pr {
    id: u64,
    head: String,
    head_owner: String,
    base: String,
    draft: bool,
    /// The head's sha when the PR was made (used once the branch is gone).
    head_sha_at_open: String,
    merged_at: Option<DateTime<Utc>>,
    merged_by: Option<String>,
    merge_commit_sha: Option<String>,
}

struct Issue {
    id: u64,
    number: u64,
    title: String,
    body: Option<String>,
    state: String,
    state_reason: Option<String>,
    labels: Vec<String>,
    user: String,
    created: DateTime<Utc>,
    updated: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
    closed_by: Option<String>,
    pr: Option<Pr>,
}

struct IssueComment {
    id: u64,
    issue: u64,
    user: String,
    body: String,
    created: DateTime<Utc>,
    updated: DateTime<Utc>,
}

struct Review {
    id: u64,
    pr: u64,
    user: String,
    state: String,
    body: String,
    submitted: DateTime<Utc>,
    commit: String,
}

struct ReviewComment {
    id: u64,
    pr: u64,
    review: u64,
    user: String,
    body: String,
    path: String,
    line: u64,
    commit: String,
    in_reply_to: Option<u64>,
    created: DateTime<Utc>,
    updated: DateTime<Utc>,
}

struct CheckRun {
    id: u64,
    sha: String,
    name: String,
    conclusion: Option<String>,
    started: DateTime<Utc>,
    completed: Option<DateTime<Utc>>,
    text: String,
}

struct CommitStatus {
    id: u64,
    sha: String,
    context: String,
    state: String,
    description: String,
    creator: String,
    created: DateTime<Utc>,
}

struct Repo {
    id: u64,
    owner: String,
    name: String,
    path: PathBuf,
    labels: Vec<Label>,
    issues: BTreeMap<u64, Issue>,
    comments: Vec<IssueComment>,
    reviews: Vec<Review>,
    review_comments: Vec<ReviewComment>,
    check_runs: Vec<CheckRun>,
    statuses: Vec<CommitStatus>,
}

struct App {
    app_id: String,
    installation_id: u64,
    slug: String,
    token_ttl: Duration,
}

struct State {
    root: PathBuf,
    tokens: HashMap<String, Token>,
    scopes: String,
    repos: BTreeMap<String, Repo>,
    /// Key of the repository the test-side helpers act on (the first one made).
    main_repo: Option<String>,
    limit: u64,
    used: u64,
    reset_in: Duration,
    reset_at: DateTime<Utc>,
    /// Points counted since the start (or `reset_requests`), across windows.
    points: u64,
    secondary: Option<u64>,
    faults: VecDeque<(String, u16)>,
    requests: Vec<Req>,
    git_requests: Vec<GitReq>,
    forced: Vec<ForcedPush>,
    app: Option<App>,
}

struct Urls {
    /// http://127.0.0.1:PORT/api/v3
    api: String,
    /// http://127.0.0.1:PORT
    web: String,
}

/// A fake GitHub on 127.0.0.1. Dropping it stops the server and removes its repositories.
pub struct FakeGithub {
    urls: Arc<Urls>,
    state: Arc<Mutex<State>>,
    server: Arc<tiny_http::Server>,
    dir: tempfile::TempDir,
}

/// Second precision, as GitHub's timestamps.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap()
}

fn ts(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn ts_opt(t: &Option<DateTime<Utc>>) -> Value {
    t.as_ref().map(|t| json!(ts(t))).unwrap_or(Value::Null)
}

/// A stable numeric id for a login (GitHub user ids are plain integers).
fn user_id(login: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    login.hash(&mut h);
    1_000_000 + h.finish() % 9_000_000
}

fn hash_hex(data: &[u8]) -> String {
    let mut a = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut a);
    let mut b = std::collections::hash_map::DefaultHasher::new();
    (data, 0x5eedu32).hash(&mut b);
    format!("{:016x}{:016x}", a.finish(), b.finish())
}

fn git_env(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_COMMITTER_NAME", "GitHub")
        .env("GIT_COMMITTER_EMAIL", "noreply@github.com")
}

/// Runs git in `dir`; Err carries what failed.
fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    git_as(dir, args, "GitHub")
}

fn git_as(dir: &Path, args: &[&str], author: &str) -> Result<String, String> {
    let out = git_env(Command::new("git").arg("-C").arg(dir).args(args))
        .env("GIT_AUTHOR_NAME", author)
        .env(
            "GIT_AUTHOR_EMAIL",
            format!("{author}@users.noreply.github.com"),
        )
        .output()
        .map_err(|e| format!("running git {args:?} in {}: {e}", dir.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "git {args:?} in {} failed: {}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

fn is_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn author(u: &Urls, login: &str) -> Value {
    let id = user_id(login);
    let (api, web) = (&u.api, &u.web);
    let kind = if login.ends_with("[bot]") {
        "Bot"
    } else {
        "User"
    };
    json!({
        "login": login, "id": id, "node_id": format!("U_kgDO{id}"),
        "avatar_url": format!("{web}/avatars/u/{id}"), "gravatar_id": "",
        "url": format!("{api}/users/{login}"), "html_url": format!("{web}/{login}"),
        "followers_url": format!("{api}/users/{login}/followers"),
        "following_url": format!("{api}/users/{login}/following{{/other_user}}"),
        "gists_url": format!("{api}/users/{login}/gists{{/gist_id}}"),
        "starred_url": format!("{api}/users/{login}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{api}/users/{login}/subscriptions"),
        "organizations_url": format!("{api}/users/{login}/orgs"),
        "repos_url": format!("{api}/users/{login}/repos"),
        "events_url": format!("{api}/users/{login}/events{{/privacy}}"),
        "received_events_url": format!("{api}/users/{login}/received_events"),
        "type": kind, "site_admin": false,
    })
}

fn author_opt(u: &Urls, login: &Option<String>) -> Value {
    login.as_ref().map(|l| author(u, l)).unwrap_or(Value::Null)
}

impl Repo {
    fn full(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    fn api(&self, u: &Urls) -> String {
        format!("{}/repos/{}/{}", u.api, self.owner, self.name)
    }

    fn web(&self, u: &Urls) -> String {
        format!("{}/{}/{}", u.web, self.owner, self.name)
    }

    /// The sha a branch points at, or None.
    fn branch_sha(&self, branch: &str) -> Option<String> {
        git(
            &self.path,
            &[
                "rev-parse",
                "--verify",
                "-q",
                &format!("refs/heads/{branch}^{{commit}}"),
            ],
        )
        .ok()
        .filter(|s| is_sha(s))
    }

    /// A sha or a branch name to a commit sha.
    fn resolve(&self, reference: &str) -> Option<String> {
        if is_sha(reference) {
            return git(
                &self.path,
                &["cat-file", "-e", &format!("{reference}^{{commit}}")],
            )
            .ok()
            .map(|_| reference.to_lowercase());
        }
        self.branch_sha(reference)
    }

    fn head_sha(&self, pr: &Pr) -> String {
        self.branch_sha(&pr.head)
            .unwrap_or_else(|| pr.head_sha_at_open.clone())
    }

    fn json(&self, u: &Urls, push: bool) -> Value {
        let (api, web) = (self.api(u), self.web(u));
        json!({
            "id": self.id, "node_id": format!("R_kgDO{}", self.id), "name": self.name,
            "full_name": self.full(), "private": true, "owner": author(u, &self.owner),
            "html_url": web, "description": null, "fork": false, "url": api,
            "clone_url": format!("{web}.git"), "default_branch": "main", "visibility": "private",
            "archived": false, "disabled": false,
            "issues_url": format!("{api}/issues{{/number}}"), "pulls_url": format!("{api}/pulls{{/number}}"),
            "permissions": {"admin": push, "maintain": push, "push": push, "triage": push, "pull": true},
        })
    }

    fn label_json(&self, u: &Urls, l: &Label) -> Value {
        json!({
            "id": l.id, "node_id": format!("LA_kwDO{}", l.id),
            "url": format!("{}/labels/{}", self.api(u), encode(&l.name)),
            "name": l.name, "color": l.color, "default": l.default, "description": l.description,
        })
    }

    fn label_of(&self, name: &str) -> Option<&Label> {
        self.labels
            .iter()
            .find(|l| l.name.eq_ignore_ascii_case(name))
    }

    /// Finds or creates the label (as "add labels to an issue" does for unknown names).
    fn ensure_label(&mut self, name: &str) -> String {
        if let Some(l) = self.label_of(name) {
            return l.name.clone();
        }
        self.labels.push(Label {
            id: next_id(),
            name: name.to_string(),
            color: "ededed".to_string(),
            description: None,
            default: false,
        });
        name.to_string()
    }

    fn comment_count(&self, n: u64) -> usize {
        self.comments.iter().filter(|c| c.issue == n).count()
    }

    fn issue_json(&self, u: &Urls, i: &Issue) -> Value {
        let api = format!("{}/issues/{}", self.api(u), i.number);
        let labels: Vec<Value> = i
            .labels
            .iter()
            .filter_map(|n| self.label_of(n))
            .map(|l| self.label_json(u, l))
            .collect();
        let mut v = json!({
            "id": i.id, "node_id": format!("I_kwDO{}", i.id), "url": api,
            "repository_url": self.api(u), "labels_url": format!("{api}/labels{{/name}}"),
            "comments_url": format!("{api}/comments"), "events_url": format!("{api}/events"),
            "html_url": format!("{}/{}/{}", self.web(u), if i.pr.is_some() { "pull" } else { "issues" }, i.number),
            "number": i.number, "state": i.state, "state_reason": i.state_reason,
            "title": i.title, "body": i.body, "user": author(u, &i.user), "labels": labels,
            "assignee": null, "assignees": [], "milestone": null, "locked": false,
            "active_lock_reason": null, "comments": self.comment_count(i.number),
            "closed_at": ts_opt(&i.closed_at), "closed_by": author_opt(u, &i.closed_by),
            "created_at": ts(&i.created), "updated_at": ts(&i.updated),
            "author_association": if i.user == self.owner { "OWNER" } else { "CONTRIBUTOR" },
        });
        if let Some(pr) = &i.pr {
            let web = format!("{}/pull/{}", self.web(u), i.number);
            // "GitHub's REST API considers every pull request an issue ... you can identify
            // pull requests by the pull_request key"
            // (https://docs.github.com/en/rest/issues/issues#list-repository-issues).
            v["pull_request"] = json!({
                "url": format!("{}/pulls/{}", self.api(u), i.number), "html_url": web,
                "diff_url": format!("{web}.diff"), "patch_url": format!("{web}.patch"),
                "merged_at": ts_opt(&pr.merged_at),
            });
            v["draft"] = json!(pr.draft);
        }
        v
    }

    fn branch_json(&self, u: &Urls, branch: &str, sha: &str) -> Value {
        json!({
            "label": format!("{}:{branch}", self.owner), "ref": branch, "sha": sha,
            "user": author(u, &self.owner), "repo": self.json(u, true),
        })
    }

    /// A pull request; `full` is the single-PR shape, otherwise the list shape
    /// ("pull-request-simple", which has no `merged`, `mergeable`, `merged_by` or counts:
    /// https://docs.github.com/en/rest/pulls/pulls#list-pull-requests).
    fn pr_json(&self, u: &Urls, i: &Issue, full: bool) -> Value {
        let pr = i.pr.as_ref().expect("a pull request");
        let api = format!("{}/pulls/{}", self.api(u), i.number);
        let web = format!("{}/pull/{}", self.web(u), i.number);
        let issue_api = format!("{}/issues/{}", self.api(u), i.number);
        let head_sha = self.head_sha(pr);
        let base_sha = self.branch_sha(&pr.base).unwrap_or_default();
        let labels: Vec<Value> = i
            .labels
            .iter()
            .filter_map(|n| self.label_of(n))
            .map(|l| self.label_json(u, l))
            .collect();
        let mut v = json!({
            "url": api, "id": pr.id, "node_id": format!("PR_kwDO{}", pr.id), "html_url": web,
            "diff_url": format!("{web}.diff"), "patch_url": format!("{web}.patch"),
            "issue_url": issue_api, "commits_url": format!("{api}/commits"),
            "review_comments_url": format!("{api}/comments"),
            "review_comment_url": format!("{}/pulls/comments{{/number}}", self.api(u)),
            "comments_url": format!("{issue_api}/comments"),
            "statuses_url": format!("{}/statuses/{head_sha}", self.api(u)),
            "number": i.number, "state": i.state, "locked": false, "title": i.title,
            "user": author(u, &i.user), "body": i.body, "labels": labels, "milestone": null,
            "active_lock_reason": null, "created_at": ts(&i.created), "updated_at": ts(&i.updated),
            "closed_at": ts_opt(&i.closed_at), "merged_at": ts_opt(&pr.merged_at),
            "merge_commit_sha": pr.merge_commit_sha, "assignee": null, "assignees": [],
            "requested_reviewers": [], "requested_teams": [],
            "head": {
                "label": format!("{}:{}", pr.head_owner, pr.head), "ref": pr.head, "sha": head_sha,
                "user": author(u, &pr.head_owner), "repo": self.json(u, true),
            },
            "base": self.branch_json(u, &pr.base, &base_sha),
            "_links": {
                "self": {"href": api}, "html": {"href": web}, "issue": {"href": issue_api},
                "comments": {"href": format!("{issue_api}/comments")},
                "review_comments": {"href": format!("{api}/comments")},
                "commits": {"href": format!("{api}/commits")},
            },
            "author_association": "CONTRIBUTOR", "auto_merge": null, "draft": pr.draft,
        });
        if full {
            let mergeable = if i.state == "open" {
                json!(merge_tree(&self.path, &base_sha, &head_sha).is_ok())
            } else {
                Value::Null
            };
            let extra = json!({
                "merged": pr.merged_at.is_some(), "mergeable": mergeable,
                "mergeable_state": if mergeable == json!(false) { "dirty" } else { "clean" },
                "merged_by": author_opt(u, &pr.merged_by),
                "comments": self.comment_count(i.number),
                "review_comments": self.review_comments.iter().filter(|c| c.pr == i.number).count(),
                "maintainer_can_modify": false, "commits": 1, "additions": 0, "deletions": 0,
                "changed_files": 0,
            });
            for (k, val) in extra.as_object().unwrap() {
                v[k] = val.clone();
            }
        }
        v
    }

    fn comment_json(&self, u: &Urls, c: &IssueComment) -> Value {
        let issue = if self.issues.get(&c.issue).is_some_and(|i| i.pr.is_some()) {
            "pull"
        } else {
            "issues"
        };
        json!({
            "id": c.id, "node_id": format!("IC_kwDO{}", c.id),
            "url": format!("{}/issues/comments/{}", self.api(u), c.id),
            "html_url": format!("{}/{issue}/{}#issuecomment-{}", self.web(u), c.issue, c.id),
            "issue_url": format!("{}/issues/{}", self.api(u), c.issue),
            "body": c.body, "user": author(u, &c.user),
            "created_at": ts(&c.created), "updated_at": ts(&c.updated),
            "author_association": if c.user == self.owner { "OWNER" } else { "CONTRIBUTOR" },
        })
    }

    fn review_json(&self, u: &Urls, r: &Review) -> Value {
        let pr_api = format!("{}/pulls/{}", self.api(u), r.pr);
        let html = format!("{}/pull/{}#pullrequestreview-{}", self.web(u), r.pr, r.id);
        json!({
            "id": r.id, "node_id": format!("PRR_kwDO{}", r.id), "user": author(u, &r.user),
            "body": r.body, "state": r.state, "html_url": html, "pull_request_url": pr_api,
            "author_association": "CONTRIBUTOR",
            "_links": {"html": {"href": html}, "pull_request": {"href": pr_api}},
            "submitted_at": ts(&r.submitted), "commit_id": r.commit,
        })
    }

    fn review_comment_json(&self, u: &Urls, c: &ReviewComment) -> Value {
        let pr_api = format!("{}/pulls/{}", self.api(u), c.pr);
        let url = format!("{}/pulls/comments/{}", self.api(u), c.id);
        let html = format!("{}/pull/{}#discussion_r{}", self.web(u), c.pr, c.id);
        let mut v = json!({
            "url": url, "pull_request_review_id": c.review, "id": c.id,
            "node_id": format!("PRRC_kwDO{}", c.id),
            "diff_hunk": format!("@@ -{l},1 +{l},1 @@\n+line {l}", l = c.line),
            "path": c.path, "position": 1, "original_position": 1, "commit_id": c.commit,
            "original_commit_id": c.commit, "user": author(u, &c.user), "body": c.body,
            "created_at": ts(&c.created), "updated_at": ts(&c.updated), "html_url": html,
            "pull_request_url": pr_api, "author_association": "CONTRIBUTOR",
            "_links": {"self": {"href": url}, "html": {"href": html}, "pull_request": {"href": pr_api}},
            "start_line": null, "original_start_line": null, "start_side": null,
            "line": c.line, "original_line": c.line, "side": "RIGHT", "subject_type": "line",
        });
        if let Some(to) = c.in_reply_to {
            v["in_reply_to_id"] = json!(to);
        }
        v
    }

    fn check_run_json(&self, u: &Urls, c: &CheckRun) -> Value {
        let prs: Vec<Value> = self
            .issues
            .values()
            .filter_map(|i| i.pr.as_ref().map(|p| (i, p)))
            .filter(|(_, p)| self.head_sha(p) == c.sha)
            .map(|(i, p)| {
                json!({
                    "url": format!("{}/pulls/{}", self.api(u), i.number), "id": p.id, "number": i.number,
                    "head": {"ref": p.head, "sha": c.sha, "repo": {"id": self.id, "url": self.api(u), "name": self.name}},
                    "base": {"ref": p.base, "sha": self.branch_sha(&p.base).unwrap_or_default(),
                             "repo": {"id": self.id, "url": self.api(u), "name": self.name}},
                })
            })
            .collect();
        let url = format!("{}/check-runs/{}", self.api(u), c.id);
        json!({
            "id": c.id, "node_id": format!("CR_kwDO{}", c.id), "head_sha": c.sha,
            "external_id": "", "url": url,
            "html_url": format!("{}/runs/{}", self.web(u), c.id),
            "details_url": format!("{}/actions/runs/{}", self.web(u), c.id),
            "status": if c.conclusion.is_some() { "completed" } else { "in_progress" },
            "conclusion": c.conclusion, "started_at": ts(&c.started),
            "completed_at": ts_opt(&c.completed),
            "output": {
                "title": c.conclusion.as_ref().map(|k| format!("{} {k}", c.name)),
                "summary": c.conclusion.as_ref().map(|k| format!("{} finished: {k}", c.name)),
                "text": c.text, "annotations_count": 0,
                "annotations_url": format!("{url}/annotations"),
            },
            "name": c.name, "check_suite": {"id": c.id + 1},
            "app": {"id": 15368, "slug": "github-actions", "name": "GitHub Actions"},
            "pull_requests": prs,
        })
    }

    fn status_json(&self, u: &Urls, s: &CommitStatus) -> Value {
        json!({
            "id": s.id, "node_id": format!("SC_kwDO{}", s.id),
            "url": format!("{}/statuses/{}", self.api(u), s.sha),
            "avatar_url": null, "state": s.state, "description": s.description,
            "target_url": format!("{}/ci/{}", u.web, s.id), "context": s.context,
            "created_at": ts(&s.created), "updated_at": ts(&s.created),
            "creator": author(u, &s.creator),
        })
    }

    fn touch(&mut self, n: u64) {
        if let Some(i) = self.issues.get_mut(&n) {
            i.updated = now();
        }
    }

    fn close(&mut self, n: u64, by: &str, reason: &str) {
        if let Some(i) = self.issues.get_mut(&n) {
            let t = now();
            i.state = "closed".into();
            i.state_reason = if i.pr.is_some() {
                None
            } else {
                Some(reason.into())
            };
            i.closed_at = Some(t);
            i.closed_by = Some(by.into());
            i.updated = t;
        }
    }

    fn reopen(&mut self, n: u64) {
        if let Some(i) = self.issues.get_mut(&n) {
            i.state = "open".into();
            i.state_reason = if i.pr.is_some() {
                None
            } else {
                Some("reopened".into())
            };
            i.closed_at = None;
            i.closed_by = None;
            i.updated = now();
        }
    }

    fn next_number(&self) -> u64 {
        self.issues.keys().next_back().copied().unwrap_or(0) + 1
    }

    /// Merges pull request `n` as `by` (https://docs.github.com/en/rest/pulls/pulls#merge-a-pull-request).
    fn merge(
        &mut self,
        n: u64,
        by: &str,
        method: &str,
        expected_sha: Option<&str>,
        commit_title: Option<&str>,
        commit_message: Option<&str>,
    ) -> Result<String, (u16, Value)> {
        let not_mergeable = || (405, json!({"message": "Pull Request is not mergeable"}));
        let issue = self
            .issues
            .get(&n)
            .filter(|i| i.pr.is_some())
            .ok_or((404, not_found()))?;
        let pr = issue.pr.as_ref().unwrap();
        if issue.state != "open" || pr.merged_at.is_some() {
            return Err(not_mergeable());
        }
        let head = self.branch_sha(&pr.head).ok_or_else(not_mergeable)?;
        if expected_sha.is_some_and(|s| s != head) {
            return Err((
                409,
                json!({"message": "Head branch was modified. Review and try the merge again."}),
            ));
        }
        let base = self.branch_sha(&pr.base).ok_or_else(not_mergeable)?;
        let tree = merge_tree(&self.path, &base, &head).map_err(|_| not_mergeable())?;
        let title = commit_title.map(str::to_string);
        let new = match method {
            // "merge" always records a merge commit, even when the base could fast-forward
            // (https://docs.github.com/en/repositories/configuring-branches-and-merges-in-your-repository/configuring-pull-request-merges/about-merge-methods-on-github).
            "merge" => {
                let title = title.unwrap_or(format!(
                    "Merge pull request #{n} from {}/{}",
                    pr.head_owner, pr.head
                ));
                let message = commit_message.unwrap_or(&issue.title);
                git_as(
                    &self.path,
                    &[
                        "commit-tree",
                        &tree,
                        "-p",
                        &base,
                        "-p",
                        &head,
                        "-m",
                        &title,
                        "-m",
                        message,
                    ],
                    by,
                )
            }
            "squash" => {
                let title = title.unwrap_or(format!("{} (#{n})", issue.title));
                let message = commit_message
                    .map(str::to_string)
                    .or(issue.body.clone())
                    .unwrap_or_default();
                let mut args = vec!["commit-tree", &tree, "-p", &base, "-m", &title];
                if !message.is_empty() {
                    args.extend(["-m", &message]);
                }
                git_as(&self.path, &args, by)
            }
            // The fake rebases only when the head already sits on the base (a fast-forward);
            // GitHub would replay the commits, which the fake does not.
            "rebase" => {
                if git(&self.path, &["merge-base", "--is-ancestor", &base, &head]).is_ok() {
                    Ok(head.clone())
                } else {
                    return Err(not_mergeable());
                }
            }
            other => {
                return Err((
                    422,
                    json!({"message": format!("Invalid merge_method: {other}. Expected one of merge, squash, rebase.")}),
                ));
            }
        }
        .map_err(|e| (500, json!({"message": e})))?;
        git(
            &self.path,
            &[
                "update-ref",
                &format!("refs/heads/{}", pr.base),
                &new,
                &base,
            ],
        )
        .map_err(|e| (500, json!({"message": e})))?;
        let into_default = pr.base == "main";
        let body = issue.body.clone().unwrap_or_default();
        let t = now();
        let issue = self.issues.get_mut(&n).unwrap();
        let pr = issue.pr.as_mut().unwrap();
        pr.merged_at = Some(t);
        pr.merged_by = Some(by.into());
        pr.merge_commit_sha = Some(new.clone());
        self.close(n, by, "completed");
        // Closing keywords link the PR to issues, which the merge closes, only when the PR
        // targets the default branch
        // (https://docs.github.com/en/issues/tracking-your-work-with-issues/using-issues/linking-a-pull-request-to-an-issue).
        if into_default {
            for target in closing_refs(&body) {
                let is_open_issue = self
                    .issues
                    .get(&target)
                    .is_some_and(|i| i.pr.is_none() && i.state == "open");
                if is_open_issue {
                    self.close(target, by, "completed");
                }
            }
        }
        Ok(new)
    }
}

/// The tree of merging `head` into `base`, or Err on conflicts.
fn merge_tree(dir: &Path, base: &str, head: &str) -> Result<String, String> {
    let out = git(dir, &["merge-tree", "--write-tree", base, head])?;
    Ok(out.lines().next().unwrap_or_default().to_string())
}

/// Issue numbers a body closes: "close(s|d)", "fix(es|ed)", "resolve(s|d)" then "#N",
/// case-insensitive, with an optional colon
/// (https://docs.github.com/en/issues/tracking-your-work-with-issues/using-issues/linking-a-pull-request-to-an-issue#linking-a-pull-request-to-an-issue-using-a-keyword).
fn closing_refs(body: &str) -> Vec<u64> {
    const KEYWORDS: [&str; 9] = [
        "close", "closes", "closed", "fix", "fixes", "fixed", "resolve", "resolves", "resolved",
    ];
    let lower = body.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        .filter(|w| !w.is_empty())
        .collect();
    let mut out = Vec::new();
    for pair in words.windows(2) {
        let keyword = pair[0].trim_end_matches(':');
        if !KEYWORDS.contains(&keyword) {
            continue;
        }
        let digits: String = pair[1]
            .strip_prefix('#')
            .unwrap_or("")
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if let Ok(n) = digits.parse() {
            out.push(n);
        }
    }
    out
}

fn not_found() -> Value {
    json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})
}

fn validation(errors: Value) -> Value {
    json!({"message": "Validation Failed", "errors": errors, "documentation_url": "https://docs.github.com/rest"})
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => out.push(b),
                    None => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query as (raw key, raw value) pairs, in order.
fn query_pairs(url: &str) -> Vec<(String, String)> {
    url.split_once('?')
        .map(|(_, q)| {
            q.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k.to_string(), v.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, key: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| percent_decode(v))
    }
}

/// One page of `items` and its `Link` header
/// (https://docs.github.com/en/rest/using-the-rest-api/using-pagination-in-the-rest-api):
/// `per_page` defaults to 30 and is capped at 100; the header has absolute URLs with rel
/// prev/next/last/first, and is absent when everything fits on one page.
fn paginate(u: &Urls, path: &str, q: &Query, items: Vec<Value>) -> (Vec<Value>, Option<String>) {
    let per = q
        .get("per_page")
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|p| *p > 0)
        .unwrap_or(30)
        .min(100);
    let page = q
        .get("page")
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|p| *p > 0)
        .unwrap_or(1);
    let last = items.len().div_ceil(per).max(1);
    let link_to = |p: usize| {
        let mut pairs: Vec<String> =
            q.0.iter()
                .filter(|(k, _)| k != "page")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
        pairs.push(format!("page={p}"));
        format!("<{}{path}?{}>", u.api, pairs.join("&"))
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(format!("{}; rel=\"prev\"", link_to((page - 1).min(last))));
    }
    if page < last {
        links.push(format!("{}; rel=\"next\"", link_to(page + 1)));
        links.push(format!("{}; rel=\"last\"", link_to(last)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"first\"", link_to(1)));
    }
    let items = items.into_iter().skip((page - 1) * per).take(per).collect();
    (items, (!links.is_empty()).then(|| links.join(", ")))
}

/// Who a request is from.
enum Caller {
    Token {
        login: String,
        push: bool,
        installation: bool,
    },
    /// A GitHub App's JWT (already checked).
    App,
}

/// An answer before the cross-cutting headers are added.
struct Reply {
    status: u16,
    body: Option<Value>,
    headers: Vec<(String, String)>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            body: None,
            headers: Vec::new(),
        }
    }

    fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

fn page_reply(u: &Urls, path: &str, q: &Query, items: Vec<Value>) -> Reply {
    let (items, link) = paginate(u, path, q, items);
    let reply = Reply::json(200, Value::Array(items));
    match link {
        Some(l) => reply.header("Link", &l),
        None => reply,
    }
}

impl FakeGithub {
    /// Starts the fake; `token` belongs to `login` and may push.
    pub fn start(token: &str, login: &str) -> FakeGithub {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind the fake"));
        let port = server.server_addr().to_ip().unwrap().port();
        let dir = tempfile::tempdir().expect("a temp dir for the fake's repositories");
        let web = format!("http://127.0.0.1:{port}");
        let urls = Arc::new(Urls {
            api: format!("{web}/api/v3"),
            web,
        });
        let mut tokens = HashMap::new();
        tokens.insert(
            token.to_string(),
            Token {
                login: login.to_string(),
                push: true,
                expires: None,
                installation: false,
            },
        );
        let state = Arc::new(Mutex::new(State {
            root: dir.path().to_path_buf(),
            tokens,
            scopes: "repo".into(),
            repos: BTreeMap::new(),
            main_repo: None,
            limit: 5000,
            used: 0,
            reset_in: Duration::from_secs(3600),
            reset_at: now() + chrono::Duration::seconds(3600),
            points: 0,
            secondary: None,
            faults: VecDeque::new(),
            requests: Vec::new(),
            git_requests: Vec::new(),
            forced: Vec::new(),
            app: None,
        }));
        let (st, u) = (state.clone(), urls.clone());
        let srv = server.clone();
        std::thread::spawn(move || {
            for request in srv.incoming_requests() {
                let (st, u) = (st.clone(), u.clone());
                std::thread::spawn(move || handle(request, &st, &u));
            }
        });
        FakeGithub {
            urls,
            state,
            server,
            dir,
        }
    }

    /// "http://127.0.0.1:PORT/api/v3" (GitHub Enterprise Server's layout).
    pub fn api_url(&self) -> String {
        self.urls.api.clone()
    }

    /// "http://127.0.0.1:PORT" (html_url's and git's base).
    pub fn web_url(&self) -> String {
        self.urls.web.clone()
    }

    /// "http://127.0.0.1:PORT/{owner}/{repo}.git".
    pub fn git_url(&self, owner: &str, repo: &str) -> String {
        format!("{}/{owner}/{repo}.git", self.urls.web)
    }

    /// The bare repository behind `owner/repo`.
    pub fn repo_path(&self, owner: &str, repo: &str) -> PathBuf {
        self.dir.path().join(owner).join(format!("{repo}.git"))
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Makes the bare repository `owner/name` (default branch main, seeded with `seed`'s HEAD,
    /// non-fast-forward pushes and deletions refused) and GitHub's default labels.
    pub fn create_repo(&self, owner: &str, name: &str, seed: &Path) {
        let path = self.repo_path(owner, name);
        std::fs::create_dir_all(&path).expect("the bare repository's directory");
        let setup = || -> Result<(), String> {
            git(&path, &["init", "-q", "--bare", "-b", "main"])?;
            git(&path, &["config", "receive.denyNonFastForwards", "true"])?;
            git(&path, &["config", "receive.denyDeletes", "true"])?;
            git(&path, &["config", "http.receivepack", "true"])?;
            git(
                seed,
                &["push", "-q", path.to_str().unwrap(), "HEAD:refs/heads/main"],
            )?;
            Ok(())
        };
        if let Err(e) = setup() {
            panic!(
                "fake GitHub: creating {owner}/{name} from {}: {e}",
                seed.display()
            );
        }
        // The labels every new repository gets
        // (https://docs.github.com/en/issues/using-labels-and-milestones-to-track-work/managing-labels#about-default-labels).
        let defaults = [
            ("bug", "d73a4a", "Something isn't working"),
            (
                "documentation",
                "0075ca",
                "Improvements or additions to documentation",
            ),
            (
                "duplicate",
                "cfd3d7",
                "This issue or pull request already exists",
            ),
            ("enhancement", "a2eeef", "New feature or request"),
            ("good first issue", "7057ff", "Good for newcomers"),
            ("help wanted", "008672", "Extra attention is needed"),
            ("invalid", "e4e669", "This doesn't seem right"),
            ("question", "d876e3", "Further information is requested"),
            ("wontfix", "ffffff", "This will not be worked on"),
        ];
        let labels = defaults
            .iter()
            .map(|(n, c, d)| Label {
                id: next_id(),
                name: n.to_string(),
                color: c.to_string(),
                description: Some(d.to_string()),
                default: true,
            })
            .collect();
        let key = format!("{owner}/{name}");
        let mut st = self.st();
        st.repos.insert(
            key.clone(),
            Repo {
                id: next_id(),
                owner: owner.into(),
                name: name.into(),
                path,
                labels,
                issues: BTreeMap::new(),
                comments: Vec::new(),
                reviews: Vec::new(),
                review_comments: Vec::new(),
                check_runs: Vec::new(),
                statuses: Vec::new(),
            },
        );
        st.main_repo.get_or_insert(key);
    }

    /// Runs `f` on the first repository `create_repo` made.
    fn with_repo<T>(&self, f: impl FnOnce(&mut Repo, &Urls) -> T) -> T {
        let mut st = self.st();
        let key = st
            .main_repo
            .clone()
            .expect("fake GitHub: call create_repo first");
        f(st.repos.get_mut(&key).unwrap(), &self.urls)
    }

    /// Another token; `push` false makes it read-only (writes answer 403).
    pub fn add_token(&self, token: &str, login: &str, push: bool) {
        self.st().tokens.insert(
            token.into(),
            Token {
                login: login.into(),
                push,
                expires: None,
                installation: false,
            },
        );
    }

    /// The `x-oauth-scopes` GET /user answers with.
    pub fn set_scopes(&self, scopes: &str) {
        self.st().scopes = scopes.into();
    }

    /// The primary rate limit: `limit` points per window of `reset_in` (a new window starts now).
    pub fn set_rate_limit(&self, limit: u64, reset_in: Duration) {
        let mut st = self.st();
        st.limit = limit;
        st.used = 0;
        st.reset_in = reset_in;
        st.reset_at = Utc::now() + chrono::Duration::from_std(reset_in).unwrap();
    }

    /// The next API request answers 403 with `retry-after: secs` (a secondary rate limit).
    pub fn secondary_limit(&self, retry_after_secs: u64) {
        self.st().secondary = Some(retry_after_secs);
    }

    /// The next request (API or git) whose "METHOD path" contains `fragment` answers `status`
    /// with an HTML body, as a proxy in front of GitHub would.
    pub fn fail_next(&self, fragment: &str, status: u16) {
        self.st().faults.push_back((fragment.into(), status));
    }

    pub fn requests(&self) -> Vec<Req> {
        self.st().requests.clone()
    }

    pub fn git_requests(&self) -> Vec<GitReq> {
        self.st().git_requests.clone()
    }

    /// Pushes the bare repository refused (non-fast-forward updates, deletions).
    pub fn forced_push_attempts(&self) -> Vec<ForcedPush> {
        self.st().forced.clone()
    }

    /// Rate-limit points counted since the start or the last `reset_requests`.
    pub fn rate_points_used(&self) -> u64 {
        self.st().points
    }

    /// Forgets the recorded requests (API and git) and the point counter.
    pub fn reset_requests(&self) {
        let mut st = self.st();
        st.requests.clear();
        st.git_requests.clear();
        st.points = 0;
    }

    /// An issue opened by `HUMAN`; its number.
    pub fn add_issue(&self, title: &str, body: &str, labels: &[&str]) -> u64 {
        self.add_issue_as(HUMAN, title, body, labels)
    }

    pub fn add_issue_as(&self, user: &str, title: &str, body: &str, labels: &[&str]) -> u64 {
        self.with_repo(|r, _| {
            let labels = labels.iter().map(|l| r.ensure_label(l)).collect();
            let n = r.next_number();
            let t = now();
            r.issues.insert(
                n,
                Issue {
                    id: next_id(),
                    number: n,
                    title: title.into(),
                    body: (!body.is_empty()).then(|| body.to_string()),
                    state: "open".into(),
                    state_reason: None,
                    labels,
                    user: user.into(),
                    created: t,
                    updated: t,
                    closed_at: None,
                    closed_by: None,
                    pr: None,
                },
            );
            n
        })
    }

    /// Closed by `by` as completed.
    pub fn close_issue(&self, n: u64, by: &str) {
        self.with_repo(|r, _| r.close(n, by, "completed"));
    }

    pub fn add_label(&self, n: u64, label: &str) {
        self.with_repo(|r, _| {
            let name = r.ensure_label(label);
            let i = r.issues.get_mut(&n).expect("no such issue");
            if !i.labels.iter().any(|l| l.eq_ignore_ascii_case(&name)) {
                i.labels.push(name);
            }
            r.touch(n);
        });
    }

    pub fn remove_label(&self, n: u64, label: &str) {
        self.with_repo(|r, _| {
            let i = r.issues.get_mut(&n).expect("no such issue");
            i.labels.retain(|l| !l.eq_ignore_ascii_case(label));
            r.touch(n);
        });
    }

    /// A comment on issue or PR `n` by `user`; its id.
    pub fn add_comment(&self, n: u64, user: &str, body: &str) -> u64 {
        self.with_repo(|r, _| {
            assert!(r.issues.contains_key(&n), "no issue #{n}");
            let (id, t) = (next_id(), now());
            r.comments.push(IssueComment {
                id,
                issue: n,
                user: user.into(),
                body: body.into(),
                created: t,
                updated: t,
            });
            r.touch(n);
            id
        })
    }

    /// A submitted review ("APPROVED", "CHANGES_REQUESTED", "COMMENTED") on the PR's head; its id.
    pub fn add_review(&self, pr: u64, user: &str, state: &str, body: &str) -> u64 {
        self.with_repo(|r, _| {
            let head = r.head_sha(pull_of(r, pr));
            let id = next_id();
            r.reviews.push(Review {
                id,
                pr,
                user: user.into(),
                state: state.into(),
                body: body.into(),
                submitted: now(),
                commit: head,
            });
            r.touch(pr);
            id
        })
    }

    /// A review comment on `path`:`line` of the PR's head. As on GitHub, a single comment
    /// comes with its own review (state COMMENTED, empty body). Returns the comment's id.
    pub fn add_review_comment(
        &self,
        pr: u64,
        user: &str,
        path: &str,
        line: u64,
        body: &str,
    ) -> u64 {
        self.with_repo(|r, _| add_review_comment(r, pr, user, path, line, body, None))
    }

    /// A check run on a sha or a branch's current sha; `conclusion` None means still running.
    pub fn add_check_run(
        &self,
        sha_or_branch: &str,
        name: &str,
        conclusion: Option<&str>,
        output_text: &str,
    ) -> u64 {
        self.with_repo(|r, _| {
            let sha = r
                .resolve(sha_or_branch)
                .unwrap_or_else(|| panic!("no commit {sha_or_branch}"));
            let (id, t) = (next_id(), now());
            r.check_runs.push(CheckRun {
                id,
                sha,
                name: name.into(),
                conclusion: conclusion.map(Into::into),
                started: t,
                completed: conclusion.map(|_| t),
                text: output_text.into(),
            });
            id
        })
    }

    /// A commit status ("error", "failure", "pending", "success") by "ci-bot".
    pub fn add_status(
        &self,
        sha_or_branch: &str,
        context: &str,
        state: &str,
        description: &str,
    ) -> u64 {
        self.with_repo(|r, _| {
            let sha = r
                .resolve(sha_or_branch)
                .unwrap_or_else(|| panic!("no commit {sha_or_branch}"));
            let id = next_id();
            r.statuses.push(CommitStatus {
                id,
                sha,
                context: context.into(),
                state: state.into(),
                description: description.into(),
                creator: "ci-bot".into(),
                created: now(),
            });
            id
        })
    }

    /// Merged by `by` with a merge commit (closing the issues its body references); the
    /// merge commit's sha.
    pub fn merge_pr(&self, pr: u64, by: &str) -> String {
        self.with_repo(|r, _| r.merge(pr, by, "merge", None, None, None))
            .unwrap_or_else(|(s, e)| panic!("fake GitHub: merging #{pr}: {s} {e}"))
    }

    /// Closed without merging.
    pub fn close_pr(&self, pr: u64, by: &str) {
        self.with_repo(|r, _| r.close(pr, by, "completed"));
    }

    pub fn issue(&self, n: u64) -> Value {
        self.with_repo(|r, u| {
            let issue = r
                .issues
                .get(&n)
                .unwrap_or_else(|| panic!("fake GitHub: no issue #{n} in {}", r.full()));
            r.issue_json(u, issue)
        })
    }

    pub fn comments(&self, n: u64) -> Value {
        self.with_repo(|r, u| {
            Value::Array(
                r.comments
                    .iter()
                    .filter(|c| c.issue == n)
                    .map(|c| r.comment_json(u, c))
                    .collect(),
            )
        })
    }

    /// Every pull request, oldest first, in the single-PR shape.
    pub fn pulls(&self) -> Value {
        self.with_repo(|r, u| {
            Value::Array(
                r.issues
                    .values()
                    .filter(|i| i.pr.is_some())
                    .map(|i| r.pr_json(u, i, true))
                    .collect(),
            )
        })
    }

    pub fn pull(&self, n: u64) -> Value {
        self.with_repo(|r, u| {
            pull_of(r, n);
            r.pr_json(u, &r.issues[&n], true)
        })
    }

    pub fn reviews(&self, pr: u64) -> Value {
        self.with_repo(|r, u| {
            Value::Array(
                r.reviews
                    .iter()
                    .filter(|c| c.pr == pr)
                    .map(|c| r.review_json(u, c))
                    .collect(),
            )
        })
    }

    pub fn review_comments(&self, pr: u64) -> Value {
        self.with_repo(|r, u| {
            Value::Array(
                r.review_comments
                    .iter()
                    .filter(|c| c.pr == pr)
                    .map(|c| r.review_comment_json(u, c))
                    .collect(),
            )
        })
    }

    /// The sha `branch` points at in the first repository, or None.
    pub fn branch_sha(&self, branch: &str) -> Option<String> {
        self.with_repo(|r, _| r.branch_sha(branch))
    }

    /// Makes this fake a GitHub App `app_id` installed on every repository as installation
    /// `installation_id`; minted installation tokens live `token_ttl` (GitHub: one hour) and act
    /// as "{slug}[bot]" with push access.
    pub fn enable_app(&self, app_id: &str, installation_id: u64, slug: &str, token_ttl: Duration) {
        self.st().app = Some(App {
            app_id: app_id.into(),
            installation_id,
            slug: slug.into(),
            token_ttl,
        });
    }

    /// How long installation tokens minted from now on live.
    pub fn set_app_token_ttl(&self, ttl: Duration) {
        if let Some(app) = self.st().app.as_mut() {
            app.token_ttl = ttl;
        }
    }
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

/// Pull request `n`, or a panic naming what is missing (for the test-side helpers).
fn pull_of(r: &Repo, n: u64) -> &Pr {
    r.issues
        .get(&n)
        .and_then(|i| i.pr.as_ref())
        .unwrap_or_else(|| panic!("fake GitHub: #{n} is not a pull request in {}", r.full()))
}

fn add_review_comment(
    r: &mut Repo,
    pr: u64,
    user: &str,
    path: &str,
    line: u64,
    body: &str,
    in_reply_to: Option<u64>,
) -> u64 {
    let head = r.head_sha(pull_of(r, pr));
    let t = now();
    let review = next_id();
    r.reviews.push(Review {
        id: review,
        pr,
        user: user.into(),
        state: "COMMENTED".into(),
        body: String::new(),
        submitted: t,
        commit: head.clone(),
    });
    let id = next_id();
    r.review_comments.push(ReviewComment {
        id,
        pr,
        review,
        user: user.into(),
        body: body.into(),
        path: path.into(),
        line,
        commit: head,
        in_reply_to,
        created: t,
        updated: t,
    });
    r.touch(pr);
    id
}

fn header(request: &tiny_http::Request, name: &str) -> Option<String> {
    request
        .headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_string())
}

fn send(request: tiny_http::Request, status: u16, headers: &[(String, String)], body: Vec<u8>) {
    let mut resp = tiny_http::Response::from_data(body).with_status_code(status);
    for (k, v) in headers {
        if let Ok(h) = tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()) {
            resp = resp.with_header(h);
        }
    }
    let _ = request.respond(resp);
}

fn handle(mut request: tiny_http::Request, state: &Mutex<State>, u: &Urls) {
    let method = request.method().to_string();
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let mut body = Vec::new();
    let _ = request.as_reader().read_to_end(&mut body);
    // Injected faults come first: they stand for a proxy in front of GitHub.
    {
        let mut st = state.lock().unwrap();
        let call = format!("{method} {path}");
        if let Some(pos) = st
            .faults
            .iter()
            .position(|(k, _)| call.contains(k.as_str()))
        {
            let (_, status) = st.faults.remove(pos).unwrap();
            let page = format!(
                "<html><head><title>{status}</title></head><body><h1>{status} injected by the fake</h1></body></html>"
            );
            let authorized = false;
            if path.contains(".git/") {
                st.git_requests.push(GitReq {
                    method,
                    path_and_query: url,
                    status,
                    authorized,
                    user: None,
                });
            } else {
                st.requests.push(Req {
                    method,
                    path_and_query: url,
                    status,
                    conditional: header(&request, "If-None-Match").is_some(),
                    authorized,
                });
            }
            drop(st);
            let headers = [("Content-Type".to_string(), "text/html".to_string())];
            return send(request, status, &headers, page.into_bytes());
        }
    }
    if path == "/api/v3" || path.starts_with("/api/v3/") {
        api(request, state, u, &method, &url, &body);
    } else if path.contains(".git/") {
        git_http(request, state, &method, &url, body);
    } else {
        let headers = [(
            "Content-Type".to_string(),
            "application/json; charset=utf-8".to_string(),
        )];
        send(
            request,
            404,
            &headers,
            serde_json::to_vec(&not_found()).unwrap(),
        );
    }
}

/// The token in `Authorization: Bearer T` or `token T`.
fn bearer(request: &tiny_http::Request) -> Option<String> {
    let h = header(request, "Authorization")?;
    let (scheme, token) = h.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token"))
        .then(|| token.trim().to_string())
}

/// Checks a GitHub App JWT the way GitHub describes it
/// (https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-json-web-token-jwt-for-a-github-app):
/// `iss` is the app's id, `exp` at most 10 minutes ahead and in the future, `iat` not in the
/// future. The payload is only decoded: the fake does NOT verify the RS256 signature.
fn check_jwt(st: &State, token: &str) -> Result<(), Value> {
    let bad = |m: &str| json!({"message": m, "documentation_url": "https://docs.github.com/rest"});
    let app = st
        .app
        .as_ref()
        .ok_or_else(|| bad("A JSON web token could not be decoded"))?;
    let payload = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.trim_end_matches('='))
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .ok_or_else(|| bad("A JSON web token could not be decoded"))?;
    let iss = match &payload["iss"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    if iss != app.app_id {
        return Err(bad(&format!(
            "Integration not found for the 'iss' claim {iss:?} (the fake's app id is {})",
            app.app_id
        )));
    }
    let t = Utc::now().timestamp();
    let exp = payload["exp"].as_i64().ok_or_else(|| {
        bad("'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires")
    })?;
    if exp <= t {
        return Err(bad(
            "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires",
        ));
    }
    if exp > t + 600 {
        return Err(bad(
            "'Expiration time' claim ('exp') is too far in the future",
        ));
    }
    if payload["iat"].as_i64().is_none_or(|iat| iat > t + 60) {
        return Err(bad(
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued",
        ));
    }
    Ok(())
}

fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.matches('.').count() == 2
}

fn api(
    request: tiny_http::Request,
    state: &Mutex<State>,
    u: &Urls,
    method: &str,
    url: &str,
    body: &[u8],
) {
    let conditional = header(&request, "If-None-Match");
    let mut st = state.lock().unwrap();
    // Primary window: "the reset time ... after which the remaining requests refill"
    // (https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api).
    if Utc::now() >= st.reset_at {
        st.used = 0;
        st.reset_at = Utc::now() + chrono::Duration::from_std(st.reset_in).unwrap();
    }
    let token = bearer(&request);
    let caller: Result<Caller, Reply> = match &token {
        None => Err(Reply::json(
            401,
            json!({"message": "Requires authentication", "documentation_url": "https://docs.github.com/rest"}),
        )),
        Some(t) if looks_like_jwt(t) => check_jwt(&st, t)
            .map(|_| Caller::App)
            .map_err(|e| Reply::json(401, e)),
        Some(t) => match st.tokens.get(t) {
            Some(tok) if tok.expires.is_none_or(|e| Utc::now() < e) => Ok(Caller::Token {
                login: tok.login.clone(),
                push: tok.push,
                installation: tok.installation,
            }),
            _ => Err(Reply::json(
                401,
                json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest"}),
            )),
        },
    };
    let authorized = caller.is_ok();
    let path = url.split('?').next().unwrap_or("");
    let rel = path.trim_start_matches("/api/v3");
    let counts = authorized && !matches!(caller, Ok(Caller::App)) && rel != "/rate_limit";
    let mut limited = true;
    let mut reply = if let Some(secs) = st.secondary.take() {
        // https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api#about-secondary-rate-limits
        Reply::json(403, json!({
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. If you reach out to GitHub Support for help, please include the request ID 0000:0000:FAKE.",
            "documentation_url": "https://docs.github.com/free-pro-team@latest/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits",
        }))
        .header("retry-after", &secs.to_string())
    } else {
        match caller {
            Err(r) => r,
            Ok(_) if counts && st.used >= st.limit => {
                // https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api#exceeding-the-rate-limit
                let id = match &token {
                    Some(t) => st.tokens.get(t).map(|t| user_id(&t.login)).unwrap_or(1),
                    None => 1,
                };
                Reply::json(
                    403,
                    json!({
                        "message": format!("API rate limit exceeded for user ID {id}. If you reach out to GitHub Support for help, please include the request ID 0000:0000:FAKE."),
                        "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                    }),
                )
            }
            Ok(caller) => {
                limited = false;
                let q = Query(query_pairs(url));
                let segs: Vec<String> = rel
                    .trim_matches('/')
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(percent_decode)
                    .collect();
                let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
                let body: Value = if body.is_empty() {
                    json!({})
                } else {
                    match serde_json::from_slice(body) {
                        Ok(v) => v,
                        Err(e) => {
                            let r = Reply::json(
                                400,
                                json!({"message": format!("Problems parsing JSON: {e}")}),
                            );
                            return finish(
                                request,
                                st,
                                r,
                                method,
                                url,
                                conditional,
                                authorized,
                                false,
                            );
                        }
                    }
                };
                route(&mut st, u, &caller, method, rel, &segs, &q, &body)
            }
        }
    };
    // Conditional requests: a matching If-None-Match answers 304, which "does not count
    // against your primary rate limit"
    // (https://docs.github.com/en/rest/using-the-rest-api/best-practices-for-using-the-rest-api#use-conditional-requests-if-appropriate).
    let mut counted = counts && !limited;
    if method == "GET"
        && reply.status == 200
        && let Some(b) = &reply.body
    {
        let etag = format!("W/\"{}\"", hash_hex(&serde_json::to_vec(b).unwrap()));
        if conditional
            .as_deref()
            .is_some_and(|c| c.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
        {
            reply.status = 304;
            reply.body = None;
            counted = false;
        }
        reply.headers.push(("ETag".into(), etag));
    }
    finish(
        request,
        st,
        reply,
        method,
        url,
        conditional,
        authorized,
        counted,
    );
}

#[allow(clippy::too_many_arguments)]
fn finish(
    request: tiny_http::Request,
    mut st: std::sync::MutexGuard<'_, State>,
    reply: Reply,
    method: &str,
    url: &str,
    conditional: Option<String>,
    authorized: bool,
    counted: bool,
) {
    if counted {
        st.used += 1;
        st.points += 1;
    }
    st.requests.push(Req {
        method: method.into(),
        path_and_query: url.into(),
        status: reply.status,
        conditional: conditional.is_some(),
        authorized,
    });
    // Every response carries the primary rate limit's state
    // (https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api#checking-the-status-of-your-rate-limit).
    let mut headers = vec![
        ("x-ratelimit-limit".to_string(), st.limit.to_string()),
        (
            "x-ratelimit-remaining".to_string(),
            st.limit.saturating_sub(st.used).to_string(),
        ),
        ("x-ratelimit-used".to_string(), st.used.to_string()),
        (
            "x-ratelimit-reset".to_string(),
            st.reset_at.timestamp().to_string(),
        ),
        ("x-ratelimit-resource".to_string(), "core".to_string()),
        (
            "x-github-request-id".to_string(),
            format!("FAKE:{:08X}", st.requests.len()),
        ),
        (
            "x-github-api-version-selected".to_string(),
            "2022-11-28".to_string(),
        ),
    ];
    drop(st);
    headers.extend(reply.headers);
    let data = match reply.body {
        Some(b) => {
            headers.push((
                "Content-Type".into(),
                "application/json; charset=utf-8".into(),
            ));
            serde_json::to_vec_pretty(&b).unwrap()
        }
        None => Vec::new(),
    };
    send(request, reply.status, &headers, data);
}

fn str_field(body: &Value, key: &str) -> Option<String> {
    body[key].as_str().map(str::to_string)
}

/// Label names from `{"labels": [...]}` or a bare array (GitHub accepts both), as strings or
/// `{"name": ...}` objects.
fn label_names(body: &Value) -> Vec<String> {
    let list = if body.is_array() {
        body
    } else {
        &body["labels"]
    };
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().or(l["name"].as_str()).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
fn route(
    st: &mut State,
    u: &Urls,
    caller: &Caller,
    method: &str,
    rel: &str,
    segs: &[&str],
    q: &Query,
    body: &Value,
) -> Reply {
    let login = match caller {
        Caller::Token { login, .. } => login.clone(),
        Caller::App => String::new(),
    };
    match (method, segs) {
        ("GET", ["user"]) => match caller {
            Caller::Token {
                installation: false,
                login,
                ..
            } => Reply::json(200, author(u, login)).header("x-oauth-scopes", &st.scopes),
            // An installation token is not a user: GET /user is refused
            // (https://docs.github.com/en/rest/users/users#get-the-authenticated-user lists
            // only user tokens as working).
            _ => Reply::json(
                403,
                json!({"message": "Resource not accessible by integration", "documentation_url": "https://docs.github.com/rest/users/users#get-the-authenticated-user"}),
            ),
        },
        // https://docs.github.com/en/rest/rate-limit/rate-limit#get-rate-limit-status-for-the-authenticated-user
        // ("Accessing this endpoint does not count against your REST API rate limit.")
        ("GET", ["rate_limit"]) => {
            let core = json!({
                "limit": st.limit, "remaining": st.limit.saturating_sub(st.used), "used": st.used,
                "reset": st.reset_at.timestamp(), "resource": "core",
            });
            let search = json!({"limit": 30, "remaining": 30, "used": 0, "reset": st.reset_at.timestamp(), "resource": "search"});
            Reply::json(
                200,
                json!({"resources": {"core": core, "search": search}, "rate": core}),
            )
        }
        // https://docs.github.com/en/rest/apps/apps#create-an-installation-access-token-for-an-app
        ("POST", ["app", "installations", id, "access_tokens"]) => {
            let Caller::App = caller else {
                return Reply::json(
                    401,
                    json!({"message": "A JSON web token could not be decoded", "documentation_url": "https://docs.github.com/rest"}),
                );
            };
            let app = st.app.as_ref().unwrap();
            if id.parse::<u64>().ok() != Some(app.installation_id) {
                return Reply::json(404, not_found());
            }
            let token = format!(
                "ghs_{}",
                hash_hex(format!("{}{}", next_id(), Utc::now()).as_bytes())
            );
            let expires = Utc::now() + chrono::Duration::from_std(app.token_ttl).unwrap();
            let login = format!("{}[bot]", app.slug);
            st.tokens.insert(
                token.clone(),
                Token {
                    login,
                    push: true,
                    expires: Some(expires),
                    installation: true,
                },
            );
            Reply::json(
                201,
                json!({
                    "token": token, "expires_at": expires.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    "permissions": {"contents": "write", "issues": "write", "pull_requests": "write", "checks": "read", "statuses": "read", "metadata": "read"},
                    "repository_selection": "all",
                }),
            )
        }
        // https://docs.github.com/en/rest/apps/apps#get-a-repository-installation-for-the-authenticated-app
        ("GET", ["repos", o, r, "installation"]) => {
            let Caller::App = caller else {
                return Reply::json(
                    401,
                    json!({"message": "A JSON web token could not be decoded", "documentation_url": "https://docs.github.com/rest"}),
                );
            };
            let Some(repo) = st.repos.get(&format!("{o}/{r}")) else {
                return Reply::json(404, not_found());
            };
            let app = st.app.as_ref().unwrap();
            Reply::json(
                200,
                json!({
                    "id": app.installation_id, "account": author(u, &repo.owner),
                    "access_tokens_url": format!("{}/app/installations/{}/access_tokens", u.api, app.installation_id),
                    "repositories_url": format!("{}/installation/repositories", u.api),
                    "html_url": format!("{}/settings/installations/{}", u.web, app.installation_id),
                    "app_id": app.app_id.parse::<u64>().unwrap_or(0), "app_slug": app.slug,
                    "target_id": user_id(&repo.owner), "target_type": "User",
                    "permissions": {"contents": "write", "issues": "write", "pull_requests": "write", "checks": "read", "statuses": "read", "metadata": "read"},
                    "events": [], "repository_selection": "all", "single_file_name": null,
                }),
            )
        }
        (_, ["repos", o, r, rest @ ..]) => {
            if matches!(caller, Caller::App) {
                return Reply::json(
                    401,
                    json!({"message": "A JSON web token could not be decoded", "documentation_url": "https://docs.github.com/rest"}),
                );
            }
            let push = matches!(caller, Caller::Token { push: true, .. });
            let Some(repo) = st.repos.get_mut(&format!("{o}/{r}")) else {
                return Reply::json(404, not_found());
            };
            if method != "GET" && !push {
                return Reply::json(
                    403,
                    json!({"message": "Resource not accessible by personal access token", "documentation_url": "https://docs.github.com/rest"}),
                );
            }
            repo_route(repo, u, &login, push, method, rel, rest, q, body)
        }
        _ => Reply::json(404, not_found()),
    }
}

fn parse_n(s: &str) -> Option<u64> {
    s.parse().ok()
}

#[allow(clippy::too_many_arguments)]
fn repo_route(
    repo: &mut Repo,
    u: &Urls,
    login: &str,
    push: bool,
    method: &str,
    rel: &str,
    rest: &[&str],
    q: &Query,
    body: &Value,
) -> Reply {
    match (method, rest) {
        // https://docs.github.com/en/rest/repos/repos#get-a-repository
        ("GET", []) => Reply::json(200, repo.json(u, push)),
        // https://docs.github.com/en/rest/issues/labels
        ("GET", ["labels"]) => {
            let items = repo.labels.iter().map(|l| repo.label_json(u, l)).collect();
            page_reply(u, rel, q, items)
        }
        ("GET", ["labels", name]) => match repo.label_of(name) {
            Some(l) => Reply::json(200, repo.label_json(u, l)),
            None => Reply::json(404, not_found()),
        },
        ("POST", ["labels"]) => {
            let Some(name) = str_field(body, "name").filter(|n| !n.is_empty()) else {
                return Reply::json(
                    422,
                    validation(
                        json!([{"resource": "Label", "code": "missing_field", "field": "name"}]),
                    ),
                );
            };
            if repo.label_of(&name).is_some() {
                return Reply::json(
                    422,
                    validation(
                        json!([{"resource": "Label", "code": "already_exists", "field": "name"}]),
                    ),
                );
            }
            let l = Label {
                id: next_id(),
                name,
                color: str_field(body, "color")
                    .unwrap_or("ededed".into())
                    .trim_start_matches('#')
                    .to_string(),
                description: str_field(body, "description"),
                default: false,
            };
            let v = repo.label_json(u, &l);
            repo.labels.push(l);
            Reply::json(201, v)
        }
        // https://docs.github.com/en/rest/issues/issues#list-repository-issues
        ("GET", ["issues"]) => {
            let state = q.get("state").unwrap_or("open".into());
            let want: Vec<String> = q
                .get("labels")
                .map(|l| {
                    l.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            let since = q
                .get("since")
                .and_then(|s| DateTime::parse_from_rfc3339(&s).ok());
            let mut list: Vec<&Issue> = repo
                .issues
                .values()
                .filter(|i| state == "all" || i.state == state)
                .filter(|i| {
                    want.iter()
                        .all(|w| i.labels.iter().any(|l| l.eq_ignore_ascii_case(w)))
                })
                .filter(|i| since.is_none_or(|s| i.updated >= s))
                .collect();
            match q.get("sort").as_deref() {
                Some("updated") => list.sort_by_key(|i| (i.updated, i.number)),
                Some("comments") => list.sort_by_key(|i| (repo.comment_count(i.number), i.number)),
                _ => list.sort_by_key(|i| i.number),
            }
            // direction defaults to desc
            if q.get("direction").as_deref() != Some("asc") {
                list.reverse();
            }
            let items = list.iter().map(|i| repo.issue_json(u, i)).collect();
            page_reply(u, rel, q, items)
        }
        // https://docs.github.com/en/rest/issues/issues#create-an-issue
        ("POST", ["issues"]) => {
            let Some(title) = str_field(body, "title") else {
                return Reply::json(
                    422,
                    validation(
                        json!([{"resource": "Issue", "code": "missing_field", "field": "title"}]),
                    ),
                );
            };
            let labels = label_names(body)
                .iter()
                .map(|l| repo.ensure_label(l))
                .collect();
            let (n, t) = (repo.next_number(), now());
            repo.issues.insert(
                n,
                Issue {
                    id: next_id(),
                    number: n,
                    title,
                    body: str_field(body, "body"),
                    state: "open".into(),
                    state_reason: None,
                    labels,
                    user: login.into(),
                    created: t,
                    updated: t,
                    closed_at: None,
                    closed_by: None,
                    pr: None,
                },
            );
            Reply::json(201, repo.issue_json(u, &repo.issues[&n]))
        }
        // https://docs.github.com/en/rest/issues/comments#update-an-issue-comment
        ("GET" | "PATCH" | "DELETE", ["issues", "comments", id]) => {
            let Some(pos) = repo.comments.iter().position(|c| Some(c.id) == parse_n(id)) else {
                return Reply::json(404, not_found());
            };
            let issue = repo.comments[pos].issue;
            match method {
                "GET" => Reply::json(200, repo.comment_json(u, &repo.comments[pos])),
                "DELETE" => {
                    repo.comments.remove(pos);
                    repo.touch(issue);
                    Reply::empty(204)
                }
                _ => {
                    let Some(text) = str_field(body, "body") else {
                        return Reply::json(
                            422,
                            validation(
                                json!([{"resource": "IssueComment", "code": "missing_field", "field": "body"}]),
                            ),
                        );
                    };
                    let c = &mut repo.comments[pos];
                    c.body = text;
                    c.updated = now();
                    repo.touch(issue);
                    Reply::json(200, repo.comment_json(u, &repo.comments[pos]))
                }
            }
        }
        // https://docs.github.com/en/rest/issues/issues#get-an-issue
        ("GET", ["issues", n]) => match parse_n(n).and_then(|n| repo.issues.get(&n)) {
            Some(i) => Reply::json(200, repo.issue_json(u, i)),
            None => Reply::json(404, not_found()),
        },
        // https://docs.github.com/en/rest/issues/issues#update-an-issue
        ("PATCH", ["issues", n]) => {
            let Some(n) = parse_n(n).filter(|n| repo.issues.contains_key(n)) else {
                return Reply::json(404, not_found());
            };
            if body.get("labels").is_some() {
                let labels: Vec<String> = label_names(body)
                    .iter()
                    .map(|l| repo.ensure_label(l))
                    .collect();
                repo.issues.get_mut(&n).unwrap().labels = labels;
            }
            let i = repo.issues.get_mut(&n).unwrap();
            if let Some(t) = str_field(body, "title") {
                i.title = t;
            }
            if body.get("body").is_some() {
                i.body = str_field(body, "body");
            }
            let was = i.state.clone();
            match str_field(body, "state").as_deref() {
                Some("closed") if was == "open" => {
                    let reason = str_field(body, "state_reason").unwrap_or("completed".into());
                    repo.close(n, login, &reason);
                }
                Some("open") if was == "closed" => repo.reopen(n),
                Some("closed") => {
                    if let Some(reason) = str_field(body, "state_reason") {
                        repo.issues.get_mut(&n).unwrap().state_reason = Some(reason);
                    }
                }
                Some("open") | None => {}
                Some(other) => {
                    return Reply::json(
                        422,
                        validation(
                            json!([{"resource": "Issue", "code": "invalid", "field": "state", "value": other}]),
                        ),
                    );
                }
            }
            repo.touch(n);
            Reply::json(200, repo.issue_json(u, &repo.issues[&n]))
        }
        // https://docs.github.com/en/rest/issues/labels#add-labels-to-an-issue
        ("GET" | "POST" | "PUT", ["issues", n, "labels"]) => {
            let Some(n) = parse_n(n).filter(|n| repo.issues.contains_key(n)) else {
                return Reply::json(404, not_found());
            };
            if method != "GET" {
                let names: Vec<String> = label_names(body)
                    .iter()
                    .map(|l| repo.ensure_label(l))
                    .collect();
                let i = repo.issues.get_mut(&n).unwrap();
                if method == "PUT" {
                    i.labels.clear();
                }
                for name in names {
                    if !i.labels.iter().any(|l| l.eq_ignore_ascii_case(&name)) {
                        i.labels.push(name);
                    }
                }
                repo.touch(n);
            }
            let labels = repo.issues[&n]
                .labels
                .iter()
                .filter_map(|l| repo.label_of(l))
                .map(|l| repo.label_json(u, l))
                .collect();
            Reply::json(200, Value::Array(labels))
        }
        // https://docs.github.com/en/rest/issues/labels#remove-a-label-from-an-issue
        ("DELETE", ["issues", n, "labels", name]) => {
            let Some(n) = parse_n(n).filter(|n| repo.issues.contains_key(n)) else {
                return Reply::json(404, not_found());
            };
            let i = repo.issues.get_mut(&n).unwrap();
            let before = i.labels.len();
            i.labels.retain(|l| !l.eq_ignore_ascii_case(name));
            if i.labels.len() == before {
                return Reply::json(
                    404,
                    json!({"message": "Label does not exist", "documentation_url": "https://docs.github.com/rest/issues/labels#remove-a-label-from-an-issue"}),
                );
            }
            repo.touch(n);
            let labels = repo.issues[&n]
                .labels
                .iter()
                .filter_map(|l| repo.label_of(l))
                .map(|l| repo.label_json(u, l))
                .collect();
            Reply::json(200, Value::Array(labels))
        }
        // https://docs.github.com/en/rest/issues/comments#list-issue-comments
        ("GET", ["issues", n, "comments"]) => {
            let Some(n) = parse_n(n).filter(|n| repo.issues.contains_key(n)) else {
                return Reply::json(404, not_found());
            };
            let items = repo
                .comments
                .iter()
                .filter(|c| c.issue == n)
                .map(|c| repo.comment_json(u, c))
                .collect();
            page_reply(u, rel, q, items)
        }
        // https://docs.github.com/en/rest/issues/comments#create-an-issue-comment
        ("POST", ["issues", n, "comments"]) => {
            let Some(n) = parse_n(n).filter(|n| repo.issues.contains_key(n)) else {
                return Reply::json(404, not_found());
            };
            let Some(text) = str_field(body, "body") else {
                return Reply::json(
                    422,
                    validation(
                        json!([{"resource": "IssueComment", "code": "missing_field", "field": "body"}]),
                    ),
                );
            };
            let (id, t) = (next_id(), now());
            repo.comments.push(IssueComment {
                id,
                issue: n,
                user: login.into(),
                body: text,
                created: t,
                updated: t,
            });
            repo.touch(n);
            Reply::json(201, repo.comment_json(u, repo.comments.last().unwrap()))
        }
        // https://docs.github.com/en/rest/pulls/pulls#list-pull-requests
        ("GET", ["pulls"]) => {
            let state = q.get("state").unwrap_or("open".into());
            let head = q.get("head");
            let base = q.get("base");
            let mut list: Vec<&Issue> = repo
                .issues
                .values()
                .filter(|i| {
                    let Some(pr) = &i.pr else { return false };
                    (state == "all" || i.state == state)
                        && head.as_ref().is_none_or(|h| {
                            // "Filter pulls by head user or head organization and branch name
                            // in the format of user:ref-name"
                            let (owner, branch) = h.split_once(':').unwrap_or(("", h));
                            owner == pr.head_owner && branch == pr.head
                        })
                        && base.as_ref().is_none_or(|b| *b == pr.base)
                })
                .collect();
            match q.get("sort").as_deref() {
                Some("updated") => list.sort_by_key(|i| (i.updated, i.number)),
                _ => list.sort_by_key(|i| i.number),
            }
            if q.get("direction").as_deref() != Some("asc") {
                list.reverse();
            }
            let items = list.iter().map(|i| repo.pr_json(u, i, false)).collect();
            page_reply(u, rel, q, items)
        }
        // https://docs.github.com/en/rest/pulls/pulls#create-a-pull-request
        ("POST", ["pulls"]) => {
            let (Some(title), Some(head), Some(base)) = (
                str_field(body, "title"),
                str_field(body, "head"),
                str_field(body, "base"),
            ) else {
                return Reply::json(
                    422,
                    validation(
                        json!([{"resource": "PullRequest", "code": "missing_field", "field": "title, head and base"}]),
                    ),
                );
            };
            let (head_owner, branch) = match head.split_once(':') {
                Some((o, b)) => (o.to_string(), b.to_string()),
                None => (repo.owner.clone(), head.clone()),
            };
            let Some(head_sha) = repo
                .branch_sha(&branch)
                .filter(|_| head_owner == repo.owner)
            else {
                return Reply::json(
                    422,
                    validation(
                        json!([{"resource": "PullRequest", "field": "head", "code": "invalid"}]),
                    ),
                );
            };
            let Some(base_sha) = repo.branch_sha(&base) else {
                return Reply::json(
                    422,
                    validation(
                        json!([{"resource": "PullRequest", "field": "base", "code": "invalid"}]),
                    ),
                );
            };
            let exists = repo.issues.values().any(|i| {
                i.state == "open"
                    && i.pr.as_ref().is_some_and(|p| {
                        p.head == branch && p.head_owner == head_owner && p.base == base
                    })
            });
            if exists {
                return Reply::json(
                    422,
                    validation(json!([{"resource": "PullRequest", "code": "custom",
                        "message": format!("A pull request already exists for {head_owner}:{branch}.")}])),
                );
            }
            if git(
                &repo.path,
                &["merge-base", "--is-ancestor", &head_sha, &base_sha],
            )
            .is_ok()
            {
                return Reply::json(
                    422,
                    validation(json!([{"resource": "PullRequest", "code": "custom",
                        "message": format!("No commits between {base} and {branch}")}])),
                );
            }
            let (n, t) = (repo.next_number(), now());
            repo.issues.insert(
                n,
                Issue {
                    id: next_id(),
                    number: n,
                    title,
                    body: str_field(body, "body"),
                    state: "open".into(),
                    state_reason: None,
                    labels: Vec::new(),
                    user: login.into(),
                    created: t,
                    updated: t,
                    closed_at: None,
                    closed_by: None,
                    pr: Some(Pr {
                        id: next_id(),
                        head: branch,
                        head_owner,
                        base,
                        draft: body["draft"].as_bool().unwrap_or(false),
                        head_sha_at_open: head_sha,
                        merged_at: None,
                        merged_by: None,
                        merge_commit_sha: None,
                    }),
                },
            );
            Reply::json(201, repo.pr_json(u, &repo.issues[&n], true))
        }
        // https://docs.github.com/en/rest/pulls/pulls#get-a-pull-request
        ("GET", ["pulls", n]) => match parse_n(n)
            .and_then(|n| repo.issues.get(&n))
            .filter(|i| i.pr.is_some())
        {
            Some(i) => Reply::json(200, repo.pr_json(u, i, true)),
            None => Reply::json(404, not_found()),
        },
        // https://docs.github.com/en/rest/pulls/pulls#update-a-pull-request
        ("PATCH", ["pulls", n]) => {
            let Some(n) = parse_n(n).filter(|n| repo.issues.get(n).is_some_and(|i| i.pr.is_some()))
            else {
                return Reply::json(404, not_found());
            };
            let i = repo.issues.get_mut(&n).unwrap();
            if let Some(t) = str_field(body, "title") {
                i.title = t;
            }
            if body.get("body").is_some() {
                i.body = str_field(body, "body");
            }
            if let Some(b) = str_field(body, "base") {
                i.pr.as_mut().unwrap().base = b;
            }
            let (was, merged) = (i.state.clone(), i.pr.as_ref().unwrap().merged_at.is_some());
            match str_field(body, "state").as_deref() {
                Some("closed") if was == "open" => repo.close(n, login, "completed"),
                Some("open") if was == "closed" && !merged => repo.reopen(n),
                Some("open") if merged => {
                    return Reply::json(
                        422,
                        validation(
                            json!([{"resource": "PullRequest", "code": "custom", "message": "state cannot be changed. The pull request has already been merged."}]),
                        ),
                    );
                }
                _ => {}
            }
            repo.touch(n);
            Reply::json(200, repo.pr_json(u, &repo.issues[&n], true))
        }
        // https://docs.github.com/en/rest/pulls/pulls#check-if-a-pull-request-has-been-merged
        ("GET", ["pulls", n, "merge"]) => {
            let merged = parse_n(n)
                .and_then(|n| repo.issues.get(&n))
                .and_then(|i| i.pr.as_ref())
                .is_some_and(|p| p.merged_at.is_some());
            if merged {
                Reply::empty(204)
            } else {
                Reply::json(404, not_found())
            }
        }
        // https://docs.github.com/en/rest/pulls/pulls#merge-a-pull-request
        ("PUT", ["pulls", n, "merge"]) => {
            let Some(n) = parse_n(n) else {
                return Reply::json(404, not_found());
            };
            let method = str_field(body, "merge_method").unwrap_or("merge".into());
            let sha = str_field(body, "sha");
            let title = str_field(body, "commit_title");
            let message = str_field(body, "commit_message");
            match repo.merge(
                n,
                login,
                &method,
                sha.as_deref(),
                title.as_deref(),
                message.as_deref(),
            ) {
                Ok(sha) => Reply::json(
                    200,
                    json!({"sha": sha, "merged": true, "message": "Pull Request successfully merged"}),
                ),
                Err((status, e)) => Reply::json(status, e),
            }
        }
        // https://docs.github.com/en/rest/pulls/reviews#list-reviews-for-a-pull-request
        ("GET", ["pulls", n, "reviews"]) => {
            let Some(n) = parse_n(n).filter(|n| repo.issues.get(n).is_some_and(|i| i.pr.is_some()))
            else {
                return Reply::json(404, not_found());
            };
            let items = repo
                .reviews
                .iter()
                .filter(|r| r.pr == n)
                .map(|r| repo.review_json(u, r))
                .collect();
            page_reply(u, rel, q, items)
        }
        // https://docs.github.com/en/rest/pulls/comments#list-review-comments-on-a-pull-request
        ("GET", ["pulls", n, "comments"]) => {
            let Some(n) = parse_n(n).filter(|n| repo.issues.get(n).is_some_and(|i| i.pr.is_some()))
            else {
                return Reply::json(404, not_found());
            };
            let items = repo
                .review_comments
                .iter()
                .filter(|c| c.pr == n)
                .map(|c| repo.review_comment_json(u, c))
                .collect();
            page_reply(u, rel, q, items)
        }
        // https://docs.github.com/en/rest/pulls/comments#create-a-reply-for-a-review-comment
        // ("Replies to replies are not supported": a reply points at the thread's first comment.)
        ("POST", ["pulls", n, "comments", id, "replies"]) => {
            let n = parse_n(n).unwrap_or(0);
            let Some(parent) = repo
                .review_comments
                .iter()
                .find(|c| Some(c.id) == parse_n(id) && c.pr == n)
            else {
                return Reply::json(404, not_found());
            };
            let Some(text) = str_field(body, "body") else {
                return Reply::json(
                    422,
                    validation(
                        json!([{"resource": "PullRequestReviewComment", "code": "missing_field", "field": "body"}]),
                    ),
                );
            };
            let (root, path, line) = (
                parent.in_reply_to.unwrap_or(parent.id),
                parent.path.clone(),
                parent.line,
            );
            let id = add_review_comment(repo, n, login, &path, line, &text, Some(root));
            let c = repo.review_comments.iter().find(|c| c.id == id).unwrap();
            Reply::json(201, repo.review_comment_json(u, c))
        }
        // https://docs.github.com/en/rest/checks/runs#list-check-runs-for-a-git-reference
        ("GET", ["commits", reference, "check-runs"]) => {
            let Some(sha) = repo.resolve(reference) else {
                return Reply::json(
                    422,
                    json!({"message": format!("No commit found for SHA: {reference}")}),
                );
            };
            let filter = q.get("filter").unwrap_or("latest".into());
            let name = q.get("check_name");
            let status = q.get("status");
            let mut runs: Vec<&CheckRun> = repo
                .check_runs
                .iter()
                .filter(|c| c.sha == sha)
                .filter(|c| name.as_ref().is_none_or(|n| *n == c.name))
                .filter(|c| {
                    status
                        .as_deref()
                        .is_none_or(|s| (s == "completed") == c.conclusion.is_some())
                })
                .collect();
            runs.sort_by_key(|c| std::cmp::Reverse(c.id));
            // filter=latest (the default): "the most recent check runs", one per name.
            if filter != "all" {
                let mut seen = Vec::new();
                runs.retain(|c| {
                    let first = !seen.contains(&c.name);
                    seen.push(c.name.clone());
                    first
                });
            }
            let total = runs.len();
            let items = runs.iter().map(|c| repo.check_run_json(u, c)).collect();
            let (items, link) = paginate(u, rel, q, items);
            let reply = Reply::json(200, json!({"total_count": total, "check_runs": items}));
            match link {
                Some(l) => reply.header("Link", &l),
                None => reply,
            }
        }
        // https://docs.github.com/en/rest/commits/statuses#get-the-combined-status-for-a-specific-reference
        // The latest status per context counts; the state is failure if any is error or
        // failure, pending if there are none or any is pending, success otherwise.
        ("GET", ["commits", reference, "status"]) => {
            let Some(sha) = repo.resolve(reference) else {
                return Reply::json(
                    422,
                    json!({"message": format!("No commit found for SHA: {reference}")}),
                );
            };
            let mut latest: Vec<&CommitStatus> = Vec::new();
            for s in repo.statuses.iter().filter(|s| s.sha == sha).rev() {
                if !latest.iter().any(|l| l.context == s.context) {
                    latest.push(s);
                }
            }
            let state = if latest
                .iter()
                .any(|s| s.state == "error" || s.state == "failure")
            {
                "failure"
            } else if latest.is_empty() || latest.iter().any(|s| s.state == "pending") {
                "pending"
            } else {
                "success"
            };
            let statuses: Vec<Value> = latest.iter().map(|s| repo.status_json(u, s)).collect();
            Reply::json(
                200,
                json!({
                    "state": state, "sha": sha, "total_count": statuses.len(), "statuses": statuses,
                    "repository": repo.json(u, push),
                    "commit_url": format!("{}/commits/{sha}", repo.api(u)),
                    "url": format!("{}/commits/{sha}/status", repo.api(u)),
                }),
            )
        }
        _ => Reply::json(404, not_found()),
    }
}

/// Git smart HTTP through `git http-backend` as a CGI
/// (https://git-scm.com/docs/git-http-backend), with GitHub's Basic auth: any username, a
/// token as the password (https://docs.github.com/en/get-started/git-basics/about-remote-repositories#cloning-with-https-urls).
fn git_http(
    request: tiny_http::Request,
    state: &Mutex<State>,
    method: &str,
    url: &str,
    body: Vec<u8>,
) {
    let path = url.split('?').next().unwrap_or("").to_string();
    let query = url
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .to_string();
    let (repo_part, _) = path.split_once(".git/").unwrap();
    let key = repo_part.trim_start_matches('/').to_string();
    let pushing = path.ends_with("/git-receive-pack") || query.contains("service=git-receive-pack");
    let basic = header(&request, "Authorization").and_then(|h| {
        let (scheme, b64) = h.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?;
        let raw = String::from_utf8(raw).ok()?;
        raw.split_once(':').map(|(_, p)| p.to_string())
    });
    let (root, who, exists) = {
        let st = state.lock().unwrap();
        let who = basic.and_then(|t| {
            st.tokens
                .get(&t)
                .filter(|tok| tok.expires.is_none_or(|e| Utc::now() < e))
                .map(|tok| (tok.login.clone(), tok.push))
        });
        (st.root.clone(), who, st.repos.contains_key(&key))
    };
    let record = |status: u16, user: Option<String>| {
        state.lock().unwrap().git_requests.push(GitReq {
            method: method.into(),
            path_and_query: url.into(),
            status,
            authorized: user.is_some(),
            user,
        });
    };
    let text = |s: &str| -> Vec<(String, String)> { vec![("Content-Type".into(), s.into())] };
    let Some((login, can_push)) = who else {
        record(401, None);
        let mut h = text("text/plain");
        h.push(("WWW-Authenticate".into(), "Basic realm=\"GitHub\"".into()));
        return send(request, 401, &h, b"Invalid username or token.\n".to_vec());
    };
    if !exists {
        record(404, Some(login));
        return send(
            request,
            404,
            &text("text/plain"),
            b"Repository not found.\n".to_vec(),
        );
    }
    if pushing && !can_push {
        record(403, Some(login.clone()));
        let msg = format!("Permission to {key}.git denied to {login}.\n");
        return send(request, 403, &text("text/plain"), msg.into_bytes());
    }
    let mut cmd = Command::new("git");
    git_env(&mut cmd)
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", &path)
        .env("REQUEST_METHOD", method)
        .env("QUERY_STRING", &query)
        .env(
            "CONTENT_TYPE",
            header(&request, "Content-Type").unwrap_or_default(),
        )
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", &login)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(enc) = header(&request, "Content-Encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    if let Some(proto) = header(&request, "Git-Protocol") {
        cmd.env("HTTP_GIT_PROTOCOL", proto);
    }
    let out = cmd.spawn().and_then(|mut child| {
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&body);
        });
        let out = child.wait_with_output();
        let _ = writer.join();
        out
    });
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            record(500, Some(login));
            let msg = format!("fake GitHub: running git http-backend: {e}\n");
            return send(request, 500, &text("text/plain"), msg.into_bytes());
        }
    };
    // CGI output: headers, a blank line, the body; `Status:` sets the code.
    let raw = out.stdout;
    let (head_end, sep) = match (find(&raw, b"\r\n\r\n"), find(&raw, b"\n\n")) {
        (Some(a), Some(b)) if b < a => (b, 2),
        (Some(a), _) => (a, 4),
        (None, Some(b)) => (b, 2),
        (None, None) => (raw.len(), 0),
    };
    let mut status = 200;
    let mut headers = Vec::new();
    for line in String::from_utf8_lossy(&raw[..head_end]).lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("Status") {
            status = v
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
        } else {
            headers.push((k.trim().to_string(), v.to_string()));
        }
    }
    let body = raw[(head_end + sep).min(raw.len())..].to_vec();
    if path.ends_with("/git-receive-pack") {
        let refused = refused_refs(&body);
        if !refused.is_empty() {
            let mut st = state.lock().unwrap();
            for (refname, reason) in refused {
                st.forced.push(ForcedPush {
                    refname,
                    reason,
                    user: Some(login.clone()),
                });
            }
        }
    }
    record(status, Some(login));
    send(request, status, &headers, body);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The refs receive-pack's report-status refused ("ng <ref> <reason>") for being forced:
/// non-fast-forward updates and deletions.
fn refused_refs(report: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(report);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(i) = rest.find("ng refs/") {
        let line: String = rest[i + 3..]
            .chars()
            .take_while(|c| *c != '\n' && *c != '\0')
            .collect();
        rest = &rest[i + 3..];
        let (refname, reason) = line.split_once(' ').unwrap_or((&line, ""));
        if reason.contains("non-fast-forward") || reason.contains("deletion") {
            out.push((refname.to_string(), reason.trim().to_string()));
        }
    }
    out
}
