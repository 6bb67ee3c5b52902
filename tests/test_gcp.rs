//! The gcp provider against a fake Compute API whose VMs' external IP leads to a test sshd.

use std::time::Duration;

use serde_json::Value;

use crate::common::fake_gce::FakeGce;
use crate::common::sshd::Sshd;
use crate::common::{TestEnv, kill, wait_for};

pub struct Gcp {
    pub env: TestEnv,
    pub sshd: Sshd,
    pub fake: FakeGce,
}

const COMMIT: &str =
    r#"echo "working on $CWO_TASK_ID"; git commit -q --allow-empty -m "$CWO_TASK_ID""#;

/// A project whose workers are GCE VMs on the fake, reachable through the test sshd.
pub fn gcp(gcp_extra: &str, body: &str, agent_extra: &str) -> Option<Gcp> {
    gcp_with(gcp_extra, body, agent_extra, false)
}

/// Like `gcp`; with `default_workspace` the settings leave `ssh.workspace` at its shipped
/// default (relative to the login's home, here a directory in the test's temp dir).
pub fn gcp_with(
    gcp_extra: &str,
    body: &str,
    agent_extra: &str,
    default_workspace: bool,
) -> Option<Gcp> {
    let env = TestEnv::new();
    let sshd = if default_workspace {
        Sshd::start_with_home(
            &env.tmp.path().join("sshd"),
            &env.tmp.path().join("vm-home"),
        )?
    } else {
        Sshd::start(&env.tmp.path().join("sshd"))?
    };
    let workspace = if default_workspace {
        String::new()
    } else {
        format!(
            "workspace = {:?}\n",
            env.tmp.path().join("vm-ws").display().to_string()
        )
    };
    let fake = FakeGce::start(
        "proj-test",
        "127.0.0.1",
        Some(sshd.dir.join("authorized_keys")),
    );
    let host_key = std::fs::read_to_string(sshd.dir.join("host_key.pub")).unwrap();
    fake.set_host_key(Some(host_key.trim().to_string()));
    let top = format!(
        "provider = \"gcp\"\n[gcp]\nproject = \"proj-test\"\nendpoint = {:?}\ncredentials = \"anonymous\"\nssh_source = \"127.0.0.1/32\"\nssh_user = {:?}\nssh_port = {}\nzones = [\"us-central1-a\", \"us-central1-b\"]\n{gcp_extra}\n[ssh]\n{workspace}connect_timeout = \"20s\"\n# The VMs are the test sshd on this machine: nothing to bootstrap.\n[bootstrap]\nmethod = \"none\"\n",
        fake.url, sshd.user, sshd.port,
    );
    env.agent_with(&top, body, agent_extra);
    Some(Gcp { env, sshd, fake })
}

fn inserts(fake: &FakeGce) -> Vec<Value> {
    fake.log()
        .into_iter()
        .filter(|r| {
            r.method == "POST" && r.path.contains("/instances?") && !r.path.contains("setLabels")
        })
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect()
}

#[test]
fn the_whole_loop_runs_on_a_gce_vm() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let id = g.env.add(&["on a VM"]);
    let run = g.env.cwo(&["run", "--once"]).ok();
    assert_eq!(g.env.ball(&id)["state"], "complete", "{}", run.stderr);
    assert!(
        g.fake.vm_names().is_empty(),
        "the VM is deleted: {:?}",
        g.fake.vm_names()
    );
    let bodies = inserts(&g.fake);
    assert_eq!(bodies.len(), 1);
    let vm = &bodies[0];
    let name = vm["name"].as_str().unwrap();
    assert!(name.starts_with("cwo-proj-"), "{name}");
    assert_eq!(vm["labels"]["cwo-managed"], "true");
    assert_eq!(vm["labels"]["cwo-project"], "proj");
    assert_eq!(vm["labels"]["cwo-worker"], name);
    let expires: i64 = vm["labels"]["cwo-expires-at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let in_90m = chrono::Utc::now().timestamp() + 90 * 60;
    assert!((in_90m - expires).abs() < 120, "{expires}");
    assert_eq!(vm["scheduling"]["maxRunDuration"]["seconds"], "5400");
    assert_eq!(vm["scheduling"]["instanceTerminationAction"], "DELETE");
    assert_eq!(vm["scheduling"]["provisioningModel"], "STANDARD");
    assert!(
        vm.get("serviceAccounts")
            .is_none_or(|s| s.as_array().is_some_and(|a| a.is_empty())),
        "no service account: {vm}"
    );
    assert_eq!(
        vm["machineType"],
        "zones/us-central1-a/machineTypes/e2-micro"
    );
    assert_eq!(vm["tags"]["items"][0], "cwo-ssh-proj");
    assert_eq!(vm["disks"][0]["autoDelete"], true);
    let meta: std::collections::HashMap<String, String> = vm["metadata"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["key"].as_str().unwrap().to_string(),
                i["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(meta["ssh-keys"].starts_with(&format!("{}:ssh-ed25519 ", g.sshd.user)));
    assert_eq!(meta["block-project-ssh-keys"], "TRUE");
    assert_eq!(meta["enable-oslogin"], "FALSE");
    assert_eq!(meta["enable-guest-attributes"], "TRUE");
    assert!(meta.contains_key("startup-script") && meta.contains_key("user-data"));
    // The insert carried a request id; the firewall lets SSH in from the controller only.
    assert!(
        g.fake
            .log()
            .iter()
            .any(|r| r.method == "POST" && r.path.contains("requestId="))
    );
    let fw = g.fake.firewall("cwo-ssh-proj").expect("firewall rule");
    assert_eq!(fw["sourceRanges"], serde_json::json!(["127.0.0.1/32"]));
    assert_eq!(fw["targetTags"], serde_json::json!(["cwo-ssh-proj"]));
    assert_eq!(fw["allowed"][0]["ports"][0], g.sshd.port.to_string());
    // The host key came from guest attributes and was used (pinned) for the connection.
    let key = std::fs::read_to_string(g.sshd.dir.join("host_key.pub")).unwrap();
    let worker = g.env.journal("SELECT instance FROM workers");
    assert!(
        worker.contains(key.split_whitespace().nth(1).unwrap()),
        "{worker}"
    );
    // The worker's own key, private, in the state dir.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(g.env.state.join("keys").join(name))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(g.env.journal("SELECT count(*) FROM ledger"), "1");
}

#[test]
fn capacity_falls_through_to_the_next_zone() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    g.fake
        .faults()
        .capacity_zones
        .insert("us-central1-a".into());
    let id = g.env.add(&["zone b"]);
    g.env.cwo(&["run", "--once"]).ok();
    assert_eq!(g.env.ball(&id)["state"], "complete");
    let zones: Vec<String> = inserts(&g.fake)
        .iter()
        .map(|b| b["machineType"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        zones,
        [
            "zones/us-central1-a/machineTypes/e2-micro",
            "zones/us-central1-b/machineTypes/e2-micro"
        ]
    );
}

#[test]
fn quota_stops_with_a_named_error() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    g.fake.faults().insert_403 = Some("quotaExceeded".into());
    g.env.add(&["no quota"]);
    let run = g.env.cwo(&["run", "--once"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("quota exceeded"), "{}", run.stderr);
    assert!(g.fake.vm_names().is_empty());
    assert_eq!(g.env.journal("SELECT state FROM workers"), "deleted");
}

#[test]
fn transient_errors_are_retried_with_the_same_request_id() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    {
        let mut f = g.fake.faults();
        f.http.push_back((
            "POST /compute/v1/projects/proj-test/zones/us-central1-a/instances".into(),
            500,
        ));
        f.http.push_back((
            "POST /compute/v1/projects/proj-test/zones/us-central1-a/instances".into(),
            429,
        ));
        f.http.push_back(("DELETE /compute".into(), 500));
        f.http.push_back((
            "GET /compute/v1/projects/proj-test/zones/us-central1-a/operations".into(),
            502,
        ));
        f.delete_op_errors = 1;
    }
    let id = g.env.add(&["flaky api"]);
    let run = g.env.cwo(&["run", "--once"]).ok();
    assert_eq!(g.env.ball(&id)["state"], "complete", "{}", run.stderr);
    assert!(g.fake.vm_names().is_empty());
    let ids: Vec<String> = g
        .fake
        .log()
        .iter()
        .filter(|r| r.method == "POST" && r.path.contains("zones/us-central1-a/instances?"))
        .map(|r| {
            r.path
                .split("requestId=")
                .nth(1)
                .unwrap()
                .split('&')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        ids.len() >= 2 && ids.iter().all(|i| i == &ids[0]),
        "{ids:?}"
    );
}

#[test]
fn a_delete_that_keeps_failing_exits_nonzero_with_the_gcloud_command() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    g.env.top_setting("teardown_timeout = \"3s\"");
    let name = g.env.cwo(&["up"]).ok().stdout.trim().to_string();
    g.fake.faults().delete_op_errors = 1000;
    let down = g.env.cwo(&["down"]);
    assert_eq!(down.code, 1, "{}", down.stderr);
    assert!(
        down.stderr.contains(&format!(
            "gcloud compute instances delete {name} --zone us-central1-a --project proj-test"
        )),
        "{}",
        down.stderr
    );
    assert_eq!(g.fake.vm_names(), vec![name.clone()]);
    // It still knows: the next `down` succeeds once the API does.
    g.fake.faults().delete_op_errors = 0;
    g.env.cwo(&["down"]).ok();
    assert!(g.fake.vm_names().is_empty());
    assert_eq!(g.env.journal("SELECT state FROM workers"), "deleted");
}

#[test]
fn hidden_new_instances_are_never_created_twice() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    g.fake.faults().hide_new = Duration::from_millis(1500);
    let id = g.env.add(&["eventually consistent"]);
    g.env.cwo(&["run", "--once"]).ok();
    assert_eq!(g.env.ball(&id)["state"], "complete");
    assert_eq!(inserts(&g.fake).len(), 1);
    assert_eq!(g.env.journal("SELECT count(*) FROM workers"), "1");
}

