//! The gcp provider's `create_many` (one `regionInstances.bulkInsert`, then each worker's own
//! key by `setMetadata` and its `cwo-worker` label by `setLabels`, on the VM and on its boot
//! disk) against the fake Compute API, at the provider level: the orchestrator does not call it
//! yet.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use cwo::config::{GcpSettings, SshSettings};
use cwo::provider::gcp::GcpProvider;
use cwo::provider::{InstanceStatus, Provider, ProviderErrorKind, WorkerSpec};
use serde_json::Value;

use crate::common::fake_gce::FakeGce;
use crate::common::sshd::Sshd;

const PROJECT: &str = "proj-bulk";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn provider(fake: &FakeGce, keys: &Path, zones: &[&str], sshd: Option<&Sshd>) -> GcpProvider {
    let mut settings = GcpSettings {
        project: PROJECT.into(),
        endpoint: fake.url.clone(),
        credentials: "anonymous".into(),
        ssh_source: "127.0.0.1/32".into(),
        zones: zones.iter().map(|z| z.to_string()).collect(),
        ..GcpSettings::default()
    };
    if let Some(s) = sshd {
        settings.ssh_user = s.user.clone();
        settings.ssh_port = s.port;
    }
    GcpProvider::new(
        settings,
        SshSettings::default(),
        "bulk".into(),
        keys.to_path_buf(),
    )
}

/// Three workers as the orchestrator would ask for them: each its name, labels and key.
fn specs(keys: &[&str]) -> Vec<(WorkerSpec, String)> {
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            let name = format!("cwo-bulk-{i:06x}");
            let labels = BTreeMap::from([
                ("cwo-managed".to_string(), "true".to_string()),
                ("cwo-project".to_string(), "bulk".to_string()),
                ("cwo-worker".to_string(), name.clone()),
            ]);
            let spec = WorkerSpec {
                name,
                labels,
                machine_type: "e2-micro".into(),
            };
            (spec, key.to_string())
        })
        .collect()
}

const KEYS: [&str; 3] = [
    "5b0c7d1e-0000-4000-8000-000000000001",
    "5b0c7d1e-0000-4000-8000-000000000002",
    "5b0c7d1e-0000-4000-8000-000000000003",
];

/// The requests whose "METHOD path" contains `what`, with their JSON bodies.
fn calls(fake: &FakeGce, what: &str) -> Vec<(String, Value)> {
    fake.log()
        .into_iter()
        .filter(|r| format!("{} {}", r.method, r.path).contains(what))
        .map(|r| (r.path, serde_json::from_str(&r.body).unwrap_or(Value::Null)))
        .collect()
}

/// The public key (OpenSSH line) of the private key cwo keeps for a worker.
fn public_key(keys: &Path, name: &str) -> String {
    russh::keys::PrivateKey::read_openssh_file(keys.join(name))
        .unwrap()
        .public_key()
        .to_openssh()
        .unwrap()
}

/// The boot disk of VM `name` as the fake keeps it (Compute names it after the VM).
fn boot_disk(fake: &FakeGce, name: &str) -> Value {
    fake.disks()
        .into_iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no boot disk for {name}: {:?}", fake.disks()))
}

/// The labels a worker's VM and its boot disk carry (DESIGN invariant 3).
fn identity(name: &str) -> Value {
    serde_json::json!({"cwo-managed": "true", "cwo-project": "bulk", "cwo-worker": name})
}

/// The ssh-keys item of a Metadata body.
fn ssh_keys(metadata: &Value) -> Option<String> {
    metadata["items"]
        .as_array()?
        .iter()
        .find(|i| i["key"] == "ssh-keys")
        .map(|i| i["value"].as_str().unwrap().to_string())
}

