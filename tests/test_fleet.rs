//! Fleets (issue 14): the loop scales 0..`workers.max` by the ready tasks, within the hourly
//! ceiling and the capacity the provider has, on the fake Compute API, the local provider and
//! the ssh provider (two loopback sshd hosts). The caps are checked from records the loop does
//! not write: the fake's own history of creates and deletes, and the journal's worker rows (an
//! interval from the intent written before the create to the deletion confirmed after it, which
//! contains the worker's real life).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use crate::common::fake_gce::FakeGce;
use crate::common::sshd::Sshd;
use crate::common::{TestEnv, kill, wait_for};
use crate::test_gcp::{Gcp, gcp};

/// An agent that notes its start in `starts` (one line per run of the agent, with the task),
/// works for `secs`, and commits.
fn counting_agent(starts: &Path, secs: &str) -> String {
    format!(
        r#"echo "$CWO_TASK_ID" >> {starts:?}
sleep {secs}
git commit -q --allow-empty -m "$CWO_TASK_ID"
echo "done $CWO_TASK_ID""#
    )
}

/// Replaces the agent script `agent_with` wrote (its path in cwo.toml stays).
fn rewrite_agent(env: &TestEnv, body: &str) {
    std::fs::write(
        env.project.join("agents/agent.sh"),
        format!("set -eu\n{body}\n"),
    )
    .unwrap();
}

/// `n` ready tasks; their ids.
fn tasks(env: &TestEnv, n: usize) -> Vec<String> {
    (1..=n).map(|i| env.add(&[&format!("task {i}")])).collect()
}

/// The tasks each agent run was for, counted.
fn starts_of(path: &Path) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *seen.entry(line.to_string()).or_insert(0) += 1;
    }
    seen
}

/// Every task complete, and each one's agent ran exactly once.
#[track_caller]
fn all_done_once(env: &TestEnv, ids: &[String], starts: &Path, stderr: &str) {
    for id in ids {
        assert_eq!(env.ball(id)["state"], "complete", "{id}\n{stderr}");
    }
    let seen = starts_of(starts);
    let expected: BTreeMap<String, usize> = ids.iter().map(|i| (i.clone(), 1)).collect();
    assert_eq!(seen, expected, "each agent ran once\n{stderr}");
    assert_eq!(
        env.journal("SELECT count(*) FROM attempts WHERE outcome = 'done'"),
        ids.len().to_string(),
        "{stderr}"
    );
}

/// The most workers the fake had at once, recomputed from its history of creates and deletes
/// (and checked against its own `max_live`); plus how many it created and deleted.
fn fake_peak(fake: &FakeGce) -> (usize, usize, usize) {
    let history = fake.history();
    let (mut live, mut most) = (0usize, 0usize);
    for e in &history {
        live = if e.created { live + 1 } else { live - 1 };
        most = most.max(live);
    }
    assert_eq!(most, fake.max_live(), "{history:?}");
    let created = history.iter().filter(|e| e.created).count();
    (most, created, history.len() - created)
}

/// The most workers alive at once by the journal: each worker the provider created (it has an
/// instance record; a create the provider refused has none, and never existed), from its intent
/// (written before the create) to its confirmed deletion. A deletion and an intent at the same
/// instant count the deletion first (the loop sees a teardown end before it brings up another).
fn journal_peak(env: &TestEnv) -> usize {
    let rows = env.journal(
        "SELECT intent_at, coalesce(deleted_at, '9999') FROM workers WHERE instance IS NOT NULL",
    );
    let mut events: Vec<(String, i32)> = rows
        .lines()
        .flat_map(|r| {
            let (from, to) = r.split_once('|').unwrap();
            [(from.to_string(), 1), (to.to_string(), -1)]
        })
        .collect();
    events.sort();
    let (mut live, mut most) = (0i32, 0i32);
    for (_, delta) in events {
        live += delta;
        most = most.max(live);
    }
    most as usize
}

/// How many workers ran attempts.
fn workers_used(env: &TestEnv) -> usize {
    env.journal("SELECT count(DISTINCT worker) FROM attempts")
        .parse()
        .unwrap()
}

/// A gcp project (the fake Compute API, its VMs the test sshd) with `[workers]` settings, and
/// the file the agent notes its starts in.
fn gcp_fleet(workers: &str, gcp_extra: &str, secs: &str) -> Option<(Gcp, std::path::PathBuf)> {
    let g = gcp(&format!("{gcp_extra}\n[workers]\n{workers}\n"), "true", "")?;
    let starts = g.env.tmp.path().join("starts");
    rewrite_agent(&g.env, &counting_agent(&starts, secs));
    Some((g, starts))
}