#[test]
fn a_vm_deleted_outside_cwo_is_reported_by_status_and_down() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let name = g.env.cwo(&["up"]).ok().stdout.trim().to_string();
    g.fake.delete_externally(&name);
    let status = g.env.cwo(&["status"]).ok();
    assert!(
        status.stdout.contains("missing (deleted outside cwo?"),
        "{}",
        status.stdout
    );
    let down = g.env.cwo(&["down"]).ok();
    assert!(
        down.stderr
            .contains(&format!("worker {name} is already gone")),
        "{}",
        down.stderr
    );
    assert_eq!(
        g.env
            .journal("SELECT state, termination_reason FROM workers"),
        "deleted|gone"
    );
    let status = g.env.cwo(&["status"]).ok();
    assert!(status.stdout.contains("workers: none"), "{}", status.stdout);
}

#[test]
fn a_killed_controller_leaves_no_vm_after_the_next_run() {
    let Some(g) = gcp("", "echo started; sleep 30", "") else {
        return;
    };
    g.env.add(&["long"]);
    let child = g.env.spawn(&["run", "--once"]);
    assert!(wait_for(Duration::from_secs(30), || !g
        .fake
        .vm_names()
        .is_empty()
        && g.env.balls_in_progress()));
    std::thread::sleep(Duration::from_millis(500));
    kill(&child, "KILL");
    let _ = child.wait_with_output();
    assert_eq!(g.fake.vm_names().len(), 1);
    // The next `down` (or `run`, or `reap`) finds it through the journal and deletes it.
    let down = g.env.cwo(&["down"]).ok();
    assert!(
        down.stderr.contains("1 worker(s) torn down"),
        "{}",
        down.stderr
    );
    assert!(g.fake.vm_names().is_empty());
    assert_eq!(g.env.journal("SELECT state FROM workers"), "deleted");
}

impl TestEnv {
    fn balls_in_progress(&self) -> bool {
        std::fs::read_to_string(self.balls_path()).is_ok_and(|t| t.contains("\"in_progress\""))
    }
}

#[test]
fn up_plan_shows_the_spec_and_cost_and_creates_nothing() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let plan = g.env.cwo(&["up", "--plan", "--format", "json"]).ok().json();
    assert_eq!(plan["schema_version"], 1);
    let p = &plan["plan"];
    assert_eq!(p["provider"], "gcp");
    assert_eq!(p["ttl"], "1h 30m");
    assert_eq!(
        p["instance"]["scheduling"]["maxRunDuration"]["seconds"],
        "5400"
    );
    assert_eq!(
        p["instance"]["scheduling"]["instanceTerminationAction"],
        "DELETE"
    );
    assert_eq!(p["instance"]["labels"]["cwo-managed"], "true");
    assert_eq!(p["firewall"]["source_ranges"][0], "127.0.0.1/32");
    let total = p["hourly_cost_usd"]["total"].as_f64().unwrap();
    assert!(
        (total - (0.00838 + 0.4 / 730.0 + 0.005)).abs() < 1e-9,
        "{total}"
    );
    let human = g.env.cwo(&["up", "--plan"]).ok().stdout;
    assert!(
        human.contains("expected list cost: $0.01393/hour"),
        "{human}"
    );
    assert!(g.fake.log().is_empty(), "no API call: {:?}", g.fake.log());
    assert!(g.fake.vm_names().is_empty());
}

