//! The agent runs *detached* on the worker: started under `setsid` with its output in
//! `<dir>/agent.log` and its exit status in `<dir>/agent.exit`, so it survives a dropped
//! connection or a dead controller. The controller follows the log by byte offset and can always
//! resume from where it stopped. Everything here is plain POSIX sh (busybox ash compatible), and
//! every value reaches the scripts as a positional argument, never spliced into script text.

use tokio_util::sync::CancellationToken;

use crate::transport::{ExecRequest, ExecStatus, Stream, Transport, TransportError};

/// Starts the agent once: a second call while (or after) it ran does nothing. On a bootstrapped
/// worker the agent gets the defaults of `/etc/cwo/agent.env` for what its own env leaves unset. The wrapper traps
/// TERM with a handler (not an ignore, so the agent keeps the default action) to outlive the
/// agent's group being signalled and record the status.
const LAUNCH: &str = r#"d=$(cd "$1" && pwd) || exit 97
repo=$(cd "$2" && pwd) || exit 97
shift 2
if [ -e "$d/agent.pid" ]; then exit 0; fi
# The launch itself is claimed once (mkdir is atomic): a controller killed between here and the
# pid file leaves the claim, and no later call starts a second agent.
if ! mkdir "$d/agent.launched" 2>/dev/null; then
  i=0
  while [ ! -e "$d/agent.pid" ] && [ "$i" -lt 200 ]; do i=$((i + 1)); sleep 0.05; done
  exit 0
fi
cd "$repo" || exit 97
: >> "$d/agent.log"
setsid sh -c 'd=$1; shift; trap ": " TERM INT HUP
[ -r /etc/cwo/agent.env ] && . /etc/cwo/agent.env
echo $$ > "$d/agent.pid.tmp" && mv "$d/agent.pid.tmp" "$d/agent.pid"
"$@" </dev/null >>"$d/agent.log" 2>&1
echo $? > "$d/agent.exit.tmp" && mv "$d/agent.exit.tmp" "$d/agent.exit"' cwo-agent "$d" "$@" </dev/null >/dev/null 2>&1 &
i=0
while [ ! -e "$d/agent.pid" ]; do
  i=$((i + 1)); [ "$i" -gt 200 ] && exit 98
  sleep 0.05
done
"#;

/// Whether the agent of this directory was ever launched (by any controller).
const LAUNCHED: &str = r#"[ -e "$1/agent.launched" ] || [ -e "$1/agent.pid" ]"#;

/// Prints the log from byte offset `$2` until the agent has exited and every byte was sent.
const FOLLOW: &str = r#"d=$1; off=$2
[ -e "$d/agent.log" ] || exit 96
while :; do
  if [ -e "$d/agent.exit" ]; then ended=1; else ended=0; fi
  size=$(wc -c < "$d/agent.log")
  if [ "$size" -gt "$off" ]; then
    tail -c +"$((off + 1))" "$d/agent.log" | head -c "$((size - off))"
    off=$size
  elif [ "$ended" = 1 ]; then
    exit 0
  else
    sleep 0.2
  fi
done
"#;

/// Signals the agent's whole process group.
const KILL: &str = r#"pid=$(cat "$1/agent.pid" 2>/dev/null) || exit 0
kill -"$2" "-$pid" 2>/dev/null || true
"#;

/// Appends one line to the agent's log (the agent appends to it too: both use O_APPEND).
const NOTE: &str = r#"printf '%s\n' "$2" >> "$1/agent.log"
"#;

/// Exit status if the agent ended, nothing while it runs: `exit N`, or `running`, or `none`.
const STATE: &str = r#"if [ -e "$1/agent.exit" ]; then echo "exit $(cat "$1/agent.exit")"
elif [ -e "$1/agent.pid" ] && kill -0 "-$(cat "$1/agent.pid")" 2>/dev/null; then echo running
else echo none; fi
"#;

/// The agent as it is on the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AgentState {
    Running,
    Exited(ExecStatus),
    /// Never started, or died without recording a status (e.g. the worker rebooted).
    Missing,
}

