//! The repository's own steps around the agent, from `.cwo/workflow.toml` read at the commit a
//! task starts from: its limits and model, the setup before the agent (skipped when a setup
//! cache of the same key is on the worker), the verify command after it, and the prompt built
//! from its template and context files.

use std::io::Write;
use std::path::Path;

use super::error::TaskError;
use super::task::{TaskCtx, on_worker};
use crate::agent::limits::{self, Limits};
use crate::agent::phase::{self, PhaseEnd, Place};
use crate::secrets::Masker;
use crate::tracker::Task;
use crate::transport::{ExecStatus, describe};
use crate::workflow::{self, RepoWorkflow, WorkflowError};

/// What a task's attempts follow: the repository's workflow (None: it has none) and the limits
/// that result.
pub(crate) struct Flow {
    pub(crate) repo: Option<RepoWorkflow>,
    pub(crate) limits: Limits,
    /// The commit it was read at.
    pub(crate) commit: String,
}

/// Reads the workflow at `base`. A file that is wrong blocks the task (the user fixes and
/// commits it); git failing to answer is retried.
pub(crate) async fn read_flow(ctx: &TaskCtx, task: &Task, base: &str) -> Result<Flow, TaskError> {
    let env = &ctx.env;
    let repo = match workflow::load(&env.root, base).await {
        Ok(r) => r,
        Err(e @ WorkflowError::Invalid { .. }) => {
            return Err(TaskError::Block {
                context: format!("{e} ({})", e.hint()),
                source: None,
            });
        }
        Err(e) => return Err(TaskError::retry("reading the repository's workflow", e)),
    };
    let limits = limits::resolve(
        &env.settings.agent,
        &env.origins,
        repo.as_ref().map(|r| &r.file.agent),
        task,
    );
    if let Some(m) = &limits.model {
        env.printer.status(format!(
            "{}: model {m} (from {})",
            task.id, limits.model_from
        ));
    }
    Ok(Flow {
        repo,
        limits,
        commit: base.to_string(),
    })
}

/// Appends what the worker's log holds beyond the local mirror to it (masked with same-length
/// stars, so the mirror keeps the worker log's offsets).
async fn catch_up(ctx: &TaskCtx, at: &Place<'_>, log_path: &Path, masker: &Masker) {
    let write = async {
        if let Some(parent) = log_path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)?;
        let offset = log.metadata()?.len();
        let bytes = phase::read_log_from(ctx.transport.as_ref(), at, offset)
            .await
            .map_err(std::io::Error::other)?;
        log.write_all(&masker.mask(&bytes))
    };
    if let Err(e) = write.await {
        // The follow that comes next delivers these bytes from the same offset.
        tracing::debug!(error = %e, "the setup's output was not copied to the local log yet");
    }
}

/// Runs the workflow's setup in the attempt's fresh checkout before the agent: skipped when the
/// attempt's setup already ran (a resumed attempt) or a cache of the same key is on the worker.
/// `Ok(false)`: stopped by the abort signal. A command that fails blocks the task with its output.
pub(crate) async fn setup(
    ctx: &TaskCtx,
    task: &Task,
    flow: &Flow,
    at: &Place<'_>,
    log_path: &Path,
    agent_env: &[(String, String)],
    masker: &Masker,
) -> Result<bool, TaskError> {
    let Some(repo) = &flow.repo else {
        return Ok(true);
    };
    let commands = &repo.file.setup.commands;
    if commands.is_empty() {
        return Ok(true);
    }
    let env = &ctx.env;
    let t = ctx.transport.as_ref();
    if on_worker(ctx, "looking at the setup", || phase::setup_ran(t, at)).await? {
        return Ok(true);
    }
    let cache = repo
        .cache_key
        .as_ref()
        .map(|key| (key, format!("{}/setup-cache/{key}.tar", ctx.workspace)));
    if let Some((key, tar)) = &cache
        && on_worker(ctx, "restoring the setup cache", || {
            phase::restore_cache(t, at, tar)
        })
        .await?
    {
        let line = format!(
            "skipped: restored what setup left for cache key {} (files {})",
            &key[..12.min(key.len())],
            repo.file.setup.cache_key.join(", ")
        );
        on_worker(ctx, "recording the setup", || {
            phase::setup_done(t, at, &line)
        })
        .await?;
        env.printer.status(format!("{}: setup {line}", task.id));
        catch_up(ctx, at, log_path, masker).await;
        return Ok(true);
    }
    let id = task.id.clone();
    let printer = env.printer;
    let on_line = |line: &str| printer.task_line(&id, &masker.mask_str(line));
    // The commands share one time limit, agent.timeout.
    let until = tokio::time::Instant::now() + flow.limits.timeout;
    for argv in commands {
        let left = until
            .saturating_duration_since(tokio::time::Instant::now())
            .max(std::time::Duration::from_secs(1));
        // A lost connection runs the command again (setup commands are meant to be rerunnable:
        // `npm ci`, `cargo fetch`); its output is in the log twice then.
        let end = on_worker(ctx, "running the setup", || {
            phase::setup_command(t, at, argv, agent_env, left, ctx.abort.clone(), &on_line)
        })
        .await;
        catch_up(ctx, at, log_path, masker).await;
        let PhaseEnd { status, tail } = end?;
        let cmd = describe(argv);
        match status {
            ExecStatus::Exited(0) => {}
            ExecStatus::Cancelled => return Ok(false),
            ExecStatus::TimedOut => {
                return Err(TaskError::Block {
                    context: format!(
                        "setup `{cmd}` did not finish within {} (agent.timeout); its output ends with:\n{}",
                        humantime::format_duration(flow.limits.timeout),
                        masker.mask_str(&tail)
                    ),
                    source: None,
                });
            }
            status => {
                return Err(TaskError::Block {
                    context: format!(
                        "setup `{cmd}` failed ({status}) in .cwo/workflow.toml's [setup]; its output ends with:\n{}",
                        masker.mask_str(&tail)
                    ),
                    source: None,
                });
            }
        }
    }
    if let Some((key, tar)) = &cache
        && let Err(e) = phase::save_cache(t, at, tar).await
    {
        env.printer.warn(format!(
            "{}: setup ran, but its cache (key {}) could not be kept on {}: {e}; the next task runs setup again",
            task.id,
            &key[..12.min(key.len())],
            ctx.worker
        ));
    }
    on_worker(ctx, "recording the setup", || {
        phase::setup_done(t, at, "done")
    })
    .await?;
    catch_up(ctx, at, log_path, masker).await;
    Ok(true)
}