#[test]
fn ttl_none_must_be_explicit_and_is_honoured() {
    let Some(g) = gcp("ttl = \"none\"", COMMIT, "") else {
        return;
    };
    let plan = g.env.cwo(&["up", "--plan", "--format", "json"]).ok().json();
    assert!(
        plan["plan"]["instance"]["scheduling"]
            .get("maxRunDuration")
            .is_none()
    );
    assert_eq!(
        plan["plan"]["instance"]["labels"]["cwo-expires-at"],
        "never"
    );
    let g2 = gcp("ttl = \"10s\"", COMMIT, "").unwrap();
    let run = g2.env.cwo(&["up", "--plan"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("between 30s and 120 days"),
        "{}",
        run.stderr
    );
}

/// The boot disk bills too: it carries the worker's identity labels (not the VM's expiry), and
/// it goes with its VM.
#[test]
fn the_boot_disk_carries_the_workers_labels() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let name = g.env.cwo(&["up"]).ok().stdout.trim().to_string();
    let expected =
        serde_json::json!({"cwo-managed": "true", "cwo-project": "proj", "cwo-worker": name});
    let bodies = inserts(&g.fake);
    assert_eq!(bodies.len(), 1);
    assert_eq!(
        bodies[0]["disks"][0]["initializeParams"]["labels"], expected,
        "{}",
        bodies[0]["disks"]
    );
    let disks = g.fake.disks();
    assert_eq!(disks.len(), 1, "{disks:?}");
    assert_eq!(disks[0]["name"], name.as_str());
    assert_eq!(disks[0]["labels"], expected);
    g.env.cwo(&["down"]).ok();
    assert_eq!(
        g.fake.disks(),
        Vec::<Value>::new(),
        "the disk went with its VM"
    );
}

/// `up --plan` prints the body `cwo up` then sends, field for field: only what is drawn at
/// creation differs (the name, the worker's key, the expiry counted from the insert).
#[test]
fn up_plan_prints_the_body_up_sends() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let plan = g.env.cwo(&["up", "--plan", "--format", "json"]).ok().json();
    let name = g.env.cwo(&["up"]).ok().stdout.trim().to_string();
    let sent = inserts(&g.fake).remove(0);
    let planned = redact_created(
        plan["plan"]["instance"].clone(),
        "cwo-proj-<6 hex>",
        &g.sshd.user,
    );
    let sent = redact_created(sent, &name, &g.sshd.user);
    assert_eq!(planned, sent, "plan:\n{planned:#}\nsent:\n{sent:#}");
    assert_eq!(sent["labels"]["cwo-machine"], "e2-micro");
}

/// `body` with the values drawn at creation replaced by placeholders, after checking their form:
/// the worker's name (`name`) everywhere, the expiry (about 90 minutes from now), the worker key.
fn redact_created(body: Value, name: &str, user: &str) -> Value {
    let mut body: Value = serde_json::from_str(&body.to_string().replace(name, "[name]")).unwrap();
    let expires: i64 = body["labels"]["cwo-expires-at"]
        .as_str()
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("cwo-expires-at: {}", body["labels"]));
    let in_90m = chrono::Utc::now().timestamp() + 90 * 60;
    assert!((in_90m - expires).abs() < 120, "{expires}");
    body["labels"]["cwo-expires-at"] = Value::from("[expiry]");
    let keys = body["metadata"]["items"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .filter(|i| i["key"] == "ssh-keys");
    for item in keys {
        let value = item["value"].as_str().unwrap();
        assert!(
            value.starts_with(&format!("{user}:ssh-ed25519 ")),
            "{value}"
        );
        item["value"] = Value::from(format!("{user}:ssh-ed25519 [worker key]"));
    }
    body
}

fn labels(project: &str, expires: &str) -> Value {
    serde_json::json!({"cwo-managed": "true", "cwo-project": project, "cwo-expires-at": expires, "cwo-machine": "e2-micro"})
}

