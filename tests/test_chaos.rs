//! A standing, seeded crash test: the real binary against the fake Compute API (whose VMs are
//! the loopback sshd) is killed with SIGKILL at a random point of one phase (insert,
//! provisioning, connect, checkout preparation, mid-task, mid-push, teardown) while it runs two
//! balls, then run again to the end. Afterwards: no VM left, no VM created twice, no ball stuck,
//! every completed ball's branch pushed exactly once, and no agent started twice.
//!
//! Nothing in the product is hooked: the phase is read from what can be observed from outside
//! (the fake's request log and VM status, the controller's stderr, the attempt directory on the
//! worker, files the scripted agent writes, the origin's receive hooks).
//!
//! `CWO_CHAOS_SEED` (default: from the clock, printed) and `CWO_CHAOS_TRIALS` (default: one per
//! phase) choose the trials. Trial i uses seed + i, and the seed alone decides the phase, the
//! ball, the delay and whether the next run starts at once or once what the dead controller
//! left running has ended, so a failing trial is replayed alone with
//! `CWO_CHAOS_SEED=<its seed> CWO_CHAOS_TRIALS=1` (the timing of processes is the machine's: a
//! replay lands close to, not exactly at, the same instant). `CWO_CHAOS_JOBS` trials run at once
//! (default 2). `CWO_CHAOS_REPORT=<file>` also writes the counts table there; `scripts/chaos.sh
//! N` is the soak.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Rng, wait_for};
use crate::test_gcp::{Gcp, gcp};

// What slows the phase a trial aims at, so it lasts long enough to be hit (the other phases
// run at full speed: the suite stays short).
const INSERT_DELAY: Duration = Duration::from_millis(300);
const OP_DELAY: Duration = Duration::from_millis(400);
const PROVISIONING: Duration = Duration::from_millis(1000);
const DELETE_LAG: Duration = Duration::from_millis(300);
const AGENT_SECS: &str = "1";
const PUSH_SECS: &str = "0.8";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Insert,
    Provisioning,
    Connect,
    Checkout,
    Task,
    Push,
    Teardown,
}

const PHASES: [Phase; 7] = [
    Phase::Insert,
    Phase::Provisioning,
    Phase::Connect,
    Phase::Checkout,
    Phase::Task,
    Phase::Push,
    Phase::Teardown,
];

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Insert => "insert",
            Phase::Provisioning => "provisioning",
            Phase::Connect => "connect",
            Phase::Checkout => "checkout",
            Phase::Task => "mid-task",
            Phase::Push => "mid-push",
            Phase::Teardown => "teardown",
        }
    }

    /// How long after its marker the phase lasts when slowed (measured with the test build of
    /// cwo on a loaded 2-core machine): the kill lands within it.
    fn window(self) -> Duration {
        match self {
            // The insert's delay, then its operation polled at 50, 100, 200, 400 ms.
            Phase::Insert => Duration::from_millis(1000),
            Phase::Provisioning => PROVISIONING,
            // The host key, the journal, the SSH connection, the prerequisites: about 0.55 s.
            Phase::Connect => Duration::from_millis(550),
            // Uploading the bundle, cloning, three git commands, the prompt, the launch: about
            // 2 s; half the kills aim at its first 60 ms, where the attempt directory is new.
            Phase::Checkout => Duration::from_millis(2000),
            Phase::Task => Duration::from_secs(1),
            Phase::Push => Duration::from_millis(800),
            // The delete's operation and the lag until the VM is gone.
            Phase::Teardown => OP_DELAY + DELETE_LAG,
        }
    }

    /// Whether the phase belongs to one ball (the trial picks which).
    fn per_ball(self) -> bool {
        matches!(self, Phase::Checkout | Phase::Task | Phase::Push)
    }
}

/// What the seed decides.
#[derive(Debug, Clone, Copy)]
struct Plan {
    seed: u64,
    phase: Phase,
    ball: usize,
    delay: Duration,
    /// Run again at once, or only when what the dead controller left running has ended.
    settle: bool,
}

impl Plan {
    fn from_seed(seed: u64) -> Plan {
        let mut rng = Rng::new(seed);
        let phase = PHASES[(seed % PHASES.len() as u64) as usize];
        let ball = rng.below(2) as usize;
        let mut window = phase.window().as_millis() as u64;
        if phase == Phase::Checkout && rng.below(2) == 0 {
            window = 60;
        }
        let delay = Duration::from_millis(rng.below(window));
        let settle = rng.below(2) == 0;
        Plan {
            seed,
            phase,
            ball,
            delay,
            settle,
        }
    }

