//! SSH on russh: one connection per worker carrying many channels, a pinned host key, a
//! per-worker key, and nothing from the user's `~/.ssh` (russh reads no config, agent or
//! known_hosts unless asked, and cwo never asks).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{ExecRequest, ExecStatus, KnownHosts, LineSink, Stream, Transport, TransportError};

/// Where and how to reach a host.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key_path: PathBuf,
    /// The host key the provider expects (OpenSSH public key line); `None` = pin on first use.
    pub host_key: Option<String>,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
}

use crate::util::shell::shell_quote;

pub(crate) fn command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// An environment variable name a shell cannot export.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a valid environment variable name")]
pub(crate) struct BadEnvName(pub String);

/// Why a worker key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("generating a key: {0}")]
    Generate(#[source] russh::keys::ssh_key::Error),
    #[error("encoding the key: {0}")]
    Encode(#[source] russh::keys::ssh_key::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A script that exports `env` when evaluated: sent on stdin, so values never appear in argv,
/// in the environment of the SSH session, or on the worker's disk.
fn env_script(env: &[(String, String)]) -> Result<String, BadEnvName> {
    let mut script = String::new();
    for (k, v) in env {
        let valid = !k.is_empty()
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(BadEnvName(k.clone()));
        }
        script.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    Ok(script)
}

/// Generates a fresh ed25519 key pair for a worker: the private key in OpenSSH format, 0600, at
/// `path`; returns the public key line.
pub(crate) fn generate_key(path: &Path, comment: &str) -> Result<String, KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| KeyError::Io { path, source }
    };
    let mut key = PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
        .map_err(KeyError::Generate)?;
    key.set_comment(comment);
    let pem = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(KeyError::Encode)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    std::io::Write::write_all(&mut f, pem.as_bytes()).map_err(io(path))?;
    key.public_key().to_openssh().map_err(KeyError::Encode)
}

pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// What the handshake saw of the server's key.
#[derive(Default)]
struct Seen {
    presented: Option<PublicKey>,
    rejected: bool,
}

struct Client {
    expected: Option<PublicKey>,
    seen: Arc<Mutex<Seen>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.presented = Some(key.clone());
        let ok = self
            .expected
            .as_ref()
            .is_none_or(|e| e.key_data() == key.key_data());
        seen.rejected = !ok;
        Ok(ok)
    }
}

pub struct SshTransport {
    worker: String,
    /// What the host key is pinned under: the worker for a VM cwo created, the address for a
    /// host the user owns.
    pin_as: String,
    target: SshTarget,
    /// Where the host key is pinned; `None` in tests of the bare transport.
    known_hosts: Option<Arc<dyn KnownHosts>>,
    conn: tokio::sync::Mutex<Option<Arc<Handle<Client>>>>,
}

