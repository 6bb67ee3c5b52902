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
    let env = TestEnv::new();
    let sshd = Sshd::start(&env.tmp.path().join("sshd"))?;
    let fake = FakeGce::start(
        "proj-test",
        "127.0.0.1",
        Some(sshd.dir.join("authorized_keys")),
    );
    let host_key = std::fs::read_to_string(sshd.dir.join("host_key.pub")).unwrap();
    fake.set_host_key(Some(host_key.trim().to_string()));
    let top = format!(
        "provider = \"gcp\"\n[gcp]\nproject = \"proj-test\"\nendpoint = {:?}\ncredentials = \"anonymous\"\nssh_source = \"127.0.0.1/32\"\nssh_user = {:?}\nssh_port = {}\nzones = [\"zone-a\", \"zone-b\"]\n{gcp_extra}\n[ssh]\nworkspace = {:?}\nconnect_timeout = \"20s\"\n",
        fake.url,
        sshd.user,
        sshd.port,
        env.tmp.path().join("vm-ws").display().to_string(),
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
    let in_4h = chrono::Utc::now().timestamp() + 4 * 3600;
    assert!((in_4h - expires).abs() < 120, "{expires}");
    assert_eq!(vm["scheduling"]["maxRunDuration"]["seconds"], "14400");
    assert_eq!(vm["scheduling"]["instanceTerminationAction"], "DELETE");
    assert_eq!(vm["scheduling"]["provisioningModel"], "STANDARD");
    assert!(
        vm.get("serviceAccounts")
            .is_none_or(|s| s.as_array().is_some_and(|a| a.is_empty())),
        "no service account: {vm}"
    );
    assert_eq!(vm["machineType"], "zones/zone-a/machineTypes/e2-micro");
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
    g.fake.faults().capacity_zones.insert("zone-a".into());
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
            "zones/zone-a/machineTypes/e2-micro",
            "zones/zone-b/machineTypes/e2-micro"
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
            "POST /compute/v1/projects/proj-test/zones/zone-a/instances".into(),
            500,
        ));
        f.http.push_back((
            "POST /compute/v1/projects/proj-test/zones/zone-a/instances".into(),
            429,
        ));
        f.http.push_back(("DELETE /compute".into(), 500));
        f.http.push_back((
            "GET /compute/v1/projects/proj-test/zones/zone-a/operations".into(),
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
        .filter(|r| r.method == "POST" && r.path.contains("zones/zone-a/instances?"))
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
    let name = g.env.cwo(&["up"]).ok().stdout.trim().to_string();
    g.fake.faults().delete_op_errors = 1000;
    let down = g.env.cwo(&["down"]);
    assert_eq!(down.code, 1, "{}", down.stderr);
    assert!(
        down.stderr.contains(&format!(
            "gcloud compute instances delete {name} --zone zone-a --project proj-test"
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
