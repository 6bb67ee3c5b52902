//! The orchestrator's own errors (it sits below `crate::error`): what failed, with the source kept
//! and the hints that say what to do next. `crate::error` converts them for the commands.

use std::time::Duration;

use crate::bootstrap::BootstrapError;
use crate::journal::JournalError;
use crate::printer::fmt_secs;
use crate::provider::ProviderError;
use crate::tracker::TrackerError;
use crate::transport::TransportError;

/// Any error, kept with its source chain.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What stopped a worker's bring-up, adoption or teardown, or the loop.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Tracker(#[from] TrackerError),
    /// `agent.env` names a secret that cannot be resolved (a settings error).
    #[error(transparent)]
    Secrets(crate::secrets::SecretError),
    /// The repository's `.cwo/workflow.toml` at HEAD is wrong: nothing is created.
    #[error(transparent)]
    Workflow(crate::workflow::WorkflowError),
    #[error("could not bring up worker {name}")]
    BringUp {
        name: String,
        #[source]
        source: ProviderError,
    },
    #[error("cannot reach worker {name}")]
    Connect {
        name: String,
        #[source]
        source: BoxError,
    },
    /// The first call over a new worker's connection (the prerequisite check) failed.
    #[error("cannot reach worker {name}")]
    Unreachable {
        name: String,
        #[source]
        source: TransportError,
    },
    #[error("worker {name} is missing what the agent needs: {missing}")]
    MissingPrereqs { name: String, missing: String },
    #[error(
        "refusing to bootstrap worker {name}: its address {host} is this machine, and the bootstrap would add swap, harden sshd and install a watchdog that powers it off"
    )]
    BootstrapThisMachine { name: String, host: String },
    #[error("could not bootstrap worker {name}")]
    Bootstrap {
        name: String,
        #[source]
        source: BootstrapError,
    },
    #[error("worker {name}: {problem}")]
    HostKeyMismatch { name: String, problem: String },
    /// A step of `cwo image` (stopping the builder, creating, listing or deleting an image).
    #[error("{what}")]
    Image {
        what: String,
        #[source]
        source: ProviderError,
    },
    #[error("cannot look up worker {name}")]
    Lookup {
        name: String,
        #[source]
        source: ProviderError,
    },
    #[error(
        "could not delete worker {name} (gave up after {}, teardown_timeout)",
        fmt_secs(*deadline)
    )]
    Delete {
        name: String,
        deadline: Duration,
        #[source]
        source: ProviderError,
        /// The provider's command that deletes the worker by hand.
        manual: Option<String>,
    },
    /// A bring-up failed, and deleting the half-made worker failed too: both are reported (the
    /// second with its delete command), neither is dropped.
    #[error("{problem}")]
    Abandoned {
        name: String,
        problem: Box<OrchestratorError>,
        cleanup: Box<OrchestratorError>,
    },
    #[error("worker {name} came up with too little life for one task: {why}")]
    TtlTooShort { name: String, why: String },
    #[error("a task crashed inside cwo")]
    TaskPanicked(#[source] tokio::task::JoinError),
    /// `cwo down` deleted what it could; these workers are still live.
    #[error("still live: {}", .0.join(", "))]
    StillLive(Vec<String>),
    /// `cwo ssh NAME`: no ready worker has that name.
    #[error("no live worker named {0}")]
    NoLiveWorker(String),
    #[error("no worker is up")]
    NoWorkerUp,
    /// `cwo ssh` without a name, and more than one worker is up.
    #[error("{} workers are up: {}; name one", .0.len(), .0.join(", "))]
    SeveralUp(Vec<String>),
    /// The journal has the worker, the provider does not.
    #[error("worker {0} is gone")]
    Gone(String),
    /// The provider's quota could not be read (the fleet scales as if it had none).
    #[error("could not read the quota")]
    Quota {
        #[source]
        source: ProviderError,
    },
    /// `workers.max_hourly_usd` is set and a worker has no catalog price: the ceiling cannot be
    /// kept, so no worker is brought up.
    #[error(
        "workers.max_hourly_usd = {ceiling} is set, but the price catalog has no price for a {machine} worker in {zone}, so the fleet's hourly cost cannot be kept under it"
    )]
    Unpriced {
        ceiling: f64,
        machine: String,
        zone: String,
    },
    /// `workers.max_hourly_usd` is below the price of one worker.
    #[error(
        "workers.max_hourly_usd = {ceiling} is below the list price of one worker ({machine}: ${price:.4}/h)"
    )]
    CeilingTooLow {
        ceiling: f64,
        machine: String,
        price: f64,
    },
}

impl OrchestratorError {
    /// A settings problem (exit 2) rather than a failure (exit 1).
    pub(crate) fn is_usage(&self) -> bool {
        match self {
            OrchestratorError::Secrets(_)
            | OrchestratorError::Workflow(_)
            | OrchestratorError::TtlTooShort { .. }
            | OrchestratorError::SeveralUp(_)
            | OrchestratorError::Unpriced { .. }
            | OrchestratorError::CeilingTooLow { .. } => true,
            OrchestratorError::Abandoned { problem, .. } => problem.is_usage(),
            _ => false,
        }
    }

    /// A bug in cwo, not something the user can fix.
    pub(crate) fn is_internal(&self) -> bool {
        matches!(self, OrchestratorError::TaskPanicked(_))
    }

