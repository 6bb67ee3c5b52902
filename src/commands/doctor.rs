//! `cwo doctor`: what the configured tracker, provider and agent need, each with a fix.

use std::path::Path;

use serde::Serialize;
use serde_json::json;

use crate::cli::Format;
use crate::error::{CommandError, ExitStatus};
use crate::journal::ControllerLock;
use crate::printer::Printer;
use crate::project::Project;
use crate::tracker::Tracker;

#[derive(Serialize)]
struct Check {
    name: &'static str,
    status: &'static str, // ok | warn | fail
    detail: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    fix: String,
}

fn check(
    name: &'static str,
    status: &'static str,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
        fix: fix.into(),
    }
}

fn on_path(program: &str) -> Option<std::path::PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| program.into());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn run(program: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub async fn doctor(
    project: &Project,
    printer: Printer,
    format: Format,
) -> Result<ExitStatus, CommandError> {
    let s = project.settings();
    let root = &project.root;
    let mut checks = Vec::new();

    let tracker = project.tracker_quiet();
    match tracker.list().and_then(|t| Ok((t, tracker.problems()?))) {
        Ok((t, problems)) if tracker.balls_path().exists() || !problems.is_empty() => {
            let ready = t.iter().filter(|t| t.is_ready()).count();
            checks.push(check(
                "tracker",
                if problems.is_empty() { "ok" } else { "warn" },
                format!(
                    "{}: {} ball(s), {ready} ready{}",
                    tracker.balls_path().display(),
                    t.len(),
                    match problems.len() {
                        0 => String::new(),
                        n => format!(", {n} problem(s) below"),
                    }
                ),
                "",
            ));
            // Each problem says what cwo does about it and how to fix it.
            for p in problems {
                checks.push(check("tracker", "warn", p.to_string(), ""));
            }
        }
        Ok(_) => checks.push(check(
            "tracker",
            "warn",
            format!("{} does not exist yet", tracker.balls_path().display()),
            "add work with `cwo task add \"title\" --ac \"criterion\"` or `juggle plan`",
        )),
        Err(e) => checks.push(check(
            "tracker",
            "fail",
            e.to_string(),
            "check the file's permissions",
        )),
    }

    match run("git", &["--version"], root) {
        Some(v) => checks.push(check("git", "ok", v, "")),
        None => checks.push(check(
            "git",
            "fail",
            "git is not installed",
            "apt-get install git",
        )),
    }
    match run("git", &["rev-parse", "--verify", "HEAD"], root) {
        Some(head) => checks.push(check(
            "repository",
            "ok",
            format!("{} at {}", root.display(), &head[..12.min(head.len())]),
            "",
        )),
        None => checks.push(check(
            "repository",
            "fail",
            format!("{} is not a git repository with a commit", root.display()),
            "run cwo inside a git repository that has at least one commit",
        )),
    }
    if s.git.push {
        match run("git", &["remote", "get-url", &s.git.remote], root) {
            Some(url) => checks.push(check(
                "remote",
                "ok",
                format!("{} → {url}", s.git.remote),
                "",
            )),
            None => checks.push(check(
                "remote",
                "fail",
                format!("git remote `{}` does not exist", s.git.remote),
                format!(
                    "`git remote add {} <url>`, or set git.remote, or git.push = false",
                    s.git.remote
                ),
            )),
        }
    }

    let probe = project.state_dir.join(".doctor-probe");
    match std::fs::create_dir_all(&project.state_dir).and_then(|_| std::fs::write(&probe, b"ok")) {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            checks.push(check(
                "state dir",
                "ok",
                project.state_dir.display().to_string(),
                "",
            ));
        }
        Err(e) => checks.push(check(
            "state dir",
            "fail",
            format!("{}: {e}", project.state_dir.display()),
            "set state_dir to a writable directory",
        )),
    }
    match ControllerLock::holder(&project.state_dir) {
        Some(pid) => checks.push(check("controller", "ok", format!("running, pid {pid}"), "")),
        None => checks.push(check("controller", "ok", "not running", "")),
    }
    let warnings = project.resolved.warnings();
    if warnings.is_empty() {
        checks.push(check(
            "settings",
            "ok",
            "no value that deserves a warning",
            "",
        ));
    }
    for w in warnings {
        checks.push(check(
            "settings",
            "warn",
            format!("{} = {} ({}): {}", w.key, w.value, w.source, w.problem),
            w.fix,
        ));
    }

    // A cloud worker whose controller died is deleted by its TTL while it runs; a stopped one,
    // or one with no TTL, only by a reaper.
    if matches!(
        s.provider,
        crate::config::ProviderKind::Gcp | crate::config::ProviderKind::Terraform
    ) {
        checks.push(match super::schedule::reaper_installed(project) {
            Some(true) => check("reaper", "ok", "`cwo reap --yes` runs from cron", ""),
            Some(false) => check(
                "reaper",
                "warn",
                "no cron reaper for this project: a stopped or abandoned worker (the TTL no longer runs for a stopped VM) is deleted only when a cwo command next looks",
                "cwo schedule install",
            ),
            None => check(
                "reaper",
                "warn",
                "cannot read the crontab: is cron installed?",
                "install cron, then `cwo schedule install` (or run `cwo reap --yes` from your own scheduler)",
            ),
        });
    }
    match s.provider {
        crate::config::ProviderKind::Local => checks.push(check(
            "provider",
            "ok",
            format!(
                "local: workers are directories under {}",
                project.state_dir.join("workers").display()
            ),
            "",
        )),
        crate::config::ProviderKind::Ssh => {
            checks.push(if s.ssh.hosts.is_empty() || s.ssh.key.is_empty() {
                check(
                    "provider",
                    "fail",
                    "ssh: ssh.hosts and ssh.key must both be set",
                    "set [ssh] hosts = [\"user@host:22\"] and key = \"path/to/key\"",
                )
            } else {
                check(
                    "provider",
                    "ok",
                    format!("ssh: {} host(s)", s.ssh.hosts.len()),
                    "",
                )
            })
        }
        crate::config::ProviderKind::Terraform => {
            let bin = s.terraform.program();
            let version = tokio::process::Command::new(bin)
                .arg("version")
                .stdin(std::process::Stdio::null())
                .output()
                .await;
            checks.push(match version {
                Ok(out) if out.status.success() => check(
                    "provider",
                    "ok",
                    format!(
                        "terraform: {}",
                        String::from_utf8_lossy(&out.stdout)
                            .lines()
                            .next()
                            .unwrap_or(bin)
                    ),
                    "",
                ),
                _ => check(
                    "provider",
                    "fail",
                    format!("terraform: `{bin} version` does not run"),
                    "install Terraform (or OpenTofu and set terraform.binary = \"tofu\")",
                ),
            });
            if s.gcp.ssh_source.is_empty() {
                checks.push(check(
                    "ssh_source",
                    "fail",
                    "gcp.ssh_source is empty",
                    "set gcp.ssh_source to this machine's address as a /32",
                ));
            }
        }
        crate::config::ProviderKind::Gcp => {
            let journal = project.journal()?;
            let gcp = crate::provider::gcp::GcpProvider::new(
                s.gcp.clone(),
                s.ssh.clone(),
                crate::model::ids::slug(&project.name),
                project.state_dir.join("keys"),
                journal,
            );
            for c in gcp.doctor().await {
                let status = match c.ok {
                    Some(true) => "ok",
                    Some(false) => "fail",
                    None => "warn",
                };
                checks.push(check(c.name, status, c.detail, c.fix));
            }
        }
    }

    let method = s.bootstrap_method();
    match method {
        crate::bootstrap::Method::Ansible => {
            let found = on_path("ansible-playbook");
            checks.push(match found {
                Some(path) => check(
                    "bootstrap",
                    "ok",
                    format!("ansible: {}", path.display()),
                    "",
                ),
                None => check(
                    "bootstrap",
                    "fail",
                    "bootstrap.method = \"ansible\" but ansible-playbook is not on PATH",
                    "pipx install ansible-core (or use bootstrap.method = \"native\")",
                ),
            });
        }
        crate::bootstrap::Method::Native => checks.push(check(
            "bootstrap",
            "ok",
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
            "",
        )),
        _ => checks.push(check("bootstrap", "ok", "none: workers are used as they are", "")),
    }

    let program = &s.agent.command[0];
    let remote = matches!(
        s.provider,
        crate::config::ProviderKind::Gcp | crate::config::ProviderKind::Terraform
    );
    if remote
        && method != crate::bootstrap::Method::None
        && program == "opencode"
        && s.bootstrap.opencode != "none"
    {
        checks.push(check(
            "agent",
            "ok",
            format!(
                "opencode {} is installed on each worker by the bootstrap",
                s.bootstrap.opencode
            ),
            "",
        ));
    } else {
        match on_path(program) {
            Some(path) => {
                checks.push(check(
                    "agent",
                    "ok",
                    format!("{program} → {}", path.display()),
                    "",
                ));
                if Path::new(program)
                    .file_name()
                    .is_some_and(|n| n == "opencode")
                    && on_path("rg").is_none()
                {
                    checks.push(check(
                        "ripgrep",
                        "warn",
                        "rg is not on PATH: opencode's grep and glob tools fail offline",
                        "apt-get install ripgrep",
                    ));
                }
            }
            None => {
                let fix = if program == "opencode" {
                    "npm install -g opencode-ai, or set agent.command to your agent's argv (see config/cwo.example.toml)".to_string()
                } else {
                    format!("install `{program}` or fix agent.command")
                };
                checks.push(check(
                    "agent",
                    "fail",
                    format!("`{program}` (agent.command) is not on PATH"),
                    fix,
                ));
            }
        }
    }

    let failed = checks.iter().filter(|c| c.status == "fail").count();
    if format == Format::Json {
        printer.json(json!({ "ok": failed == 0, "checks": checks }));
    } else {
        let mut out = String::new();
        for c in &checks {
            let mark = match c.status {
                "ok" => "ok  ",
                "warn" => "warn",
                _ => "FAIL",
            };
            out.push_str(&format!("{mark} {:<11} {}\n", c.name, c.detail));
            if !c.fix.is_empty() {
                out.push_str(&format!("     {:<11} fix: {}\n", "", c.fix));
            }
        }
        printer.out(out);
    }
    Ok(if failed == 0 {
        ExitStatus::Success
    } else {
        ExitStatus::Failure
    })
}