impl SshTransport {
    pub fn new(
        worker: impl Into<String>,
        pin_as: impl Into<String>,
        target: SshTarget,
        known_hosts: Option<Arc<dyn KnownHosts>>,
    ) -> SshTransport {
        SshTransport {
            worker: worker.into(),
            pin_as: pin_as.into(),
            target,
            known_hosts,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    fn err(&self, what: impl Into<String>, detail: impl std::fmt::Display) -> TransportError {
        TransportError::Io {
            what: what.into(),
            worker: self.worker.clone(),
            source: std::io::Error::other(detail.to_string()),
        }
    }

    fn addr(&self) -> String {
        format!(
            "{}@{}:{}",
            self.target.user, self.target.host, self.target.port
        )
    }

    /// The pinned key: the provider's, or the one recorded by the first authenticated connection.
    fn expected_key(&self) -> Result<Option<PublicKey>, TransportError> {
        let line = match &self.target.host_key {
            Some(k) => Some(k.clone()),
            None => match &self.known_hosts {
                Some(k) => k
                    .pinned(&self.pin_as)
                    .map_err(|e| self.err("reading the pinned host key", e))?,
                None => None,
            },
        };
        line.map(|l| {
            PublicKey::from_openssh(l.trim())
                .map_err(|e| self.err("parsing the pinned host key", e))
        })
        .transpose()
    }

    /// Waits for the host to answer with an SSH banner, then authenticates, retrying with
    /// jittered backoff until `connect_timeout`. A host key mismatch is final.
    async fn connect(&self) -> Result<Arc<Handle<Client>>, TransportError> {
        let deadline = Instant::now() + self.target.connect_timeout;
        let mut backoff = Duration::from_millis(200);
        let key = PrivateKey::read_openssh_file(&self.target.key_path).map_err(|e| {
            self.err(
                format!("reading the SSH key {}", self.target.key_path.display()),
                e,
            )
        })?;
        let key = Arc::new(key);
        let expected = self.expected_key()?;
        loop {
            let last_error = match self.try_connect(key.clone(), expected.clone()).await {
                Ok(handle) => return Ok(handle),
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Retry(e)) => e,
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(self.err(
                    format!(
                        "connecting to {} (gave up after {})",
                        self.addr(),
                        humantime::format_duration(self.target.connect_timeout)
                    ),
                    last_error,
                ));
            }
            let jitter =
                Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
            tokio::time::sleep((backoff + jitter).min(deadline - now)).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn try_connect(
        &self,
        key: Arc<PrivateKey>,
        expected: Option<PublicKey>,
    ) -> Result<Arc<Handle<Client>>, Attempt> {
        let addr = (self.target.host.as_str(), self.target.port);
        // Readiness: a TCP connection that answers with the SSH banner.
        let probe = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        match tokio::time::timeout(Duration::from_secs(10), probe).await {
            Ok(Ok(b)) if &b == b"SSH-" => {}
            Ok(Ok(_)) => {
                return Err(Attempt::Retry(format!(
                    "{} does not speak SSH",
                    self.addr()
                )));
            }
            Ok(Err(e)) => return Err(Attempt::Retry(e.to_string())),
            Err(_) => return Err(Attempt::Retry("no SSH banner within 10s".into())),
        }
        let config = Arc::new(client::Config {
            keepalive_interval: Some(self.target.keepalive),
            keepalive_max: 3,
            nodelay: true,
            inactivity_timeout: None,
            ..Default::default()
        });
        let seen = Arc::new(Mutex::new(Seen::default()));
        let handler = Client {
            expected: expected.clone(),
            seen: seen.clone(),
        };
        let connected = tokio::time::timeout(
            Duration::from_secs(20),
            client::connect(config, addr, handler),
        )
        .await;
        let mut handle = match connected {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                if seen.rejected {
                    let got = seen.presented.as_ref().map(fingerprint).unwrap_or_default();
                    let want = expected.as_ref().map(fingerprint).unwrap_or_default();
                    return Err(Attempt::Final(self.err(
                        format!("host key check for {}", self.addr()),
                        format!(
                            "HOST KEY MISMATCH: expected {want}, the host presented {got}; refusing to connect (the host was replaced, or someone is in between)"
                        ),
                    )));
                }
                return Err(Attempt::Retry(e.to_string()));
            }
            Err(_) => return Err(Attempt::Retry("SSH handshake timed out".into())),
        };
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten();
        let auth = handle
            .authenticate_publickey(
                self.target.user.clone(),
                PrivateKeyWithHashAlg::new(key, hash),
            )
            .await
            .map_err(|e| Attempt::Retry(e.to_string()))?;
        if !auth.success() {
            // Keys may still be on their way to a fresh VM; retried until the deadline.
            return Err(Attempt::Retry(format!(
                "the host refused key {} for user {}",
                self.target.key_path.display(),
                self.target.user
            )));
        }
        // First authenticated connection: pin what was presented.
        if expected.is_none()
            && let (Some(j), Some(k)) = (
                &self.known_hosts,
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .presented
                    .clone(),
            )
        {
            let line = k
                .to_openssh()
                .map_err(|e| Attempt::Final(self.err("encoding the host key", e)))?;
            j.pin(&self.pin_as, &self.addr(), &line)
                .map_err(|e| Attempt::Final(self.err("pinning the host key", e)))?;
        }
        Ok(Arc::new(handle))
    }

    /// The live connection, reconnecting if it dropped.
    async fn session(&self) -> Result<Arc<Handle<Client>>, TransportError> {
        let mut guard = self.conn.lock().await;
        if let Some(h) = guard.as_ref()
            && !h.is_closed()
        {
            return Ok(h.clone());
        }
        let h = self.connect().await?;
        *guard = Some(h.clone());
        Ok(h)
    }

    async fn drop_session(&self) {
        *self.conn.lock().await = None;
    }

    /// Opens a channel and starts `command`; one retry on a fresh connection if the old one died.
    async fn open_exec(
        &self,
        command: &str,
    ) -> Result<russh::Channel<client::Msg>, TransportError> {
        for attempt in 0..2 {
            let h = self.session().await?;
            match h.channel_open_session().await {
                Ok(ch) => {
                    ch.exec(true, command)
                        .await
                        .map_err(|e| self.err(format!("starting `{command}`"), e))?;
                    return Ok(ch);
                }
                Err(e) if attempt == 0 => {
                    tracing::debug!(worker = %self.worker, error = %e, "channel open failed; reconnecting");
                    self.drop_session().await;
                }
                Err(e) => return Err(self.err("opening an SSH channel", e)),
            }
        }
        unreachable!("the loop returns")
    }

    pub async fn close(&self) {
        if let Some(h) = self.conn.lock().await.take() {
            let _ = h.disconnect(Disconnect::ByApplication, "", "en").await;
        }
    }
}

enum Attempt {
    Retry(String),
    Final(TransportError),
}

/// Splits channel data into lines for a sink, keeping partial lines until they complete.
struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    fn push(&mut self, data: &[u8], stream: Stream, sink: &mut (dyn FnMut(Stream, &[u8]) + Send)) {
        self.buf.extend_from_slice(data);
        while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            sink(stream, &line);
        }
    }
    fn flush(&mut self, stream: Stream, sink: &mut (dyn FnMut(Stream, &[u8]) + Send)) {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            sink(stream, &rest);
        }
    }
}

