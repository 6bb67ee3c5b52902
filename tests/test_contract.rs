//! One contract, every provider: local, ssh (a test sshd), gcp (the fake Compute API) and
//! terraform (the real binary on the terraform_data stand-in module).

use std::collections::BTreeMap;
use std::time::Duration;

use cwo::config::{GcpSettings, SshSettings};
use cwo::connector::Connector;
use cwo::journal::Journal;
use cwo::provider::{DeleteOutcome, InstanceStatus, Provider, WorkerSpec};

use crate::common::fake_gce::FakeGce;
use crate::common::sshd::Sshd;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Reaches the workers as `cwo` does, pinning host keys in a journal under `tmp`.
fn connector(tmp: &std::path::Path, ssh: &SshSettings) -> Connector {
    let journal = Journal::open(&tmp.join("state")).unwrap();
    Connector::new(ssh, std::sync::Arc::new(journal))
}

async fn contract(p: &dyn Provider, connector: &Connector, name: &str) {
    let selector = BTreeMap::from([("cwo-project".to_string(), "contract".to_string())]);
    let spec = WorkerSpec {
        name: name.to_string(),
        labels: BTreeMap::from([
            ("cwo-managed".to_string(), "true".to_string()),
            ("cwo-project".to_string(), "contract".to_string()),
            ("cwo-worker".to_string(), name.to_string()),
        ]),
        machine_type: "e2-micro".into(),
    };
    let kind = p.kind();
    let a = p
        .create(&spec, "6f1c1d1e-0000-4000-8000-000000000001")
        .await
        .unwrap_or_else(|e| panic!("{kind}: create: {e}"));
    let b = p
        .create(&spec, "6f1c1d1e-0000-4000-8000-000000000001")
        .await
        .unwrap_or_else(|e| panic!("{kind}: create again: {e}"));
    assert_eq!(a.name, b.name, "{kind}: the same key gives the same worker");
    assert!(
        p.create(&spec, "6f1c1d1e-0000-4000-8000-000000000002")
            .await
            .is_err(),
        "{kind}: a second worker of the same name"
    );
    let up = p.wait_running(name, Duration::from_secs(30)).await.unwrap();
    assert_eq!(up.status, InstanceStatus::Running, "{kind}");
    assert!(p.get(name).await.unwrap().is_some(), "{kind}: get");
    let listed = p.list(&selector).await.unwrap();
    let me = listed
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("{kind}: listed"));
    assert_eq!(me.labels["cwo-worker"], name);
    let mut labels = me.labels.clone();
    labels.insert("cwo-reap-marked".into(), "1".into());
    p.set_labels(name, &labels)
        .await
        .unwrap_or_else(|e| panic!("{kind}: set_labels: {e}"));
    assert_eq!(
        p.get(name).await.unwrap().unwrap().labels["cwo-reap-marked"],
        "1",
        "{kind}"
    );
    assert!(connector.connect(&up).is_ok(), "{kind}: connect");
    assert_eq!(
        p.delete(name).await.unwrap(),
        DeleteOutcome::Deleted,
        "{kind}"
    );
    p.confirm_deleted(name, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(
        p.get(name).await.unwrap().is_none(),
        "{kind}: gone is None, not an error"
    );
    assert_eq!(
        p.delete(name).await.unwrap(),
        DeleteOutcome::AlreadyGone,
        "{kind}: delete is idempotent"
    );
    assert!(
        p.list(&selector)
            .await
            .unwrap()
            .iter()
            .all(|i| i.name != name),
        "{kind}"
    );
}

#[test]
fn local_provider_keeps_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let p = cwo::provider::local::LocalProvider::new(tmp.path().join("workers"));
    rt().block_on(contract(
        &p,
        &connector(tmp.path(), &SshSettings::default()),
        "cwo-contract-local",
    ));
}

#[test]
fn ssh_provider_keeps_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(sshd) = Sshd::start(&tmp.path().join("sshd")) else {
        return;
    };
    let settings = SshSettings {
        hosts: vec![sshd.host()],
        key: sshd.client_key.display().to_string(),
        workspace: tmp.path().join("ws").display().to_string(),
        connect_timeout: Duration::from_secs(20),
        ..SshSettings::default()
    };
    let connector = connector(tmp.path(), &settings);
    let p = cwo::provider::ssh_host::SshHostProvider::new(
        settings,
        tmp.path().join("records"),
        connector.clone(),
    );
    rt().block_on(contract(&p, &connector, "cwo-contract-ssh"));
}

#[test]
fn gcp_provider_keeps_the_contract() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeGce::start("proj-c", "127.0.0.1", None);
    fake.set_host_key(Some(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl".into(),
    ));
    let settings = GcpSettings {
        project: "proj-c".into(),
        endpoint: fake.url.clone(),
        credentials: "anonymous".into(),
        ssh_source: "127.0.0.1/32".into(),
        ..GcpSettings::default()
    };
    let p = cwo::provider::gcp::GcpProvider::new(
        settings,
        SshSettings::default(),
        "contract".into(),
        tmp.path().join("keys"),
    );
    rt().block_on(contract(
        &p,
        &connector(tmp.path(), &SshSettings::default()),
        "cwo-contract-gcp",
    ));
}

#[test]
fn terraform_provider_keeps_the_contract() {
    if !std::process::Command::new("terraform")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipped terraform_provider_keeps_the_contract: terraform is not on PATH");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut settings = cwo::config::Settings::default();
    settings.gcp.ssh_source = "127.0.0.1/32".into();
    settings.terraform.module =
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/terraform-fake").into();
    for (k, v) in [
        ("authorized_keys", tmp.path().join("authorized_keys")),
        ("log", tmp.path().join("tf.log")),
    ] {
        settings
            .terraform
            .vars
            .insert(k.into(), v.display().to_string());
    }
    settings
        .terraform
        .vars
        .insert("fake_ip".into(), "127.0.0.1".into());
    let p = cwo::provider::terraform::TerraformProvider::new(
        &settings.gcp,
        &settings.ssh,
        &settings.terraform,
        tmp.path().join("terraform"),
        tmp.path().join("keys"),
        "#!/bin/sh\n".into(),
    );
    rt().block_on(contract(
        &p,
        &connector(tmp.path(), &SshSettings::default()),
        "cwo-contract-terraform",
    ));
    let log = std::fs::read_to_string(tmp.path().join("tf.log")).unwrap();
    assert!(log.starts_with("apply cwo-contract-terraform"), "{log}");
    assert!(log.ends_with("destroy cwo-contract-terraform\n"), "{log}");
}
