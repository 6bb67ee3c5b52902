//! Commands as local processes: each in its own process group, so a timeout or a cancel kills the
//! whole tree, with stdout and stderr streamed line by line.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

use super::{ExecRequest, ExecStatus, LineSink, Stream, Transport, TransportError};

/// How long a process group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long output is still read after the main process exited (children holding the pipes).
const DRAIN_GRACE: Duration = Duration::from_secs(2);

pub(crate) struct LocalTransport {
    worker: String,
}

impl LocalTransport {
    pub(crate) fn new(worker: impl Into<String>) -> LocalTransport {
        LocalTransport {
            worker: worker.into(),
        }
    }

    fn io(&self, what: String, source: std::io::Error) -> TransportError {
        TransportError::Io {
            what,
            worker: self.worker.clone(),
            source,
        }
    }
}

struct LineReader<R> {
    inner: BufReader<R>,
    buf: Vec<u8>,
    done: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(r: R) -> Self {
        LineReader {
            inner: BufReader::new(r),
            buf: Vec::new(),
            done: false,
        }
    }

    /// Reads one line with its newline (cancel-safe: partial bytes stay in `buf`). None at EOF.
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.inner.read_until(b'\n', &mut self.buf).await {
                Ok(0) | Err(_) => {
                    self.done = true;
                    if self.buf.is_empty() {
                        return None;
                    }
                }
                Ok(_) if !self.buf.ends_with(b"\n") && !self.done => continue,
                Ok(_) => {}
            }
            return Some(std::mem::take(&mut self.buf));
        }
    }
}

/// The variables of the controller's environment that reach a process on a local worker: what
/// a login on a worker would have (the user's basics, locale, terminal), nothing else. Cloud
/// credentials, tokens (`GH_TOKEN`, `AWS_*`, …) and the sources of `env:` secrets stay with the
/// controller, as they would on a VM; the agent gets `agent.env` on top of these, and a variable
/// it needs from this environment is passed explicitly (`agent.env.NAME = "env:NAME"`).
pub(crate) const WORKER_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR",
];

/// Prefixes of further variables a login has: locale (`LC_*`) and the XDG base directories
/// (`XDG_*`, where tools such as opencode keep their configuration and sign-in).
pub(crate) const WORKER_ENV_PREFIXES: &[&str] = &["LC_", "XDG_"];

fn worker_env() -> impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)> {
    std::env::vars_os().filter(|(k, _)| {
        k.to_str().is_some_and(|k| {
            WORKER_ENV.contains(&k) || WORKER_ENV_PREFIXES.iter().any(|p| k.starts_with(p))
        })
    })
}

fn kill_group(pgid: Option<u32>, signal: i32) {
    if let Some(pid) = pgid {
        // SAFETY: killpg only sends a signal; the group was created for this child (process_group(0)).
        unsafe {
            libc::killpg(pid as libc::pid_t, signal);
        }
    }
}

#[async_trait]
impl Transport for LocalTransport {
    fn worker(&self) -> &str {
        &self.worker
    }