    fn describe(&self) -> String {
        let ball = if self.phase.per_ball() {
            format!(" of ball {}", self.ball + 1)
        } else {
            String::new()
        };
        format!(
            "seed {}: kill {} ms into {}{ball}, run again {}",
            self.seed,
            self.delay.as_millis(),
            self.phase.name(),
            if self.settle {
                "once the dust settled"
            } else {
                "at once"
            }
        )
    }
}

/// The invariants' counts, per trial and summed.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    vms_left: usize,
    double_creates: usize,
    stuck_balls: usize,
    missing_pushes: usize,
    doubled_pushes: usize,
    stray_pushes: usize,
    agents_run_twice: usize,
    /// Not violations, reported for reading: a ball blocked with a reason, and an attempt that
    /// failed (the agent always succeeds: the crash made it fail, and it cost a retry).
    blocked_balls: usize,
    failed_attempts: usize,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.vms_left += o.vms_left;
        self.double_creates += o.double_creates;
        self.stuck_balls += o.stuck_balls;
        self.missing_pushes += o.missing_pushes;
        self.doubled_pushes += o.doubled_pushes;
        self.stray_pushes += o.stray_pushes;
        self.agents_run_twice += o.agents_run_twice;
        self.blocked_balls += o.blocked_balls;
        self.failed_attempts += o.failed_attempts;
    }
}

/// One trial's world: a gcp project on the fake, two balls, a logging origin and agent.
struct World {
    g: Gcp,
    balls: Vec<String>,
    starts: PathBuf,
    ends: PathBuf,
    receiving: PathBuf,
    received: PathBuf,
}

impl World {
    /// `slow`: the phases to slow down (see `window`).
    fn new(slow: &[Phase]) -> Option<World> {
        let g = gcp("", "true", "")?;
        let agent_secs = if slow.contains(&Phase::Task) {
            AGENT_SECS
        } else {
            "0.1"
        };
        let push_secs = if slow.contains(&Phase::Push) {
            PUSH_SECS
        } else {
            "0"
        };
        let tmp = g.env.tmp.path().to_path_buf();
        let (starts, ends) = (tmp.join("agent-starts"), tmp.join("agent-ends"));
        let (receiving, received) = (tmp.join("push-receiving"), tmp.join("push-received"));
        // Each start and end is counted outside the workspace, with the task id and the pid.
        std::fs::write(
            g.env.project.join("agents/agent.sh"),
            format!(
                "set -eu\necho \"$CWO_TASK_ID $$\" >> {starts:?}\necho \"working on $CWO_TASK_ID\"\nsleep {agent_secs}\necho done > \"f-$CWO_TASK_ID\"; git add .; git commit -q -m \"$CWO_TASK_ID\"\necho \"$CWO_TASK_ID $$\" >> {ends:?}\n"
            ),
        )
        .unwrap();
        // Every ref update the origin is offered (slowly: a window for the kill) and accepts.
        hook(
            &g.env.origin,
            "pre-receive",
            &format!("cat >> {receiving:?}\nsleep {push_secs}\n"),
        );
        hook(
            &g.env.origin,
            "post-receive",
            &format!("cat >> {received:?}\n"),
        );
        {
            let mut f = g.fake.faults();
            if slow.contains(&Phase::Insert) {
                f.insert_delay = INSERT_DELAY;
            }
            if slow.contains(&Phase::Insert) || slow.contains(&Phase::Teardown) {
                f.op_delay = OP_DELAY;
            }
            if slow.contains(&Phase::Provisioning) {
                f.provisioning = PROVISIONING;
            }
            if slow.contains(&Phase::Teardown) {
                f.delete_lag = DELETE_LAG;
            }
        }
        let balls = vec![g.env.add(&["first ball"]), g.env.add(&["second ball"])];
        Some(World {
            g,
            balls,
            starts,
            ends,
            receiving,
            received,
        })
    }

