//! `cwo doctor`: what the configured tracker, provider and agent need, each with a fix. The
//! provider's own checks come from `Provider::doctor`; the rest are gathered here.

use std::path::Path;

use serde::Serialize;

use super::{Report, SCHEMA_VERSION};
use crate::bootstrap::Method;
use crate::config::Settings;
use crate::journal::ControllerLock;
use crate::project::Project;
use crate::provider::{Check, CheckStatus};
use crate::tracker::Tracker;
use crate::util::process::{Program, on_path};

/// Every check, in the order the table shows them.
#[derive(Serialize)]
pub(crate) struct DoctorReport {
    pub(crate) schema_version: u32,
    /// No check failed (warnings allowed).
    pub(crate) ok: bool,
    pub(crate) checks: Vec<Check>,
}

/// Runs every check: the tracker, the repository, the state dir, the settings, the reaper (for
/// providers that create machines), the provider's own, the bootstrap and the agent.
pub(crate) async fn collect(project: &Project) -> DoctorReport {
    let s = project.settings();
    let provider = project.provider_to_inspect();
    let mut checks = tracker_checks(project);
    checks.extend(repository_checks(project));
    checks.extend(state_checks(project));
    checks.extend(settings_checks(project));
    if provider.creates_machines() {
        checks.push(reaper_check(project));
    }
    checks.extend(provider.doctor().await);
    checks.push(bootstrap_check(s));
    checks.extend(agent_checks(s, provider.creates_machines()));
    DoctorReport {
        schema_version: SCHEMA_VERSION,
        ok: !checks.iter().any(|c| c.status == CheckStatus::Fail),
        checks,
    }
}

impl Report for DoctorReport {
    /// One line per check, and its fix under it.
    fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let mark = match c.status {
                CheckStatus::Ok => "ok  ",
                CheckStatus::Warn => "warn",
                CheckStatus::Fail => "FAIL",
            };
            out.push_str(&format!("{mark} {:<11} {}\n", c.name, c.detail));
            if !c.fix.is_empty() {
                out.push_str(&format!("     {:<11} fix: {}\n", "", c.fix));
            }
        }
        out
    }
}

/// `git args` in `dir`: its trimmed output when it succeeds.
fn git(args: &[&str], dir: &Path) -> Option<String> {
    Program::new("git").args(args).dir(dir).probe()
}

/// The juggle file: readable, and each problem in it with what cwo does about it.
fn tracker_checks(project: &Project) -> Vec<Check> {
    let tracker = project.tracker_quiet();
    match tracker.list().and_then(|t| Ok((t, tracker.problems()?))) {
        Ok((t, problems)) if tracker.balls_path().exists() || !problems.is_empty() => {
            let ready = t.iter().filter(|t| t.is_ready()).count();
            let summary = format!(
                "{}: {} ball(s), {ready} ready{}",
                tracker.balls_path().display(),
                t.len(),
                match problems.len() {
                    0 => String::new(),
                    n => format!(", {n} problem(s) below"),
                }
            );
            let mut checks = vec![if problems.is_empty() {
                Check::ok("tracker", summary)
            } else {
                Check::warn("tracker", summary, "")
            }];
            // Each problem says what cwo does about it and how to fix it.
            checks.extend(
                problems
                    .into_iter()
                    .map(|p| Check::warn("tracker", p.to_string(), "")),
            );
            checks
        }
        Ok(_) => vec![Check::warn(
            "tracker",
            format!("{} does not exist yet", tracker.balls_path().display()),
            "add work with `cwo task add \"title\" --ac \"criterion\"` or `juggle plan`",
        )],
        Err(e) => vec![Check::fail(
            "tracker",
            e.to_string(),
            "check the file's permissions",
        )],
    }
}

/// git, the repository with a commit, and the remote results are pushed to.
fn repository_checks(project: &Project) -> Vec<Check> {
    let root = &project.root;
    let s = project.settings();
    let mut checks = vec![match git(&["--version"], root) {
        Some(v) => Check::ok("git", v),
        None => Check::fail("git", "git is not installed", "apt-get install git"),
    }];
    checks.push(match git(&["rev-parse", "--verify", "HEAD"], root) {
        Some(head) => Check::ok(
            "repository",
            format!("{} at {}", root.display(), &head[..12.min(head.len())]),
        ),
        None => Check::fail(
            "repository",
            format!("{} is not a git repository with a commit", root.display()),
            "run cwo inside a git repository that has at least one commit",
        ),
    });
    if s.git.push {
        checks.push(match git(&["remote", "get-url", &s.git.remote], root) {
            Some(url) => Check::ok("remote", format!("{} → {url}", s.git.remote)),
            None => Check::fail(
                "remote",
                format!("git remote `{}` does not exist", s.git.remote),
                format!(
                    "`git remote add {} <url>`, or set git.remote, or git.push = false",
                    s.git.remote
                ),
            ),
        });
    }
    checks
}

