//! Tests of the fake GitHub itself (tests/common/fake_github.rs), driven with plain HTTP (curl)
//! and git, so the behaviour cwo's GitHub client is tested against is pinned down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::common::fake_github::FakeGithub;
use crate::common::git;

const TOKEN: &str = "ghp_test_token";

struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn h(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
}

/// One request with curl: `headers` like "If-None-Match: x"; `body` as JSON when given.
fn call(method: &str, url: &str, headers: &[&str], body: Option<Value>) -> Resp {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-i", "-X", method, url]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(b.to_string());
    }
    let out = cmd.output().expect("run curl");
    assert!(out.status.success(), "curl {method} {url} failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status: status.parse().unwrap(),
        headers,
        body: body.to_string(),
    }
}

fn get(fake: &FakeGithub, path: &str) -> Resp {
    call(
        "GET",
        &format!("{}{path}", fake.api_url()),
        &[&format!("Authorization: Bearer {TOKEN}")],
        None,
    )
}

fn send(fake: &FakeGithub, method: &str, path: &str, body: Value) -> Resp {
    call(
        method,
        &format!("{}{path}", fake.api_url()),
        &[&format!("Authorization: token {TOKEN}")],
        Some(body),
    )
}

/// A work tree with one commit on main.
fn seed(dir: &Path) -> PathBuf {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README.md"), "hello\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-q", "-m", "first"]);
    work
}

fn started(dir: &Path) -> (FakeGithub, PathBuf) {
    let fake = FakeGithub::start(TOKEN, "cwo-bot");
    let work = seed(dir);
    fake.create_repo("acme", "widgets", &work);
    (fake, work)
}

/// git with a credential helper answering `token` (none when None), never prompting.
fn git_with(dir: &Path, token: Option<&str>, args: &[&str]) -> Output {
    let helper = match token {
        Some(t) => format!("!f() {{ echo username=x-access-token; echo password={t}; }}; f"),
        None => String::new(),
    };
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "credential.helper=", "-c"])
        .arg(format!("credential.helper={helper}"))
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_ASKPASS")
        .env_remove("SSH_ASKPASS")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .unwrap()
}

fn commit_on_branch(work: &Path, branch: &str, file: &str) -> String {
    git(work, &["checkout", "-q", "-B", branch]);
    std::fs::write(work.join(file), format!("{file}\n")).unwrap();
    git(work, &["add", "."]);
    git(work, &["commit", "-q", "-m", &format!("add {file}")]);
    git(work, &["rev-parse", "HEAD"])
}

#[test]
fn auth_is_required_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let (fake, _) = started(tmp.path());
    let none = call("GET", &format!("{}/user", fake.api_url()), &[], None);
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["message"], "Requires authentication");
    let wrong = call(
        "GET",
        &format!("{}/user", fake.api_url()),
        &["Authorization: Bearer nope"],
        None,
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["message"], "Bad credentials");
    let me = get(&fake, "/user");
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["login"], "cwo-bot");
    assert_eq!(me.json()["type"], "User");
    assert_eq!(me.h("x-oauth-scopes"), "repo");
    assert_eq!(get(&fake, "/repos/acme/nothing").status, 404);
    let repo = get(&fake, "/repos/acme/widgets").json();
    assert_eq!(repo["full_name"], "acme/widgets");
    assert_eq!(repo["default_branch"], "main");
    assert_eq!(repo["permissions"]["push"], true);
    // A read-only token reads but cannot write.
    fake.add_token("ro", "reader", false);
    let n = fake.add_issue("t", "", &[]);
    let ro = |m: &str, p: &str, b: Option<Value>| {
        call(
            m,
            &format!("{}{p}", fake.api_url()),
            &["Authorization: Bearer ro"],
            b,
        )
    };
    assert_eq!(
        ro("GET", "/repos/acme/widgets", None).json()["permissions"]["push"],
        false
    );
    let refused = ro(
        "POST",
        &format!("/repos/acme/widgets/issues/{n}/comments"),
        Some(json!({"body": "hi"})),
    );
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.json()["message"],
        "Resource not accessible by personal access token"
    );
    let reqs = fake.requests();
    assert!(!reqs[0].authorized && reqs[0].status == 401);
    assert!(reqs[2].authorized);
}

