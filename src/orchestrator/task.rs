//! What a task's steps work with: the run's shared pieces and the task's worker. Its own module
//! so the attempt and the repository's steps around it (`steps.rs`) both use it without
//! importing each other.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::record::Recorder;
use crate::config::{Settings, Source};
use crate::forge::Forge;
use crate::journal::Journal;
use crate::printer::Printer;
use crate::provider::Provider;
use crate::secrets::Masker;
use crate::transport::Transport;

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