#[test]
fn reap_marks_then_deletes_what_should_not_exist() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    std::fs::write(
        g.env.project.join("cwo.toml"),
        format!(
            "reap_grace = \"1s\"\n{}",
            std::fs::read_to_string(g.env.project.join("cwo.toml")).unwrap()
        ),
    )
    .unwrap();
    let future = (chrono::Utc::now().timestamp() + 3600).to_string();
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let now = chrono::Utc::now().to_rfc3339();
    let f = &g.fake;
    f.add_vm(
        "us-central1-a",
        "cwo-other-expired",
        labels("other", "1000"),
        &hour_ago,
        "RUNNING",
    );
    f.add_vm(
        "us-central1-a",
        "cwo-proj-stopped",
        labels("proj", &future),
        &hour_ago,
        "TERMINATED",
    );
    f.add_vm(
        "us-central1-b",
        "cwo-proj-orphan",
        labels("proj", &future),
        &hour_ago,
        "RUNNING",
    );
    f.add_vm(
        "us-central1-a",
        "cwo-proj-young",
        labels("proj", &future),
        &now,
        "RUNNING",
    );
    let mut keep = labels("proj", "1000");
    keep["cwo-keep"] = "true".into();
    f.add_vm("us-central1-a", "cwo-proj-keep", keep, &hour_ago, "RUNNING");
    f.add_vm(
        "us-central1-a",
        "cwo-other-fine",
        labels("other", &future),
        &hour_ago,
        "RUNNING",
    );

    // Without --yes: a report, no change.
    let dry = g.env.cwo(&["reap"]).ok();
    assert!(dry.stdout.contains("dry run"), "{}", dry.stdout);
    assert!(
        f.vm("cwo-proj-orphan").unwrap()["labels"]
            .get("cwo-reap-marked")
            .is_none()
    );

    let first = g
        .env
        .cwo(&["reap", "--yes", "--format", "json"])
        .ok()
        .json();
    let action = |doc: &Value, name: &str| {
        doc["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["worker"] == name)
            .unwrap()["action"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for name in ["cwo-other-expired", "cwo-proj-orphan"] {
        assert_eq!(action(&first, name), "mark", "{name}: {first}");
    }
    // A stopped VM (its TTL no longer runs, its disk is billed) is no one's: deleted at once.
    assert_eq!(action(&first, "cwo-proj-stopped"), "deleted", "{first}");
    for name in ["cwo-proj-young", "cwo-proj-keep", "cwo-other-fine"] {
        assert_eq!(action(&first, name), "keep", "{name}");
    }
    assert_eq!(f.vm_names().len(), 5, "marking deletes nothing");
    std::thread::sleep(Duration::from_millis(1100));
    let second = g
        .env
        .cwo(&["reap", "--yes", "--format", "json"])
        .ok()
        .json();
    for name in ["cwo-other-expired", "cwo-proj-orphan"] {
        assert_eq!(action(&second, name), "deleted", "{name}: {second}");
    }
    let mut left = f.vm_names();
    left.sort();
    assert_eq!(left, ["cwo-other-fine", "cwo-proj-keep", "cwo-proj-young"]);
    // This project's reaped VMs are in its ledger with their whole life.
    let ledger = g
        .env
        .journal("SELECT worker, termination_reason, seconds > 3500 FROM ledger ORDER BY worker");
    assert_eq!(ledger, "cwo-proj-orphan|reaped|1\ncwo-proj-stopped|idle|1");
}

#[test]
fn reap_deletes_nothing_when_the_list_fails() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let old = (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339();
    g.fake.add_vm(
        "us-central1-a",
        "cwo-proj-orphan",
        labels("proj", "1000"),
        &old,
        "RUNNING",
    );
    for _ in 0..10 {
        g.fake
            .faults()
            .http
            .push_back(("GET /compute/v1/projects/proj-test/aggregated".into(), 500));
    }
    let run = g.env.cwo(&["reap", "--yes"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("nothing was deleted"), "{}", run.stderr);
    g.fake.faults().http.clear();
    g.fake.faults().unreachable = vec!["zones/us-central1-b".into()];
    let run = g.env.cwo(&["reap", "--yes"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("unreachable: zones/us-central1-b"),
        "{}",
        run.stderr
    );
    assert_eq!(g.fake.vm_names(), ["cwo-proj-orphan"]);
    assert!(
        g.fake.vm("cwo-proj-orphan").unwrap()["labels"]
            .get("cwo-reap-marked")
            .is_none()
    );
}

#[test]
fn reap_counts_a_vm_that_vanished_mid_pass_as_gone_not_failed() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let old = hour_ago.to_rfc3339();
    let future = (chrono::Utc::now().timestamp() + 3600).to_string();
    let f = &g.fake;
    // Expired: each is marked on this pass, but someone deletes it first.
    f.add_vm(
        "us-central1-a",
        "cwo-other-label404",
        labels("other", "1000"),
        &old,
        "RUNNING",
    );
    f.add_vm(
        "us-central1-b",
        "cwo-other-lookup404",
        labels("other", "1000"),
        &old,
        "RUNNING",
    );
    f.add_vm(
        "us-central1-a",
        "cwo-proj-expired",
        labels("proj", "1000"),
        &old,
        "RUNNING",
    );
    // Marked an hour ago: deleted on this pass, but it is gone before the delete call.
    let mut marked = labels("other", "1000");
    marked["cwo-reap-marked"] = (hour_ago.timestamp()).to_string().into();
    f.add_vm("us-central1-a", "cwo-other-marked", marked, &old, "RUNNING");
    // Marked, but no longer a candidate: unmarked on this pass, but it is gone first.
    let mut unmark = labels("other", &future);
    unmark["cwo-reap-marked"] = (hour_ago.timestamp()).to_string().into();
    f.add_vm("us-central1-a", "cwo-other-unmark", unmark, &old, "RUNNING");
    // Untouched by any of that: still marked on the same pass.
    f.add_vm(
        "us-central1-b",
        "cwo-other-stays",
        labels("other", "1000"),
        &old,
        "RUNNING",
    );
    {
        // This project's expired worker is journaled: its row must be closed, not left open.
        let j = cwo::journal::Journal::open(&g.env.state).unwrap();
        j.worker_intent("cwo-proj-expired", "gcp", "e2-micro", "rid", "{}")
            .unwrap();
        j.worker_ready("cwo-proj-expired", hour_ago, "{}").unwrap();
    }
    f.faults().vanish_on = [
        // 404 from the setLabels call itself.
        ("cwo-other-label404/setLabels", "cwo-other-label404"),
        ("cwo-proj-expired/setLabels", "cwo-proj-expired"),
        ("cwo-other-unmark/setLabels", "cwo-other-unmark"),
        // Gone before set_labels even finds it (the lookup answers 404).
        (
            "GET /compute/v1/projects/proj-test/zones/us-central1-b/instances/cwo-other-lookup404",
            "cwo-other-lookup404",
        ),
        // Found, then gone before the DELETE call.
        (
            "DELETE /compute/v1/projects/proj-test/zones/us-central1-a/instances/cwo-other-marked",
            "cwo-other-marked",
        ),
    ]
    .map(|(call, vm)| (call.to_string(), vm.to_string()))
    .to_vec();

    let run = g.env.cwo(&["reap", "--yes", "--format", "json"]);
    assert_eq!(run.code, 0, "gone is done, not a failure: {run:?}");
    assert!(
        f.faults().vanish_on.is_empty(),
        "every VM vanished mid-pass"
    );
    let doc = run.json();
    assert_eq!(doc["failed"], 0, "{doc}");
    let action = |name: &str| {
        doc["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["worker"] == name)
            .unwrap_or_else(|| panic!("{name} in {doc}"))["action"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for name in [
        "cwo-other-label404",
        "cwo-other-lookup404",
        "cwo-proj-expired",
        "cwo-other-marked",
        "cwo-other-unmark",
    ] {
        assert_eq!(action(name), "gone", "{name}: {doc}");
    }
    assert_eq!(action("cwo-other-stays"), "mark", "{doc}");
    assert!(
        f.vm("cwo-other-stays").unwrap()["labels"]
            .get("cwo-reap-marked")
            .is_some()
    );
    assert!(
        run.stderr
            .contains("5 worker(s) vanished before cwo got to them")
            && !run.stderr.contains("error"),
        "{}",
        run.stderr
    );
    // The journaled worker's life is closed in the ledger on this same pass.
    assert_eq!(
        g.env
            .journal("SELECT worker, termination_reason FROM ledger"),
        "cwo-proj-expired|gone"
    );

    // The table says so too, and the exit code stays 0.
    f.add_vm(
        "us-central1-a",
        "cwo-other-late",
        labels("other", "1000"),
        &old,
        "RUNNING",
    );
    f.faults().vanish_on = vec![("cwo-other-late/setLabels".into(), "cwo-other-late".into())];
    let table = g.env.cwo(&["reap", "--yes"]);
    assert_eq!(table.code, 0, "{table:?}");
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.trim_start().starts_with("gone") && l.contains("cwo-other-late")),
        "{}",
        table.stdout
    );
}

#[test]
fn schedule_installs_one_idempotent_crontab_entry() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let bin = g.env.tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let tab = g.env.tmp.path().join("crontab.txt");
    std::fs::write(
        bin.join("crontab"),
        "#!/bin/sh\ncase \"$1\" in\n-l) [ -f \"$CRONTAB_FILE\" ] && exec cat \"$CRONTAB_FILE\"; echo 'no crontab for user' >&2; exit 1 ;;\n-) exec cat > \"$CRONTAB_FILE\" ;;\nesac\nexit 2\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(bin.join("crontab"))
        .status()
        .unwrap();
    std::fs::write(&tab, "0 3 * * * backup.sh\n").unwrap();
    let cron = |args: &[&str]| -> crate::common::Run {
        g.env
            .cmd(args)
            .env(
                "PATH",
                format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
            )
            .env("CRONTAB_FILE", &tab)
            .output()
            .unwrap()
            .into()
    };
    cron(&["schedule", "install", "--every", "5"]).ok();
    cron(&["schedule", "install", "--every", "5"]).ok();
    let text = std::fs::read_to_string(&tab).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.starts_with("0 3 * * * backup.sh\n"));
    let line = text.lines().nth(1).unwrap();
    assert!(
        line.starts_with("*/5 * * * * cd ")
            && line.contains(" reap --yes ")
            && line.contains("reap.log"),
        "{line}"
    );
    assert_eq!(cron(&["schedule", "show"]).ok().stdout.trim(), line);
    cron(&["schedule", "install", "--every", "15"]).ok();
    assert!(std::fs::read_to_string(&tab).unwrap().contains("*/15 "));
    cron(&["schedule", "remove"]).ok();
    assert_eq!(
        std::fs::read_to_string(&tab).unwrap(),
        "0 3 * * * backup.sh\n"
    );
}

#[test]
fn secrets_reach_the_agent_only_and_are_masked_everywhere() {
    let Some(g) = gcp(
        "",
        r#"echo "key is $API_KEY, token is $TOKEN"
[ "$API_KEY" = "sm-value-1234" ] && [ "$TOKEN" = "env-value-5678" ] && git commit -q --allow-empty -m ok"#,
        "env = { API_KEY = \"sm://projects/proj-test/secrets/api-key/versions/latest\", TOKEN = \"env:APP_TEST_TOKEN\" }",
    ) else {
        return;
    };
    std::fs::write(
        g.env.project.join("cwo.toml"),
        std::fs::read_to_string(g.env.project.join("cwo.toml"))
            .unwrap()
            .replace(
                "credentials = \"anonymous\"",
                &format!(
                    "credentials = \"anonymous\"\nsecrets_endpoint = {:?}",
                    g.fake.url
                ),
            ),
    )
    .unwrap();
    g.fake.set_secret("api-key", b"sm-value-1234");
    let id = g.env.add(&["uses secrets"]);
    let run: crate::common::Run = g
        .env
        .cmd(&["run", "--once"])
        .env("APP_TEST_TOKEN", "env-value-5678")
        .output()
        .unwrap()
        .into();
    let run = run.ok();
    assert_eq!(g.env.ball(&id)["state"], "complete", "{}", run.stderr);
    assert!(
        run.stderr
            .contains("key is *************, token is **************"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("sm-value-1234") && !run.stderr.contains("env-value-5678"));
    let log = g.env.cwo(&["logs", &id]).ok().stdout;
    assert!(
        log.contains("key is *************") && !log.contains("sm-value"),
        "{log}"
    );
    // Never in the instance metadata, the journal, or any file cwo wrote on the VM (the agent's
    // own log holds what the agent chose to print, and dies with the VM's disk).
    for r in g.fake.log() {
        assert!(
            !r.body.contains("sm-value-1234") && !r.body.contains("env-value-5678"),
            "{r:?}"
        );
    }
    let grep = std::process::Command::new("grep")
        .args([
            "-rl",
            "--exclude=agent.log",
            "-e",
            "env-value-5678",
            "-e",
            "sm-value-1234",
        ])
        .arg(g.env.state.join("journal.sqlite"))
        .arg(g.env.tmp.path().join("vm-ws"))
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&grep.stdout)
    );
}

#[test]
fn a_missing_secret_stops_the_run_before_any_vm() {
    let Some(g) = gcp("", COMMIT, "env = { TOKEN = \"env:APP_TEST_NOT_SET\" }") else {
        return;
    };
    g.env.add(&["needs a token"]);
    let run = g.env.cwo(&["run", "--once"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("APP_TEST_NOT_SET is not set"),
        "{}",
        run.stderr
    );
    assert!(inserts(&g.fake).is_empty());
}

#[test]
fn a_controller_killed_before_insert_returns_leaves_no_vm() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    g.fake.faults().insert_delay = Duration::from_millis(1500);
    g.env.add(&["slow create"]);
    let child = g.env.spawn(&["run", "--once"]);
    assert!(wait_for(Duration::from_secs(20), || g
        .fake
        .log()
        .iter()
        .any(|r| r.method == "POST" && r.path.contains("/instances?"))));
    kill(&child, "KILL");
    let _ = child.wait_with_output();
    assert_eq!(
        g.env.journal("SELECT state FROM workers"),
        "intent",
        "written before the insert"
    );
    // The insert lands after the controller died.
    assert!(wait_for(Duration::from_secs(5), || g.fake.vm_names().len() == 1));
    std::fs::write(
        g.env.project.join("cwo.toml"),
        format!(
            "reap_grace = \"1s\"\n{}",
            std::fs::read_to_string(g.env.project.join("cwo.toml")).unwrap()
        ),
    )
    .unwrap();
    g.env.cwo(&["reap", "--yes"]).ok();
    std::thread::sleep(Duration::from_millis(1100));
    let second = g.env.cwo(&["reap", "--yes"]).ok();
    assert!(second.stdout.contains("deleted"), "{}", second.stdout);
    assert!(g.fake.vm_names().is_empty());
    assert_eq!(
        g.env
            .journal("SELECT state, termination_reason FROM workers"),
        "deleted|reaped"
    );
    assert_eq!(g.env.journal("SELECT count(*) FROM ledger"), "1");
}

#[test]
fn a_controller_killed_after_running_is_cleaned_by_the_next_run() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let name = g.env.cwo(&["up"]).ok().stdout.trim().to_string();
    // `up` leaves the worker for `run` to adopt: the next run uses it, then deletes it.
    let id = g.env.add(&["adopted"]);
    let run = g.env.cwo(&["run", "--once"]).ok();
    assert!(
        run.stderr.contains(&format!("adopting worker {name}")),
        "{}",
        run.stderr
    );
    assert_eq!(g.env.ball(&id)["state"], "complete");
    assert!(g.fake.vm_names().is_empty());
    assert_eq!(inserts(&g.fake).len(), 1, "no second VM");
}

#[test]
fn doctor_checks_credentials_project_oslogin_firewall_quota_and_ttl() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let run = g.env.cwo(&["doctor", "--format", "json"]);
    let json = run.json();
    let by_name = crate::common::doctor_check;
    for name in [
        "credentials",
        "project",
        "os login",
        "firewall",
        "quota",
        "ttl",
    ] {
        assert_eq!(by_name(&json, name)["status"], "ok", "{name}: {json}");
    }
    assert_eq!(run.code, 0, "{}", run.stdout);
    g.fake.faults().cpus_quota = Some((24.0, 23.5));
    g.fake.faults().oslogin_forced = true;
    let run = g.env.cwo(&["doctor", "--format", "json"]);
    assert_eq!(run.code, 1);
    let json = run.json();
    assert_eq!(by_name(&json, "quota")["status"], "fail");
    assert!(
        by_name(&json, "quota")["fix"]
            .as_str()
            .unwrap()
            .contains("quota")
    );
    assert!(
        by_name(&json, "os login")["detail"]
            .as_str()
            .unwrap()
            .contains("enable-oslogin=TRUE")
    );
}