#[test]
fn etag_answers_304_without_rate_cost_and_changes_with_the_resource() {
    let tmp = tempfile::tempdir().unwrap();
    let (fake, _) = started(tmp.path());
    let n = fake.add_issue("Fix the thing", "details", &["cwo"]);
    let path = format!("/repos/acme/widgets/issues/{n}");
    let first = get(&fake, &path);
    assert_eq!(first.status, 200);
    let etag = first.h("etag").to_string();
    assert!(etag.starts_with("W/\""), "{etag}");
    let remaining: u64 = first.h("x-ratelimit-remaining").parse().unwrap();
    assert_eq!(fake.rate_points_used(), 1);

    let url = format!("{}{path}", fake.api_url());
    let auth = format!("Authorization: Bearer {TOKEN}");
    let cond = call(
        "GET",
        &url,
        &[&auth, &format!("If-None-Match: {etag}")],
        None,
    );
    assert_eq!(cond.status, 304);
    assert!(cond.body.is_empty());
    assert_eq!(cond.h("x-ratelimit-remaining"), remaining.to_string());
    assert_eq!(fake.rate_points_used(), 1);
    let last = fake.requests().pop().unwrap();
    assert!(last.conditional && last.status == 304);

    // A comment changes the issue (its count, its updated_at): a new ETag, a full answer.
    fake.add_comment(n, "alice", "me too");
    let changed = call(
        "GET",
        &url,
        &[&auth, &format!("If-None-Match: {etag}")],
        None,
    );
    assert_eq!(changed.status, 200);
    assert_ne!(changed.h("etag"), etag);
    assert_eq!(changed.json()["comments"], 1);
    assert_eq!(fake.rate_points_used(), 2);
    // /rate_limit does not count.
    let rl = get(&fake, "/rate_limit").json();
    assert_eq!(rl["resources"]["core"]["used"], 2);
    assert_eq!(fake.rate_points_used(), 2);
}

#[test]
fn lists_paginate_with_link_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let (fake, _) = started(tmp.path());
    for i in 0..5 {
        fake.add_issue(&format!("issue {i}"), "", &["cwo"]);
    }
    let p1 = get(
        &fake,
        "/repos/acme/widgets/issues?labels=cwo&per_page=2&direction=asc",
    );
    let numbers: Vec<u64> = p1
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2]);
    let link = p1.h("link");
    let base = format!(
        "{}/repos/acme/widgets/issues?labels=cwo&per_page=2&direction=asc",
        fake.api_url()
    );
    assert!(
        link.contains(&format!("<{base}&page=2>; rel=\"next\"")),
        "{link}"
    );
    assert!(
        link.contains(&format!("<{base}&page=3>; rel=\"last\"")),
        "{link}"
    );
    let p3 = get(
        &fake,
        "/repos/acme/widgets/issues?labels=cwo&per_page=2&direction=asc&page=3",
    );
    assert_eq!(p3.json().as_array().unwrap().len(), 1);
    let link = p3.h("link");
    assert!(
        link.contains("rel=\"prev\"")
            && link.contains("rel=\"first\"")
            && !link.contains("rel=\"next\""),
        "{link}"
    );
    // Default: 30 a page, newest first, no Link header when it all fits.
    let all = get(&fake, "/repos/acme/widgets/issues");
    assert!(!all.headers.contains_key("link"));
    assert_eq!(all.json()[0]["number"], 5);
    // GitHub's nine default labels plus "cwo".
    assert_eq!(
        get(&fake, "/repos/acme/widgets/labels?per_page=100")
            .json()
            .as_array()
            .unwrap()
            .len(),
        10
    );
}