#[test]
fn twelve_tasks_on_the_fake_never_exceed_four_workers() {
    let Some((g, starts)) = gcp_fleet("max = 4", "", "0.3") else {
        return;
    };
    let ids = tasks(&g.env, 12);
    let run = g.env.cwo(&["run", "--once"]).ok();
    all_done_once(&g.env, &ids, &starts, &run.stderr);
    let (peak, created, deleted) = fake_peak(&g.fake);
    // The first poll sees 12 ready tasks and no worker: it brings up max at once.
    assert_eq!(peak, 4, "{}", run.stderr);
    assert_eq!(created, deleted, "{}", run.stderr);
    assert!(g.fake.vm_names().is_empty(), "{:?}", g.fake.vm_names());
    assert!(workers_used(&g.env) > 1, "{}", run.stderr);
    assert_eq!(
        g.env
            .journal("SELECT count(*) FROM workers WHERE state != 'deleted'"),
        "0"
    );
    assert!(
        run.stderr
            .contains("bringing up 4 workers for 12 ready task(s)"),
        "{}",
        run.stderr
    );
    // Said once, not at every claim, and counting only the tasks the four coming up will not
    // take.
    assert_eq!(
        run.stderr.matches("wait for room").count(),
        1,
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(
            "8 task(s) wait for room: the fleet is at its cap of 4 worker(s) (workers.max)"
        ),
        "{}",
        run.stderr
    );
}