#[async_trait]
impl Transport for SshTransport {
    fn worker(&self) -> &str {
        &self.worker
    }

    async fn exec(
        &self,
        req: ExecRequest,
        sink: LineSink<'_>,
    ) -> Result<ExecStatus, TransportError> {
        let mut line = command_line(&req.argv);
        if let Some(cwd) = &req.cwd {
            line = format!("cd {} && {line}", shell_quote(cwd));
        }
        let env = env_script(&req.env).map_err(|e| self.err("preparing the environment", e))?;
        let with_env = !req.env.is_empty();
        if with_env {
            // The exports arrive on stdin; the command itself gets /dev/null.
            line = format!(
                "eval \"$(cat)\" && exec sh -c {} cwo-exec </dev/null",
                shell_quote(&line)
            );
        }
        tracing::debug!(worker = %self.worker, command = %line, "ssh exec");
        let mut ch = self.open_exec(&line).await?;
        if with_env {
            ch.data_bytes(env.into_bytes())
                .await
                .map_err(|e| self.err("sending the environment", e))?;
        }
        ch.eof().await.map_err(|e| self.err("closing stdin", e))?;
        let deadline = req.timeout.map(|t| Instant::now() + t);
        let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
        let cancel = req.cancel.clone().unwrap_or_default();
        let mut out = Lines { buf: Vec::new() };
        let mut err = Lines { buf: Vec::new() };
        let mut status = None;
        loop {
            tokio::select! {
                msg = ch.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => out.push(&data, Stream::Stdout, sink),
                    Some(ChannelMsg::ExtendedData { data, ext: 1 }) => err.push(&data, Stream::Stderr, sink),
                    Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(ExecStatus::Exited(exit_status as i32)),
                    Some(ChannelMsg::ExitSignal { signal_name, .. }) => status = Some(ExecStatus::Signaled(signal_number(&signal_name))),
                    Some(ChannelMsg::Close) | None => break,
                    Some(_) => {}
                },
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    let _ = ch.close().await;
                    return Ok(ExecStatus::TimedOut);
                }
                _ = cancel.cancelled() => {
                    let _ = ch.close().await;
                    return Ok(ExecStatus::Cancelled);
                }
            }
        }
        out.flush(Stream::Stdout, sink);
        err.flush(Stream::Stderr, sink);
        match status {
            Some(s) => Ok(s),
            None => {
                self.drop_session().await;
                Err(self.err(
                    format!(
                        "running `{}`",
                        req.argv.first().cloned().unwrap_or_default()
                    ),
                    "the SSH connection was lost before the command finished",
                ))
            }
        }
    }

    async fn interactive(
        &self,
        command: Option<&[String]>,
        cwd: &str,
    ) -> Result<i32, TransportError> {
        let h = self.session().await?;
        let ch = h
            .channel_open_session()
            .await
            .map_err(|e| self.err("opening an SSH channel", e))?;
        let (cols, rows) = crate::util::terminal::size();
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        ch.request_pty(true, &term, cols, rows, 0, 0, &[])
            .await
            .map_err(|e| self.err("requesting a terminal", e))?;
        let line = match command {
            Some(c) if !c.is_empty() => format!(
                "mkdir -p {0} && cd {0} && {1}",
                shell_quote(cwd),
                command_line(c)
            ),
            _ => format!(
                "mkdir -p {0} && cd {0} && exec \"${{SHELL:-sh}}\" -l",
                shell_quote(cwd)
            ),
        };
        ch.exec(true, line)
            .await
            .map_err(|e| self.err("starting the shell", e))?;
        let _raw = crate::util::terminal::RawMode::enable();
        let (mut reader, writer) = ch.split();
        let stdin_pump = tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        let _ = writer.eof().await;
                        break;
                    }
                    Ok(n) => {
                        if writer.data_bytes(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let mut stdout = tokio::io::stdout();
        let mut code = 0;
        while let Some(msg) = reader.wait().await {
            match msg {
                ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. } => {
                    let _ = stdout.write_all(&data).await;
                    let _ = stdout.flush().await;
                }
                ChannelMsg::ExitStatus { exit_status } => code = exit_status as i32,
                ChannelMsg::ExitSignal { .. } => code = 255,
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        stdin_pump.abort();
        Ok(code)
    }

    async fn upload(&self, local: &Path, remote: &str) -> Result<(), TransportError> {
        let mut file = tokio::fs::File::open(local)
            .await
            .map_err(|e| self.err(format!("reading {}", local.display()), e))?;
        let script = "umask 077; mkdir -p \"$(dirname \"$1\")\" && cat > \"$1.part\" && mv \"$1.part\" \"$1\"";
        let line = command_line(&[
            "sh".into(),
            "-c".into(),
            script.into(),
            "cwo-put".into(),
            remote.into(),
        ]);
        let mut ch = self.open_exec(&line).await?;
        ch.data(&mut file)
            .await
            .map_err(|e| self.err(format!("sending {remote}"), e))?;
        ch.eof().await.map_err(|e| self.err("closing stdin", e))?;
        let mut status = None;
        let mut stderr = Vec::new();
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::ExtendedData { data, .. } => stderr.extend_from_slice(&data),
                _ => {}
            }
        }
        match status {
            Some(0) => Ok(()),
            other => Err(self.err(
                format!("writing {remote}"),
                format!("{other:?}: {}", String::from_utf8_lossy(&stderr).trim()),
            )),
        }
    }

    async fn download(&self, remote: &str, local: &Path) -> Result<(), TransportError> {
        let line = command_line(&["cat".into(), remote.into()]);
        let mut ch = self.open_exec(&line).await?;
        let mut file = tokio::fs::File::create(local)
            .await
            .map_err(|e| self.err(format!("creating {}", local.display()), e))?;
        let mut status = None;
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => file
                    .write_all(&data)
                    .await
                    .map_err(|e| self.err(format!("writing {}", local.display()), e))?,
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                _ => {}
            }
        }
        file.flush().await.map_err(|e| self.err("flushing", e))?;
        match status {
            Some(0) => Ok(()),
            other => Err(self.err(
                format!("reading {remote}"),
                format!("cat ended with {other:?}"),
            )),
        }
    }
}