#[test]
fn labels_and_comments_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let (fake, _) = started(tmp.path());
    let made = send(
        &fake,
        "POST",
        "/repos/acme/widgets/labels",
        json!({"name": "cwo", "color": "00ff00"}),
    );
    assert_eq!(made.status, 201);
    let again = send(
        &fake,
        "POST",
        "/repos/acme/widgets/labels",
        json!({"name": "cwo", "color": "00ff00"}),
    );
    assert_eq!(again.status, 422);
    assert_eq!(again.json()["errors"][0]["code"], "already_exists");
    assert_eq!(get(&fake, "/repos/acme/widgets/labels/nope").status, 404);
    let n = fake.add_issue("t", "b", &[]);
    let before = fake.issue(n)["updated_at"].clone();
    let added = send(
        &fake,
        "POST",
        &format!("/repos/acme/widgets/issues/{n}/labels"),
        json!({"labels": ["cwo", "cwo:doing"]}),
    );
    assert_eq!(added.status, 200);
    assert_eq!(added.json().as_array().unwrap().len(), 2);
    assert_eq!(
        get(&fake, "/repos/acme/widgets/labels/cwo:doing").status,
        200
    );
    let gone = call(
        "DELETE",
        &format!(
            "{}/repos/acme/widgets/issues/{n}/labels/cwo%3Adoing",
            fake.api_url()
        ),
        &[&format!("Authorization: Bearer {TOKEN}")],
        None,
    );
    assert_eq!(gone.status, 200);
    assert_eq!(gone.json()[0]["name"], "cwo");
    let missing = call(
        "DELETE",
        &format!(
            "{}/repos/acme/widgets/issues/{n}/labels/cwo%3Adoing",
            fake.api_url()
        ),
        &[&format!("Authorization: Bearer {TOKEN}")],
        None,
    );
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["message"], "Label does not exist");
    let c = send(
        &fake,
        "POST",
        &format!("/repos/acme/widgets/issues/{n}/comments"),
        json!({"body": "working on it"}),
    );
    assert_eq!(c.status, 201);
    assert_eq!(c.json()["user"]["login"], "cwo-bot");
    let id = c.json()["id"].as_u64().unwrap();
    let edited = send(
        &fake,
        "PATCH",
        &format!("/repos/acme/widgets/issues/comments/{id}"),
        json!({"body": "done"}),
    );
    assert_eq!(edited.json()["body"], "done");
    assert_eq!(fake.comments(n)[0]["body"], "done");
    let del = call(
        "DELETE",
        &format!("{}/repos/acme/widgets/issues/comments/{id}", fake.api_url()),
        &[&format!("Authorization: Bearer {TOKEN}")],
        None,
    );
    assert_eq!(del.status, 204);
    assert_eq!(fake.comments(n), json!([]));
    let closed = send(
        &fake,
        "PATCH",
        &format!("/repos/acme/widgets/issues/{n}"),
        json!({"state": "closed", "state_reason": "not_planned"}),
    );
    assert_eq!(closed.json()["state"], "closed");
    assert_eq!(closed.json()["state_reason"], "not_planned");
    assert_eq!(closed.json()["closed_by"]["login"], "cwo-bot");
    assert!(fake.issue(n)["updated_at"].as_str() >= before.as_str());
}

