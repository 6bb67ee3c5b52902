//! `bootstrap.method = "ansible"`: the shipped playbook (`ansible/` in the repository, embedded
//! in the binary) run against one worker. cwo writes an inventory for the worker (address, login,
//! its per-worker key, the pinned host key in a private known_hosts, nothing from ~/.ssh) and the
//! settings as extra vars, then runs `ansible-playbook` and streams its output.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::BootstrapError;
use crate::config::Settings;
use crate::provider::{Instance, Target};

/// The playbook as shipped: (path under `ansible/`, contents).
pub(crate) const FILES: &[(&str, &str)] = &[
    ("ansible.cfg", include_str!("../../ansible/ansible.cfg")),
    ("provision.yml", include_str!("../../ansible/provision.yml")),
    (
        "roles/worker/tasks/main.yml",
        include_str!("../../ansible/roles/worker/tasks/main.yml"),
    ),
    (
        "roles/worker/defaults/main.yml",
        include_str!("../../ansible/roles/worker/defaults/main.yml"),
    ),
    (
        "roles/worker/handlers/main.yml",
        include_str!("../../ansible/roles/worker/handlers/main.yml"),
    ),
    (
        "roles/worker/files/cwo-watchdog",
        include_str!("../../ansible/roles/worker/files/cwo-watchdog"),
    ),
];

/// The playbook's variables, from the same settings the native script is rendered from.
pub(crate) fn extra_vars(settings: &Settings, login_user: &str) -> serde_json::Value {
    let b = &settings.bootstrap;
    let agent_env: serde_json::Map<String, serde_json::Value> = b
        .agent_env_defaults()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    json!({
        "cwo_swap_mb": b.swap.unwrap_or(0),
        "cwo_extra_packages": b.packages,
        "cwo_opencode": b.opencode,
        "cwo_npm_registry": b.npm_registry,
        "cwo_user": b.user,
        "cwo_workspace": b.workspace,
        "cwo_login_user": login_user,
        "cwo_proxy": b.proxy,
        "cwo_agent_env": agent_env,
        "cwo_idle_minutes": settings.watchdog.idle_minutes,
        "cwo_watchdog_action": super::watchdog_action(settings),
    })
}

/// Writes the shipped playbook under `dir` (refreshed every time, so it matches this binary).
pub(crate) fn write_playbook(dir: &Path) -> std::io::Result<PathBuf> {
    for (rel, text) in FILES {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("files live in a directory"))?;
        std::fs::write(&path, text)?;
    }
    Ok(dir.join("provision.yml"))
}

