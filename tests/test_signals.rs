//! One controller per project, signals, idle teardown and crash recovery.

use std::io::Read;
use std::time::Duration;

use crate::common::{TestEnv, git_shim, kill, wait_for};

const SLOW_COMMIT: &str = r#"
echo "started $CWO_TASK_ID"
sleep 2
echo done > "f-$CWO_TASK_ID"; git add .; git commit -q -m "$CWO_TASK_ID"
echo "finished $CWO_TASK_ID"
"#;

fn wait_running(env: &TestEnv) {
    assert!(
        wait_for(Duration::from_secs(15), || env.ball_state_is_in_progress()),
        "the task never started"
    );
}

impl TestEnv {
    fn ball_state_is_in_progress(&self) -> bool {
        std::fs::read_to_string(self.balls_path())
            .map(|t| t.contains("\"in_progress\""))
            .unwrap_or(false)
    }
}

fn finish(child: std::process::Child) -> (i32, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_second_controller_is_refused_with_the_holders_pid() {
    let env = TestEnv::new();
    env.agent(SLOW_COMMIT, "");
    env.add(&["slow"]);
    let first = env.spawn(&["run", "--once"]);
    wait_running(&env);
    let second = env.cwo(&["run", "--once"]);
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second.stderr.contains(&format!(
            "another cwo controller (pid {}) is running",
            first.id()
        )),
        "{}",
        second.stderr
    );
    assert!(second.stderr.contains("hint: "), "{}", second.stderr);
    let (code, _) = finish(first);
    assert_eq!(code, 0);
}

#[test]
fn sigterm_with_now_aborts_returns_the_ball_and_tears_down() {
    let env = TestEnv::new();
    env.agent("echo started; sleep 30; echo never", "");
    let id = env.add(&["long"]);
    let child = env.spawn(&["run", "--now"]);
    wait_running(&env);
    assert!(wait_for(Duration::from_secs(5), || env.live_workers() == 1));
    std::thread::sleep(Duration::from_millis(300));
    kill(&child, "TERM");
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(env.ball(&id)["state"], "pending", "{stderr}");
    assert_eq!(env.live_workers(), 0);
    assert_eq!(env.journal("SELECT outcome FROM attempts"), "aborted");
    assert_eq!(
        env.journal("SELECT state, termination_reason FROM workers"),
        "deleted|user"
    );
    assert_eq!(env.journal("SELECT count(*) FROM ledger"), "1");
    assert_eq!(env.journal("SELECT state FROM tasks"), "pending");
}

#[test]
fn sigterm_lets_the_running_attempt_finish() {
    let env = TestEnv::new();
    env.agent(SLOW_COMMIT, "");
    let a = env.add(&["first", "--priority", "high"]);
    let b = env.add(&["second"]);
    let child = env.spawn(&["run"]);
    wait_running(&env);
    kill(&child, "TERM");
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(env.ball(&a)["state"], "complete", "{stderr}");
    assert_eq!(
        env.ball(&b)["state"],
        "pending",
        "no new task is claimed after the signal"
    );
    assert_eq!(env.live_workers(), 0);
}

#[test]
fn idle_worker_is_torn_down_and_the_loop_keeps_polling() {
    let env = TestEnv::new();
    env.agent_with(
        "idle_timeout = \"1s\"",
        "git commit -q --allow-empty -m x",
        "",
    );
    env.add(&["one"]);
    let mut child = env.spawn(&["run"]);
    assert!(wait_for(Duration::from_secs(15), || env.journal_has_deleted_worker()));
    // Still polling: new work brings up a new worker.
    env.add(&["two"]);
    assert!(wait_for(Duration::from_secs(15), || env
        .remote_branches()
        .len()
        == 2));
    kill(&child, "TERM");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        stderr.contains("idle for 1.00s; tearing down worker"),
        "{stderr}"
    );
    assert_eq!(
        env.journal("SELECT count(*) FROM workers WHERE state = 'deleted'"),
        "2"
    );
    assert_eq!(
        env.journal("SELECT group_concat(termination_reason) FROM ledger"),
        "idle,user"
    );
}