#[test]
fn pull_requests_share_numbers_with_issues_and_merging_closes_referenced_issues() {
    let tmp = tempfile::tempdir().unwrap();
    let (fake, work) = started(tmp.path());
    let n = fake.add_issue("Add a feature", "please", &["cwo"]);
    let other = fake.add_issue("Unrelated", "", &[]);
    let no_branch = send(
        &fake,
        "POST",
        "/repos/acme/widgets/pulls",
        json!({"title": "x", "head": "feature", "base": "main"}),
    );
    assert_eq!(no_branch.status, 422);
    let head = commit_on_branch(&work, "feature", "feature.txt");
    let bare = fake.repo_path("acme", "widgets");
    git(&work, &["push", "-q", bare.to_str().unwrap(), "feature"]);
    let made = send(
        &fake,
        "POST",
        "/repos/acme/widgets/pulls",
        json!({"title": "Add a feature", "head": "acme:feature", "base": "main", "body": format!("Does it.\n\nfixes #{n}")}),
    );
    assert_eq!(made.status, 201, "{}", made.body);
    let pr = made.json();
    assert_eq!(pr["number"], other + 1);
    assert_eq!(pr["head"]["sha"], head.as_str());
    assert_eq!(pr["head"]["label"], "acme:feature");
    let dup = send(
        &fake,
        "POST",
        "/repos/acme/widgets/pulls",
        json!({"title": "again", "head": "feature", "base": "main"}),
    );
    assert_eq!(dup.status, 422);
    assert_eq!(
        dup.json()["errors"][0]["message"],
        "A pull request already exists for acme:feature."
    );
    let pr_n = pr["number"].as_u64().unwrap();

    let issues = get(&fake, "/repos/acme/widgets/issues?state=all").json();
    let as_issue = issues
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["number"] == pr_n)
        .unwrap();
    assert!(as_issue["pull_request"]["url"].is_string());
    assert!(
        issues
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["number"] != pr_n)
            .all(|i| i.get("pull_request").is_none())
    );
    let listed = get(
        &fake,
        "/repos/acme/widgets/pulls?head=acme:feature&state=open",
    )
    .json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(
        listed[0].get("merged").is_none(),
        "the list shape has no `merged`"
    );
    assert!(
        get(&fake, "/repos/acme/widgets/pulls?head=acme:other")
            .json()
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A later push moves head.sha.
    let head2 = commit_on_branch(&work, "feature", "more.txt");
    git(&work, &["push", "-q", bare.to_str().unwrap(), "feature"]);
    assert_eq!(
        get(&fake, &format!("/repos/acme/widgets/pulls/{pr_n}")).json()["head"]["sha"],
        head2.as_str()
    );
    let stale = send(
        &fake,
        "PUT",
        &format!("/repos/acme/widgets/pulls/{pr_n}/merge"),
        json!({"sha": head}),
    );
    assert_eq!(stale.status, 409);

    let merged = send(
        &fake,
        "PUT",
        &format!("/repos/acme/widgets/pulls/{pr_n}/merge"),
        json!({}),
    );
    assert_eq!(merged.status, 200, "{}", merged.body);
    let sha = merged.json()["sha"].as_str().unwrap().to_string();
    assert_eq!(fake.branch_sha("main").unwrap(), sha);
    let parents = git(&bare, &["rev-list", "--parents", "-n", "1", &sha]);
    assert_eq!(
        parents.split_whitespace().count(),
        3,
        "a merge commit: {parents}"
    );
    let pull = fake.pull(pr_n);
    assert_eq!(
        (pull["merged"].clone(), pull["state"].clone()),
        (json!(true), json!("closed"))
    );
    assert_eq!(pull["merged_by"]["login"], "cwo-bot");
    let issue = fake.issue(n);
    assert_eq!(
        (issue["state"].clone(), issue["state_reason"].clone()),
        (json!("closed"), json!("completed"))
    );
    assert_eq!(fake.issue(other)["state"], "open");
    let again = send(
        &fake,
        "PUT",
        &format!("/repos/acme/widgets/pulls/{pr_n}/merge"),
        json!({}),
    );
    assert_eq!(again.status, 405);
}

#[test]
fn reviews_review_comments_checks_and_statuses() {
    let tmp = tempfile::tempdir().unwrap();
    let (fake, work) = started(tmp.path());
    commit_on_branch(&work, "feature", "f.txt");
    git(
        &work,
        &[
            "push",
            "-q",
            fake.repo_path("acme", "widgets").to_str().unwrap(),
            "feature",
        ],
    );
    let pr = send(
        &fake,
        "POST",
        "/repos/acme/widgets/pulls",
        json!({"title": "t", "head": "feature", "base": "main"}),
    )
    .json()["number"]
        .as_u64()
        .unwrap();
    fake.add_review(pr, "alice", "CHANGES_REQUESTED", "not yet");
    let c = fake.add_review_comment(pr, "alice", "f.txt", 1, "rename this");
    let reviews = get(&fake, &format!("/repos/acme/widgets/pulls/{pr}/reviews")).json();
    let states: Vec<&str> = reviews
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["CHANGES_REQUESTED", "COMMENTED"],
        "a lone review comment comes with its own review"
    );
    let reply = send(
        &fake,
        "POST",
        &format!("/repos/acme/widgets/pulls/{pr}/comments/{c}/replies"),
        json!({"body": "done"}),
    );
    assert_eq!(reply.status, 201);
    assert_eq!(reply.json()["in_reply_to_id"], c);
    let comments = get(&fake, &format!("/repos/acme/widgets/pulls/{pr}/comments")).json();
    assert_eq!(comments.as_array().unwrap().len(), 2);
    assert!(comments[0].get("in_reply_to_id").is_none());
    assert_eq!(comments[0]["path"], "f.txt");

    fake.add_check_run("feature", "test", Some("failure"), "1 failed");
    fake.add_check_run("feature", "test", Some("success"), "all passed");
    fake.add_check_run("feature", "lint", None, "");
    let runs = get(&fake, "/repos/acme/widgets/commits/feature/check-runs").json();
    assert_eq!(runs["total_count"], 2, "latest per name: {runs}");
    let test = runs["check_runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "test")
        .unwrap();
    assert_eq!(
        (test["conclusion"].clone(), test["output"]["text"].clone()),
        (json!("success"), json!("all passed"))
    );
    assert_eq!(
        get(
            &fake,
            "/repos/acme/widgets/commits/feature/check-runs?filter=all"
        )
        .json()["total_count"],
        3
    );

    let none = get(&fake, "/repos/acme/widgets/commits/feature/status").json();
    assert_eq!(
        (none["state"].clone(), none["total_count"].clone()),
        (json!("pending"), json!(0))
    );
    fake.add_status("feature", "ci/build", "failure", "broke");
    fake.add_status("feature", "ci/build", "success", "fixed");
    let sha = fake.branch_sha("feature").unwrap();
    let combined = get(&fake, &format!("/repos/acme/widgets/commits/{sha}/status")).json();
    assert_eq!(
        (combined["state"].clone(), combined["total_count"].clone()),
        (json!("success"), json!(1))
    );
    fake.add_status("feature", "ci/e2e", "error", "timeout");
    assert_eq!(
        get(&fake, "/repos/acme/widgets/commits/feature/status").json()["state"],
        "failure"
    );
    assert_eq!(
        get(&fake, "/repos/acme/widgets/commits/nope/status").status,
        422
    );
}

