//! The test suite's fake Compute API as a program, for scripts/bench.sh and for trying cwo's
//! gcp provider without an account:
//! `fake_gce PROJECT NAT_IP [AUTHORIZED_KEYS|-] [HOST_KEY_PUB|-] [PRELOAD_N PRELOAD_PROJECT]`.
//! `FAKE_GCE_PROVISIONING_MS`: how long a new VM stays PROVISIONING/STAGING after its insert
//! is done (the fleet benchmark's boot time). Prints its URL, then serves until killed.

#[path = "../tests/common/fake_gce.rs"]
mod fake_gce;

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!(
            "usage: fake_gce PROJECT NAT_IP [AUTHORIZED_KEYS|-] [HOST_KEY_PUB|-] [PRELOAD_N PRELOAD_PROJECT]"
        );
        std::process::exit(2);
    }
    let opt = |i: usize| args.get(i).filter(|a| a.as_str() != "-").cloned();
    let fake = fake_gce::FakeGce::start(&args[0], &args[1], opt(2).map(Into::into));
    if let Some(path) = opt(3) {
        let key = std::fs::read_to_string(path).expect("the host key file");
        fake.set_host_key(Some(key.trim().to_string()));
    }
    if let (Some(n), Some(project)) = (opt(4), opt(5)) {
        let created = chrono::Utc::now().to_rfc3339();
        let expires = (chrono::Utc::now().timestamp() + 3600).to_string();
        for i in 0..n.parse::<usize>().expect("a count") {
            let labels = serde_json::json!({
                "cwo-managed": "true", "cwo-project": project, "cwo-expires-at": expires, "cwo-machine": "e2-micro",
            });
            let zone = if i % 2 == 0 {
                "us-central1-a"
            } else {
                "us-central1-b"
            };
            fake.add_vm(
                zone,
                &format!("cwo-{project}-{i:06x}"),
                labels,
                &created,
                "RUNNING",
            );
        }
    }
    if let Some(ms) = std::env::var("FAKE_GCE_PROVISIONING_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        fake.faults().provisioning = std::time::Duration::from_millis(ms);
    }
    println!("{}", fake.url);
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