impl TestEnv {
    fn journal_has_deleted_worker(&self) -> bool {
        self.journal_count("SELECT count(*) FROM workers WHERE state = 'deleted'") == Some(1)
    }

    /// A count from the controller's journal while it runs: `None` until the journal exists
    /// with its tables (the controller may be between creating the file and its schema).
    fn journal_count(&self, sql: &str) -> Option<i64> {
        let path = self.state.join("journal.sqlite");
        if !path.exists() {
            return None;
        }
        let conn = rusqlite::Connection::open(path).ok()?;
        conn.query_row(sql, [], |r| r.get(0)).ok()
    }
}

#[test]
fn a_killed_controller_reattaches_to_the_running_agent() {
    let env = TestEnv::new();
    env.agent(
        r#"echo start >> "$HOME/starts"
echo "step 1"; sleep 2; echo "step 2"
git commit -q --allow-empty -m ok
echo "step 3""#,
        "",
    );
    let id = env.add(&["survives"]);
    let child = env.spawn(&["run", "--once"]);
    assert!(wait_for(Duration::from_secs(10), || env
        .home
        .join("starts")
        .exists()));
    std::thread::sleep(Duration::from_millis(300));
    kill(&child, "KILL");
    let _ = finish(child);
    assert_eq!(env.ball(&id)["state"], "in_progress");
    assert_eq!(env.live_workers(), 1);
    let run = env.cwo(&["run", "--once"]).ok();
    assert!(run.stderr.contains("adopting worker"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("{id} reattached to attempt 1")),
        "{}",
        run.stderr
    );
    assert_eq!(env.ball(&id)["state"], "complete");
    assert_eq!(env.live_workers(), 0);
    assert_eq!(
        env.journal("SELECT attempt, outcome FROM attempts"),
        "1|done"
    );
    let starts = std::fs::read_to_string(env.home.join("starts")).unwrap();
    assert_eq!(starts, "start\n", "the agent ran once");
    let log = env.cwo(&["logs", &id]).ok().stdout;
    assert_eq!(
        log, "step 1\nstep 2\nstep 3\n[cwo] agent ended: exit 0\n",
        "no gap, no duplicate"
    );
}

#[test]
fn a_controller_killed_on_a_worker_that_vanished_closes_the_attempt() {
    let env = TestEnv::new();
    env.agent("echo go; sleep 30", "max_attempts = 1");
    let id = env.add(&["orphan"]);
    let child = env.spawn(&["run", "--once"]);
    wait_running(&env);
    assert!(wait_for(Duration::from_secs(10), || env
        .cwo(&["logs", &id])
        .stdout
        .contains("go")));
    kill(&child, "KILL");
    let _ = finish(child);
    // The worker disappears while no controller watches (a VM deleted by its TTL).
    let down = env.cwo(&["down"]).ok();
    assert!(down.stderr.contains("attempt 1 of"), "{}", down.stderr);
    assert_eq!(
        env.journal("SELECT outcome, reason FROM attempts"),
        "aborted|controller stopped; worker gone"
    );
    assert_eq!(env.live_workers(), 0);
    // The ball is still in_progress: the next run takes it first.
    env.agent("git commit -q --allow-empty -m ok", "");
    env.cwo(&["run", "--once"]).ok();
    assert_eq!(env.ball(&id)["state"], "complete");
}