/// How a follow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FollowEnd {
    /// Every byte up to the agent's exit was delivered.
    Complete,
    /// The follower stopped (cancelled, or it failed on the worker); the offset says how far it got.
    Stopped,
}

pub(crate) struct Detached {
    pub(crate) dir: String,
}

fn sh(script: &str, name: &str, args: &[&str]) -> ExecRequest {
    let mut argv = vec!["sh", "-c", script, name];
    argv.extend_from_slice(args);
    ExecRequest::new(argv)
}

/// Turns the agent's recorded `$?` into a status: the shell reports a signal as 128 + n.
fn status_of(code: i32) -> ExecStatus {
    if (129..=192).contains(&code) {
        ExecStatus::Signaled(code - 128)
    } else {
        ExecStatus::Exited(code)
    }
}

impl Detached {
    pub(crate) fn new(dir: impl Into<String>) -> Detached {
        Detached { dir: dir.into() }
    }

    /// Starts the agent in `repo` with `env` for it alone; idempotent.
    pub(crate) async fn start(
        &self,
        t: &dyn Transport,
        repo: &str,
        argv: &[String],
        env: Vec<(String, String)>,
    ) -> Result<(), TransportError> {
        let mut args: Vec<&str> = vec![&self.dir, repo];
        args.extend(argv.iter().map(String::as_str));
        let mut req = sh(LAUNCH, "cwo-launch", &args);
        req.env = env;
        t.check(req).await.map(|_| ())
    }

    /// Whether a launch was ever claimed here: the agent ran, runs, or died starting.
    pub(crate) async fn launched(&self, t: &dyn Transport) -> Result<bool, TransportError> {
        let out = t
            .capture(sh(LAUNCHED, "cwo-launched", &[&self.dir]))
            .await?;
        Ok(out.status.success())
    }

    /// Delivers log bytes from `*offset` on, one line (or final fragment) at a time, advancing
    /// the offset by exactly what was delivered.
    pub(crate) async fn follow(
        &self,
        t: &dyn Transport,
        offset: &mut u64,
        on_bytes: &mut (dyn FnMut(&[u8]) + Send),
        cancel: CancellationToken,
    ) -> Result<FollowEnd, TransportError> {
        let from = offset.to_string();
        let mut req = sh(FOLLOW, "cwo-follow", &[&self.dir, &from]);
        req.cancel = Some(cancel);
        let status = t
            .exec(req, &mut |stream, bytes| {
                if stream == Stream::Stdout {
                    *offset += bytes.len() as u64;
                    on_bytes(bytes);
                }
            })
            .await?;
        Ok(if status.success() {
            FollowEnd::Complete
        } else {
            FollowEnd::Stopped
        })
    }

    pub(crate) async fn state(&self, t: &dyn Transport) -> Result<AgentState, TransportError> {
        let out = t.check(sh(STATE, "cwo-state", &[&self.dir])).await?;
        let out = out.trim();
        Ok(match out.strip_prefix("exit ") {
            Some(code) => AgentState::Exited(status_of(code.trim().parse().unwrap_or(-1))),
            None if out == "running" => AgentState::Running,
            None => AgentState::Missing,
        })
    }

    /// Adds a line of cwo's own to the agent's log, where every reader of the log sees it.
    pub(crate) async fn note(&self, t: &dyn Transport, line: &str) -> Result<(), TransportError> {
        t.check(sh(NOTE, "cwo-note", &[&self.dir, line]))
            .await
            .map(|_| ())
    }

