//! Makes a fresh host ready for the agent (DESIGN §1): swap, packages, opencode, the work user,
//! sshd hardening, agent environment defaults, the idle watchdog, the host key.
//!
//! The native path is one POSIX sh script ([`render`]) sent over one SSH session; it is also the
//! VM's startup script / user-data, so boot and setup overlap and cwo only collects the result.
//! The Ansible path ([`ansible`]) runs the shipped playbook to the same end state.

pub(crate) mod ansible;

use std::time::Duration;

use crate::config::Settings;
use crate::model::Instance;
use crate::transport::{ExecRequest, ExecStatus, Stream, Transport, TransportError};
use crate::util::shell::shell_quote;

pub(crate) use crate::config::bootstrap::Method;

const BODY: &str = include_str!("bootstrap.sh");
/// The watchdog the bootstrap installs as `/usr/local/sbin/cwo-watchdog`.
pub(crate) const WATCHDOG: &str = include_str!("../../ansible/roles/worker/files/cwo-watchdog");
/// Where the bootstrap keeps its marker, log and the controller's heartbeat.
pub(crate) const STATE_DIR: &str = "/var/lib/cwo";
/// The file the controller touches while it works; the watchdog reads its age.
pub(crate) const HEARTBEAT: &str = "/var/lib/cwo/heartbeat";

/// Always installed: what cloning, fetching over HTTPS, opencode's grep/glob tools and the
/// watchdog need.
const BASE_DEBIAN: &[&str] = &["git", "ca-certificates", "curl", "ripgrep", "cron"];
const BASE_ALPINE: &[&str] = &["git", "ca-certificates", "curl", "ripgrep"];

/// A rendered bootstrap script and the hash that marks its completion on the host.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    pub(crate) text: String,
    /// Over the settings block and the body: what the host ends up as (the script carries it
    /// itself, as the marker it writes).
    pub(crate) hash: String,
}

/// What the script needs to know about where it runs.
pub(crate) struct Target<'a> {
    /// The SSH login that runs the script (its authorized keys are given to the work user).
    pub(crate) login_user: &'a str,
    /// Publish the host key through GCE guest attributes too.
    pub(crate) gce: bool,
}

/// The watchdog's built-in action that stops orphaned agents and leaves the VM to its TTL.
pub(crate) const STOP_AGENTS: &str = "stop-agents";

/// What the watchdog does once no controller has been heard from for `watchdog.idle_minutes`.
/// `auto` never stops a VM whose TTL would delete it — Compute Engine clears the termination
/// timer of a stopped VM, so a poweroff would leave a disk billed forever — and never powers off
/// a host you own: it stops orphaned agents (`stop-agents`) and leaves deletion to the TTL. Only
/// a cloud VM without a TTL (`gcp.ttl = "none"`) is powered off.
pub(crate) fn watchdog_action(settings: &Settings) -> String {
    use crate::config::ProviderKind;
    match settings.watchdog.action.as_str() {
        "auto" => match settings.provider {
            ProviderKind::Gcp | ProviderKind::Terraform if settings.gcp.ttl.is_none() => {
                "poweroff".into()
            }
            _ => STOP_AGENTS.into(),
        },
        other => other.into(),
    }
}