/// Room for two VMs in the whole region: the other two creates of the batch fail on capacity,
/// the two workers that came up drain the queue, and the run exits 0: a fleet smaller than
/// `workers.max` is a warning, not a failure, once every task is done.
#[test]
fn capacity_for_two_drains_the_queue_on_two_workers() {
    let Some((g, starts)) = gcp_fleet("max = 4", "", "0.2") else {
        return;
    };
    g.fake.faults().region_room = Some(2);
    let ids = tasks(&g.env, 4);
    let run = g.env.cwo(&["run", "--once"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    all_done_once(&g.env, &ids, &starts, &run.stderr);
    let (peak, created, deleted) = fake_peak(&g.fake);
    assert_eq!((peak, created, deleted), (2, 2, 2), "{}", run.stderr);
    assert!(g.fake.vm_names().is_empty());
    assert_eq!(workers_used(&g.env), 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("could not bring up a worker"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("worker(s) keep working"),
        "{}",
        run.stderr
    );
    // The creates that found no room left nothing behind in the journal either.
    assert_eq!(
        g.env
            .journal("SELECT count(*) FROM workers WHERE state != 'deleted'"),
        "0"
    );
}

/// `kill -9` of a controller with four workers mid-task: the next run adopts all four and
/// reattaches their attempts (no agent runs twice), finishes the queue on them, and deletes them.
/// The agents wait on a gate until the controller is dead, so all four are mid-task when it dies.
#[test]
fn a_killed_fleet_is_adopted_and_no_task_runs_twice() {
    let Some((g, starts)) = gcp_fleet("max = 4", "", "0") else {
        return;
    };
    let gate = g.env.tmp.path().join("gate");
    rewrite_agent(
        &g.env,
        &counting_agent(&starts, "0").replacen(
            "sleep 0",
            &format!("while [ ! -e {gate:?} ]; do sleep 0.1; done"),
            1,
        ),
    );
    let ids = tasks(&g.env, 6);
    let child = g.env.spawn(&["run", "--once"]);
    assert!(
        wait_for(Duration::from_secs(60), || starts_of(&starts).len() == 4),
        "four agents never started: {:?}",
        starts_of(&starts)
    );
    kill(&child, "KILL");
    let _ = child.wait_with_output();
    std::fs::write(&gate, "").unwrap();
    assert_eq!(g.fake.vm_names().len(), 4);
    assert_eq!(
        g.env
            .journal("SELECT count(*) FROM attempts WHERE ended_at IS NULL"),
        "4"
    );
    let run = g.env.cwo(&["run", "--once"]).ok();
    assert_eq!(
        run.stderr.matches("adopting worker").count(),
        4,
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("reattached to attempt 1").count(),
        4,
        "{}",
        run.stderr
    );
    all_done_once(&g.env, &ids, &starts, &run.stderr);
    assert_eq!(
        g.env.journal("SELECT count(*) FROM attempts"),
        "6",
        "one attempt per task"
    );
    let (peak, created, deleted) = fake_peak(&g.fake);
    assert_eq!(
        (peak, created, deleted),
        (4, 4, 4),
        "the adopted four took the rest: {}",
        run.stderr
    );
    assert!(g.fake.vm_names().is_empty());
}

#[test]
fn fresh_per_task_gives_each_task_its_own_worker() {
    let Some((g, starts)) = gcp_fleet("max = 2\nfresh_per_task = true", "", "0.2") else {
        return;
    };
    let ids = tasks(&g.env, 4);
    let run = g.env.cwo(&["run", "--once"]).ok();
    all_done_once(&g.env, &ids, &starts, &run.stderr);
    let (peak, created, deleted) = fake_peak(&g.fake);
    assert_eq!((created, deleted), (4, 4), "{}", run.stderr);
    // Both of the first batch come up before either has had its task.
    assert_eq!(peak, 2, "{}", run.stderr);
    assert!(g.fake.vm_names().is_empty());
    // Each attempt on a worker of its own, each worker deleted after it.
    assert_eq!(workers_used(&g.env), 4);
    assert_eq!(
        g.env
            .journal("SELECT count(*) FROM workers WHERE state = 'deleted'"),
        "4"
    );
    assert_eq!(
        run.stderr.matches("had its task; deleting it").count(),
        4,
        "{}",
        run.stderr
    );
}

/// A ceiling of exactly two workers' list price (as `cwo up --plan` prices one) with max = 4.
#[test]
fn the_hourly_ceiling_stops_scale_up_at_the_worker_count_it_pays_for() {
    let Some((g, starts)) = gcp_fleet("max = 4", "", "0.3") else {
        return;
    };
    let plan = g.env.cwo(&["up", "--plan", "--format", "json"]).ok().json();
    let price = plan["plan"]["hourly_cost_usd"]["total"].as_f64().unwrap();
    let toml = std::fs::read_to_string(g.env.project.join("cwo.toml")).unwrap();
    std::fs::write(
        g.env.project.join("cwo.toml"),
        toml.replace(
            "[workers]\n",
            &format!("[workers]\nmax_hourly_usd = {}\n", 2.0 * price),
        ),
    )
    .unwrap();
    let ids = tasks(&g.env, 4);
    let run = g.env.cwo(&["run", "--once"]).ok();
    assert!(
        run.stderr.contains("caps the fleet at 2 worker(s)"),
        "{}",
        run.stderr
    );
    all_done_once(&g.env, &ids, &starts, &run.stderr);
    let (peak, created, deleted) = fake_peak(&g.fake);
    assert_eq!((peak, created, deleted), (2, 2, 2), "{}", run.stderr);
    assert!(g.fake.vm_names().is_empty());
}

/// A ceiling with a machine type the price catalog does not know: the run refuses before it
/// creates anything, as a settings error naming the ceiling.
#[test]
fn an_unpriced_machine_with_a_ceiling_refuses_to_run() {
    let Some((g, _starts)) = gcp_fleet(
        "max = 4\nmax_hourly_usd = 1",
        "machine_type = \"zz9-unpriced-4\"",
        "0",
    ) else {
        return;
    };
    let ids = tasks(&g.env, 2);
    let run = g.env.cwo(&["run", "--once"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("max_hourly_usd"), "{}", run.stderr);
    assert!(run.stderr.contains("zz9-unpriced-4"), "{}", run.stderr);
    assert!(g.fake.created().is_empty(), "{:?}", g.fake.created());
    assert_eq!(g.env.journal("SELECT count(*) FROM workers"), "0");
    for id in &ids {
        assert_eq!(g.env.ball(id)["state"], "pending");
    }
}

#[test]
fn twelve_tasks_on_the_local_provider_never_exceed_four_workers() {
    let env = TestEnv::new();
    let starts = env.tmp.path().join("starts");
    env.agent_with("[workers]\nmax = 4", &counting_agent(&starts, "0.3"), "");
    let ids = tasks(&env, 12);
    let run = env.cwo(&["run", "--once"]).ok();
    all_done_once(&env, &ids, &starts, &run.stderr);
    let peak = journal_peak(&env);
    // The first poll brings up four at once; none goes before the queue is drained.
    assert_eq!(peak, 4, "{}", run.stderr);
    assert!(workers_used(&env) > 1, "{}", run.stderr);
    assert_eq!(env.live_workers(), 0);
    assert_eq!(
        env.journal("SELECT count(*) FROM workers WHERE state != 'deleted'"),
        "0"
    );
    assert!(
        run.stderr
            .contains("bringing up 4 workers for 12 ready task(s)"),
        "{}",
        run.stderr
    );
}

/// Two hosts in `ssh.hosts` and max = 4: a worker is one host, so at most two workers at once,
/// never two on one host, and the queue drains on both.
#[test]
fn the_ssh_provider_scales_to_one_worker_per_host() {
    let env = TestEnv::new();
    let Some(a) = Sshd::start(&env.tmp.path().join("sshd-a")) else {
        return;
    };
    let Some(b) = Sshd::start(&env.tmp.path().join("sshd-b")) else {
        return;
    };
    // One key logs in to both hosts.
    std::fs::copy(
        a.client_key.with_extension("pub"),
        b.dir.join("authorized_keys"),
    )
    .unwrap();
    let starts = env.tmp.path().join("starts");
    let top = format!(
        "provider = \"ssh\"\n[workers]\nmax = 4\n[ssh]\nhosts = [{:?}, {:?}]\nkey = {:?}\nworkspace = {:?}\nconnect_timeout = \"20s\"\n",
        a.host(),
        b.host(),
        a.client_key.display().to_string(),
        env.tmp.path().join("remote-ws").display().to_string()
    );
    env.agent_with(&top, &counting_agent(&starts, "0.3"), "");
    let ids = tasks(&env, 4);
    let run = env.cwo(&["run", "--once"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    all_done_once(&env, &ids, &starts, &run.stderr);
    let peak = journal_peak(&env);
    // Two of the first batch of four were created (one per host); the provider refused the
    // others, which never existed.
    assert_eq!(peak, 2, "{}", run.stderr);
    // Both hosts worked.
    let hosts_used = env.journal(
        "SELECT count(DISTINCT json_extract(w.instance, '$.target.port')) FROM attempts a JOIN workers w ON w.name = a.worker",
    );
    assert_eq!(hosts_used, "2", "{}", run.stderr);
    // Never two workers on one host at once: per host, each worker's life (intent to
    // deletion) ends before the next one's begins.
    let rows = env.journal(
        "SELECT json_extract(instance, '$.target.port'), intent_at, deleted_at FROM workers WHERE instance IS NOT NULL ORDER BY intent_at",
    );
    let mut last_end: HashMap<String, String> = HashMap::new();
    for row in rows.lines() {
        let f: Vec<&str> = row.split('|').collect();
        if let Some(end) = last_end.get(f[0]) {
            assert!(
                end.as_str() <= f[1],
                "two workers on port {}:\n{rows}",
                f[0]
            );
        }
        last_end.insert(f[0].to_string(), f[2].to_string());
    }
    assert_eq!(
        env.journal("SELECT count(*) FROM workers WHERE state != 'deleted'"),
        "0"
    );
    drop((a, b));
}

/// The same kill, at whatever point the four attempts are at once all journaled (checkouts
/// being prepared, or agents starting): whichever it is, no agent runs twice.
#[test]
fn a_fleet_killed_as_its_attempts_open_runs_no_agent_twice() {
    let Some((g, starts)) = gcp_fleet("max = 4", "", "0") else {
        return;
    };
    let ids = tasks(&g.env, 4);
    let child = g.env.spawn(&["run", "--once"]);
    assert!(
        wait_for(Duration::from_secs(60), || g.env.open_attempts() == Some(4)),
        "four attempts never opened"
    );
    kill(&child, "KILL");
    let _ = child.wait_with_output();
    let run = g.env.cwo(&["run", "--once"]).ok();
    all_done_once(&g.env, &ids, &starts, &run.stderr);
    assert!(g.fake.vm_names().is_empty());
    let (peak, _, _) = fake_peak(&g.fake);
    assert!(peak <= 4, "{peak}");
}

impl TestEnv {
    /// Attempts not ended yet, from a journal a controller is writing (`None` before it has
    /// made its tables).
    fn open_attempts(&self) -> Option<i64> {
        let path = self.state.join("journal.sqlite");
        if !path.exists() {
            return None;
        }
        let c = rusqlite::Connection::open(path).ok()?;
        c.query_row(
            "SELECT count(*) FROM attempts WHERE ended_at IS NULL",
            [],
            |r| r.get(0),
        )
        .ok()
    }
}