#[test]
fn three_workers_come_from_one_bulk_insert_each_with_its_own_key() {
    let tmp = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&tmp.path().join("sshd"));
    let authorized = sshd.as_ref().map(|s| s.dir.join("authorized_keys"));
    let fake = FakeGce::start(PROJECT, "127.0.0.1", authorized);
    // The VMs publish a host key (wait_running waits for it): the sshd's, or any.
    let host_key = match &sshd {
        Some(s) => std::fs::read_to_string(s.dir.join("host_key.pub")).unwrap(),
        None => "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
            .into(),
    };
    fake.set_host_key(Some(host_key.trim().to_string()));
    let keys = tmp.path().join("keys");
    let p = provider(
        &fake,
        &keys,
        &["us-central1-a", "us-central1-b"],
        sshd.as_ref(),
    );
    let specs = specs(&KEYS);
    let rt = rt();
    let results = rt.block_on(p.create_many(&specs));
    let made: Vec<_> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("create_many: {e}")))
        .collect();
    let names: Vec<&str> = specs.iter().map(|(s, _)| s.name.as_str()).collect();
    assert_eq!(
        made.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        names,
        "one result per spec, in order"
    );

    // One bulk insert, no single insert; the shared body has nothing of one worker.
    let bulk = fake.bulk_calls();
    assert_eq!(bulk.len(), 1, "{bulk:?}");
    assert!(calls(&fake, "/instances?requestId").is_empty());
    let b = &bulk[0];
    assert_eq!(
        (b["count"].as_str(), b["minCount"].as_str()),
        (Some("3"), Some("1"))
    );
    let per: BTreeSet<&str> = b["perInstanceProperties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(per, names.iter().copied().collect());
    let props = &b["instanceProperties"];
    assert_eq!(props["machineType"], "e2-micro", "a bare name");
    assert_eq!(
        ssh_keys(&props["metadata"]),
        None,
        "no key in the shared body"
    );
    assert!(props["labels"].get("cwo-worker").is_none(), "{props}");
    assert_eq!(
        props["disks"][0]["initializeParams"]["labels"],
        serde_json::json!({"cwo-managed": "true", "cwo-project": "bulk"}),
        "the shared disk labels, no worker's"
    );
    assert_eq!(props["labels"]["cwo-project"], "bulk");
    let policy = &b["locationPolicy"];
    assert_eq!(policy["targetShape"], "ANY");
    for (zone, preference) in [
        ("us-central1-a", "ALLOW"),
        ("us-central1-b", "ALLOW"),
        ("us-central1-c", "DENY"),
        ("us-central1-f", "DENY"),
    ] {
        assert_eq!(
            policy["locations"][format!("zones/{zone}")]["preference"],
            preference,
            "{policy}"
        );
    }

    // Each VM got its own key, the one cwo keeps for it, and its own label.
    let set = calls(&fake, "/setMetadata");
    assert_eq!(set.len(), 3, "{set:?}");
    let mut seen = BTreeSet::new();
    for inst in &made {
        let (_, body) = set
            .iter()
            .find(|(path, _)| path.contains(&format!("/instances/{}/", inst.name)))
            .unwrap_or_else(|| panic!("no setMetadata for {}", inst.name));
        let line = ssh_keys(body).unwrap();
        let own = public_key(&keys, &inst.name);
        assert_eq!(line, format!("{}:{}", login(&sshd), own.trim()));
        assert!(seen.insert(own), "a key shared between workers");
        assert!(
            body["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["key"] == "startup-script"),
            "the rest of the metadata is kept: {body}"
        );
        let vm = fake.vm(&inst.name).unwrap();
        assert_eq!(vm["labels"]["cwo-worker"], inst.name.as_str());
        assert_eq!(inst.labels["cwo-worker"], inst.name);
        // Its boot disk bills apart from it: the same identity labels, its own worker's.
        assert_eq!(
            boot_disk(&fake, &inst.name)["labels"],
            identity(&inst.name),
            "{}",
            inst.name
        );
        assert!(
            inst.zone
                .as_deref()
                .is_some_and(|z| z.starts_with("us-central1-"))
        );
    }

    for inst in &made {
        let up = rt
            .block_on(p.wait_running(&inst.name, Duration::from_secs(30)))
            .unwrap();
        assert_eq!(up.status, InstanceStatus::Running);
        if sshd.is_some() {
            // The worker's own key lets cwo in.
            let journal = cwo::journal::Journal::open(&tmp.path().join("state")).unwrap();
            let connector = cwo::connector::Connector::new(
                &SshSettings::default(),
                std::sync::Arc::new(journal),
            );
            assert!(connector.connect(&up).is_ok(), "connect to {}", inst.name);
        }
    }
}

/// The login the provider puts in front of each key.
fn login(sshd: &Option<Sshd>) -> String {
    sshd.as_ref()
        .map(|s| s.user.clone())
        .unwrap_or_else(|| "cwo-admin".into())
}

#[test]
fn partial_capacity_gives_the_workers_that_fit_and_a_capacity_error_for_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeGce::start(PROJECT, "127.0.0.1", None);
    fake.faults().region_room = Some(2);
    let p = provider(&fake, tmp.path(), &["us-central1-a", "us-central1-b"], None);
    let results = rt().block_on(p.create_many(&specs(&KEYS)));
    assert_eq!(fake.bulk_calls().len(), 1);
    let ok: Vec<&str> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|i| i.name.as_str()))
        .collect();
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(ok.len(), 2, "{results:?}");
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].kind(),
        ProviderErrorKind::Capacity,
        "{}",
        failed[0]
    );
    assert!(
        failed[0].to_string().contains("created 2 of the 3"),
        "{}",
        failed[0]
    );
    assert_eq!(fake.vm_names(), ok, "exactly the two that fit exist");
    assert_eq!(calls(&fake, "/setMetadata").len(), 2);

    // No room at all: nothing exists, every spec is a capacity error.
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeGce::start(PROJECT, "127.0.0.1", None);
    fake.faults().region_room = Some(0);
    let p = provider(&fake, tmp.path(), &["us-central1-a", "us-central1-b"], None);
    let results = rt().block_on(p.create_many(&specs(&KEYS)));
    assert!(
        results.iter().all(|r| r
            .as_ref()
            .is_err_and(|e| e.kind() == ProviderErrorKind::Capacity)),
        "{results:?}"
    );
    assert!(fake.vm_names().is_empty());
}