    /// The error whose source chain explains this one (`Abandoned` explains itself through the
    /// bring-up's problem).
    pub(crate) fn cause(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OrchestratorError::Abandoned { problem, .. } => problem.cause(),
            e => std::error::Error::source(e),
        }
    }

    /// What to do next. Journal and tracker errors get theirs where commands convert them.
    pub(crate) fn hints(&self) -> Vec<String> {
        use OrchestratorError as E;
        match self {
            E::Secrets(_) => {
                vec!["secrets are sm://projects/P/secrets/S/versions/V or env:NAME".into()]
            }
            E::Workflow(e) => vec![
                e.hint().to_string(),
                "every key is described in docs/workflow.md".into(),
            ],
            E::Unreachable { .. } => vec![
                "check the address, the key and the network; `cwo doctor` checks the settings"
                    .into(),
            ],
            E::MissingPrereqs { .. } => vec![
                "install it there, or change agent.command (`cwo doctor` checks both)".into(),
            ],
            E::BootstrapThisMachine { .. } => vec![
                "set bootstrap.method = \"none\" for hosts on this machine (emulators, tests)"
                    .into(),
            ],
            E::Bootstrap { .. } => vec![
                "`cwo bootstrap script` prints the script to run by hand; bootstrap.method = \"none\" skips it".into(),
            ],
            E::HostKeyMismatch { .. } => vec![
                "the worker is torn down; check the network path to it before trying again".into(),
            ],
            E::Delete { manual, .. } => {
                let mut h = vec!["run `cwo down` again; the journal still lists the worker".into()];
                if let Some(cmd) = manual {
                    h.push(format!("or delete it yourself: {cmd}"));
                }
                h
            }
            E::Abandoned {
                name,
                problem,
                cleanup,
            } => {
                let mut h = problem.hints();
                h.push(format!(
                    "and worker {name} could not be deleted: {}",
                    crate::util::error::one_line(&**cleanup)
                ));
                h.extend(cleanup.hints());
                h
            }
            E::TtlTooShort { .. } => vec![
                "raise gcp.ttl (it must cover the bring-up, agent.timeout and 5 minutes), or lower agent.timeout".into(),
            ],
            E::StillLive(_) => vec!["run `cwo down` again".into()],
            E::NoLiveWorker(_) => vec!["`cwo status` lists the workers".into()],
            E::NoWorkerUp => {
                vec!["bring one up with `cwo up`, or let `cwo run` do it".into()]
            }
            E::Gone(_) => vec!["`cwo down` updates the journal".into()],
            E::Unpriced { .. } => vec![
                "remove workers.max_hourly_usd, or pick a machine type and zone the catalog prices (`cwo up --plan` shows the price)".into(),
            ],
            E::CeilingTooLow { price, .. } => vec![format!(
                "raise workers.max_hourly_usd to at least {price:.4}, or pick a cheaper gcp.machine_type"
            )],
            E::Quota { .. } => vec!["grant compute.regions.get to let cwo read it".into()],
            _ => vec![],
        }
    }

    /// The error as the loop prints a warning about it: the message, its causes, its hints (the
    /// layout of a command's error).
    pub fn render(&self) -> String {
        crate::util::error::render(&self.to_string(), self.cause(), &self.hints())
    }
}

/// Why a task step stopped, by what happens next. The reason recorded in the tracker and the
/// journal is the context followed by the source's message.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TaskError {
    /// The attempt failed; another may succeed (within `agent.max_attempts`).
    #[error("{context}")]
    Retry {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The ball cannot go on: it is blocked at once.
    #[error("{context}")]
    Block {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The worker is gone (the provider says so, or it stayed unreachable too long): nothing more
    /// runs there, and the loop replaces it.
    #[error("{context}")]
    WorkerGone {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl TaskError {
    pub(crate) fn retry(context: impl Into<String>, source: impl Into<BoxError>) -> TaskError {
        TaskError::Retry {
            context: context.into(),
            source: Some(source.into()),
        }
    }
    pub(crate) fn retry_because(context: impl Into<String>) -> TaskError {
        TaskError::Retry {
            context: context.into(),
            source: None,
        }
    }
    pub(crate) fn block(context: impl Into<String>, source: impl Into<BoxError>) -> TaskError {
        TaskError::Block {
            context: context.into(),
            source: Some(source.into()),
        }
    }
    pub(crate) fn gone(context: impl Into<String>) -> TaskError {
        TaskError::WorkerGone {
            context: context.into(),
            source: None,
        }
    }

    /// Anything that was retryable blocks the ball instead (a step that decides the ball).
    pub(crate) fn blocking(self) -> TaskError {
        match self {
            TaskError::Retry { context, source } => TaskError::Block { context, source },
            e => e,
        }
    }

    /// The same error, said as part of a larger step (`prefix: context`).
    pub(crate) fn with_context(self, prefix: impl std::fmt::Display) -> TaskError {
        let add = |context: String| format!("{prefix}: {context}");
        match self {
            TaskError::Retry { context, source } => TaskError::Retry {
                context: add(context),
                source,
            },
            TaskError::Block { context, source } => TaskError::Block {
                context: add(context),
                source,
            },
            TaskError::WorkerGone { context, source } => TaskError::WorkerGone {
                context: add(context),
                source,
            },
        }
    }

    /// One line for the tracker and the journal: the context, then the source's message.
    pub(crate) fn reason(&self) -> String {
        let (TaskError::Retry { context, source }
        | TaskError::Block { context, source }
        | TaskError::WorkerGone { context, source }) = self;
        match source {
            Some(s) => format!("{context}: {s}"),
            None => context.clone(),
        }
    }
}
