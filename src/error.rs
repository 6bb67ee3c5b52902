//! The one error model of the commands: a command returns `Result<ExitStatus, CommandError>`.
//!
//! `ExitStatus` is the process's exit code, named: its values are the codes `--help` lists.
//! `CommandError` keeps the error it was made from (its `source()` chain is walked when it is
//! rendered, so nothing is flattened to strings before then), a kind that decides the exit code,
//! and hints that say what to do next.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use crate::config::ConfigError;
use crate::cost::CatalogError;
use crate::journal::JournalError;
use crate::orchestrator::{OrchestratorError, TeardownError};
use crate::provider::{ProviderError, ProviderErrorKind};
use crate::tracker::TrackerError;

/// How a command ended, as the process's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: the command did what was asked.
    Success,
    /// 1: the operation failed (the message says why and what to do); `budget check`: over budget.
    Failure,
    /// 2: bad command line or settings.
    Usage,
    /// 3: `budget check` cannot determine the spend (an unknown price, or the provider's list
    /// failed).
    BudgetUnknown,
    /// 101: a bug in cwo (a task crashed inside it); the same code as a Rust panic.
    Internal,
    /// The exit code of a command cwo ran for the user (`cwo ssh WORKER -- CMD`).
    External(u8),
}

impl ExitStatus {
    /// The documented statuses, in the order `--help` lists them (`External` is per command).
    pub(crate) const DOCUMENTED: [ExitStatus; 5] = [
        ExitStatus::Success,
        ExitStatus::Failure,
        ExitStatus::Usage,
        ExitStatus::BudgetUnknown,
        ExitStatus::Internal,
    ];

    pub(crate) fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Usage => 2,
            ExitStatus::BudgetUnknown => 3,
            ExitStatus::Internal => 101,
            ExitStatus::External(code) => code,
        }
    }

    /// What the status means for any command, as `--help` says it.
    pub(crate) fn meaning(self) -> &'static str {
        match self {
            ExitStatus::Success => "success",
            ExitStatus::Failure => "the operation failed (the message says why and what to do)",
            ExitStatus::Usage => "bad command line or settings",
            ExitStatus::BudgetUnknown => {
                "`budget check` cannot determine the spend (an unknown price, or the provider's list failed)"
            }
            ExitStatus::Internal => "internal error (a bug in cwo: please report it)",
            ExitStatus::External(_) => "the exit code of the command run on the worker (`cwo ssh`)",
        }
    }

    /// The `Exit codes:` paragraph of a `--help` text: each status with its meaning there.
    pub(crate) fn help(list: &[(ExitStatus, &str)]) -> String {
        let items: Vec<String> = list
            .iter()
            .map(|(status, meaning)| format!("{} {meaning}", status.code()))
            .collect();
        format!("Exit codes: {}.", items.join("; "))
    }

    /// The `Exit codes:` paragraph of `cwo --help`.
    pub fn top_level_help() -> String {
        let list: Vec<(ExitStatus, &str)> = ExitStatus::DOCUMENTED
            .iter()
            .map(|s| (*s, s.meaning()))
            .collect();
        ExitStatus::help(&list)
    }

    /// The `Exit codes:` paragraph of `cwo budget check --help`.
    pub fn budget_check_help() -> String {
        ExitStatus::help(&[
            (
                ExitStatus::Success,
                "within budget (also when past --warn-at)",
            ),
            (ExitStatus::Failure, "over budget (deny)"),
            (ExitStatus::Usage, "usage or configuration error"),
            (
                ExitStatus::BudgetUnknown,
                "cannot determine (an unknown price, or the provider's list failed)",
            ),
            (ExitStatus::Internal, "internal error"),
        ])
    }
}

impl From<ExitStatus> for std::process::ExitCode {
    fn from(status: ExitStatus) -> std::process::ExitCode {
        std::process::ExitCode::from(status.code())
    }
}

/// Who has to act on an error, which also decides the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// Something failed that the user can fix (exit 1).
    User,
    /// Bad command line or settings (exit 2).
    Usage,
    /// A bug in cwo (exit 101): said as "internal error".
    Internal,
}

/// The error a command returns. `error` is the error itself (with its `source()` chain); the
/// first line of the rendering is its `Display`, and each source is one "Caused by" line.
#[derive(Debug, Clone)]
pub(crate) struct CommandError {
    pub(crate) kind: ErrorKind,
    pub(crate) error: Arc<dyn Error + Send + Sync>,
    pub(crate) hints: Vec<String>,
}

