//! Tests of the fake Compute API itself (tests/common/fake_gce.rs), driven with plain HTTP
//! (curl), so the `regionInstances.bulkInsert` behaviour cwo's fleets are tested against is
//! pinned down: bare machine types, name patterns, per-instance names, minCount against the
//! capacity faults, location policies, request ids, region operations and `max_live`; and the
//! conditional updates cwo makes on each VM of a batch (`instances.setMetadata`, the boot
//! disk's `disks.get` and `disks.setLabels`).

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::fake_gce::FakeGce;

const PROJECT: &str = "proj-bulk";
const REGION: &str = "us-central1";

/// One request with curl; the status and the JSON body.
fn call(method: &str, url: &str, body: Option<&Value>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "-X", method, url]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(b.to_string());
    }
    let out = cmd.output().expect("run curl");
    assert!(out.status.success(), "curl {method} {url} failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status.parse().unwrap(), json)
}

fn start() -> FakeGce {
    FakeGce::start(PROJECT, "127.0.0.1", None)
}

fn bulk(fake: &FakeGce, body: &Value, request_id: Option<&str>) -> (u16, Value) {
    let mut url = format!(
        "{}/compute/v1/projects/{PROJECT}/regions/{REGION}/instances/bulkInsert",
        fake.url
    );
    if let Some(id) = request_id {
        url.push_str(&format!("?requestId={id}"));
    }
    call("POST", &url, Some(body))
}