/// The state dir is writable; whether a controller holds it.
fn state_checks(project: &Project) -> Vec<Check> {
    let probe = project.state_dir.join(".doctor-probe");
    let writable = match std::fs::create_dir_all(&project.state_dir)
        .and_then(|_| std::fs::write(&probe, b"ok"))
    {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            Check::ok("state dir", project.state_dir.display().to_string())
        }
        Err(e) => Check::fail(
            "state dir",
            format!("{}: {e}", project.state_dir.display()),
            "set state_dir to a writable directory",
        ),
    };
    let controller = match ControllerLock::holder(&project.state_dir) {
        Some(pid) => Check::ok("controller", format!("running, pid {pid}")),
        None => Check::ok("controller", "not running"),
    };
    vec![writable, controller]
}

/// Each settings value that deserves a warning, with where it was set.
fn settings_checks(project: &Project) -> Vec<Check> {
    let warnings = project.resolved.warnings();
    if warnings.is_empty() {
        return vec![Check::ok("settings", "no value that deserves a warning")];
    }
    warnings
        .into_iter()
        .map(|w| {
            Check::warn(
                "settings",
                format!("{} = {} ({}): {}", w.key, w.value, w.source, w.problem),
                w.fix,
            )
        })
        .collect()
}

/// A cloud worker whose controller died is deleted by its TTL while it runs; a stopped one, or
/// one with no TTL, only by a reaper.
fn reaper_check(project: &Project) -> Check {
    match crate::schedule::reaper_installed(&project.root) {
        Some(true) => Check::ok("reaper", "`cwo reap --yes` runs from cron"),
        Some(false) => Check::warn(
            "reaper",
            "no cron reaper for this project: a stopped or abandoned worker (the TTL no longer runs for a stopped VM) is deleted only when a cwo command next looks",
            "cwo schedule install",
        ),
        None => Check::warn(
            "reaper",
            "cannot read the crontab: is cron installed?",
            "install cron, then `cwo schedule install` (or run `cwo reap --yes` from your own scheduler)",
        ),
    }
}

/// What the configured bootstrap method needs, or what it will do.
fn bootstrap_check(s: &Settings) -> Check {
    match s.bootstrap_method() {
        Method::Ansible => match on_path("ansible-playbook") {
            Some(path) => Check::ok("bootstrap", format!("ansible: {}", path.display())),
            None => Check::fail(
                "bootstrap",
                "bootstrap.method = \"ansible\" but ansible-playbook is not on PATH",
                "pipx install ansible-core (or use bootstrap.method = \"native\")",
            ),
        },
        Method::Native => Check::ok(
            "bootstrap",
            format!(
                "native: swap {}, opencode {}, user {} in {}, watchdog after {} idle min ({}); `cwo bootstrap script` shows it",
                s.bootstrap
                    .swap
                    .map(|m| format!("{m} MiB"))
                    .unwrap_or_else(|| "off".into()),
                s.bootstrap.opencode,
                s.bootstrap.user,
                s.bootstrap.workspace,
                s.watchdog.idle_minutes,
                s.watchdog.action
            ),
        ),
        _ => Check::ok("bootstrap", "none: workers are used as they are"),
    }
}

/// The agent program: installed by the bootstrap on machines cwo creates, else on this PATH
/// (and ripgrep, which opencode's tools need).
fn agent_checks(s: &Settings, creates_machines: bool) -> Vec<Check> {
    let program = &s.agent.command[0];
    if creates_machines
        && s.bootstrap_method() != Method::None
        && program == "opencode"
        && s.bootstrap.opencode != "none"
    {
        return vec![Check::ok(
            "agent",
            format!(
                "opencode {} is installed on each worker by the bootstrap",
                s.bootstrap.opencode
            ),
        )];
    }
    let Some(path) = on_path(program) else {
        let fix = if program == "opencode" {
            "npm install -g opencode-ai, or set agent.command to your agent's argv (see config/cwo.example.toml)".to_string()
        } else {
            format!("install `{program}` or fix agent.command")
        };
        return vec![Check::fail(
            "agent",
            format!("`{program}` (agent.command) is not on PATH"),
            fix,
        )];
    };
    let mut checks = vec![Check::ok(
        "agent",
        format!("{program} → {}", path.display()),
    )];
    if Path::new(program)
        .file_name()
        .is_some_and(|n| n == "opencode")
        && on_path("rg").is_none()
    {
        checks.push(Check::warn(
            "ripgrep",
            "rg is not on PATH: opencode's grep and glob tools fail offline",
            "apt-get install ripgrep",
        ));
    }
    checks
}