#[test]
fn git_push_through_http_backend_needs_a_token_and_refuses_forced_pushes() {
    let tmp = tempfile::tempdir().unwrap();
    let (fake, _) = started(tmp.path());
    let url = fake.git_url("acme", "widgets");
    let refused = git_with(tmp.path(), None, &["clone", "-q", &url, "anon"]);
    assert!(!refused.status.success());
    let last = fake.git_requests().pop().unwrap();
    assert_eq!((last.status, last.authorized), (401, false));

    let out = git_with(tmp.path(), Some(TOKEN), &["clone", "-q", &url, "clone"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clone = tmp.path().join("clone");
    let sha = commit_on_branch(&clone, "cwo/task-1", "work.txt");
    let pushed = git_with(&clone, Some(TOKEN), &["push", "-q", "origin", "cwo/task-1"]);
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    assert_eq!(fake.branch_sha("cwo/task-1").unwrap(), sha);
    assert!(
        fake.git_requests()
            .iter()
            .any(|r| r.user.as_deref() == Some("cwo-bot")
                && r.path_and_query.ends_with("git-receive-pack"))
    );

    // A read-only token fetches but may not push.
    fake.add_token("ro", "reader", false);
    let ro = git_with(
        &clone,
        Some("ro"),
        &["push", "-q", "origin", "HEAD:refs/heads/other"],
    );
    assert!(!ro.status.success());
    assert!(fake.branch_sha("other").is_none());

    // Rewriting the pushed branch is refused and recorded.
    git(&clone, &["commit", "-q", "--amend", "-m", "rewritten"]);
    let forced = git_with(
        &clone,
        Some(TOKEN),
        &["push", "-q", "--force", "origin", "cwo/task-1"],
    );
    assert!(!forced.status.success());
    assert_eq!(fake.branch_sha("cwo/task-1").unwrap(), sha);
    let attempts = fake.forced_push_attempts();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].refname, "refs/heads/cwo/task-1");
    assert_eq!(attempts[0].user.as_deref(), Some("cwo-bot"));
}

#[test]
fn rate_limit_exhaustion_refills_after_reset() {
    let tmp = tempfile::tempdir().unwrap();
    let (fake, _) = started(tmp.path());
    fake.set_rate_limit(2, Duration::from_secs(1));
    assert_eq!(
        get(&fake, "/repos/acme/widgets").h("x-ratelimit-remaining"),
        "1"
    );
    assert_eq!(
        get(&fake, "/repos/acme/widgets").h("x-ratelimit-remaining"),
        "0"
    );
    let over = get(&fake, "/repos/acme/widgets");
    assert_eq!(over.status, 403);
    assert_eq!(over.h("x-ratelimit-remaining"), "0");
    assert!(
        over.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("API rate limit exceeded for user ID")
    );
    assert_eq!(fake.rate_points_used(), 2);
    // Past the reset time the window refills.
    std::thread::sleep(Duration::from_millis(1100));
    let again = get(&fake, "/repos/acme/widgets");
    assert_eq!(again.status, 200);
    assert_eq!(again.h("x-ratelimit-remaining"), "1");
}