/// Runs the playbook against the worker; each output line goes to `on_line`. `host_key` is the
/// key connections to the worker are held to (the connector's), which Ansible is held to too.
pub(crate) async fn run(
    settings: &Settings,
    host_key: Option<&str>,
    state_dir: &Path,
    instance: &Instance,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<(), BootstrapError> {
    let Target::Ssh {
        host,
        port,
        user,
        key_path,
        ..
    } = &instance.target
    else {
        return Err(BootstrapError::Ansible(format!(
            "worker {} is not reached over SSH; the Ansible bootstrap needs an SSH host",
            instance.name
        )));
    };
    let Some(key) = host_key else {
        return Err(BootstrapError::Ansible(format!(
            "no pinned host key for worker {}: connect once (cwo pins it) before running Ansible",
            instance.name
        )));
    };
    let files = write_run_files(
        settings,
        state_dir,
        instance,
        (host, *port, user, key_path),
        key,
    )?;
    run_playbook(&files, &instance.name, on_line).await
}

/// What one playbook run reads, written under the state dir.
struct RunFiles {
    playbook: PathBuf,
    inventory: PathBuf,
    vars: PathBuf,
}

/// Writes the playbook (the shipped one, unless `bootstrap.ansible_playbook` names another), an
/// inventory that reaches `instance` with its own key and only the pinned host `key`, and the
/// variables.
fn write_run_files(
    settings: &Settings,
    state_dir: &Path,
    instance: &Instance,
    (host, port, user, key_path): (&str, u16, &str, &str),
    key: &str,
) -> Result<RunFiles, BootstrapError> {
    let io = |what: &str, e: std::io::Error| BootstrapError::Ansible(format!("{what}: {e}"));
    let dir = state_dir.join("ansible");
    let playbook = if settings.bootstrap.ansible_playbook.as_os_str().is_empty() {
        write_playbook(&dir.join("playbook")).map_err(|e| io("cannot write the playbook", e))?
    } else {
        settings.bootstrap.ansible_playbook.clone()
    };
    let run_dir = dir.join(&instance.name);
    std::fs::create_dir_all(&run_dir).map_err(|e| io("cannot create the inventory dir", e))?;
    let known_hosts = run_dir.join("known_hosts");
    let host_field = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let key_line = key.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    std::fs::write(&known_hosts, format!("{host_field} {key_line}\n"))
        .map_err(|e| io("cannot write known_hosts", e))?;
    let ssh_args = format!(
        "-F /dev/null -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
        known_hosts.display()
    );
    let inventory = json!({
        "all": {
            "hosts": {
                instance.name.clone(): {
                    "ansible_host": host,
                    "ansible_port": port,
                    "ansible_user": user,
                    "ansible_ssh_private_key_file": key_path,
                    "ansible_ssh_common_args": ssh_args,
                }
            }
        }
    });
    let inv_path = run_dir.join("inventory.json");
    let vars_path = run_dir.join("vars.json");
    std::fs::write(&inv_path, inventory.to_string())
        .map_err(|e| io("cannot write the inventory", e))?;
    std::fs::write(&vars_path, extra_vars(settings, user).to_string())
        .map_err(|e| io("cannot write the variables", e))?;

    Ok(RunFiles {
        playbook,
        inventory: inv_path,
        vars: vars_path,
    })
}

/// Runs `ansible-playbook` on the files, each line of its output to `on_line`; a failure says
/// the last lines and stderr.
async fn run_playbook(
    files: &RunFiles,
    worker: &str,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<(), BootstrapError> {
    let io = |what: &str, e: std::io::Error| BootstrapError::Ansible(format!("{what}: {e}"));
    let RunFiles {
        playbook,
        inventory: inv_path,
        vars: vars_path,
    } = files;
    let program = "ansible-playbook";
    let cfg = playbook
        .parent()
        .map(|p| p.join("ansible.cfg"))
        .filter(|p| p.exists());
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg("-i")
        .arg(inv_path)
        .arg("-e")
        .arg(format!("@{}", vars_path.display()))
        .arg(playbook)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_HOST_KEY_CHECKING", "True")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(cfg) = cfg {
        cmd.env("ANSIBLE_CONFIG", cfg);
    }
    let mut child = cmd.spawn().map_err(|e| {
        BootstrapError::Ansible(format!(
            "cannot start `{program}`: {e} (install ansible-core, e.g. `pipx install ansible-core`)"
        ))
    })?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let err_task = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut text = String::new();
        while let Ok(Some(l)) = lines.next_line().await {
            text.push_str(&l);
            text.push('\n');
        }
        text
    });
    let mut lines = BufReader::new(stdout).lines();
    let mut tail: Vec<String> = Vec::new();
    while let Ok(Some(l)) = lines.next_line().await {
        if !l.trim().is_empty() {
            on_line(&l);
            tail.push(l);
            if tail.len() > 8 {
                tail.remove(0);
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| io("ansible-playbook did not finish", e))?;
    let stderr = err_task.await.unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(BootstrapError::Ansible(format!(
            "`{program}` failed ({status}) on worker {worker}:\n{}\n{}",
            tail.join("\n"),
            stderr.trim()
        )))
    }
}