    fn lines_for(&self, file: &Path, id: &str) -> usize {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .any(|w| w == id || w.ends_with(&format!("/{id}")))
            })
            .count()
    }

    /// The attempt directories of ball `id` on the worker (any worker, any attempt).
    fn attempt_dirs(&self, id: &str) -> Vec<PathBuf> {
        let ws = self.g.env.tmp.path().join("vm-ws");
        let mut out = Vec::new();
        for worker in std::fs::read_dir(ws).into_iter().flatten().flatten() {
            let tasks = worker.path().join("tasks").join(id);
            for a in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
                out.push(a.path());
            }
        }
        out
    }

    fn inserted(&self) -> bool {
        self.g
            .fake
            .log()
            .iter()
            .any(|r| r.method == "POST" && r.path.contains("/instances?"))
    }

    /// The controller looked the new VM up (the insert operation is done: it waits for RUNNING).
    fn waiting_for_running(&self) -> bool {
        let created = self.g.fake.created();
        let Some(name) = created.first() else {
            return false;
        };
        let path = format!("/instances/{name}");
        self.g
            .fake
            .log()
            .iter()
            .any(|r| r.method == "GET" && r.path.split('?').next().unwrap_or("").ends_with(&path))
    }

    fn host_key_read(&self) -> bool {
        self.g
            .fake
            .log()
            .iter()
            .any(|r| r.path.contains("getGuestAttributes"))
    }

    /// The attempt directory exists and the agent has not been launched in it yet.
    fn preparing(&self, id: &str) -> bool {
        self.attempt_dirs(id)
            .iter()
            .any(|d| !d.join("agent.pid").exists())
    }

    /// The phase a kill landed in, from what was observable at that moment.
    fn landed(&self, stderr: &str) -> String {
        if stderr.contains("tearing down worker") {
            return "teardown".into();
        }
        let mut at = "before insert".to_string();
        if self.inserted() {
            at = "insert".into();
        }
        if self.waiting_for_running() {
            at = "provisioning".into();
        }
        if self.host_key_read() {
            at = "connect".into();
        }
        // Balls run one at a time: the one furthest along but not finished is where it stopped.
        let mut pushed = 0;
        for (i, id) in self.balls.iter().enumerate() {
            let n = i + 1;
            let step = if self.lines_for(&self.received, id) > 0 {
                pushed += 1;
                continue;
            } else if self.lines_for(&self.receiving, id) > 0 {
                format!("mid-push of ball {n}")
            } else if self.lines_for(&self.ends, id) > 0 {
                format!("bring-back of ball {n}")
            } else if self.lines_for(&self.starts, id) > 0 {
                format!("mid-task of ball {n}")
            } else if !self.attempt_dirs(id).is_empty() || stderr.contains(&format!("▶ {id}")) {
                // Claimed: the project is bundled, the attempt journaled, the checkout made.
                format!("checkout of ball {n}")
            } else {
                continue;
            };
            return step;
        }
        if pushed > 0 {
            at = format!("after {pushed} push(es)");
        }
        at
    }

    fn reached(&self, plan: &Plan, stderr: &str) -> bool {
        let id = &self.balls[plan.ball];
        match plan.phase {
            Phase::Insert => self.inserted(),
            Phase::Provisioning => self.waiting_for_running(),
            Phase::Connect => self.host_key_read(),
            // The only marker that does not stay: when a poll missed it, the agent's start says
            // the checkout is over, and the kill lands late (the table shows where).
            Phase::Checkout => self.preparing(id) || self.lines_for(&self.starts, id) > 0,
            Phase::Task => self.lines_for(&self.starts, id) > 0,
            Phase::Push => self.lines_for(&self.receiving, id) > 0,
            Phase::Teardown => stderr.contains("tearing down worker"),
        }
    }
}

fn hook(origin: &Path, name: &str, body: &str) {
    let path = origin.join("hooks").join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&path)
        .status()
        .unwrap();
}

/// A controller in its own process group (so its orphans can be waited for), its stderr read
/// on a thread.
struct Controller {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Controller {
    fn spawn(w: &World) -> Controller {
        let mut child =
            w.g.env
                .cmd(&["run", "--once"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn()
                .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let started = Instant::now();
        // Each line with its time since the start: the evidence says where the time went.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let ms = started.elapsed().as_millis();
                let mut s = sink.lock().unwrap();
                s.push_str(&format!("{ms:>6} ms  {line}\n"));
            }
        });
        Controller {
            child,
            stderr,
            reader,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits up to `limit` for the exit; `None` (killed) when it did not come.
    fn finish(mut self, limit: Duration) -> (Option<i32>, String) {
        let end = Instant::now() + limit;
        let code = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break Some(st.code().unwrap_or(-1));
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = self.reader.join();
        (code, self.stderr.lock().unwrap().clone())
    }
}

/// Like `wait_for`, polling every few milliseconds: some phases last a tenth of a second.
fn poll(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    false
}

/// Processes in process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold anything, so split after its ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            out.push(pid);
        }
    }
    out
}