#[test]
fn injected_faults_and_secondary_limits_answer_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (fake, _) = started(tmp.path());
    fake.fail_next("GET /api/v3/repos/acme/widgets/issues", 503);
    let failed = get(&fake, "/repos/acme/widgets/issues");
    assert_eq!(failed.status, 503);
    assert!(failed.body.contains("<html>"));
    assert!(failed.h("content-type").starts_with("text/html"));
    assert_eq!(get(&fake, "/repos/acme/widgets/issues").status, 200);
    fake.secondary_limit(7);
    let limited = get(&fake, "/repos/acme/widgets/issues");
    assert_eq!(limited.status, 403);
    assert_eq!(limited.h("retry-after"), "7");
    assert!(
        limited.json()["message"]
            .as_str()
            .unwrap()
            .contains("secondary rate limit")
    );
    assert_eq!(get(&fake, "/repos/acme/widgets/issues").status, 200);
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 200, 403, 200]);
    assert_eq!(fake.rate_points_used(), 2);
}

/// An unsigned JWT with these claims (the fake decodes, it does not verify).
fn jwt(claims: Value) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": "RS256", "typ": "JWT"})),
        b64(&claims)
    )
}

#[test]
fn a_github_app_mints_installation_tokens_that_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let (fake, _) = started(tmp.path());
    fake.enable_app("4242", 77, "cwo-app", Duration::from_secs(3600));
    let now = chrono::Utc::now().timestamp();
    let app = |claims: Value, method: &str, path: &str| {
        call(
            method,
            &format!("{}{path}", fake.api_url()),
            &[&format!("Authorization: Bearer {}", jwt(claims))],
            Some(json!({})),
        )
    };
    let good = json!({"iss": 4242, "iat": now - 60, "exp": now + 540});
    let inst = app(good.clone(), "GET", "/repos/acme/widgets/installation");
    assert_eq!(inst.status, 200, "{}", inst.body);
    assert_eq!(inst.json()["id"], 77);
    let far = app(
        json!({"iss": "4242", "iat": now, "exp": now + 3600}),
        "GET",
        "/repos/acme/widgets/installation",
    );
    assert_eq!(far.status, 401);
    assert!(
        far.json()["message"]
            .as_str()
            .unwrap()
            .contains("too far in the future")
    );
    assert_eq!(
        app(
            json!({"iss": 1, "iat": now, "exp": now + 60}),
            "GET",
            "/repos/acme/widgets/installation"
        )
        .status,
        401
    );

    let minted = app(good.clone(), "POST", "/app/installations/77/access_tokens");
    assert_eq!(minted.status, 201, "{}", minted.body);
    let token = minted.json()["token"].as_str().unwrap().to_string();
    assert!(minted.json()["expires_at"].as_str().unwrap().ends_with('Z'));
    let use_it = |path: &str| {
        call(
            "GET",
            &format!("{}{path}", fake.api_url()),
            &[&format!("Authorization: token {token}")],
            None,
        )
    };
    assert_eq!(use_it("/repos/acme/widgets").status, 200);
    assert_eq!(
        use_it("/user").status,
        403,
        "an installation token is not a user"
    );
    let clone = git_with(
        tmp.path(),
        Some(&token),
        &["clone", "-q", &fake.git_url("acme", "widgets"), "app-clone"],
    );
    assert!(
        clone.status.success(),
        "{}",
        String::from_utf8_lossy(&clone.stderr)
    );

    // A token minted with no lifetime left is refused like any unknown one.
    fake.set_app_token_ttl(Duration::ZERO);
    let dead = app(good, "POST", "/app/installations/77/access_tokens").json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = call(
        "GET",
        &format!("{}/repos/acme/widgets", fake.api_url()),
        &[&format!("Authorization: token {dead}")],
        None,
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "Bad credentials");
}
