//! A randomized (seeded, reproducible) simulation of create / crash / external delete / reap
//! interleavings against the fake Compute API. After the reaper has made its passes, every
//! labelled VM is journaled as active, and every active journal row has its VM.

use std::collections::BTreeMap;
use std::time::Duration;

use cwo::config::{GcpSettings, SshSettings};
use cwo::journal::Journal;
use cwo::orchestrator::delete_journaled;
use cwo::orchestrator::reaper::Reaper;
use cwo::provider::{Provider, WorkerSpec};

use crate::common::Rng;
use crate::common::fake_gce::FakeGce;

fn spec(name: &str) -> WorkerSpec {
    WorkerSpec {
        name: name.into(),
        labels: BTreeMap::from([
            ("cwo-managed".to_string(), "true".to_string()),
            ("cwo-project".to_string(), "sim".to_string()),
            ("cwo-worker".to_string(), name.to_string()),
        ]),
        machine_type: "e2-micro".into(),
    }
}

#[test]
fn every_labelled_vm_ends_journaled_active_or_deleted() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for seed in 1..=12u64 {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeGce::start("proj-sim", "127.0.0.1", None);
        fake.set_host_key(Some(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
                .into(),
        ));
        let journal = Journal::open(&tmp.path().join("state")).unwrap();
        let settings = GcpSettings {
            project: "proj-sim".into(),
            endpoint: fake.url.clone(),
            credentials: "anonymous".into(),
            ssh_source: "127.0.0.1/32".into(),
            zones: vec!["us-central1-a".into(), "us-central1-b".into()],
            ..GcpSettings::default()
        };
        let p = cwo::provider::gcp::GcpProvider::new(
            settings,
            SshSettings::default(),
            "sim".into(),
            tmp.path().join("keys"),
        );
        let mut rng = Rng(seed.wrapping_mul(0x9E3779B97F4A7C15));
        let mut trace = Vec::new();
        rt.block_on(async {
            for step in 0..14 {
                let name = format!("cwo-sim-{seed}-{step}");
                match rng.below(6) {
                    // A controller creates a worker and crashes at a random point.
                    0..=2 => {
                        let crash_at = rng.below(4);
                        if rng.below(3) == 0 {
                            fake.faults().hide_new = Duration::from_millis(300);
                        }
                        trace.push(format!("create {name} crash@{crash_at}"));
                        journal
                            .worker_intent(&name, "gcp", "e2-micro", "rid", "{}")
                            .unwrap();
                        if crash_at == 0 {
                            continue;
                        }
                        let key = format!("6f1c1d1e-0000-4000-8000-{:012}", seed * 100 + step);
                        let inst = p.create(&spec(&name), &key).await.unwrap();
                        fake.faults().hide_new = Duration::ZERO;
                        if crash_at == 1 {
                            continue;
                        }
                        journal.worker_ready(&name, inst.created_at, "{}").unwrap();
                        if crash_at == 2 {
                            continue;
                        }
                        // A clean teardown: the lifecycle's own (journaled, confirmed).
                        delete_journaled(
                            &p,
                            Some(&journal),
                            &name,
                            "idle",
                            Duration::from_secs(60),
                            &mut |_| {},
                        )
                        .await
                        .unwrap();
                    }
                    // Something outside cwo deletes a VM (the TTL, a person).
                    3 => {
                        if let Some(victim) = fake.vm_names().first().cloned() {
                            trace.push(format!("external delete {victim}"));
                            fake.delete_externally(&victim);
                        }
                    }
                    // A reaper pass, with or without a live controller.
                    _ => {
                        let running = rng.below(2) == 0;
                        trace.push(format!("reap controller_running={running}"));
                        let r = Reaper {
                            provider: &p,
                            journal: &journal,
                            project_slug: "sim",
                            grace: Duration::ZERO,
                            controller_running: running,
                            teardown_timeout: Duration::from_secs(60),
                            on_retry: &|_| {},
                        };
                        r.pass(true).await.unwrap();
                    }
                }
            }
            // Every controller is gone now; the reaper runs its two phases.
            let r = Reaper {
                provider: &p,
                journal: &journal,
                project_slug: "sim",
                grace: Duration::ZERO,
                controller_running: false,
                teardown_timeout: Duration::from_secs(60),
                on_retry: &|_| {},
            };
            r.pass(true).await.unwrap();
            r.pass(true).await.unwrap();
        });
        let active: Vec<String> = journal
            .live_workers()
            .unwrap()
            .into_iter()
            .filter(|w| w.state == "ready")
            .map(|w| w.name)
            .collect();
        for vm in fake.vm_names() {
            assert!(
                active.contains(&vm),
                "seed {seed}: VM {vm} is neither journaled-active nor deleted\n{}",
                trace.join("\n")
            );
        }
        for w in journal.live_workers().unwrap() {
            assert!(
                w.state == "ready" && fake.vm_names().contains(&w.name),
                "seed {seed}: journal row {} ({}) has no VM\n{}",
                w.name,
                w.state,
                trace.join("\n")
            );
        }
    }
}
