//! What the orchestrator works with, handed in as values by the composition root (so a test can
//! hand in doubles), and the way its async code calls the blocking ones.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Settings, Source};
use crate::connector::Connector;
use crate::forge::Forge;
use crate::journal::Journal;
use crate::printer::Printer;
use crate::provider::Provider;
use crate::tracker::Tracker;

/// The stores and services the loop talks to.
#[derive(Clone)]
pub struct Ports {
    pub tracker: Arc<dyn Tracker>,
    pub journal: Journal,
    pub provider: Arc<dyn Provider>,
    /// Builds the transports to the provider's workers and pins their host keys.
    pub connector: Connector,
    pub printer: Printer,
    /// Where done tasks become pull requests (None: pull requests are off or the remote is on
    /// no forge).
    pub forge: Option<Arc<dyn Forge>>,
}

/// The project the loop works for, resolved by the composition root.
#[derive(Clone)]
pub struct RunContext {
    pub root: PathBuf,
    pub state_dir: PathBuf,
    /// The project's name as labels and worker names carry it.
    pub project_slug: String,
    pub settings: Arc<Settings>,
    /// The agent's prompt template (the built-in one, or `agent.prompt_template`'s text).
    pub template: String,
    /// Where each setting came from (the repository's workflow fills in only the defaults).
    pub origins: Arc<BTreeMap<String, Source>>,
}

/// Runs blocking work (SQLite under a std mutex with a busy timeout, juggle's file locks, files)
/// on tokio's blocking pool, so a slow disk or a lock another process holds never parks one of
/// the runtime's two worker threads (signal handling and heartbeats run there).
pub(crate) async fn off_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Blocking tasks are never aborted; only a runtime shutting down cancels them.
            Err(e) => panic!("a blocking journal or tracker call was cancelled: {e}"),
        },
    }
}

/// `f` on the journal, off the async threads.
pub(crate) async fn journaled<T: Send + 'static>(
    journal: &Journal,
    f: impl FnOnce(&Journal) -> T + Send + 'static,
) -> T {
    let j = journal.clone();
    off_thread(move || f(&j)).await
}

/// `f` on the tracker, off the async threads (juggle takes a file lock and rewrites its file).
pub(crate) async fn tracked<T: Send + 'static>(
    tracker: &Arc<dyn Tracker>,
    f: impl FnOnce(&dyn Tracker) -> T + Send + 'static,
) -> T {
    let t = tracker.clone();
    off_thread(move || f(t.as_ref())).await
}
