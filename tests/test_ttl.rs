//! Issue 11, money safety: a stopped VM still dies (Compute Engine clears a stopped VM's
//! termination timer, which the fake models), TTL rotation, and the reaper for a crashed
//! controller's worker.

use std::time::Duration;

use crate::common::{kill, wait_for};
use crate::test_gcp::gcp;

const COMMIT: &str = r#"git commit -q --allow-empty -m "$CWO_TASK_ID""#;

/// The fake's model: a running VM dies at its TTL; a stopped one never does (its timer is
/// cleared), and is left to cwo, which deletes it at the next look (`reap`).
#[test]
fn a_running_vm_dies_at_its_ttl_and_a_stopped_one_only_by_cwo() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let first = g.env.cwo(&["up"]).ok().stdout.trim().to_string();
    g.fake.advance(Duration::from_secs(91 * 60));
    assert!(
        g.fake.vm_names().is_empty(),
        "the TTL (90m by default) deleted {first}"
    );
    // The journal learns it at the next look.
    g.env.cwo(&["down"]).ok();
    let second = g.env.cwo(&["up"]).ok().stdout.trim().to_string();
    g.fake.stop_vm(&second);
    g.fake.advance(Duration::from_secs(48 * 3600));
    assert_eq!(
        g.fake.vm_names(),
        vec![second.clone()],
        "a stopped VM outlives its TTL"
    );
    let reap = g.env.cwo(&["reap", "--yes"]).ok();
    assert!(
        g.fake.vm_names().is_empty(),
        "{}{}",
        reap.stdout,
        reap.stderr
    );
    assert!(reap.stdout.contains("stopped"), "{}", reap.stdout);
}

/// A VM stopped outside cwo is never shown as ready: the next `cwo status` deletes it.
#[test]
fn a_vm_stopped_outside_cwo_is_deleted_by_the_next_status() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let name = g.env.cwo(&["up"]).ok().stdout.trim().to_string();
    g.fake.stop_vm(&name);
    let status = g.env.cwo(&["status", "--format", "json"]).ok();
    assert!(
        status
            .stderr
            .contains(&format!("worker {name} was stopped")),
        "{}",
        status.stderr
    );
    assert!(g.fake.vm_names().is_empty());
    let json = status.json();
    assert!(
        json["workers"].as_array().unwrap().is_empty(),
        "nothing shown as ready: {json:#}"
    );
    assert_eq!(
        g.env
            .journal("SELECT state, termination_reason FROM workers"),
        "deleted|idle"
    );
}

/// A stopped worker is never adopted: the next run deletes it and brings up a fresh one.
#[test]
fn a_stopped_worker_is_never_adopted() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let name = g.env.cwo(&["up"]).ok().stdout.trim().to_string();
    g.fake.stop_vm(&name);
    let id = g.env.add(&["on a fresh worker"]);
    let run = g.env.cwo(&["run", "--once"]).ok();
    assert_eq!(g.env.ball(&id)["state"], "complete", "{}", run.stderr);
    assert!(!run.stderr.contains("adopting"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("worker {name} was stopped")),
        "{}",
        run.stderr
    );
    assert!(g.fake.vm_names().is_empty());
    assert_eq!(g.fake.created().len(), 2, "a fresh worker did the work");
}

/// TTL rotation: a worker whose remaining life is less than an attempt may need takes no new
/// task; once its running task ends it is deleted and a fresh worker takes the rest.
#[test]
fn a_worker_near_its_ttl_takes_no_new_task_and_is_rotated() {
    let Some(g) = gcp(
        "",
        r#"if [ ! -e "$0.first" ]; then
  touch "$0.first"
  i=0; while [ ! -e "$0.release" ] && [ "$i" -lt 300 ]; do i=$((i + 1)); sleep 0.1; done
fi
git commit -q --allow-empty -m "$CWO_TASK_ID""#,
        "",
    ) else {
        return;
    };
    let script = g.env.project.join("agents/agent.sh");
    let first = format!("{}.first", script.display());
    let a = g.env.add(&["first", "--priority", "high"]);
    let b = g.env.add(&["second"]);
    let child = g.env.spawn(&["run", "--once"]);
    assert!(wait_for(Duration::from_secs(30), || std::path::Path::new(
        &first
    )
    .exists()));
    // Its TTL is about to end (as if it had been working for a while).
    let vm = g.fake.vm_names()[0].clone();
    let soon = chrono::Utc::now().timestamp() + 60;
    g.fake.set_label(&vm, "cwo-expires-at", &soon.to_string());
    std::fs::write(format!("{}.release", script.display()), "").unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for id in [&a, &b] {
        assert_eq!(g.env.ball(id)["state"], "complete", "{stderr}");
    }
    assert!(
        stderr.contains(&format!("rotating worker {vm}: its TTL ends in")),
        "{stderr}"
    );
    assert_eq!(g.fake.created().len(), 2, "{stderr}");
    assert!(g.fake.vm_names().is_empty(), "{stderr}");
    assert_eq!(
        g.env.journal(&format!(
            "SELECT termination_reason FROM workers WHERE name = '{vm}'"
        )),
        "rotated"
    );
}