    async fn exec(
        &self,
        req: ExecRequest,
        sink: LineSink<'_>,
    ) -> Result<ExecStatus, TransportError> {
        let program = req.argv.first().cloned().unwrap_or_default();
        tracing::debug!(worker = %self.worker, argv = ?req.argv, cwd = ?req.cwd, "exec");
        let mut cmd = Command::new(&program);
        cmd.args(&req.argv[1..])
            .env_clear()
            .envs(worker_env())
            .envs(req.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            // A caller that drops this future (a select! that chose another branch) must not
            // leave the process behind.
            .kill_on_drop(true);
        if let Some(cwd) = &req.cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd.spawn().map_err(|source| TransportError::Spawn {
            program: program.clone(),
            worker: self.worker.clone(),
            source,
        })?;
        let pgid = child.id();
        let mut out = LineReader::new(child.stdout.take().expect("piped"));
        let mut err = LineReader::new(child.stderr.take().expect("piped"));
        let deadline = req.timeout.map(|t| Instant::now() + t);
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let cancel = req.cancel.clone().unwrap_or_default();
        let mut exited: Option<std::process::ExitStatus> = None;
        let mut drain_until = far;
        let mut verdict: Option<ExecStatus> = None;

        while verdict.is_none() && !(exited.is_some() && out.done && err.done) {
            tokio::select! {
                line = out.next(), if !out.done => if let Some(l) = line { sink(Stream::Stdout, &l) },
                line = err.next(), if !err.done => if let Some(l) = line { sink(Stream::Stderr, &l) },
                st = child.wait(), if exited.is_none() => {
                    let st = st.map_err(|e| self.io(format!("waiting for `{program}`"), e))?;
                    exited = Some(st);
                    drain_until = Instant::now() + DRAIN_GRACE;
                }
                _ = tokio::time::sleep_until(drain_until), if exited.is_some() => break,
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() && exited.is_none() => {
                    verdict = Some(ExecStatus::TimedOut);
                }
                _ = cancel.cancelled(), if exited.is_none() => {
                    verdict = Some(ExecStatus::Cancelled);
                }
            }
        }
        if let Some(v) = verdict {
            kill_group(pgid, libc::SIGTERM);
            if tokio::time::timeout(KILL_GRACE, child.wait())
                .await
                .is_err()
            {
                kill_group(pgid, libc::SIGKILL);
                let _ = child.wait().await;
            }
            return Ok(v);
        }
        let st = exited.expect("loop ends with an exit status");
        use std::os::unix::process::ExitStatusExt;
        Ok(match (st.code(), st.signal()) {
            (Some(c), _) => ExecStatus::Exited(c),
            (None, Some(s)) => ExecStatus::Signaled(s),
            _ => ExecStatus::Exited(-1),
        })
    }

    async fn interactive(
        &self,
        command: Option<&[String]>,
        cwd: &str,
    ) -> Result<i32, TransportError> {
        let shell = std::env::var("SHELL").unwrap_or_else(|_| "sh".into());
        let argv: Vec<String> = match command {
            Some(c) if !c.is_empty() => c.to_vec(),
            _ => vec![shell],
        };
        let status = Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(cwd)
            .status()
            .await
            .map_err(|source| TransportError::Spawn {
                program: argv[0].clone(),
                worker: self.worker.clone(),
                source,
            })?;
        use std::os::unix::process::ExitStatusExt;
        Ok(status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
    }

    async fn upload(&self, local: &Path, remote: &str) -> Result<(), TransportError> {
        if let Some(parent) = Path::new(remote).parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| self.io(format!("creating {}", parent.display()), e))?;
        }
        tokio::fs::copy(local, remote)
            .await
            .map_err(|e| self.io(format!("copying {} to {remote}", local.display()), e))?;
        Ok(())
    }

    async fn download(&self, remote: &str, local: &Path) -> Result<(), TransportError> {
        tokio::fs::copy(remote, local)
            .await
            .map_err(|e| self.io(format!("copying {remote} to {}", local.display()), e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn streams_both_outputs_env_and_status() {
        rt().block_on(async {
            let t = LocalTransport::new("w");
            let mut req = ExecRequest::new([
                "sh",
                "-c",
                "echo out; echo err >&2; printf 'no newline'; exit 3",
            ]);
            req.env.push(("X".into(), "1".into()));
            let out = t.capture(req).await.unwrap();
            assert_eq!(out.status, ExecStatus::Exited(3));
            assert_eq!(out.stdout, "out\nno newline\n");
            assert_eq!(out.stderr, "err\n");
            let out = t
                .capture(ExecRequest {
                    env: vec![("X".into(), "v a".into())],
                    ..ExecRequest::new(["sh", "-c", "echo \"$X\""])
                })
                .await
                .unwrap();
            assert_eq!(out.stdout, "v a\n");
        });
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        rt().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let marker = dir.path().join("survived");
            let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
            let t = LocalTransport::new("w");
            let mut req = ExecRequest::new(["sh", "-c", script.as_str()]);
            req.timeout = Some(Duration::from_millis(300));
            let started = std::time::Instant::now();
            let st = t.capture(req).await.unwrap().status;
            assert_eq!(st, ExecStatus::TimedOut);
            assert!(started.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(2500)).await;
            assert!(
                !marker.exists(),
                "the background child was killed with its group"
            );
        });
    }
}
