//! `cwo doctor`: what the configured tracker, provider and agent need, each with a fix. The
//! provider's own checks come from `Provider::doctor`; the rest are gathered here.

use std::path::Path;

use serde::Serialize;

use super::{Report, SCHEMA_VERSION};
use crate::bootstrap::Method;
use crate::config::{Settings, TrackerKind};
use crate::github::{Credentials, Github, GithubError};
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
    if let Some(c) = workflow_check(project).await {
        checks.push(c);
    }
    checks.extend(github_checks(project).await);
    checks.extend(state_checks(project));
    checks.extend(settings_checks(project));
    if provider.creates_machines() {
        checks.push(reaper_check(project));
    }
    checks.extend(provider.doctor().await);
    checks.push(bootstrap_check(s));
    if let Some(c) = image_check(provider.boot_image().await) {
        checks.push(c);
    }
    checks.extend(agent_checks(s, provider.creates_machines()));
    if let Some(c) = serve_check(s).await {
        checks.push(c);
    }
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

/// The configured tracker's data, readable, and each problem in it with what cwo does about it
/// (GitHub's are among `github_checks`).
fn tracker_checks(project: &Project) -> Vec<Check> {
    let s = project.settings();
    match s.tracker.kind {
        TrackerKind::Juggle => juggle_checks(project),
        TrackerKind::Github => vec![],
        TrackerKind::Frontloop => {
            let dir = project.root.join(&s.tracker.frontloop_dir);
            let tracker =
                crate::tracker::frontloop::Frontloop::new(dir.clone(), s.tracker.epic.clone());
            match tracker.list().and_then(|t| Ok((t, tracker.problems()?))) {
                Ok((t, problems)) => {
                    let ready = t.iter().filter(|t| t.is_ready()).count();
                    let summary = format!("{}: {} task(s), {ready} ready", dir.display(), t.len());
                    let first = if t.is_empty() && problems.is_empty() {
                        Check::warn(
                            "tracker",
                            summary,
                            "add task files with `fl` (juggle 1.x) under ready/",
                        )
                    } else {
                        Check::ok("tracker", summary)
                    };
                    with_problems(first, problems)
                }
                Err(e) => vec![Check::fail(
                    "tracker",
                    e.to_string(),
                    "check tracker.frontloop_dir and the directory's permissions",
                )],
            }
        }
    }
}

/// A tracker's summary check, then one warning per problem (each says what cwo does about it
/// and how to fix it).
fn with_problems(first: Check, problems: Vec<crate::tracker::TrackerProblem>) -> Vec<Check> {
    let mut checks = vec![first];
    checks.extend(
        problems
            .into_iter()
            .map(|p| Check::warn("tracker", p.to_string(), "")),
    );
    checks
}