#[test]
fn logs_follow_streams_a_running_attempt_to_its_end() {
    let env = TestEnv::new();
    env.agent(
        "for i in 1 2 3 4 5 6; do echo \"line $i\"; sleep 0.3; done; git commit -q --allow-empty -m x",
        "",
    );
    let id = env.add(&["chatty"]);
    let run = env.spawn(&["run", "--once"]);
    wait_running(&env);
    assert!(wait_for(Duration::from_secs(10), || env
        .cwo(&["logs", &id])
        .code
        == 0));
    let follow = env.cwo(&["logs", "-f", &id]).ok();
    let (code, _) = finish(run);
    assert_eq!(code, 0);
    let expected: String = (1..=6).map(|i| format!("line {i}\n")).collect();
    assert_eq!(
        follow.stdout,
        format!("{expected}[cwo] agent ended: exit 0\n")
    );
}

#[test]
fn a_polling_controller_survives_a_failed_bring_up() {
    let env = TestEnv::new();
    env.settings("[agent]\ncommand = [\"not-installed-agent\"]");
    env.add(&["waits for an agent"]);
    let child = env.spawn(&["run"]);
    assert!(wait_for(Duration::from_secs(15), || {
        env.journal_count("SELECT count(*) FROM workers WHERE termination_reason = 'error'")
            .is_some_and(|n| n != 0)
    }));
    std::thread::sleep(Duration::from_millis(300));
    kill(&child, "TERM");
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("could not bring up a worker: worker"),
        "{stderr}"
    );
    assert!(stderr.contains("retrying in"), "{stderr}");
    assert_eq!(env.live_workers(), 0);
    // --once reports it as a failure.
    let once = env.cwo(&["run", "--once"]);
    assert_eq!(once.code, 1);
}

/// A `git` in front of the real one that, the first time a checkout's `user.email` is set,
/// records its pid in `gate` and hangs: the window in which a controller is killed half-way
/// through preparing a checkout.
fn git_gate(env: &TestEnv) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = env.tmp.path().join("gate-bin");
    let gate = env.tmp.path().join("gate");
    git_shim(
        &dir,
        &format!(
            "case \" $* \" in *\" config user.email \"*)\n  if [ ! -e '{g}.done' ]; then touch '{g}.done'; echo $$ > '{g}.tmp'; mv '{g}.tmp' '{g}'; sleep 60; fi;;\nesac",
            g = gate.display()
        ),
    );
    (dir, gate)
}

/// Issue 10 item 3: a controller killed while a task's checkout is half made (cloned, its
/// `user.email` not yet set) must not leave a checkout the next run trusts: the next run starts a
/// fresh attempt, and the agent runs exactly once.
#[test]
fn a_kill_during_checkout_preparation_never_runs_the_agent_twice() {
    let env = TestEnv::new();
    env.agent(
        r#"echo start >> "$HOME/starts"
git config user.email >/dev/null || { echo "the checkout has no user.email"; exit 3; }
git commit -q --allow-empty -m ok"#,
        "",
    );
    let id = env.add(&["half-made checkout"]);
    let (bin, gate) = git_gate(&env);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    // No identity from the environment: the checkout's own config is what the agent commits with.
    let mut cmd = env.cmd(&["run", "--once"]);
    for v in [
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
    ] {
        cmd.env_remove(v);
    }
    let child = cmd
        .env("PATH", &path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || gate.exists()),
        "the checkout was never prepared"
    );
    kill(&child, "KILL");
    let _ = finish(child);
    let hung = std::fs::read_to_string(&gate).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", hung.trim()])
        .status();
    assert_eq!(env.ball(&id)["state"], "in_progress");
    let mut again = env.cmd(&["run", "--once"]);
    for v in [
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
    ] {
        again.env_remove(v);
    }
    let out = again.env("PATH", &path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(env.ball(&id)["state"], "complete", "{stderr}");
    let starts = std::fs::read_to_string(env.home.join("starts")).unwrap_or_default();
    assert_eq!(starts, "start\n", "the agent ran once: {stderr}");
    assert_eq!(
        env.journal("SELECT attempt, outcome FROM attempts ORDER BY attempt"),
        "1|aborted\n2|done",
        "{stderr}"
    );
}