#[test]
fn a_controller_killed_mid_push_is_finished_by_the_next_run() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    // A slow remote: the push is in flight when the controller dies.
    let hook = g.env.origin.join("hooks/pre-receive");
    std::fs::write(&hook, "#!/bin/sh\nsleep 3\n").unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&hook)
        .status()
        .unwrap();
    let id = g.env.add(&["pushed twice?"]);
    let child = g.env.spawn(&["run", "--once"]);
    // This test's push, not another test's running at the same time.
    let receiving = format!("receive-pack.*{}", g.env.origin.display());
    assert!(wait_for(Duration::from_secs(30), || {
        std::process::Command::new("pgrep")
            .args(["-f", &receiving])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false)
    }));
    kill(&child, "KILL");
    let _ = child.wait_with_output();
    assert_eq!(g.fake.vm_names().len(), 1, "the VM outlived its controller");
    std::fs::remove_file(&hook).unwrap();
    let run = g.env.cwo(&["run", "--once"]).ok();
    assert!(
        run.stderr.contains("reattached to attempt 1"),
        "{}",
        run.stderr
    );
    assert_eq!(g.env.ball(&id)["state"], "complete");
    assert_eq!(g.env.remote_branches(), vec![format!("cwo/{id}")]);
    assert!(g.fake.vm_names().is_empty(), "no live VM");
    assert_eq!(
        g.env.journal("SELECT count(*) FROM attempts"),
        "1",
        "the agent ran once"
    );
}

