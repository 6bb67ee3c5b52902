//! `provider = "terraform"` with the real terraform binary, against a stand-in module that uses
//! only `terraform_data` (no cloud provider can be downloaded here) and the test sshd.

use std::process::Command;

use crate::common::TestEnv;
use crate::common::sshd::Sshd;

fn terraform() -> bool {
    Command::new("terraform")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_loop_runs_on_a_worker_made_and_destroyed_by_terraform() {
    if !terraform() {
        eprintln!(
            "skipped the_loop_runs_on_a_worker_made_and_destroyed_by_terraform: terraform is not on PATH"
        );
        return;
    }
    let env = TestEnv::new();
    let Some(sshd) = Sshd::start(&env.tmp.path().join("sshd")) else {
        return;
    };
    let module = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/terraform-fake");
    let log = env.tmp.path().join("tf.log");
    let top = format!(
        r#"provider = "terraform"
[gcp]
project = "proj-test"
zones = ["us-central1-a"]
ssh_source = "127.0.0.1/32"
ssh_user = {user:?}
ssh_port = {port}
ttl = "2h"
[ssh]
workspace = {ws:?}
connect_timeout = "20s"
# The worker is the test sshd on this machine: nothing to bootstrap.
[bootstrap]
method = "none"
[terraform]
module = {module:?}
[terraform.vars]
authorized_keys = {ak:?}
fake_ip = "127.0.0.1"
log = {log:?}
"#,
        user = sshd.user,
        port = sshd.port,
        ws = env.tmp.path().join("vm-ws").display().to_string(),
        ak = sshd.dir.join("authorized_keys").display().to_string(),
        log = log.display().to_string(),
    );
    env.agent_with(
        &top,
        "echo done > tf.txt && git add tf.txt && git commit -qm tf",
        "",
    );
    let plan = env.cwo(&["up", "--plan", "--format", "json"]).ok().json();
    assert_eq!(plan["plan"]["provider"], "terraform");
    assert_eq!(plan["plan"]["ttl"], "2h");

    env.cwo(&["task", "add", "made by terraform"]).ok();
    let run = env.cwo(&["run", "--once"]).ok();
    let balls = std::fs::read_to_string(env.project.join(".juggle/balls.jsonl")).unwrap();
    assert!(
        balls.contains("\"state\":\"complete\""),
        "{balls}\n{}",
        run.stderr
    );

    // One apply and one destroy, with the TTL and the worker's own key; no state left behind.
    let log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(
        lines[0].starts_with("apply cwo-proj-") && lines[0].contains(" ttl=7200 "),
        "{log}"
    );
    // The worker's expiry label, as on gcp, for the reaper and TTL rotation.
    let expires: i64 = lines[0]
        .rsplit_once("expires=")
        .and_then(|(_, e)| e.trim().parse().ok())
        .unwrap_or_else(|| panic!("no cwo-expires-at label: {log}"));
    assert!(
        (chrono::Utc::now().timestamp() + 7200 - expires).abs() < 300,
        "{log}"
    );
    assert!(lines[1].starts_with("destroy cwo-proj-"), "{log}");
    let tf_dir = env.state.join("terraform");
    let left: Vec<String> = std::fs::read_dir(&tf_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "plugin-cache")
        .collect();
    assert!(left.is_empty(), "worker directories left: {left:?}");
    let ak = std::fs::read_to_string(sshd.dir.join("authorized_keys")).unwrap();
    assert!(
        ak.contains("cwo-cwo-proj-"),
        "the worker's own key was installed: {ak}"
    );
    let status = env.cwo(&["status", "--format", "json"]).ok().json();
    assert_eq!(status["schema_version"], 1);
}

#[test]
fn the_shipped_module_is_formatted_and_matches_what_cwo_passes() {
    if !terraform() {
        eprintln!("skipped the_shipped_module_is_formatted: terraform is not on PATH");
        return;
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/terraform");
    let out = Command::new("terraform")
        .args(["fmt", "-check", "-recursive", dir])
        .env("CHECKPOINT_DISABLE", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "terraform fmt -check: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Every variable cwo writes is declared by the module, and the other way round.
    let declared: std::collections::BTreeSet<String> =
        std::fs::read_to_string(format!("{dir}/variables.tf"))
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("variable \""))
            .map(|l| l.trim_end_matches(" {").trim_end_matches('"').to_string())
            .collect();
    let written: std::collections::BTreeSet<String> = [
        "name",
        "project",
        "zone",
        "machine_type",
        "image",
        "disk_size_gb",
        "disk_type",
        "spot",
        "ttl_seconds",
        "network",
        "ssh_source",
        "ssh_user",
        "ssh_port",
        "ssh_public_key",
        "labels",
        "startup_script",
    ]
    .map(String::from)
    .into();
    // The module's own optional budget alert takes two more, which cwo leaves at their defaults:
    // it applies the module once per worker, and a budget must not come and go with a worker.
    let budget: std::collections::BTreeSet<String> = ["billing_account", "budget_amount"]
        .map(String::from)
        .into();
    assert_eq!(
        declared,
        written.union(&budget).cloned().collect(),
        "variables.tf declares what cwo writes, plus the budget's"
    );
    let variables = std::fs::read_to_string(format!("{dir}/variables.tf")).unwrap();
    let block = |name: &str| {
        let start = variables.find(&format!("variable \"{name}\"")).unwrap();
        variables[start..]
            .split("\n}\n")
            .next()
            .unwrap()
            .to_string()
    };
    assert!(
        block("billing_account").contains("default     = \"\""),
        "{}",
        block("billing_account")
    );
    assert!(
        block("budget_amount").contains("default     = 5\n"),
        "{}",
        block("budget_amount")
    );
    // The budget is off unless billing_account is set, and alerts where `cwo budget alert set`
    // does by default (50, 90, 100 %), on the same scope.
    let main = std::fs::read_to_string(format!("{dir}/main.tf")).unwrap();
    let budget = &main[main
        .find("resource \"google_billing_budget\"")
        .expect("the budget resource")..];
    assert!(
        budget.contains("count           = var.billing_account == \"\" ? 0 : 1"),
        "{budget}"
    );
    assert!(
        main.contains("budget_thresholds = [0.5, 0.9, 1.0]"),
        "{main}"
    );
    assert!(
        budget.contains("display_name    = \"cwo: ${var.project}\""),
        "{budget}"
    );
    assert!(
        budget.contains("labels          = { \"cwo-managed\" = \"true\" }"),
        "{budget}"
    );
    assert!(
        budget.contains("spend_basis       = \"CURRENT_SPEND\""),
        "{budget}"
    );
}

/// The shipped module labels the boot disk with the worker's identity labels, and only those:
/// a label that changes during the worker's life (its expiry, the reaper's marks) must not reach
/// the disk, where older google providers would replace the whole VM for it.
#[test]
fn the_shipped_module_labels_the_boot_disk() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/terraform");
    let main = std::fs::read_to_string(format!("{dir}/main.tf")).unwrap();
    let init = main
        .split_once("initialize_params {")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(block, _)| block)
        .expect("main.tf has a boot_disk.initialize_params block");
    assert!(
        init.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["labels", "=", "local.disk_labels"]),
        "boot_disk.initialize_params sets labels = local.disk_labels:{init}"
    );
    if !terraform() {
        eprintln!("skipped evaluating local.disk_labels: terraform is not on PATH");
        return;
    }
    // Evaluate the module's own `locals` block against the labels cwo passes (no provider is
    // needed for that, so nothing is downloaded).
    let locals = main
        .split_once("\nlocals {")
        .and_then(|(_, rest)| rest.split_once("\n}\n"))
        .map(|(block, _)| format!("locals {{{block}\n}}\n"))
        .expect("main.tf has a top-level locals block");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("locals.tf"), locals).unwrap();
    std::fs::copy(
        format!("{dir}/variables.tf"),
        tmp.path().join("variables.tf"),
    )
    .unwrap();
    let labels = serde_json::json!({
        "cwo-managed": "true", "cwo-project": "proj", "cwo-worker": "cwo-proj-abc123",
        "cwo-machine": "e2-micro", "cwo-expires-at": "1900000000", "cwo-reap-marked": "1800000000",
    });
    std::fs::write(
        tmp.path().join("terraform.tfvars.json"),
        serde_json::json!({
            "name": "cwo-proj-abc123", "project": "p", "zone": "us-central1-a",
            "ssh_source": "127.0.0.1/32", "ssh_public_key": "ssh-ed25519 AAAA", "labels": labels,
            "startup_script": "",
        })
        .to_string(),
    )
    .unwrap();
    let out = Command::new("terraform")
        .arg(format!("-chdir={}", tmp.path().display()))
        .arg("console")
        .env("CHECKPOINT_DISABLE", "1")
        .env("TF_IN_AUTOMATION", "1")
        .env("TF_INPUT", "0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"jsonencode(local.disk_labels)\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "terraform console: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The console prints the JSON text as an HCL string literal: a JSON string itself.
    let printed: String =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let disk: serde_json::Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(
        disk,
        serde_json::json!({"cwo-managed": "true", "cwo-project": "proj", "cwo-worker": "cwo-proj-abc123"})
    );
}