    /// Sends `signal` (TERM, KILL, ...) to the agent's process group.
    pub(crate) async fn signal(
        &self,
        t: &dyn Transport,
        signal: &str,
    ) -> Result<(), TransportError> {
        t.check(sh(KILL, "cwo-kill", &[&self.dir, signal]))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::local::LocalTransport;
    use std::time::Duration;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn runs_once_follows_by_offset_and_reports_status() {
        rt().block_on(async {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().display().to_string();
            let t = LocalTransport::new("w");
            let d = Detached::new(dir.clone());
            let argv: Vec<String> = [
                "sh",
                "-c",
                "echo one; echo \"$X\"; printf 'tail'; echo $$ >> starts; exit 4",
            ]
            .map(String::from)
            .to_vec();
            let env = vec![("X".to_string(), "two words".to_string())];
            d.start(&t, &dir, &argv, env.clone()).await.unwrap();
            d.start(&t, &dir, &argv, env).await.unwrap();
            let mut offset = 0;
            let mut got = Vec::new();
            let end = d
                .follow(
                    &t,
                    &mut offset,
                    &mut |b| got.extend_from_slice(b),
                    CancellationToken::new(),
                )
                .await
                .unwrap();
            assert_eq!(end, FollowEnd::Complete);
            assert_eq!(String::from_utf8(got).unwrap(), "one\ntwo words\ntail");
            assert_eq!(offset, 18);
            assert_eq!(
                d.state(&t).await.unwrap(),
                AgentState::Exited(ExecStatus::Exited(4))
            );
            let starts = std::fs::read_to_string(tmp.path().join("starts")).unwrap();
            assert_eq!(starts.lines().count(), 1, "started exactly once");
            // Resuming from an offset delivers only the rest.
            let mut offset = 4;
            let mut rest = Vec::new();
            d.follow(
                &t,
                &mut offset,
                &mut |b| rest.extend_from_slice(b),
                CancellationToken::new(),
            )
            .await
            .unwrap();
            assert_eq!(rest, b"two words\ntail");
        });
    }

    #[test]
    fn signal_reaches_the_agent_group_and_status_says_so() {
        rt().block_on(async {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().display().to_string();
            let t = LocalTransport::new("w");
            let d = Detached::new(dir.clone());
            let argv: Vec<String> = ["sh", "-c", "sleep 30 & sleep 30"]
                .map(String::from)
                .to_vec();
            d.start(&t, &dir, &argv, vec![]).await.unwrap();
            assert_eq!(d.state(&t).await.unwrap(), AgentState::Running);
            d.signal(&t, "TERM").await.unwrap();
            let mut state = AgentState::Running;
            for _ in 0..50 {
                state = d.state(&t).await.unwrap();
                if state != AgentState::Running {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(state, AgentState::Exited(ExecStatus::Signaled(15)));
        });
    }

    /// busybox ash (Alpine) and dash disagree on `kill` options: the state and kill scripts
    /// must give the same answers under both.
    #[test]
    fn state_and_kill_agree_under_busybox_and_dash() {
        let shells: Vec<Vec<&str>> = [vec!["busybox", "sh"], vec!["dash"]]
            .into_iter()
            .filter(|s| {
                std::process::Command::new(s[0])
                    .args(&s[1..])
                    .args(["-c", "true"])
                    .status()
                    .is_ok_and(|st| st.success())
            })
            .collect();
        for shell in shells {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().display().to_string();
            let mut agent = std::process::Command::new("setsid")
                .args(["sleep", "30"])
                .spawn()
                .unwrap();
            let pid = agent.id();
            // Wait until setsid made it a group leader.
            for _ in 0..200 {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                if stat
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().nth(2))
                    == Some(pid.to_string().as_str())
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            std::fs::write(tmp.path().join("agent.pid"), pid.to_string()).unwrap();
            let run = |script: &str, extra: &[&str]| {
                let out = std::process::Command::new(shell[0])
                    .args(&shell[1..])
                    .args(["-c", script, "cwo-test", &dir])
                    .args(extra)
                    .output()
                    .unwrap();
                (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout).trim().to_string(),
                )
            };
            assert_eq!(run(STATE, &[]).1, "running", "{shell:?}");
            assert_eq!(run(KILL, &["TERM"]).0, Some(0), "{shell:?}");
            let st = agent.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&st),
                Some(15),
                "{shell:?}"
            );
            assert_eq!(run(STATE, &[]).1, "none", "{shell:?}");
        }
    }
}
