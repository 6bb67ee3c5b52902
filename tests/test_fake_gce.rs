//! Tests of the fake Compute API itself (tests/common/fake_gce.rs), driven with plain HTTP
//! (curl), so the `regionInstances.bulkInsert` behaviour cwo's fleets are tested against is
//! pinned down: bare machine types, name patterns, per-instance names, minCount against the
//! capacity faults, location policies, request ids, region operations and `max_live`; and the
//! conditional updates cwo makes on each VM of a batch (`instances.setMetadata`, the boot
//! disk's `disks.get` and `disks.setLabels`).
//!
//! Then `cwo image`'s calls, through the official clients where cwo uses them: instances.stop,
//! images insert (from a disk, from a Cloud Storage object), get, list, getFromFamily, delete,
//! global operations, and VMs booting from the fake's own images; and the Cloud Storage fake
//! (tests/common/fake_gcs.rs) under the google-cloud-storage client's uploads and the JSON
//! calls cwo writes by hand.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::fake_gce::FakeGce;
use crate::common::fake_gcs::FakeGcs;

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

// ---- instances.stop, images and global operations, through the official Compute client ----

const IMG_PROJECT: &str = "proj-img";
const ZONE: &str = "us-central1-a";
const BUCKET: &str = "cwo-images-proj-img";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A polling backoff that keeps the pollers' waits short (the client's default starts at 1 s).
fn fast_polling() -> google_cloud_gax::exponential_backoff::ExponentialBackoff {
    google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder::new()
        .with_initial_delay(Duration::from_millis(10))
        .with_maximum_delay(Duration::from_millis(50))
        .build()
        .unwrap()
}

fn anonymous() -> google_cloud_auth::credentials::Credentials {
    google_cloud_auth::credentials::anonymous::Builder::new().build()
}

/// The Images client pointed at the fake as cwo points its clients (`util::gcp_api::configure`).
async fn images_client(fake: &FakeGce) -> google_cloud_compute_v1::client::Images {
    google_cloud_compute_v1::client::Images::builder()
        .with_endpoint(fake.url.clone())
        .with_credentials(anonymous())
        .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry)
        .with_polling_backoff_policy(fast_polling())
        .build()
        .await
        .unwrap()
}

async fn instances_client(fake: &FakeGce) -> google_cloud_compute_v1::client::Instances {
    google_cloud_compute_v1::client::Instances::builder()
        .with_endpoint(fake.url.clone())
        .with_credentials(anonymous())
        .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry)
        .with_polling_backoff_policy(fast_polling())
        .build()
        .await
        .unwrap()
}