/// How the repository's checks judged an attempt's work.
pub(crate) enum Verified {
    /// No `[verify]`, or the command passed.
    Passed,
    /// The command failed: the reason, and the end of its output.
    Failed {
        reason: String,
        output: String,
    },
    Aborted,
}

/// Runs the workflow's verify command in the checkout, its output in the local log and on the
/// terminal.
pub(crate) async fn verify(
    ctx: &TaskCtx,
    task: &Task,
    flow: &Flow,
    at: &Place<'_>,
    log_path: &Path,
    agent_env: &[(String, String)],
    masker: &Masker,
) -> Result<Verified, TaskError> {
    let Some(argv) = flow
        .repo
        .as_ref()
        .and_then(|r| r.file.verify.as_ref())
        .map(|v| &v.command)
    else {
        return Ok(Verified::Passed);
    };
    let env = &ctx.env;
    let cmd = describe(argv);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| TaskError::retry(format!("opening {}", log_path.display()), e))?;
    let say = |line: &str| {
        env.printer.task_line(&task.id, line);
        if let Err(e) = writeln!(&log, "{line}") {
            tracing::debug!(error = %e, "local agent log not written");
        }
    };
    say(&format!("[cwo] verify: {cmd}"));
    let on_line = |line: &str| say(&masker.mask_str(line));
    let t = ctx.transport.as_ref();
    let end = on_worker(ctx, "running the checks", || {
        phase::verify(
            t,
            at,
            argv,
            agent_env,
            flow.limits.timeout,
            ctx.abort.clone(),
            &on_line,
        )
    })
    .await?;
    let verdict = match end.status {
        ExecStatus::Exited(0) => Verified::Passed,
        ExecStatus::Cancelled => Verified::Aborted,
        ExecStatus::TimedOut => Verified::Failed {
            reason: format!(
                "the checks failed: `{cmd}` did not finish within {}",
                humantime::format_duration(flow.limits.timeout)
            ),
            output: masker.mask_str(&end.tail),
        },
        status => Verified::Failed {
            reason: format!("the checks failed: `{cmd}` {status}"),
            output: masker.mask_str(&end.tail),
        },
    };
    let said = match &verdict {
        Verified::Passed => "passed".to_string(),
        Verified::Aborted => "stopped".to_string(),
        Verified::Failed { reason, .. } => reason.clone(),
    };
    say(&format!("[cwo] verify: {said}"));
    Ok(verdict)
}

/// What the next attempt's prompt says about the checks that failed; `carried`: it starts from
/// the commits they rejected (else from the task's base, those commits lost).
pub(crate) fn checks_feedback(reason: &str, output: &str, carried: bool) -> String {
    let why = reason.trim_start_matches("the checks failed: ");
    let start = if carried {
        format!(
            "Your previous attempt's commits are on this branch, but the repository's checks rejected them ({why}). Fix the cause with new commits on top of the branch (do not rewrite its history)"
        )
    } else {
        format!(
            "A previous attempt's work was rejected by the repository's checks ({why}) and could not be kept: this branch starts from the task's base again. Avoid the failure below"
        )
    };
    format!(
        "\n\n## The checks failed\n\n{start}, and run the checks yourself before you finish.\n\n```\n{}\n```\n",
        output.trim()
    )
}

/// The prompt: the context files, then the repository's template (or cwo's), with the feedback
/// a follow-up answers (appended when the template has no `{feedback}`).
pub(crate) fn prompt(
    flow: &Flow,
    builtin: &str,
    task: &Task,
    branch: &str,
    feedback: &str,
) -> String {
    let repo = flow.repo.as_ref();
    let body = match repo.and_then(|r| r.template.as_deref()) {
        Some(t) => {
            let mut p = workflow::render_template(t, task, branch, feedback);
            if !t.contains("{feedback}") {
                p.push_str(feedback);
            }
            p
        }
        None => {
            let mut p = crate::agent::render_prompt(builtin, task, branch);
            p.push_str(feedback);
            p
        }
    };
    match repo.map(|r| workflow::context_preamble(&r.context)) {
        Some(pre) if !pre.is_empty() => format!("{pre}{body}"),
        _ => body,
    }
}

/// Whether a failing verify still pushes (as a draft pull request).
pub(crate) fn push_on_failure(flow: &Flow) -> bool {
    flow.repo
        .as_ref()
        .and_then(|r| r.file.verify.as_ref())
        .is_some_and(|v| v.push_on_failure)
}
