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

/// An agent that notes its start in `starts` and its pid in `pids`, then waits for `gate` (30 s
/// at most, so a test that fails leaves no agent behind for long) and commits; without the
/// gate it fails. With `retry_free`, a task's second run commits at once (its first one waited).
fn gated_agent(starts: &Path, pids: &Path, gate: &Path, retry_free: bool) -> String {
    let first_only = if retry_free {
        format!("[ \"$(grep -cx \"$CWO_TASK_ID\" {starts:?})\" -eq 1 ] || gated=0\n")
    } else {
        String::new()
    };
    format!(
        r#"echo "$CWO_TASK_ID" >> {starts:?}
echo "$$" >> {pids:?}
gated=1
{first_only}if [ "$gated" -eq 1 ]; then
  i=0; while [ ! -e {gate:?} ] && [ "$i" -lt 300 ]; do i=$((i + 1)); sleep 0.1; done
  [ -e {gate:?} ] || exit 1
fi
git commit -q --allow-empty -m "$CWO_TASK_ID"
echo "done $CWO_TASK_ID""#
    )
}

/// A controller running in the background whose stderr is read as it comes, so a test can wait
/// for a line before it acts.
struct Watched {
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Watched {
    fn spawn(env: &TestEnv, args: &[&str]) -> Watched {
        let mut child = env.spawn(args);
        let (stderr, reader) = crate::common::collect_output(child.stderr.take().unwrap());
        Watched {
            child,
            stderr,
            reader,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr has `line`; panics with what it has if it never comes.
    #[track_caller]
    fn wait_line(&self, line: &str) {
        assert!(
            wait_for(Duration::from_secs(60), || self.stderr().contains(line)),
            "never said {line:?}:\n{}",
            self.stderr()
        );
    }

    /// Waits for the exit; its code and the whole stderr.
    fn finish(self) -> (i32, String) {
        let out = self.child.wait_with_output().unwrap();
        self.reader.join().unwrap();
        let stderr = self.stderr.lock().unwrap().clone();
        (out.status.code().unwrap_or(-1), stderr)
    }
}

/// Whether a process runs (a zombie has ended: only its exit status is left to collect).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// A fleet of four on the fake, each worker's agent waiting on a gate, and two more tasks
/// waiting for room: the controller (a polling `cwo run`, which only a signal ends) with the
/// four agents started.
struct GatedFleet {
    g: Gcp,
    ids: Vec<String>,
    starts: std::path::PathBuf,
    pids: std::path::PathBuf,
    gate: std::path::PathBuf,
}

fn gated_fleet_of_four() -> Option<(GatedFleet, Watched)> {
    let (g, starts) = gcp_fleet("max = 4", "", "0")?;
    let pids = g.env.tmp.path().join("pids");
    let gate = g.env.tmp.path().join("gate");
    rewrite_agent(&g.env, &gated_agent(&starts, &pids, &gate, false));
    let ids = tasks(&g.env, 6);
    let run = Watched::spawn(&g.env, &["run"]);
    assert!(
        wait_for(Duration::from_secs(60), || starts_of(&starts).len() == 4),
        "four agents never started: {:?}\n{}",
        starts_of(&starts),
        run.stderr()
    );
    let fleet = GatedFleet {
        g,
        ids,
        starts,
        pids,
        gate,
    };
    Some((fleet, run))
}

impl GatedFleet {
    /// Every VM the fleet had is gone, by the fake (four created, four deleted, none left) and
    /// by the journal (each of the four rows deleted, for the user's signal).
    #[track_caller]
    fn all_four_deleted(&self, stderr: &str) {
        assert!(
            self.g.fake.vm_names().is_empty(),
            "{:?}\n{stderr}",
            self.g.fake.vm_names()
        );
        assert_eq!(fake_peak(&self.g.fake), (4, 4, 4), "{stderr}");
        assert_eq!(
            self.g
                .env
                .journal("SELECT state, termination_reason, count(*) FROM workers GROUP BY 1, 2"),
            "deleted|user|4",
            "{stderr}"
        );
    }
}

/// Issue 14 item 4: one SIGTERM drains a fleet. The four running tasks finish, the two waiting
/// for room are not claimed (every worker would have room for one once its task ended), every
/// worker is deleted, and the run exits 0.
#[test]
fn a_signal_drains_the_fleet_and_deletes_every_worker() {
    let Some((f, run)) = gated_fleet_of_four() else {
        return;
    };
    kill(&run.child, "TERM");
    // The claiming stops as the handler says so; only then may the running tasks end.
    run.wait_line("signal received: finishing running attempts");
    std::fs::write(&f.gate, "").unwrap();
    let (code, stderr) = run.finish();
    assert_eq!(code, 0, "{stderr}");
    let started = starts_of(&f.starts);
    assert_eq!(started.len(), 4, "{stderr}");
    assert!(started.values().all(|&n| n == 1), "{started:?}");
    for id in &f.ids {
        let state = if started.contains_key(id) {
            "complete"
        } else {
            "pending"
        };
        assert_eq!(f.g.env.ball(id)["state"], state, "{id}\n{stderr}");
    }
    assert_eq!(
        f.g.env
            .journal("SELECT outcome, count(*) FROM attempts GROUP BY 1"),
        "done|4",
        "no attempt for the two that waited: {stderr}"
    );
    f.all_four_deleted(&stderr);
}

/// Issue 14 item 4: a second SIGTERM aborts every attempt of the fleet (the agents, still
/// waiting on their gate, are stopped), puts every task back to pending, and deletes all four
/// workers, each deletion confirmed; the run exits 0, as a stop the user asked for.
#[test]
fn a_second_signal_aborts_every_attempt_and_deletes_every_worker() {
    let Some((f, run)) = gated_fleet_of_four() else {
        return;
    };
    kill(&run.child, "TERM");
    run.wait_line("signal received: finishing running attempts");
    kill(&run.child, "TERM");
    let (code, stderr) = run.finish();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("signal received: aborting running attempts"),
        "{stderr}"
    );
    assert_eq!(
        f.g.env
            .journal("SELECT outcome, count(*) FROM attempts GROUP BY 1"),
        "aborted|4",
        "{stderr}"
    );
    for id in &f.ids {
        assert_eq!(f.g.env.ball(id)["state"], "pending", "{id}\n{stderr}");
    }
    // The gate never opened: the agents were stopped, not left to run on.
    assert!(!f.gate.exists());
    let pids = std::fs::read_to_string(&f.pids).unwrap();
    assert_eq!(pids.lines().count(), 4, "{pids}");
    for pid in pids.lines() {
        assert!(!running(pid), "agent {pid} still runs\n{stderr}");
    }
    assert_eq!(starts_of(&f.starts).len(), 4, "{stderr}");
    f.all_four_deleted(&stderr);
}

/// Issue 14 item 1: the region's CPUS quota caps the fleet. 24 vCPUs with 20 in use leave room
/// for two e2-micro workers (2 vCPUs each): with max = 4 the fleet never asks for a third
/// (the fake would have created it: it does not enforce the quota), the queue drains on two,
/// and stderr says what capped it. The quota is read once per run.
#[test]
fn the_regions_cpu_quota_caps_the_fleet() {
    let Some((g, starts)) = gcp_fleet("max = 4", "", "0.2") else {
        return;
    };
    g.fake.faults().cpus_quota = Some((24.0, 20.0));
    let ids = tasks(&g.env, 4);
    let run = g.env.cwo(&["run", "--once"]).ok();
    all_done_once(&g.env, &ids, &starts, &run.stderr);
    assert_eq!(fake_peak(&g.fake), (2, 2, 2), "{}", run.stderr);
    assert!(g.fake.vm_names().is_empty());
    assert!(
        run.stderr.contains(
            "the CPUS quota of us-central1: 4 of 24 free, 2 per e2-micro leaves room for 2 more worker(s): the fleet is capped at 2"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("at its cap of 2 worker(s) (the CPUS quota of us-central1"),
        "{}",
        run.stderr
    );
    // No create was refused: cwo asked for no more than the quota leaves room for.
    assert!(
        !run.stderr.contains("could not bring up a worker"),
        "{}",
        run.stderr
    );
    // The quota once, and the region's zones once for the batch's location policy: not at
    // every poll.
    assert!(regions_gets(&g.fake) <= 2, "{}", run.stderr);
}

/// A quota read that fails (a 503 backendError, which Compute documents as transient) is a
/// warning that says so; the quota is not asked again, and the fleet scales to workers.max
/// without it. The failure is the first regions.get of the run: the quota is read before the
/// first batch is created, and only the batch's location policy reads the region after it.
#[test]
fn a_quota_read_that_fails_warns_and_the_fleet_scales_to_max() {
    let Some((g, starts)) = gcp_fleet("max = 4", "", "0.3") else {
        return;
    };
    g.fake.faults().http.push_back((
        "GET /compute/v1/projects/proj-test/regions/us-central1".into(),
        503,
    ));
    let ids = tasks(&g.env, 4);
    let run = g.env.cwo(&["run", "--once"]).ok();
    all_done_once(&g.env, &ids, &starts, &run.stderr);
    // The first poll sees four ready tasks and brings up four at once.
    assert_eq!(fake_peak(&g.fake), (4, 4, 4), "{}", run.stderr);
    assert!(g.fake.vm_names().is_empty());
    for said in [
        "could not read the quota",
        "reading the CPUS quota of us-central1",
        "the fleet scales to workers.max without it",
    ] {
        assert!(run.stderr.contains(said), "{said}\n{}", run.stderr);
    }
    assert!(regions_gets(&g.fake) <= 2, "{}", run.stderr);
}

/// The same without the permission (compute.regions.get denied, a 403 at every read of the
/// region): the quota is unknown, and the fleet should still scale to workers.max.
#[test]
fn a_quota_denied_by_permission_warns_and_the_fleet_scales_to_max() {
    let Some((g, starts)) = gcp_fleet("max = 4", "", "0.3") else {
        return;
    };
    g.fake.faults().regions_get_403 = true;
    let ids = tasks(&g.env, 4);
    let run = g.env.cwo(&["run", "--once"]).ok();
    all_done_once(&g.env, &ids, &starts, &run.stderr);
    assert_eq!(fake_peak(&g.fake), (4, 4, 4), "{}", run.stderr);
    assert!(g.fake.vm_names().is_empty());
    for said in [
        "could not read the quota",
        "compute.regions.get",
        "the fleet scales to workers.max without it",
    ] {
        assert!(run.stderr.contains(said), "{said}\n{}", run.stderr);
    }
}

/// How many times the run read the region (regions.get: its quota, and its zones for a bulk
/// insert's location policy).
fn regions_gets(fake: &FakeGce) -> usize {
    fake.log()
        .iter()
        .filter(|r| {
            r.method == "GET"
                && r.path
                    .split('?')
                    .next()
                    .is_some_and(|p| p.ends_with("/regions/us-central1"))
        })
        .count()
}

/// Issue 14 item 4: a worker deleted outside cwo (and its connections cut) under a running task,
/// in a fleet of two, costs only its task: that task is retried on a new worker within
/// agent.max_attempts and completes while the other worker's task, untouched, runs on to its
/// own end. A lost worker is no failure of the run: it exits 0, and no VM is left.
#[test]
fn a_worker_lost_mid_task_costs_only_its_task() {
    let Some((mut g, starts)) = gcp_fleet("max = 2", "", "0") else {
        return;
    };
    let pids = g.env.tmp.path().join("pids");
    let gate = g.env.tmp.path().join("gate");
    rewrite_agent(&g.env, &gated_agent(&starts, &pids, &gate, true));
    let toml = std::fs::read_to_string(g.env.project.join("cwo.toml")).unwrap();
    std::fs::write(
        g.env.project.join("cwo.toml"),
        toml.replace("[agent]\n", "[agent]\nmax_attempts = 2\n"),
    )
    .unwrap();
    let ids = tasks(&g.env, 2);
    let run = Watched::spawn(&g.env, &["run", "--once"]);
    assert!(
        wait_for(Duration::from_secs(60), || starts_of(&starts).len() == 2),
        "two agents never started: {}",
        run.stderr()
    );
    let worker_of = |id: &str| {
        g.env.journal(&format!(
            "SELECT worker FROM attempts WHERE ball_id = '{id}' ORDER BY attempt"
        ))
    };
    let (victim, other) = (worker_of(&ids[0]), worker_of(&ids[1]));
    assert_ne!(victim, other);
    // A deleted VM answers nothing: its connections die and no new one is accepted. Every fake
    // VM shares this sshd, so the other worker is unreachable for that moment too (its task
    // waits, the provider says it is alive), and the listener is back once the replacement
    // exists.
    let created = fake_peak(&g.fake).1;
    g.fake.delete_externally(&victim);
    g.sshd.stop();
    assert!(
        wait_for(Duration::from_secs(60), || fake_peak(&g.fake).1 > created),
        "no replacement was created: {}",
        run.stderr()
    );
    g.sshd.restart();
    // The lost task runs again elsewhere and completes while the other one still waits.
    assert!(
        wait_for(Duration::from_secs(60), || g.env.ball(&ids[0])["state"]
            == "complete"),
        "{} was never completed: {}",
        ids[0],
        run.stderr()
    );
    assert_eq!(g.env.ball(&ids[1])["state"], "in_progress");
    std::fs::write(&gate, "").unwrap();
    let (code, stderr) = run.finish();
    assert_eq!(code, 0, "{stderr}");
    for id in &ids {
        assert_eq!(g.env.ball(id)["state"], "complete", "{id}\n{stderr}");
    }
    assert!(
        stderr.contains(&format!("worker {victim} is lost")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{} attempt 1/2 lost its worker", ids[0])),
        "{stderr}"
    );
    // The lost task: its first attempt on the lost worker, its second on a new one, done.
    let lost = g.env.journal(&format!(
        "SELECT attempt, worker, outcome FROM attempts WHERE ball_id = '{}' ORDER BY attempt",
        ids[0]
    ));
    let rows: Vec<Vec<&str>> = lost.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), 2, "{lost}\n{stderr}");
    assert_eq!(rows[0][1], victim, "{lost}");
    assert_ne!(rows[1][1], victim, "{lost}");
    assert_ne!(rows[1][1], other, "{lost}");
    assert_eq!(rows[1][2], "done", "{lost}");
    // The other task: one attempt, on its own worker, done; its agent ran once.
    assert_eq!(
        g.env.journal(&format!(
            "SELECT attempt, worker, outcome FROM attempts WHERE ball_id = '{}'",
            ids[1]
        )),
        format!("1|{other}|done"),
        "{stderr}"
    );
    let started = starts_of(&starts);
    assert_eq!(started[&ids[0]], 2, "{started:?}");
    assert_eq!(started[&ids[1]], 1, "{started:?}");
    assert!(g.fake.vm_names().is_empty(), "{:?}", g.fake.vm_names());
    let (peak, created, deleted) = fake_peak(&g.fake);
    assert_eq!((peak, created, deleted), (2, 3, 3), "{stderr}");
    assert_eq!(
        g.env
            .journal("SELECT count(*) FROM workers WHERE state != 'deleted'"),
        "0",
        "{stderr}"
    );
}