/// The juggle file: readable, and each problem in it with what cwo does about it.
fn juggle_checks(project: &Project) -> Vec<Check> {
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
            let first = if problems.is_empty() {
                Check::ok("tracker", summary)
            } else {
                Check::warn("tracker", summary, "")
            };
            with_problems(first, problems)
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

/// The repository's `.cwo/workflow.toml` as the next task would read it (from HEAD), and a word
/// when the working tree's `.cwo/` differs (cwo never sees uncommitted edits). None: no commit.
async fn workflow_check(project: &Project) -> Option<Check> {
    use crate::workflow::{self, WorkflowError};
    let root = &project.root;
    let uncommitted = git(&["status", "--porcelain", "--", ".cwo"], root)
        .is_some_and(|out| !out.trim().is_empty());
    let check = match workflow::load(root, "HEAD").await {
        Err(WorkflowError::Git { .. }) => return None,
        Err(e) => Check::fail("workflow", e.to_string(), e.hint().to_string()),
        Ok(None) => Check::ok(
            "workflow",
            format!("no {} at HEAD: cwo's own defaults", workflow::WORKFLOW_PATH),
        ),
        Ok(Some(w)) => {
            let f = &w.file;
            let mut parts = Vec::new();
            if !f.setup.commands.is_empty() {
                parts.push(format!(
                    "setup: {} command(s){}",
                    f.setup.commands.len(),
                    if f.setup.cache_key.is_empty() {
                        String::new()
                    } else {
                        format!(", cached by {}", f.setup.cache_key.join(", "))
                    }
                ));
            }
            if let Some(v) = &f.verify {
                parts.push(format!(
                    "verify: `{}`",
                    crate::transport::describe(&v.command)
                ));
            }
            if let Some(t) = &f.prompt.template {
                parts.push(format!("template: {t}"));
            }
            if !w.context.is_empty() {
                parts.push(format!("{} context file(s)", w.context.len()));
            }
            if parts.is_empty() {
                parts.push("agent limits only".into());
            }
            Check::ok(
                "workflow",
                format!(
                    "{} at {}: {}",
                    workflow::WORKFLOW_PATH,
                    &w.commit[..12.min(w.commit.len())],
                    parts.join("; ")
                ),
            )
        }
    };
    Some(match (check.status, uncommitted) {
        (CheckStatus::Ok, true) => Check::warn(
            "workflow",
            format!(
                "{}; .cwo/ has uncommitted changes, which cwo does not see",
                check.detail
            ),
            "commit them: cwo reads the workflow from the commit a task starts from",
        ),
        _ => check,
    })
}

/// What GitHub answers for the configured repository, when cwo works with one: the token and
/// where it came from, the account, its permissions on the repository, and (for the GitHub
/// tracker) the labels and the queue.
async fn github_checks(project: &Project) -> Vec<Check> {
    let s = project.settings();
    let needed = s.tracker.kind == TrackerKind::Github;
    if !needed && (!s.github.pull_requests || !s.git.push) {
        return vec![];
    }
    // Without the GitHub tracker a missing GitHub only means no pull requests: a warning.
    let fail_or_warn = |detail: String, fix: String| {
        if needed {
            Check::fail("github", detail, fix)
        } else {
            Check::warn("github", format!("{detail}: no pull requests"), fix)
        }
    };
    let hint = |e: &GithubError| e.hint().unwrap_or_default();
    let repo = match project.github_repo() {
        Ok(r) => r,
        Err(e) if needed => {
            return vec![Check::fail(
                "github",
                e.to_string(),
                "set github.repo = \"owner/name\"",
            )];
        }
        Err(_) => {
            return vec![Check::ok(
                "github",
                format!(
                    "pull requests off: git remote `{}` is not on {}",
                    s.git.remote,
                    crate::github::host_of(&s.github.api_url)
                ),
            )];
        }
    };
    let creds = match Credentials::resolve(&s.github, &s.gcp).await {
        Ok(c) => c,
        Err(e) => return vec![fail_or_warn(format!("no token for {repo}: {e}"), hint(&e))],
    };
    let gh = match Github::new(&s.github.api_url, repo.clone(), creds) {
        Ok(gh) => gh,
        Err(e) => return vec![fail_or_warn(e.to_string(), hint(&e))],
    };
    let (label, tracker) = (s.github.label.clone(), needed);
    let client = gh.clone();
    let answers = gh
        .run(async move {
            let login = client.own_login().await?;
            let repository = client.repository().await?;
            let labels = if tracker {
                Some((
                    client.labels().await?,
                    client.labelled_issues(&label).await?.len(),
                ))
            } else {
                None
            };
            Ok::<_, GithubError>((login, repository, labels))
        })
        .await;
    let (login, repository, labels) = match answers {
        Ok(a) => a,
        Err(e) => return vec![fail_or_warn(e.to_string(), hint(&e))],
    };
    let mut checks = vec![Check::ok(
        "github",
        format!("{login} on {} (token: {})", gh.api_url(), gh.token_source()),
    )];
    let write_fix = "give the token write access to the repository (fine-grained: Contents, Issues and Pull requests read & write; classic: the repo scope; an App: install it on the repository with those permissions)";
    let scopes = gh.token_scopes();
    let lacks_scope = scopes
        .as_ref()
        .is_some_and(|s| !s.iter().any(|p| p == "repo" || p == "public_repo"));
    checks.push(match &repository.permissions {
        _ if lacks_scope => (if needed { Check::fail } else { Check::warn })(
            "github repo",
            format!(
                "the classic token's scopes ({}) do not include repo: cwo cannot push or open pull requests on {repo}",
                scopes.unwrap_or_default().join(", ")
            ),
            write_fix,
        ),
        Some(p) if !p.push => (if needed { Check::fail } else { Check::warn })(
            "github repo",
            format!(
                "{login} can read {repo} but not push to it: cwo pushes task branches and opens pull requests"
            ),
            write_fix,
        ),
        Some(_) => Check::ok(
            "github repo",
            format!(
                "{} (default branch {}): push allowed{}",
                repository.full_name,
                repository.default_branch,
                scopes
                    .map(|s| format!(", scopes {}", s.join(", ")))
                    .unwrap_or_default()
            ),
        ),
        None => Check::warn(
            "github repo",
            format!(
                "{} (default branch {}): GitHub did not say what the token may do",
                repository.full_name, repository.default_branch
            ),
            "make sure the token may push and open pull requests",
        ),
    });
    if let Some((present, queued)) = labels {
        let has = |name: &str| present.iter().any(|l| l.name.eq_ignore_ascii_case(name));
        let specs = crate::tracker::github::labels(&s.github.label);
        let missing: Vec<&str> = specs
            .iter()
            .skip(1)
            .filter(|l| !has(&l.name))
            .map(|l| l.name.as_str())
            .collect();
        checks.push(if !has(&s.github.label) {
            Check::fail(
                "labels",
                format!(
                    "label `{}` (github.label) does not exist on {repo}: no issue can be queued",
                    s.github.label
                ),
                "cwo github init",
            )
        } else if !missing.is_empty() {
            Check::warn(
                "labels",
                format!(
                    "{queued} open issue(s) labelled `{}`; missing: {} (GitHub creates them grey on first use)",
                    s.github.label,
                    missing.join(", ")
                ),
                "cwo github init",
            )
        } else {
            Check::ok(
                "labels",
                format!(
                    "{queued} open issue(s) labelled `{}`; the state and priority labels exist",
                    s.github.label
                ),
            )
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

/// What `cwo serve` would do with these settings, once any of its settings is set: whether it
/// starts at all (a token off loopback and behind a public URL), and whether its secrets resolve.
async fn serve_check(s: &Settings) -> Option<Check> {
    let v = &s.serve;
    let defaults = crate::config::ServeSettings::default();
    if v.listen == defaults.listen
        && v.token.is_empty()
        && v.public_url.is_empty()
        && s.github.webhook_secret.is_empty()
    {
        return None;
    }
    if v.token.is_empty() && !v.listens_on_loopback() {
        return Some(Check::fail(
            "serve",
            format!(
                "serve.listen = {:?} is not loopback and serve.token is not set: `cwo serve` refuses to start",
                v.listen
            ),
            "set serve.token = \"env:CWO_SERVE_TOKEN\" (any secret reference), or listen on 127.0.0.1",
        ));
    }
    if v.token.is_empty() && !v.public_url.is_empty() {
        return Some(Check::fail(
            "serve",
            "serve.public_url is set and serve.token is not: `cwo serve` refuses to start (a tunnel or proxy arrives from loopback)",
            "set serve.token to a secret reference",
        ));
    }
    for (key, reference) in [
        ("serve.token", &v.token),
        ("github.webhook_secret", &s.github.webhook_secret),
    ] {
        // What `cwo serve` resolves at its start, as it resolves it.
        if let Err(e) = crate::secrets::resolve_nonempty(key, reference, &s.gcp).await {
            return Some(Check::fail(
                "serve",
                crate::util::error::one_line(&e),
                format!("make {key} resolve to the secret where `cwo serve` runs"),
            ));
        }
    }
    let hooks = if s.github.webhook_secret.is_empty() {
        "webhooks refused (github.webhook_secret not set: the loop polls)"
    } else {
        "webhooks verified with github.webhook_secret"
    };
    let guard = if v.token.is_empty() {
        "no token (loopback names only)"
    } else {
        "token required"
    };
    Some(Check::ok(
        "serve",
        format!(
            "cwo serve on {}: {guard}, {hooks}; `cwo github webhook-url` prints the hook",
            v.listen
        ),
    ))
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

/// The image new workers boot from (`gcp.use_image`), where baked images apply.
fn image_check(
    choice: Option<Result<crate::provider::BootImage, crate::provider::ProviderError>>,
) -> Option<Check> {
    match choice? {
        Ok(b) if b.hash.is_empty() => None,
        Ok(b) => Some(match &b.baked {
            Some(name) => Check::ok(
                "image",
                format!(
                    "workers boot {name}, {}: the bootstrap only checks it",
                    b.why
                ),
            ),
            None if b.build_would_help => Check::warn(
                "image",
                format!("workers boot {}", b.why),
                "`cwo image build` bakes the bootstrap into an image once, so each worker boots ready",
            ),
            None => Check::ok("image", format!("workers boot {}", b.why)),
        }),
        Err(e) => Some(Check::fail(
            "image",
            e.one_line(),
            "`cwo image build`, or gcp.use_image = \"auto\" to fall back to gcp.image",
        )),
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
