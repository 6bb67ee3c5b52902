//! `cwo demo`: the whole loop on a throwaway repository, with a scripted agent.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::{DemoArgs, GlobalArgs};
use crate::error::{CommandError, ExitStatus};
use crate::orchestrator::{RunOptions, Shutdown};
use crate::printer::Printer;
use crate::project::Project;
use crate::tracker::Tracker;
use crate::tracker::juggle::{Juggle, NewBall};

const DEMO_AGENT: &str = include_str!("../../assets/demo-agent.sh");

fn sh_git(dir: &Path, args: &[&str]) -> Result<String, CommandError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "cwo demo")
        .env("GIT_AUTHOR_EMAIL", "demo@localhost")
        .env("GIT_COMMITTER_NAME", "cwo demo")
        .env("GIT_COMMITTER_EMAIL", "demo@localhost")
        .output()
        .map_err(|e| CommandError::user(format!("cannot run git: {e}")).hint("install git"))?;
    if !out.status.success() {
        return Err(CommandError::user(format!(
            "`git {}` failed in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn write(path: &Path, text: &str) -> Result<(), CommandError> {
    std::fs::write(path, text)
        .map_err(|e| CommandError::user(format!("cannot write {}: {e}", path.display())))
}

/// Builds the demo: a bare origin, a clone with a backlog of four balls, and the demo agent.
fn build(base: &Path) -> Result<PathBuf, CommandError> {
    let origin = base.join("origin.git");
    let project = base.join("demo");
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p)
            .map_err(|e| CommandError::user(format!("cannot create {}: {e}", p.display())))
    };
    mkdir(&origin)?;
    mkdir(&project)?;
    sh_git(&origin, &["init", "--quiet", "--bare"])?;
    sh_git(&project, &["init", "--quiet", "-b", "main"])?;
    write(
        &project.join("README.md"),
        "# demo project\n\nA throwaway repository made by `cwo demo`.\n",
    )?;
    write(&project.join(".gitignore"), ".juggle/\n")?;
    sh_git(&project, &["add", "README.md", ".gitignore"])?;
    sh_git(&project, &["commit", "--quiet", "-m", "initial commit"])?;
    sh_git(
        &project,
        &["remote", "add", "origin", &origin.display().to_string()],
    )?;
    sh_git(&project, &["push", "--quiet", "origin", "main"])?;

    let agent = base.join("demo-agent.sh");
    write(&agent, DEMO_AGENT)?;
    write(
        &project.join("cwo.toml"),
        &format!(
            "# Made by `cwo demo`: the scripted demo agent, quick polling and retries.\n\
             poll_interval = \"1s\"\n\
             state_dir = \"../state\"\n\n\
             [agent]\n\
             command = [\"sh\", {agent:?}, \"{{prompt_file}}\"]\n\
             timeout = \"1m\"\n\
             retry_backoff = \"1s\"\n",
            agent = agent.display().to_string()
        ),
    )?;
    let juggle = Juggle::new(project.join(".juggle"), "");
    let add = |title: &str, ac: &[&str], p, deps: &[String]| {
        let ac: Vec<String> = ac.iter().map(|s| s.to_string()).collect();
        juggle.add(
            "demo",
            &NewBall {
                title,
                context: "",
                criteria: &ac,
                priority: p,
                depends_on: deps,
                tags: &[],
            },
        )
    };
    use crate::tracker::Priority::*;
    let greet = add(
        "Add a greeting module",
        &["notes/ has a greeting note"],
        High,
        &[],
    )?;
    add(
        "Add a farewell module",
        &["builds on the greeting"],
        Medium,
        &[greet],
    )?;
    add(
        "Write the changelog",
        &["CHANGELOG note exists"],
        Medium,
        &[],
    )?;
    add(
        "Deploy the site to production",
        &["the site is live"],
        Low,
        &[],
    )?;
    Ok(project)
}

pub(crate) async fn demo(
    printer: Printer,
    args: &DemoArgs,
    g: &GlobalArgs,
) -> Result<ExitStatus, CommandError> {
    let base = match &args.dir {
        Some(d) => {
            if d.exists()
                && std::fs::read_dir(d)
                    .map(|mut r| r.next().is_some())
                    .unwrap_or(true)
            {
                return Err(CommandError::usage(format!(
                    "{} exists and is not empty",
                    d.display()
                ))
                .hint("give a new directory, or leave --dir out to use a temporary one"));
            }
            d.clone()
        }
        None => tempfile_dir()?,
    };
    printer.status(format!("building the demo in {}", base.display()));
    let root = build(&base)?;
    let project = Project::load(Some(&root), &g.config)?;
    super::warn_about_settings(&project, &printer);
    let orch = project.orchestrator(printer)?;
    printer.status("running `cwo run --once` on the local provider with the scripted demo agent\n");
    let _lock = crate::journal::ControllerLock::acquire(&project.state_dir)?;
    orch.run(RunOptions { once: true }, Shutdown::default())
        .await?;

    let mut out = String::from("\nwhat happened:\n");
    for t in project.tracker().list()? {
        let detail = if t.state == "blocked" {
            format!(" — {}", t.blocked_reason)
        } else {
            String::new()
        };
        out.push_str(&format!("  {:<11} {} {}{detail}\n", t.state, t.id, t.title));
    }
    out.push_str("\nbranches pushed to origin:\n");
    let origin = base.join("origin.git");
    for line in sh_git(
        &origin,
        &[
            "for-each-ref",
            "--format=%(refname:short) %(objectname:short) %(subject)",
            "refs/heads/cwo",
        ],
    )?
    .lines()
    {
        out.push_str(&format!("  {line}\n"));
    }
    let live = orch.workers().journal().live_workers()?;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "cwo".into());
    out.push_str(&format!(
        "\nworkers left running: {}\n\ntry: {exe} -C {} status\n     {exe} -C {} logs <ball-id>\n",
        live.len(),
        root.display(),
        root.display()
    ));
    printer.out(out);
    Ok(ExitStatus::Success)
}

fn tempfile_dir() -> Result<PathBuf, CommandError> {
    let dir = std::env::temp_dir().join(format!(
        "cwo-demo-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| CommandError::user(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}
