//! `cwo demo`'s throwaway world: a bare origin, a clone with a backlog of four balls and a
//! scripted agent (assets/demo-agent.sh), and what the loop made of it.

use std::path::{Path, PathBuf};

use crate::error::CommandError;
use crate::journal::Journal;
use crate::project::Project;
use crate::tracker::Tracker;
use crate::tracker::juggle::{Juggle, NewBall};
use crate::util::process::Program;

const DEMO_AGENT: &str = include_str!("../assets/demo-agent.sh");

/// `git -C dir args` as the demo's author; its stdout.
fn sh_git(dir: &Path, args: &[&str]) -> Result<String, CommandError> {
    let out = Program::new("git")
        .args(["-C".as_ref(), dir.as_os_str()])
        .args(args)
        .env("GIT_AUTHOR_NAME", "cwo demo")
        .env("GIT_AUTHOR_EMAIL", "demo@localhost")
        .env("GIT_COMMITTER_NAME", "cwo demo")
        .env("GIT_COMMITTER_EMAIL", "demo@localhost")
        .output()
        .map_err(|e| CommandError::user(e.to_string()).hint("install git"))?;
    if !out.success {
        return Err(CommandError::user(format!(
            "`git {}` failed in {}: {}",
            args.join(" "),
            dir.display(),
            out.stderr.trim()
        )));
    }
    Ok(out.stdout)
}

fn write(path: &Path, text: &str) -> Result<(), CommandError> {
    std::fs::write(path, text)
        .map_err(|e| CommandError::user(format!("cannot write {}: {e}", path.display())))
}

/// Builds the demo: a bare origin, a clone with a backlog of four balls, and the demo agent.
pub(crate) fn build(base: &Path) -> Result<PathBuf, CommandError> {
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

/// The directory the demo is built in: `dir`, which must be new or empty, else a new temporary
/// one.
pub(crate) fn base_dir(dir: Option<&Path>) -> Result<PathBuf, CommandError> {
    let Some(d) = dir else {
        return tempfile_dir();
    };
    if d.exists()
        && std::fs::read_dir(d)
            .map(|mut r| r.next().is_some())
            .unwrap_or(true)
    {
        return Err(
            CommandError::usage(format!("{} exists and is not empty", d.display()))
                .hint("give a new directory, or leave --dir out to use a temporary one"),
        );
    }
    Ok(d.to_path_buf())
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

/// What happened, for stdout: each ball's state, the branches pushed to the origin in `base`,
/// the workers left running, and what to try next.
pub(crate) fn what_happened(
    project: &Project,
    base: &Path,
    journal: &Journal,
) -> Result<String, CommandError> {
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
    let live = journal.live_workers()?;
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "cwo".into());
    let root = &project.root;
    out.push_str(&format!(
        "\nworkers left running: {}\n\ntry: {exe} -C {} status\n     {exe} -C {} logs <ball-id>\n",
        live.len(),
        root.display(),
        root.display()
    ));
    Ok(out)
}
