//! The one small subprocess runner of the synchronous commands (`doctor`'s probes, `demo`'s git,
//! the crontab): run a program, wait for it, read what it printed.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// A program to run, built up like `std::process::Command`.
pub(crate) struct Program {
    name: String,
    command: Command,
}

/// What a finished program printed, and whether it succeeded.
pub(crate) struct Output {
    pub(crate) success: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Why a program could not be run to its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcessError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("writing to {program}'s stdin: {source}")]
    Stdin {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting for {program}: {source}")]
    Wait {
        program: String,
        source: std::io::Error,
    },
}

impl Program {
    pub(crate) fn new(program: &str) -> Program {
        Program {
            name: program.to_string(),
            command: Command::new(program),
        }
    }

    pub(crate) fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Program {
        self.command.args(args);
        self
    }

    pub(crate) fn dir(mut self, dir: &Path) -> Program {
        self.command.current_dir(dir);
        self
    }

    pub(crate) fn env(mut self, key: &str, value: &str) -> Program {
        self.command.env(key, value);
        self
    }

    /// Runs it to its end, its stdout and stderr read (as lossy UTF-8).
    pub(crate) fn output(mut self) -> Result<Output, ProcessError> {
        let out = self
            .command
            .output()
            .map_err(|source| ProcessError::Spawn {
                program: self.name.clone(),
                source,
            })?;
        Ok(Output {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Its stdout, trimmed, when it ran and succeeded (a probe: "is it there, and what does it say").
    pub(crate) fn probe(self) -> Option<String> {
        self.output()
            .ok()
            .filter(|o| o.success)
            .map(|o| o.stdout.trim().to_string())
    }

    /// Runs it to its end with `input` on its stdin; its stdout and stderr are cwo's.
    pub(crate) fn feed(mut self, input: &[u8]) -> Result<std::process::ExitStatus, ProcessError> {
        let program = self.name;
        let mut child = self
            .command
            .stdin(Stdio::piped())
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                program: program.clone(),
                source,
            })?;
        let written = child.stdin.take().expect("piped").write_all(input);
        written.map_err(|source| ProcessError::Stdin {
            program: program.clone(),
            source,
        })?;
        child
            .wait()
            .map_err(|source| ProcessError::Wait { program, source })
    }
}

/// Where `program` is: itself when it names a path, else its first file on PATH.
pub(crate) fn on_path(program: &str) -> Option<std::path::PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| program.into());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_reads_both_streams_and_the_status() {
        let out = Program::new("sh")
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .output()
            .unwrap();
        assert!(!out.success);
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
    }

    #[test]
    fn probe_is_the_trimmed_stdout_of_a_success_only() {
        assert_eq!(
            Program::new("sh").args(["-c", "echo ' hi '"]).probe(),
            Some("hi".into())
        );
        assert_eq!(
            Program::new("sh").args(["-c", "echo x; false"]).probe(),
            None
        );
        assert_eq!(
            Program::new("/nonexistent/cwo-no-such-program").probe(),
            None
        );
    }

    #[test]
    fn feed_writes_stdin_and_a_missing_program_is_a_spawn_error() {
        let dir = tempfile::tempdir().unwrap();
        let st = Program::new("sh")
            .args(["-c", "cat > got"])
            .dir(dir.path())
            .feed(b"line\n")
            .unwrap();
        assert!(st.success());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("got")).unwrap(),
            "line\n"
        );
        let e = Program::new("/nonexistent/cwo-no-such-program")
            .feed(b"")
            .unwrap_err();
        assert!(matches!(e, ProcessError::Spawn { .. }), "{e}");
    }
}