/// An error that is only a message.
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Error for Message {}

/// What was being done when `source` failed.
#[derive(Debug)]
struct Context {
    message: String,
    source: Arc<dyn Error + Send + Sync>,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for Context {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// A borrowed error's chain, copied link by link (for `from_error`, which cannot take the error).
#[derive(Debug)]
struct Copied {
    message: String,
    source: Option<Box<Copied>>,
}

impl Copied {
    fn of(err: &(dyn Error + 'static)) -> Copied {
        Copied {
            message: err.to_string(),
            source: err.source().map(|s| Box::new(Copied::of(s))),
        }
    }
}

impl fmt::Display for Copied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for Copied {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn Error + 'static))
    }
}

impl CommandError {
    /// An error of this kind, kept as it is (its `Display` is the first line).
    pub(crate) fn new(kind: ErrorKind, error: Arc<dyn Error + Send + Sync>) -> CommandError {
        CommandError {
            kind,
            error,
            hints: vec![],
        }
    }

    /// Something failed that the user can fix.
    pub(crate) fn user(message: impl Into<String>) -> CommandError {
        CommandError::new(ErrorKind::User, Arc::new(Message(message.into())))
    }

    /// A bad command line or bad settings.
    pub(crate) fn usage(message: impl Into<String>) -> CommandError {
        CommandError::new(ErrorKind::Usage, Arc::new(Message(message.into())))
    }

    /// `context` failed because of `err`, which is kept (with its sources) as the cause.
    pub(crate) fn with_source(
        context: impl Into<String>,
        err: impl Error + Send + Sync + 'static,
    ) -> CommandError {
        CommandError::new(
            ErrorKind::User,
            Arc::new(Context {
                message: context.into(),
                source: Arc::new(err),
            }),
        )
    }

    /// Like `with_source` for a borrowed error: its chain is copied. Prefer `with_source`.
    pub(crate) fn from_error(
        context: impl Into<String>,
        err: &(dyn Error + 'static),
    ) -> CommandError {
        CommandError::with_source(context, Copied::of(err))
    }

    /// The same error, of another kind.
    pub(crate) fn kind(mut self, kind: ErrorKind) -> CommandError {
        self.kind = kind;
        self
    }

    /// The same error, said as part of a larger step: `context` is the first line, and this
    /// error (with its sources) the first cause; the kind and the hints stay.
    pub(crate) fn context(mut self, context: impl Into<String>) -> CommandError {
        self.error = Arc::new(Context {
            message: context.into(),
            source: self.error,
        });
        self
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> CommandError {
        self.hints.push(hint.into());
        self
    }

    /// The first error of type `E` in the chain, if any.
    #[cfg(test)]
    pub(crate) fn find<E: Error + 'static>(&self) -> Option<&E> {
        let mut next: Option<&(dyn Error + 'static)> = Some(&*self.error);
        while let Some(e) = next {
            if let Some(found) = e.downcast_ref::<E>() {
                return Some(found);
            }
            next = e.source();
        }
        None
    }

    pub(crate) fn exit_status(&self) -> ExitStatus {
        match self.kind {
            ErrorKind::User => ExitStatus::Failure,
            ErrorKind::Usage => ExitStatus::Usage,
            ErrorKind::Internal => ExitStatus::Internal,
        }
    }

    /// What stderr shows: the error, each cause on its own numbered line, then the hints.
    pub(crate) fn render(&self) -> String {
        let headline = match self.kind {
            ErrorKind::Internal => format!("internal error: {}", self.error),
            _ => self.error.to_string(),
        };
        let mut s = crate::util::error::render(&headline, self.error.source(), &self.hints);
        if self.kind == ErrorKind::Internal {
            s.push_str("hint: this is a bug in cwo; please report it with the output of the same command run with -v\n");
        }
        s
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl From<tokio::task::JoinError> for CommandError {
    fn from(e: tokio::task::JoinError) -> CommandError {
        CommandError::with_source("a task crashed inside cwo", e).kind(ErrorKind::Internal)
    }
}

impl From<CatalogError> for CommandError {
    fn from(e: CatalogError) -> CommandError {
        let path = e.path.display().to_string();
        CommandError::new(ErrorKind::Usage, Arc::new(e)).hint(format!(
            "fix {path}, or move it away to use the prices built into cwo"
        ))
    }
}

impl From<ConfigError> for CommandError {
    fn from(e: ConfigError) -> CommandError {
        CommandError::usage(format!("invalid settings: {}: {}", e.location, e.message)).hint(e.hint)
    }
}

impl From<JournalError> for CommandError {
    fn from(e: JournalError) -> CommandError {
        match &e {
            JournalError::Locked { pid, .. } => {
                let pid = pid.clone();
                CommandError::new(ErrorKind::User, Arc::new(e)).hint(format!(
                    "wait for it to finish, or stop it with `kill -TERM {pid}` (it tears its worker down before exiting)"
                ))
            }
            _ => CommandError::with_source("the journal could not be used", e)
                .hint("check that the state dir is writable (`cwo config show` prints state_dir)"),
        }
    }
}

impl From<TrackerError> for CommandError {
    fn from(e: TrackerError) -> CommandError {
        match &e {
            TrackerError::NotFound(_) => CommandError::new(ErrorKind::User, Arc::new(e))
                .hint("`cwo task list` shows the balls"),
            TrackerError::Ambiguous(..) => CommandError::new(ErrorKind::User, Arc::new(e))
                .hint("give more characters of the id"),
            TrackerError::Invalid(_) => CommandError::new(ErrorKind::Usage, Arc::new(e)),
            TrackerError::LockTimeout { path, .. } => {
                let hint = format!(
                    "`fuser {path}` shows which process holds it; run the command again once it is done"
                );
                CommandError::new(ErrorKind::User, Arc::new(e)).hint(hint)
            }
            TrackerError::Io { .. } => {
                CommandError::with_source("the juggle tracker could not be read or written", e)
            }
            TrackerError::Taken { .. } => CommandError::new(ErrorKind::User, Arc::new(e)),
            TrackerError::Remote(inner) => {
                let hint = inner
                    .downcast_ref::<crate::github::GithubError>()
                    .and_then(|g| g.hint());
                let err = CommandError::with_source("the tracker could not be read or written", e);
                match hint {
                    Some(h) => err.hint(h),
                    None => err,
                }
            }
        }
    }
}

impl From<crate::github::GithubError> for CommandError {
    fn from(e: crate::github::GithubError) -> CommandError {
        let hint = e.hint();
        let err = CommandError::new(ErrorKind::User, Arc::new(e));
        match hint {
            Some(h) => err.hint(h),
            None => err,
        }
    }
}

/// What to do about a provider error, by its kind (the message says what and where).
fn provider_hints(e: &ProviderError) -> Vec<String> {
    let hint = match e.kind() {
        ProviderErrorKind::Permission => format!(
            "the account cwo runs as needs {} on gcp.project; `cwo doctor` checks the access",
            crate::provider::gcp::ROLES
        ),
        ProviderErrorKind::Quota => "ask for more on the console's quotas page (https://console.cloud.google.com/iam-admin/quotas, for gcp.project), or use a smaller gcp.machine_type".into(),
        ProviderErrorKind::Capacity => "add other zones to gcp.zones (they are tried in order) or try again later; with provider = \"ssh\", add hosts to ssh.hosts".into(),
        ProviderErrorKind::InvalidSpec => "fix the setting the message names; `cwo config show` prints every setting and where it comes from".into(),
        ProviderErrorKind::NotFound | ProviderErrorKind::Transient | ProviderErrorKind::Other => {
            return vec![];
        }
    };
    vec![hint]
}

impl From<ProviderError> for CommandError {
    fn from(e: ProviderError) -> CommandError {
        let hints = provider_hints(&e);
        CommandError {
            kind: ErrorKind::User,
            error: Arc::new(e),
            hints,
        }
    }
}

impl From<TeardownError> for CommandError {
    fn from(e: TeardownError) -> CommandError {
        match e {
            TeardownError::Provider(e) => e.into(),
            TeardownError::Journal(e) => e.into(),
        }
    }
}

/// The provider error that explains an orchestrator error, if one does.
fn provider_cause(e: &OrchestratorError) -> Option<&ProviderError> {
    match e {
        OrchestratorError::BringUp { source, .. }
        | OrchestratorError::Image { source, .. }
        | OrchestratorError::Lookup { source, .. }
        | OrchestratorError::Delete { source, .. } => Some(source),
        OrchestratorError::Abandoned { problem, .. } => provider_cause(problem),
        _ => None,
    }
}

/// An orchestrator error kept whole (so a cause can be found by type), whose causes are the
/// ones it explains itself by (`OrchestratorError::cause`: an abandoned bring-up by its problem).
#[derive(Debug)]
struct Orchestration(OrchestratorError);

impl fmt::Display for Orchestration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error for Orchestration {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.cause()
    }
}

impl From<OrchestratorError> for CommandError {
    fn from(e: OrchestratorError) -> CommandError {
        use OrchestratorError as E;
        match e {
            E::Journal(e) => e.into(),
            E::Tracker(e) => e.into(),
            e => {
                let kind = if e.is_usage() {
                    ErrorKind::Usage
                } else if e.is_internal() {
                    ErrorKind::Internal
                } else {
                    ErrorKind::User
                };
                // The provider's hint first: it is about the first error said.
                let mut hints = provider_cause(&e).map(provider_hints).unwrap_or_default();
                hints.extend(e.hints());
                let mut err = CommandError::new(kind, Arc::new(Orchestration(e)));
                err.hints = hints;
                err
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn render_walks_the_kept_source_chain_and_finds_a_cause_by_type() {
        let err =
            CommandError::with_source("could not do it", Outer(std::io::Error::other("disk full")))
                .hint("free some space");
        assert_eq!(
            err.render(),
            "error: could not do it\nCaused by:\n  1: outer\n  2: disk full\nhint: free some space\n"
        );
        assert!(
            err.find::<Outer>().is_some(),
            "the source is kept, not flattened"
        );
        assert_eq!(err.exit_status(), ExitStatus::Failure);
        // A borrowed error renders the same.
        let outer = Outer(std::io::Error::other("disk full"));
        let copied = CommandError::from_error("could not do it", &outer).hint("free some space");
        assert_eq!(copied.render(), err.render());
    }

    /// Each kind of provider error gets its hint where it is converted, and a command's context
    /// keeps both the hint and the provider error as the cause.
    #[test]
    fn a_provider_error_is_converted_with_the_hint_of_its_kind() {
        let hints = |e: ProviderError| CommandError::from(e).hints.join("\n");
        assert!(
            hints(ProviderError::Permission("listing cwo's VMs".into()))
                .contains("roles/compute.instanceAdmin.v1"),
        );
        assert!(hints(ProviderError::Quota("CPUS".into())).contains("quotas page"));
        assert!(hints(ProviderError::Capacity("us-central1-a".into())).contains("gcp.zones"));
        assert!(hints(ProviderError::InvalidSpec("gcp.zones is empty".into())).contains("setting"));
        assert_eq!(hints(ProviderError::NotFound("VM w".into())), "");
        let err = CommandError::from(ProviderError::Quota("CPUS".into()))
            .context("cannot look up worker w");
        let text = err.render();
        assert!(
            text.starts_with(
                "error: cannot look up worker w\nCaused by:\n  1: quota exceeded: CPUS\nhint: ask for more"
            ),
            "{text}"
        );
        assert!(err.find::<ProviderError>().is_some());
        assert_eq!(err.exit_status(), ExitStatus::Failure);
        // Through the orchestrator: the provider's hint first, then the lifecycle's.
        let delete = OrchestratorError::Delete {
            name: "w".into(),
            deadline: std::time::Duration::from_secs(3),
            source: ProviderError::Permission("deleting VM w".into()),
            manual: Some("gcloud compute instances delete w".into()),
        };
        let hints = CommandError::from(delete).hints;
        assert!(
            hints[0].contains("roles/compute.instanceAdmin.v1"),
            "{hints:?}"
        );
        assert!(
            hints.contains(&"or delete it yourself: gcloud compute instances delete w".to_string()),
            "{hints:?}"
        );
    }

    #[tokio::test]
    async fn a_crashed_task_is_an_internal_error_with_its_own_exit_code() {
        let join = tokio::spawn(async { panic!("boom") }).await.unwrap_err();
        let err = CommandError::from(join);
        assert_eq!(err.exit_status(), ExitStatus::Internal);
        assert_eq!(err.exit_status().code(), 101);
        let text = err.render();
        assert!(
            text.starts_with(
                "error: internal error: a task crashed inside cwo\nCaused by:\n  1: task "
            ),
            "{text}"
        );
    }

    #[test]
    fn exit_codes_are_distinct_and_every_documented_one_is_in_the_help() {
        let codes: Vec<u8> = ExitStatus::DOCUMENTED.iter().map(|s| s.code()).collect();
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), codes.len(), "{codes:?}");
        let help = ExitStatus::top_level_help();
        for s in ExitStatus::DOCUMENTED {
            assert!(
                help.contains(&format!("{} {}", s.code(), s.meaning())),
                "{help}"
            );
        }
    }
}