/// Whether `host` is the machine cwo runs on (a loopback name or address), which no bootstrap
/// may change.
pub(crate) fn is_this_machine(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

/// The worker as the agent's work sees it once bootstrapped: logged in as the unprivileged work
/// user, in its workspace. Unchanged when no bootstrap applies.
pub(crate) fn as_work_user(settings: &Settings, instance: Instance) -> Instance {
    if settings.bootstrap_method() == Method::None {
        return instance;
    }
    instance.logged_in_as(&settings.bootstrap.user, &settings.bootstrap.workspace)
}

/// Renders the script: the settings as shell assignments (quoted), then the fixed body.
pub(crate) fn render(settings: &Settings, target: &Target<'_>) -> Script {
    let b = &settings.bootstrap;
    let w = &settings.watchdog;
    let extra = b.packages.join(" ");
    let with_extra = |base: &[&str]| {
        let mut v = base.join(" ");
        if !extra.is_empty() {
            v.push(' ');
            v.push_str(&extra);
        }
        v
    };
    let agent_env: String = b
        .agent_env_defaults()
        .map(|(k, v)| {
            format!(
                "[ -n \"${{{k}+set}}\" ] || {k}={}; export {k}\n",
                shell_quote(v)
            )
        })
        .collect();
    let vars: Vec<(&str, String)> = vec![
        ("CWO_STATE", STATE_DIR.into()),
        ("CWO_SWAP_MB", b.swap.unwrap_or(0).to_string()),
        ("CWO_PACKAGES_DEBIAN", with_extra(BASE_DEBIAN)),
        ("CWO_PACKAGES_ALPINE", with_extra(BASE_ALPINE)),
        ("CWO_OPENCODE", b.opencode.clone()),
        ("CWO_NPM_REGISTRY", b.npm_registry.clone()),
        ("CWO_USER", b.user.clone()),
        ("CWO_WORKSPACE", b.workspace.clone()),
        ("CWO_LOGIN_USER", target.login_user.into()),
        ("CWO_PROXY", b.proxy.clone()),
        ("CWO_AGENT_ENV", agent_env.trim_end().to_string()),
        ("CWO_IDLE_MINUTES", w.idle_minutes.to_string()),
        ("CWO_WATCHDOG_ACTION", watchdog_action(settings)),
        (
            "CWO_WATCHDOG_ACTION_Q",
            shell_quote(&watchdog_action(settings)),
        ),
        ("CWO_WATCHDOG_SCRIPT", WATCHDOG.trim_end().to_string()),
        ("CWO_GCE", if target.gce { "1" } else { "0" }.into()),
    ];
    let mut settings_block = String::new();
    // The hash marks the end state: the proxy only decides the way downloads take, so a host
    // (or an image) bootstrapped through another proxy is the same host.
    let mut hashed = String::new();
    for (k, v) in &vars {
        let line = format!("{k}={}\n", shell_quote(v));
        if *k != "CWO_PROXY" {
            hashed.push_str(&line);
        }
        settings_block.push_str(&line);
    }
    let hash = format!(
        "{:016x}",
        crate::model::ids::fnv(&format!("{hashed}{BODY}"))
    );
    let text = format!(
        "#!/bin/sh\n# Rendered by cwo {}. Run as root: sh bootstrap.sh [run|reuse|bake]\nCWO_MODE=${{1:-run}}\nCWO_HASH={hash}\n{settings_block}{BODY}",
        env!("CARGO_PKG_VERSION")
    );
    Script { text, hash }
}

/// The hash an image baked with `script` on `base_image` is labelled with: the base image and
/// the rendered script (every `[bootstrap]` and `[watchdog]` setting, the opencode version, the
/// packages, cwo's script itself), so a worker boots from an image only when its own bootstrap
/// would end in the same state.
pub(crate) fn image_hash(base_image: &str, script: &Script) -> String {
    format!(
        "{:016x}",
        crate::model::ids::fnv(&format!("{base_image}\n{}", script.hash))
    )
}

/// How one step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StepStatus {
    Changed,
    Ok,
    Skipped,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Step {
    pub(crate) name: String,
    pub(crate) status: StepStatus,
    pub(crate) millis: u64,
    pub(crate) detail: String,
}

/// Reads one `cwo-step` line; anything else is not a step.
pub(crate) fn parse_step(line: &str) -> Option<Step> {
    let mut f = line.trim_end_matches(['\n', '\r']).splitn(5, '\t');
    if f.next()? != "cwo-step" {
        return None;
    }
    let name = f.next()?.to_string();
    let status = match f.next()? {
        "changed" => StepStatus::Changed,
        "ok" => StepStatus::Ok,
        "skipped" => StepStatus::Skipped,
        "failed" => StepStatus::Failed,
        _ => return None,
    };
    let millis = f.next()?.parse().ok()?;
    let detail = f.next().unwrap_or("").to_string();
    Some(Step {
        name,
        status,
        millis,
        detail,
    })
}

/// The outcome of one bootstrap.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Report {
    pub(crate) steps: Vec<Step>,
    /// `true` when the host had already run this script at boot (startup-script / user-data)
    /// and cwo's run only checked it.
    pub(crate) reused: bool,
    /// The host's ed25519 key as the script printed it (`ssh-ed25519 AAAA…`).
    pub(crate) host_key: Option<String>,
    pub(crate) elapsed: Duration,
}

impl Report {
    pub(crate) fn changed(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.status == StepStatus::Changed)
            .count()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("bootstrap step `{step}` failed on {worker}: {detail}{output}")]
    Step {
        worker: String,
        step: String,
        detail: String,
        output: String,
    },
    #[error("bootstrap on {worker} ended with {status} before it finished: {stderr}")]
    Incomplete {
        worker: String,
        status: ExecStatus,
        stderr: String,
    },
    #[error("{0}")]
    Ansible(String),
}

/// Runs as root whatever the login: directly, or through `sudo -n` / `doas -n`.
const ELEVATE: &str = r#"s=$1; shift
if [ "$(id -u)" = 0 ]; then exec sh -c "$s" cwo-bootstrap "$@"
elif command -v sudo >/dev/null 2>&1; then exec sudo -n sh -c "$s" cwo-bootstrap "$@"
elif command -v doas >/dev/null 2>&1; then exec doas -n sh -c "$s" cwo-bootstrap "$@"
else echo "cwo bootstrap: $(id -un) is not root and has neither sudo nor doas" >&2; exit 90; fi
"#;

/// How the script runs on a host (its first argument).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A host cwo bootstraps over SSH.
    Run,
    /// A host that boots with this script (startup-script / user-data), or from an image baked
    /// with it: cwo's run waits for the boot run to finish (the script's lock), checks every
    /// step, and says when the host already had it all (`Report::reused`).
    Reuse,
    /// The source of an image (`cwo image build`): no per-worker parts (login keys, heartbeat),
    /// and the per-host state cleaned at the end.
    Bake,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::Reuse => "reuse",
            Mode::Bake => "bake",
        }
    }
}

