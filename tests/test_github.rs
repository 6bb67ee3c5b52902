//! GitHub end to end: issues in, pull requests out, review comments and failed checks back in,
//! against the fake GitHub (REST + `git http-backend`) with real pushes.

use std::process::Child;
use std::time::Duration;

use serde_json::Value;

use crate::common::fake_github::FakeGithub;
use crate::common::{TestEnv, git, kill, wait_for};

const TOKEN: &str = "ghp_cwoTestTokenDoNotLeak0123456789";

/// An agent that adds a greeting on the first attempt and one fix file per feedback round, and
/// ends with a summary line.
const AGENT: &str = r#"
if grep -q "Feedback on pull request" "$1"; then
  n=$(ls fix-*.txt 2>/dev/null | wc -l)
  echo "fix $n" > "fix-$n.txt"
  git add "fix-$n.txt"
  git commit -q -m "address feedback $n"
  echo
  echo "Addressed the feedback in fix-$n.txt."
else
  echo hello > greeting.txt
  git add greeting.txt
  git commit -q -m "add a greeting"
  echo
  echo "Added greeting.txt with a friendly hello."
fi
"#;

struct Gh {
    env: TestEnv,
    fake: FakeGithub,
}

/// A project whose `origin` is `acme/widgets` on the fake, with `extra` settings.
fn setup(top: &str, extra: &str) -> Gh {
    let env = TestEnv::new();
    let fake = FakeGithub::start(TOKEN, "cwo-bot");
    fake.create_repo("acme", "widgets", &env.project);
    git(
        &env.project,
        &[
            "remote",
            "set-url",
            "origin",
            &fake.git_url("acme", "widgets"),
        ],
    );
    env.agent_with(
        &format!(
            "idle_timeout = \"1h\"\n{top}\n[github]\napi_url = {:?}\ntoken = \"env:TEST_GH_TOKEN\"\n{extra}",
            fake.api_url()
        ),
        AGENT,
        "",
    );
    Gh { env, fake }
}