#[test]
fn the_same_batch_again_creates_nothing_new() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeGce::start(PROJECT, "127.0.0.1", None);
    let p = provider(&fake, tmp.path(), &["us-central1-a", "us-central1-b"], None);
    let rt = rt();
    let specs = specs(&KEYS);
    let first: Vec<String> = rt
        .block_on(p.create_many(&specs))
        .into_iter()
        .map(|r| r.unwrap().name)
        .collect();
    // A controller that crashed after the call retries the same batch: the same request id.
    let again: Vec<String> = rt
        .block_on(p.create_many(&specs))
        .into_iter()
        .map(|r| r.unwrap().name)
        .collect();
    assert_eq!(first, again);
    let bulk = calls(&fake, "/instances/bulkInsert");
    assert_eq!(bulk.len(), 2);
    assert_eq!(bulk[0].0, bulk[1].0, "the same requestId: {bulk:?}");
    assert_eq!(fake.created().len(), 3, "nothing new");
    assert_eq!(
        calls(&fake, "/setMetadata").len(),
        3,
        "the keys are there already"
    );
    assert_eq!(
        calls(&fake, "/disks/").len(),
        3 * 2 + 3,
        "a get and a set per disk, then a get only: the labels are there already"
    );
}

#[test]
fn a_stale_disk_label_fingerprint_is_read_again_and_the_label_set_keeping_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeGce::start(PROJECT, "127.0.0.1", None);
    let specs = specs(&KEYS[..2]);
    let raced = specs[0].0.name.clone();
    // Someone labels the first disk between cwo's disks.get and its disks.setLabels: Compute
    // answers the stale fingerprint with 412 conditionNotMet.
    fake.faults().disk_label_races.push(raced.clone());
    let p = provider(&fake, tmp.path(), &["us-central1-a"], None);
    let results = rt().block_on(p.create_many(&specs));
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let sets = calls(&fake, "/setLabels");
    let on_raced: Vec<&Value> = sets
        .iter()
        .filter(|(path, _)| path.contains(&format!("/disks/{raced}/setLabels")))
        .map(|(_, body)| body)
        .collect();
    assert_eq!(on_raced.len(), 2, "one sent again: {sets:?}");
    assert_ne!(
        on_raced[0]["labelFingerprint"], on_raced[1]["labelFingerprint"],
        "sent again with the fingerprint read again"
    );
    let mut expected = identity(&raced);
    expected["changed-by"] = "someone".into();
    assert_eq!(
        boot_disk(&fake, &raced)["labels"],
        expected,
        "the other label kept"
    );
    let other = &specs[1].0.name;
    assert_eq!(boot_disk(&fake, other)["labels"], identity(other));
}

