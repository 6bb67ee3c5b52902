//! A hermetic environment for running the real `cwo` binary: its own HOME, XDG dirs, a project
//! repository with a bare `origin`, and scripted agents.

#![allow(dead_code)]

pub mod browser;
pub mod fake_gce;
pub mod fake_gcs;
pub mod fake_github;
pub mod fake_llm;
pub mod sshd;
pub mod testhost;
pub mod trackers;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct TestEnv {
    pub tmp: tempfile::TempDir,
    pub home: PathBuf,
    pub project: PathBuf,
    pub origin: PathBuf,
    pub state: PathBuf,
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Output of one cwo invocation.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let project = tmp.path().join("proj");
        let origin = tmp.path().join("origin.git");
        let state = tmp.path().join("state");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&project).unwrap();
        std::fs::create_dir_all(&origin).unwrap();
        git(&origin, &["init", "-q", "--bare"]);
        git(&project, &["init", "-q", "-b", "main"]);
        std::fs::write(project.join("README.md"), "hello\n").unwrap();
        std::fs::write(project.join(".gitignore"), ".juggle/\ncwo.toml\nagents/\n").unwrap();
        git(&project, &["add", "."]);
        git(&project, &["commit", "-q", "-m", "init"]);
        git(
            &project,
            &["remote", "add", "origin", origin.to_str().unwrap()],
        );
        let env = TestEnv {
            tmp,
            home,
            project,
            origin,
            state,
        };
        env.settings("");
        env
    }

    /// Writes cwo.toml: fast defaults plus `extra` (TOML appended at the top level).
    pub fn settings(&self, extra: &str) {
        let text = format!(
            "poll_interval = \"200ms\"\nstate_dir = {:?}\n{extra}\n",
            self.state.display().to_string()
        );
        std::fs::write(self.project.join("cwo.toml"), text).unwrap();
    }

    /// Adds a top-level setting to the cwo.toml written so far (before any table).
    pub fn top_setting(&self, line: &str) {
        let path = self.project.join("cwo.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(path, format!("{line}\n{text}")).unwrap();
    }

    /// Settings that put the workers on `sshd` (`provider = "ssh"`), plus `extra` top-level TOML.
    pub fn ssh_top(&self, sshd: &sshd::Sshd, extra: &str) -> String {
        format!(
            "provider = \"ssh\"\n{extra}\n[ssh]\nhosts = [{:?}]\nkey = {:?}\nworkspace = {:?}\nconnect_timeout = \"20s\"\n",
            sshd.host(),
            sshd.client_key.display().to_string(),
            self.tmp.path().join("remote-ws").display().to_string()
        )
    }

    /// A scripted agent (`sh` script body) wired in as agent.command, plus `agent_extra` keys.
    pub fn agent(&self, body: &str, agent_extra: &str) {
        self.agent_with("", body, agent_extra)
    }

    /// Like `agent`, with top-level settings too.
    pub fn agent_with(&self, top: &str, body: &str, agent_extra: &str) {
        let dir = self.project.join("agents");
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("agent.sh");
        std::fs::write(&script, format!("set -eu\n{body}\n")).unwrap();
        let mut agent = format!(
            "command = [\"sh\", {:?}, \"{{prompt_file}}\", \"{{prompt}}\"]\n{agent_extra}\n",
            script.display().to_string()
        );
        for (key, default) in [("retry_backoff", "\"100ms\""), ("timeout", "\"20s\"")] {
            if !agent_extra.contains(&format!("{key} =")) {
                agent.push_str(&format!("{key} = {default}\n"));
            }
        }
        self.settings(&format!("{top}\n[agent]\n{agent}"));
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cwo"));
        c.args(args)
            .current_dir(&self.project)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("XDG_STATE_HOME", self.home.join(".local/state"))
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .env("CWO_NO_PROGRESS", "1")
            .stdin(Stdio::null());
        c
    }

    #[must_use = "assert on the run's exit code or output"]
    pub fn cwo(&self, args: &[&str]) -> Run {
        self.cmd(args).output().unwrap().into()
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn balls_path(&self) -> PathBuf {
        self.project.join(".juggle/balls.jsonl")
    }

    pub fn write_balls(&self, lines: &[String]) {
        std::fs::create_dir_all(self.project.join(".juggle")).unwrap();
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(self.balls_path(), text).unwrap();
    }

    /// Adds a ball through `cwo task add`; returns its id.
    pub fn add(&self, args: &[&str]) -> String {
        let mut a = vec!["task", "add"];
        a.extend_from_slice(args);
        self.cwo(&a).ok().stdout.trim().to_string()
    }

    pub fn ball(&self, id: &str) -> Value {
        let text = std::fs::read_to_string(self.balls_path()).unwrap();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|b| b["id"] == id)
            .unwrap_or_else(|| panic!("no ball {id} in\n{text}"))
    }

    pub fn remote_branches(&self) -> Vec<String> {
        let out = git(
            &self.origin,
            &[
                "for-each-ref",
                "--format=%(refname:short)",
                "refs/heads/cwo",
            ],
        );
        out.lines().map(String::from).collect()
    }

    pub fn live_workers(&self) -> usize {
        let workers = self.state.join("workers");
        std::fs::read_dir(workers).map(|r| r.count()).unwrap_or(0)
    }

    /// Rows of a journal query, columns joined by `|`, rows by newlines.
    pub fn journal(&self, sql: &str) -> String {
        let conn = rusqlite::Connection::open(self.state.join("journal.sqlite")).unwrap();
        let mut st = conn.prepare(sql).unwrap();
        let n = st.column_count();
        let rows: Vec<String> = st
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| match r.get_ref(i).unwrap() {
                        rusqlite::types::ValueRef::Null => "NULL".to_string(),
                        rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                        rusqlite::types::ValueRef::Real(v) => v.to_string(),
                        rusqlite::types::ValueRef::Text(t) => {
                            String::from_utf8_lossy(t).into_owned()
                        }
                        rusqlite::types::ValueRef::Blob(_) => "<blob>".to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.join("\n")
    }
}

/// Polls `f` until it returns true or `limit` passes.
/// The check named `name` in a `cwo doctor --format json` document (the first of that name).
pub fn doctor_check(doc: &serde_json::Value, name: &str) -> serde_json::Value {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} check: {doc:#}"))
}

/// Everything `pipe` yields, collected by a thread as it comes (a child's stderr read while it
/// runs); join the thread to know the pipe was read to its end.
pub fn collect_output(
    mut pipe: impl std::io::Read + Send + 'static,
) -> (
    std::sync::Arc<std::sync::Mutex<String>>,
    std::thread::JoinHandle<()>,
) {
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = out.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (out, reader)
}

pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn kill(child: &Child, signal: &str) {
    let st = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// xorshift64*: a tiny deterministic generator, so a failing seed can be replayed (the
/// simulation and the chaos test).
pub struct Rng(pub u64);

impl Rng {
    /// A generator from any seed (mixed, and never the all-zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An executable `git` in `dir` that runs the sh `prelude` first, then the real git with the
/// same arguments: a spy or a gate in front of every git call a test's PATH reaches.
pub fn git_shim(dir: &Path, prelude: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let shim = dir.join("git");
    std::fs::write(
        &shim,
        format!("#!/bin/sh\n{prelude}\nexec {} \"$@\"\n", real.trim()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
}

// Snapshot filters shared by the snapshot tests (test_reports, test_command_snapshots).

/// Insta settings that hide what changes between runs.
pub fn filters(env: &TestEnv) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    let tmp = env.tmp.path();
    let canonical = tmp.canonicalize().unwrap();
    for p in [canonical.as_path(), tmp] {
        s.add_filter(&regex_escape(&p.display().to_string()), "[TMP]");
    }
    s.add_filter(
        r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?",
        "[TIME]",
    );
    s.add_filter(r"\bcwo-proj-[0-9a-f]{6}\b", "cwo-proj-[WORKER]");
    s.add_filter(r"\bproj-[0-9a-f]{8}\b", "proj-[BALL]");
    s.add_filter(r"\b\d+\.\d{2}s\b", "[DUR]");
    s.add_filter(r"pid \d+", "pid [PID]");
    s.set_prepend_module_to_snapshot(true);
    s
}

pub fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$#&-~".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// A run as one text: exit code, stdout, stderr. Runs of blanks inside a line become two, so a
/// filtered value of another width does not move the columns.
pub fn shown(run: &Run) -> String {
    let squeeze = |text: &str| -> String {
        text.lines()
            .map(|l| {
                let indent = l.len() - l.trim_start().len();
                let mut out = l[..indent].to_string();
                let mut blanks = 0;
                for c in l[indent..].chars() {
                    if c == ' ' {
                        blanks += 1;
                        continue;
                    }
                    out.push_str(match blanks {
                        0 => "",
                        1 => " ",
                        _ => "  ",
                    });
                    blanks = 0;
                    out.push(c);
                }
                out + "\n"
            })
            .collect()
    };
    format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        run.code,
        squeeze(&run.stdout),
        run.stderr
    )
}