/// What one trial found.
struct Outcome {
    landed: String,
    counts: Counts,
    /// Broken invariants and harness failures: the trial failed.
    problems: Vec<String>,
    /// Allowed, but worth reading (a ball blocked with a reason).
    notes: Vec<String>,
    /// Stderr of both runs, the journal, the fake, the counters.
    evidence: String,
}

/// A reason's first line, at most 160 characters (some quote a whole script).
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    match line.char_indices().nth(160) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn trial(plan: &Plan) -> Option<Outcome> {
    let w = World::new(&[plan.phase])?;
    let first = Controller::spawn(&w);
    let pgid = first.child.id();
    let mut problems = Vec::new();
    // Wait for the phase's marker, then the seeded delay, then SIGKILL.
    let mut ended_early = false;
    let marker = poll(Duration::from_secs(60), || {
        if w.reached(plan, &first.stderr()) {
            return true;
        }
        ended_early = group_members(pgid).is_empty();
        ended_early
    });
    let mut first = first;
    if !marker || ended_early {
        let (code, stderr) = first.finish(Duration::from_secs(5));
        return Some(Outcome {
            landed: "never reached".into(),
            counts: Counts::default(),
            problems: vec![format!(
                "{}: the phase never came (the first run exited {code:?})",
                plan.phase.name()
            )],
            notes: Vec::new(),
            evidence: stderr,
        });
    }
    std::thread::sleep(plan.delay);
    let exited = first.child.try_wait().unwrap().is_some();
    let _ = first.child.kill();
    let _ = first.child.wait();
    // Snapshot where it stopped before anything the controller left behind moves on.
    let landed = if exited {
        "after the end (exited first)".to_string()
    } else {
        w.landed(&first.stderr())
    };
    let (_, first_stderr) = first.finish(Duration::from_secs(5));
    // When the plan says so, let the dust settle: the controller's local children (git push),
    // the worker's SSH sessions and the fake's in-flight requests (an insert that lands after
    // its caller died). Otherwise the next run races with them, as a supervisor's restart would.
    let settled = !plan.settle
        || wait_for(Duration::from_secs(30), || {
            group_members(pgid).is_empty()
                && w.g.fake.busy() == 0
                && std::process::Command::new("pgrep")
                    .args(["-P", &w.g.sshd.listener_pid().to_string()])
                    .output()
                    .is_ok_and(|o| o.stdout.is_empty())
        });
    if !settled {
        problems.push(format!(
            "left running 30 s after the kill: process group {:?}, {} fake request(s)",
            group_members(pgid),
            w.g.fake.busy()
        ));
    }
    // The next run, to the end.
    let (code, second_stderr) = Controller::spawn(&w).finish(Duration::from_secs(120));
    if code != Some(0) {
        problems.push(format!(
            "the run after the kill exited {code:?} (None: hung for 120 s, killed)"
        ));
    }
    let mut notes = Vec::new();
    let counts = check(&w, &mut problems, &mut notes);
    let evidence = format!(
        "--- first run (killed), stderr tail:\n{}\n--- second run, stderr:\n{}\n--- journal workers:\n{}\n--- journal attempts:\n{}\n--- fake: created {:?}, left {:?}\n--- agent starts:\n{}--- pushes received:\n{}",
        tail(&first_stderr, 15),
        tail(&second_stderr, 40),
        w.g.env
            .journal("SELECT name, state, termination_reason FROM workers"),
        w.g.env
            .journal("SELECT ball_id, attempt, worker, outcome, exit_status, reason FROM attempts"),
        w.g.fake.created(),
        w.g.fake.vm_names(),
        std::fs::read_to_string(&w.starts).unwrap_or_default(),
        std::fs::read_to_string(&w.received).unwrap_or_default(),
    );
    Some(Outcome {
        landed,
        counts,
        problems,
        notes,
        evidence,
    })
}

