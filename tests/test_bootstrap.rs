//! The worker bootstrap: native script and Ansible playbook on isolated test hosts, the watchdog
//! with a fake clock, and the script under busybox sh.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::testhost::TestHost;
use crate::common::{TestEnv, git};

/// Settings that put the worker on `host`, logging in as its admin and bootstrapping with `method`.
fn host_settings(env: &TestEnv, host: &TestHost, method: &str, agent: &str) {
    env.settings(&format!(
        r#"provider = "ssh"
[ssh]
hosts = ["admin@{ip}:22"]
key = {key:?}
connect_timeout = "20s"
[bootstrap]
method = "{method}"
swap = "1G"
proxy = "{proxy}"
[agent]
command = ["sh", "-c", {agent:?}, "agent", "{{prompt_file}}"]
timeout = "60s"
retry_backoff = "100ms"
"#,
        ip = host.ip,
        key = host.key.display().to_string(),
        proxy = host.proxy,
    ));
}

/// The agent: records who it runs as, where, and the bootstrap's environment default.
const WHO_AGENT: &str = r#"{ id -un; pwd; echo "bun=$BUN_JSC_forceRAMSize"; command -v opencode; } > who.txt
git add who.txt && git commit -qm "who runs the agent""#;

/// The bootstrap's steps, in order.
const STEPS: [&str; 8] = [
    "swap",
    "packages",
    "opencode",
    "user",
    "sshd",
    "agent-env",
    "watchdog",
    "hostkey",
];

fn steps(stderr: &str) -> Vec<(String, String)> {
    stderr
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let name = w.next()?;
            let status = w.next()?;
            STEPS
                .contains(&name)
                .then(|| (name.to_string(), status.to_string()))
        })
        .collect()
}

#[test]
fn native_bootstrap_readies_a_fresh_host_and_a_rerun_changes_nothing() {
    let Some(host) = TestHost::start("native_bootstrap_readies_a_fresh_host") else {
        return;
    };
    let env = TestEnv::new();
    host_settings(&env, &host, "native", WHO_AGENT);
    env.cwo(&["task", "add", "first task"]).ok();
    let run = env.cwo(&["run", "--once"]).ok();
    let fresh = steps(&run.stderr);
    let names: Vec<&str> = fresh.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, STEPS, "{}", run.stderr);
    for (name, status) in &fresh {
        let want = if name == "hostkey" { "ok" } else { "changed" };
        assert_eq!(status, want, "fresh host, step {name}:\n{}", run.stderr);
    }
    // The agent ran as the unprivileged work user, in its workspace, with the defaults.
    let branch = git(
        &env.origin,
        &["branch", "--list", "cwo/*", "--format=%(refname:short)"],
    );
    let who = git(
        &env.origin,
        &["show", &format!("{}:who.txt", branch.trim())],
    );
    let lines: Vec<&str> = who.lines().collect();
    assert_eq!(lines[0], "cwo", "{who}");
    assert!(lines[1].starts_with("/workspace/cwo-"), "{who}");
    assert_eq!(lines[2], "bun=268435456");
    assert_eq!(lines[3], "/usr/local/bin/opencode");

    // The end state, checked inside the host.
    let state = host.probe();
    for want in [
        "swap: /swapfile 1048572 mode 600 size 1073741824",
        "fstab: /swapfile none swap sw 0 0",
        "pkg git: install ok installed",
        "pkg ripgrep: install ok installed",
        "user: cwo:/home/cwo:/bin/sh shadow *",
        "workspace: cwo cwo 755 state cwo cwo 755",
        "same-as-admin",
        "passwordauthentication no",
        "permitrootlogin no",
        "IDLE_MINUTES=30",
        "ACTION=stop-agents",
        "cron.d: * * * * * root /usr/local/sbin/cwo-watchdog 644",
        "cron running: yes",
        "heartbeat: cwo",
    ] {
        assert!(state.contains(want), "missing `{want}` in:\n{state}");
    }
    assert!(
        state.contains("opencode: /usr/local/lib/cwo/opencode-linux-x64"),
        "{state}"
    );
    // The controller fed the watchdog while it worked.
    let hb_age = host.sh(
        "admin",
        "echo $(( $(date +%s) - $(stat -c %Y /var/lib/cwo/heartbeat) ))",
    );
    assert!(
        hb_age.trim().parse::<i64>().unwrap() < 120,
        "heartbeat age {hb_age}"
    );
    // The worker's workspace went with the worker.
    assert_eq!(
        host.sh("admin", "ls -A /workspace"),
        "",
        "workspace left behind"
    );
    // No password logins, no root.
    assert!(
        !host.ssh("root", "true").status.success(),
        "root login must be refused"
    );

    // A second run on the same host: nothing to change.
    env.cwo(&["task", "add", "second task"]).ok();
    let again = env.cwo(&["run", "--once"]).ok();
    let rerun = steps(&again.stderr);
    assert_eq!(rerun.len(), 8, "{}", again.stderr);
    for (name, status) in &rerun {
        assert_eq!(status, "ok", "re-run, step {name}:\n{}", again.stderr);
    }
    assert!(
        again.stderr.contains("bootstrap: 0 step(s) changed"),
        "{}",
        again.stderr
    );
    assert_eq!(host.probe(), state, "a re-run must not change the host");

    // The swap the test host enabled is this machine's kernel's: gone with the host.
    let dir = host.dir.path().display().to_string();
    assert!(
        std::fs::read_to_string("/proc/swaps")
            .unwrap()
            .contains(&dir)
    );
    drop(host);
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap();
    assert!(
        !swaps.contains(&dir),
        "the test host's swap is still on:\n{swaps}"
    );
}