/// Runs the script on the host over one session, handing each step to `on_step` as it ends.
pub(crate) async fn run_native(
    t: &dyn Transport,
    script: &Script,
    mode: Mode,
    on_step: &mut (dyn FnMut(&Step) + Send),
) -> Result<Report, BootstrapError> {
    let started = std::time::Instant::now();
    let req = ExecRequest::new(["sh", "-c", ELEVATE, "cwo-elevate", &script.text, mode.arg()]);
    let mut report = Report::default();
    let mut stderr = String::new();
    let status = t
        .exec(req, &mut |stream, raw| {
            let line = String::from_utf8_lossy(raw);
            match stream {
                Stream::Stdout => {
                    if line.starts_with("cwo-reused\t") {
                        report.reused = true;
                    } else if let Some(step) = parse_step(&line) {
                        if step.name == "hostkey" && step.status == StepStatus::Ok {
                            report.host_key = Some(step.detail.clone());
                        }
                        on_step(&step);
                        report.steps.push(step);
                    }
                }
                Stream::Stderr => stderr.push_str(&line),
            }
        })
        .await?;
    report.elapsed = started.elapsed();
    if let Some(failed) = report.steps.iter().find(|s| s.status == StepStatus::Failed) {
        let out = stderr.trim();
        return Err(BootstrapError::Step {
            worker: t.worker().to_string(),
            step: failed.name.clone(),
            detail: failed.detail.clone(),
            output: if out.is_empty() {
                String::new()
            } else {
                format!("\n{out}")
            },
        });
    }
    if !status.success() || report.host_key.is_none() {
        return Err(BootstrapError::Incomplete {
            worker: t.worker().to_string(),
            status,
            stderr: stderr.trim().to_string(),
        });
    }
    Ok(report)
}

/// One line of progress for a step, as `cwo up` prints it.
pub(crate) fn step_line(s: &Step) -> String {
    let status = match s.status {
        StepStatus::Changed => "changed",
        StepStatus::Ok => "ok",
        StepStatus::Skipped => "skipped",
        StepStatus::Failed => "FAILED",
    };
    format!(
        "  {:<10} {:<8} {:>6.2}s  {}",
        s.name,
        status,
        s.millis as f64 / 1000.0,
        s.detail
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_this_machine() {
        for h in [
            "127.0.0.1",
            "127.1.2.3",
            "localhost",
            "::1",
            "[::1]",
            "0.0.0.0",
        ] {
            assert!(is_this_machine(h), "{h}");
        }
        for h in ["10.213.1.2", "203.0.113.7", "vm.example.com"] {
            assert!(!is_this_machine(h), "{h}");
        }
    }

    #[test]
    fn step_lines_parse_and_others_do_not() {
        let s = parse_step("cwo-step\tswap\tchanged\t1234\t2048 MiB at /swapfile\n").unwrap();
        assert_eq!(s.name, "swap");
        assert_eq!(s.status, StepStatus::Changed);
        assert_eq!(s.millis, 1234);
        assert_eq!(s.detail, "2048 MiB at /swapfile");
        assert!(parse_step("cwo-step\tswap\tweird\t1\tx").is_none());
        assert!(parse_step("+ apt-get update").is_none());
        assert!(parse_step("cwo-step\tswap\tok\tnotanumber\tx").is_none());
    }

    #[test]
    fn rendering_quotes_values_and_the_hash_follows_the_settings() {
        let mut s = Settings {
            provider: crate::config::ProviderKind::Gcp,
            ..Default::default()
        };
        s.watchdog.action = "echo 'idle' > /tmp/x".into();
        let t = Target {
            login_user: "admin",
            gce: true,
        };
        let a = render(&s, &t);
        assert!(a.text.starts_with("#!/bin/sh\n"));
        assert!(
            a.text
                .contains("CWO_WATCHDOG_ACTION='echo '\\''idle'\\'' > /tmp/x'\n")
        );
        assert!(a.text.contains("CWO_SWAP_MB=2048\n"));
        assert!(
            a.text.contains(
                "BUN_JSC_forceRAMSize+set}\" ] || BUN_JSC_forceRAMSize=268435456; export"
            )
        );
        assert_eq!(a.hash, render(&s, &t).hash, "same settings, same hash");
        s.bootstrap.proxy = "http://10.0.0.2:3128".into();
        assert_eq!(
            a.hash,
            render(&s, &t).hash,
            "the proxy is not the host's state"
        );
        s.bootstrap.swap = Some(4096);
        assert_ne!(a.hash, render(&s, &t).hash);
        assert_eq!(s.bootstrap_method(), Method::Native);
        s.provider = crate::config::ProviderKind::Ssh;
        assert_eq!(s.bootstrap_method(), Method::None);
    }
}