/// A BulkInsertInstanceResource as cwo would send it, with `extra` merged over it.
fn resource(extra: Value) -> Value {
    let mut r = json!({
        "count": "3",
        "namePattern": "cwo-w-####",
        "instanceProperties": {
            "machineType": "e2-micro",
            "labels": {"cwo-managed": "true", "cwo-fleet": "f1"},
            "disks": [{"boot": true, "autoDelete": true, "initializeParams": {
                "sourceImage": "projects/debian-cloud/global/images/family/debian-12",
                "diskSizeGb": "10", "diskType": "pd-standard"}}],
            "networkInterfaces": [{"network": "global/networks/default",
                "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]}],
            "scheduling": {"provisioningModel": "STANDARD", "instanceTerminationAction": "DELETE",
                "maxRunDuration": {"seconds": "3600"}},
        },
    });
    for (k, v) in extra.as_object().unwrap() {
        r[k] = v.clone();
    }
    r
}

fn zone_of(vm: &Value) -> String {
    vm["zone"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

/// The zones the fake's VMs are in, with how many each.
fn per_zone(fake: &FakeGce) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for name in fake.vm_names() {
        *counts.entry(zone_of(&fake.vm(&name).unwrap())).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

fn error_codes(op: &Value) -> Vec<String> {
    op["error"]["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["code"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn bulk_insert_takes_a_bare_machine_type_name_only() {
    let fake = start();
    for url_form in [
        "zones/us-central1-a/machineTypes/e2-micro",
        "https://www.googleapis.com/compute/v1/projects/proj-bulk/zones/us-central1-a/machineTypes/e2-micro",
    ] {
        let mut r = resource(json!({}));
        r["instanceProperties"]["machineType"] = json!(url_form);
        let (status, reply) = bulk(&fake, &r, None);
        assert_eq!(status, 400, "{url_form}: {reply}");
        assert_eq!(reply["error"]["errors"][0]["reason"], "invalid", "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .contains("instanceProperties.machineType"),
            "{reply}"
        );
    }
    let mut r = resource(json!({}));
    r["instanceProperties"]["disks"][0]["initializeParams"]["diskType"] =
        json!("zones/us-central1-a/diskTypes/pd-standard");
    assert_eq!(bulk(&fake, &r, None).0, 400, "a disk type URL too");
    assert!(
        fake.vm_names().is_empty(),
        "a refused request creates nothing"
    );

    let (status, op) = bulk(&fake, &resource(json!({})), None);
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["operationType"], "bulkInsert");
    assert_eq!(op["status"], "DONE");
    assert!(
        op["region"]
            .as_str()
            .unwrap()
            .ends_with("/regions/us-central1"),
        "{op}"
    );
    assert!(op.get("zone").is_none(), "a region operation: {op}");
    assert!(op.get("error").is_none(), "{op}");
    let vm = fake.vm("cwo-w-0001").expect("created");
    let zone = zone_of(&vm);
    assert_eq!(
        vm["machineType"],
        format!("zones/{zone}/machineTypes/e2-micro")
    );
    assert_eq!(vm["labels"]["cwo-fleet"], "f1");
    assert_eq!(vm["status"], "RUNNING");
    assert_eq!(
        vm["networkInterfaces"][0]["accessConfigs"][0]["natIP"],
        "127.0.0.1"
    );
    let disk = fake
        .disks()
        .into_iter()
        .find(|d| d["name"] == "cwo-w-0001")
        .expect("its boot disk");
    assert_eq!(disk["type"], format!("zones/{zone}/diskTypes/pd-standard"));
}

#[test]
fn bulk_insert_name_pattern_counts_on_after_the_biggest_existing_number() {
    let fake = start();
    let (status, _) = bulk(&fake, &resource(json!({"count": "2"})), None);
    assert_eq!(status, 200);
    assert_eq!(fake.created(), ["cwo-w-0001", "cwo-w-0002"]);

    fake.add_vm(
        "us-central1-b",
        "cwo-w-0041",
        json!({}),
        "2026-01-01T00:00:00Z",
        "RUNNING",
    );
    // Names that only look alike do not count: other width, other prefix.
    fake.add_vm(
        "us-central1-b",
        "cwo-w-99999",
        json!({}),
        "2026-01-01T00:00:00Z",
        "RUNNING",
    );
    fake.add_vm(
        "us-central1-b",
        "cwo-x-0500",
        json!({}),
        "2026-01-01T00:00:00Z",
        "RUNNING",
    );
    let (status, _) = bulk(&fake, &resource(json!({"count": 3})), None);
    assert_eq!(status, 200);
    assert_eq!(
        fake.created()[2..],
        ["cwo-w-0042", "cwo-w-0043", "cwo-w-0044"]
    );

    for bad in ["cwo-w", "cwo-##-##", "w-###################"] {
        let (status, reply) = bulk(&fake, &resource(json!({"namePattern": bad})), None);
        assert_eq!(status, 400, "{bad}: {reply}");
    }
    let (status, _) = bulk(
        &fake,
        &json!({"count": "1", "instanceProperties": {"machineType": "e2-micro"}}),
        None,
    );
    assert_eq!(status, 400, "neither namePattern nor perInstanceProperties");
    assert_eq!(fake.created().len(), 5);
}

#[test]
fn bulk_insert_names_from_per_instance_properties() {
    let fake = start();
    let mut r = resource(json!({
        "count": "2",
        "perInstanceProperties": {"cwo-w-blue": {"hostname": "blue.internal"}, "cwo-w-red": {}},
    }));
    r.as_object_mut().unwrap().remove("namePattern");
    let (status, op) = bulk(&fake, &r, None);
    assert_eq!(status, 200, "{op}");
    assert_eq!(fake.vm_names(), ["cwo-w-blue", "cwo-w-red"]);
    assert_eq!(fake.vm("cwo-w-blue").unwrap()["hostname"], "blue.internal");
    assert!(fake.vm("cwo-w-red").unwrap().get("hostname").is_none());

    // A name that exists refuses the whole batch.
    let clash = json!({
        "count": "2",
        "perInstanceProperties": {"cwo-w-green": {}, "cwo-w-red": {}},
        "instanceProperties": {"machineType": "e2-micro"},
    });
    let (status, reply) = bulk(&fake, &clash, None);
    assert_eq!(status, 409, "{reply}");
    assert_eq!(reply["error"]["errors"][0]["reason"], "alreadyExists");
    assert!(
        fake.vm("cwo-w-green").is_none(),
        "nothing of the batch is created"
    );

    // Names first from the map, the rest from the pattern; count defaults to the map's size.
    let mixed = json!({
        "count": "3", "namePattern": "cwo-v-##",
        "perInstanceProperties": {"cwo-v-head": {}},
        "instanceProperties": {"machineType": "e2-micro"},
    });
    assert_eq!(bulk(&fake, &mixed, None).0, 200);
    assert_eq!(fake.created()[2..], ["cwo-v-head", "cwo-v-01", "cwo-v-02"]);
    let no_count = json!({
        "perInstanceProperties": {"cwo-u-a": {}, "cwo-u-b": {}},
        "instanceProperties": {"machineType": "e2-micro"},
    });
    assert_eq!(bulk(&fake, &no_count, None).0, 200);
    assert!(fake.vm("cwo-u-b").is_some());
    let short = json!({
        "count": "3",
        "perInstanceProperties": {"cwo-t-a": {}},
        "instanceProperties": {"machineType": "e2-micro"},
    });
    assert_eq!(
        bulk(&fake, &short, None).0,
        400,
        "3 VMs, 1 name, no pattern"
    );
}

#[test]
fn bulk_insert_creates_what_fits_when_min_count_is_met() {
    let fake = start();
    fake.set_region_zones(REGION, &["us-central1-a", "us-central1-b"]);
    {
        let mut f = fake.faults();
        f.zone_room.insert("us-central1-a".into(), 2);
        f.zone_room.insert("us-central1-b".into(), 1);
    }
    let r =
        resource(json!({"count": "5", "minCount": "2", "locationPolicy": {"targetShape": "ANY"}}));
    let (status, op) = bulk(&fake, &r, None);
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["status"], "DONE");
    assert!(op.get("error").is_none(), "minCount met: success: {op}");
    assert_eq!(
        per_zone(&fake),
        [
            ("us-central1-a".to_string(), 2),
            ("us-central1-b".to_string(), 1)
        ]
    );
    let status = &op["instancesBulkInsertOperationMetadata"]["perLocationStatus"];
    assert_eq!(status["zones/us-central1-a"]["createdVmCount"], 2, "{op}");
    assert_eq!(status["zones/us-central1-b"]["createdVmCount"], 1, "{op}");
    assert_eq!(status["zones/us-central1-a"]["status"], "DONE");
    assert_eq!(
        fake.faults().zone_room["us-central1-a"],
        0,
        "the room is used up"
    );

    // The default shape puts everything in one zone: the one with the most room.
    let fake = start();
    fake.set_region_zones(REGION, &["us-central1-a", "us-central1-b"]);
    {
        let mut f = fake.faults();
        f.zone_room.insert("us-central1-a".into(), 1);
        f.zone_room.insert("us-central1-b".into(), 3);
    }
    let (status, op) = bulk(
        &fake,
        &resource(json!({"count": "4", "minCount": "1"})),
        None,
    );
    assert_eq!(status, 200, "{op}");
    assert_eq!(per_zone(&fake), [("us-central1-b".to_string(), 3)]);

    // Region-wide room caps the whole batch.
    let fake = start();
    fake.faults().region_room = Some(2);
    let r = resource(
        json!({"count": "4", "minCount": "2", "locationPolicy": {"targetShape": "BALANCED"}}),
    );
    let (_, op) = bulk(&fake, &r, None);
    assert!(op.get("error").is_none(), "{op}");
    assert_eq!(fake.vm_names().len(), 2);
}

#[test]
fn bulk_insert_below_min_count_creates_nothing_and_the_operation_fails() {
    let fake = start();
    fake.set_region_zones(REGION, &["us-central1-a", "us-central1-b"]);
    {
        let mut f = fake.faults();
        f.zone_room.insert("us-central1-a".into(), 1);
        f.capacity_zones.insert("us-central1-b".into());
    }
    let r =
        resource(json!({"count": "3", "minCount": "2", "locationPolicy": {"targetShape": "ANY"}}));
    let (status, op) = bulk(&fake, &r, None);
    assert_eq!(
        status, 200,
        "the call is accepted; the operation fails: {op}"
    );
    assert_eq!(op["status"], "DONE");
    assert_eq!(
        error_codes(&op),
        ["ZONE_RESOURCE_POOL_EXHAUSTED", "VM_MIN_COUNT_NOT_REACHED"],
        "{op}"
    );
    assert_eq!(op["httpErrorStatusCode"], 400);
    assert!(fake.vm_names().is_empty());
    assert!(fake.created().is_empty());
    assert_eq!(fake.faults().zone_room["us-central1-a"], 1, "no room used");

    // minCount defaults to count: 2 of 3 fitting is not enough.
    fake.faults().capacity_zones.clear();
    fake.faults().zone_room.insert("us-central1-b".into(), 1);
    let (_, op) = bulk(
        &fake,
        &resource(json!({"locationPolicy": {"targetShape": "ANY"}})),
        None,
    );
    assert_eq!(error_codes(&op).len(), 2, "{op}");
    assert!(fake.vm_names().is_empty());

    // A single insert into a zone whose room is used up fails as before.
    let insert = |name: &str| {
        call(
            "POST",
            &format!(
                "{}/compute/v1/projects/{PROJECT}/zones/us-central1-a/instances",
                fake.url
            ),
            Some(
                &json!({"name": name, "machineType": "zones/us-central1-a/machineTypes/e2-micro"}),
            ),
        )
    };
    assert!(insert("solo-1").1.get("error").is_none());
    let (_, op) = insert("solo-2");
    assert_eq!(error_codes(&op), ["ZONE_RESOURCE_POOL_EXHAUSTED"], "{op}");
    assert_eq!(fake.vm_names(), ["solo-1"]);
}

#[test]
fn bulk_insert_honours_the_location_policy() {
    let fake = start();
    let deny_ab = json!({
        "zones/us-central1-a": {"preference": "DENY"},
        "zones/us-central1-b": {"preference": "DENY"},
    });
    let r = resource(
        json!({"count": "4", "locationPolicy": {"locations": deny_ab, "targetShape": "ANY"}}),
    );
    assert_eq!(bulk(&fake, &r, None).0, 200);
    assert_eq!(
        per_zone(&fake),
        [("us-central1-c".to_string(), 4)],
        "the first allowed zone"
    );

    // Zones not listed stay allowed; BALANCED spreads over them; maxCount caps a zone.
    let fake = start();
    let locations = json!({
        "zones/us-central1-a": {"preference": "DENY"},
        "zones/us-central1-b": {"preference": "ALLOW", "constraints": {"maxCount": 1}},
    });
    let r = resource(
        json!({"count": "5", "locationPolicy": {"locations": locations, "targetShape": "BALANCED"}}),
    );
    let (_, op) = bulk(&fake, &r, None);
    assert!(op.get("error").is_none(), "{op}");
    assert_eq!(
        per_zone(&fake),
        [
            ("us-central1-b".to_string(), 1),
            ("us-central1-c".to_string(), 2),
            ("us-central1-f".to_string(), 2)
        ]
    );

    // Every zone denied: nothing fits.
    let fake = start();
    fake.set_region_zones(REGION, &["us-central1-a"]);
    let r = resource(
        json!({"locationPolicy": {"locations": {"zones/us-central1-a": {"preference": "DENY"}}}}),
    );
    let (_, op) = bulk(&fake, &r, None);
    assert_eq!(error_codes(&op)[1], "VM_MIN_COUNT_NOT_REACHED");
    assert!(fake.vm_names().is_empty());

    // A zone outside the region, or an unknown shape, is refused.
    let r = resource(
        json!({"locationPolicy": {"locations": {"zones/europe-west1-b": {"preference": "ALLOW"}}}}),
    );
    assert_eq!(bulk(&fake, &r, None).0, 400);
    let r = resource(json!({"locationPolicy": {"targetShape": "SPREAD"}}));
    assert_eq!(bulk(&fake, &r, None).0, 400);
}

#[test]
fn bulk_insert_with_the_same_request_id_is_one_batch() {
    let fake = start();
    fake.faults().op_delay = Duration::from_millis(300);
    let id = "0b9f4a4e-4d3c-4a8e-9d55-3f1c2b7a6e01";
    let (_, first) = bulk(&fake, &resource(json!({})), Some(id));
    assert_eq!(first["status"], "RUNNING");
    let (_, again) = bulk(&fake, &resource(json!({})), Some(id));
    assert_eq!(again["name"], first["name"], "the same operation");
    assert_eq!(fake.created().len(), 3, "no second batch");
    assert_eq!(fake.bulk_calls().len(), 2, "both bodies are recorded");
    assert_eq!(fake.bulk_calls()[1]["namePattern"], "cwo-w-####");

    // Another id is another batch (its names count on).
    let (_, other) = bulk(
        &fake,
        &resource(json!({})),
        Some("0b9f4a4e-4d3c-4a8e-9d55-3f1c2b7a6e02"),
    );
    assert_ne!(other["name"], first["name"]);
    assert_eq!(fake.created().len(), 6);
    assert_eq!(fake.created()[5], "cwo-w-0006");

    // A failed batch's id answers the failed operation again, even once there is room.
    fake.faults().region_room = Some(0);
    let failed_id = "0b9f4a4e-4d3c-4a8e-9d55-3f1c2b7a6e03";
    let (_, failed) = bulk(&fake, &resource(json!({})), Some(failed_id));
    fake.faults().region_room = None;
    std::thread::sleep(Duration::from_millis(350));
    let (_, retried) = bulk(&fake, &resource(json!({})), Some(failed_id));
    assert_eq!(retried["name"], failed["name"]);
    assert_eq!(retried["status"], "DONE");
    assert_eq!(error_codes(&retried).len(), 2, "{retried}");
    assert_eq!(fake.created().len(), 6);
}

#[test]
fn region_operations_get_and_wait() {
    let fake = start();
    fake.faults().op_delay = Duration::from_millis(400);
    let (_, op) = bulk(&fake, &resource(json!({})), None);
    let name = op["name"].as_str().unwrap();
    assert_eq!(op["status"], "RUNNING");
    assert_eq!(
        op["instancesBulkInsertOperationMetadata"]["perLocationStatus"]["zones/us-central1-a"]["status"],
        "CREATING",
        "{op}"
    );
    let ops = format!(
        "{}/compute/v1/projects/{PROJECT}/regions/{REGION}/operations",
        fake.url
    );
    let (status, got) = call("GET", &format!("{ops}/{name}"), None);
    assert_eq!((status, got["status"].as_str()), (200, Some("RUNNING")));
    let (status, waited) = call("POST", &format!("{ops}/{name}/wait"), None);
    assert_eq!(status, 200);
    assert_eq!(waited["status"], "DONE", "wait returns once it is done");
    assert!(waited["endTime"].is_string());
    let (_, got) = call("GET", &format!("{ops}/{name}"), None);
    assert_eq!(got["status"], "DONE");

    let elsewhere = format!(
        "{}/compute/v1/projects/{PROJECT}/regions/europe-west1/operations/{name}",
        fake.url
    );
    assert_eq!(
        call("GET", &elsewhere, None).0,
        404,
        "another region's operation"
    );
    assert_eq!(call("GET", &format!("{ops}/operation-999"), None).0, 404);
}

#[test]
fn max_live_is_the_most_vms_at_once_across_creates_and_deletes() {
    let fake = start();
    assert_eq!(fake.max_live(), 0);
    bulk(&fake, &resource(json!({})), None);
    assert_eq!(fake.max_live(), 3);
    let delete = |name: &str| {
        call(
            "DELETE",
            &format!(
                "{}/compute/v1/projects/{PROJECT}/zones/{}/instances/{name}",
                fake.url,
                zone_of(&fake.vm(name).unwrap())
            ),
            None,
        )
    };
    assert_eq!(delete("cwo-w-0001").0, 200);
    assert_eq!(delete("cwo-w-0002").0, 200);
    assert_eq!(fake.vm_names(), ["cwo-w-0003"]);
    bulk(&fake, &resource(json!({"count": "2"})), None);
    assert_eq!(fake.vm_names().len(), 3);
    assert_eq!(fake.max_live(), 3, "never more than 3 at once");
    fake.add_vm(
        "us-central1-c",
        "extra",
        json!({}),
        "2026-01-01T00:00:00Z",
        "RUNNING",
    );
    assert_eq!(fake.max_live(), 4);
    fake.delete_externally("extra");

    // A delete whose operation completed counts as gone even if nobody polled it.
    fake.faults().op_delay = Duration::from_millis(100);
    delete("cwo-w-0003");
    std::thread::sleep(Duration::from_millis(150));
    bulk(&fake, &resource(json!({"count": "2"})), None);
    assert_eq!(fake.vm_names().len(), 4);
    assert_eq!(fake.max_live(), 4);
    // The TTL's deletes are in the record too.
    fake.advance(Duration::from_secs(3601));
    assert!(fake.vm_names().is_empty());

    let history = fake.history();
    let created = history.iter().filter(|e| e.created).count();
    let deleted = history.iter().filter(|e| !e.created).count();
    assert_eq!((created, deleted), (8, 8), "{history:?}");
    assert!(history.windows(2).all(|w| w[0].at <= w[1].at), "in order");
    let mut live = 0usize;
    let mut most = 0;
    for e in &history {
        live = if e.created { live + 1 } else { live - 1 };
        most = most.max(live);
    }
    assert_eq!(most, fake.max_live(), "max_live agrees with the history");
}

/// `instances.setMetadata` on VM `name`, with `metadata` as its body.
fn set_metadata(fake: &FakeGce, name: &str, metadata: &Value) -> (u16, Value) {
    let zone = zone_of(&fake.vm(name).unwrap());
    call(
        "POST",
        &format!(
            "{}/compute/v1/projects/{PROJECT}/zones/{zone}/instances/{name}/setMetadata",
            fake.url
        ),
        Some(metadata),
    )
}

/// What `instances.get` shows of VM `name`'s metadata.
fn metadata_of(fake: &FakeGce, name: &str) -> Value {
    let zone = zone_of(&fake.vm(name).unwrap());
    let (status, vm) = call(
        "GET",
        &format!(
            "{}/compute/v1/projects/{PROJECT}/zones/{zone}/instances/{name}",
            fake.url
        ),
        None,
    );
    assert_eq!(status, 200, "{vm}");
    vm["metadata"].clone()
}

#[test]
fn set_metadata_needs_the_current_fingerprint_and_replaces_the_metadata_whole() {
    let fake = start();
    let mut r = resource(json!({"count": "1"}));
    r["instanceProperties"]["metadata"] =
        json!({"items": [{"key": "startup-script", "value": "echo hi"}]});
    bulk(&fake, &r, None);
    let current = metadata_of(&fake, "cwo-w-0001");
    let fp = current["fingerprint"]
        .as_str()
        .expect("a fingerprint")
        .to_string();
    assert_eq!(current["items"][0]["key"], "startup-script");

    // Without a fingerprint, or with another one: refused, nothing changes.
    let items = json!([{"key": "ssh-keys", "value": "u:ssh-ed25519 AAAA one"}]);
    for body in [
        json!({"items": items}),
        json!({"fingerprint": "AAAAAAAAAAA=", "items": items}),
    ] {
        let (status, reply) = set_metadata(&fake, "cwo-w-0001", &body);
        assert_eq!(status, 412, "{reply}");
        assert_eq!(reply["error"]["errors"][0]["reason"], "conditionNotMet");
    }
    assert_eq!(metadata_of(&fake, "cwo-w-0001"), current);

    // With it: a zone operation, and the metadata is the body's items only.
    let (status, op) = set_metadata(
        &fake,
        "cwo-w-0001",
        &json!({"fingerprint": fp, "items": items}),
    );
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["operationType"], "setMetadata");
    assert!(op["zone"].is_string(), "a zone operation: {op}");
    let now = metadata_of(&fake, "cwo-w-0001");
    assert_eq!(
        now["items"], items,
        "replaced whole: startup-script is gone"
    );
    assert_ne!(now["fingerprint"], json!(fp), "a new fingerprint");

    // The old fingerprint is stale now.
    let (status, _) = set_metadata(
        &fake,
        "cwo-w-0001",
        &json!({"fingerprint": fp, "items": []}),
    );
    assert_eq!(status, 412);

    // An unknown VM is 404, as for any instance method.
    let (status, _) = call(
        "POST",
        &format!(
            "{}/compute/v1/projects/{PROJECT}/zones/us-central1-a/instances/nope/setMetadata",
            fake.url
        ),
        Some(&json!({"fingerprint": fp, "items": []})),
    );
    assert_eq!(status, 404);
}

#[test]
fn the_guest_agent_installs_set_metadata_keys_once_the_operation_lands_and_each_key_once() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("authorized_keys");
    let fake = FakeGce::start(PROJECT, "127.0.0.1", Some(keys.clone()));
    let read = || std::fs::read_to_string(&keys).unwrap_or_default();
    // One body for three VMs, with a key in it: installed once, not once per VM.
    let mut r = resource(json!({}));
    r["instanceProperties"]["metadata"] =
        json!({"items": [{"key": "ssh-keys", "value": "u:ssh-ed25519 AAAA shared"}]});
    bulk(&fake, &r, None);
    assert_eq!(read(), "ssh-ed25519 AAAA shared\n");

    fake.faults().op_delay = Duration::from_millis(300);
    let fp = metadata_of(&fake, "cwo-w-0002")["fingerprint"].clone();
    let (status, op) = set_metadata(
        &fake,
        "cwo-w-0002",
        &json!({"fingerprint": fp, "items": [{"key": "ssh-keys",
            "value": "u:ssh-ed25519 AAAA two\nu:ssh-ed25519 AAAA shared"}]}),
    );
    assert_eq!((status, op["status"].as_str()), (200, Some("RUNNING")));
    assert_eq!(read(), "ssh-ed25519 AAAA shared\n", "not before it lands");
    let op_url = format!(
        "{}/compute/v1/projects/{PROJECT}/zones/{}/operations/{}",
        fake.url,
        zone_of(&fake.vm("cwo-w-0002").unwrap()),
        op["name"].as_str().unwrap()
    );
    // Polled until done (the fake completes it after op_delay).
    while call("GET", &op_url, None).1["status"] != "DONE" {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(read(), "ssh-ed25519 AAAA shared\nssh-ed25519 AAAA two\n");
}

#[test]
fn regions_get_lists_the_region_zones() {
    let fake = start();
    fake.set_region_zones("europe-west4", &["europe-west4-a", "europe-west4-b"]);
    let (status, region) = call(
        "GET",
        &format!(
            "{}/compute/v1/projects/{PROJECT}/regions/europe-west4",
            fake.url
        ),
        None,
    );
    assert_eq!(status, 200);
    let zones: Vec<&str> = region["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z.as_str().unwrap().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(zones, ["europe-west4-a", "europe-west4-b"]);
}

/// `disks.get` of disk `name` in `zone`.
fn get_disk(fake: &FakeGce, zone: &str, name: &str) -> (u16, Value) {
    call(
        "GET",
        &format!(
            "{}/compute/v1/projects/{PROJECT}/zones/{zone}/disks/{name}",
            fake.url
        ),
        None,
    )
}

/// `disks.setLabels` on disk `name` in `zone`, with `body` (a ZoneSetLabelsRequest).
fn set_disk_labels(fake: &FakeGce, zone: &str, name: &str, body: &Value) -> (u16, Value) {
    call(
        "POST",
        &format!(
            "{}/compute/v1/projects/{PROJECT}/zones/{zone}/disks/{name}/setLabels",
            fake.url
        ),
        Some(body),
    )
}

#[test]
fn disk_set_labels_needs_the_current_fingerprint_and_replaces_the_labels_whole() {
    let fake = start();
    let mut r = resource(json!({"count": "1"}));
    r["instanceProperties"]["disks"][0]["initializeParams"]["labels"] =
        json!({"cwo-managed": "true", "cwo-project": "p1"});
    bulk(&fake, &r, None);
    let vm = fake.vm("cwo-w-0001").unwrap();
    let zone = zone_of(&vm);
    // The VM names its boot disk by URL, as instances.get does.
    let source = vm["disks"][0]["source"].as_str().expect("disks[].source");
    assert!(
        source.ends_with(&format!("/zones/{zone}/disks/cwo-w-0001")),
        "{source}"
    );

    let (status, disk) = get_disk(&fake, &zone, "cwo-w-0001");
    assert_eq!(status, 200, "{disk}");
    assert_eq!(
        disk["labels"],
        json!({"cwo-managed": "true", "cwo-project": "p1"})
    );
    assert_eq!(disk["selfLink"], source);
    let fp = disk["labelFingerprint"]
        .as_str()
        .expect("a fingerprint")
        .to_string();

    // Without a fingerprint, or with another one: refused, nothing changes.
    let labels = json!({"cwo-worker": "cwo-w-0001"});
    for body in [
        json!({"labels": labels}),
        json!({"labelFingerprint": "AAAAAAAAAAA=", "labels": labels}),
    ] {
        let (status, reply) = set_disk_labels(&fake, &zone, "cwo-w-0001", &body);
        assert_eq!(status, 412, "{reply}");
        assert_eq!(reply["error"]["errors"][0]["reason"], "conditionNotMet");
    }
    assert_eq!(get_disk(&fake, &zone, "cwo-w-0001").1, disk);

    // With it: a zone operation, and the labels are the body's only.
    fake.faults().op_delay = Duration::from_millis(200);
    let (status, op) = set_disk_labels(
        &fake,
        &zone,
        "cwo-w-0001",
        &json!({"labelFingerprint": fp, "labels": labels}),
    );
    assert_eq!(status, 200, "{op}");
    assert_eq!(op["operationType"], "setLabels");
    assert_eq!(op["targetLink"], source);
    assert_eq!(op["zone"], zone.as_str(), "a zone operation: {op}");
    let op_url = format!(
        "{}/compute/v1/projects/{PROJECT}/zones/{zone}/operations/{}",
        fake.url,
        op["name"].as_str().unwrap()
    );
    while call("GET", &op_url, None).1["status"] != "DONE" {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, now) = get_disk(&fake, &zone, "cwo-w-0001");
    assert_eq!(now["labels"], labels, "replaced whole");
    assert_ne!(now["labelFingerprint"], json!(fp), "a new fingerprint");

    // The old fingerprint is stale now.
    let (status, _) = set_disk_labels(
        &fake,
        &zone,
        "cwo-w-0001",
        &json!({"labelFingerprint": fp, "labels": {}}),
    );
    assert_eq!(status, 412);

    // Someone else's change between a get and a set makes the set's fingerprint stale.
    fake.faults().disk_label_races.push("cwo-w-0001".into());
    let current = now["labelFingerprint"].clone();
    let (status, _) = set_disk_labels(
        &fake,
        &zone,
        "cwo-w-0001",
        &json!({"labelFingerprint": current, "labels": labels}),
    );
    assert_eq!(status, 412);
    let (_, raced) = get_disk(&fake, &zone, "cwo-w-0001");
    assert_eq!(
        raced["labels"],
        json!({"cwo-worker": "cwo-w-0001", "changed-by": "someone"})
    );
    let (status, _) = set_disk_labels(
        &fake,
        &zone,
        "cwo-w-0001",
        &json!({"labelFingerprint": raced["labelFingerprint"], "labels": {}}),
    );
    assert_eq!(
        status, 200,
        "once is all: the fingerprint read again is current"
    );
    assert!(
        get_disk(&fake, &zone, "cwo-w-0001")
            .1
            .get("labels")
            .is_none(),
        "cleared"
    );

    // An unknown disk, the wrong zone, or a disk gone with its VM: 404.
    let other_zone = if zone == "us-central1-a" {
        "us-central1-b"
    } else {
        "us-central1-a"
    };
    assert_eq!(get_disk(&fake, other_zone, "cwo-w-0001").0, 404);
    assert_eq!(get_disk(&fake, &zone, "nope").0, 404);
    let body = json!({"labelFingerprint": fp, "labels": {}});
    assert_eq!(set_disk_labels(&fake, &zone, "nope", &body).0, 404);
    fake.delete_externally("cwo-w-0001");
    let (status, reply) = get_disk(&fake, &zone, "cwo-w-0001");
    assert_eq!(status, 404, "autoDelete: {reply}");
    assert_eq!(reply["error"]["errors"][0]["reason"], "notFound");
    assert_eq!(set_disk_labels(&fake, &zone, "cwo-w-0001", &body).0, 404);
}