/// `ansible-playbook` from the venv the README's test command makes, or from PATH.
fn ansible_bin() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ansible-venv/bin");
    if venv.join("ansible-playbook").exists() {
        return Some(venv);
    }
    let found = Command::new("sh")
        .args(["-c", "command -v ansible-playbook"])
        .output()
        .ok()?;
    found.status.success().then(|| {
        PathBuf::from(String::from_utf8_lossy(&found.stdout).trim())
            .parent()
            .unwrap()
            .to_path_buf()
    })
}

#[test]
fn the_playbook_reaches_the_same_end_state_as_the_native_bootstrap() {
    let Some(bin) = ansible_bin() else {
        eprintln!(
            "skipped the_playbook_reaches_the_same_end_state: needs ansible-core (scripts/test.sh installs it in target/ansible-venv)"
        );
        return;
    };
    let Some(native_host) = TestHost::start("the_playbook_reaches_the_same_end_state") else {
        return;
    };
    let ansible_host = TestHost::start("the_playbook_reaches_the_same_end_state").unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());

    let up = |host: &TestHost, method: &str| {
        let env = TestEnv::new();
        host_settings(&env, host, method, WHO_AGENT);
        let out = env.cmd(&["up"]).env("PATH", &path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "cwo up ({method}) failed:\n{stderr}");
        (env, stderr)
    };
    let (native_env, _) = up(&native_host, "native");
    let (ansible_env, log) = up(&ansible_host, "ansible");
    assert!(
        log.contains("PLAY RECAP"),
        "ansible output is streamed:\n{log}"
    );
    assert!(log.contains("failed=0"), "{log}");

    let normalise = |s: String, h: &TestHost| s.replace(&h.host_key, "HOSTKEY");
    let native_state = normalise(native_host.probe(), &native_host);
    let ansible_state = normalise(ansible_host.probe(), &ansible_host);
    assert_eq!(
        ansible_state, native_state,
        "the playbook and the native bootstrap must leave the same host"
    );
    // A second playbook run changes nothing.
    native_env.cwo(&["down"]).ok();
    ansible_env.cwo(&["down"]).ok();
    let (_, again) = up(&ansible_host, "ansible");
    assert!(
        again.contains("changed=0"),
        "a re-run of the playbook changed something:\n{again}"
    );
}

