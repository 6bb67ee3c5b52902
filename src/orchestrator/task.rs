//! What a task's steps work with: the run's shared pieces and the task's worker, and how a step
//! on the worker survives a lost connection (`on_worker`). Its own module
//! so the attempt and the repository's steps around it (`steps.rs`) both use it without
//! importing each other.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::error::TaskError;
use super::record::Recorder;
use crate::config::{Settings, Source};
use crate::forge::Forge;
use crate::git;
use crate::journal::Journal;
use crate::printer::Printer;
use crate::printer::fmt_secs;
use crate::provider::Provider;
use crate::secrets::Masker;
use crate::transport::{Transport, TransportError};

/// What every task of a run shares.
pub(crate) struct TaskEnv {
    /// `agent.env` with secret references resolved, and the masker for their values; set
    /// once at the start of a run.
    pub(crate) agent_env: tokio::sync::OnceCell<(Vec<(String, String)>, Masker)>,
    pub(crate) root: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) settings: Arc<Settings>,
    /// Where each setting came from: the repository's workflow fills in only the defaults.
    pub(crate) origins: Arc<BTreeMap<String, Source>>,
    pub(crate) template: String,
    pub(crate) recorder: Recorder,
    pub(crate) journal: Journal,
    pub(crate) printer: Printer,
    /// Where done tasks become pull requests (None: no forge for this project).
    pub(crate) forge: Option<Arc<dyn Forge>>,
}

/// One task on one worker.
pub(crate) struct TaskCtx {
    pub(crate) env: Arc<TaskEnv>,
    pub(crate) provider: Arc<dyn Provider>,
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) worker: String,
    pub(crate) workspace: String,
    pub(crate) abort: CancellationToken,
}

/// How long the controller keeps trying to reach a worker the provider says is alive (one
/// outage: the clock restarts whenever the worker answers).
const RECONNECT_LIMIT: Duration = Duration::from_secs(300);
/// Between the two reads that must both say a worker is gone.
const GONE_RECHECK: Duration = Duration::from_secs(2);

/// An error from a step on the worker that may only mean the connection was lost.
pub(crate) trait Lost: std::error::Error + Send + Sync + 'static {
    fn lost(&self) -> bool;
}

impl Lost for TransportError {
    fn lost(&self) -> bool {
        self.is_connection()
    }
}

impl Lost for git::GitError {
    fn lost(&self) -> bool {
        self.is_connection()
    }
}

/// Runs an idempotent step on the worker. A lost connection never means a dead worker: the step
/// is retried while the provider says the worker lives, and a worker the provider says is gone
/// ends the attempt as `WorkerGone` (DESIGN invariant 5). Any other failure is a `Retry`.
pub(crate) async fn on_worker<T, E, Fut>(
    ctx: &TaskCtx,
    what: &str,
    mut step: impl FnMut() -> Fut,
) -> Result<T, TaskError>
where
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Lost,
{
    let mut since = None;
    let mut backoff = Duration::from_millis(250);
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if e.lost() => {
                if !still_alive(ctx, &e.to_string(), &mut since, &mut backoff).await? {
                    return Err(TaskError::gone(format!(
                        "worker {} is gone ({what})",
                        ctx.worker
                    )));
                }
            }
            Err(e) => return Err(TaskError::retry(format!("{what} on {}", ctx.worker), e)),
        }
    }
}

/// After a failed call: is the worker still there (keep trying) or gone? A worker that stayed
/// unreachable for `RECONNECT_LIMIT` counts as lost too (`WorkerGone`): the loop replaces it
/// rather than spending every remaining attempt, and the rest of the queue, on it.
pub(crate) async fn still_alive(
    ctx: &TaskCtx,
    error: &str,
    since: &mut Option<Instant>,
    backoff: &mut Duration,
) -> Result<bool, TaskError> {
    let first = *since.get_or_insert_with(Instant::now);
    // Only the provider may declare a worker dead, and only when it says so twice a moment apart
    // (one empty read is no verdict); a provider error is no verdict either way.
    match ctx.provider.get(&ctx.worker).await {
        Ok(None) => {
            tokio::time::sleep(GONE_RECHECK).await;
            if let Ok(None) = ctx.provider.get(&ctx.worker).await {
                return Ok(false);
            }
        }
        // Stopped (outside cwo, or by a watchdog): it can do no work; deleted and replaced.
        Ok(Some(i)) if i.status.is_stopped() => return Ok(false),
        _ => {}
    }
    if first.elapsed() > RECONNECT_LIMIT {
        return Err(TaskError::gone(format!(
            "lost the connection to {} for {}: {error}",
            ctx.worker,
            fmt_secs(first.elapsed())
        )));
    }
    ctx.env.printer.status(format!(
        "connection to {} failed ({error}); the worker is alive, retrying in {}",
        ctx.worker,
        fmt_secs(*backoff)
    ));
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(10));
    Ok(true)
}