fn signal_number(sig: &russh::Sig) -> i32 {
    use russh::Sig::*;
    match sig {
        HUP => 1,
        INT => 2,
        QUIT => 3,
        ILL => 4,
        ABRT => 6,
        FPE => 8,
        KILL => 9,
        USR1 => 10,
        SEGV => 11,
        PIPE => 13,
        ALRM => 14,
        TERM => 15,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_a_shell() {
        let words = [
            "plain",
            "",
            "a b",
            "it's",
            "$(touch x)",
            "`id`",
            "\"q\"",
            "new\nline",
            "semi;colon",
        ];
        let line = command_line(
            &["printf".into(), "%s|".into()]
                .into_iter()
                .chain(words.iter().map(|w| w.to_string()))
                .collect::<Vec<_>>(),
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&line)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            words.iter().map(|w| format!("{w}|")).collect::<String>()
        );
    }

    #[test]
    fn env_script_exports_literally_and_rejects_bad_names() {
        let script =
            env_script(&[("A".into(), "x'$(id)\n".into()), ("B_2".into(), "".into())]).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("eval \"$(cat)\"; printf '%s|%s' \"$A\" \"$B_2\"")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(script.as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "x'$(id)\n|");
        assert!(env_script(&[("A-B".into(), "1".into())]).is_err());
        assert!(env_script(&[("1A".into(), "1".into())]).is_err());
    }

    #[test]
    fn generated_keys_are_private_and_parse() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/w1");
        let public = generate_key(&path, "cwo-w1").unwrap();
        assert!(public.starts_with("ssh-ed25519 "), "{public}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let key = PrivateKey::read_openssh_file(&path).unwrap();
        assert_eq!(key.public_key().to_openssh().unwrap(), public);
    }
}
