//! `cwo image build | list | prune` and `gcp.use_image` against the fake Compute API (issue 16).
//! The fake's VMs lead to a test sshd on this machine, which no bootstrap may change: the
//! builds here fail at the bootstrap (and must leave nothing behind), and a worker's image is
//! checked in its insert body. A whole build on an isolated test host is in
//! `a_build_on_a_test_host_leaves_one_labelled_image_and_no_builder`.

use std::time::Duration;

use serde_json::Value;

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
    assert!(run.stderr.contains("refusing to bootstrap"), "{}", run.stderr);
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
        g.env.journal("SELECT state, termination_reason FROM workers"),
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