#[test]
fn budget_check_counts_live_vms_and_enforce_deletes_them() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let two_hours_ago = (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339();
    g.fake.add_vm(
        "us-central1-a",
        "cwo-proj-live",
        labels("proj", "9999999999"),
        &two_hours_ago,
        "RUNNING",
    );
    let mut small = labels("proj", "9999999999");
    small["cwo-machine"] = "e2-small".into();
    g.fake.add_vm(
        "us-central1-b",
        "cwo-proj-small",
        small,
        &two_hours_ago,
        "RUNNING",
    );
    // The e2-micro's machine hours are free tier; the e2-small's are not.
    let ok = g
        .env
        .cwo(&["budget", "check", "--limit-usd", "1", "--period", "all"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let doc = ok.json();
    let expected = 2.0 * (0.005) + 2.0 * (0.01675 + 0.4 / 730.0 + 0.005);
    assert!(
        (doc["expected_usd"].as_f64().unwrap() - expected).abs() < 1e-3,
        "{doc}"
    );
    assert_eq!(doc["workers"].as_array().unwrap().len(), 2);
    assert!(doc["workers"][0]["running"].as_bool().unwrap());
    // Over budget with --enforce: the kill switch.
    let deny = g.env.cwo(&[
        "budget",
        "check",
        "--limit-usd",
        "0.01",
        "--period",
        "all",
        "--enforce",
    ]);
    assert_eq!(deny.code, 1, "{deny:?}");
    assert_eq!(deny.json()["enforced"].as_array().unwrap().len(), 2);
    assert!(g.fake.vm_names().is_empty());
    assert_eq!(
        g.env
            .journal("SELECT group_concat(termination_reason) FROM ledger"),
        "budget,budget"
    );
    // The provider's list failing means "cannot determine", never "within budget".
    for _ in 0..10 {
        g.fake
            .faults()
            .http
            .push_back(("GET /compute/v1/projects/proj-test/aggregated".into(), 500));
    }
    let unknown = g.env.cwo(&["budget", "check", "--limit-usd", "100"]);
    assert_eq!(unknown.code, 3, "{unknown:?}");
    assert_eq!(unknown.json()["status"], "unknown");
}

/// `budget check --enforce` that cannot delete a worker says so on stderr with the command that
/// deletes it by hand, and does not count it as deleted.
#[test]
fn an_enforced_delete_that_fails_prints_the_gcloud_command() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    g.env.top_setting("teardown_timeout = \"3s\"");
    let two_hours_ago = (chrono::Utc::now() - chrono::Duration::hours(2)).to_rfc3339();
    let mut small = labels("proj", "9999999999");
    small["cwo-machine"] = "e2-small".into();
    g.fake.add_vm(
        "us-central1-a",
        "cwo-proj-left",
        small,
        &two_hours_ago,
        "RUNNING",
    );
    g.fake.faults().delete_op_errors = 1000;
    let deny = g.env.cwo(&[
        "budget",
        "check",
        "--limit-usd",
        "0.01",
        "--period",
        "all",
        "--enforce",
    ]);
    assert_eq!(deny.code, 1, "{deny:?}");
    assert_eq!(deny.json()["enforced"][0]["deleted"], false);
    assert!(
        deny.stderr.contains(
            "gcloud compute instances delete cwo-proj-left --zone us-central1-a --project proj-test"
        ),
        "{}",
        deny.stderr
    );
    assert!(
        deny.stderr
            .contains("--enforce deleted 0 worker(s), 1 could not be deleted"),
        "{}",
        deny.stderr
    );
    assert_eq!(g.fake.vm_names(), vec!["cwo-proj-left".to_string()]);
}

/// With the native bootstrap (the default for gcp), the VM boots with the rendered script as
/// startup-script and user-data. The fake's VMs are this machine's loopback sshd, which cwo
/// refuses to bootstrap: the VM is deleted again and the error says why.
#[test]
fn vms_boot_with_the_bootstrap_and_this_machine_is_never_bootstrapped() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let up = g.env.cwo(&["--config", "bootstrap.method=native", "up"]);
    assert_eq!(up.code, 1, "{}", up.stderr);
    assert!(
        up.stderr.contains("refusing to bootstrap worker"),
        "{}",
        up.stderr
    );
    assert!(
        g.fake.vm_names().is_empty(),
        "the VM is deleted: {:?}",
        g.fake.vm_names()
    );
    let bodies = inserts(&g.fake);
    assert_eq!(bodies.len(), 1);
    let item = |k: &str| {
        bodies[0]["metadata"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["key"] == k)
            .and_then(|i| i["value"].as_str())
            .unwrap()
            .to_string()
    };
    let script = item("startup-script");
    assert_eq!(script, item("user-data"));
    assert!(
        script.starts_with("#!/bin/sh\n# Rendered by cwo"),
        "{script}"
    );
    assert!(
        script.contains("\nCWO_GCE=1\n"),
        "publishes the host key through guest attributes"
    );
    assert!(script.contains("\nCWO_LOGIN_USER="), "{script}");
    // The same script `cwo bootstrap script --gce` prints for this login.
    let printed = g
        .env
        .cwo(&["bootstrap", "script", "--gce", "--login-user", &g.sshd.user])
        .ok()
        .stdout;
    assert_eq!(printed, script);
    // `up --plan` shows the same metadata and the method.
    let plan = g
        .env
        .cwo(&[
            "--config",
            "bootstrap.method=native",
            "up",
            "--plan",
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(plan["plan"]["bootstrap"], "native");
    let planned = plan["plan"]["instance"]["metadata"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == "startup-script")
        .unwrap()["value"]
        .clone();
    assert_eq!(planned, script.as_str());
}

/// Issue 10 item 1, on Compute Engine without a bootstrap: the shipped default `ssh.workspace`
/// (relative to the login's home) delivers both balls.
#[test]
fn the_default_workspace_works_on_a_vm_without_bootstrap() {
    let Some(g) = gcp_with("", COMMIT, "", true) else {
        return;
    };
    let a = g.env.add(&["first"]);
    let b = g.env.add(&["second"]);
    let run = g.env.cwo(&["run", "--once"]).ok();
    for id in [&a, &b] {
        assert_eq!(g.env.ball(id)["state"], "complete", "{}", run.stderr);
    }
    assert!(
        g.env.tmp.path().join("vm-home/.cwo/workspaces").is_dir(),
        "{}",
        run.stderr
    );
    assert!(g.fake.vm_names().is_empty());
}

/// Issue 10 item 2: a worker deleted (and cut off) under a running task does not take the rest
/// of the queue with it: it is torn down, the next ball gets a new worker, and the interrupted
/// ball is retried there.
#[test]
fn a_worker_that_dies_mid_task_is_replaced_and_the_ball_retried() {
    let Some(mut g) = gcp(
        "",
        r#"if [ ! -e "$MARK" ]; then
  touch "$MARK"
  i=0; while [ ! -e "$MARK.release" ] && [ "$i" -lt 600 ]; do i=$((i + 1)); sleep 0.1; done
  exit 1
fi
git commit -q --allow-empty -m "$CWO_TASK_ID""#,
        "",
    ) else {
        return;
    };
    let mark = g.env.tmp.path().join("first-start");
    // The agent learns where the marker is through agent.env.
    let settings = std::fs::read_to_string(g.env.project.join("cwo.toml")).unwrap();
    std::fs::write(
        g.env.project.join("cwo.toml"),
        settings.replace(
            "[agent]\n",
            &format!(
                "[agent]\nenv = {{ MARK = {:?} }}\n",
                mark.display().to_string()
            ),
        ),
    )
    .unwrap();
    let a = g.env.add(&["interrupted", "--priority", "high"]);
    let b = g.env.add(&["the rest of the queue"]);
    let child = g.env.spawn(&["run", "--once"]);
    assert!(wait_for(Duration::from_secs(60), || mark.exists()));
    let first = g.fake.vm_names();
    assert_eq!(first.len(), 1);
    // A deleted VM answers nothing: its connections die and no new one is accepted (every fake
    // VM shares this sshd, so it listens again once the replacement has been created).
    g.fake.delete_externally(&first[0]);
    g.sshd.stop();
    assert!(wait_for(Duration::from_secs(60), || inserts(&g.fake).len() == 2));
    g.sshd.restart();
    let out = child.wait_with_output().unwrap();
    std::fs::write(format!("{}.release", mark.display()), "").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for id in [&a, &b] {
        assert_eq!(g.env.ball(id)["state"], "complete", "{stderr}");
    }
    assert!(
        stderr.contains(&format!("worker {} is gone", first[0])),
        "{stderr}"
    );
    assert_eq!(
        inserts(&g.fake).len(),
        2,
        "a new worker for the rest: {stderr}"
    );
    assert!(g.fake.vm_names().is_empty(), "{stderr}");
    assert_eq!(
        g.env
            .journal("SELECT count(*) FROM workers WHERE state != 'deleted'"),
        "0"
    );
}

/// Issue 10 item 4: after the first signal nothing new is claimed, whatever phase the loop is
/// in: a SIGINT while `instances.insert` is in flight lets the create finish (so the journal
/// can account for the VM), deletes the VM, and leaves the ball pending, its agent never run.
#[test]
fn a_signal_during_bring_up_claims_nothing() {
    let Some(g) = gcp(
        "",
        r#"touch "$0.ran"; git commit -q --allow-empty -m x"#,
        "",
    ) else {
        return;
    };
    g.fake.faults().insert_delay = Duration::from_millis(1500);
    let id = g.env.add(&["never claimed"]);
    let child = g.env.spawn(&["run", "--once"]);
    assert!(wait_for(Duration::from_secs(30), || {
        inserts(&g.fake).len() == 1
    }));
    kill(&child, "INT");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ball = g.env.ball(&id);
    assert_eq!(ball["state"], "pending", "{stderr}");
    assert!(
        !g.env.project.join("agents/agent.sh.ran").exists(),
        "the agent ran after the signal: {stderr}"
    );
    assert_eq!(
        g.env.journal("SELECT count(*) FROM attempts"),
        "0",
        "{stderr}"
    );
    assert!(g.fake.vm_names().is_empty(), "{stderr}");
    assert_eq!(
        g.env
            .journal("SELECT count(*) FROM workers WHERE state != 'deleted'"),
        "0",
        "{stderr}"
    );
}

/// Issue 10 item 5: a delete that keeps answering 503 is retried under one policy with one
/// deadline (`teardown_timeout`), saying so on stderr at every retry, then gives up with the exact
/// `gcloud` line and exit 1 — not three nested silent loops for a quarter of an hour.
#[test]
fn a_persistent_503_on_delete_reports_each_retry_and_gives_up_at_the_deadline() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    g.env.top_setting("teardown_timeout = \"4s\"");
    let name = g.env.cwo(&["up"]).ok().stdout.trim().to_string();
    g.fake
        .faults()
        .http
        .extend((0..10_000).map(|_| ("DELETE /compute".to_string(), 503)));
    let started = std::time::Instant::now();
    let down = g.env.cwo(&["down"]);
    let took = started.elapsed();
    assert_eq!(down.code, 1, "{}", down.stderr);
    assert!(
        took < Duration::from_secs(30),
        "the 4 s deadline was kept loosely at most: {took:?}\n{}",
        down.stderr
    );
    assert!(
        down.stderr.contains(&format!("delete of {name}: "))
            && down.stderr.contains("retry 1 in")
            && down.stderr.contains("retry 2 in"),
        "{}",
        down.stderr
    );
    assert!(
        down.stderr.contains(&format!(
            "gcloud compute instances delete {name} --zone us-central1-a --project proj-test"
        )),
        "{}",
        down.stderr
    );
    // Every DELETE reached the API once per retry: no hidden inner loop multiplies them.
    let deletes = g.fake.log().iter().filter(|r| r.method == "DELETE").count();
    assert!(deletes <= 8, "{deletes} DELETE calls in 4 s");
    g.fake.faults().http.clear();
    g.env.cwo(&["down"]).ok();
    assert!(g.fake.vm_names().is_empty());
}

/// Issue 10 item 6: one spurious 404 on delete while the VM is still listed: the delete is sent
/// again after a short check, not after polling for the whole confirmation window.
#[test]
fn a_spurious_404_on_delete_is_sent_again_promptly() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let name = g.env.cwo(&["up"]).ok().stdout.trim().to_string();
    g.fake
        .faults()
        .http
        .push_back(("DELETE /compute".to_string(), 404));
    let started = std::time::Instant::now();
    let down = g.env.cwo(&["down"]).ok();
    let took = started.elapsed();
    assert!(g.fake.vm_names().is_empty(), "{}", down.stderr);
    assert!(
        took < Duration::from_secs(60),
        "a spurious 404 cost {took:?}\n{}",
        down.stderr
    );
    assert!(
        down.stderr.contains(&format!("delete of {name}: ")),
        "{}",
        down.stderr
    );
    assert_eq!(g.env.journal("SELECT state FROM workers"), "deleted");
}

