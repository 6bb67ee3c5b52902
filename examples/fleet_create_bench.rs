//! How a fleet's workers come up on GCP, for scripts/bench.sh: k workers through one
//! `regionInstances.bulkInsert` plus a `setMetadata` per VM (the gcp provider's `create_many`)
//! against k concurrent single `instances.insert`s (the trait's default), each until every VM is
//! RUNNING (`wait_running`), on the test suite's fake Compute API with a 300 ms operation delay.
//! Also with room for only 2 VMs in the first zone. Prints the wall time and the number of API
//! requests of each: `fleet_create_bench [K...]` (default 1 4 8).

#[path = "../tests/common/fake_gce.rs"]
mod fake_gce;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cwo::config::{GcpSettings, SshSettings};
use cwo::provider::gcp::GcpProvider;
use cwo::provider::{Provider, WorkerSpec};

const ZONES: [&str; 2] = ["us-central1-a", "us-central1-b"];
const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

struct Figures {
    up: usize,
    millis: u128,
    requests: usize,
}

/// One run on a fresh fake: k workers created (`bulk`: create_many, else concurrent creates),
/// then waited for until running.
async fn run(k: usize, bulk: bool, first_zone_room: Option<usize>) -> Figures {
    let fake = fake_gce::FakeGce::start("bench", "127.0.0.1", None);
    fake.set_host_key(Some(HOST_KEY.into()));
    {
        let mut f = fake.faults();
        f.op_delay = Duration::from_millis(300);
        if let Some(room) = first_zone_room {
            f.zone_room.insert(ZONES[0].into(), room);
        }
    }
    let keys = tempfile::tempdir().unwrap();
    let p = GcpProvider::new(
        GcpSettings {
            project: "bench".into(),
            endpoint: fake.url.clone(),
            credentials: "anonymous".into(),
            ssh_source: "127.0.0.1/32".into(),
            zones: ZONES.iter().map(|z| z.to_string()).collect(),
            ..GcpSettings::default()
        },
        SshSettings::default(),
        "bench".into(),
        keys.path().to_path_buf(),
    );
    let specs: Vec<(WorkerSpec, String)> = (0..k)
        .map(|i| {
            let name = format!("cwo-bench-{i:06x}");
            let labels = BTreeMap::from([
                ("cwo-managed".to_string(), "true".to_string()),
                ("cwo-project".to_string(), "bench".to_string()),
                ("cwo-worker".to_string(), name.clone()),
            ]);
            let key = format!("00000000-0000-4000-8000-{i:012x}");
            let spec = WorkerSpec {
                name,
                labels,
                machine_type: "e2-micro".into(),
            };
            (spec, key)
        })
        .collect();
    let t0 = Instant::now();
    let created = if bulk {
        p.create_many(&specs).await
    } else {
        futures::future::join_all(specs.iter().map(|(s, key)| p.create(s, key))).await
    };
    let waits = created.iter().filter_map(|r| r.as_ref().ok()).map(|inst| {
        let p = &p;
        async move { p.wait_running(&inst.name, Duration::from_secs(60)).await }
    });
    let up = futures::future::join_all(waits)
        .await
        .into_iter()
        .filter(|r| r.is_ok())
        .count();
    Figures {
        up,
        millis: t0.elapsed().as_millis(),
        requests: fake.log().len(),
    }
}

fn main() {
    let ks: Vec<usize> = {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .map(|a| a.parse().expect("K: a worker count"))
            .collect();
        if args.is_empty() { vec![1, 4, 8] } else { args }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "fleet creation on the fake Compute API (300 ms operations), until every VM is RUNNING:"
    );
    println!(
        "{:>3}  {:<29}  {:>22}  {:>22}",
        "k", "capacity", "bulkInsert + setMetadata", "k single inserts"
    );
    for room in [None, Some(2)] {
        let capacity = match room {
            None => "unlimited".to_string(),
            Some(n) => format!("{} has room for {n}", ZONES[0]),
        };
        for &k in &ks {
            let b = rt.block_on(run(k, true, room));
            let s = rt.block_on(run(k, false, room));
            let cell =
                |f: &Figures| format!("{}/{k} {:>5} ms {:>3} req", f.up, f.millis, f.requests);
            println!("{k:>3}  {capacity:<29}  {:>22}  {:>22}", cell(&b), cell(&s));
        }
    }
}