#[test]
fn a_vm_whose_disk_label_cannot_be_set_is_deleted_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeGce::start(PROJECT, "127.0.0.1", None);
    let specs = specs(&KEYS[..2]);
    let refused = specs[1].0.name.clone();
    // Not a transient failure: cwo does not send it again.
    fake.faults().http.push_back((
        format!(
            "POST /compute/v1/projects/{PROJECT}/zones/us-central1-a/disks/{refused}/setLabels"
        ),
        403,
    ));
    let p = provider(&fake, tmp.path(), &["us-central1-a"], None);
    let results = rt().block_on(p.create_many(&specs));
    let kept = &specs[0].0.name;
    assert_eq!(
        results[0].as_ref().map(|i| &i.name).ok(),
        Some(kept),
        "{results:?}"
    );
    let e = results[1]
        .as_ref()
        .expect_err("no worker without its disk label");
    assert_eq!(e.kind(), ProviderErrorKind::Permission, "{e}");
    // The error and its causes, as cwo prints them.
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    assert!(
        text.contains(&format!(
            "VM {refused} came up without its own key or labels; it was deleted"
        )),
        "{text}"
    );
    assert!(text.contains(&format!("boot disk {refused}")), "{text}");
    assert_eq!(
        fake.vm_names(),
        [kept.as_str()],
        "the unlabelled VM is gone"
    );
    assert_eq!(
        fake.disks()
            .iter()
            .map(|d| d["name"].clone())
            .collect::<Vec<_>>(),
        [Value::from(kept.as_str())],
        "and its disk with it"
    );
}

#[test]
fn a_stale_metadata_fingerprint_is_read_again_and_the_key_set() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeGce::start(PROJECT, "127.0.0.1", None);
    // Compute answers a fingerprint that changed meanwhile with 412 conditionNotMet.
    fake.faults().http.push_back(("setMetadata".into(), 412));
    let p = provider(&fake, tmp.path(), &["us-central1-a"], None);
    let results = rt().block_on(p.create_many(&specs(&KEYS[..2])));
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(calls(&fake, "/setMetadata").len(), 3, "one sent again");
    for name in fake.vm_names() {
        let keys = ssh_keys(&fake.vm(&name).unwrap()["metadata"]).unwrap();
        assert!(
            keys.ends_with(public_key(tmp.path(), &name).trim()),
            "{name}: {keys}"
        );
    }
}

#[test]
fn zones_in_several_regions_or_one_spec_use_single_inserts() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeGce::start(PROJECT, "127.0.0.1", None);
    let p = provider(
        &fake,
        tmp.path(),
        &["us-central1-a", "europe-west4-b"],
        None,
    );
    let results = rt().block_on(p.create_many(&specs(&KEYS)));
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(fake.bulk_calls().is_empty());
    assert_eq!(calls(&fake, "/instances?requestId").len(), 3);
    assert_eq!(fake.vm_names().len(), 3);

    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeGce::start(PROJECT, "127.0.0.1", None);
    let p = provider(&fake, tmp.path(), &["us-central1-a"], None);
    let results = rt().block_on(p.create_many(&specs(&KEYS[..1])));
    assert!(results[0].is_ok(), "{results:?}");
    assert!(fake.bulk_calls().is_empty());
    assert_eq!(calls(&fake, "/instances?requestId").len(), 1);
}