/// A controller killed while its `instances.insert` is still in flight, and a next run started
/// at once (the VM not visible yet): the next run deletes that VM as soon as it appears instead of
/// leaving it to a later `cwo reap` (found by the chaos test, seed 553411999).
#[test]
fn a_create_in_flight_when_its_controller_died_is_deleted_by_the_next_run() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    g.fake.faults().insert_delay = Duration::from_millis(2500);
    let id = g.env.add(&["after a crash"]);
    let child = g.env.spawn(&["run", "--once"]);
    assert!(wait_for(Duration::from_secs(30), || {
        inserts(&g.fake).len() == 1
    }));
    kill(&child, "KILL");
    let _ = child.wait_with_output();
    assert!(
        g.fake.vm_names().is_empty(),
        "the insert is still in flight"
    );
    g.fake.faults().insert_delay = Duration::ZERO;
    let run = g.env.cwo(&["run", "--once"]).ok();
    assert_eq!(g.env.ball(&id)["state"], "complete", "{}", run.stderr);
    assert!(
        g.fake.vm_names().is_empty(),
        "no VM left: {:?}\n{}",
        g.fake.vm_names(),
        run.stderr
    );
    assert!(
        run.stderr.contains("has appeared; deleting it"),
        "{}",
        run.stderr
    );
    assert_eq!(
        g.env
            .journal("SELECT count(*) FROM workers WHERE state != 'deleted'"),
        "0"
    );
}

