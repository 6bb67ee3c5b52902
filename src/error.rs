//! The one error type commands return: a kind that decides the exit code, a message, the causes,
//! and hints that say what to do next.

use std::fmt::Write;

use crate::config::ConfigError;
use crate::journal::JournalError;
use crate::tracker::TrackerError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Something failed that the user can fix (exit 1).
    User,
    /// Bad command line or settings (exit 2).
    Usage,
}

#[derive(Debug)]
pub struct CliError {
    pub kind: Kind,
    pub message: String,
    pub causes: Vec<String>,
    pub hints: Vec<String>,
}

impl CliError {
    pub fn user(message: impl Into<String>) -> CliError {
        CliError {
            kind: Kind::User,
            message: message.into(),
            causes: vec![],
            hints: vec![],
        }
    }
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            kind: Kind::Usage,
            ..CliError::user(message)
        }
    }
    pub fn hint(mut self, hint: impl Into<String>) -> CliError {
        self.hints.push(hint.into());
        self
    }
    /// Wraps any error: its message and its source chain.
    pub fn from_error(
        context: impl Into<String>,
        err: &(dyn std::error::Error + 'static),
    ) -> CliError {
        let mut causes = vec![err.to_string()];
        let mut src = err.source();
        while let Some(s) = src {
            causes.push(s.to_string());
            src = s.source();
        }
        CliError {
            causes,
            ..CliError::user(context)
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self.kind {
            Kind::User => 1,
            Kind::Usage => 2,
        }
    }

    pub fn render(&self) -> String {
        let mut s = format!("error: {}\n", self.message);
        for (i, c) in self.causes.iter().enumerate() {
            if i == 0 {
                s.push_str("Caused by:\n");
            }
            let _ = writeln!(s, "  {}: {c}", i + 1);
        }
        for h in &self.hints {
            let _ = writeln!(s, "hint: {h}");
        }
        s
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> CliError {
        CliError::usage(format!("invalid settings: {}: {}", e.location, e.message)).hint(e.hint)
    }
}

impl From<JournalError> for CliError {
    fn from(e: JournalError) -> CliError {
        match &e {
            JournalError::Locked { pid, .. } => CliError::user(e.to_string()).hint(format!(
                "wait for it to finish, or stop it with `kill -TERM {pid}` (it tears its worker down before exiting)"
            )),
            _ => CliError::from_error("the journal could not be used", &e)
                .hint("check that the state dir is writable (`cwo config show` prints state_dir)"),
        }
    }
}

impl From<TrackerError> for CliError {
    fn from(e: TrackerError) -> CliError {
        match &e {
            TrackerError::NotFound(_) => {
                CliError::user(e.to_string()).hint("`cwo task list` shows the balls")
            }
            TrackerError::Ambiguous(..) => {
                CliError::user(e.to_string()).hint("give more characters of the id")
            }
            TrackerError::Invalid(_) => CliError::usage(e.to_string()),
            TrackerError::LockTimeout { path, .. } => CliError::user(e.to_string()).hint(format!(
                "`fuser {path}` shows which process holds it; run the command again once it is done"
            )),
            TrackerError::Io { .. } => {
                CliError::from_error("the juggle tracker could not be read or written", &e)
            }
        }
    }
}

impl From<crate::orchestrator::OrchestratorError> for CliError {
    fn from(e: crate::orchestrator::OrchestratorError) -> CliError {
        use crate::orchestrator::OrchestratorError as E;
        match e {
            E::Journal(e) => e.into(),
            E::Tracker(e) => e.into(),
            e => {
                let mut err = match e.cause() {
                    Some(cause) => CliError::from_error(e.to_string(), cause),
                    None => CliError::user(e.to_string()),
                };
                if e.is_usage() {
                    err.kind = Kind::Usage;
                }
                err.hints = e.hints();
                err
            }
        }
    }
}