/// A fresh test host and the script for it as `cwo bootstrap script` prints it (no opencode, to
/// keep these tests to the package manager's time).
fn host_and_script(test: &str) -> Option<(TestHost, String)> {
    let host = TestHost::start(test)?;
    let env = TestEnv::new();
    host_settings(&env, &host, "native", "true");
    let script = env
        .cwo(&[
            "--config",
            "bootstrap.opencode=none",
            "bootstrap",
            "script",
            "--login-user",
            "admin",
        ])
        .ok()
        .stdout;
    Some((host, script))
}

#[test]
fn the_script_runs_under_busybox_sh_with_the_same_steps() {
    let Some((host, script)) = host_and_script("the_script_runs_under_busybox_sh") else {
        return;
    };
    let run = |mode: &str| {
        let quoted = format!("'{}'", script.replace('\'', "'\\''"));
        host.sh(
            "admin",
            &format!("sudo busybox sh -c {quoted} cwo-bootstrap {mode}"),
        )
    };
    let first = run("run");
    let statuses: Vec<&str> = first.lines().filter_map(|l| l.split('\t').nth(2)).collect();
    assert_eq!(
        statuses,
        [
            "changed", "changed", "skipped", "changed", "changed", "changed", "changed", "ok"
        ],
        "{first}"
    );
    let second = run("run");
    let statuses: Vec<&str> = second
        .lines()
        .filter_map(|l| l.split('\t').nth(2))
        .collect();
    assert_eq!(
        statuses,
        ["ok", "ok", "skipped", "ok", "ok", "ok", "ok", "ok"],
        "{second}"
    );
    // "reuse" (a VM that ran the script at boot) says so, and its check finds everything done.
    let reused = run("reuse");
    assert!(reused.starts_with("cwo-reused\t"), "{reused}");
    let statuses: Vec<&str> = reused
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').nth(2))
        .collect();
    assert_eq!(
        statuses,
        ["ok", "ok", "skipped", "ok", "ok", "ok", "ok", "ok"],
        "{reused}"
    );
}

fn busybox() -> Option<&'static str> {
    Command::new("busybox")
        .arg("true")
        .status()
        .is_ok_and(|s| s.success())
        .then_some("busybox")
}