/// The deletion deadline holds inside a call too: a delete whose operation never finishes (or
/// whose polls keep failing) gives up at `teardown_timeout`, not after the operation's own wait.
#[test]
fn a_delete_whose_operation_never_finishes_gives_up_at_the_deadline() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    g.env.top_setting("teardown_timeout = \"3s\"");
    let name = g.env.cwo(&["up"]).ok().stdout.trim().to_string();
    g.fake.faults().op_delay = Duration::from_secs(3600);
    let started = std::time::Instant::now();
    let down = g.env.cwo(&["down"]);
    let took = started.elapsed();
    assert_eq!(down.code, 1, "{}", down.stderr);
    assert!(took < Duration::from_secs(30), "{took:?}\n{}", down.stderr);
    assert!(
        down.stderr.contains("no answer within teardown_timeout")
            && down
                .stderr
                .contains(&format!("gcloud compute instances delete {name}")),
        "{}",
        down.stderr
    );
}

#[test]
fn status_shows_each_workers_zone_and_price_and_the_fleets_hourly_burn() {
    let Some(g) = gcp("", COMMIT, "") else { return };
    let name = g.env.cwo(&["up"]).ok().stdout.trim().to_string();
    let json = g.env.cwo(&["status", "--format", "json"]).ok().json();
    let w = &json["workers"][0];
    assert_eq!(w["name"], name.as_str());
    let zone = g.fake.vm(&name).unwrap()["zone"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(w["zone"], zone.as_str(), "{json:#}");
    let hourly = w["hourly_usd"].as_f64().expect("a catalog price");
    assert!(hourly > 0.0, "{json:#}");
    assert_eq!(json["fleet_hourly_usd"].as_f64().unwrap(), hourly);
    assert_eq!(json["unpriced_workers"], 0);
    let text = g.env.cwo(&["status"]).ok().stdout;
    assert!(
        text.contains(&format!("fleet: 1 worker(s), ${hourly:.4}/h list price")),
        "{text}"
    );
    assert!(text.contains(&format!(" {zone} ")), "{text}");
    g.env.cwo(&["down"]).ok();
}
