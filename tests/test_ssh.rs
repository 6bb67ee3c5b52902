//! The loop over real SSH (an OpenSSH sshd on loopback): the happy path, dropped connections,
//! a changed host key, an unreachable host, a controller restart, and `cwo ssh`.

use std::time::{Duration, Instant};

use crate::common::sshd::Sshd;
use crate::common::{TestEnv, git, kill, wait_for};

fn setup(extra_top: &str, body: &str, agent_extra: &str) -> Option<(TestEnv, Sshd)> {
    let env = TestEnv::new();
    let sshd = Sshd::start(&env.tmp.path().join("sshd"))?;
    env.agent_with(&env.ssh_top(&sshd, extra_top), body, agent_extra);
    Some((env, sshd))
}

#[test]
fn the_whole_loop_runs_over_ssh() {
    let Some((env, _sshd)) = setup(
        "",
        r#"echo "on $(hostname) as $(id -un) in $PWD"
echo "secret is ${CWO_SECRET:-unset}"
printf '%s' "$2" > prompt.txt; git add prompt.txt; git commit -q -m "$CWO_TASK_ID""#,
        "env = { CWO_SECRET = \"s3cr3t value\" }",
    ) else {
        return;
    };
    let id = env.add(&["Over SSH $(touch PWNED)", "--ac", "it's quoted"]);
    let run = env.cwo(&["run", "--once"]).ok();
    assert!(
        run.stderr.contains("secret is s3cr3t value"),
        "{}",
        run.stderr
    );
    assert_eq!(env.ball(&id)["state"], "complete", "{}", run.stderr);
    let prompt = git(&env.origin, &["show", &format!("cwo/{id}:prompt.txt")]);
    assert!(
        prompt.contains("# Over SSH $(touch PWNED)") && prompt.contains("1. it's quoted"),
        "{prompt}"
    );
    assert!(!env.tmp.path().join("remote-ws").join("PWNED").exists());
    // `down` semantics on a host: the workspace is cleaned, the host stays.
    let ws = env.tmp.path().join("remote-ws");
    assert_eq!(
        std::fs::read_dir(&ws).map(|d| d.count()).unwrap_or(0),
        0,
        "workspace cleaned"
    );
    let pinned = env.journal("SELECT worker, key FROM host_keys");
    assert!(
        pinned.starts_with(&format!("{}|ssh-ed25519 ", _sshd.host())),
        "{pinned}"
    );
    // The secret never reached a file on the worker or the journal.
    let found = std::process::Command::new("grep")
        .args([
            "-rl",
            "s3cr3t",
            ws.to_str().unwrap(),
            env.state.join("journal.sqlite").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&found.stdout)
    );
}

#[test]
fn a_dropped_connection_mid_task_is_survived() {
    let Some((env, sshd)) = setup(
        "",
        r#"echo run >> "$HOME_COUNTER"
for i in 1 2 3 4 5 6 7 8; do echo "tick $i"; sleep 0.4; done
git commit -q --allow-empty -m done"#,
        "",
    ) else {
        return;
    };
    let counter = env.tmp.path().join("counter");
    std::fs::write(
        env.project.join("cwo.toml"),
        std::fs::read_to_string(env.project.join("cwo.toml"))
            .unwrap()
            .replace(
                "[agent]\n",
                &format!(
                    "[agent]\nenv = {{ HOME_COUNTER = {:?} }}\n",
                    counter.display().to_string()
                ),
            ),
    )
    .unwrap();
    let id = env.add(&["long over ssh"]);
    let child = env.spawn(&["run", "--once"]);
    assert!(wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(env.state.join(format!("logs/{id}/attempt-1.log")))
            .is_ok_and(|l| l.contains("tick 2"))
    }));
    let cut = sshd.cut_connections();
    assert!(cut > 0, "there was a connection to cut");
    std::thread::sleep(Duration::from_millis(600));
    sshd.cut_connections();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(env.ball(&id)["state"], "complete", "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap(),
        "run\n",
        "the agent ran once"
    );
    let log = env.cwo(&["logs", &id]).ok().stdout;
    let expected: String = (1..=8).map(|i| format!("tick {i}\n")).collect();
    assert_eq!(
        log,
        format!("{expected}[cwo] agent ended: exit 0\n"),
        "no gap, no duplicate\n{stderr}"
    );
}

