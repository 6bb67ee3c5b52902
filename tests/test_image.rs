//! `cwo image build | list | prune` and `gcp.use_image` against the fake Compute API (issue 16).
//! The fake's VMs lead to a test sshd on this machine, which no bootstrap may change: the
//! builds here fail at the bootstrap (and must leave nothing behind), and a worker's image is
//! checked in its insert body. A whole build on an isolated test host is in
//! `a_build_on_a_test_host_leaves_one_labelled_image_and_no_builder`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::fake_gce::FakeGce;
use crate::common::testhost::TestHost;
use crate::common::{kill, wait_for};
use crate::test_gcp::{Gcp, gcp};

/// Native bootstrap on: images apply (the test sshd is this machine, so a bootstrap fails).
const NATIVE: &str = "bootstrap.method=native";

fn image_cmd(g: &Gcp, args: &[&str]) -> crate::common::Run {
    let mut all = vec!["--config", NATIVE, "image"];
    all.extend_from_slice(args);
    g.env.cwo(&all)
}

fn inserts(g: &Gcp) -> Vec<Value> {
    g.fake
        .log()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.contains("/instances?"))
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect()
}

/// The hash the settings bake to, as `cwo image list` says.
fn current_hash(g: &Gcp) -> String {
    let list = image_cmd(g, &["list", "--format", "json"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let hash = list.json()["hash"].as_str().unwrap().to_string();
    assert_eq!(hash.len(), 16, "{}", list.stdout);
    hash
}

#[test]
fn the_builder_is_deleted_when_its_bootstrap_fails() {
    let Some(g) = gcp("", "true", "") else { return };
    let run = image_cmd(&g, &["build"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("refusing to bootstrap"),
        "{}",
        run.stderr
    );
    // It was a builder: booting the base image, no bootstrap at boot, labelled like a worker.
    let bodies = inserts(&g);
    assert_eq!(bodies.len(), 1);
    let body = &bodies[0];
    let name = body["name"].as_str().unwrap();
    assert!(name.contains("-build-"), "{name}");
    assert_eq!(
        body["disks"][0]["initializeParams"]["sourceImage"],
        "projects/debian-cloud/global/images/family/debian-12"
    );
    assert_eq!(body["labels"]["cwo-managed"], "true");
    assert!(body["labels"].get("cwo-image").is_none());
    let startup = body["metadata"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == "startup-script")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !startup.contains("cwo-step"),
        "the builder boots with the host-key publisher only"
    );
    assert!(
        body["scheduling"]["maxRunDuration"]["seconds"]
            .as_str()
            .is_some_and(|s| s.parse::<u64>().unwrap() <= 3600),
        "a builder lives an hour at most: {}",
        body["scheduling"]
    );
    // Deleted, journaled so, and no image.
    assert!(g.fake.vm_names().is_empty(), "{:?}", g.fake.vm_names());
    assert_eq!(
        g.env
            .journal("SELECT state, termination_reason FROM workers"),
        "deleted|error"
    );
    assert!(
        !g.fake
            .log()
            .iter()
            .any(|r| r.method == "POST" && r.path.contains("/global/images")),
        "no image from a failed bake"
    );
}

#[test]
fn a_killed_build_leaves_a_builder_the_reaper_deletes() {
    let Some(g) = gcp("", "true", "") else { return };
    let toml = g.env.project.join("cwo.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("reap_grace = \"1s\"\n{text}")).unwrap();
    g.fake.faults().insert_delay = Duration::from_millis(1500);
    let child = g.env.spawn(&["--config", NATIVE, "image", "build"]);
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
        "the builder is journaled before its insert"
    );
    assert!(wait_for(Duration::from_secs(5), || g.fake.vm_names().len() == 1));
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
}

