//! Running commands on a worker. Providers hand out a [`Target`]; a transport runs things there.

pub(crate) mod local;
pub mod ssh;

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One command on the worker. `argv` is never joined into a shell string by the caller.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    /// Environment for this process only.
    pub env: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    pub cancel: Option<CancellationToken>,
}

impl ExecRequest {
    pub fn new<I, S>(argv: I) -> ExecRequest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }
    pub(crate) fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecStatus {
    Exited(i32),
    Signaled(i32),
    TimedOut,
    Cancelled,
}

impl ExecStatus {
    pub(crate) fn success(self) -> bool {
        self == ExecStatus::Exited(0)
    }
}

impl std::fmt::Display for ExecStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecStatus::Exited(c) => write!(f, "exit {c}"),
            ExecStatus::Signaled(s) => write!(f, "killed by signal {s}"),
            ExecStatus::TimedOut => f.write_str("timed out"),
            ExecStatus::Cancelled => f.write_str("cancelled"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot start `{program}` on {worker}: {source}")]
    Spawn {
        program: String,
        worker: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} on {worker}: {source}")]
    Io {
        what: String,
        worker: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` on {worker} failed ({status}): {stderr}")]
    Failed {
        command: String,
        worker: String,
        status: ExecStatus,
        stderr: String,
    },
}

/// A command as error messages name it: a script run as `sh -c SCRIPT NAME …` by its name, and
/// long arguments (a prompt, a path) shortened, so a failure reads as one line, not a script.
pub(crate) fn describe(argv: &[String]) -> String {
    const ARG: usize = 60;
    if argv.len() >= 4 && argv[0] == "sh" && argv[1] == "-c" {
        return format!("sh -c <{} script>", argv[3]);
    }
    argv.iter()
        .map(|a| {
            if a.chars().count() > ARG {
                format!("{}…", a.chars().take(ARG).collect::<String>())
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl TransportError {
    /// The command's fate is unknown because the connection failed (not because it ran and
    /// failed): worth retrying once the worker is reachable again.
    pub(crate) fn is_connection(&self) -> bool {
        matches!(self, TransportError::Io { .. })
    }
}

/// Why the pinned host keys could not be read or written (the store's own error, kept).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct KnownHostsError {
    pub what: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Where host keys are pinned (trust on first use): the first authenticated connection records
/// the key the host presented under a name (`Target::Ssh::pin_as`), and every later connection
/// is held to it. The journal implements it; the transport only asks.
pub trait KnownHosts: Send + Sync {
    /// The key pinned under `pin_as` (an OpenSSH public key line), if any.
    fn pinned(&self, pin_as: &str) -> Result<Option<String>, KnownHostsError>;
    /// Pins `key` under `pin_as` (reached at `address`); an existing pin is never replaced.
    fn pin(&self, pin_as: &str, address: &str, key: &str) -> Result<(), KnownHostsError>;
}

/// Output of a command whose lines were collected rather than streamed.
#[derive(Debug, Clone)]
pub struct Captured {
    pub status: ExecStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Receives output one line at a time, as raw bytes with the line's `\n` when it had one (the
/// last piece of a stream may have none), so a consumer can count bytes exactly.
pub(crate) type LineSink<'a> = &'a mut (dyn FnMut(Stream, &[u8]) + Send);

#[async_trait]
pub trait Transport: Send + Sync {
    /// The worker's name, for messages.
    fn worker(&self) -> &str;
    /// Runs a command, handing every output line to `sink` as it arrives.
    async fn exec(
        &self,
        req: ExecRequest,
        sink: LineSink<'_>,
    ) -> Result<ExecStatus, TransportError>;
    /// Copies a local file to a path on the worker.
    async fn upload(&self, local: &Path, remote: &str) -> Result<(), TransportError>;
    /// Copies a file from the worker to a local path.
    async fn download(&self, remote: &str, local: &Path) -> Result<(), TransportError>;

    /// A terminal session for a person (`cwo ssh`): a shell, or `command` with a terminal.
    /// Returns the exit code.
    async fn interactive(
        &self,
        command: Option<&[String]>,
        cwd: &str,
    ) -> Result<i32, TransportError>;

    /// Runs a command and collects its output.
    async fn capture(&self, req: ExecRequest) -> Result<Captured, TransportError> {
        let mut stdout = String::new();
        let mut stderr = String::new();
        let status = self
            .exec(req, &mut |s, line| {
                let buf = if s == Stream::Stdout {
                    &mut stdout
                } else {
                    &mut stderr
                };
                buf.push_str(&String::from_utf8_lossy(line));
                if !line.ends_with(b"\n") {
                    buf.push('\n');
                }
            })
            .await?;
        Ok(Captured {
            status,
            stdout,
            stderr,
        })
    }

    /// Runs a command that must succeed; returns its stdout.
    async fn check(&self, req: ExecRequest) -> Result<String, TransportError> {
        let command = describe(&req.argv);
        let out = self.capture(req).await?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(TransportError::Failed {
                command,
                worker: self.worker().to_string(),
                status: out.status,
                stderr: out.stderr.trim().to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn a_failed_script_is_named_not_quoted() {
        let argv: Vec<String> = [
            "sh",
            "-c",
            "d=$1\nlong script…",
            "cwo-launch",
            "/w/a",
            "the prompt",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(describe(&argv), "sh -c <cwo-launch script>");
        let long = "x".repeat(100);
        let argv = vec!["git".to_string(), "clone".to_string(), long];
        let d = describe(&argv);
        assert!(
            d.starts_with("git clone xxx") && d.ends_with('…') && d.len() < 80,
            "{d}"
        );
    }
}