#[test]
fn a_changed_host_key_is_refused() {
    let Some((env, mut sshd)) = setup("", "git commit -q --allow-empty -m x", "") else {
        return;
    };
    env.add(&["first"]);
    env.cwo(&["run", "--once"]).ok();
    let pinned = env.journal("SELECT key FROM host_keys");
    sshd.replace_host_key();
    env.add(&["second"]);
    let run = env.cwo(&["run", "--once"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("HOST KEY MISMATCH: expected SHA256:"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("the host presented SHA256:"),
        "{}",
        run.stderr
    );
    assert_eq!(
        env.journal("SELECT key FROM host_keys"),
        pinned,
        "the pin is not replaced"
    );
}

#[test]
fn an_unreachable_host_times_out_clearly() {
    let env = TestEnv::new();
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let key = env.tmp.path().join("k");
    std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    env.agent_with(
        &format!(
            "provider = \"ssh\"\n[ssh]\nhosts = [\"u@127.0.0.1:{dead_port}\"]\nkey = {:?}\nconnect_timeout = \"2s\"\n",
            key.display().to_string()
        ),
        "true",
        "",
    );
    env.add(&["never runs"]);
    let started = Instant::now();
    let run = env.cwo(&["run", "--once"]);
    let took = started.elapsed();
    assert_eq!(run.code, 1);
    // Two connection attempts of 2 s each (bring-up, then the cleanup), with room for a busy machine.
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(
        run.stderr.contains(&format!(
            "connecting to u@127.0.0.1:{dead_port} (gave up after 2s)"
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("hint: "), "{}", run.stderr);
    assert_eq!(env.journal("SELECT state FROM workers"), "deleted");
}

#[test]
fn a_restarted_controller_reattaches_over_ssh() {
    let Some((env, _sshd)) = setup(
        "",
        r#"echo "a"; sleep 2; echo "b"
git commit -q --allow-empty -m ok"#,
        "",
    ) else {
        return;
    };
    let id = env.add(&["reattach"]);
    let child = env.spawn(&["run", "--once"]);
    assert!(wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(env.state.join(format!("logs/{id}/attempt-1.log")))
            .is_ok_and(|l| l.contains('a'))
    }));
    kill(&child, "KILL");
    let _ = child.wait_with_output();
    let run = env.cwo(&["run", "--once"]).ok();
    assert!(
        run.stderr.contains("reattached to attempt 1"),
        "{}",
        run.stderr
    );
    assert_eq!(env.ball(&id)["state"], "complete");
    assert_eq!(
        env.cwo(&["logs", &id]).ok().stdout,
        "a\nb\n[cwo] agent ended: exit 0\n"
    );
    assert_eq!(env.journal("SELECT count(*) FROM attempts"), "1");
}

#[test]
fn cwo_ssh_runs_one_command_on_the_worker() {
    let Some((env, _sshd)) = setup("", "true", "") else {
        return;
    };
    let name = env.cwo(&["up"]).ok().stdout.trim().to_string();
    let run = env.cwo(&["ssh", "--", "sh", "-c", "echo hello from $(id -un); exit 3"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stdout.contains("hello from "), "{run:?}");
    let named = env.cwo(&["ssh", &name, "--", "true"]);
    assert_eq!(named.code, 0, "{named:?}");
    env.cwo(&["down"]).ok();
}

/// Issue 10 item 1: the README's `[ssh]` example (hosts and key, nothing else) with the shipped
/// default `ssh.workspace`, which is relative to the login's home: every path git is given must
/// resolve the same way (a relative bundle path given to `git -C repo` resolved inside the repo).
#[test]
fn the_readme_ssh_example_with_the_default_workspace_delivers() {
    let env = TestEnv::new();
    let home = env.tmp.path().join("login-home");
    let Some(sshd) = Sshd::start_with_home(&env.tmp.path().join("sshd"), &home) else {
        return;
    };
    let top = format!(
        "provider = \"ssh\"\n[ssh]\nhosts = [{:?}]\nkey = {:?}\n",
        sshd.host(),
        sshd.client_key.display().to_string(),
    );
    env.agent_with(
        &top,
        r#"echo "in $PWD"; echo done > done.txt; git add done.txt; git commit -q -m "$CWO_TASK_ID""#,
        "",
    );
    let a = env.add(&["first with defaults"]);
    let b = env.add(&["second with defaults"]);
    let run = env.cwo(&["run", "--once"]).ok();
    for id in [&a, &b] {
        assert_eq!(env.ball(id)["state"], "complete", "{}", run.stderr);
        assert!(
            env.remote_branches().contains(&format!("cwo/{id}")),
            "{}",
            run.stderr
        );
    }
    // The work happened under the login's home, in the default place.
    assert!(
        run.stderr
            .contains(&format!("in {}/.cwo/workspaces/", home.display())),
        "{}",
        run.stderr
    );
}