/// A crashed controller's worker: with no controller holding the project and no heartbeat for
/// `reap_grace`, the reaper marks it, deletes it on a later pass, and its ball goes back to
/// pending with the attempt closed.
#[test]
fn the_reaper_deletes_a_crashed_controllers_worker_and_returns_its_ball() {
    let Some(g) = gcp(
        "",
        r#"touch "$0.started"; sleep 12; git commit -q --allow-empty -m x"#,
        "",
    ) else {
        return;
    };
    g.env.top_setting("reap_grace = \"2s\"");
    let id = g.env.add(&["interrupted by a crash"]);
    let child = g.env.spawn(&["run", "--once"]);
    let started = g.env.project.join("agents/agent.sh.started");
    assert!(wait_for(Duration::from_secs(30), || started.exists()));
    kill(&child, "KILL");
    let _ = child.wait_with_output();
    assert_eq!(g.env.ball(&id)["state"], "in_progress");
    let vm = g.fake.vm_names()[0].clone();
    std::thread::sleep(Duration::from_millis(2200));
    let first = g.env.cwo(&["reap", "--yes"]).ok();
    assert!(
        first.stdout.contains("mark") && first.stdout.contains("abandoned"),
        "{}",
        first.stdout
    );
    assert_eq!(
        g.fake.vm_names(),
        vec![vm.clone()],
        "marked, not yet deleted"
    );
    std::thread::sleep(Duration::from_millis(2200));
    let second = g.env.cwo(&["reap", "--yes"]).ok();
    assert!(
        g.fake.vm_names().is_empty(),
        "{}{}",
        second.stdout,
        second.stderr
    );
    assert_eq!(g.env.ball(&id)["state"], "pending", "{}", second.stderr);
    assert!(
        second
            .stderr
            .contains(&format!("{id}: back to pending (worker {vm} was reaped)")),
        "{}",
        second.stderr
    );
    assert_eq!(g.env.journal("SELECT outcome FROM attempts"), "aborted");
}

/// A TTL that leaves a worker no time for a task is refused at load.
#[test]
fn a_ttl_shorter_than_an_attempt_is_refused() {
    let Some(g) = gcp("ttl = \"15m\"", COMMIT, "timeout = \"30m\"") else {
        return;
    };
    let r = g.env.cwo(&["status"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("gcp.ttl (15m) leaves a worker no time for a task")
            && r.stderr.contains("at least \"40m\""),
        "{}",
        r.stderr
    );
}

/// A controller killed mid-queue: with the default watchdog action nothing stops the VM, so the
/// cloud's TTL deletes it; nothing TERMINATED is left behind.
#[test]
fn a_killed_controllers_worker_is_deleted_by_the_ttl_and_nothing_stopped_remains() {
    let Some(g) = gcp("", r#"touch "$0.started"; sleep 8"#, "") else {
        return;
    };
    g.env.add(&["cut short"]);
    g.env.add(&["never started"]);
    let child = g.env.spawn(&["run", "--once"]);
    let started = g.env.project.join("agents/agent.sh.started");
    assert!(wait_for(Duration::from_secs(30), || started.exists()));
    kill(&child, "KILL");
    let _ = child.wait_with_output();
    assert_eq!(g.fake.vm_names().len(), 1);
    // The watchdog's default here: stop orphaned agents, never the VM.
    let script = g.env.cwo(&["bootstrap", "script", "--gce"]).ok().stdout;
    assert!(
        script.contains("CWO_WATCHDOG_ACTION=stop-agents"),
        "the default watchdog never powers off a VM with a TTL"
    );
    g.fake.advance(Duration::from_secs(90 * 60 + 1));
    assert!(g.fake.vm_names().is_empty(), "the TTL deleted it, running");
}
