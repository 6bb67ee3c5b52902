//! The whole loop on the local provider with scripted agents.

use crate::common::{TestEnv, git, git_shim};

/// An agent that writes a file named after the task and commits it.
const COMMITTING: &str = r#"
echo "working on $CWO_TASK_ID"
printf 'done\n' > "out-$CWO_TASK_ID.txt"
git add "out-$CWO_TASK_ID.txt"
git commit -q -m "$CWO_TASK_ID"
echo committed
"#;

#[test]
fn done_pushes_a_branch_and_completes_the_ball() {
    let env = TestEnv::new();
    env.agent(COMMITTING, "");
    let id = env.add(&[
        "Make a file",
        "--ac",
        "the file exists",
        "--priority",
        "high",
    ]);
    let run = env.cwo(&["run", "--once"]).ok();
    assert!(
        run.stderr.contains(&format!("[{id}] committed")),
        "{}",
        run.stderr
    );

    let ball = env.ball(&id);
    assert_eq!(ball["state"], "complete");
    let note = ball["completion_note"].as_str().unwrap();
    assert!(
        note.contains(&format!("branch cwo/{id}")) && note.contains("pushed to origin"),
        "{note}"
    );
    assert_eq!(env.remote_branches(), vec![format!("cwo/{id}")]);
    let files = git(
        &env.origin,
        &["ls-tree", "--name-only", &format!("cwo/{id}")],
    );
    assert!(files.contains(&format!("out-{id}.txt")), "{files}");
    // The pushed commit sits on top of the controller's HEAD.
    let base = git(&env.project, &["rev-parse", "HEAD"]);
    let parent = git(&env.origin, &["rev-parse", &format!("cwo/{id}^")]);
    assert_eq!(parent, base);
    assert_eq!(env.live_workers(), 0, "the worker is torn down");
    assert_eq!(
        env.journal("SELECT attempt, outcome, exit_status FROM attempts"),
        "1|done|exit 0"
    );
    assert_eq!(env.journal("SELECT state FROM workers"), "deleted");
    assert_eq!(env.journal("SELECT termination_reason FROM ledger"), "idle");
}

#[test]
fn blocked_marker_blocks_with_reason_and_pushes_nothing() {
    let env = TestEnv::new();
    env.agent(
        r#"echo "thinking"; echo "BLOCKED: needs the staging password""#,
        "",
    );
    let id = env.add(&["Migrate staging"]);
    env.cwo(&["run", "--once"]).ok();
    let ball = env.ball(&id);
    assert_eq!(ball["state"], "blocked");
    assert_eq!(ball["blocked_reason"], "needs the staging password");
    assert!(env.remote_branches().is_empty());
    assert_eq!(env.journal("SELECT count(*) FROM attempts"), "1");
}

#[test]
fn failure_is_retried_and_then_succeeds() {
    let env = TestEnv::new();
    env.agent(
        &format!(
            r#"if [ "$CWO_ATTEMPT" = 1 ]; then echo "flaky" >&2; exit 7; fi
{COMMITTING}"#
        ),
        "",
    );
    let id = env.add(&["Flaky"]);
    let run = env.cwo(&["run", "--once"]).ok();
    assert!(
        run.stderr
            .contains("attempt 1/3 failed: the agent exited with status 7"),
        "{}",
        run.stderr
    );
    assert_eq!(env.ball(&id)["state"], "complete");
    assert_eq!(
        env.journal("SELECT attempt || ':' || outcome FROM attempts ORDER BY id"),
        "1:failed\n2:done"
    );
}

#[test]
fn three_failures_block_the_ball_with_reason_and_log() {
    let env = TestEnv::new();
    env.agent(r#"echo "attempt $CWO_ATTEMPT, no commit""#, "");
    let id = env.add(&["Never commits"]);
    env.cwo(&["run", "--once"]).ok();
    let ball = env.ball(&id);
    assert_eq!(ball["state"], "blocked");
    let reason = ball["blocked_reason"].as_str().unwrap();
    assert!(
        reason
            .starts_with("failed 3 attempt(s); last: the agent exited 0 but made no commit (log: "),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("logs/{id}/attempt-3.log")),
        "{reason}"
    );
    let log_path = reason
        .rsplit("(log: ")
        .next()
        .unwrap()
        .trim_end_matches(')');
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.contains("attempt 3, no commit"), "{log}");
    assert_eq!(
        env.journal("SELECT count(*) FROM attempts WHERE outcome = 'failed'"),
        "3"
    );
    // logs shows the latest attempt; --attempt picks another.
    let shown = env.cwo(&["logs", &id]).ok();
    assert!(shown.stdout.contains("attempt 3, no commit"));
    let first = env.cwo(&["logs", &id, "--attempt", "1"]).ok();
    assert!(first.stdout.contains("attempt 1, no commit"));
}