/// The invariants after the second run.
fn check(w: &World, problems: &mut Vec<String>, notes: &mut Vec<String>) -> Counts {
    let mut c = Counts::default();
    let env = &w.g.env;
    // 0 VMs left.
    let left = w.g.fake.vm_names();
    c.vms_left = left.len();
    if !left.is_empty() {
        problems.push(format!("VMs left: {left:?}"));
    }
    // 0 double creates: a name is created at most once, and only under a journal intent.
    let journaled = env.journal("SELECT name FROM workers");
    let mut per_name: BTreeMap<String, usize> = BTreeMap::new();
    for name in w.g.fake.created() {
        *per_name.entry(name).or_default() += 1;
    }
    for (name, n) in &per_name {
        if *n > 1 {
            c.double_creates += n - 1;
            problems.push(format!("VM {name} created {n} times"));
        }
        if !journaled.lines().any(|l| l == name) {
            c.double_creates += 1;
            problems.push(format!("VM {name} created without a journal intent"));
        }
    }
    // 0 balls stuck: every ball complete, or blocked with a reason; no attempt left open.
    for (i, id) in w.balls.iter().enumerate() {
        let ball = env.ball(id);
        let state = ball["state"].as_str().unwrap_or("");
        let reason = ball["blocked_reason"].as_str().unwrap_or("");
        match state {
            "complete" => {}
            "blocked" if !reason.is_empty() => {
                c.blocked_balls += 1;
                notes.push(format!("ball {} blocked: {}", i + 1, first_line(reason)));
            }
            _ => {
                c.stuck_balls += 1;
                problems.push(format!("ball {} ({id}) stuck {state:?}", i + 1));
            }
        }
    }
    let open = env.journal("SELECT ball_id, attempt FROM attempts WHERE outcome IS NULL");
    if !open.is_empty() {
        c.stuck_balls += open.lines().count();
        problems.push(format!("attempts never closed: {open}"));
    }
    // Pushes: each completed ball's branch updated exactly once (updates that changed the ref;
    // a push of the sha already there reaches no hook), and nothing else pushed.
    let received = std::fs::read_to_string(&w.received).unwrap_or_default();
    let branches = env.remote_branches();
    for (i, id) in w.balls.iter().enumerate() {
        let refname = format!("refs/heads/cwo/{id}");
        let updates: Vec<&str> = received
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 3 && f[2] == refname && f[0] != f[1]
            })
            .collect();
        let complete = env.ball(id)["state"] == "complete";
        if complete {
            if updates.is_empty() || !branches.contains(&format!("cwo/{id}")) {
                c.missing_pushes += 1;
                problems.push(format!(
                    "ball {} is complete but cwo/{id} was never pushed",
                    i + 1
                ));
            } else if updates.len() > 1 {
                c.doubled_pushes += updates.len() - 1;
                problems.push(format!(
                    "cwo/{id} (ball {}) updated {} times: {updates:?}",
                    i + 1,
                    updates.len()
                ));
            }
        } else if !updates.is_empty() {
            c.stray_pushes += updates.len();
            problems.push(format!(
                "cwo/{id} pushed but ball {} is not complete",
                i + 1
            ));
        }
    }
    // Allowed, but read: an attempt that failed although the agent always succeeds.
    // (A reason can span lines: one row per line, its newlines folded.)
    let failed = env.journal(
        "SELECT ball_id, attempt, replace(reason, char(10), ' ') FROM attempts WHERE outcome = 'failed' ORDER BY id",
    );
    for row in failed.lines() {
        c.failed_attempts += 1;
        notes.push(format!("attempt failed: {}", first_line(row)));
    }
    // 0 agents run twice: the agent always succeeds, so one start per ball.
    for (i, id) in w.balls.iter().enumerate() {
        let starts = w.lines_for(&w.starts, id);
        if starts > 1 {
            c.agents_run_twice += starts - 1;
            problems.push(format!(
                "the agent of ball {} started {starts} times",
                i + 1
            ));
        }
    }
    c
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
    )
}

/// Where a kill can land, in the order a run passes through (for the table).
const LANDINGS: [&str; 16] = [
    "before insert",
    "insert",
    "provisioning",
    "connect",
    "checkout of ball 1",
    "mid-task of ball 1",
    "bring-back of ball 1",
    "mid-push of ball 1",
    "after 1 push(es)",
    "checkout of ball 2",
    "mid-task of ball 2",
    "bring-back of ball 2",
    "mid-push of ball 2",
    "after 2 push(es)",
    "teardown",
    "after the end (exited first)",
];