impl Gh {
    fn spawn(&self, args: &[&str]) -> Child {
        self.env
            .cmd(args)
            .env("TEST_GH_TOKEN", TOKEN)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> crate::common::Run {
        self.env
            .cmd(args)
            .env("TEST_GH_TOKEN", TOKEN)
            .output()
            .unwrap()
            .into()
    }

    fn labels(&self, n: u64) -> Vec<String> {
        self.fake.issue(n)["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn pull_for(&self, branch: &str) -> Option<Value> {
        self.fake
            .pulls()
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["head"]["ref"] == branch)
            .cloned()
    }
}

/// Every process's argv, for the token hunt.
fn all_cmdlines() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Ok(b) = std::fs::read(e.path().join("cmdline")) {
                out.push(String::from_utf8_lossy(&b).replace('\0', " "));
            }
        }
    }
    out
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .map(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
                .unwrap_or(false)
            {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

#[test]
fn an_issue_becomes_a_pull_request_that_follows_review_and_checks_until_merged() {
    let gh = setup("", "[tracker]\nkind = \"github\"\n");
    let n = gh.fake.add_issue(
        "Add a greeting",
        "Say hello to visitors.\n\n## Acceptance criteria\n- greeting.txt exists\n- it says hello\n",
        &["cwo", "priority:high"],
    );
    let mut child = gh.spawn(&["run"]);
    let branch = format!("cwo/{n}");
    let mut argv_leaks = Vec::new();
    let mut sample = || {
        argv_leaks.extend(all_cmdlines().into_iter().filter(|c| c.contains(TOKEN)));
    };

    // Claimed, worked on, pushed, and opened as a pull request that closes the issue.
    assert!(
        wait_for(Duration::from_secs(60), || {
            sample();
            let labels = gh.labels(n);
            gh.pull_for(&branch).is_some()
                && labels.contains(&"cwo:done".to_string())
                && !labels.contains(&"cwo:in-progress".to_string())
        }),
        "no pull request: {:?} labels {:?}",
        gh.fake.pulls(),
        gh.labels(n)
    );
    let pr = gh.pull_for(&branch).unwrap();
    let number = pr["number"].as_u64().unwrap();
    let body = pr["body"].as_str().unwrap();
    assert!(body.contains(&format!("Closes #{n}")), "{body}");
    assert!(body.contains("- [ ] greeting.txt exists"), "{body}");
    assert!(
        body.contains("Added greeting.txt with a friendly hello."),
        "{body}"
    );
    assert_eq!(pr["base"]["ref"], "main");
    assert!(!gh.labels(n).contains(&"cwo:in-progress".to_string()));
    // One status comment, edited in place.
    let comments = gh.fake.comments(n);
    let ours: Vec<&Value> = comments
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["body"].as_str().unwrap().contains("cwo:status"))
        .collect();
    assert_eq!(ours.len(), 1, "{comments:#}");
    assert!(
        ours[0]["body"].as_str().unwrap().contains("done"),
        "{comments:#}"
    );
    let first_head = gh.fake.branch_sha(&branch).unwrap();

    // A reviewer's line comment: a follow-up commit on the same branch and a reply.
    let c = gh
        .fake
        .add_review_comment(number, "alice", "greeting.txt", 1, "Say it louder.");
    assert!(
        wait_for(Duration::from_secs(60), || {
            sample();
            gh.fake
                .review_comments(number)
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["in_reply_to_id"] == c && r["user"]["login"] == "cwo-bot")
        }),
        "no reply: {:#}\n{}",
        gh.fake.review_comments(number),
        {
            kill(&child, "KILL");
            std::thread::sleep(Duration::from_millis(300));
            let mut e = String::new();
            use std::io::Read;
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_string(&mut e);
            }
            e
        }
    );
    let second_head = gh.fake.branch_sha(&branch).unwrap();
    assert_ne!(second_head, first_head);
    let range = format!("{first_head}..{second_head}");
    let repo = gh.fake.repo_path("acme", "widgets");
    assert_eq!(git(&repo, &["rev-list", "--count", &range]), "1");
    assert!(
        git(
            &repo,
            &["merge-base", "--is-ancestor", &first_head, &second_head]
        )
        .is_empty()
    );

    // A failed check on the new head: another follow-up with the check's output.
    gh.fake.add_check_run(
        &second_head,
        "tests",
        Some("failure"),
        "test_greeting failed: expected HELLO",
    );
    assert!(
        wait_for(Duration::from_secs(60), || {
            sample();
            gh.fake.branch_sha(&branch).unwrap() != second_head
        }),
        "no follow-up for the failed check"
    );
    let prompt = std::fs::read_dir(gh.env.state.join("tmp"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("-prompt.md"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect::<String>();
    assert!(
        prompt.contains("test_greeting failed: expected HELLO"),
        "{prompt}"
    );

    // Merged: the issue closes through `Closes #N` and the task is complete.
    gh.fake.merge_pr(number, "alice");
    assert!(
        wait_for(Duration::from_secs(60), || {
            gh.env.journal("SELECT state FROM pull_requests") == "merged"
        }),
        "the merge was not noticed"
    );
    assert_eq!(gh.fake.issue(n)["state"], "closed");
    assert_eq!(
        gh.env.journal("SELECT state, rounds FROM pull_requests"),
        "merged|2"
    );
    kill(&child, "INT");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    // The token: in no argv, log, journal, worker file or output; no forced push.
    assert!(
        argv_leaks.is_empty(),
        "the token was in an argv: {argv_leaks:?}"
    );
    assert!(!stderr.contains(TOKEN) && !String::from_utf8_lossy(&out.stdout).contains(TOKEN));
    let leaks = files_containing(gh.env.tmp.path(), TOKEN);
    assert!(leaks.is_empty(), "the token is in {leaks:?}");
    assert!(gh.fake.forced_push_attempts().is_empty());
    // Idle polls were answered 304.
    assert!(gh.fake.requests().iter().any(|r| r.status == 304));
}

#[test]
fn a_juggle_ball_gets_a_pull_request_too() {
    let gh = setup("", "");
    let id = gh
        .env
        .add(&["Make a greeting", "--ac", "greeting.txt exists"]);
    gh.run(&["run", "--once"]).ok();
    let pr = gh.pull_for(&format!("cwo/{id}")).expect("a pull request");
    let body = pr["body"].as_str().unwrap();
    assert!(!body.contains("Closes #"), "{body}");
    assert!(body.contains("- [ ] greeting.txt exists"), "{body}");
    let note = gh.env.ball(&id)["completion_note"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(note.contains(pr["html_url"].as_str().unwrap()), "{note}");
}

#[test]
fn two_controllers_never_take_the_same_issue() {
    let gh = setup("", "[tracker]\nkind = \"github\"\n");
    let n = gh
        .fake
        .add_issue("Only once", "One worker, please.", &["cwo"]);
    let second_state = gh.env.tmp.path().join("state2");
    let a = gh.spawn(&["run", "--once"]);
    let b = gh
        .env
        .cmd(&[
            "run",
            "--once",
            "--config",
            &format!("state_dir={:?}", second_state.display().to_string()),
        ])
        .env("TEST_GH_TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
    assert!(a.status.success(), "{}", err(&a));
    assert!(b.status.success(), "{}", err(&b));
    let pulls = gh.fake.pulls();
    assert_eq!(pulls.as_array().unwrap().len(), 1, "{pulls:#}");
    let claims = gh.fake.comments(n);
    let ours = claims
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["body"].as_str().unwrap().contains("cwo:status"))
        .count();
    assert_eq!(ours, 1, "{claims:#}");
    let started = |o: &std::process::Output| err(o).contains(&format!("▶ {n} "));
    assert!(started(&a) ^ started(&b), "{}\n---\n{}", err(&a), err(&b));
}

#[test]
fn an_issue_closed_while_its_task_runs_aborts_the_attempt() {
    let gh = setup("", "[tracker]\nkind = \"github\"\n");
    // An agent that waits until it is stopped.
    gh.env.agent_with(
        &format!(
            "idle_timeout = \"1h\"\n[github]\napi_url = {:?}\ntoken = \"env:TEST_GH_TOKEN\"\n[tracker]\nkind = \"github\"\n",
            gh.fake.api_url()
        ),
        "echo started; sleep 60",
        "",
    );
    let n = gh.fake.add_issue("Never mind", "", &["cwo"]);
    let child = gh.spawn(&["run"]);
    assert!(wait_for(Duration::from_secs(30), || gh
        .labels(n)
        .contains(&"cwo:in-progress".to_string())));
    gh.fake.close_issue(n, "octocat");
    assert!(
        wait_for(Duration::from_secs(30), || gh
            .env
            .journal("SELECT outcome FROM attempts")
            == "aborted"),
        "{}",
        gh.env.journal("SELECT outcome FROM attempts")
    );
    kill(&child, "INT");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no longer wanted"), "{stderr}");
    assert!(gh.fake.pulls().as_array().unwrap().is_empty());
}

#[test]
fn feedback_rounds_are_capped_and_then_the_task_is_blocked() {
    let gh = setup(
        "",
        "max_feedback_rounds = 1\n[tracker]\nkind = \"github\"\n",
    );
    let n = gh.fake.add_issue("Greet", "", &["cwo"]);
    let child = gh.spawn(&["run"]);
    let branch = format!("cwo/{n}");
    assert!(wait_for(Duration::from_secs(60), || gh
        .pull_for(&branch)
        .is_some()));
    let number = gh.pull_for(&branch).unwrap()["number"].as_u64().unwrap();
    gh.fake
        .add_review(number, "alice", "CHANGES_REQUESTED", "Not like this.");
    let first = gh.fake.branch_sha(&branch).unwrap();
    assert!(wait_for(Duration::from_secs(60), || gh
        .fake
        .branch_sha(&branch)
        .unwrap()
        != first));
    gh.fake
        .add_review(number, "alice", "CHANGES_REQUESTED", "Still not.");
    assert!(
        wait_for(Duration::from_secs(60), || gh
            .labels(n)
            .contains(&"cwo:blocked".to_string())
            && gh.env.journal("SELECT state FROM pull_requests") == "blocked"),
        "{:?}",
        gh.labels(n)
    );
    assert_eq!(
        gh.env.journal("SELECT state, rounds FROM pull_requests"),
        "blocked|1"
    );
    assert_eq!(
        gh.fake.pull(number)["state"],
        "open",
        "the pull request stays for a human"
    );
    kill(&child, "INT");
    child.wait_with_output().unwrap();
}

#[test]
fn a_rate_limited_poll_waits_and_says_so() {
    let gh = setup("", "[tracker]\nkind = \"github\"\n");
    gh.fake.add_issue("Greet", "", &["cwo"]);
    // Five requests a second: the run meets the limit, waits for each reset, and goes on.
    gh.fake.set_rate_limit(5, Duration::from_secs(1));
    let run = gh.run(&["run", "--once"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("rate limit"), "{}", run.stderr);
    assert_eq!(gh.fake.pulls().as_array().unwrap().len(), 1);
}

#[test]
fn a_bad_token_says_where_it_came_from() {
    let gh = setup("", "[tracker]\nkind = \"github\"\n");
    let run: crate::common::Run = gh
        .env
        .cmd(&["run", "--once"])
        .env("TEST_GH_TOKEN", "ghp_wrong")
        .output()
        .unwrap()
        .into();
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("github.token (env:TEST_GH_TOKEN)"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("ghp_wrong"), "{}", run.stderr);
}

#[test]
fn status_lists_open_pull_requests_with_their_review_and_check_state() {
    let gh = setup("", "[tracker]\nkind = \"github\"\n");
    let n = gh.fake.add_issue("Greet", "", &["cwo"]);
    let waiting = gh.fake.add_issue("Later", "depends on #1", &["cwo"]);
    assert_eq!(waiting, n + 1);
    let branch = format!("cwo/{n}");
    let child = gh.spawn(&["run"]);
    assert!(wait_for(Duration::from_secs(60), || gh
        .pull_for(&branch)
        .is_some()));
    let pr = gh.pull_for(&branch).unwrap();
    let number = pr["number"].as_u64().unwrap();
    let head = pr["head"]["sha"].as_str().unwrap().to_string();
    gh.fake.add_review(number, "alice", "APPROVED", "");
    gh.fake
        .add_check_run(&head, "tests", Some("success"), "all green");
    assert!(
        wait_for(Duration::from_secs(60), || gh
            .env
            .journal("SELECT review_state, check_state FROM pull_requests")
            == "approved|success"),
        "{}",
        gh.env
            .journal("SELECT review_state, check_state FROM pull_requests")
    );
    kill(&child, "INT");
    child.wait_with_output().unwrap();

    let json = gh.run(&["status", "--format", "json"]).ok().json();
    let prs = json["pull_requests"].as_array().unwrap();
    assert_eq!(prs.len(), 1, "{json:#}");
    assert_eq!(prs[0]["number"], number);
    assert_eq!(prs[0]["task"], n.to_string());
    assert_eq!(prs[0]["state"], "open");
    assert_eq!(prs[0]["review"], "approved");
    assert_eq!(prs[0]["checks"], "success");
    assert_eq!(prs[0]["url"], pr["html_url"]);
    // The tasks are the repository's issues: the one that waits on the first is not ready.
    assert_eq!(json["tracker_error"], Value::Null);
    let ids: Vec<&str> = json["tasks"]["balls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&waiting.to_string().as_str()), "{json:#}");
    assert!(
        json["tasks"]["ready"].as_array().unwrap().is_empty(),
        "{json:#}"
    );
    let table = gh.run(&["status"]).ok().stdout;
    let line = table
        .lines()
        .find(|l| l.starts_with(&format!("#{number} ")))
        .unwrap_or_else(|| panic!("no pull request line:\n{table}"));
    for word in [&n.to_string(), "open", "approved", "success", "0/3"] {
        assert!(line.contains(word), "{line}");
    }

    // GitHub out of reach: the workers and pull requests are still shown, the tracker's
    // failure is said on stderr.
    let down = gh
        .env
        .cmd(&["status", "--format", "json"])
        .env("TEST_GH_TOKEN", "ghp_wrong")
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&down.stdout).unwrap();
    assert!(down.status.success());
    assert!(
        doc["tracker_error"]
            .as_str()
            .unwrap()
            .contains("github.token"),
        "{doc:#}"
    );
    assert_eq!(doc["pull_requests"].as_array().unwrap().len(), 1);
    assert!(String::from_utf8_lossy(&down.stderr).contains("the tracker could not be read"));
}

use crate::common::doctor_check as check;

#[test]
fn github_init_creates_the_labels_the_tracker_uses_and_doctor_checks_them() {
    let gh = setup("", "[tracker]\nkind = \"github\"\n");
    // Before: the queue label is missing, which the doctor calls a failure with its fix.
    let before = gh.run(&["doctor", "--format", "json"]);
    assert_eq!(before.code, 1, "{}", before.stdout);
    let doc = before.json();
    assert_eq!(check(&doc, "github")["status"], "ok", "{doc:#}");
    assert!(
        check(&doc, "github")["detail"]
            .as_str()
            .unwrap()
            .contains("cwo-bot on http"),
        "{doc:#}"
    );
    assert_eq!(check(&doc, "github repo")["status"], "ok", "{doc:#}");
    let labels = check(&doc, "labels");
    assert_eq!(labels["status"], "fail", "{doc:#}");
    assert_eq!(labels["fix"], "cwo github init");

    // A dry run creates nothing.
    let dry = gh
        .run(&["github", "init", "--dry-run", "--format", "json"])
        .ok()
        .json();
    let actions: Vec<&str> = dry["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["would_create"; 8], "{dry:#}");
    assert!(!gh.fake.requests().iter().any(|r| r.method == "POST"));

    // init creates the eight, with their colours; a second init finds them all.
    let made = gh.run(&["github", "init"]).ok();
    assert!(
        made.stderr.contains("8 label(s) created on acme/widgets"),
        "{}",
        made.stderr
    );
    for name in [
        "cwo",
        "cwo:in-progress",
        "cwo:blocked",
        "cwo:done",
        "priority:urgent",
        "priority:low",
    ] {
        assert!(made.stdout.contains(name), "{}", made.stdout);
    }
    let again = gh.run(&["github", "init", "--format", "json"]).ok().json();
    assert!(
        again["labels"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["action"] == "exists"),
        "{again:#}"
    );
    gh.fake.add_issue("Greet", "", &["cwo"]);
    let after = gh.run(&["doctor", "--format", "json"]).json();
    let labels = check(&after, "labels");
    assert_eq!(labels["status"], "ok", "{after:#}");
    assert!(
        labels["detail"]
            .as_str()
            .unwrap()
            .starts_with("1 open issue(s) labelled `cwo`"),
        "{after:#}"
    );
}

#[test]
fn doctor_says_what_the_token_cannot_do() {
    let gh = setup("", "[tracker]\nkind = \"github\"\n");
    let doctor = |token: &str| -> Value {
        let out = gh
            .env
            .cmd(&["doctor", "--format", "json"])
            .env("TEST_GH_TOKEN", token)
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&out.stdout).contains(token));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // A token GitHub refuses: where it came from, not what it is.
    let bad = check(&doctor("ghp_wrong"), "github");
    assert_eq!(bad["status"], "fail");
    assert!(
        bad["detail"]
            .as_str()
            .unwrap()
            .contains("github.token (env:TEST_GH_TOKEN)"),
        "{bad:#}"
    );
    // A token that may read but not push.
    gh.fake.add_token("ghp_readonly", "reader", false);
    let repo = check(&doctor("ghp_readonly"), "github repo");
    assert_eq!(repo["status"], "fail", "{repo:#}");
    assert!(
        repo["detail"]
            .as_str()
            .unwrap()
            .contains("reader can read acme/widgets but not push"),
        "{repo:#}"
    );
    // A classic token without the repo scope.
    gh.fake.set_scopes("read:org, gist");
    let scoped = check(&doctor(TOKEN), "github repo");
    assert_eq!(scoped["status"], "fail", "{scoped:#}");
    assert!(
        scoped["detail"]
            .as_str()
            .unwrap()
            .contains("(read:org, gist)"),
        "{scoped:#}"
    );
    // A repository the token cannot see.
    let other = gh
        .env
        .cmd(&[
            "doctor",
            "--format",
            "json",
            "--config",
            "github.repo=\"acme/secret\"",
        ])
        .env("TEST_GH_TOKEN", TOKEN)
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&other.stdout).unwrap();
    let missing = check(&doc, "github");
    assert_eq!(missing["status"], "fail", "{doc:#}");
    assert!(
        missing["detail"].as_str().unwrap().contains("acme/secret"),
        "{missing:#}"
    );
}

#[test]
fn a_github_app_delivers_with_installation_tokens_it_renews() {
    let gh = setup(
        "",
        "app_id = 4242\napp_key = \"env:TEST_APP_KEY\"\n[tracker]\nkind = \"github\"\n",
    );
    // Installation tokens that live five minutes: under the ten-minute margin, so cwo mints a
    // fresh one whenever it needs one instead of using one about to expire.
    gh.fake
        .enable_app("4242", 77, "cwo-app", Duration::from_secs(300));
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("app.pem");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let pem = std::fs::read_to_string(&key).unwrap();
    let n = gh.fake.add_issue("Greet", "Say hello.", &["cwo"]);
    let run: crate::common::Run = gh
        .env
        .cmd(&["run", "--once"])
        .env_remove("TEST_GH_TOKEN")
        .env("TEST_APP_KEY", &pem)
        .output()
        .unwrap()
        .into();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let pr = gh.pull_for(&format!("cwo/{n}")).expect("a pull request");
    assert_eq!(pr["user"]["login"], "cwo-app[bot]", "{pr:#}");
    assert!(gh.labels(n).contains(&"cwo:done".to_string()));
    let status = gh.fake.comments(n);
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["user"]["login"] == "cwo-app[bot]"),
        "{status:#}"
    );
    let minted = gh
        .fake
        .requests()
        .iter()
        .filter(|r| r.path_and_query.ends_with("/access_tokens"))
        .count();
    assert!(
        minted > 1,
        "one installation token for the whole run: {minted}"
    );
    // The key is in no file cwo wrote, and in no output.
    let line = pem.lines().nth(3).unwrap();
    assert!(files_containing(gh.env.tmp.path(), line).is_empty());
    assert!(!run.stderr.contains(line) && !run.stdout.contains(line));
}

#[test]
fn a_follow_up_stopped_midway_is_taken_up_again_by_the_next_run() {
    let gh = setup("", "[tracker]\nkind = \"github\"\n");
    // While the gate file exists, a follow-up waits (to be stopped midway).
    let gate = gh.env.tmp.path().join("hold-follow-ups");
    gh.env.agent_with(
        &format!(
            "idle_timeout = \"1h\"\n[github]\napi_url = {:?}\ntoken = \"env:TEST_GH_TOKEN\"\n[tracker]\nkind = \"github\"\n",
            gh.fake.api_url()
        ),
        &format!(
            "if grep -q \"Feedback on pull request\" \"$1\" && [ -e {gate:?} ]; then sleep 30; fi\n{AGENT}"
        ),
        "",
    );
    let n = gh.fake.add_issue("Greet", "", &["cwo"]);
    let branch = format!("cwo/{n}");
    let child = gh.spawn(&["run"]);
    assert!(wait_for(Duration::from_secs(60), || gh
        .pull_for(&branch)
        .is_some()));
    let number = gh.pull_for(&branch).unwrap()["number"].as_u64().unwrap();
    let first_head = gh.fake.branch_sha(&branch).unwrap();
    std::fs::write(&gate, "").unwrap();
    let c = gh
        .fake
        .add_review_comment(number, "alice", "greeting.txt", 1, "Louder, please.");
    assert!(wait_for(Duration::from_secs(60), || gh
        .env
        .journal("SELECT count(*) FROM attempts")
        == "2"));
    // Stop it: the first signal stops claiming, the second aborts the running follow-up.
    kill(&child, "INT");
    std::thread::sleep(Duration::from_millis(300));
    kill(&child, "INT");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("its feedback is taken up again"),
        "{stderr}"
    );
    assert_eq!(gh.fake.branch_sha(&branch).unwrap(), first_head);
    assert!(
        gh.labels(n).contains(&"cwo:done".to_string()),
        "a stopped follow-up leaves the delivered issue as it was: {:?}",
        gh.labels(n)
    );
    assert_eq!(
        gh.env.journal("SELECT rounds FROM pull_requests"),
        "0",
        "a stopped follow-up costs no round"
    );

    // The next run reads the same comment again and answers it.
    std::fs::remove_file(&gate).unwrap();
    let child = gh.spawn(&["run"]);
    assert!(
        wait_for(Duration::from_secs(60), || gh
            .fake
            .review_comments(number)
            .as_array()
            .unwrap()
            .iter()
            .any(
                |r| r["in_reply_to_id"] == c && r["user"]["login"] == "cwo-bot"
            )),
        "the stopped follow-up's comment was never answered"
    );
    assert_ne!(gh.fake.branch_sha(&branch).unwrap(), first_head);
    kill(&child, "INT");
    child.wait_with_output().unwrap();
    assert_eq!(gh.env.journal("SELECT rounds FROM pull_requests"), "1");
}