/// A VM as cwo's builder would be: a boot disk from `source_image`, autoDelete, a one-hour TTL.
fn insert_vm(fake: &FakeGce, project: &str, name: &str, source_image: &str) -> (u16, Value) {
    let body = json!({
        "name": name, "machineType": format!("zones/{ZONE}/machineTypes/e2-micro"),
        "disks": [{"boot": true, "autoDelete": true, "initializeParams": {
            "sourceImage": source_image, "diskSizeGb": "10",
            "diskType": format!("zones/{ZONE}/diskTypes/pd-standard")}}],
        "networkInterfaces": [{"network": "global/networks/default",
            "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]}],
        "scheduling": {"instanceTerminationAction": "DELETE", "maxRunDuration": {"seconds": "3600"}},
    });
    let url = format!(
        "{}/compute/v1/projects/{project}/zones/{ZONE}/instances",
        fake.url
    );
    call("POST", &url, Some(&body))
}

const DEBIAN: &str = "projects/debian-cloud/global/images/family/debian-12";

fn disk_image(name: &str, source_disk: &str) -> google_cloud_compute_v1::model::Image {
    google_cloud_compute_v1::model::Image::new()
        .set_name(name)
        .set_family("cwo-worker")
        .set_labels([("cwo-managed", "true"), ("cwo-hash", "h1")])
        .set_description("baked by cwo image build")
        .set_source_disk(source_disk)
}

/// The message of a failed call, as the client reports it.
fn message(err: &google_cloud_compute_v1::Error) -> String {
    err.status()
        .map(|s| s.message.clone())
        .unwrap_or_else(|| err.to_string())
}

#[test]
fn instances_stop_goes_stopping_then_terminated_and_clears_the_ttl() {
    use google_cloud_lro::Poller;
    let fake = FakeGce::start(IMG_PROJECT, "127.0.0.1", None);
    assert_eq!(insert_vm(&fake, IMG_PROJECT, "builder", DEBIAN).0, 200);
    fake.faults().op_delay = Duration::from_millis(300);
    rt().block_on(async {
        let client = instances_client(&fake).await;
        let stop = || {
            client
                .stop()
                .set_project(IMG_PROJECT)
                .set_zone(ZONE)
                .set_instance("builder")
        };
        let op = stop().send().await.expect("stop accepted");
        assert_eq!(op.operation_type.as_deref(), Some("stop"));
        assert_ne!(
            op.status,
            Some(google_cloud_compute_v1::model::operation::Status::Done)
        );
        assert_eq!(fake.vm("builder").unwrap()["status"], "STOPPING");

        let op = stop().poller().until_done().await.expect("stop lands");
        assert!(op.error.is_none(), "{op:?}");
        assert_eq!(fake.vm("builder").unwrap()["status"], "TERMINATED");
        // The stop cleared the termination timer: the TTL no longer deletes it.
        fake.advance(Duration::from_secs(7200));
        assert!(
            fake.vm("builder").is_some(),
            "a stopped VM outlives its TTL"
        );

        // "Stopping a VM which is already stopped will return without errors."
        let op = stop().poller().until_done().await.expect("stop again");
        assert!(op.error.is_none());
        assert_eq!(fake.stopped(), ["builder", "builder", "builder"]);

        let err = client
            .stop()
            .set_project(IMG_PROJECT)
            .set_zone(ZONE)
            .set_instance("nope")
            .send()
            .await
            .expect_err("no such VM");
        assert_eq!(err.http_status_code(), Some(404));
    });
    assert!(
        fake.log()
            .iter()
            .any(|r| r.method == "POST" && r.path.contains("/instances/builder/stop")),
        "recorded"
    );
}

#[test]
fn an_image_is_made_from_a_stopped_vms_disk_and_not_from_a_running_ones() {
    use google_cloud_lro::Poller;
    let fake = FakeGce::start(IMG_PROJECT, "127.0.0.1", None);
    assert_eq!(insert_vm(&fake, IMG_PROJECT, "builder", DEBIAN).0, 200);
    let disk = fake
        .disks()
        .into_iter()
        .find(|d| d["name"] == "builder")
        .expect("the boot disk");
    rt().block_on(async {
        let client = images_client(&fake).await;
        let insert = |image: google_cloud_compute_v1::model::Image| {
            client.insert().set_project(IMG_PROJECT).set_body(image)
        };

        // Running: the disk is in use.
        let err = insert(disk_image("img-1", "zones/us-central1-a/disks/builder"))
            .send()
            .await
            .expect_err("the disk of a running VM");
        assert_eq!(err.http_status_code(), Some(400));
        assert!(
            message(&err).contains("is already being used by 'projects/proj-img/zones/us-central1-a/instances/builder'"),
            "{err}"
        );
        // Unless forced.
        let forced = google_cloud_compute_v1::model::Image::new()
            .set_name("forced")
            .set_source_disk(disk["selfLink"].as_str().unwrap());
        let op = insert(forced)
            .set_force_create(true)
            .poller()
            .until_done()
            .await
            .expect("forceCreate");
        assert!(op.error.is_none());
        assert!(fake.image("img-1").is_none(), "a refused insert makes nothing");

        // Stopped: PENDING while the operation runs, READY once it is done.
        fake.stop_vm("builder");
        fake.faults().op_delay = Duration::from_millis(300);
        let op = insert(disk_image("img-1", "projects/proj-img/zones/us-central1-a/disks/builder"))
            .set_request_id("6b6e6e6b-0000-4000-8000-000000000001")
            .send()
            .await
            .expect("accepted");
        assert!(op.zone.is_none() && op.region.is_none(), "a global operation");
        assert!(op.self_link.as_deref().unwrap().contains("/global/operations/"));
        assert_eq!(fake.image("img-1").unwrap()["status"], "PENDING");
        // The same requestId is the same operation and no second image.
        let again = insert(disk_image("img-1", "zones/us-central1-a/disks/builder"))
            .set_request_id("6b6e6e6b-0000-4000-8000-000000000001")
            .send()
            .await
            .expect("the first operation");
        assert_eq!(again.name, op.name);
        let done = insert(disk_image("img-1", "zones/us-central1-a/disks/builder"))
            .set_request_id("6b6e6e6b-0000-4000-8000-000000000001")
            .poller()
            .until_done()
            .await
            .expect("done");
        assert_eq!(done.name, op.name);
        assert!(done.error.is_none());

        let image = client
            .get()
            .set_project(IMG_PROJECT)
            .set_image("img-1")
            .send()
            .await
            .expect("images.get");
        assert_eq!(
            image.status,
            Some(google_cloud_compute_v1::model::image::Status::Ready)
        );
        assert_eq!(image.family.as_deref(), Some("cwo-worker"));
        assert_eq!(image.labels["cwo-hash"], "h1");
        assert_eq!(
            image.source_type,
            Some(google_cloud_compute_v1::model::image::SourceType::Raw)
        );
        assert_eq!(
            image.source_disk.as_deref(),
            Some("https://www.googleapis.com/compute/v1/projects/proj-img/zones/us-central1-a/disks/builder")
        );
        assert_eq!(image.source_disk_id.as_deref(), disk["id"].as_str());
        assert_eq!(image.disk_size_gb, Some(10));
        assert!(image.archive_size_bytes.is_some_and(|n| n > 0));
        assert!(image.label_fingerprint.is_some_and(|f| !f.is_empty()));
        assert!(image.creation_timestamp.is_some());
        assert_eq!(image.storage_locations, ["us"]);
        assert_eq!(
            image.self_link.as_deref(),
            Some("https://www.googleapis.com/compute/v1/projects/proj-img/global/images/img-1")
        );
        assert_eq!(fake.images().len(), 2, "img-1 and forced");

        // The name is taken now.
        let err = insert(disk_image("img-1", "zones/us-central1-a/disks/builder"))
            .send()
            .await
            .expect_err("exists");
        assert_eq!(err.http_status_code(), Some(409));
    });
}

#[test]
fn image_inserts_that_compute_refuses() {
    let fake = FakeGce::start(IMG_PROJECT, "127.0.0.1", None);
    assert_eq!(insert_vm(&fake, IMG_PROJECT, "builder", DEBIAN).0, 200);
    fake.stop_vm("builder");
    let url = format!(
        "{}/compute/v1/projects/{IMG_PROJECT}/global/images",
        fake.url
    );
    let refused = |body: Value| {
        let (status, reply) = call("POST", &url, Some(&body));
        let reason = reply["error"]["errors"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let message = reply["error"]["message"].as_str().unwrap_or("").to_string();
        (status, reason, message)
    };
    let (status, reason, message) =
        refused(json!({"name": "i", "sourceDisk": "zones/us-central1-a/disks/nope"}));
    assert_eq!((status, reason.as_str()), (400, "invalid"));
    assert_eq!(
        message,
        "Invalid value for field 'resource.sourceDisk': 'zones/us-central1-a/disks/nope'. Referenced resource was not found."
    );
    let (status, _, message) =
        refused(json!({"name": "i", "sourceDisk": "zones/us-central1-b/disks/builder"}));
    assert_eq!(status, 400, "the wrong zone: {message}");
    let (status, _, message) = refused(json!({"name": "i", "sourceDisk": "disks/builder"}));
    assert_eq!(status, 400);
    assert!(message.ends_with("The URL is malformed."), "{message}");
    let (status, _, message) = refused(json!({"name": "i"}));
    assert_eq!(status, 400);
    assert_eq!(
        message,
        "Invalid resource usage: 'Must specify exactly one source for an image.'"
    );
    let (status, _, _) = refused(
        json!({"name": "i", "sourceDisk": "zones/us-central1-a/disks/builder",
        "rawDisk": {"source": "https://storage.googleapis.com/b/o.tar.gz"}}),
    );
    assert_eq!(status, 400, "two sources");
    let (status, _, _) =
        refused(json!({"name": "Bad_Name", "sourceDisk": "zones/us-central1-a/disks/builder"}));
    assert_eq!(status, 400);
    let (status, _, message) = refused(json!({"name": "i", "family": "cwo-worker",
        "labels": {"cwo-hash": "ABC"}, "sourceDisk": "zones/us-central1-a/disks/builder"}));
    assert_eq!(status, 400, "an upper-case label value");
    assert!(message.contains("Label value 'ABC'"), "{message}");
    let (status, _, _) = refused(json!({"name": "i", "guestOsFeatures": [{"type": "GVNIC2"}],
        "sourceDisk": "zones/us-central1-a/disks/builder"}));
    assert_eq!(status, 400, "an unknown guest OS feature");
    assert!(fake.images().is_empty(), "nothing refused was made");

    // An image whose operation fails is left FAILED.
    fake.faults().image_insert_errors = 1;
    let (status, op) = call(
        "POST",
        &url,
        Some(&json!({"name": "i", "sourceDisk": "zones/us-central1-a/disks/builder"})),
    );
    assert_eq!(status, 200);
    assert_eq!(op["status"], "DONE");
    assert_eq!(error_codes(&op), ["INTERNAL_ERROR"], "{op}");
    assert_eq!(fake.image("i").unwrap()["status"], "FAILED");
}

#[test]
fn a_raw_disk_image_is_read_from_the_linked_storage() {
    use google_cloud_compute_v1::model::{GuestOsFeature, Image, guest_os_feature, image::RawDisk};
    use google_cloud_lro::Poller;
    let fake = FakeGce::start(IMG_PROJECT, "127.0.0.1", None);
    let gcs = FakeGcs::start(IMG_PROJECT);
    let source = format!("https://storage.googleapis.com/{BUCKET}/uploads/alpine.tar.gz");
    let raw = |name: &str, source: &str| {
        Image::new()
            .set_name(name)
            .set_family("alpine")
            .set_raw_disk(RawDisk::new().set_source(source))
            .set_guest_os_features([
                GuestOsFeature::new().set_type(guest_os_feature::Type::Gvnic),
                GuestOsFeature::new().set_type(guest_os_feature::Type::VirtioScsiMultiqueue),
            ])
    };
    rt().block_on(async {
        let client = images_client(&fake).await;
        let insert = |image: Image| client.insert().set_project(IMG_PROJECT).set_body(image);

        // Unlinked, no bucket can be read.
        let err = insert(raw("alpine-1", &source)).send().await.expect_err("no storage");
        assert_eq!(err.http_status_code(), Some(400));
        assert_eq!(message(&err), format!("The Cloud Storage bucket '{BUCKET}' is not found."));

        fake.link_storage(gcs.reader());
        let err = insert(raw("alpine-1", &source)).send().await.expect_err("no bucket");
        assert!(message(&err).contains("is not found"), "{err}");
        gcs.add_bucket(BUCKET, "us-central1");
        let err = insert(raw("alpine-1", &source)).send().await.expect_err("no object");
        assert_eq!(err.http_status_code(), Some(404));
        assert_eq!(
            message(&err),
            format!("The resource 'https://www.googleapis.com/storage/v1/b/{BUCKET}/o/uploads/alpine.tar.gz' of type 'Google Cloud Storage object' was not found.")
        );
        let gs = format!("gs://{BUCKET}/uploads/alpine.tar.gz");
        let err = insert(raw("alpine-1", &gs)).send().await.expect_err("not a documented form");
        assert_eq!(err.http_status_code(), Some(400));

        gcs.put_object(BUCKET, "uploads/alpine.tar.gz", &[7u8; 1234]);
        let op = insert(raw("alpine-1", &source))
            .poller()
            .until_done()
            .await
            .expect("imported");
        assert!(op.error.is_none());
    });
    let image = fake.image("alpine-1").unwrap();
    assert_eq!(image["status"], "READY");
    assert_eq!(
        image["rawDisk"],
        json!({"source": source, "containerType": "TAR"})
    );
    assert_eq!(image["archiveSizeBytes"], "1234", "the object's size");
    assert_eq!(
        image["guestOsFeatures"],
        json!([{"type": "GVNIC"}, {"type": "VIRTIO_SCSI_MULTIQUEUE"}])
    );
    assert_eq!(image["family"], "alpine");
}

#[test]
fn images_list_filters_orders_and_pages() {
    let fake = FakeGce::start(IMG_PROJECT, "127.0.0.1", None);
    let labels = |hash: &str| json!({"cwo-managed": "true", "cwo-hash": hash});
    fake.add_image(
        "w-a",
        "cwo-worker",
        labels("h1"),
        "2026-01-01T00:00:00.000+00:00",
    );
    fake.add_image(
        "w-b",
        "cwo-worker",
        labels("h2"),
        "2026-01-03T00:00:00.000+00:00",
    );
    fake.add_image(
        "w-c",
        "cwo-worker",
        labels("h1"),
        "2026-01-02T00:00:00.000-05:00",
    );
    fake.add_image(
        "w-d",
        "cwo-worker",
        labels("h1"),
        "2026-01-04T00:00:00.000+00:00",
    );
    fake.add_image(
        "other",
        "alpine",
        json!({}),
        "2026-01-05T00:00:00.000+00:00",
    );
    rt().block_on(async {
        let client = images_client(&fake).await;
        let list = |filter: &str, token: &str| {
            client
                .list()
                .set_project(IMG_PROJECT)
                .set_filter(filter)
                .set_order_by("creationTimestamp desc")
                .set_max_results(2_u32)
                .set_page_token(token)
                .send()
        };
        let filter = r#"(family = "cwo-worker") AND (labels.cwo-hash = "h1")"#;
        let first = list(filter, "").await.expect("images.list");
        let names = |l: &google_cloud_compute_v1::model::ImageList| -> Vec<String> {
            l.items.iter().map(|i| i.name.clone().unwrap()).collect()
        };
        assert_eq!(
            names(&first),
            ["w-d", "w-c"],
            "newest first, by time not text"
        );
        let token = first.next_page_token.clone().expect("a second page");
        let second = list(filter, &token).await.unwrap();
        assert_eq!(names(&second), ["w-a"]);
        assert!(second.next_page_token.as_deref().unwrap_or("").is_empty());
        let none = list(r#"family = "nope""#, "").await.unwrap();
        assert!(none.items.is_empty());
    });
    let names = |filter: &str| -> Vec<String> {
        let url = format!(
            "{}/compute/v1/projects/{IMG_PROJECT}/global/images?filter={}",
            fake.url,
            filter
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' =>
                        (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        );
        let (status, reply) = call("GET", &url, None);
        assert_eq!(status, 200, "{filter}: {reply}");
        reply["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(""), ["other", "w-a", "w-b", "w-c", "w-d"], "by name");
    assert_eq!(
        names(r#"(family = "cwo-worker") (labels.cwo-hash != "h1")"#),
        ["w-b"]
    );
    assert_eq!(
        names(r#"(labels.cwo-hash = "h2") OR (family = "alpine")"#),
        ["other", "w-b"]
    );
    assert_eq!(names("labels.cwo-hash:*"), ["w-a", "w-b", "w-c", "w-d"]);
    assert_eq!(names(r#"NOT (family = cwo-worker)"#), ["other"]);
    assert_eq!(
        names(r#"creationTimestamp > "2026-01-03T00:00:00.000+00:00""#),
        ["other", "w-d"]
    );
    let url = format!(
        "{}/compute/v1/projects/{IMG_PROJECT}/global/images?filter=%28family",
        fake.url
    );
    assert_eq!(
        call("GET", &url, None).0,
        400,
        "a filter that does not parse"
    );
}

#[test]
fn get_from_family_is_the_newest_ready_image_not_deprecated() {
    let fake = FakeGce::start(IMG_PROJECT, "127.0.0.1", None);
    let family = |name: &str| {
        let url = format!(
            "{}/compute/v1/projects/{IMG_PROJECT}/global/images/family/{name}",
            fake.url
        );
        let (status, reply) = call("GET", &url, None);
        (status, reply["name"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(family("cwo-worker").0, 404, "no image yet");
    fake.add_image(
        "a",
        "cwo-worker",
        json!({}),
        "2026-01-01T00:00:00.000+00:00",
    );
    fake.add_image(
        "b",
        "cwo-worker",
        json!({}),
        "2026-03-01T00:00:00.000+00:00",
    );
    fake.add_image(
        "c",
        "cwo-worker",
        json!({}),
        "2026-02-01T00:00:00.000+00:00",
    );
    fake.add_image("z", "other", json!({}), "2026-04-01T00:00:00.000+00:00");
    assert_eq!(family("cwo-worker"), (200, "b".to_string()));
    fake.deprecate_image("b", "DEPRECATED");
    assert_eq!(family("cwo-worker"), (200, "c".to_string()), "rolled back");

    // A new image of the family counts once READY.
    assert_eq!(insert_vm(&fake, IMG_PROJECT, "builder", DEBIAN).0, 200);
    fake.stop_vm("builder");
    fake.faults().op_delay = Duration::from_millis(300);
    let url = format!(
        "{}/compute/v1/projects/{IMG_PROJECT}/global/images",
        fake.url
    );
    let body = json!({"name": "d", "family": "cwo-worker", "sourceDisk": "zones/us-central1-a/disks/builder"});
    let (status, op) = call("POST", &url, Some(&body));
    assert_eq!(status, 200, "{op}");
    assert_eq!(family("cwo-worker").1, "c", "d is PENDING");
    rt().block_on(async {
        // Waited for through globalOperations.wait, as a caller without the poller would.
        let operations = google_cloud_compute_v1::client::GlobalOperations::builder()
            .with_endpoint(fake.url.clone())
            .with_credentials(anonymous())
            .with_retry_policy(google_cloud_gax::retry_policy::NeverRetry)
            .build()
            .await
            .unwrap();
        let done = operations
            .wait()
            .set_project(IMG_PROJECT)
            .set_operation(op["name"].as_str().unwrap())
            .send()
            .await
            .expect("globalOperations.wait");
        assert_eq!(
            done.status,
            Some(google_cloud_compute_v1::model::operation::Status::Done)
        );
        assert!(done.error.is_none());
        let client = images_client(&fake).await;
        let d = client
            .get_from_family()
            .set_project(IMG_PROJECT)
            .set_family("cwo-worker")
            .send()
            .await
            .expect("images.getFromFamily");
        assert_eq!(d.name.as_deref(), Some("d"), "READY now");
        assert_eq!(d.family.as_deref(), Some("cwo-worker"));
    });
}

#[test]
fn images_delete_is_a_global_operation_and_404_when_missing() {
    use google_cloud_lro::Poller;
    let fake = FakeGce::start(IMG_PROJECT, "127.0.0.1", None);
    fake.add_image(
        "old",
        "cwo-worker",
        json!({}),
        "2026-01-01T00:00:00.000+00:00",
    );
    fake.add_image(
        "older",
        "cwo-worker",
        json!({}),
        "2025-01-01T00:00:00.000+00:00",
    );
    rt().block_on(async {
        let client = images_client(&fake).await;
        let delete = |name: &str| client.delete().set_project(IMG_PROJECT).set_image(name);

        // The discovery poller returns a finished operation as Ok, its error inside: the
        // caller has to read `error`.
        fake.faults().image_delete_errors = 1;
        let op = delete("old").poller().until_done().await.expect("finished");
        let errors = op.error.expect("the injected failure").errors;
        assert_eq!(errors[0].code.as_deref(), Some("INTERNAL_ERROR"));
        assert_eq!(
            errors[0].message.as_deref(),
            Some("injected image delete failure")
        );
        assert_eq!(op.http_error_status_code, Some(400));
        assert_eq!(fake.image("old").unwrap()["status"], "READY", "still there");

        fake.faults().op_delay = Duration::from_millis(300);
        let op = delete("old").send().await.expect("accepted");
        assert_eq!(op.operation_type.as_deref(), Some("delete"));
        assert_eq!(fake.image("old").unwrap()["status"], "DELETING");
        let mut tries = 0;
        while fake.image("old").is_some() {
            tries += 1;
            assert!(tries < 200, "the delete never landed");
            std::thread::sleep(Duration::from_millis(20));
        }
        let op = delete("older")
            .poller()
            .until_done()
            .await
            .expect("deleted");
        assert!(op.error.is_none());
        assert!(fake.images().is_empty());

        let err = delete("old").send().await.expect_err("gone");
        assert_eq!(err.http_status_code(), Some(404));
    });
}

#[test]
fn vms_boot_from_the_fakes_own_images_which_must_exist_and_be_ready() {
    let fake = FakeGce::start(IMG_PROJECT, "127.0.0.1", None);
    let by_family = format!("projects/{IMG_PROJECT}/global/images/family/cwo-worker");
    let (status, reply) = insert_vm(&fake, IMG_PROJECT, "w-1", &by_family);
    assert_eq!(status, 404, "{reply}");
    assert_eq!(
        reply["error"]["message"],
        format!("The resource '{by_family}' was not found")
    );
    assert!(fake.vm_names().is_empty());

    fake.add_image(
        "cwo-worker-1",
        "cwo-worker",
        json!({}),
        "2026-01-01T00:00:00.000+00:00",
    );
    fake.add_image(
        "cwo-worker-2",
        "cwo-worker",
        json!({}),
        "2026-01-02T00:00:00.000+00:00",
    );
    assert_eq!(insert_vm(&fake, IMG_PROJECT, "w-1", &by_family).0, 200);
    assert_eq!(
        fake.source_image_of("w-1").as_deref(),
        Some(by_family.as_str())
    );
    let disk = fake
        .disks()
        .into_iter()
        .find(|d| d["name"] == "w-1")
        .unwrap();
    let newest = fake.image("cwo-worker-2").unwrap();
    assert_eq!(
        disk["sourceImage"], newest["selfLink"],
        "the family resolved"
    );
    assert_eq!(disk["sourceImageId"], newest["id"]);

    // By name, as a URL; and another project's image is taken as given.
    let url = format!(
        "https://www.googleapis.com/compute/v1/projects/{IMG_PROJECT}/global/images/cwo-worker-1"
    );
    assert_eq!(insert_vm(&fake, IMG_PROJECT, "w-2", &url).0, 200);
    assert_eq!(fake.source_image_of("w-2").as_deref(), Some(url.as_str()));
    assert_eq!(insert_vm(&fake, IMG_PROJECT, "w-3", DEBIAN).0, 200);
    fake.delete_externally("w-3");
    assert_eq!(
        fake.source_image_of("w-3").as_deref(),
        Some(DEBIAN),
        "kept after the VM"
    );
    let (status, _) = insert_vm(&fake, IMG_PROJECT, "w-4", "global/images/missing");
    assert_eq!(status, 404);

    // An image not READY cannot be booted from.
    fake.stop_vm("w-1");
    fake.faults().op_delay = Duration::from_secs(60);
    let url = format!(
        "{}/compute/v1/projects/{IMG_PROJECT}/global/images",
        fake.url
    );
    let body = json!({"name": "pending", "sourceDisk": "zones/us-central1-a/disks/w-1"});
    assert_eq!(call("POST", &url, Some(&body)).0, 200);
    let (status, reply) = insert_vm(&fake, IMG_PROJECT, "w-5", "global/images/pending");
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["errors"][0]["reason"], "resourceNotReady");

    // regionInstances.bulkInsert resolves them the same way.
    let fake = start();
    let mut r = resource(json!({}));
    r["instanceProperties"]["disks"][0]["initializeParams"]["sourceImage"] = json!(format!(
        "projects/{PROJECT}/global/images/family/cwo-worker"
    ));
    assert_eq!(bulk(&fake, &r, None).0, 404);
    fake.add_image(
        "cwo-worker-1",
        "cwo-worker",
        json!({}),
        "2026-01-01T00:00:00.000+00:00",
    );
    assert_eq!(bulk(&fake, &r, None).0, 200);
    assert_eq!(
        fake.source_image_of("cwo-w-0001").as_deref(),
        Some(format!("projects/{PROJECT}/global/images/family/cwo-worker").as_str())
    );
}

// ---- the Cloud Storage fake, through the official Storage client ----

/// `n` bytes that are not all alike (a linear congruential sequence).
fn payload(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

async fn storage_client(
    gcs: &FakeGcs,
    threshold: Option<usize>,
    buffer: Option<usize>,
) -> google_cloud_storage::client::Storage {
    let mut b = google_cloud_storage::client::Storage::builder()
        .with_endpoint(gcs.url.clone())
        .with_credentials(anonymous())
        .with_backoff_policy(fast_polling());
    if let Some(t) = threshold {
        b = b.with_resumable_upload_threshold(t);
    }
    if let Some(s) = buffer {
        b = b.with_resumable_upload_buffer_size(s);
    }
    b.build().await.unwrap()
}

fn bucket_path() -> String {
    format!("projects/_/buckets/{BUCKET}")
}

#[test]
fn the_fake_storage_checksums_are_crc32c_and_md5() {
    use crate::common::fake_gcs::{crc32c, md5};
    // RFC 3720 B.4's check value, and RFC 1321's test suite.
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(b""), 0);
    let hex = |d: [u8; 16]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(hex(md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(hex(md5(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
    assert_eq!(
        hex(md5(
            b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
        )),
        "57edf4a22be3c955ac49da2e2107b67a"
    );
}

#[test]
fn storage_client_uploads_arrive_intact_single_shot() {
    let gcs = FakeGcs::start(IMG_PROJECT);
    gcs.add_bucket(BUCKET, "US");
    let big = payload(3_000_000);
    let small = b"alpine-virt-3.22".to_vec();
    rt().block_on(async {
        let client = storage_client(&gcs, None, None).await;
        let object = client
            .write_object(
                bucket_path(),
                "uploads/alpine.tar.gz",
                bytes::Bytes::from(big.clone()),
            )
            .set_content_type("application/gzip")
            .send_buffered()
            .await
            .expect("a 3 MB upload");
        assert_eq!(object.size, 3_000_000);
        assert_eq!(object.name, "uploads/alpine.tar.gz");
        assert_eq!(object.bucket, bucket_path());
        assert_eq!(object.content_type, "application/gzip");
        // The client computed an MD5 too, and checked the fake's.
        client
            .write_object(bucket_path(), "small", bytes::Bytes::from(small.clone()))
            .compute_md5()
            .send_unbuffered()
            .await
            .expect("a small upload");
    });
    assert_eq!(
        gcs.object(BUCKET, "uploads/alpine.tar.gz").as_deref(),
        Some(&big[..])
    );
    assert_eq!(gcs.object(BUCKET, "small").as_deref(), Some(&small[..]));
    let uploads: Vec<_> = gcs
        .log()
        .into_iter()
        .filter(|r| r.path.starts_with("/upload/"))
        .collect();
    assert_eq!(uploads.len(), 2, "one request each: {uploads:?}");
    for r in &uploads {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, format!("/upload/storage/v1/b/{BUCKET}/o"));
        assert!(r.query.contains("uploadType=multipart"), "{r:?}");
        assert!(
            r.content_type
                .as_deref()
                .unwrap()
                .starts_with("multipart/related; boundary=")
        );
        assert_eq!(r.status, 200);
    }
    assert!(uploads[0].body_len > 3_000_000);
    let (_, meta) = gcs
        .objects()
        .into_iter()
        .find(|(_, o)| o["name"] == "small")
        .unwrap();
    assert_eq!(meta["size"], "16");
    assert_eq!(meta["contentType"], "application/octet-stream");
}

#[test]
fn storage_client_resumable_uploads_go_in_chunks_and_resume_after_a_failure() {
    let gcs = FakeGcs::start(IMG_PROJECT);
    gcs.add_bucket(BUCKET, "US");
    let big = payload(3_000_000);
    rt().block_on(async {
        let client = storage_client(&gcs, Some(0), Some(256 * 1024)).await;
        client
            .write_object(bucket_path(), "buffered", bytes::Bytes::from(big.clone()))
            .send_buffered()
            .await
            .expect("a buffered resumable upload");
        client
            .write_object(bucket_path(), "unbuffered", bytes::Bytes::from(big.clone()))
            .send_unbuffered()
            .await
            .expect("an unbuffered resumable upload");
        // A chunk that fails: the client asks what was persisted and goes on from there.
        gcs.faults().http.push_back(("PUT /upload/".into(), 503));
        client
            .write_object(bucket_path(), "retried", bytes::Bytes::from(big.clone()))
            .send_buffered()
            .await
            .expect("an upload that survives a 503");
    });
    for name in ["buffered", "unbuffered", "retried"] {
        assert_eq!(
            gcs.object(BUCKET, name).as_deref(),
            Some(&big[..]),
            "{name}"
        );
    }
    let log = gcs.log();
    let of = |name: &str| -> Vec<(String, Option<String>, u16)> {
        let starts = log
            .iter()
            .position(|r| r.method == "POST" && r.query.contains(&format!("name={name}")))
            .unwrap();
        log[starts..]
            .iter()
            .skip(1)
            .take_while(|r| r.method == "PUT")
            .map(|r| (r.query.clone(), r.content_range.clone(), r.status))
            .collect()
    };
    let buffered = of("buffered");
    assert_eq!(
        buffered.len(),
        12,
        "3,000,000 bytes in 256 KiB chunks: {buffered:?}"
    );
    for (i, (query, range, status)) in buffered.iter().enumerate() {
        assert!(query.contains("upload_id="), "to the session URI");
        let first = i * 262_144;
        let last = (first + 262_143).min(2_999_999);
        assert_eq!(
            range.as_deref(),
            Some(format!("bytes {first}-{last}/3000000").as_str())
        );
        assert_eq!(*status, if i < 11 { 308 } else { 200 });
    }
    let unbuffered = of("unbuffered");
    assert_eq!(
        unbuffered,
        [(
            unbuffered[0].0.clone(),
            Some("bytes 0-2999999/3000000".into()),
            200
        )],
        "one PUT"
    );
    let retried = of("retried");
    assert_eq!(retried[0].2, 503);
    assert_eq!(
        retried[1].1.as_deref(),
        Some("bytes */*"),
        "the status query"
    );
    assert_eq!(retried[1].2, 308);
    assert_eq!(retried.last().unwrap().2, 200);
}

#[test]
fn storage_uploads_into_a_missing_bucket_are_404() {
    let gcs = FakeGcs::start(IMG_PROJECT);
    rt().block_on(async {
        for threshold in [None, Some(0)] {
            let client = storage_client(&gcs, threshold, None).await;
            let err = client
                .write_object(bucket_path(), "o", bytes::Bytes::from_static(b"data"))
                .send_buffered()
                .await
                .expect_err("no bucket");
            assert_eq!(err.http_status_code(), Some(404), "{threshold:?}: {err}");
        }
    });
    assert!(gcs.objects().is_empty());
}

/// One request with curl: the status and the raw body.
fn call_raw(method: &str, url: &str, body: Option<&Value>) -> (u16, Vec<u8>) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(b.to_string());
    }
    let out = cmd.output().expect("run curl");
    let text = out.stdout;
    let cut = text.iter().rposition(|b| *b == b'\n').unwrap();
    let status = String::from_utf8_lossy(&text[cut + 1..]).parse().unwrap();
    (status, text[..cut].to_vec())
}

#[test]
fn storage_buckets_and_objects_through_the_json_api() {
    let gcs = FakeGcs::start(IMG_PROJECT);
    let bucket_url = format!("{}/storage/v1/b/{BUCKET}", gcs.url);
    let (status, reply) = call("GET", &bucket_url, None);
    assert_eq!(status, 404);
    assert_eq!(reply["error"]["errors"][0]["reason"], "notFound");

    let insert = format!("{}/storage/v1/b?project={IMG_PROJECT}", gcs.url);
    let lifecycle = json!({"rule": [{"action": {"type": "Delete"}, "condition": {"age": 1}}]});
    let body = json!({"name": BUCKET, "location": "us-central1", "lifecycle": lifecycle});
    let (status, bucket) = call("POST", &insert, Some(&body));
    assert_eq!(status, 200, "{bucket}");
    assert_eq!(bucket["name"], BUCKET);
    assert_eq!(bucket["location"], "US-CENTRAL1");
    assert_eq!(bucket["lifecycle"], lifecycle);
    assert_eq!(call("GET", &bucket_url, None).1, bucket);
    let (status, reply) = call("POST", &insert, Some(&body));
    assert_eq!(status, 409, "exists: {reply}");

    let no_project = format!("{}/storage/v1/b", gcs.url);
    assert_eq!(
        call("POST", &no_project, Some(&json!({"name": "b-2"}))).0,
        400
    );
    assert_eq!(call("POST", &insert, Some(&json!({"name": "Bad!"}))).0, 400);
    let no_condition = json!({"name": "b-3", "lifecycle": {"rule": [{"action": {"type": "Delete"}, "condition": {}}]}});
    assert_eq!(call("POST", &insert, Some(&no_condition)).0, 400);
    gcs.add_foreign_bucket("taken");
    assert_eq!(
        call("GET", &format!("{}/storage/v1/b/taken", gcs.url), None).0,
        403
    );
    assert_eq!(
        call("POST", &insert, Some(&json!({"name": "taken"}))).0,
        409
    );
    assert_eq!(gcs.buckets().len(), 1);

    // Objects: metadata, data, delete.
    gcs.put_object(BUCKET, "uploads/a.tar.gz", b"abc");
    let object_url = format!("{bucket_url}/o/uploads%2Fa.tar.gz");
    let (status, meta) = call("GET", &object_url, None);
    assert_eq!(status, 200);
    assert_eq!(meta["size"], "3");
    assert_eq!(meta["md5Hash"], "kAFQmDzST7DWlj99KOF/cg==", "MD5 of abc");
    assert_eq!(meta["crc32c"], "Nks/tw==", "CRC32C of abc");
    assert_eq!(
        call_raw("GET", &format!("{object_url}?alt=media"), None),
        (200, b"abc".to_vec())
    );
    assert_eq!(call_raw("DELETE", &object_url, None), (204, Vec::new()));
    assert_eq!(call("DELETE", &object_url, None).0, 404);
    assert_eq!(call("GET", &object_url, None).0, 404);
    assert_eq!(
        call("GET", &format!("{}/storage/v1/b/nope/o/x", gcs.url), None).0,
        404
    );

    // The lifecycle rule deletes an object a day old, not before.
    gcs.put_object(BUCKET, "uploads/b.tar.gz", b"b");
    gcs.advance(Duration::from_secs(23 * 3600));
    assert!(gcs.object(BUCKET, "uploads/b.tar.gz").is_some());
    gcs.advance(Duration::from_secs(2 * 3600));
    assert!(gcs.object(BUCKET, "uploads/b.tar.gz").is_none());

    let log = gcs.log();
    let first = &log[0];
    assert_eq!(
        (first.method.as_str(), first.path.as_str(), first.status),
        ("GET", "/storage/v1/b/cwo-images-proj-img", 404)
    );
    let created = &log[1];
    assert_eq!(created.query, format!("project={IMG_PROJECT}"));
    assert_eq!(created.body_len, body.to_string().len());
}