/// The counts as a small table (the soak's stdout).
fn table(first: u64, results: &[(Plan, Outcome)]) -> String {
    let mut total = Counts::default();
    let mut aimed: BTreeMap<Phase, usize> = BTreeMap::new();
    let mut landed: BTreeMap<(usize, String), usize> = BTreeMap::new();
    let mut settled = 0;
    for (plan, out) in results {
        total.add(&out.counts);
        *aimed.entry(plan.phase).or_default() += 1;
        let rank = LANDINGS
            .iter()
            .position(|l| *l == out.landed)
            .unwrap_or(LANDINGS.len());
        *landed.entry((rank, out.landed.clone())).or_default() += 1;
        settled += usize::from(plan.settle);
    }
    let n = results.len();
    let mut t = format!(
        "chaos: {n} trial(s), seeds {first}..={}; run again at once {}, after settling {settled}\n",
        first.wrapping_add(n.saturating_sub(1) as u64),
        n - settled
    );
    let mut row = |name: &str, n: usize| t.push_str(&format!("  {name:<28} {n:>4}\n"));
    row("kills aimed at", n);
    for p in PHASES {
        row(p.name(), aimed.get(&p).copied().unwrap_or(0));
    }
    row("kills landed in", n);
    for ((_, label), count) in &landed {
        row(label, *count);
    }
    row(
        "violations",
        total.vms_left
            + total.double_creates
            + total.stuck_balls
            + total.missing_pushes
            + total.doubled_pushes
            + total.stray_pushes
            + total.agents_run_twice,
    );
    row("VMs left", total.vms_left);
    row("double creates", total.double_creates);
    row("stuck balls", total.stuck_balls);
    row("missing pushes", total.missing_pushes);
    row("doubled pushes", total.doubled_pushes);
    row("stray pushes", total.stray_pushes);
    row("agents run twice", total.agents_run_twice);
    row(
        "allowed, read them",
        total.blocked_balls + total.failed_attempts,
    );
    row("balls blocked with a reason", total.blocked_balls);
    row("attempts failed by the crash", total.failed_attempts);
    t
}

#[test]
fn a_controller_killed_in_any_phase_leaves_nothing_behind_after_the_next_run() {
    let first = env_u64("CWO_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            % 1_000_000_007
    });
    let trials = env_u64("CWO_CHAOS_TRIALS").unwrap_or(PHASES.len() as u64);
    // Two at a time: a trial mostly waits (on the fake, on sshd, on sleeps in the scripts).
    let jobs = env_u64("CWO_CHAOS_JOBS").unwrap_or(2).max(1);
    eprintln!("chaos: seed {first} (CWO_CHAOS_SEED={first} replays these {trials} trial(s))");
    let next = std::sync::atomic::AtomicU64::new(0);
    let results: Mutex<Vec<(Plan, Option<Outcome>)>> = Mutex::default();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(trials) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= trials {
                        return;
                    }
                    let plan = Plan::from_seed(first.wrapping_add(i));
                    let started = Instant::now();
                    let out = trial(&plan);
                    if let Some(out) = &out {
                        eprintln!(
                            "chaos: {} -> landed in {}; {} problem(s) ({:.1} s)",
                            plan.describe(),
                            out.landed,
                            out.problems.len(),
                            started.elapsed().as_secs_f64()
                        );
                    }
                    let skipped = out.is_none();
                    results.lock().unwrap().push((plan, out));
                    if skipped {
                        return;
                    }
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(plan, _)| plan.seed);
    let Some(results) = results
        .into_iter()
        .map(|(plan, out)| out.map(|o| (plan, o)))
        .collect::<Option<Vec<_>>>()
    else {
        return; // No sshd here: `gcp` said so.
    };
    let mut failures = Vec::new();
    for (plan, out) in &results {
        if !out.problems.is_empty() {
            failures.push(format!(
                "{} (landed in {}); replay: CWO_CHAOS_SEED={} CWO_CHAOS_TRIALS=1\n{}\n{}\n{}",
                plan.describe(),
                out.landed,
                plan.seed,
                out.problems.join("\n"),
                out.notes.join("\n"),
                out.evidence
            ));
        } else if !out.notes.is_empty() {
            eprintln!("chaos: {}: {}", plan.describe(), out.notes.join("; "));
        }
    }
    let report = table(first, &results);
    eprintln!("{report}");
    if let Ok(path) = std::env::var("CWO_CHAOS_REPORT") {
        std::fs::write(&path, &report).unwrap_or_else(|e| panic!("writing {path}: {e}"));
    }
    assert!(
        failures.is_empty(),
        "{} of {trials} trial(s) failed:\n\n{}\n\n{report}",
        failures.len(),
        failures.join("\n\n")
    );
}