#[test]
fn the_scripts_parse_under_busybox_sh() {
    let Some(bb) = busybox() else {
        eprintln!("skipped the_scripts_parse_under_busybox_sh: busybox is not installed");
        return;
    };
    let env = TestEnv::new();
    let script = env.cwo(&["bootstrap", "script", "--gce"]).ok().stdout;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bootstrap.sh");
    std::fs::write(&path, &script).unwrap();
    for file in [
        path.clone(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible/roles/worker/files/cwo-watchdog"),
    ] {
        let out = Command::new(bb)
            .args(["sh", "-n"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Not root: the script says so and stops before touching anything.
    if unsafe { libc::geteuid() } != 0 {
        let out = Command::new(bb).arg("sh").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(90));
    }
}

/// The watchdog with a fake clock (CWO_NOW), a heartbeat file and a harmless action.
struct Watchdog {
    dir: tempfile::TempDir,
}

impl Watchdog {
    fn new() -> Watchdog {
        Watchdog::with_action(None)
    }
    /// `None`: a custom command that records it fired.
    fn with_action(action: Option<&str>) -> Watchdog {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("ws")).unwrap();
        let action = match action {
            Some(a) => a.to_string(),
            None => format!("'touch {}/fired'", d.display()),
        };
        std::fs::write(
            d.join("conf"),
            format!(
                "IDLE_MINUTES=5\nHEARTBEAT={d}/heartbeat\nWORKSPACE={d}/ws\nACTION={action}\nLOG={d}/log\n",
                d = d.display()
            ),
        )
        .unwrap();
        Watchdog { dir }
    }
    fn heartbeat_mtime(&self) -> i64 {
        std::fs::write(self.dir.path().join("heartbeat"), "").unwrap();
        let out = Command::new("stat")
            .args(["-c", "%Y"])
            .arg(self.dir.path().join("heartbeat"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
    /// Runs it at `now`; true when it fired.
    fn tick(&self, now: i64) -> bool {
        let fired = self.dir.path().join("fired");
        let _ = std::fs::remove_file(&fired);
        let sh = busybox().map(|b| vec![b, "sh"]).unwrap_or(vec!["sh"]);
        let st = Command::new(sh[0])
            .args(&sh[1..])
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("ansible/roles/worker/files/cwo-watchdog"),
            )
            .env("CWO_WATCHDOG_CONF", self.dir.path().join("conf"))
            .env("CWO_NOW", now.to_string())
            .status()
            .unwrap();
        assert!(st.success());
        fired.exists()
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

#[test]
fn the_watchdog_acts_only_when_idle_past_the_limit_and_no_agent_runs() {
    let w = Watchdog::new();
    let t = w.heartbeat_mtime();
    assert!(!w.tick(t + 60), "a fresh heartbeat keeps the VM");
    assert!(!w.tick(t + 299), "just under the limit keeps the VM");
    assert!(w.log().is_empty());
    assert!(w.tick(t + 300), "five idle minutes fire the action");
    assert!(
        w.log().contains("idle for 5 min since heartbeat"),
        "{}",
        w.log()
    );

    // A running agent (a live process group with no exit status) keeps the VM however old
    // the heartbeat is.
    let attempt = w.dir.path().join("ws/cwo-w-1/tasks/b-1/attempt-1");
    std::fs::create_dir_all(&attempt).unwrap();
    let mut agent = agent_group();
    std::fs::write(attempt.join("agent.pid"), agent.id().to_string()).unwrap();
    assert!(!w.tick(t + 3600), "an agent is running");
    // It ended: its exit status is there, the process group is gone.
    std::fs::write(attempt.join("agent.exit"), "0").unwrap();
    assert!(w.tick(t + 3600));
    agent.kill().unwrap();
    agent.wait().unwrap();
    std::fs::remove_file(attempt.join("agent.exit")).unwrap();
    assert!(w.tick(t + 3600), "a stale pid file does not keep the VM");

    // Never a heartbeat: idle counts from boot.
    std::fs::remove_file(w.dir.path().join("heartbeat")).unwrap();
    let boot = boot_time();
    assert!(!w.tick(boot + 60), "booted a minute ago");
    assert!(w.tick(boot + 301));
    assert!(
        w.log().contains("since boot (no heartbeat file)"),
        "{}",
        w.log()
    );
}

/// A process group standing in for an agent: `setsid sleep`, waited for until it leads its group.
fn agent_group() -> std::process::Child {
    let agent = Command::new("setsid")
        .args(["sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", agent.id())).unwrap_or_default();
        let pgrp = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(2));
        if pgrp == Some(agent.id().to_string().as_str()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    agent
}

/// Issue 11: where a TTL is in force the watchdog never stops the VM (Compute Engine would clear
/// its termination timer): once the controller is gone it stops orphaned agents and leaves the
/// VM to its TTL.
#[test]
fn the_stop_agents_watchdog_stops_orphaned_agents_and_never_the_vm() {
    let w = Watchdog::with_action(Some("stop-agents"));
    let t = w.heartbeat_mtime();
    let attempt = w.dir.path().join("ws/cwo-w-1/tasks/b-1/attempt-1");
    std::fs::create_dir_all(&attempt).unwrap();
    let mut agent = agent_group();
    std::fs::write(attempt.join("agent.pid"), agent.id().to_string()).unwrap();
    w.tick(t + 60);
    assert!(
        agent.try_wait().unwrap().is_none(),
        "a controller heard from a minute ago keeps its agent"
    );
    w.tick(t + 3600);
    let mut stopped = false;
    for _ in 0..100 {
        if agent.try_wait().unwrap().is_some() {
            stopped = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(stopped, "the orphaned agent was stopped");
    assert!(
        w.log().contains("stopping orphaned agent group(s)")
            && w.log().contains("the VM is left to its TTL"),
        "{}",
        w.log()
    );
    // Nothing left to stop: it does nothing at all (no poweroff, no log line every minute).
    let before = w.log();
    w.tick(t + 7200);
    assert_eq!(w.log(), before);
}

fn boot_time() -> i64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_host_on_this_machine_is_never_bootstrapped() {
    let env = TestEnv::new();
    let Some(sshd) = crate::common::sshd::Sshd::start(&env.tmp.path().join("sshd")) else {
        return;
    };
    env.settings(&format!(
        "{}\n[bootstrap]\nmethod = \"native\"\n",
        env.ssh_top(&sshd, "")
    ));
    let up = env.cwo(&["up"]);
    assert_eq!(up.code, 1, "{}", up.stderr);
    assert!(
        up.stderr.contains("refusing to bootstrap worker"),
        "{}",
        up.stderr
    );
    assert!(
        up.stderr.contains("bootstrap.method = \"none\""),
        "{}",
        up.stderr
    );
}

/// Every script cwo runs on a worker (the detached launcher, its log follower, state and kill,
/// the workspace setup) under busybox `sh`, as on Alpine: a done task and a timed-out one.
#[test]
fn the_loop_runs_with_busybox_as_sh() {
    let Some(bb) = busybox() else {
        eprintln!("skipped the_loop_runs_with_busybox_as_sh: busybox is not installed");
        return;
    };
    let env = TestEnv::new();
    let shim = env.tmp.path().join("busybox-bin");
    std::fs::create_dir_all(&shim).unwrap();
    let bb_path = Command::new("sh")
        .args(["-c", &format!("command -v {bb}")])
        .output()
        .unwrap();
    let bb_path = String::from_utf8_lossy(&bb_path.stdout).trim().to_string();
    std::os::unix::fs::symlink(&bb_path, shim.join("sh")).unwrap();
    // The hanging agent notes the TERM cwo sends it at the timeout (teardown would only KILL).
    let marker = env.tmp.path().join("term.txt");
    env.agent(
        &format!(
            r#"case "$(cat "$1")" in
*Hangs*) trap 'echo term >> {marker}; exit 143' TERM; echo started; sleep 60 & wait ;;
*) echo ok > bb.txt && git add bb.txt && git commit -qm bb ;;
esac"#,
            marker = marker.display()
        ),
        "timeout = \"2s\"\nmax_attempts = 1",
    );
    let done = env.add(&["Works under busybox"]);
    let hangs = env.add(&["Hangs under busybox"]);
    let path = format!("{}:{}", shim.display(), std::env::var("PATH").unwrap());
    let out = env
        .cmd(&["run", "--once"])
        .env("PATH", &path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(env.ball(&done)["state"], "complete", "{stderr}");
    let reason = env.ball(&hangs)["blocked_reason"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(reason.contains("timed out after 2s"), "{reason}\n{stderr}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap_or_default(),
        "term\n",
        "the timeout's TERM reached the agent's group through busybox's kill"
    );
    // The timed-out agent's whole group is gone (busybox's kill reached it).
    let left = Command::new("pgrep")
        .args(["-f", "sleep 60"])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&left.stdout);
    for pid in pids.split_whitespace() {
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        assert!(
            !cwd.starts_with(env.tmp.path()),
            "agent process {pid} ({cmd}) survived its timeout"
        );
    }
}

/// GCE may run the script as startup-script and as user-data while cwo runs it too: the runs
/// take turns (the script's lock), the first does the work and the others find it done.
#[test]
fn concurrent_runs_take_turns() {
    let Some((host, script)) = host_and_script("concurrent_runs_take_turns") else {
        return;
    };
    let quoted = format!("'{}'", script.replace('\'', "'\\''"));
    let outputs: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| host.sh("admin", &format!("sudo sh -c {quoted} cwo-bootstrap reuse")))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let changed: Vec<usize> = outputs
        .iter()
        .map(|o| {
            o.lines()
                .filter(|l| l.split('\t').nth(2) == Some("changed"))
                .count()
        })
        .collect();
    let mut sorted = changed.clone();
    sorted.sort();
    assert_eq!(sorted, [0, 0, 6], "one run did the work: {outputs:#?}");
    // The two that waited knew a run of the same script had finished before them.
    let reused = outputs
        .iter()
        .filter(|o| o.starts_with("cwo-reused\t"))
        .count();
    assert_eq!(reused, 2, "{outputs:#?}");
}

/// `(name, status)` of each `cwo-step` line the script printed.
fn script_steps(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() >= 3 && f[0] == "cwo-step").then(|| (f[1].to_string(), f[2].to_string()))
        })
        .collect()
}

/// What the bake keeps and what it cleans, read in the stopped host's files rather than through
/// a login (a running sshd keeps serving its host key after the file is gone).
const IMAGE_PROBE: &str = r#"
echo "host keys: $(ls /etc/ssh | grep '^ssh_host_' | tr '\n' ' ')"
echo "machine-id: $(if [ -e /etc/machine-id ]; then echo "$(wc -c < /etc/machine-id) bytes"; else echo absent; fi)"
echo "authorized_keys: $(find /root /home -name 'authorized_keys*' | tr '\n' ' ')"
echo "history: $(find /root /home -maxdepth 2 \( -name '.*_history' -o -name .lesshst \) | tr '\n' ' ')"
echo "heartbeat: $(if [ -e /var/lib/cwo/heartbeat ]; then echo present; else echo absent; fi)"
echo "marker: $(cat /var/lib/cwo/bootstrap.done)"
echo "logs with content: $(find /var/log -type f -size +0 | tr '\n' ' ')"
echo "rotated logs: $(find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' \) | tr '\n' ' ')"
echo "package cache: $(find /var/cache/apt -name '*.deb' -o -name '*.bin' | wc -l)"
echo "package lists: $(find /var/lib/apt/lists -name '*_Packages*' | wc -l)"
echo "var/tmp: $(ls -A /var/tmp | tr '\n' ' ')"
echo "workspace: $(ls -A /workspace | tr '\n' ' ')"
for p in git ripgrep cron; do echo "pkg $p: $(dpkg-query -W -f='${Status}' $p 2>&1)"; done
echo "opencode: $(readlink /usr/local/bin/opencode)"
echo "user: $(getent passwd cwo | cut -d: -f1,6)"
echo "sshd drop-in: $(grep -c . /etc/ssh/sshd_config.d/60-cwo.conf) lines"
echo "cron.d: $(cat /etc/cron.d/cwo-watchdog)"
echo "fstab: $(grep swapfile /etc/fstab)"
"#;

/// Issue 16: a host baked for an image (`cwo image build`) keeps what the bootstrap made and
/// loses what belongs to one host; a worker booted from a copy of it only checks (`reuse`), gets
/// its own keys, and runs a task.
#[test]
fn a_baked_host_is_cleaned_and_a_worker_from_its_image_only_checks() {
    let test = "a_baked_host_is_cleaned_and_a_worker_from_its_image_only_checks";
    let Some(builder) = TestHost::start(test) else {
        return;
    };
    let env = TestEnv::new();
    host_settings(&env, &builder, "native", WHO_AGENT);
    let script = env
        .cwo(&["bootstrap", "script", "--login-user", "admin"])
        .ok()
        .stdout;
    let hash = script
        .lines()
        .find_map(|l| l.strip_prefix("CWO_HASH="))
        .expect("the script names its hash")
        .to_string();
    let quoted = format!("'{}'", script.replace('\'', "'\\''"));
    let run = |host: &TestHost, mode: &str| {
        host.sh(
            "admin",
            &format!("sudo sh -c {quoted} cwo-bootstrap {mode}"),
        )
    };
    // What a builder VM may hold besides the bootstrap's work: a machine-id (the rootfs has none,
    // a VM has one), a login's history, keys for root, rotated logs, temporary files, a worker's
    // leftovers beside a setup cache.
    builder.sh(
        "admin",
        "echo 'ls -la' > ~/.bash_history && sudo sh -c 'mkdir -p /root/.ssh \
         && cp /home/admin/.ssh/authorized_keys /root/.ssh/ && echo id > /root/.bash_history \
         && echo 0f1e2d3c4b5a69788796a5b4c3d2e1f0 > /etc/machine-id \
         && echo old > /var/log/old.log.1 && echo old | gzip > /var/log/old.log.2.gz \
         && echo t > /var/tmp/left-behind \
         && mkdir -p /workspace/cwo-w-old /workspace/setup-cache/k'",
    );

    let baked = run(&builder, "bake");
    let statuses: Vec<(String, String)> = script_steps(&baked);
    let want: Vec<(String, String)> = [
        ("swap", "changed"),
        ("packages", "changed"),
        ("opencode", "changed"),
        ("user", "changed"),
        ("sshd", "changed"),
        ("agent-env", "changed"),
        ("watchdog", "changed"),
        ("hostkey", "ok"),
        ("clean", "changed"),
    ]
    .iter()
    .map(|(n, s)| (n.to_string(), s.to_string()))
    .collect();
    assert_eq!(statuses, want, "{baked}");
    let builder_key = builder.host_key.clone();

    let image = builder.stop();
    let files = image.inspect(IMAGE_PROBE);
    for want in [
        "host keys: \n".to_string(),
        "authorized_keys: \n".into(),
        "history: \n".into(),
        "heartbeat: absent\n".into(),
        format!("marker: {hash}\n"),
        "logs with content: \n".into(),
        "rotated logs: \n".into(),
        "package cache: 0\n".into(),
        "var/tmp: \n".into(),
        "workspace: setup-cache \n".into(),
        "pkg git: install ok installed\n".into(),
        "pkg ripgrep: install ok installed\n".into(),
        "pkg cron: install ok installed\n".into(),
        "opencode: /usr/local/lib/cwo/opencode-linux-x64".into(),
        "user: cwo:/home/cwo\n".into(),
        "sshd drop-in: 5 lines\n".into(),
        "cron.d: * * * * * root /usr/local/sbin/cwo-watchdog\n".into(),
        "fstab: /swapfile none swap sw 0 0\n".into(),
    ] {
        assert!(
            files.contains(&want),
            "missing `{want}` in the image:\n{files}"
        );
    }
    assert!(files.contains("machine-id: 0 bytes\n"), "{files}");
    assert!(
        !files.contains("package lists: 0\n"),
        "the package lists stay:\n{files}"
    );

    // A worker booted from the image: the same script only checks. Its proxy is the builder's,
    // which this host cannot reach: nothing may need the package manager or the network.
    let worker = image.start();
    assert_ne!(worker.host_key, builder_key);
    let reused = run(&worker, "reuse");
    assert_eq!(
        reused.lines().next(),
        Some(format!("cwo-reused\t{hash}").as_str()),
        "{reused}"
    );
    for (name, status) in script_steps(&reused) {
        // swap: a copy's /swapfile is a new empty file on test hosts (see testhost.sh), so the
        // check allocates it again; user: the login's keys, written at boot, go to the work user.
        let want = match name.as_str() {
            "swap" | "user" => "changed",
            _ => "ok",
        };
        assert_eq!(status, want, "reuse, step {name}:\n{reused}");
    }
    assert_eq!(
        script_steps(&reused).len(),
        8,
        "no clean step outside bake:\n{reused}"
    );
    assert!(
        reused.contains("hostkey\tok\t") && reused.contains(&worker.host_key),
        "the worker's own host key is printed:\n{reused}"
    );
    assert_eq!(
        worker.sh("cwo", "command -v opencode").trim(),
        "/usr/local/bin/opencode"
    );
    assert_eq!(
        worker
            .sh("admin", "stat -c %U /var/lib/cwo/heartbeat")
            .trim(),
        "cwo"
    );

    // And the agent starts there: cwo's own bootstrap finds nothing to do, then runs the task.
    let worker_env = TestEnv::new();
    host_settings(&worker_env, &worker, "native", WHO_AGENT);
    worker_env
        .cwo(&["task", "add", "on a worker from an image"])
        .ok();
    let run = worker_env.cwo(&["run", "--once"]).ok();
    assert!(
        run.stderr.contains("bootstrap: 0 step(s) changed"),
        "{}",
        run.stderr
    );
    let branch = git(
        &worker_env.origin,
        &["branch", "--list", "cwo/*", "--format=%(refname:short)"],
    );
    let who = git(
        &worker_env.origin,
        &["show", &format!("{}:who.txt", branch.trim())],
    );
    let lines: Vec<&str> = who.lines().collect();
    assert_eq!(lines[0], "cwo", "{who}");
    assert_eq!(lines[3], "/usr/local/bin/opencode", "{who}");
}