#[test]
fn timeout_kills_the_agent() {
    let env = TestEnv::new();
    env.agent(
        "echo started; sleep 60; echo never",
        "timeout = \"1s\"\nmax_attempts = 1",
    );
    let id = env.add(&["Hangs"]);
    let started = std::time::Instant::now();
    env.cwo(&["run", "--once"]).ok();
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    let reason = env.ball(&id)["blocked_reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("the agent timed out after 1s"), "{reason}");
}

#[test]
fn crash_is_a_failure() {
    let env = TestEnv::new();
    env.agent("echo about to crash; kill -SEGV $$", "max_attempts = 1");
    let id = env.add(&["Crashes"]);
    env.cwo(&["run", "--once"]).ok();
    let reason = env.ball(&id)["blocked_reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("killed by signal 11"), "{reason}");
}

#[test]
fn task_text_never_reaches_a_shell() {
    let env = TestEnv::new();
    // The agent records the prompt it got as an argument and from the file, then commits.
    env.agent(
        r#"printf '%s' "$2" > arg.txt; cp "$1" file.txt; git add arg.txt file.txt; git commit -q -m t"#,
        "",
    );
    let nasty = "Fix $(touch PWNED1) `touch PWNED2` \"quoted\" 'single'; touch PWNED3\nsecond line {{title}} {prompt}";
    let id = env.add(&[
        nasty,
        "--ac",
        "$(touch PWNED4)",
        "--context",
        "`touch PWNED5` && touch PWNED6",
    ]);
    env.cwo(&["run", "--once"]).ok();
    assert_eq!(env.ball(&id)["state"], "complete");
    let prompt = git(&env.origin, &["show", &format!("cwo/{id}:arg.txt")]);
    assert!(prompt.contains(nasty), "{prompt}");
    assert!(prompt.contains("1. $(touch PWNED4)"));
    assert!(prompt.contains("`touch PWNED5` && touch PWNED6"));
    let file = git(&env.origin, &["show", &format!("cwo/{id}:file.txt")]);
    assert_eq!(file.trim(), prompt.trim());
    let found = std::process::Command::new("find")
        .args([env.tmp.path().to_str().unwrap(), "-name", "PWNED*"])
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&found.stdout)
    );
}

