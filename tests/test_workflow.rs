//! The repository's own `.cwo/workflow.toml` (setup, verify, prompt, agent limits), stall and
//! soft timeouts, and what each task's agent reported using, through `cwo run` on the local
//! provider with scripted agents.

use std::path::Path;

use crate::common::{TestEnv, git};

/// An agent that writes a file named after the task and commits it.
const COMMITTING: &str = r#"
printf 'done\n' > "out-$CWO_TASK_ID.txt"
git add "out-$CWO_TASK_ID.txt"
git commit -q -m "$CWO_TASK_ID"
echo committed
"#;

/// Commits `.cwo/workflow.toml` (and other files) in the project, as a user would.
fn commit(env: &TestEnv, files: &[(&str, &str)]) {
    for (path, text) in files {
        let p = env.project.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        git(&env.project, &["add", path]);
    }
    git(&env.project, &["commit", "-q", "-m", "workflow"]);
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn attempt_log(env: &TestEnv, id: &str, n: u32) -> String {
    read(&env.state.join(format!("logs/{id}/attempt-{n}.log")))
}

#[test]
fn setup_runs_once_per_cache_key_for_three_tasks_on_one_worker() {
    let env = TestEnv::new();
    let count = env.tmp.path().join("setup-runs");
    commit(
        &env,
        &[
            (".gitignore", ".juggle/\ncwo.toml\nagents/\ndeps/\n"),
            ("package-lock.json", "{\"lockfileVersion\": 3}\n"),
            (
                ".cwo/workflow.toml",
                &format!(
                    "[setup]\ncommands = [[\"sh\", \"-c\", \"echo ran >> {}; mkdir -p deps && echo built > deps/lib.txt\"]]\ncache_key = [\"package-lock.json\"]\n",
                    count.display()
                ),
            ),
        ],
    );
    env.agent(
        &format!("test -f deps/lib.txt || {{ echo 'no deps'; exit 9; }}\n{COMMITTING}"),
        "",
    );
    let ids: Vec<String> = (1..=3).map(|i| env.add(&[&format!("Task {i}")])).collect();
    let run = env.cwo(&["run", "--once"]).ok();
    for id in &ids {
        assert_eq!(env.ball(id)["state"], "complete", "{}", run.stderr);
    }
    assert_eq!(read(&count), "ran\n", "setup ran once for the one key");
    assert_eq!(
        env.journal("SELECT count(DISTINCT worker) FROM attempts"),
        "1"
    );
    let logs: Vec<String> = ids.iter().map(|id| attempt_log(&env, id, 1)).collect();
    let skipped = logs
        .iter()
        .filter(|l| l.contains("[cwo] setup: skipped: restored what setup left for cache key"))
        .count();
    assert_eq!(skipped, 2, "{logs:#?}");
    let ran = logs.iter().find(|l| !l.contains("setup: skipped")).unwrap();
    assert!(
        ran.contains("[cwo] setup: sh -c echo ran") && ran.contains("[cwo] setup: done"),
        "the setup phase is in the task log ahead of the agent:\n{ran}"
    );
    let agent_at = ran.find("committed").unwrap();
    assert!(ran.find("[cwo] setup: done").unwrap() < agent_at, "{ran}");
}

#[test]
fn a_failing_setup_blocks_with_its_output_and_the_agent_never_runs() {
    let env = TestEnv::new();
    let marker = env.tmp.path().join("agent-ran");
    commit(
        &env,
        &[(
            ".cwo/workflow.toml",
            "[setup]\ncommands = [[\"sh\", \"-c\", \"echo 'npm ERR! 404 left-pad@9 is not in this registry' >&2; exit 1\"]]\n",
        )],
    );
    env.agent(&format!("touch {}\n{COMMITTING}", marker.display()), "");
    let id = env.add(&["Needs deps"]);
    env.cwo(&["run", "--once"]).ok();
    let ball = env.ball(&id);
    assert_eq!(ball["state"], "blocked");
    let reason = ball["blocked_reason"].as_str().unwrap();
    assert!(
        reason.contains("setup `sh -c ") && reason.contains("failed (exit 1)"),
        "{reason}"
    );
    assert!(reason.contains("npm ERR! 404 left-pad@9"), "{reason}");
    assert!(!marker.exists(), "the agent did not start");
    assert_eq!(env.journal("SELECT count(*) FROM attempts"), "1");
    assert!(env.remote_branches().is_empty());
    // No agent ran: the task's LLM cost is known to be nothing.
    let report = env
        .cwo(&["cost", "--by", "task", "--format", "json"])
        .ok()
        .json();
    let row = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["task"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(row["llm_usd"], 0.0, "{row}");
}

#[test]
fn failed_checks_go_back_to_the_agent_then_the_fixed_work_is_pushed() {
    let env = TestEnv::new();
    let prompts = env.tmp.path().join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    commit(
        &env,
        &[
            ("AGENTS.md", "Always run the tests. Use tabs.\n"),
            (
                ".cwo/prompt.md",
                "Task {task_id}: {title}\nDone when:\n{criteria}\n{feedback}\nJSON stays: {\"id\": 1}\n",
            ),
            (
                ".cwo/workflow.toml",
                "[verify]\ncommand = [\"sh\", \"-c\", \"test -f fixed.txt || { echo 'FAIL: fixed.txt is missing'; exit 1; }\"]\n[prompt]\ntemplate = \".cwo/prompt.md\"\ncontext_files = [\"AGENTS.md\"]\n",
            ),
        ],
    );
    env.agent(
        &format!(
            r#"cp "$1" {dir}/prompt-$CWO_ATTEMPT.md
if [ "$CWO_ATTEMPT" = 2 ]; then
  test -f "out-$CWO_TASK_ID.txt" || {{ echo "the first attempt's commit is missing"; exit 8; }}
  echo fixed > fixed.txt; git add fixed.txt; git commit -q -m fix; echo fixed
  exit 0
fi
# The agent loosens the checks in its own commit: its work is still checked by the workflow the
# task started from.
printf '[verify]\ncommand = ["true"]\n' > .cwo/workflow.toml
git add .cwo/workflow.toml
{COMMITTING}"#,
            dir = prompts.display()
        ),
        "",
    );
    let id = env.add(&["Make it pass", "--ac", "tests pass"]);
    let run = env.cwo(&["run", "--once"]).ok();
    let ball = env.ball(&id);
    assert_eq!(ball["state"], "complete", "{}", run.stderr);
    assert_eq!(
        env.journal("SELECT attempt, outcome, reason FROM attempts ORDER BY id"),
        "1|failed|the checks failed: `sh -c test -f fixed.txt || { echo 'FAIL: fixed.txt is missing'; ex…` exit 1\n2|done|NULL",
        "the reason names the command (shortened) and its status"
    );
    let first = read(&prompts.join("prompt-1.md"));
    assert!(
        first
            .starts_with("# Repository context\n\n## AGENTS.md\n\nAlways run the tests. Use tabs."),
        "{first}"
    );
    assert!(
        first.contains(&format!(
            "Task {id}: Make it pass\nDone when:\n1. tests pass\n"
        )) && first.contains("JSON stays: {\"id\": 1}"),
        "{first}"
    );
    assert!(!first.contains("The checks failed"), "{first}");
    let second = read(&prompts.join("prompt-2.md"));
    assert!(
        second.contains("## The checks failed") && second.contains("FAIL: fixed.txt is missing"),
        "{second}"
    );
    let files = git(
        &env.origin,
        &["ls-tree", "--name-only", &format!("cwo/{id}")],
    );
    assert!(
        files.contains("fixed.txt") && files.contains(&format!("out-{id}.txt")),
        "the pushed branch holds both attempts' commits: {files}"
    );
    let log = attempt_log(&env, &id, 1);
    assert!(
        log.contains("[cwo] verify: sh -c test -f fixed.txt")
            && log.contains("FAIL: fixed.txt is missing")
            && log.contains("[cwo] verify: the checks failed"),
        "{log}"
    );
}

#[test]
fn checks_that_always_fail_block_the_task_and_push_nothing() {
    let env = TestEnv::new();
    commit(
        &env,
        &[(
            ".cwo/workflow.toml",
            "[verify]\ncommand = [\"sh\", \"-c\", \"echo '2 tests failed'; exit 1\"]\n",
        )],
    );
    // Each attempt adds a commit on top of the last (a follow-up starts from the rejected work).
    env.agent(
        r#"echo "$CWO_ATTEMPT" >> work.txt; git add work.txt; git commit -q -m "try $CWO_ATTEMPT""#,
        "max_attempts = 2",
    );
    let id = env.add(&["Never green"]);
    env.cwo(&["run", "--once"]).ok();
    let ball = env.ball(&id);
    assert_eq!(ball["state"], "blocked");
    let reason = ball["blocked_reason"].as_str().unwrap();
    assert!(
        reason.contains("the checks failed: `sh -c echo '2 tests failed'; exit 1` exit 1 on attempt 2 (the last)")
            && reason.contains("2 tests failed")
            && reason.contains("nothing was pushed"),
        "{reason}"
    );
    assert!(env.remote_branches().is_empty());
    assert_eq!(env.journal("SELECT count(*) FROM attempts"), "2");

    // With push_on_failure the branch is pushed for a look; the task stays blocked.
    commit(
        &env,
        &[(
            ".cwo/workflow.toml",
            "[verify]\ncommand = [\"sh\", \"-c\", \"echo '2 tests failed'; exit 1\"]\npush_on_failure = true\n",
        )],
    );
    let id = env.add(&["Still never green"]);
    env.cwo(&["run", "--once"]).ok();
    let ball = env.ball(&id);
    assert_eq!(ball["state"], "blocked");
    let reason = ball["blocked_reason"].as_str().unwrap();
    assert!(
        reason.contains("pushed to origin")
            && reason.contains("verify.push_on_failure = true: delivered for a look")
            && reason.contains("2 tests failed"),
        "{reason}"
    );
    assert_eq!(env.remote_branches(), vec![format!("cwo/{id}")]);
}

#[test]
fn a_silent_agent_is_stopped_as_stalled_and_a_chatty_slow_one_is_not() {
    let env = TestEnv::new();
    env.agent(
        r#"if grep -q Silent "$1"; then echo start; sleep 37.25; fi
for i in 1 2 3 4 5 6 7 8; do echo "step $i"; sleep 0.3; done
printf 'done\n' > "out-$CWO_TASK_ID.txt"; git add .; git commit -q -m "$CWO_TASK_ID"
"#,
        "stall_timeout = \"1s\"\nmax_attempts = 1",
    );
    let silent = env.add(&["Silent one"]);
    let chatty = env.add(&["Chatty one"]);
    let started = std::time::Instant::now();
    env.cwo(&["run", "--once"]).ok();
    let ball = env.ball(&silent);
    assert_eq!(ball["state"], "blocked");
    let reason = ball["blocked_reason"].as_str().unwrap();
    assert!(reason.contains("stalled after 1s of silence"), "{reason}");
    assert_eq!(env.ball(&chatty)["state"], "complete");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(25),
        "the silent agent was killed, not waited for"
    );
    assert!(
        crate::common::wait_for(std::time::Duration::from_secs(5), || {
            !std::process::Command::new("pgrep")
                .args(["-f", "sleep 37.25"])
                .status()
                .unwrap()
                .success()
        }),
        "the stalled agent's process group is gone"
    );
}

/// Two opencode-shaped `step_finish` events and one `cwo_usage` line:
/// input 1000 + 2500 + 100 = 3600, output 200 + 300 + 50 = 550, reasoning 0 + 40 + 0 = 40,
/// cache read 0 + 800 + 0 = 800, cache write 0 + 0 + 10 = 10;
/// cost 0.0105 + 0.0201 + 0.002 = 0.0326.
const USAGE_AGENT: &str = r#"
echo '{"type":"step_start","part":{}}'
echo '{"type":"step_finish","part":{"type":"step-finish","reason":"tool-calls","cost":0.0105,"tokens":{"total":1200,"input":1000,"output":200,"reasoning":0,"cache":{"write":0,"read":0}}}}'
echo '{"type":"step_finish","part":{"type":"step-finish","reason":"stop","cost":0.0201,"tokens":{"total":3640,"input":2500,"output":300,"reasoning":40,"cache":{"write":0,"read":800}}}}'
echo '{"cwo_usage": {"input_tokens": 100, "output_tokens": 50, "cache_read_tokens": 0, "cache_write_tokens": 10, "cost_usd": 0.002}}'
"#;

#[test]
fn reported_tokens_and_cost_reach_the_journal_and_cost_by_task() {
    let env = TestEnv::new();
    env.agent(
        &format!(
            "if grep -q Quiet \"$1\"; then {COMMITTING} exit 0; fi\n{USAGE_AGENT}\n{COMMITTING}"
        ),
        "",
    );
    let id = env.add(&["Counted"]);
    let quiet = env.add(&["Quiet"]);
    env.cwo(&["run", "--once"]).ok();
    assert_eq!(
        env.journal(&format!(
            "SELECT input_tokens, output_tokens, reasoning_tokens, cache_read_tokens, cache_write_tokens, steps, steps_without_cost FROM attempt_usage WHERE ball_id = '{id}'"
        )),
        "3600|550|40|800|10|3|0"
    );
    let report = env
        .cwo(&["cost", "--by", "task", "--format", "json"])
        .ok()
        .json();
    let rows = report["rows"].as_array().unwrap();
    let row = rows.iter().find(|r| r["task"] == id.as_str()).unwrap();
    assert_eq!(row["input_tokens"], 3600);
    assert_eq!(row["output_tokens"], 550);
    assert_eq!(row["reasoning_tokens"], 40);
    assert_eq!(row["cache_read_tokens"], 800);
    assert_eq!(row["cache_write_tokens"], 10);
    let llm = row["llm_usd"].as_f64().unwrap();
    assert!((llm - 0.0326).abs() < 1e-9, "{row}");
    let worker = row["expected_usd"].as_f64().unwrap();
    assert!(
        (row["total_usd"].as_f64().unwrap() - (worker + llm)).abs() < 1e-9,
        "{row}"
    );
    let quiet_row = rows.iter().find(|r| r["task"] == quiet.as_str()).unwrap();
    assert_eq!(
        quiet_row["llm_usd"],
        serde_json::Value::Null,
        "an agent that reported nothing has an unknown LLM cost, never $0: {quiet_row}"
    );
    let table = env.cwo(&["cost", "--by", "task"]).ok().stdout;
    assert!(
        table.contains("LLM_USD") && table.contains("$0.0326"),
        "{table}"
    );

    // The CI gate counts the LLM when asked: the quiet task's cost is unknown, so by default
    // the verdict is unknown (exit 3); counted as $0 on request, $0.0326 is over a $0.03 limit.
    let gate = |extra: &[&str]| {
        let mut args = vec!["budget", "check", "--limit-usd", "0.03", "--period", "all"];
        args.extend_from_slice(extra);
        env.cwo(&args)
    };
    assert_eq!(gate(&[]).code, 0, "the workers alone are within $0.03");
    let unknown = gate(&["--include", "llm"]);
    assert_eq!(unknown.code, 3, "{}", unknown.stderr);
    assert_eq!(unknown.json()["unknown_llm_tasks"][0], quiet.as_str());
    let over = gate(&["--include", "llm", "--on-unknown", "warn"]);
    assert_eq!(over.code, 1, "{}", over.stderr);
    let doc = over.json();
    assert!(
        (doc["llm_usd"].as_f64().unwrap() - 0.0326).abs() < 1e-9,
        "{doc}"
    );
    assert!(
        over.stderr.contains("of which $0.0326 LLM"),
        "{}",
        over.stderr
    );
}

#[test]
fn the_per_task_cost_cap_stops_the_agent_and_blocks_the_task() {
    let env = TestEnv::new();
    let after = env.tmp.path().join("went-on");
    env.agent(
        &format!(
            r#"echo '{{"cwo_usage": {{"input_tokens": 5000, "output_tokens": 100, "cost_usd": 0.75}}}}'
sleep 0.5
echo '{{"cwo_usage": {{"input_tokens": 5000, "output_tokens": 100, "cost_usd": 0.75}}}}'
sleep 20
touch {}
{COMMITTING}"#,
            after.display()
        ),
        "max_cost_usd = 1.0",
    );
    let id = env.add(&["Expensive"]);
    let started = std::time::Instant::now();
    env.cwo(&["run", "--once"]).ok();
    let ball = env.ball(&id);
    assert_eq!(ball["state"], "blocked");
    let reason = ball["blocked_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("LLM budget of $1 reached after 1 attempt(s) ($1.5000 spent"),
        "{reason}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(18));
    assert!(!after.exists(), "the agent was stopped");
    assert_eq!(env.journal("SELECT count(*) FROM attempts"), "1");
}

#[test]
fn a_bad_workflow_file_stops_the_run_with_its_line_before_any_worker() {
    let env = TestEnv::new();
    commit(
        &env,
        &[(
            ".cwo/workflow.toml",
            "[setup]\ncommands = [[\"npm\", \"ci\"]]\n[agent]\ntimeout = \"soon\"\n",
        )],
    );
    env.agent(COMMITTING, "");
    let id = env.add(&["Anything"]);
    let run = env.cwo(&["run", "--once"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let file = env.project.join(".cwo/workflow.toml");
    assert!(
        run.stderr.contains(&format!("{}:4:", file.display())) && run.stderr.contains("soon"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("commit the fix"), "{}", run.stderr);
    assert_eq!(env.journal("SELECT count(*) FROM workers"), "0");
    assert_eq!(env.ball(&id)["state"], "pending");

    // `cwo doctor` says the same, and that an uncommitted fix is not seen.
    let doctor = env.cwo(&["doctor", "--format", "json"]);
    assert_eq!(doctor.code, 1, "{}", doctor.stderr);
    let check = crate::common::doctor_check(&doctor.json(), "workflow");
    assert_eq!(check["status"], "fail", "{check}");
    assert!(check["detail"].as_str().unwrap().contains(":4:"), "{check}");
    std::fs::write(&file, "[setup]\ncommands = [[\"npm\", \"ci\"]]\n").unwrap();
    let check =
        crate::common::doctor_check(&env.cwo(&["doctor", "--format", "json"]).json(), "workflow");
    assert_eq!(
        check["status"], "fail",
        "the committed file is still wrong: {check}"
    );
    git(&env.project, &["commit", "-qam", "fix the workflow"]);
    let check =
        crate::common::doctor_check(&env.cwo(&["doctor", "--format", "json"]).json(), "workflow");
    assert_eq!(check["status"], "ok", "{check}");
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("setup: 1 command(s)"),
        "{check}"
    );
}

#[test]
fn the_repository_sets_limits_and_juggle_balls_pick_their_model() {
    let env = TestEnv::new();
    commit(
        &env,
        &[(
            ".cwo/workflow.toml",
            "[agent]\nsoft_timeout = \"500ms\"\nmodel = \"repo/default\"\n",
        )],
    );
    let seen = env.tmp.path().join("models");
    env.agent_with(
        "",
        &format!(
            r#"echo "$CWO_TASK_ID=${{CWO_MODEL:-none}}" >> {}
for i in 1 2 3 4 5 6; do echo "working $i"; sleep 0.3; done
{COMMITTING}"#,
            seen.display()
        ),
        "[agent.models]\nsmall = \"cheap/mini\"",
    );
    let sized = env.add(&["Small one"]);
    let plain = env.add(&["Plain one"]);
    // juggle writes model_size on the ball; cwo maps it through [agent.models].
    let text = read(&env.balls_path()).replace(
        &format!("\"id\":\"{sized}\""),
        &format!("\"id\":\"{sized}\",\"model_size\":\"small\""),
    );
    std::fs::write(env.balls_path(), text).unwrap();
    let run = env.cwo(&["run", "--once"]).ok();
    let models = read(&seen);
    assert!(models.contains(&format!("{sized}=cheap/mini")), "{models}");
    assert!(
        models.contains(&format!("{plain}=repo/default")),
        "{models}"
    );
    assert!(
        run.stderr
            .contains("model cheap/mini (from the task's model_size = small"),
        "{}",
        run.stderr
    );
    let log = attempt_log(&env, &plain, 1);
    assert!(
        log.contains("[cwo] soft timeout: the agent has run 500ms"),
        "the soft timeout is in the log:\n{log}"
    );
    assert_eq!(env.ball(&plain)["state"], "complete");
    assert!(
        env.journal("SELECT warning FROM attempt_usage")
            .contains("soft timeout"),
    );
}