fn image_names(g: &Gcp) -> Vec<String> {
    let mut names: Vec<String> = g
        .fake
        .images()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn prune_keeps_n_and_never_an_image_in_use() {
    let Some(g) = gcp("", "true", "") else { return };
    let h = json!({"cwo-image-hash": "0123456789abcdef", "cwo-managed": "true"});
    for (name, day) in [("img-1", 1), ("img-2", 2), ("img-3", 3), ("img-4", 4)] {
        g.fake.add_image(
            name,
            "cwo-worker",
            h.clone(),
            &format!("2026-11-0{day}T00:00:00Z"),
        );
    }
    // The newest: one being made (a build running now) and one that failed; neither counts
    // toward --keep, and the failed one goes.
    for (name, day, status) in [("img-6", 6, "PENDING"), ("img-5", 5, "FAILED")] {
        g.fake.add_image(
            name,
            "cwo-worker",
            h.clone(),
            &format!("2026-11-0{day}T00:00:00Z"),
        );
        g.fake.set_image_status(name, status);
    }
    // The oldest, baked from the current settings: what new workers boot from.
    g.fake.add_image(
        "img-current",
        "cwo-worker",
        json!({"cwo-image-hash": current_hash(&g), "cwo-managed": "true"}),
        "2026-10-15T00:00:00Z",
    );
    // Another tool's image in the same family, and an image of another family.
    g.fake
        .add_image("theirs", "cwo-worker", json!({}), "2026-10-01T00:00:00Z");
    g.fake
        .add_image("elsewhere", "other", h.clone(), "2026-10-01T00:00:00Z");
    // A live VM (of any cwo project) booted from the oldest one.
    g.fake.add_vm(
        "us-central1-a",
        "cwo-other-abc123",
        json!({"cwo-managed": "true", "cwo-project": "other", "cwo-image": "img-1"}),
        "2026-11-05T00:00:00Z",
        "RUNNING",
    );
    let before = image_names(&g);
    let dry = image_cmd(
        &g,
        &["prune", "--keep", "2", "--dry-run", "--format", "json"],
    );
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert_eq!(image_names(&g), before, "--dry-run deletes nothing");
    let run = image_cmd(&g, &["prune", "--keep", "2", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let actions: Vec<(String, String)> = run.json()["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("img-6", "kept"),
        ("img-5", "deleted"),
        ("img-4", "kept"),
        ("img-3", "kept"),
        ("img-2", "deleted"),
        ("img-1", "in-use"),
        ("img-current", "kept"),
    ]
    .map(|(a, b)| (a.to_string(), b.to_string()));
    assert_eq!(actions, want, "{}", run.stdout);
    assert_eq!(
        image_names(&g),
        [
            "elsewhere",
            "img-1",
            "img-3",
            "img-4",
            "img-6",
            "img-current",
            "theirs"
        ],
        "only img-2 and the failed img-5 went"
    );
    let deletes: Vec<String> = g
        .fake
        .log()
        .into_iter()
        .filter(|r| r.method == "DELETE" && r.path.contains("/global/images/"))
        .map(|r| r.path)
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    // The table says the same.
    let table = image_cmd(&g, &["list"]);
    assert!(
        table.stdout.contains("cwo-other-abc123"),
        "{}",
        table.stdout
    );
}

/// The source image and labels of the last instance insert.
fn last_insert(g: &Gcp) -> (String, Value) {
    let body = inserts(g).pop().expect("an insert");
    (
        body["disks"][0]["initializeParams"]["sourceImage"]
            .as_str()
            .unwrap()
            .to_string(),
        body["labels"].clone(),
    )
}

#[test]
fn workers_boot_from_the_image_whose_hash_matches_and_bootstrap_otherwise() {
    let Some(g) = gcp("", "true", "") else { return };
    let hash = current_hash(&g);
    let debian = "projects/debian-cloud/global/images/family/debian-12";
    let plan = |g: &Gcp| {
        let run = g
            .env
            .cwo(&["--config", NATIVE, "up", "--plan", "--format", "json"]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        run.json()
    };
    let up = |g: &Gcp, extra: &[&str]| {
        let mut args = vec!["--config", NATIVE];
        args.extend_from_slice(extra);
        args.push("up");
        g.env.cwo(&args)
    };

    // An image baked from other settings: the base image, the full bootstrap, and a hint.
    g.fake.add_image(
        "cwo-worker-stale",
        "cwo-worker",
        json!({"cwo-image-hash": "00000000deadbeef"}),
        "2026-11-01T00:00:00Z",
    );
    let p = plan(&g);
    assert_eq!(p["boot_image"]["baked"], Value::Null, "{p}");
    assert_eq!(p["boot_image"]["build_would_help"], true);
    assert!(
        p["boot_image"]["why"]
            .as_str()
            .unwrap()
            .contains("cwo-worker-stale"),
        "{p}"
    );
    assert_eq!(
        p["plan"]["instance"]["disks"][0]["initializeParams"]["sourceImage"],
        debian
    );
    let stale = up(&g, &[]);
    let (image, labels) = last_insert(&g);
    assert_eq!(image, debian);
    assert!(labels.get("cwo-image").is_none(), "{labels}");
    assert!(
        stale
            .stderr
            .contains("cwo-worker-stale, was baked from other settings")
            && stale
                .stderr
                .contains("`cwo image build` bakes the bootstrap"),
        "{}",
        stale.stderr
    );
    assert!(g.fake.vm_names().is_empty(), "the failed worker is deleted");
    // With bootstrap times measured (one worker fully bootstrapped in 95 s, one from an image
    // in 3 s), the hint says what a build saves.
    up(&g, &[]);
    g.env.journal(
        "UPDATE workers SET bootstrap_ms = CASE WHEN rowid = (SELECT min(rowid) FROM workers) \
         THEN 95000 ELSE 3000 END, boot_image = CASE WHEN rowid = (SELECT min(rowid) FROM workers) \
         THEN NULL ELSE 'cwo-worker-x' END",
    );
    let measured = up(&g, &[]);
    assert!(
        measured
            .stderr
            .contains("`cwo image build` would save ~92 s per worker (bootstrap: 95 s from the base image over 1 worker(s), 3 s from a baked one)"),
        "{}",
        measured.stderr
    );

    // An image baked from exactly these settings, newer than the stale one: workers boot it.
    g.fake.add_image(
        "cwo-worker-fresh",
        "cwo-worker",
        json!({"cwo-image-hash": hash}),
        "2026-11-02T00:00:00Z",
    );
    let p = plan(&g);
    assert_eq!(p["boot_image"]["baked"], "cwo-worker-fresh", "{p}");
    let fresh = "projects/proj-test/global/images/cwo-worker-fresh";
    assert_eq!(
        p["plan"]["instance"]["disks"][0]["initializeParams"]["sourceImage"],
        fresh
    );
    assert_eq!(
        p["plan"]["instance"]["labels"]["cwo-image"],
        "cwo-worker-fresh"
    );
    let baked = up(&g, &[]);
    let (image, labels) = last_insert(&g);
    assert_eq!(image, fresh, "{}", baked.stderr);
    assert_eq!(labels["cwo-image"], "cwo-worker-fresh");
    assert!(
        !baked.stderr.contains("`cwo image build`"),
        "{}",
        baked.stderr
    );

    // gcp.disk_size_gb lowered below the disk the image was baked on: Compute would refuse
    // the disk, so the base image, and the plan says why.
    let small = g.env.cwo(&[
        "--config",
        NATIVE,
        "--config",
        "gcp.disk_size_gb=8",
        "up",
        "--plan",
        "--format",
        "json",
    ]);
    assert_eq!(small.code, 0, "{}", small.stderr);
    let p = small.json();
    assert_eq!(p["boot_image"]["baked"], Value::Null, "{p}");
    assert!(
        p["boot_image"]["why"]
            .as_str()
            .unwrap()
            .contains("cwo-worker-fresh, baked from these settings, needs a 10 GB disk and gcp.disk_size_gb is 8"),
        "{p}"
    );

    // "never" boots the base image whatever exists; "always" refuses without a match.
    up(&g, &["--config", "gcp.use_image=never"]);
    assert_eq!(last_insert(&g).0, debian);
    let count = inserts(&g).len();
    let always = up(
        &g,
        &[
            "--config",
            "gcp.use_image=always",
            "--config",
            "gcp.image_family=empty",
        ],
    );
    assert_ne!(always.code, 0);
    assert!(
        always.stderr.contains("cwo image build"),
        "{}",
        always.stderr
    );
    assert_eq!(inserts(&g).len(), count, "no VM without its image");
}

/// Settings whose VMs are the fake's, leading to `host` (logging in as its admin, natively
/// bootstrapped through its proxy).
fn on_host(env: &crate::common::TestEnv, fake: &FakeGce, host: &TestHost) {
    env.settings(&format!(
        "provider = \"gcp\"\n[gcp]\nproject = \"proj-test\"\nendpoint = {:?}\ncredentials = \"anonymous\"\nssh_source = \"10.213.0.0/16\"\nssh_user = \"admin\"\nssh_port = 22\nzones = [\"us-central1-a\"]\n[ssh]\nconnect_timeout = \"20s\"\n[bootstrap]\nmethod = \"native\"\nswap = \"1G\"\nproxy = {:?}\n[agent]\ncommand = [\"sh\", \"-c\", {COMMIT:?}, \"agent\", \"{{prompt_file}}\"]\ntimeout = \"60s\"\nretry_backoff = \"100ms\"\n",
        fake.url, host.proxy
    ));
}

/// The admin's authorized_keys of a test host, where the fake's "guest agent" puts the keys of
/// a VM's `ssh-keys` metadata: reached through the root of the host's sshd (its chroot, in its
/// mount namespace), so the write goes through the overlay like any write on the host. (Writing
/// the overlay's upper layer underneath it is undefined: the host may go on reading the old size.)
fn admin_keys(host: &TestHost) -> std::path::PathBuf {
    let env = std::fs::read_to_string(host.dir.path().join("env")).unwrap();
    let unshare = env
        .lines()
        .find_map(|l| l.strip_prefix("UNSHARE_PID="))
        .unwrap()
        .trim()
        .to_string();
    let children =
        std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
    let sshd = children.split_whitespace().next().unwrap().to_string();
    std::path::PathBuf::from(format!("/proc/{sshd}/root/home/admin/.ssh/authorized_keys"))
}

const COMMIT: &str =
    r#"echo "working on $CWO_TASK_ID"; git commit -q --allow-empty -m "$CWO_TASK_ID""#;

#[test]
fn a_build_on_a_test_host_leaves_one_labelled_image_and_no_builder() {
    let Some(host) = TestHost::start("a_build_on_a_test_host") else {
        return;
    };
    let fake = FakeGce::start("proj-test", &host.ip, Some(admin_keys(&host)));
    fake.set_host_key(Some(host.host_key.clone()));
    let env = crate::common::TestEnv::new();
    on_host(&env, &fake, &host);
    let hash = {
        let list = env.cwo(&["image", "list", "--format", "json"]);
        assert_eq!(list.code, 0, "{}", list.stderr);
        list.json()["hash"].as_str().unwrap().to_string()
    };

    let run = env.cwo(&["image", "build", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let built = run.json();
    let name = built["image"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("cwo-worker-"), "{name}");
    assert_eq!(built["hash"], hash.as_str());
    // The builder ran the bake: every step, then the clean.
    for step in ["packages", "opencode", "watchdog", "clean"] {
        assert!(
            run.stderr.lines().any(|l| l.trim_start().starts_with(step)),
            "{step}: {}",
            run.stderr
        );
    }
    // One image, in the family, with the hash, from the stopped builder's disk.
    let images = fake.images();
    assert_eq!(images.len(), 1, "{images:?}");
    let image = &images[0];
    assert_eq!(image["family"], "cwo-worker");
    assert_eq!(image["labels"]["cwo-image-hash"], hash.as_str());
    assert_eq!(image["status"], "READY");
    let builder = built["builder"].as_str().unwrap();
    assert!(
        image["sourceDisk"].as_str().unwrap().contains(builder),
        "{image}"
    );
    let calls: Vec<String> = fake
        .log()
        .into_iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    let at = |what: &str| {
        calls
            .iter()
            .position(|c| c.contains(what))
            .unwrap_or_else(|| panic!("no {what} in {calls:#?}"))
    };
    assert!(at("/stop") < at("POST /compute/v1/projects/proj-test/global/images"));
    // Marked as being imaged before it was stopped: no other command deletes it meanwhile.
    let marked = fake
        .log()
        .into_iter()
        .position(|r| r.path.contains("/setLabels") && r.body.contains("cwo-imaging"))
        .unwrap_or_else(|| panic!("the builder was never marked: {calls:#?}"));
    assert!(marked < at("/stop"), "{calls:#?}");
    // The builder is gone, and journaled so.
    assert!(fake.vm_names().is_empty(), "{:?}", fake.vm_names());
    assert_eq!(
        env.journal("SELECT state, termination_reason FROM workers"),
        "deleted|image built"
    );

    // A worker booted from that image (the builder's files, on a new host with its own host
    // key and the admin's key): the bootstrap finds the bake's marker and only checks.
    let image_files = host.stop();
    let worker_host = image_files.start();
    let fake2 = FakeGce::start("proj-test", &worker_host.ip, Some(admin_keys(&worker_host)));
    fake2.set_host_key(Some(worker_host.host_key.clone()));
    fake2.add_image(
        &name,
        "cwo-worker",
        image["labels"].clone(),
        image["creationTimestamp"].as_str().unwrap(),
    );
    let env2 = crate::common::TestEnv::new();
    on_host(&env2, &fake2, &worker_host);
    let id = env2.add(&["on a baked worker"]);
    let run = env2.cwo(&["run", "--once"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(env2.ball(&id)["state"], "complete", "{}", run.stderr);
    let body = fake2
        .log()
        .into_iter()
        .find(|r| r.method == "POST" && r.path.contains("/instances?"))
        .map(|r| serde_json::from_str::<Value>(&r.body).unwrap())
        .unwrap();
    assert_eq!(
        body["disks"][0]["initializeParams"]["sourceImage"],
        format!("projects/proj-test/global/images/{name}")
    );
    assert!(run.stderr.contains("(done at boot)"), "{}", run.stderr);
    for step in ["packages", "opencode", "sshd", "agent-env", "watchdog"] {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([step, "ok"])),
            "{step} only checked: {}",
            run.stderr
        );
    }
    assert_eq!(
        env2.journal("SELECT boot_image FROM workers"),
        name,
        "the journal knows the worker booted the image"
    );
    assert_ne!(env2.journal("SELECT bootstrap_ms FROM workers"), "NULL");
}

/// A builder is stopped so its disk can become an image; every other command deletes a stopped
/// worker at once. Marked (`cwo-imaging`), it is spared for an hour by `status`, `budget` and
/// `run`, and deleted by `cwo reap` when no build (no controller) holds it.
#[test]
fn a_builder_stopped_for_imaging_is_spared_until_its_build_is_gone() {
    let Some(g) = gcp("", "true", "") else { return };
    let now = chrono::Utc::now();
    let labels = |marked: i64| json!({"cwo-managed": "true", "cwo-project": "proj", "cwo-imaging": marked.to_string()});
    let created = (now - chrono::Duration::hours(3)).to_rfc3339();
    g.fake.add_vm(
        "us-central1-a",
        "cwo-proj-build-fresh1",
        labels(now.timestamp() - 60),
        &created,
        "TERMINATED",
    );
    g.fake.add_vm(
        "us-central1-a",
        "cwo-proj-build-stale1",
        labels(now.timestamp() - 2 * 3600),
        &created,
        "TERMINATED",
    );
    let status = g.env.cwo(&["status"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert_eq!(
        g.fake.vm_names(),
        ["cwo-proj-build-fresh1"],
        "the stale mark is no reason to keep a stopped VM: {}",
        status.stderr
    );
    let reap = g.env.cwo(&["reap", "--yes"]).ok();
    assert!(g.fake.vm_names().is_empty(), "{}", reap.stdout);
}