#[test]
fn juggle_file_survives_the_loop() {
    let env = TestEnv::new();
    env.agent(COMMITTING, "");
    let big = "x".repeat(60 * 1024);
    let lines = vec![
        r#"{"id":"proj-0000aaaa","title":"first","priority":"low","state":"pending","started_at":"2026-01-17T10:15:42.120934811+01:00","last_activity":"2026-01-17T10:15:42.121187002+01:00","update_count":0,"x_custom":{"keep":[1,2,3]},"tags":["s1"]}"#.to_string(),
        "this line is not JSON {".to_string(),
        format!(r#"{{"id":"proj-0000bbbb","context":"{big}","title":"big","priority":"low","state":"blocked","blocked_reason":"human","update_count":0}}"#),
        r#"{"id":"proj-0000cccc","title":"depends","priority":"urgent","state":"pending","depends_on":["proj-0000aaaa"],"update_count":0}"#.to_string(),
    ];
    env.write_balls(&lines);
    std::fs::create_dir_all(env.project.join(".juggle/sessions/s1")).unwrap();
    std::fs::write(env.project.join(".juggle/sessions/s1/session.json"), "{}").unwrap();
    env.cwo(&["run", "--once"]).ok();
    let text = std::fs::read_to_string(env.balls_path()).unwrap();
    let after: Vec<&str> = text.split('\n').collect();
    assert_eq!(after.len(), 5);
    assert_eq!(after[1], lines[1], "the unparseable line survives");
    assert_eq!(
        after[2], lines[2],
        "the untouched 60 KiB line is byte-identical"
    );
    assert_eq!(env.ball("proj-0000aaaa")["x_custom"]["keep"][2], 3);
    assert_eq!(env.ball("proj-0000aaaa")["state"], "complete");
    assert_eq!(
        env.ball("proj-0000cccc")["state"],
        "complete",
        "ran after its dependency"
    );
    let order = env.journal("SELECT ball_id FROM attempts ORDER BY id");
    assert_eq!(order, "proj-0000aaaa\nproj-0000cccc");
    let progress =
        std::fs::read_to_string(env.project.join(".juggle/sessions/s1/progress.txt")).unwrap();
    assert!(
        progress.contains("cwo: branch cwo/proj-0000aaaa"),
        "{progress}"
    );
}

#[test]
fn tasks_per_worker_runs_tasks_side_by_side_on_one_worker() {
    let env = TestEnv::new();
    env.agent_with(
        "[workers]\ntasks_per_worker = 3",
        &format!("sleep 1\n{COMMITTING}"),
        "",
    );
    for t in ["a", "b", "c"] {
        env.add(&[t]);
    }
    env.cwo(&["run", "--once"]).ok();
    assert_eq!(env.remote_branches().len(), 3);
    // Side by side: every attempt started before any of them ended (from the journal, not
    // from a wall-clock budget that a loaded machine could miss).
    assert_eq!(
        env.journal(
            "SELECT (SELECT max(started_at) FROM attempts) < (SELECT min(ended_at) FROM attempts)"
        ),
        "1"
    );
    assert_eq!(
        env.journal("SELECT count(DISTINCT worker) FROM attempts"),
        "1"
    );
}

#[test]
fn push_rejection_blocks_and_keeps_the_work() {
    let env = TestEnv::new();
    env.agent(COMMITTING, "");
    let id = env.add(&["Conflicting"]);
    // Someone already pushed a different cwo/<id> branch.
    git(
        &env.project,
        &["push", "-q", "origin", &format!("HEAD:refs/heads/cwo/{id}")],
    );
    std::fs::write(env.project.join("other.txt"), "x").unwrap();
    git(&env.project, &["add", "other.txt"]);
    git(&env.project, &["commit", "-q", "-m", "other"]);
    git(
        &env.project,
        &[
            "push",
            "-q",
            "-f",
            "origin",
            &format!("HEAD:refs/heads/cwo/{id}"),
        ],
    );
    git(&env.project, &["reset", "-q", "--hard", "HEAD^"]);
    env.cwo(&["run", "--once"]).ok();
    let reason = env.ball(&id)["blocked_reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("pushing cwo/") && reason.contains(&format!("refs/cwo/{id}")),
        "{reason}"
    );
    git(
        &env.project,
        &["rev-parse", "--verify", &format!("refs/cwo/{id}")],
    );
}

#[test]
fn demo_runs_the_whole_loop() {
    let env = TestEnv::new();
    let dir = env.tmp.path().join("demo");
    let run = env.cwo(&["demo", "--dir", dir.to_str().unwrap()]).ok();
    assert_eq!(
        run.stdout.matches("  complete ").count(),
        3,
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("blocked     demo-"), "{}", run.stdout);
    assert!(run.stdout.contains("workers left running: 0"));
    assert_eq!(
        run.stdout.matches("  cwo/demo-").count(),
        3,
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("retrying in"), "{}", run.stderr);
}

#[test]
fn a_prompt_template_and_a_session_filter_are_honoured() {
    let env = TestEnv::new();
    std::fs::write(
        env.project.join("prompt.tmpl"),
        "TASK {{id}} on {{branch}}: {{title}}\n{{acceptance_criteria}}\n",
    )
    .unwrap();
    env.agent_with(
        "[tracker]\nsession = \"mine\"",
        r#"cp "$1" got-prompt.txt; git add got-prompt.txt; git commit -q -m p"#,
        "prompt_template = \"prompt.tmpl\"",
    );
    let mine = env.add(&["Mine", "--ac", "only this", "--tag", "mine"]);
    let other = env.add(&["Not mine", "--tag", "theirs"]);
    env.cwo(&["run", "--once"]).ok();
    assert_eq!(env.ball(&mine)["state"], "complete");
    assert_eq!(env.ball(&other)["state"], "pending", "outside the session");
    let prompt = git(
        &env.origin,
        &["show", &format!("cwo/{mine}:got-prompt.txt")],
    );
    assert_eq!(
        prompt,
        format!("TASK {mine} on cwo/{mine}: Mine\n1. only this")
    );
}

/// Issue 10 item 7: on the local provider the agent and every git process on the worker get an
/// allow-listed environment plus `agent.env`, never the controller's whole environment (tokens,
/// cloud credentials, the sources of `env:` secrets).
#[test]
fn the_agent_and_worker_git_get_an_allow_listed_environment() {
    let env = TestEnv::new();
    env.agent(
        r#"env > "$HOME/agent.env.txt"
git commit -q --allow-empty -m "$CWO_TASK_ID""#,
        "env = { API_KEY = \"env:SRC_SECRET\", PLAIN = \"visible\" }",
    );
    let id = env.add(&["environment"]);
    // A `git` in front of the real one records, for each call, where it ran and what it saw.
    let bin = env.tmp.path().join("spy-bin");
    let log = env.tmp.path().join("git-calls");
    git_shim(
        &bin,
        &format!(
            "echo \"$PWD $* :: ${{GH_TOKEN:-none}} ${{AWS_SECRET_ACCESS_KEY:-none}} ${{SRC_SECRET:-none}}\" >> '{}'",
            log.display()
        ),
    );
    let out = env
        .cmd(&["run", "--once"])
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("GH_TOKEN", "ghp_canary")
        .env("AWS_SECRET_ACCESS_KEY", "aws_canary")
        .env("SRC_SECRET", "src_canary")
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(env.ball(&id)["state"], "complete", "{stderr}");
    let seen = std::fs::read_to_string(env.home.join("agent.env.txt")).unwrap();
    for canary in [
        "ghp_canary",
        "aws_canary",
        "GH_TOKEN",
        "AWS_SECRET",
        "SRC_SECRET",
    ] {
        assert!(
            !seen.contains(canary),
            "{canary} reached the agent:\n{seen}"
        );
    }
    for wanted in [
        "API_KEY=src_canary",
        "PLAIN=visible",
        "CWO_TASK_ID=",
        "PATH=",
        "HOME=",
        "LC_ALL=C",
    ] {
        assert!(seen.contains(wanted), "{wanted} missing:\n{seen}");
    }
    let calls = std::fs::read_to_string(&log).unwrap();
    let on_worker: Vec<&str> = calls
        .lines()
        .filter(|l| l.contains("/workspace/"))
        .collect();
    assert!(!on_worker.is_empty(), "{calls}");
    for call in on_worker {
        assert!(call.ends_with(":: none none none"), "{call}");
    }
}

#[test]
fn logs_follow_every_running_attempt_at_once_each_line_prefixed() {
    let env = TestEnv::new();
    let nothing = env.cwo(&["logs", "-f"]);
    assert_eq!(nothing.code, 1, "{}", nothing.stderr);
    assert!(
        nothing.stderr.contains("nothing is running"),
        "{}",
        nothing.stderr
    );
    env.agent_with(
        "[workers]\ntasks_per_worker = 2",
        &format!("echo \"hello from $CWO_TASK_ID\"\nsleep 2\n{COMMITTING}"),
        "",
    );
    let a = env.add(&["First"]);
    let b = env.add(&["Second"]);
    let mut run = env
        .cmd(&["run", "--once"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(crate::common::wait_for(
        std::time::Duration::from_secs(30),
        || env.journal("SELECT count(*) FROM attempts") != "0"
    ));
    let follow = env.cwo(&["logs", "-f"]);
    assert!(run.wait().unwrap().success());
    assert_eq!(follow.code, 0, "{}", follow.stderr);
    for id in [&a, &b] {
        for line in [format!("hello from {id}"), "committed".to_string()] {
            assert!(
                follow.stdout.contains(&format!("[{id}] {line}\n")),
                "no `[{id}] {line}` in:\n{}",
                follow.stdout
            );
        }
    }
}
