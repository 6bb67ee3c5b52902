//! A fake of the Compute Engine v1 REST API (and Secret Manager's `access`, the Cloud Billing
//! Budget API's budgets and Resource Manager's `projects.get`), enough for cwo's gcp provider,
//! `cwo budget alert` and `cwo image` (instances.stop, images, global operations), with fault
//! injection. It speaks the JSON shapes of the real API on 127.0.0.1 and
//! records every request so tests can assert on request bodies.
//!
//! "Guest agent" behaviour: on insert (and once a `setMetadata` has landed), the keys of the
//! `ssh-keys` metadata are added to a test sshd's authorized_keys file, and the VM's external
//! IP leads to that sshd.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub body: String,
}

struct Vm {
    zone: String,
    body: Value,
    visible_from: Instant,
    /// Until then the VM reports PROVISIONING, then STAGING (its body says RUNNING).
    running_from: Instant,
    fingerprint: u64,
    /// When Compute Engine deletes it (`scheduling.maxRunDuration` with
    /// `instanceTerminationAction: DELETE`), on the fake's clock. Cleared when the VM stops:
    /// "terminationTimestamp is automatically cleared whenever a VM is stopped or suspended"
    /// (https://cloud.google.com/compute/docs/instances/limit-vm-runtime), so a stopped VM is
    /// never deleted by its TTL.
    terminate_at: Option<Instant>,
}

impl Vm {
    /// Stopped: TERMINATED, and its termination timer cleared, as Compute Engine does.
    fn stopped(&mut self) {
        self.body["status"] = json!("TERMINATED");
        self.terminate_at = None;
    }

    /// The body as the API shows it now.
    fn shown(&self, now: Instant) -> Value {
        let mut body = self.body.clone();
        if now < self.running_from && body["status"] == "RUNNING" {
            let staging = self.running_from - now < Duration::from_millis(300);
            body["status"] = json!(if staging { "STAGING" } else { "PROVISIONING" });
        }
        body
    }
}

struct Op {
    zone: String,
    done: bool,
    body: Value,
    done_at: Instant,
    /// What happens when the operation completes.
    effect: Effect,
    /// `error.errors[]` (code, message) it finishes with; empty when it succeeds.
    errors: Vec<(String, String)>,
}

enum Effect {
    None,
    Remove(String),
    /// The "guest agent" installs an `ssh-keys` value once the metadata change has landed.
    InstallKeys {
        authorized_keys: Option<PathBuf>,
        ssh_keys: String,
    },
    /// An `instances.stop` has landed: the VM is TERMINATED and its termination timer cleared.
    Stop(String),
    /// An `images.insert` has finished: the image is READY, or FAILED when the operation failed.
    ImageDone {
        name: String,
        ok: bool,
    },
    /// An `images.delete` has landed: the image is gone.
    RemoveImage(String),
}

/// What Compute reads an image's `rawDisk.source` through (see `FakeGce::link_storage`): the
/// size of the object `(bucket, name)`, or which of the two does not exist.
pub type ObjectReader = Arc<dyn Fn(&str, &str) -> Result<u64, MissingObject> + Send + Sync>;

/// Why an `ObjectReader` found no object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingObject {
    Bucket,
    Object,
}

#[derive(Default)]
pub struct Faults {
    /// Added to every request.
    pub latency: Duration,
    /// The next requests whose "METHOD path-fragment" contains the key answer with the status.
    pub http: VecDeque<(String, u16)>,
    /// Inserts into these zones finish with ZONE_RESOURCE_POOL_EXHAUSTED (room for none: a bulk
    /// insert places nothing there).
    pub capacity_zones: HashSet<String>,
    /// "Zone X has room for K more VMs": each VM created there (by `instances.insert` or
    /// `regionInstances.bulkInsert`) uses one; at 0 an insert there finishes with
    /// ZONE_RESOURCE_POOL_EXHAUSTED and a bulk insert places no more there. Deletes give none
    /// back (set it again for that). Zones absent have room without limit.
    pub zone_room: HashMap<String, usize>,
    /// The same for the whole region (every zone the fake serves counts against it).
    pub region_room: Option<usize>,
    /// Inserts answer 403 with this reason ("quotaExceeded", "forbidden").
    pub insert_403: Option<String>,
    /// New VMs stay invisible to get and list for this long.
    pub hide_new: Duration,
    /// Operations take this long to finish.
    pub op_delay: Duration,
    /// The next N delete operations finish with an error.
    pub delete_op_errors: u32,
    /// Deletes finish but the VM lingers for this long.
    pub delete_lag: Duration,
    /// aggregatedList answers with these zones unreachable.
    pub unreachable: Vec<String>,
    /// Inserts take this long before the VM exists and the call answers.
    pub insert_delay: Duration,
    /// Regional CPUS quota: (limit, usage); (24, 0) when unset.
    pub cpus_quota: Option<(f64, f64)>,
    /// regions.get answers 403 `forbidden`, as Compute does for a caller without the
    /// `compute.regions.get` permission the method requires
    /// (https://cloud.google.com/compute/docs/reference/rest/v1/regions/get): the quota cannot
    /// be read, while everything else works.
    pub regions_get_403: bool,
    /// Project metadata has enable-oslogin=TRUE.
    pub oslogin_forced: bool,
    /// (call, VM): when the next request whose "METHOD path" contains `call` arrives, the VM is
    /// deleted just before it is served, as if someone else (the console, the TTL) deleted it
    /// between cwo's read and this call. The request then answers as Compute does for a missing
    /// instance: 404 with reason `notFound` ("The resource '…' was not found"; see
    /// https://cloud.google.com/compute/docs/reference/rest/v1/errors).
    pub vanish_on: Vec<(String, String)>,
    /// New VMs report PROVISIONING / STAGING for this long after their insert operation is done.
    pub provisioning: Duration,
    /// Budgets listed per page at most (the real API takes `pageSize` up to 100).
    pub budget_page_size: Option<usize>,
    /// Disks whose labels someone else changes (adds `changed-by=someone`, which gives them a
    /// new fingerprint) just before the next `disks.setLabels` on them is served, as if the
    /// console labelled the disk between the caller's `disks.get` and its set: the fingerprint
    /// that call carries is stale. Each name is used once.
    pub disk_label_races: Vec<String>,
    /// The next N `images.insert` operations finish with an error (INTERNAL_ERROR) and leave
    /// their image FAILED, the status Compute gives an image whose creation failed
    /// (https://cloud.google.com/compute/docs/reference/rest/v1/images: status FAILED).
    pub image_insert_errors: u32,
    /// The next N `images.delete` operations finish with an error; the image stays READY.
    pub image_delete_errors: u32,
}

/// A persistent disk made from an insert's `disks[].initializeParams`, as Compute keeps it:
/// its own resource with the labels given there, deleted with its VM when `autoDelete`.
struct Disk {
    zone: String,
    body: Value,
    /// The VM it is attached to.
    user: String,
    auto_delete: bool,
}

#[derive(Default)]
struct State {
    vms: BTreeMap<String, Vm>,
    disks: BTreeMap<String, Disk>,
    ops: HashMap<String, Op>,
    request_ids: HashMap<String, String>,
    firewalls: BTreeMap<String, Value>,
    secrets: HashMap<String, Vec<u8>>,
    next: u64,
    log: Vec<Recorded>,
    /// Names of the VMs inserts created, in order.
    created: Vec<String>,
    /// How far the fake's clock is ahead of the real one (for TTLs: `advance`).
    ahead: Duration,
    /// Cloud Billing accounts: currency and budgets, in creation order.
    billing: BTreeMap<String, BillingAccount>,
    /// Cloud Resource Manager: project ID → project number.
    project_numbers: HashMap<String, String>,
    /// Every VM that came and went, in order (see `FakeGce::history`).
    history: Vec<VmEvent>,
    /// The most VMs that existed at once.
    max_live: usize,
    /// Each `regionInstances.bulkInsert` body received, in order.
    bulk_calls: Vec<Value>,
    /// Zones of a region, for `regionInstances.bulkInsert` (see `FakeGce::set_region_zones`).
    region_zones: HashMap<String, Vec<String>>,
    /// Images (`global/images`), by name, as `images.get` shows them.
    images: BTreeMap<String, Value>,
    /// The `disks[0].initializeParams.sourceImage` each VM was created with, by VM name.
    source_images: HashMap<String, String>,
    /// The VMs `instances.stop` was accepted for, in order.
    stopped: Vec<String>,
    /// Where `rawDisk.source` objects are read (`FakeGce::link_storage`); none: no bucket exists.
    storage: Option<ObjectReader>,
}

/// A VM coming into existence or leaving it, on the real clock (`at`) when the fake applied it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmEvent {
    pub at: Instant,
    pub name: String,
    pub zone: String,
    pub created: bool,
}

impl State {
    /// Deletes the VMs whose termination time has come, as Compute Engine does.
    fn expire(&mut self) {
        let now = Instant::now() + self.ahead;
        let due: Vec<String> = self
            .vms
            .iter()
            .filter(|(_, vm)| vm.terminate_at.is_some_and(|at| at <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.remove_vm(&name);
        }
    }

    /// Every VM enters through here, so `history` and `max_live` see it.
    fn insert_vm(&mut self, name: String, vm: Vm) {
        self.history.push(VmEvent {
            at: Instant::now(),
            name: name.clone(),
            zone: vm.zone.clone(),
            created: true,
        });
        self.vms.insert(name, vm);
        self.max_live = self.max_live.max(self.vms.len());
    }

    /// Every VM leaves through here (delete operation, TTL, someone else), so `history` sees it.
    fn remove_vm(&mut self, name: &str) -> Option<Vm> {
        let vm = self.vms.remove(name)?;
        self.history.push(VmEvent {
            at: Instant::now(),
            name: name.to_string(),
            zone: vm.zone.clone(),
            created: false,
        });
        Some(vm)
    }

    /// Applies the operations whose time has come (deletes land), so that what exists does not
    /// depend on whether someone polled the operation.
    fn finish_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .ops
            .iter()
            .filter(|(_, op)| !op.done && op.done_at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            finish_op(self, &name);
        }
    }
}

struct BillingAccount {
    currency: String,
    budgets: Vec<Value>,
}

/// The number the fake's project has in Cloud Resource Manager.
pub const PROJECT_NUMBER: &str = "415104041262";

pub struct FakeGce {
    pub url: String,
    pub project: String,
    state: Arc<Mutex<State>>,
    pub faults: Arc<Mutex<Faults>>,
    config: Arc<Config>,
    server: Arc<tiny_http::Server>,
    /// Requests received and not answered yet.
    busy: Arc<AtomicUsize>,
}

pub struct Config {
    pub nat_ip: String,
    /// The host key published through guest attributes (OpenSSH line), if any.
    pub host_key: Mutex<Option<String>>,
    /// Where the "guest agent" installs ssh-keys metadata.
    pub authorized_keys: Option<PathBuf>,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
}

fn labels_match(vm: &Value, filter: &str) -> bool {
    // Clauses like (labels.cwo-managed = "true"), ANDed.
    let mut rest = filter;
    while let Some(i) = rest.find("labels.") {
        rest = &rest[i + 7..];
        let Some((key, after)) = rest.split_once('=') else {
            return false;
        };
        let key = key.trim();
        let value: String = after
            .trim_start()
            .trim_start_matches('"')
            .chars()
            .take_while(|c| *c != '"' && *c != ')' && !c.is_whitespace())
            .collect();
        if vm["labels"][key].as_str() != Some(value.as_str()) {
            return false;
        }
        rest = after;
    }
    true
}

impl FakeGce {
    pub fn start(project: &str, nat_ip: &str, authorized_keys: Option<PathBuf>) -> FakeGce {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind the fake"));
        let port = server.server_addr().to_ip().unwrap().port();
        let fake = FakeGce {
            url: format!("http://127.0.0.1:{port}"),
            project: project.to_string(),
            state: Arc::new(Mutex::new(State {
                project_numbers: HashMap::from([(project.to_string(), PROJECT_NUMBER.to_string())]),
                ..State::default()
            })),
            faults: Arc::default(),
            config: Arc::new(Config {
                nat_ip: nat_ip.to_string(),
                host_key: Mutex::new(None),
                authorized_keys,
            }),
            server: server.clone(),
            busy: Arc::default(),
        };
        let (state, faults, config, busy) = (
            fake.state.clone(),
            fake.faults.clone(),
            fake.config.clone(),
            fake.busy.clone(),
        );
        std::thread::spawn(move || {
            for request in server.incoming_requests() {
                let (state, faults, config, busy) =
                    (state.clone(), faults.clone(), config.clone(), busy.clone());
                busy.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    handle(request, &state, &faults, &config);
                    busy.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        fake
    }

    pub fn set_host_key(&self, key: Option<String>) {
        *self.config.host_key.lock().unwrap() = key;
    }

    pub fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap()
    }

    pub fn log(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().log.clone()
    }

    /// Names of the VMs inserts created, in order (an insert answered from its request id, or
    /// refused because the name exists, creates nothing).
    pub fn created(&self) -> Vec<String> {
        self.state.lock().unwrap().created.clone()
    }

    /// The most VMs that existed at the same time over the fake's life, however they came
    /// (`instances.insert`, `regionInstances.bulkInsert`, `add_vm`) and went (delete operations
    /// as they complete, TTLs, `delete_externally`). A fleet test asserts its cap with it.
    pub fn max_live(&self) -> usize {
        self.state.lock().unwrap().max_live
    }

    /// Every VM that came into existence or left it, in order, with the real time (`Instant`)
    /// the fake applied it: a create when its insert is accepted, a delete when its operation
    /// completes (or the TTL or someone else removes it).
    pub fn history(&self) -> Vec<VmEvent> {
        self.state.lock().unwrap().history.clone()
    }

    /// Each `regionInstances.bulkInsert` body received, in order, as JSON: refused ones and
    /// retries answered from their `requestId` included (the query string is in `log()`).
    pub fn bulk_calls(&self) -> Vec<Value> {
        self.state.lock().unwrap().bulk_calls.clone()
    }

    /// The zones `regionInstances.bulkInsert` may place VMs in for `region`, in the order a
    /// placement tries them. Without it: us-central1-a, -b, -c, -f for us-central1 (its real
    /// zones), `{region}-a`, `-b`, `-c` for any other region.
    pub fn set_region_zones(&self, region: &str, zones: &[&str]) {
        self.state.lock().unwrap().region_zones.insert(
            region.to_string(),
            zones.iter().map(|z| z.to_string()).collect(),
        );
    }

    /// Requests being handled right now (e.g. an insert that outlives its killed client).
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    /// Names of the VMs that exist (visible or not).
    pub fn vm_names(&self) -> Vec<String> {
        self.state.lock().unwrap().vms.keys().cloned().collect()
    }

    pub fn vm(&self, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .vms
            .get(name)
            .map(|v| v.shown(Instant::now()))
    }

    /// The disks that exist, as `disks.get` shows them: a disk with `autoDelete` goes with its
    /// VM, however the VM went (cwo's delete, the TTL, the console).
    pub fn disks(&self) -> Vec<Value> {
        let st = self.state.lock().unwrap();
        st.disks
            .values()
            .filter(|d| disk_exists(&st, d))
            .map(|d| d.body.clone())
            .collect()
    }

    pub fn firewall(&self, name: &str) -> Option<Value> {
        self.state.lock().unwrap().firewalls.get(name).cloned()
    }

    /// Deleted by someone else (the console, the TTL).
    pub fn delete_externally(&self, name: &str) {
        self.state.lock().unwrap().remove_vm(name);
    }

    /// Stopped (e.g. a watchdog powered it off): status TERMINATED, and its termination timer
    /// cleared, as Compute Engine does.
    pub fn stop_vm(&self, name: &str) {
        if let Some(vm) = self.state.lock().unwrap().vms.get_mut(name) {
            vm.stopped();
        }
    }

    /// The VMs an `instances.stop` was accepted for, in order (a repeated `requestId` counts once).
    pub fn stopped(&self) -> Vec<String> {
        self.state.lock().unwrap().stopped.clone()
    }

    /// Lets `images.insert` read `rawDisk.source` objects (https://storage.googleapis.com/B/O)
    /// through `reader`, e.g. `FakeGcs::reader()`. Unlinked, every bucket is missing, as for a
    /// project whose Compute service agent can read no bucket.
    pub fn link_storage(&self, reader: ObjectReader) {
        self.state.lock().unwrap().storage = Some(reader);
    }

    /// Every image, as `images.get` shows it now (READY, PENDING, FAILED or DELETING), by name.
    pub fn images(&self) -> Vec<Value> {
        let mut st = self.state.lock().unwrap();
        st.finish_due();
        st.images.values().cloned().collect()
    }

    pub fn image(&self, name: &str) -> Option<Value> {
        let mut st = self.state.lock().unwrap();
        st.finish_due();
        st.images.get(name).cloned()
    }

    /// Adds a READY image made by someone else (an earlier `cwo image build`, the console):
    /// `family` "" for none, `labels` a JSON object, `created` its RFC 3339 `creationTimestamp`.
    pub fn add_image(&self, name: &str, family: &str, labels: Value, created: &str) {
        let mut st = self.state.lock().unwrap();
        st.next += 1;
        let id = st.next;
        let mut body = json!({
            "kind": "compute#image", "id": id.to_string(), "creationTimestamp": created,
            "name": name, "sourceType": "RAW", "status": "READY",
            "archiveSizeBytes": "2684354560", "diskSizeGb": "10",
            "labelFingerprint": fingerprint(id), "storageLocations": ["us"],
            "selfLink": image_url(&self.project, name),
        });
        if !family.is_empty() {
            body["family"] = json!(family);
        }
        if labels.as_object().is_some_and(|l| !l.is_empty()) {
            body["labels"] = labels;
        }
        st.images.insert(name.to_string(), body);
    }

    /// Sets an image's status (PENDING while Compute makes it, FAILED when that failed).
    pub fn set_image_status(&self, name: &str, status: &str) {
        if let Some(image) = self.state.lock().unwrap().images.get_mut(name) {
            image["status"] = json!(status);
        }
    }

    /// Marks an image deprecated (`deprecated.state`: DEPRECATED, OBSOLETE or DELETED), as
    /// `images.deprecate` would: `getFromFamily` passes over it.
    pub fn deprecate_image(&self, name: &str, state: &str) {
        if let Some(image) = self.state.lock().unwrap().images.get_mut(name) {
            image["deprecated"] = json!({"state": state});
        }
    }

    /// The `disks[0].initializeParams.sourceImage` the VM was created with (by
    /// `instances.insert` or `regionInstances.bulkInsert`), as sent; kept after the VM is gone.
    pub fn source_image_of(&self, vm: &str) -> Option<String> {
        self.state.lock().unwrap().source_images.get(vm).cloned()
    }

    /// Moves the fake's clock forward: VMs whose TTL ends by then are deleted.
    pub fn advance(&self, by: Duration) {
        let mut st = self.state.lock().unwrap();
        st.ahead += by;
        st.expire();
    }

    /// Sets one label on a VM (as someone with the console would).
    pub fn set_label(&self, name: &str, key: &str, value: &str) {
        if let Some(vm) = self.state.lock().unwrap().vms.get_mut(name) {
            vm.body["labels"][key] = json!(value);
        }
    }

    /// A Cloud Billing account (e.g. "012345-6789AB-CDEF01") whose currency is `currency`.
    pub fn add_billing_account(&self, id: &str, currency: &str) {
        self.state.lock().unwrap().billing.insert(
            id.to_string(),
            BillingAccount {
                currency: currency.to_string(),
                budgets: Vec::new(),
            },
        );
    }

    /// Another project on the fake's Resource Manager.
    pub fn add_project(&self, id: &str, number: &str) {
        self.state
            .lock()
            .unwrap()
            .project_numbers
            .insert(id.to_string(), number.to_string());
    }

    /// The budgets on a billing account, as the API would return them.
    pub fn budgets(&self, account: &str) -> Vec<Value> {
        self.state
            .lock()
            .unwrap()
            .billing
            .get(account)
            .map(|a| a.budgets.clone())
            .unwrap_or_default()
    }

    /// Adds a budget made by someone else (the console, another tool); returns its name.
    pub fn add_budget(&self, account: &str, budget: Value) -> String {
        let mut st = self.state.lock().unwrap();
        let numbers = st.project_numbers.clone();
        let acct = st
            .billing
            .get_mut(account)
            .expect("add_billing_account first");
        let b = budget_defaults(budget, &acct.currency, &numbers).expect("a valid budget");
        let b = new_budget(account, b);
        let name = b["name"].as_str().unwrap().to_string();
        acct.budgets.push(b);
        name
    }

    pub fn set_secret(&self, name: &str, value: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .secrets
            .insert(name.to_string(), value.to_vec());
    }

    /// Adds a VM directly (for reaper and scale tests).
    pub fn add_vm(&self, zone: &str, name: &str, labels: Value, created: &str, status: &str) {
        let mut st = self.state.lock().unwrap();
        st.finish_due();
        st.next += 1;
        let id = st.next;
        let body = json!({
            "kind": "compute#instance", "id": id.to_string(), "name": name, "status": status,
            "creationTimestamp": created, "labels": labels,
            "zone": format!("https://www.googleapis.com/compute/v1/projects/{}/zones/{zone}", self.project),
            "machineType": format!("zones/{zone}/machineTypes/e2-micro"),
            "labelFingerprint": base64::engine::general_purpose::URL_SAFE.encode(id.to_be_bytes()),
            "networkInterfaces": [{"networkIP": "10.0.0.2", "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT", "natIP": self.config.nat_ip}]}],
        });
        st.insert_vm(
            name.to_string(),
            Vm {
                zone: zone.to_string(),
                body,
                visible_from: Instant::now(),
                running_from: Instant::now(),
                fingerprint: id,
                terminate_at: None,
            },
        );
    }
}

impl Drop for FakeGce {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn respond(request: tiny_http::Request, status: u16, body: Value) {
    let data = serde_json::to_vec(&body).unwrap();
    let resp = tiny_http::Response::from_data(data)
        .with_status_code(status)
        .with_header(
            "Content-Type: application/json"
                .parse::<tiny_http::Header>()
                .unwrap(),
        );
    let _ = request.respond(resp);
}

/// Compute's error shape: the legacy `errors[]` list plus the canonical `status`.
fn error(code: u16, reason: &str, message: &str) -> Value {
    let status = match code {
        400 => "INVALID_ARGUMENT",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        412 => "FAILED_PRECONDITION",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    json!({"error": {"code": code, "message": message, "status": status,
        "errors": [{"reason": reason, "message": message, "domain": "global"}]}})
}

fn new_op(
    st: &mut State,
    zone: &str,
    kind: &str,
    target: &str,
    delay: Duration,
    effect: Effect,
    error: Option<(String, String)>,
) -> Value {
    st.next += 1;
    let name = format!("operation-{}", st.next);
    let body = json!({
        "kind": "compute#operation", "name": name, "id": st.next.to_string(), "operationType": kind,
        "status": "RUNNING", "targetLink": target,
        "zone": zone, "insertTime": now_rfc3339(), "startTime": now_rfc3339(), "progress": 0,
    });
    let op = Op {
        zone: zone.to_string(),
        done: false,
        body: body.clone(),
        done_at: Instant::now() + delay,
        effect,
        errors: error.into_iter().collect(),
    };
    st.ops.insert(name.clone(), op);
    if delay.is_zero() {
        finish_op(st, &name);
        return st.ops[&name].body.clone();
    }
    body
}

/// Completes an operation whose time has come, applying its effect.
fn finish_op(st: &mut State, name: &str) {
    let Some(op) = st.ops.get_mut(name) else {
        return;
    };
    if op.done || Instant::now() < op.done_at {
        return;
    }
    op.done = true;
    op.body["status"] = json!("DONE");
    op.body["endTime"] = json!(now_rfc3339());
    op.body["progress"] = json!(100);
    if !op.errors.is_empty() {
        let errors: Vec<Value> = op
            .errors
            .iter()
            .map(|(code, message)| json!({"code": code, "message": message}))
            .collect();
        op.body["error"] = json!({ "errors": errors });
        op.body["httpErrorStatusCode"] = json!(400);
        op.body["httpErrorMessage"] = json!("BAD REQUEST");
    }
    if let Some(per_zone) = op
        .body
        .pointer_mut("/instancesBulkInsertOperationMetadata/perLocationStatus")
        .and_then(Value::as_object_mut)
    {
        for status in per_zone.values_mut() {
            status["status"] = json!("DONE");
        }
    }
    match std::mem::replace(&mut op.effect, Effect::None) {
        Effect::None => {}
        Effect::Remove(vm) => {
            st.remove_vm(&vm);
        }
        Effect::InstallKeys {
            authorized_keys,
            ssh_keys,
        } => install_ssh_keys(authorized_keys.as_deref(), &ssh_keys),
        Effect::Stop(vm) => {
            if let Some(vm) = st.vms.get_mut(&vm) {
                vm.stopped();
            }
        }
        Effect::ImageDone { name, ok } => {
            if let Some(image) = st.images.get_mut(&name) {
                image["status"] = json!(if ok { "READY" } else { "FAILED" });
            }
        }
        Effect::RemoveImage(name) => {
            st.images.remove(&name);
        }
    }
}

/// The "guest agent": installs each `USERNAME:KEY` line of an `ssh-keys` metadata value
/// (https://cloud.google.com/compute/docs/connect/add-ssh-keys#metadata) into the test sshd's
/// authorized_keys. A key already there is not added again: every fake VM leads to the same
/// sshd, so a batch's VMs (or one VM's key set again) would otherwise repeat it. Keys are never
/// removed (the real agent removes the ones it added when they leave the metadata; here they
/// may be another VM's).
fn install_ssh_keys(authorized_keys: Option<&std::path::Path>, ssh_keys: &str) {
    let Some(path) = authorized_keys else {
        return;
    };
    let mut existing = std::fs::read_to_string(path).unwrap_or_default();
    for line in ssh_keys.lines().filter(|l| !l.trim().is_empty()) {
        let key = line.split_once(':').map(|(_, k)| k).unwrap_or(line).trim();
        if !existing.lines().any(|l| l.trim() == key) {
            existing.push_str(key);
            existing.push('\n');
        }
    }
    std::fs::write(path, existing).unwrap();
}

/// A fingerprint as the API shows it (base64 of 8 bytes).
fn fingerprint(n: u64) -> Value {
    json!(base64::engine::general_purpose::URL_SAFE.encode(n.to_be_bytes()))
}

/// Whether two fingerprints are the same bytes (a client may re-encode the base64 it read).
fn same_fingerprint(a: &Value, b: &Value) -> bool {
    let bytes = |v: &Value| {
        let s = v.as_str()?;
        let e = &base64::engine::general_purpose::STANDARD;
        let u = &base64::engine::general_purpose::URL_SAFE;
        e.decode(s).or_else(|_| u.decode(s)).ok()
    };
    bytes(a).is_some() && bytes(a) == bytes(b)
}

/// Brings a VM into existence from its insert body, as `instances.insert` and
/// `regionInstances.bulkInsert` both do: server-side fields, the NAT IP, the "guest agent"
/// installing ssh-keys, the TTL (`scheduling.maxRunDuration` + `instanceTerminationAction:
/// DELETE`) and the disks made from `initializeParams`. Uses one unit of the zone's (and the
/// region's) room, if the test set one.
#[allow(clippy::too_many_arguments)]
fn create_vm(
    st: &mut State,
    f: &mut Faults,
    config: &Config,
    project: &str,
    zone: &str,
    name: &str,
    mut vm: Value,
    now: Instant,
) {
    if let Some(src) = vm
        .pointer("/disks/0/initializeParams/sourceImage")
        .and_then(Value::as_str)
    {
        st.source_images.insert(name.to_string(), src.to_string());
    }
    let target =
        format!("https://www.googleapis.com/compute/v1/projects/p/zones/{zone}/instances/{name}");
    st.next += 1;
    let id = st.next;
    vm["id"] = json!(id.to_string());
    vm["kind"] = json!("compute#instance");
    vm["status"] = json!("RUNNING");
    vm["creationTimestamp"] = json!(now_rfc3339());
    vm["zone"] = json!(format!(
        "https://www.googleapis.com/compute/v1/projects/p/zones/{zone}"
    ));
    vm["labelFingerprint"] =
        json!(base64::engine::general_purpose::URL_SAFE.encode(id.to_be_bytes()));
    if let Some(ac) = vm.pointer_mut("/networkInterfaces/0/accessConfigs/0") {
        ac["natIP"] = json!(config.nat_ip);
    }
    for item in vm
        .pointer("/metadata/items")
        .and_then(|i| i.as_array())
        .into_iter()
        .flatten()
    {
        if item["key"] == "ssh-keys" {
            install_ssh_keys(
                config.authorized_keys.as_deref(),
                item["value"].as_str().unwrap_or(""),
            );
        }
    }
    // Compute gives the metadata a fingerprint, which `setMetadata` must send back.
    if !vm["metadata"].is_object() {
        vm["metadata"] = json!({});
    }
    vm["metadata"]["kind"] = json!("compute#metadata");
    vm["metadata"]["fingerprint"] = fingerprint(id);
    let terminate_at = vm["scheduling"]["maxRunDuration"]["seconds"]
        .as_str()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|_| vm["scheduling"]["instanceTerminationAction"] == "DELETE")
        .map(|secs| now + st.ahead + Duration::from_secs(secs));
    let mut sources = Vec::new();
    for (i, disk) in vm["disks"].as_array().into_iter().flatten().enumerate() {
        let Some(init) = disk.get("initializeParams") else {
            continue;
        };
        // Compute names a boot disk after its VM unless initializeParams says otherwise.
        let disk_name = init["diskName"].as_str().map_or_else(
            || {
                if i == 0 {
                    name.to_string()
                } else {
                    format!("{name}-{i}")
                }
            },
            str::to_string,
        );
        st.next += 1;
        let self_link = disk_url(zone, &disk_name);
        // Like the API, a `labelFingerprint` on every disk (labelled or not), which
        // `disks.setLabels` must send back.
        let mut body = json!({
            "kind": "compute#disk", "id": st.next.to_string(), "name": disk_name,
            "selfLink": self_link,
            "zone": format!("https://www.googleapis.com/compute/v1/projects/p/zones/{zone}"),
            "sizeGb": init["diskSizeGb"], "type": init["diskType"],
            "sourceImage": init["sourceImage"], "status": "READY", "users": [target],
            "labelFingerprint": fingerprint(st.next),
        });
        // Like the API, a disk made from an image family names the image the family pointed
        // to then (`sourceImage` as that image's URL, and its `sourceImageId`): shown for the
        // fake's own images, which are the ones it can resolve.
        if let Some(Ok(image)) = init["sourceImage"]
            .as_str()
            .and_then(|src| resolve_image(st, project, src))
        {
            body["sourceImage"] = image["selfLink"].clone();
            body["sourceImageId"] = image["id"].clone();
        }
        // Like the API, no `labels` field on a disk created without any.
        if let Some(labels) = init.get("labels") {
            body["labels"] = labels.clone();
        }
        st.disks.insert(
            disk_name,
            Disk {
                zone: zone.to_string(),
                body,
                user: name.to_string(),
                auto_delete: disk["autoDelete"].as_bool().unwrap_or(false),
            },
        );
        sources.push((i, self_link));
    }
    // The VM shows each attached disk's URL as `disks[].source`, as `instances.get` does.
    for (i, source) in sources {
        vm["disks"][i]["source"] = json!(source);
    }
    st.insert_vm(
        name.to_string(),
        Vm {
            zone: zone.to_string(),
            body: vm,
            visible_from: now + f.hide_new,
            running_from: now + f.op_delay + f.provisioning,
            fingerprint: id,
            terminate_at,
        },
    );
    st.created.push(name.to_string());
    if let Some(room) = f.zone_room.get_mut(zone) {
        *room = room.saturating_sub(1);
    }
    if let Some(room) = f.region_room.as_mut() {
        *room = room.saturating_sub(1);
    }
}

/// A disk's URL, as `selfLink` and an instance's `disks[].source` show it.
fn disk_url(zone: &str, name: &str) -> String {
    format!("https://www.googleapis.com/compute/v1/projects/p/zones/{zone}/disks/{name}")
}

/// Whether a disk still exists: one with `autoDelete` goes with its VM, however the VM went
/// (cwo's delete, the TTL, the console).
fn disk_exists(st: &State, d: &Disk) -> bool {
    !d.auto_delete || st.vms.contains_key(&d.user)
}

/// The zones of a region (see `FakeGce::set_region_zones`).
fn zones_of(st: &State, region: &str) -> Vec<String> {
    if let Some(zones) = st.region_zones.get(region) {
        return zones.clone();
    }
    let letters: &[&str] = if region == "us-central1" {
        &["a", "b", "c", "f"]
    } else {
        &["a", "b", "c"]
    };
    letters.iter().map(|l| format!("{region}-{l}")).collect()
}

/// An int64 field, which the JSON mapping sends as a string ("3") but clients may send as 3.
fn int64(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// RFC 1035, as Compute requires of instance names: `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

/// What a bulk insert will do: its names in the order they are used, and how many VMs go to
/// which zone (empty when fewer than `min_count` fit).
struct BulkPlan {
    names: Vec<(String, Option<Value>)>,
    placed: Vec<(String, usize)>,
    min_count: usize,
}

fn invalid(message: String) -> (u16, Value) {
    (400, error(400, "invalid", &message))
}

/// Validates a BulkInsertInstanceResource and places it, as `regionInstances.bulkInsert` does
/// (https://cloud.google.com/compute/docs/reference/rest/v1/regionInstances/bulkInsert,
/// https://cloud.google.com/compute/docs/instances/multiple/create-in-bulk):
/// - `count` is the most VMs to create, `minCount` (default `count`) the fewest; "if minCount
///   instances cannot be created, then no instances will be created".
/// - Names come from `perInstanceProperties` keys first, then from `namePattern`, whose one run
///   of up to 18 `#` is replaced by a zero-padded sequence that "start[s] after the biggest
///   existing number" among existing VMs matching the pattern. A `perInstanceProperties` name
///   that exists already refuses the whole request (409 alreadyExists).
/// - `instanceProperties.machineType` (and a disk's `diskType`) must be a bare name
///   ("e2-micro"): the resource is not in a zone yet, so a `zones/…/machineTypes/…` form or a URL
///   is refused with 400 (/work/shared/reference/gcp.md §1.3: "bulkInsert, which needs bare
///   resource names, not URLs").
/// - `locationPolicy.locations` keys are "zones/{zone}" of the region; DENY excludes a zone,
///   zones not listed stay allowed; `constraints.maxCount` caps a zone. `targetShape`
///   ANY_SINGLE_ZONE (the default) puts every VM in one zone (the one with the most room),
///   ANY fills zones in order, BALANCED spreads them round robin over zones with room.
/// - A zone's room is the fake's capacity faults (`capacity_zones`, `zone_room`, `region_room`).
fn bulk_plan(
    st: &State,
    f: &Faults,
    zones: &[String],
    req: &Value,
) -> Result<BulkPlan, (u16, Value)> {
    if req.get("sourceInstanceTemplate").is_some() {
        return Err(invalid(
            "the fake does not model sourceInstanceTemplate; send instanceProperties".into(),
        ));
    }
    let props = &req["instanceProperties"];
    let Some(machine_type) = props["machineType"].as_str() else {
        return Err(invalid(
            "Invalid value for field 'resource.instanceProperties.machineType': ''. Machine type is required.".into(),
        ));
    };
    if machine_type.contains('/') {
        return Err(invalid(format!(
            "Invalid value for field 'resource.instanceProperties.machineType': '{machine_type}'. Must be a machine type name, not a URL."
        )));
    }
    for (i, disk) in props["disks"].as_array().into_iter().flatten().enumerate() {
        if let Some(t) = disk["initializeParams"]["diskType"].as_str()
            && t.contains('/')
        {
            return Err(invalid(format!(
                "Invalid value for field 'resource.instanceProperties.disks[{i}].initializeParams.diskType': '{t}'. Must be a disk type name, not a URL."
            )));
        }
    }
    let per_instance: Vec<(String, Value)> = req["perInstanceProperties"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let pattern = req["namePattern"].as_str().filter(|p| !p.is_empty());
    if per_instance.is_empty() && pattern.is_none() {
        return Err(invalid(
            "Either namePattern or perInstanceProperties must be set.".into(),
        ));
    }
    let count = match req.get("count") {
        Some(c) => int64(c).ok_or_else(|| invalid(format!("Invalid value for count: {c}")))?,
        None if !per_instance.is_empty() => per_instance.len() as i64,
        None => return Err(invalid("count must be set.".into())),
    };
    let min_count = match req.get("minCount") {
        Some(c) => int64(c).ok_or_else(|| invalid(format!("Invalid value for minCount: {c}")))?,
        None => count,
    };
    if count < 1 || min_count < 0 || min_count > count {
        return Err(invalid(format!(
            "Invalid count {count} / minCount {min_count}: 1 <= count and minCount <= count."
        )));
    }
    let (count, min_count) = (count as usize, min_count as usize);
    if per_instance.len() > count {
        return Err(invalid(format!(
            "perInstanceProperties names {} instances, more than count {count}.",
            per_instance.len()
        )));
    }
    if per_instance.len() < count && pattern.is_none() {
        return Err(invalid(format!(
            "count {count} needs a namePattern beyond the {} perInstanceProperties names.",
            per_instance.len()
        )));
    }
    let mut names: Vec<(String, Option<Value>)> = Vec::new();
    for (name, p) in &per_instance {
        if !valid_name(name) {
            return Err(invalid(format!(
                "Invalid value for field 'resource.perInstanceProperties': '{name}'. Must be a match of regex '[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?'"
            )));
        }
        if st.vms.contains_key(name) {
            return Err((
                409,
                error(
                    409,
                    "alreadyExists",
                    &format!("The resource '{name}' already exists"),
                ),
            ));
        }
        names.push((name.clone(), p.get("hostname").cloned()));
    }
    if names.len() < count {
        let pattern = pattern.unwrap_or_default();
        let runs: Vec<(usize, usize)> = {
            let b = pattern.as_bytes();
            let mut runs = Vec::new();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'#' {
                    let start = i;
                    while i < b.len() && b[i] == b'#' {
                        i += 1;
                    }
                    runs.push((start, i - start));
                } else {
                    i += 1;
                }
            }
            runs
        };
        let [(at, width)] = runs[..] else {
            return Err(invalid(format!(
                "Invalid value for field 'resource.namePattern': '{pattern}'. It must contain one continuous sequence of '#'."
            )));
        };
        if width > 18 {
            return Err(invalid(format!(
                "Invalid value for field 'resource.namePattern': '{pattern}'. At most 18 '#'."
            )));
        }
        let (prefix, suffix) = (&pattern[..at], &pattern[at + width..]);
        let biggest = st
            .vms
            .keys()
            .filter_map(|n| n.strip_prefix(prefix)?.strip_suffix(suffix))
            .filter(|digits| digits.len() == width && digits.bytes().all(|c| c.is_ascii_digit()))
            .filter_map(|digits| digits.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        let mut n = biggest;
        while names.len() < count {
            n += 1;
            let name = format!("{prefix}{n:0width$}{suffix}");
            if name.len() != pattern.len() {
                return Err(invalid(format!(
                    "namePattern '{pattern}' has no numbers left after {biggest}."
                )));
            }
            if !valid_name(&name) {
                return Err(invalid(format!(
                    "Invalid value for field 'resource.namePattern': '{pattern}' makes '{name}', not a valid instance name."
                )));
            }
            if names.iter().any(|(k, _)| *k == name) || st.vms.contains_key(&name) {
                continue;
            }
            names.push((name, None));
        }
    }
    let policy = &req["locationPolicy"];
    let mut caps: Vec<(String, usize)> = zones.iter().map(|z| (z.clone(), room(f, z))).collect();
    if let Some(locations) = policy["locations"].as_object() {
        for (key, loc) in locations {
            let zone = key.strip_prefix("zones/").unwrap_or("");
            let Some(cap) = caps.iter_mut().find(|(z, _)| z == zone) else {
                return Err(invalid(format!(
                    "Invalid value for field 'resource.locationPolicy.locations': '{key}'. Must be zones/ZONE of a zone in the region."
                )));
            };
            match loc["preference"].as_str().unwrap_or("ALLOW") {
                "ALLOW" | "PREFERENCE_UNSPECIFIED" => {}
                "DENY" => cap.1 = 0,
                other => {
                    return Err(invalid(format!(
                        "Invalid value for field 'resource.locationPolicy.locations[{key}].preference': '{other}'."
                    )));
                }
            }
            if let Some(max) = loc["constraints"]["maxCount"].as_u64() {
                cap.1 = cap.1.min(max as usize);
            }
        }
    }
    let mut left = count.min(f.region_room.unwrap_or(usize::MAX));
    let mut placed: Vec<(String, usize)> = Vec::new();
    match policy["targetShape"].as_str().unwrap_or("ANY_SINGLE_ZONE") {
        "ANY_SINGLE_ZONE" => {
            // The zone with the most room; the first of them on a tie.
            let best = caps
                .iter()
                .enumerate()
                .max_by_key(|(i, (_, cap))| (*cap, std::cmp::Reverse(*i)))
                .map(|(_, zc)| zc.clone());
            if let Some((zone, cap)) = best {
                placed.push((zone, cap.min(left)));
            }
        }
        "ANY" => {
            for (zone, cap) in &caps {
                let n = (*cap).min(left);
                left -= n;
                placed.push((zone.clone(), n));
            }
        }
        "BALANCED" => {
            let mut counts = vec![0usize; caps.len()];
            while left > 0 {
                let mut progressed = false;
                for (i, (_, cap)) in caps.iter().enumerate() {
                    if left > 0 && counts[i] < *cap {
                        counts[i] += 1;
                        left -= 1;
                        progressed = true;
                    }
                }
                if !progressed {
                    break;
                }
            }
            placed = caps
                .iter()
                .zip(counts)
                .map(|((zone, _), n)| (zone.clone(), n))
                .collect();
        }
        other => {
            return Err(invalid(format!(
                "Invalid value for field 'resource.locationPolicy.targetShape': '{other}'."
            )));
        }
    }
    placed.retain(|(_, n)| *n > 0);
    if placed.iter().map(|(_, n)| n).sum::<usize>() < min_count {
        placed.clear();
    }
    Ok(BulkPlan {
        names,
        placed,
        min_count,
    })
}

/// A region operation (`regionOperations`), e.g. a bulk insert's: like `new_op`, but scoped to
/// a region, with `errors` and, for a bulk insert, its `instancesBulkInsertOperationMetadata`.
fn new_region_op(
    st: &mut State,
    project: &str,
    region: &str,
    kind: &str,
    delay: Duration,
    errors: Vec<(String, String)>,
    metadata: Option<Value>,
) -> Value {
    st.next += 1;
    let name = format!("operation-{}", st.next);
    let region_url =
        format!("https://www.googleapis.com/compute/v1/projects/{project}/regions/{region}");
    let mut body = json!({
        "kind": "compute#operation", "name": name, "id": st.next.to_string(), "operationType": kind,
        "status": "RUNNING", "targetLink": region_url, "region": region_url,
        "selfLink": format!("{region_url}/operations/{name}"),
        "insertTime": now_rfc3339(), "startTime": now_rfc3339(), "progress": 0,
    });
    if let Some(m) = metadata {
        body["instancesBulkInsertOperationMetadata"] = m;
    }
    st.ops.insert(
        name.clone(),
        Op {
            zone: region.to_string(),
            done: false,
            body,
            done_at: Instant::now() + delay,
            effect: Effect::None,
            errors,
        },
    );
    finish_op(st, &name);
    st.ops[&name].body.clone()
}

/// How many more VMs the zone has room for (`usize::MAX`: no limit set).
fn room(f: &Faults, zone: &str) -> usize {
    if f.capacity_zones.contains(zone) {
        return 0;
    }
    let zone_room = f.zone_room.get(zone).copied().unwrap_or(usize::MAX);
    zone_room.min(f.region_room.unwrap_or(usize::MAX))
}

fn query(url: &str) -> HashMap<String, String> {
    url.split_once('?')
        .map(|(_, q)| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), percent_decode(v)))
                .collect()
        })
        .unwrap_or_default()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle(
    mut request: tiny_http::Request,
    state: &Mutex<State>,
    faults: &Mutex<Faults>,
    config: &Config,
) {
    let method = request.method().to_string();
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    let mut body = String::new();
    let _ = request.as_reader().read_to_string(&mut body);
    state.lock().unwrap().log.push(Recorded {
        method: method.clone(),
        path: url.clone(),
        body: body.clone(),
    });
    let (latency, insert_delay) = {
        let f = faults.lock().unwrap();
        (f.latency, f.insert_delay)
    };
    if !latency.is_zero() {
        std::thread::sleep(latency);
    }
    if method == "POST" && path.ends_with("/instances") && !insert_delay.is_zero() {
        std::thread::sleep(insert_delay);
    }
    // VMs deleted by someone else just before this call.
    {
        let mut f = faults.lock().unwrap();
        let call = format!("{method} {path}");
        if let Some(pos) = f
            .vanish_on
            .iter()
            .position(|(k, _)| call.contains(k.as_str()))
        {
            let (_, vm) = f.vanish_on.remove(pos);
            drop(f);
            state.lock().unwrap().remove_vm(&vm);
        }
    }
    // Injected HTTP failures.
    {
        let mut f = faults.lock().unwrap();
        let call = format!("{method} {path}");
        if let Some(pos) = f.http.iter().position(|(k, _)| call.contains(k.as_str())) {
            let (_, status) = f.http.remove(pos).unwrap();
            drop(f);
            return respond(
                request,
                status,
                error(status, "backendError", "injected failure"),
            );
        }
    }
    let q = query(&url);
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (status, reply) = route(&method, &parts, &q, &body, state, faults, config);
    respond(request, status, reply);
}

/// The error shape of Google's newer APIs (Cloud Billing Budget, Resource Manager): canonical
/// `status` plus an ErrorInfo detail (https://cloud.google.com/apis/design/errors).
fn google_error(code: u16, reason: &str, message: &str) -> Value {
    let mut e = error(code, reason, message);
    let err = e["error"].as_object_mut().unwrap();
    err.remove("errors");
    err.insert(
        "details".into(),
        json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com"}]),
    );
    e
}

static BUDGET_SEQ: AtomicUsize = AtomicUsize::new(1);

/// A budget just created: the server assigns its name and etag.
fn new_budget(account: &str, mut b: Value) -> Value {
    let n = BUDGET_SEQ.fetch_add(1, Ordering::SeqCst);
    b["name"] = json!(format!(
        "billingAccounts/{account}/budgets/00000000-0000-4000-8000-{n:012x}"
    ));
    b["etag"] = json!(format!("etag-{n}"));
    b
}

/// Validates a budget the way the Cloud Billing Budget API v1 does and fills in what it returns
/// by default (https://cloud.google.com/billing/docs/reference/budget/rest/v1/billingAccounts.budgets;
/// googleapis google/cloud/billing/budgets/v1/budget_model.proto): the amount is required, its
/// `currencyCode` must be the billing account's, `units` comes back as a string; projects are
/// stored as `projects/{number}`; `labels` takes a single label with a single value;
/// `calendarPeriod` and `customPeriod` exclude each other and the period defaults to MONTH;
/// credits default to INCLUDE_ALL_CREDITS; `spendBasis` to CURRENT_SPEND; threshold rules are
/// required for email notifications; the display name is at most 60 characters.
fn budget_defaults(
    mut b: Value,
    currency: &str,
    numbers: &HashMap<String, String>,
) -> Result<Value, String> {
    if b["displayName"].as_str().unwrap_or("").chars().count() > 60 {
        return Err("displayName must be at most 60 characters".into());
    }
    let last_period = b.pointer("/amount/lastPeriodAmount").is_some();
    match b.pointer_mut("/amount/specifiedAmount") {
        Some(m) => {
            match m["currencyCode"].as_str() {
                None | Some("") => m["currencyCode"] = json!(currency),
                Some(c) if c == currency => {}
                Some(c) => {
                    return Err(format!(
                        "currencyCode {c} does not match the billing account's currency {currency}"
                    ));
                }
            }
            let units = match &m["units"] {
                Value::String(s) => s.parse::<i64>().map_err(|_| format!("units {s:?}"))?,
                Value::Number(n) => n.as_i64().ok_or("units")?,
                Value::Null => 0,
                other => return Err(format!("units {other}")),
            };
            m["units"] = json!(units.to_string());
        }
        None if last_period => {}
        None => return Err("amount is required".into()),
    }
    let filter = b
        .as_object_mut()
        .unwrap()
        .entry("budgetFilter")
        .or_insert(json!({}));
    if let Some(projects) = filter.get_mut("projects").and_then(Value::as_array_mut) {
        for p in projects.iter_mut() {
            let id = p.as_str().unwrap_or("").trim_start_matches("projects/");
            let number = if numbers.values().any(|n| n == id) {
                id.to_string()
            } else if let Some(n) = numbers.get(id) {
                n.clone()
            } else {
                return Err(format!(
                    "project {p} does not exist or is not on this billing account"
                ));
            };
            *p = json!(format!("projects/{number}"));
        }
    }
    if let Some(labels) = filter.get("labels").and_then(Value::as_object)
        && (labels.len() > 1
            || labels
                .values()
                .any(|v| v.as_array().is_none_or(|a| a.len() != 1)))
    {
        return Err(
            "budgetFilter.labels: only a single label with a single value is allowed".into(),
        );
    }
    if filter.get("calendarPeriod").is_some() && filter.get("customPeriod").is_some() {
        return Err("calendarPeriod and customPeriod are mutually exclusive".into());
    }
    if filter.get("customPeriod").is_none() && filter.get("calendarPeriod").is_none() {
        filter["calendarPeriod"] = json!("MONTH");
    }
    if filter.get("creditTypesTreatment").is_none() {
        filter["creditTypesTreatment"] = json!("INCLUDE_ALL_CREDITS");
    }
    let emails = !b["notificationsRule"]["disableDefaultIamRecipients"]
        .as_bool()
        .unwrap_or(false)
        || b["notificationsRule"]["monitoringNotificationChannels"]
            .as_array()
            .is_some_and(|c| !c.is_empty());
    let rules = b["thresholdRules"].as_array().cloned().unwrap_or_default();
    if emails && rules.is_empty() {
        return Err("thresholdRules are required for email notifications".into());
    }
    if let Some(rules) = b.get_mut("thresholdRules").and_then(Value::as_array_mut) {
        for r in rules {
            if r["thresholdPercent"].as_f64().is_none_or(|p| p < 0.0) {
                return Err(format!(
                    "thresholdPercent must be a non-negative number: {r}"
                ));
            }
            if r.get("spendBasis").is_none() {
                r["spendBasis"] = json!("CURRENT_SPEND");
            }
        }
    }
    Ok(b)
}

/// Sets (or, absent from `from`, clears) the field at a dotted `path` of an update mask.
fn apply_path(to: &mut Value, from: &Value, path: &str) {
    let keys: Vec<&str> = path.split('.').collect();
    let mut src = Some(from);
    for k in &keys {
        src = src.and_then(|v| v.get(*k));
    }
    let mut dst = to;
    for k in &keys[..keys.len() - 1] {
        dst = dst
            .as_object_mut()
            .unwrap()
            .entry(k.to_string())
            .or_insert(json!({}));
    }
    let last = keys[keys.len() - 1];
    match src {
        Some(v) => {
            dst[last] = v.clone();
        }
        None => {
            dst.as_object_mut().unwrap().remove(last);
        }
    }
}

/// The Cloud Billing Budget API v1 (`/v1/billingAccounts/{id}/budgets[/{budget}]`) and Cloud
/// Resource Manager v3 `projects.get`, as far as `cwo budget alert` uses them.
fn billing_route(
    method: &str,
    parts: &[&str],
    q: &HashMap<String, String>,
    body: &str,
    st: &mut State,
    f: &Faults,
) -> Option<(u16, Value)> {
    let not_found = |what: String| (404, google_error(404, "NOT_FOUND", &what));
    let invalid = |why: String| (400, google_error(400, "INVALID_ARGUMENT", &why));
    Some(match (method, parts) {
        // https://cloud.google.com/resource-manager/reference/rest/v3/projects/get: `name` is
        // projects/{number}; a project the caller cannot see answers 403, like a missing one.
        ("GET", ["v3", "projects", id]) => match st.project_numbers.get(*id) {
            Some(n) => (
                200,
                json!({"name": format!("projects/{n}"), "projectId": id, "state": "ACTIVE", "displayName": id}),
            ),
            None => (
                403,
                google_error(
                    403,
                    "IAM_PERMISSION_DENIED",
                    &format!(
                        "Permission 'resourcemanager.projects.get' denied on resource '//cloudresourcemanager.googleapis.com/projects/{id}' (or it may not exist)."
                    ),
                ),
            ),
        },
        (_, ["v1", "billingAccounts", acct, "budgets", rest @ ..]) => {
            let numbers = st.project_numbers.clone();
            let Some(account) = st.billing.get_mut(*acct) else {
                return Some(not_found(format!(
                    "Billing account billingAccounts/{acct} not found."
                )));
            };
            let input: Value = serde_json::from_str(body).unwrap_or(json!({}));
            match (method, rest) {
                ("POST", []) => match budget_defaults(input, &account.currency, &numbers) {
                    Ok(b) => {
                        let b = new_budget(acct, b);
                        account.budgets.push(b.clone());
                        (200, b)
                    }
                    Err(why) => invalid(why),
                },
                ("GET", []) => {
                    let size = q
                        .get("pageSize")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(50usize)
                        .clamp(1, 100)
                        .min(f.budget_page_size.unwrap_or(100));
                    let start: usize = q.get("pageToken").and_then(|t| t.parse().ok()).unwrap_or(0);
                    let page: Vec<Value> = account
                        .budgets
                        .iter()
                        .skip(start)
                        .take(size)
                        .cloned()
                        .collect();
                    let mut reply = json!({"budgets": page});
                    if start + size < account.budgets.len() {
                        reply["nextPageToken"] = json!((start + size).to_string());
                    }
                    (200, reply)
                }
                (_, [id]) => {
                    let name = format!("billingAccounts/{acct}/budgets/{id}");
                    let Some(pos) = account.budgets.iter().position(|b| b["name"] == name) else {
                        return Some(not_found(format!("Budget {name} not found.")));
                    };
                    match method {
                        "GET" => (200, account.budgets[pos].clone()),
                        "DELETE" => {
                            account.budgets.remove(pos);
                            (200, json!({}))
                        }
                        "PATCH" => {
                            let current = account.budgets[pos].clone();
                            // A stale etag is refused (AIP-154: ABORTED); an empty one overwrites.
                            let etag = input["etag"].as_str().unwrap_or("");
                            if !etag.is_empty() && etag != current["etag"] {
                                return Some((
                                    409,
                                    google_error(
                                        409,
                                        "ABORTED",
                                        "The budget was modified concurrently: its etag does not match.",
                                    ),
                                ));
                            }
                            // The proto's own ID is refused on update; only numbers are stored.
                            if let Some(projects) = input
                                .pointer("/budgetFilter/projects")
                                .and_then(Value::as_array)
                                && projects.iter().any(|p| {
                                    !p.as_str()
                                        .unwrap_or("")
                                        .trim_start_matches("projects/")
                                        .chars()
                                        .all(|c| c.is_ascii_digit())
                                })
                            {
                                return Some(invalid(
                                    "Request contains an invalid argument.".into(),
                                ));
                            }
                            let mut updated = current.clone();
                            let mask: Vec<String> = q
                                .get("updateMask")
                                .map(|m| {
                                    m.split(',')
                                        .map(str::to_string)
                                        .filter(|p| !p.is_empty())
                                        .collect()
                                })
                                .unwrap_or_else(|| {
                                    input
                                        .as_object()
                                        .map(|o| o.keys().cloned().collect())
                                        .unwrap_or_default()
                                });
                            for path in &mask {
                                if matches!(path.as_str(), "name" | "etag") {
                                    continue;
                                }
                                apply_path(&mut updated, &input, path);
                            }
                            let currency = current
                                .pointer("/amount/specifiedAmount/currencyCode")
                                .and_then(Value::as_str)
                                .unwrap_or(&account.currency)
                                .to_string();
                            match budget_defaults(updated, &currency, &numbers) {
                                Ok(mut b) => {
                                    let n = BUDGET_SEQ.fetch_add(1, Ordering::SeqCst);
                                    b["etag"] = json!(format!("etag-{n}"));
                                    account.budgets[pos] = b.clone();
                                    (200, b)
                                }
                                Err(why) => invalid(why),
                            }
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// An image's URL, as its `selfLink` and a disk's resolved `sourceImage` show it.
fn image_url(project: &str, name: &str) -> String {
    format!("https://www.googleapis.com/compute/v1/projects/{project}/global/images/{name}")
}

/// An image's `creationTimestamp` as a time, for "newest" (the fake's and seeded timestamps may
/// carry different offsets, so strings do not order them).
fn image_created(image: &Value) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(image["creationTimestamp"].as_str()?).ok()
}

/// `images.getFromFamily` (https://cloud.google.com/compute/docs/reference/rest/v1/images/getFromFamily):
/// "the latest image that is part of an image family and is not deprecated". Latest by
/// `creationTimestamp`, then by creation order (`id`) for images made in the same millisecond.
/// Only a READY image counts: "An image can be used to create other resources, such as
/// instances, only after the image has been successfully created and the status is set to
/// READY" (the Image resource's `status`), so one still PENDING, FAILED or DELETING is passed
/// over.
fn family_latest<'a>(st: &'a State, family: &str) -> Option<&'a Value> {
    st.images
        .values()
        .filter(|i| i["family"] == family && i["status"] == "READY")
        .filter(|i| {
            !matches!(
                i["deprecated"]["state"].as_str(),
                Some("DEPRECATED" | "OBSOLETE" | "DELETED")
            )
        })
        .max_by_key(|i| (image_created(i), int64(&i["id"])))
}

/// Resolves a `sourceImage` the way an instance insert does, when it names an image of
/// `project` (the fake holds no other project's images: `projects/debian-cloud/…` is taken as
/// given). Forms: a URL or `projects/{p}/global/images/{name}`, `…/images/family/{family}`,
/// and `global/images/…` for the request's own project. None: another project's image.
/// Err: what Compute answers for a missing family or image (404 `notFound`, "The resource
/// 'projects/…/global/images/family/…' was not found") or for an image not READY (400
/// `resourceNotReady`: an image is usable "only after … the status is set to READY").
fn resolve_image(st: &State, project: &str, src: &str) -> Option<Result<Value, (u16, Value)>> {
    let path = match src.find("projects/") {
        Some(i) => src[i..].to_string(),
        None if src.starts_with("global/images/") => format!("projects/{project}/{src}"),
        None => return None,
    };
    let rest = path.strip_prefix(&format!("projects/{project}/global/images/"))?;
    let not_found = || {
        let message = format!("The resource '{path}' was not found");
        (404, error(404, "notFound", &message))
    };
    Some(match rest.strip_prefix("family/") {
        Some(family) => family_latest(st, family).cloned().ok_or_else(not_found),
        None => match st.images.get(rest) {
            None => Err(not_found()),
            Some(image) if image["status"] != "READY" => {
                let message = format!("The resource '{path}' is not ready");
                Err((400, error(400, "resourceNotReady", &message)))
            }
            Some(image) => Ok(image.clone()),
        },
    })
}

/// Every `disks[].initializeParams.sourceImage` of an insert body must resolve (see
/// `resolve_image`); the first that does not is the answer.
fn check_source_images(st: &State, project: &str, disks: &Value) -> Result<(), (u16, Value)> {
    for disk in disks.as_array().into_iter().flatten() {
        if let Some(src) = disk["initializeParams"]["sourceImage"].as_str()
            && let Some(Err(answer)) = resolve_image(st, project, src)
        {
            return Err(answer);
        }
    }
    Ok(())
}

/// Label keys and values as Compute requires them
/// (https://cloud.google.com/compute/docs/labeling-resources#requirements): at most 64 labels;
/// keys 1–63 characters starting with a lowercase letter, values 0–63; both only lowercase
/// letters, digits, `_` and `-` (the international characters the rule also allows are not
/// modelled: cwo writes none).
fn check_labels(labels: &Value) -> Result<(), String> {
    let Some(labels) = labels.as_object() else {
        return Ok(());
    };
    if labels.len() > 64 {
        return Err(format!("{} labels; at most 64 are allowed.", labels.len()));
    }
    let chars_ok = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
    };
    for (key, value) in labels {
        let value = value.as_str().unwrap_or("");
        if key.is_empty()
            || key.len() > 63
            || !key.starts_with(|c: char| c.is_ascii_lowercase())
            || !chars_ok(key)
        {
            return Err(format!(
                "Label key '{key}' violates format constraints. The key must start with a lowercase character, can only contain lowercase letters, numeric characters, underscores and dashes. The key can be at most 63 characters long."
            ));
        }
        if value.len() > 63 || !chars_ok(value) {
            return Err(format!(
                "Label value '{value}' violates format constraints. The value can only contain lowercase letters, numeric characters, underscores and dashes. The value can be at most 63 characters long."
            ));
        }
    }
    Ok(())
}

/// The `type`s a `guestOsFeatures[]` entry may have (Compute v1's GuestOsFeature.Type).
const GUEST_OS_FEATURES: &[&str] = &[
    "BARE_METAL_LINUX_COMPATIBLE",
    "BMSAI_CAPABLE",
    "CCA_CAPABLE",
    "FEATURE_TYPE_UNSPECIFIED",
    "GVNIC",
    "IDPF",
    "MULTI_IP_SUBNET",
    "SECURE_BOOT",
    "SEV_CAPABLE",
    "SEV_LIVE_MIGRATABLE",
    "SEV_LIVE_MIGRATABLE_V2",
    "SEV_SNP_CAPABLE",
    "SNP_SVSM_CAPABLE",
    "SUSPEND_SAFE_FPR",
    "TDX_CAPABLE",
    "UEFI_COMPATIBLE",
    "VIRTIO_SCSI_MULTIQUEUE",
    "WINDOWS",
];

/// The zone and name of a disk an image's `sourceDisk` names: a URL
/// (https://www.googleapis.com/compute/v1/projects/p/zones/z/disks/d) or a partial path
/// (`projects/p/zones/z/disks/d`, `zones/z/disks/d`), as the field's doc allows ("the full or
/// partial URL"). The project is not checked: the fake keeps one project's disks (and shows
/// them under `projects/p`).
fn parse_source_disk(src: &str) -> Option<(String, String)> {
    let path = src
        .strip_prefix("https://www.googleapis.com/compute/v1/")
        .or_else(|| src.strip_prefix("https://compute.googleapis.com/compute/v1/"))
        .unwrap_or(src);
    let parts: Vec<&str> = path.split('/').collect();
    let (zone, disk) = match parts[..] {
        ["projects", p, "zones", z, "disks", d] if !p.is_empty() => (z, d),
        ["zones", z, "disks", d] => (z, d),
        _ => return None,
    };
    (!zone.is_empty() && valid_name(disk)).then(|| (zone.to_string(), disk.to_string()))
}

/// The bucket and object of an image's `rawDisk.source`. The field's documented forms are
/// "https://storage.googleapis.com/bucket_name/image_archive_name" and
/// "https://storage.googleapis.com/bucket_name/folder_name/image_archive_name"
/// (https://cloud.google.com/compute/docs/reference/rest/v1/images, `rawDisk.source`); a
/// `gs://` URI is not one of them (gcloud's `--source-uri gs://…` turns it into the https form
/// before it calls the API).
fn parse_raw_source(src: &str) -> Option<(String, String)> {
    let (bucket, object) = src
        .strip_prefix("https://storage.googleapis.com/")?
        .split_once('/')?;
    (!bucket.is_empty() && !object.is_empty()).then(|| (bucket.to_string(), path_decode(object)))
}

/// Percent-decoding of a URL path segment (`+` stays a plus, unlike in a query string).
fn path_decode(s: &str) -> String {
    percent_decode(&s.replace('+', "%2B"))
}

/// The multi-region an image is stored in when `storageLocations` is not given: "the closest
/// one to the source" (https://cloud.google.com/compute/docs/samples/compute-images-create).
fn default_storage_location(zone_or_region: &str) -> &'static str {
    match zone_or_region.split('-').next() {
        Some("europe") => "eu",
        Some("asia") | Some("australia") => "asia",
        _ => "us",
    }
}

/// Validates an `images.insert` body against the fake's disks and storage and returns the
/// image it makes (status PENDING), or the synchronous error Compute answers with
/// (https://cloud.google.com/compute/docs/reference/rest/v1/images/insert; the error texts are
/// the API's as users report them):
/// - `name` (and `family`) must be RFC 1035 names; a `name` that exists answers 409
///   `alreadyExists`; labels must meet the label rules; `guestOsFeatures[].type` must be known.
/// - Exactly one source: 400 "Invalid resource usage: 'Must specify exactly one source for an
///   image.'" otherwise. `sourceImage` and `sourceSnapshot` are not modelled (400).
/// - `sourceDisk`: a malformed one answers 400 `invalid` "… The URL is malformed."; a disk that
///   does not exist 400 `invalid` "Invalid value for field 'resource.sourceDisk': '…'.
///   Referenced resource was not found." (hashicorp/packer#1877, #11511); a disk attached to a
///   VM that is not TERMINATED 400 `resourceInUseByAnotherResource` "The disk resource '…' is
///   already being used by '…'" (ansible/ansible#61634) unless `forceCreate=true`: "If
///   forceCreate is set to true, proceeds even if the disk is attached to a running instance"
///   (https://cloud.google.com/compute/docs/samples/compute-images-create).
/// - `rawDisk.source` (see `parse_raw_source`) is read through the linked storage: a missing
///   bucket answers 400 `gcsBucketNotFound` "The Cloud Storage bucket '…' is not found."
///   (hashicorp/terraform-provider-google#19729), a missing object 404 `notFound` "The resource
///   'https://www.googleapis.com/storage/v1/b/…/o/…' of type 'Google Cloud Storage object' was
///   not found." (zentralopensource/zentral#77). `rawDisk.containerType` may only be TAR.
///
/// The image records `sourceType` RAW, `sourceDisk` (URL) and `sourceDiskId` or `rawDisk`,
/// `diskSizeGb` (the disk's size; for a raw disk 10, as the fake does not unpack the archive's
/// disk.raw), `archiveSizeBytes` (the object's size; for a disk a quarter of its size, as the
/// fake has no blocks to compress), `storageLocations`, `labelFingerprint`, `selfLink`, `id`.
fn new_image(
    st: &mut State,
    project: &str,
    req: &Value,
    force: bool,
) -> Result<Value, (u16, Value)> {
    let invalid = |field: &str, value: &str, why: &str| {
        let message = format!("Invalid value for field 'resource.{field}': '{value}'. {why}");
        (400, error(400, "invalid", &message))
    };
    let name = req["name"].as_str().unwrap_or("");
    if !valid_name(name) {
        return Err(invalid(
            "name",
            name,
            "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'",
        ));
    }
    if st.images.contains_key(name) {
        let message =
            format!("The resource 'projects/{project}/global/images/{name}' already exists");
        return Err((409, error(409, "alreadyExists", &message)));
    }
    if let Some(family) = req["family"].as_str()
        && !valid_name(family)
    {
        return Err(invalid(
            "family",
            family,
            "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'",
        ));
    }
    if let Err(why) = check_labels(&req["labels"]) {
        return Err(invalid("labels", "", &why));
    }
    for (i, feature) in req["guestOsFeatures"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let t = feature["type"].as_str().unwrap_or("");
        if !GUEST_OS_FEATURES.contains(&t) {
            return Err(invalid(
                &format!("guestOsFeatures[{i}].type"),
                t,
                "Unknown guest OS feature.",
            ));
        }
    }
    let given = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
    let sources = [
        &req["sourceDisk"],
        &req["rawDisk"]["source"],
        &req["sourceImage"],
        &req["sourceSnapshot"],
    ];
    if sources.iter().filter(|v| given(v)).count() != 1 {
        let message = "Invalid resource usage: 'Must specify exactly one source for an image.'";
        return Err((400, error(400, "invalid", message)));
    }
    if given(&req["sourceImage"]) || given(&req["sourceSnapshot"]) {
        let message = "the fake does not model images from sourceImage or sourceSnapshot; send sourceDisk or rawDisk.source";
        return Err((400, error(400, "invalid", message)));
    }
    st.next += 1;
    let id = st.next;
    let mut image = json!({
        "kind": "compute#image", "id": id.to_string(), "creationTimestamp": now_rfc3339(),
        "name": name, "sourceType": "RAW", "status": "PENDING",
        "labelFingerprint": fingerprint(id), "selfLink": image_url(project, name),
    });
    for key in ["description", "family", "guestOsFeatures", "architecture"] {
        if let Some(v) = req.get(key) {
            image[key] = v.clone();
        }
    }
    if req["labels"].as_object().is_some_and(|l| !l.is_empty()) {
        image["labels"] = req["labels"].clone();
    }
    const GIB: i64 = 1 << 30;
    let location;
    if let Some(src) = req["sourceDisk"].as_str().filter(|s| !s.is_empty()) {
        let Some((zone, disk_name)) = parse_source_disk(src) else {
            return Err(invalid("sourceDisk", src, "The URL is malformed."));
        };
        let Some(disk) = st
            .disks
            .get(&disk_name)
            .filter(|d| d.zone == zone && disk_exists(st, d))
        else {
            return Err(invalid(
                "sourceDisk",
                src,
                "Referenced resource was not found.",
            ));
        };
        if let Some(vm) = st.vms.get(&disk.user)
            && vm.body["status"] != "TERMINATED"
            && !force
        {
            let message = format!(
                "The disk resource 'projects/{project}/zones/{zone}/disks/{disk_name}' is already being used by 'projects/{project}/zones/{}/instances/{}'",
                vm.zone, disk.user
            );
            return Err((400, error(400, "resourceInUseByAnotherResource", &message)));
        }
        let size_gb = int64(&disk.body["sizeGb"]).unwrap_or(10);
        image["sourceDisk"] = json!(format!(
            "https://www.googleapis.com/compute/v1/projects/{project}/zones/{zone}/disks/{disk_name}"
        ));
        image["sourceDiskId"] = disk.body["id"].clone();
        image["diskSizeGb"] = json!(size_gb.to_string());
        image["archiveSizeBytes"] = json!((size_gb * GIB / 4).to_string());
        location = default_storage_location(&zone);
    } else {
        let src = req["rawDisk"]["source"].as_str().unwrap_or("");
        if let Some(t) = req["rawDisk"]["containerType"].as_str()
            && t != "TAR"
        {
            return Err(invalid("rawDisk.containerType", t, "Must be TAR."));
        }
        let Some((bucket, object)) = parse_raw_source(src) else {
            return Err(invalid(
                "rawDisk.source",
                src,
                "Must be https://storage.googleapis.com/bucket_name/image_archive_name.",
            ));
        };
        let read = match &st.storage {
            Some(reader) => reader(&bucket, &object),
            None => Err(MissingObject::Bucket),
        };
        let size = match read {
            Ok(size) => size,
            Err(MissingObject::Bucket) => {
                let message = format!("The Cloud Storage bucket '{bucket}' is not found.");
                return Err((400, error(400, "gcsBucketNotFound", &message)));
            }
            Err(MissingObject::Object) => {
                let message = format!(
                    "The resource 'https://www.googleapis.com/storage/v1/b/{bucket}/o/{object}' of type 'Google Cloud Storage object' was not found."
                );
                return Err((404, error(404, "notFound", &message)));
            }
        };
        image["rawDisk"] = json!({"source": src, "containerType": "TAR"});
        image["diskSizeGb"] = json!("10");
        image["archiveSizeBytes"] = json!(size.to_string());
        location = "us";
    }
    image["storageLocations"] = match req["storageLocations"].as_array() {
        Some(l) if !l.is_empty() => json!(l),
        _ => json!([location]),
    };
    Ok(image)
}

/// A global operation (`globalOperations`, https://cloud.google.com/compute/docs/reference/rest/v1/globalOperations):
/// like `new_op`, but with no `zone` or `region`, and its `selfLink` under `global/operations`.
/// RUNNING until `delay` has passed, then DONE with its effect applied (and `error.errors[]`
/// when it failed).
fn new_global_op(
    st: &mut State,
    project: &str,
    kind: &str,
    target: &str,
    delay: Duration,
    effect: Effect,
    error: Option<(String, String)>,
) -> Value {
    st.next += 1;
    let name = format!("operation-{}", st.next);
    let body = json!({
        "kind": "compute#operation", "name": name, "id": st.next.to_string(), "operationType": kind,
        "status": "RUNNING", "targetLink": target,
        "selfLink": format!("https://www.googleapis.com/compute/v1/projects/{project}/global/operations/{name}"),
        "insertTime": now_rfc3339(), "startTime": now_rfc3339(), "progress": 0,
    });
    st.ops.insert(
        name.clone(),
        Op {
            zone: "global".into(),
            done: false,
            body,
            done_at: Instant::now() + delay,
            effect,
            errors: error.into_iter().collect(),
        },
    );
    finish_op(st, &name);
    st.ops[&name].body.clone()
}

/// Whether an operation is a global one (`new_global_op`).
fn is_global_op(op: &Op) -> bool {
    op.zone == "global" && op.body.get("zone").is_none() && op.body.get("region").is_none()
}

/// One node of a list `filter`.
enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    Cmp {
        field: String,
        op: String,
        value: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Op(String),
    Word(String),
    Quoted(String),
}

fn filter_tokens(filter: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = filter.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            ')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("unterminated string in filter {filter:?}")),
                        Some('"') => break,
                        Some('\\') if i + 1 < chars.len() => {
                            s.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(c) => {
                            s.push(*c);
                            i += 1;
                        }
                    }
                }
                i += 1;
                tokens.push(Token::Quoted(s));
            }
            '!' | '<' | '>' | '=' | ':' => {
                let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
                let op = if matches!(two.as_str(), "!=" | "<=" | ">=") {
                    two
                } else if c == '!' {
                    return Err(format!("stray '!' in filter {filter:?}"));
                } else {
                    c.to_string()
                };
                i += op.len();
                tokens.push(Token::Op(op));
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !"()\"!<>=:".contains(chars[i])
                {
                    i += 1;
                }
                tokens.push(Token::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(tokens)
}

struct FilterParser {
    tokens: Vec<Token>,
    at: usize,
}

impl FilterParser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w == word)
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut terms = vec![self.and()?];
        while self.keyword("OR") {
            self.at += 1;
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().unwrap()
        } else {
            Filter::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut terms = vec![self.unary()?];
        loop {
            if self.keyword("AND") {
                self.at += 1;
            } else if self.peek().is_none()
                || self.peek() == Some(&Token::Close)
                || self.keyword("OR")
            {
                break;
            }
            terms.push(self.unary()?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().unwrap()
        } else {
            Filter::And(terms)
        })
    }

    fn unary(&mut self) -> Result<Filter, String> {
        if self.keyword("NOT") {
            self.at += 1;
            return Ok(Filter::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Token::Open) {
            self.at += 1;
            let inner = self.or()?;
            if self.peek() != Some(&Token::Close) {
                return Err("a '(' without its ')'".into());
            }
            self.at += 1;
            return Ok(inner);
        }
        let (
            Some(Token::Word(field)),
            Some(Token::Op(op)),
            Some(Token::Word(value) | Token::Quoted(value)),
        ) = (
            self.tokens.get(self.at).cloned(),
            self.tokens.get(self.at + 1).cloned(),
            self.tokens.get(self.at + 2).cloned(),
        )
        else {
            return Err(format!("expected `field op value` at token {}", self.at));
        };
        self.at += 3;
        Ok(Filter::Cmp { field, op, value })
    }
}

/// Compute's list `filter` (https://cloud.google.com/compute/docs/reference/rest/v1/images/list):
/// "The expression must specify the field name, an operator, and the value that you want to
/// use for filtering… The operator must be either `=`, `!=`, `>`, `<`, `<=`, `>=` or `:`";
/// "`labels.owner:*`" tests that a key is defined; "By default, each expression is an AND
/// expression. However, you can include AND and OR expressions explicitly", with each
/// expression in parentheses. Nested fields are dotted (`labels.cwo-hash`). `=` and `!=`
/// compare exactly (the regular expressions of the older `eq`/`ne` syntax are not modelled);
/// `<`… compare numbers as numbers, anything else as strings (RFC 3339 timestamps order so).
fn parse_filter(filter: &str) -> Result<Option<Filter>, String> {
    let tokens = filter_tokens(filter)?;
    if tokens.is_empty() {
        return Ok(None);
    }
    let mut parser = FilterParser { tokens, at: 0 };
    let tree = parser.or()?;
    if parser.at != parser.tokens.len() {
        return Err(format!("unexpected {:?}", parser.tokens[parser.at]));
    }
    Ok(Some(tree))
}

fn filter_eval(body: &Value, filter: &Filter) -> bool {
    match filter {
        Filter::And(terms) => terms.iter().all(|t| filter_eval(body, t)),
        Filter::Or(terms) => terms.iter().any(|t| filter_eval(body, t)),
        Filter::Not(inner) => !filter_eval(body, inner),
        Filter::Cmp { field, op, value } => {
            let mut at = body;
            for key in field.split('.') {
                at = &at[key];
            }
            let actual = match at {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            };
            let ordered = |actual: &str| match (actual.parse::<f64>(), value.parse::<f64>()) {
                (Ok(a), Ok(b)) => a.partial_cmp(&b),
                _ => Some(actual.cmp(value.as_str())),
            };
            match (op.as_str(), actual) {
                (":", a) if value == "*" => a.is_some() || at.is_object() || at.is_array(),
                ("=" | ":", a) => a.as_deref() == Some(value.as_str()),
                ("!=", a) => a.as_deref() != Some(value.as_str()),
                (_, None) => false,
                ("<", Some(a)) => ordered(&a) == Some(std::cmp::Ordering::Less),
                (">", Some(a)) => ordered(&a) == Some(std::cmp::Ordering::Greater),
                ("<=", Some(a)) => ordered(&a).is_some_and(|o| o.is_le()),
                (">=", Some(a)) => ordered(&a).is_some_and(|o| o.is_ge()),
                _ => false,
            }
        }
    }
}

fn route(
    method: &str,
    parts: &[&str],
    q: &HashMap<String, String>,
    body: &str,
    state: &Mutex<State>,
    faults: &Mutex<Faults>,
    config: &Config,
) -> (u16, Value) {
    let mut st = state.lock().unwrap();
    st.expire();
    st.finish_due();
    let mut f = faults.lock().unwrap();
    let now = Instant::now();
    if let Some(answer) = billing_route(method, parts, q, body, &mut st, &f) {
        return answer;
    }
    match (method, parts) {
        // Secret Manager: /v1/projects/P/secrets/S/versions/V:access
        ("GET", ["v1", "projects", p, "secrets", s, "versions", v]) if v.ends_with(":access") => {
            match st.secrets.get(*s) {
                Some(data) => (
                    200,
                    json!({
                        "name": format!("projects/{p}/secrets/{s}/versions/{}", v.trim_end_matches(":access")),
                        "payload": {"data": base64::engine::general_purpose::STANDARD.encode(data)}
                    }),
                ),
                None => (
                    404,
                    error(404, "notFound", &format!("Secret [{s}] not found")),
                ),
            }
        }
        (
            "POST",
            [
                "compute",
                "v1",
                "projects",
                project,
                "zones",
                zone,
                "instances",
            ],
        ) => {
            if let Some(reason) = &f.insert_403 {
                return (403, error(403, reason, &format!("injected 403 ({reason})")));
            }
            if let Some(rid) = q.get("requestId")
                && let Some(op) = st.request_ids.get(rid).cloned()
            {
                finish_op(&mut st, &op);
                return (200, st.ops[&op].body.clone());
            }
            let vm: Value = serde_json::from_str(body).unwrap_or(json!({}));
            if let Err(answer) = check_source_images(&st, project, &vm["disks"]) {
                return answer;
            }
            let name = vm["name"].as_str().unwrap_or("").to_string();
            let target = format!(
                "https://www.googleapis.com/compute/v1/projects/p/zones/{zone}/instances/{name}"
            );
            if room(&f, zone) == 0 {
                let op = new_op(
                    &mut st,
                    zone,
                    "insert",
                    &target,
                    f.op_delay,
                    Effect::None,
                    Some((
                        "ZONE_RESOURCE_POOL_EXHAUSTED".into(),
                        format!("The zone '{zone}' does not have enough resources"),
                    )),
                );
                if let Some(rid) = q.get("requestId") {
                    let op_name = op["name"].as_str().unwrap().to_string();
                    st.request_ids.insert(rid.clone(), op_name);
                }
                return (200, op);
            }
            if st.vms.contains_key(&name) {
                return (
                    409,
                    error(
                        409,
                        "alreadyExists",
                        &format!("The resource '{name}' already exists"),
                    ),
                );
            }
            create_vm(&mut st, &mut f, config, project, zone, &name, vm, now);
            let op = new_op(
                &mut st,
                zone,
                "insert",
                &target,
                f.op_delay,
                Effect::None,
                None,
            );
            if let Some(rid) = q.get("requestId") {
                st.request_ids
                    .insert(rid.clone(), op["name"].as_str().unwrap().to_string());
            }
            (200, op)
        }
        // regionInstances.bulkInsert
        // (https://cloud.google.com/compute/docs/reference/rest/v1/regionInstances/bulkInsert):
        // validated and placed by `bulk_plan`; answers a region operation. The VMs exist when
        // the call answers (as the fake's single insert does); the operation completes after
        // `op_delay`. Fewer than minCount fit: nothing is created and the operation finishes
        // with ZONE_RESOURCE_POOL_EXHAUSTED and VM_MIN_COUNT_NOT_REACHED in `error.errors[]`
        // (the codes /work/shared/reference/gcp.md §1.3 reads there). The same `requestId`
        // again answers the first operation and creates nothing.
        (
            "POST",
            [
                "compute",
                "v1",
                "projects",
                project,
                "regions",
                region,
                "instances",
                "bulkInsert",
            ],
        ) => {
            let req: Value = serde_json::from_str(body).unwrap_or(json!({}));
            st.bulk_calls.push(req.clone());
            if let Some(reason) = &f.insert_403 {
                return (403, error(403, reason, &format!("injected 403 ({reason})")));
            }
            if let Some(rid) = q.get("requestId")
                && let Some(op) = st.request_ids.get(rid).cloned()
            {
                finish_op(&mut st, &op);
                return (200, st.ops[&op].body.clone());
            }
            if let Err(answer) =
                check_source_images(&st, project, &req["instanceProperties"]["disks"])
            {
                return answer;
            }
            let zones = zones_of(&st, region);
            let plan = match bulk_plan(&st, &f, &zones, &req) {
                Ok(plan) => plan,
                Err(answer) => return answer,
            };
            let op = if plan.placed.is_empty() {
                let errors = vec![
                    (
                        "ZONE_RESOURCE_POOL_EXHAUSTED".to_string(),
                        format!(
                            "The zones allowed in region '{region}' do not have enough resources available to fulfill the request."
                        ),
                    ),
                    (
                        "VM_MIN_COUNT_NOT_REACHED".to_string(),
                        format!(
                            "Requested minimum count of {} VMs could not be created.",
                            plan.min_count
                        ),
                    ),
                ];
                new_region_op(
                    &mut st,
                    project,
                    region,
                    "bulkInsert",
                    f.op_delay,
                    errors,
                    None,
                )
            } else {
                let props = &req["instanceProperties"];
                let machine_type = props["machineType"].as_str().unwrap_or_default();
                let mut names = plan.names.into_iter();
                let mut per_zone = serde_json::Map::new();
                for (zone, n) in &plan.placed {
                    for (name, hostname) in names.by_ref().take(*n) {
                        let mut vm = props.clone();
                        vm["name"] = json!(name);
                        vm["machineType"] =
                            json!(format!("zones/{zone}/machineTypes/{machine_type}"));
                        if let Some(h) = hostname {
                            vm["hostname"] = h;
                        }
                        for disk in vm["disks"].as_array_mut().into_iter().flatten() {
                            if let Some(t) = disk["initializeParams"]["diskType"].as_str() {
                                disk["initializeParams"]["diskType"] =
                                    json!(format!("zones/{zone}/diskTypes/{t}"));
                            }
                        }
                        create_vm(&mut st, &mut f, config, project, zone, &name, vm, now);
                    }
                    per_zone.insert(
                        format!("zones/{zone}"),
                        json!({"targetVmCount": n, "createdVmCount": n, "failedToCreateVmCount": 0,
                               "deletedVmCount": 0, "status": "CREATING"}),
                    );
                }
                new_region_op(
                    &mut st,
                    project,
                    region,
                    "bulkInsert",
                    f.op_delay,
                    Vec::new(),
                    Some(json!({ "perLocationStatus": per_zone })),
                )
            };
            if let Some(rid) = q.get("requestId") {
                st.request_ids
                    .insert(rid.clone(), op["name"].as_str().unwrap().to_string());
            }
            (200, op)
        }
        // regionOperations.get
        // (https://cloud.google.com/compute/docs/reference/rest/v1/regionOperations/get).
        (
            "GET",
            [
                "compute",
                "v1",
                "projects",
                _,
                "regions",
                region,
                "operations",
                op,
            ],
        ) => {
            finish_op(&mut st, op);
            match st.ops.get(*op) {
                Some(o) if o.zone == *region && o.body.get("region").is_some() => {
                    (200, o.body.clone())
                }
                _ => (
                    404,
                    error(
                        404,
                        "notFound",
                        &format!("The resource '{op}' was not found"),
                    ),
                ),
            }
        }
        // regionOperations.wait
        // (https://cloud.google.com/compute/docs/reference/rest/v1/regionOperations/wait):
        // returns when the operation is DONE or after at most 2 minutes, whichever comes first.
        (
            "POST",
            [
                "compute",
                "v1",
                "projects",
                _,
                "regions",
                region,
                "operations",
                op,
                "wait",
            ],
        ) => {
            let done_at = match st.ops.get(*op) {
                Some(o) if o.zone == *region && o.body.get("region").is_some() => o.done_at,
                _ => {
                    return (
                        404,
                        error(
                            404,
                            "notFound",
                            &format!("The resource '{op}' was not found"),
                        ),
                    );
                }
            };
            let wait = done_at
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(120));
            drop(st);
            drop(f);
            std::thread::sleep(wait);
            let mut st = state.lock().unwrap();
            finish_op(&mut st, op);
            (200, st.ops[*op].body.clone())
        }
        ("GET", ["compute", "v1", "projects", _, "zones", _, "operations", op]) => {
            finish_op(&mut st, op);
            match st.ops.get(*op) {
                Some(o) => (200, o.body.clone()),
                None => (404, error(404, "notFound", "no such operation")),
            }
        }
        (
            "GET",
            [
                "compute",
                "v1",
                "projects",
                _,
                "zones",
                zone,
                "instances",
                name,
            ],
        ) => {
            // Let pending deletes land.
            let pending: Vec<String> = st.ops.keys().cloned().collect();
            for o in pending {
                finish_op(&mut st, &o);
            }
            match st.vms.get(*name) {
                Some(vm) if vm.zone == *zone && vm.visible_from <= now => (200, vm.shown(now)),
                _ => (
                    404,
                    error(
                        404,
                        "notFound",
                        &format!("The resource '{name}' was not found"),
                    ),
                ),
            }
        }
        (
            "GET",
            [
                "compute",
                "v1",
                "projects",
                _,
                "zones",
                zone,
                "instances",
                name,
                "getGuestAttributes",
            ],
        ) => match st.vms.get(*name) {
            Some(vm) if vm.zone == *zone => {
                let items: Vec<Value> = config
                    .host_key
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|k| {
                        let blob = k.split_whitespace().nth(1).unwrap_or("");
                        json!({"namespace": "hostkeys", "key": "ssh-ed25519", "value": blob})
                    })
                    .collect();
                (
                    200,
                    json!({"kind": "compute#guestAttributes", "queryPath": "hostkeys/", "queryValue": {"items": items}}),
                )
            }
            _ => (404, error(404, "notFound", "not found")),
        },
        (
            "DELETE",
            [
                "compute",
                "v1",
                "projects",
                _,
                "zones",
                zone,
                "instances",
                name,
            ],
        ) => {
            let Some(vm) = st.vms.get(*name) else {
                return (
                    404,
                    error(
                        404,
                        "notFound",
                        &format!("The resource '{name}' was not found"),
                    ),
                );
            };
            if vm.zone != *zone {
                return (404, error(404, "notFound", "wrong zone"));
            }
            let target = format!(
                "https://www.googleapis.com/compute/v1/projects/p/zones/{zone}/instances/{name}"
            );
            drop(f);
            let mut f = faults.lock().unwrap();
            let fail = f.delete_op_errors > 0;
            if fail {
                f.delete_op_errors -= 1;
            }
            let delay = f.op_delay + f.delete_lag;
            let op = if fail {
                new_op(
                    &mut st,
                    zone,
                    "delete",
                    &target,
                    f.op_delay,
                    Effect::None,
                    Some(("INTERNAL_ERROR".into(), "injected delete failure".into())),
                )
            } else {
                new_op(
                    &mut st,
                    zone,
                    "delete",
                    &target,
                    delay,
                    Effect::Remove(name.to_string()),
                    None,
                )
            };
            (200, op)
        }
        (
            "POST",
            [
                "compute",
                "v1",
                "projects",
                project,
                "zones",
                zone,
                "instances",
                name,
                "setLabels",
            ],
        ) => {
            let req: Value = serde_json::from_str(body).unwrap_or(json!({}));
            let Some(vm) = st.vms.get_mut(*name).filter(|vm| vm.zone == *zone) else {
                return (
                    404,
                    error(
                        404,
                        "notFound",
                        &format!(
                            "The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found"
                        ),
                    ),
                );
            };
            if req["labelFingerprint"] != vm.body["labelFingerprint"] {
                return (
                    412,
                    error(
                        412,
                        "conditionNotMet",
                        "Labels fingerprint either invalid or resource labels have changed",
                    ),
                );
            }
            vm.fingerprint += 1000;
            vm.body["labels"] = req["labels"].clone();
            vm.body["labelFingerprint"] = json!(
                base64::engine::general_purpose::URL_SAFE.encode(vm.fingerprint.to_be_bytes())
            );
            let target = format!(
                "https://www.googleapis.com/compute/v1/projects/p/zones/{zone}/instances/{name}"
            );
            (
                200,
                new_op(
                    &mut st,
                    zone,
                    "setLabels",
                    &target,
                    Duration::ZERO,
                    Effect::None,
                    None,
                ),
            )
        }
        // instances.setMetadata
        // (https://cloud.google.com/compute/docs/reference/rest/v1/instances/setMetadata): the
        // body is the whole new Metadata, which replaces the VM's. Its `fingerprint` must be the
        // VM's current one ("An up-to-date fingerprint must be provided in order to modify
        // metadata"; a stale or missing one answers 412 `conditionNotMet`, see
        // https://cloud.google.com/compute/docs/metadata/setting-custom-metadata#update_metadata);
        // the change gets a new fingerprint and answers a zone operation, which completes after
        // `op_delay`. Then the "guest agent" installs the new `ssh-keys`.
        (
            "POST",
            [
                "compute",
                "v1",
                "projects",
                project,
                "zones",
                zone,
                "instances",
                name,
                "setMetadata",
            ],
        ) => {
            let req: Value = serde_json::from_str(body).unwrap_or(json!({}));
            st.next += 1;
            let next = st.next;
            let Some(vm) = st.vms.get_mut(*name).filter(|vm| vm.zone == *zone) else {
                return (
                    404,
                    error(
                        404,
                        "notFound",
                        &format!(
                            "The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found"
                        ),
                    ),
                );
            };
            if !same_fingerprint(&req["fingerprint"], &vm.body["metadata"]["fingerprint"]) {
                return (
                    412,
                    error(
                        412,
                        "conditionNotMet",
                        "Supplied fingerprint does not match current metadata fingerprint.",
                    ),
                );
            }
            let items = req["items"].clone();
            vm.body["metadata"] =
                json!({"kind": "compute#metadata", "fingerprint": fingerprint(next)});
            if items.is_array() {
                vm.body["metadata"]["items"] = items.clone();
            }
            let ssh_keys = items
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["key"] == "ssh-keys")
                .filter_map(|i| i["value"].as_str())
                .collect::<Vec<_>>()
                .join("\n");
            let target = format!(
                "https://www.googleapis.com/compute/v1/projects/p/zones/{zone}/instances/{name}"
            );
            (
                200,
                new_op(
                    &mut st,
                    zone,
                    "setMetadata",
                    &target,
                    f.op_delay,
                    Effect::InstallKeys {
                        authorized_keys: config.authorized_keys.clone(),
                        ssh_keys,
                    },
                    None,
                ),
            )
        }
        // disks.get (https://cloud.google.com/compute/docs/reference/rest/v1/disks/get): the
        // disk as Compute keeps it, with its `labels` and `labelFingerprint`.
        (
            "GET",
            [
                "compute",
                "v1",
                "projects",
                project,
                "zones",
                zone,
                "disks",
                disk,
            ],
        ) => match st.disks.get(*disk) {
            Some(d) if d.zone == *zone && disk_exists(&st, d) => (200, d.body.clone()),
            _ => (
                404,
                error(
                    404,
                    "notFound",
                    &format!(
                        "The resource 'projects/{project}/zones/{zone}/disks/{disk}' was not found"
                    ),
                ),
            ),
        },
        // disks.setLabels
        // (https://cloud.google.com/compute/docs/reference/rest/v1/disks/setLabels): the body is
        // a ZoneSetLabelsRequest whose `labels` replace the disk's whole. Its `labelFingerprint`
        // must be the disk's current one ("You must always provide an up-to-date fingerprint
        // hash in order to update or change labels. Make a get() request to the resource to get
        // the latest fingerprint"); a missing or stale one answers 412 `conditionNotMet`, as
        // for an instance's labels (https://cloud.google.com/compute/docs/labeling-resources).
        // The change gets a new fingerprint and answers a zone operation, which completes after
        // `op_delay`.
        (
            "POST",
            [
                "compute",
                "v1",
                "projects",
                project,
                "zones",
                zone,
                "disks",
                disk,
                "setLabels",
            ],
        ) => {
            let req: Value = serde_json::from_str(body).unwrap_or(json!({}));
            if !st
                .disks
                .get(*disk)
                .is_some_and(|d| d.zone == *zone && disk_exists(&st, d))
            {
                return (
                    404,
                    error(
                        404,
                        "notFound",
                        &format!(
                            "The resource 'projects/{project}/zones/{zone}/disks/{disk}' was not found"
                        ),
                    ),
                );
            }
            let raced = match f.disk_label_races.iter().position(|n| n == disk) {
                Some(i) => {
                    f.disk_label_races.remove(i);
                    true
                }
                None => false,
            };
            st.next += 2;
            let (raced_fingerprint, new_fingerprint) =
                (fingerprint(st.next - 1), fingerprint(st.next));
            let d = st.disks.get_mut(*disk).expect("found above");
            if raced {
                if !d.body["labels"].is_object() {
                    d.body["labels"] = json!({});
                }
                d.body["labels"]["changed-by"] = json!("someone");
                d.body["labelFingerprint"] = raced_fingerprint;
            }
            if !same_fingerprint(&req["labelFingerprint"], &d.body["labelFingerprint"]) {
                return (
                    412,
                    error(
                        412,
                        "conditionNotMet",
                        "Labels fingerprint either invalid or resource labels have changed",
                    ),
                );
            }
            match req["labels"].as_object() {
                Some(labels) if !labels.is_empty() => d.body["labels"] = req["labels"].clone(),
                // Cleared: like a disk created without labels, no `labels` field.
                _ => {
                    if let Some(body) = d.body.as_object_mut() {
                        body.remove("labels");
                    }
                }
            }
            d.body["labelFingerprint"] = new_fingerprint;
            let target = disk_url(zone, disk);
            (
                200,
                new_op(
                    &mut st,
                    zone,
                    "setLabels",
                    &target,
                    f.op_delay,
                    Effect::None,
                    None,
                ),
            )
        }
        ("GET", ["compute", "v1", "projects", _, "aggregated", "instances"]) => {
            let pending: Vec<String> = st.ops.keys().cloned().collect();
            for o in pending {
                finish_op(&mut st, &o);
            }
            let filter = q.get("filter").cloned().unwrap_or_default();
            let max: usize = q
                .get("maxResults")
                .and_then(|m| m.parse().ok())
                .unwrap_or(500);
            let start: usize = q.get("pageToken").and_then(|t| t.parse().ok()).unwrap_or(0);
            let matching: Vec<&Vm> = st
                .vms
                .values()
                .filter(|v| v.visible_from <= now && labels_match(&v.body, &filter))
                .collect();
            let page: Vec<&&Vm> = matching.iter().skip(start).take(max).collect();
            let mut items: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for vm in page {
                items
                    .entry(format!("zones/{}", vm.zone))
                    .or_default()
                    .push(vm.shown(now));
            }
            let items: serde_json::Map<String, Value> = items
                .into_iter()
                .map(|(z, v)| (z, json!({"instances": v})))
                .collect();
            let mut reply = json!({"kind": "compute#instanceAggregatedList", "items": items});
            if start + max < matching.len() {
                reply["nextPageToken"] = json!((start + max).to_string());
            }
            if !f.unreachable.is_empty() {
                reply["unreachables"] = json!(f.unreachable);
            }
            (200, reply)
        }
        ("GET", ["compute", "v1", "projects", p]) => {
            let items = if f.oslogin_forced {
                json!([{"key": "enable-oslogin", "value": "TRUE"}])
            } else {
                json!([])
            };
            (
                200,
                json!({"kind": "compute#project", "name": p, "commonInstanceMetadata": {"items": items}}),
            )
        }
        // regions.get (https://cloud.google.com/compute/docs/reference/rest/v1/regions/get): its
        // CPU quota and its zones, as URLs.
        ("GET", ["compute", "v1", "projects", project, "regions", region]) => {
            if f.regions_get_403 {
                let message = format!(
                    "Required 'compute.regions.get' permission for 'projects/{project}/regions/{region}'"
                );
                return (403, error(403, "forbidden", &message));
            }
            let (limit, usage) = f.cpus_quota.unwrap_or((24.0, 0.0));
            (
                200,
                json!({"kind": "compute#region", "name": region,
                    "quotas": [{"metric": "CPUS", "limit": limit, "usage": usage}],
                    "zones": zones_of(&st, region).iter().map(|z| format!("https://www.googleapis.com/compute/v1/projects/{project}/zones/{z}")).collect::<Vec<_>>()}),
            )
        }
        ("GET", ["compute", "v1", "projects", _, "global", "firewalls", name]) => {
            match st.firewalls.get(*name) {
                Some(fw) => (200, fw.clone()),
                None => (404, error(404, "notFound", "no such firewall")),
            }
        }
        ("POST", ["compute", "v1", "projects", _, "global", "firewalls"]) => {
            let fw: Value = serde_json::from_str(body).unwrap_or(json!({}));
            let name = fw["name"].as_str().unwrap_or("").to_string();
            if st.firewalls.contains_key(&name) {
                return (409, error(409, "alreadyExists", "exists"));
            }
            st.firewalls.insert(name.clone(), fw);
            (
                200,
                new_op(
                    &mut st,
                    "global",
                    "insert",
                    &name,
                    Duration::ZERO,
                    Effect::None,
                    None,
                ),
            )
        }
        ("PATCH", ["compute", "v1", "projects", _, "global", "firewalls", name]) => {
            let fw: Value = serde_json::from_str(body).unwrap_or(json!({}));
            st.firewalls.insert(name.to_string(), fw);
            (
                200,
                new_op(
                    &mut st,
                    "global",
                    "patch",
                    name,
                    Duration::ZERO,
                    Effect::None,
                    None,
                ),
            )
        }
        // instances.stop (https://cloud.google.com/compute/docs/reference/rest/v1/instances/stop):
        // answers a zone operation; the VM is STOPPING until it completes (after `op_delay`),
        // then TERMINATED (https://cloud.google.com/compute/docs/instances/instance-life-cycle),
        // and loses its termination timer ("terminationTimestamp is automatically cleared
        // whenever a VM is stopped", see `Vm::terminate_at`). "Stopping a VM which is already
        // stopped will return without errors" (gcloud compute instances stop). A repeated
        // `requestId` answers the first operation.
        (
            "POST",
            [
                "compute",
                "v1",
                "projects",
                project,
                "zones",
                zone,
                "instances",
                name,
                "stop",
            ],
        ) => {
            if let Some(rid) = q.get("requestId")
                && let Some(op) = st.request_ids.get(rid).cloned()
            {
                finish_op(&mut st, &op);
                return (200, st.ops[&op].body.clone());
            }
            let Some(vm) = st.vms.get_mut(*name).filter(|vm| vm.zone == *zone) else {
                let message = format!(
                    "The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found"
                );
                return (404, error(404, "notFound", &message));
            };
            let effect = if vm.body["status"] == "TERMINATED" {
                Effect::None
            } else {
                vm.body["status"] = json!("STOPPING");
                Effect::Stop(name.to_string())
            };
            st.stopped.push(name.to_string());
            let target = format!(
                "https://www.googleapis.com/compute/v1/projects/{project}/zones/{zone}/instances/{name}"
            );
            let op = new_op(&mut st, zone, "stop", &target, f.op_delay, effect, None);
            if let Some(rid) = q.get("requestId") {
                st.request_ids
                    .insert(rid.clone(), op["name"].as_str().unwrap().to_string());
            }
            (200, op)
        }
        // images.insert (https://cloud.google.com/compute/docs/reference/rest/v1/images/insert):
        // validated by `new_image`; the image exists, PENDING, when the call answers, and a
        // global operation makes it READY after `op_delay` (FAILED when `image_insert_errors`
        // fails it). `forceCreate=true` lets a disk of a running VM be the source. A repeated
        // `requestId` answers the first operation and creates nothing.
        ("POST", ["compute", "v1", "projects", project, "global", "images"]) => {
            if let Some(rid) = q.get("requestId")
                && let Some(op) = st.request_ids.get(rid).cloned()
            {
                finish_op(&mut st, &op);
                return (200, st.ops[&op].body.clone());
            }
            let req: Value = serde_json::from_str(body).unwrap_or(json!({}));
            let force = q.get("forceCreate").is_some_and(|v| v == "true");
            let image = match new_image(&mut st, project, &req, force) {
                Ok(image) => image,
                Err(answer) => return answer,
            };
            let name = image["name"].as_str().unwrap().to_string();
            let target = image_url(project, &name);
            st.images.insert(name.clone(), image);
            let fail = f.image_insert_errors > 0;
            if fail {
                f.image_insert_errors -= 1;
            }
            let error = fail.then(|| {
                (
                    "INTERNAL_ERROR".to_string(),
                    "injected image failure".to_string(),
                )
            });
            let effect = Effect::ImageDone { name, ok: !fail };
            let op = new_global_op(
                &mut st, project, "insert", &target, f.op_delay, effect, error,
            );
            if let Some(rid) = q.get("requestId") {
                st.request_ids
                    .insert(rid.clone(), op["name"].as_str().unwrap().to_string());
            }
            (200, op)
        }
        // images.list (https://cloud.google.com/compute/docs/reference/rest/v1/images/list):
        // `filter` (see `parse_filter`), `maxResults` (default and most 500), `pageToken`,
        // `orderBy` ("Currently, only sorting by name or creationTimestamp desc is supported";
        // by name otherwise). An ImageList; `items` absent when nothing matches, as the API
        // leaves empty lists out.
        ("GET", ["compute", "v1", "projects", project, "global", "images"]) => {
            let filter = match parse_filter(q.get("filter").map_or("", String::as_str)) {
                Ok(filter) => filter,
                Err(why) => {
                    let message = format!("Invalid list filter expression: {why}");
                    return (400, error(400, "invalid", &message));
                }
            };
            let mut matching: Vec<&Value> = st
                .images
                .values()
                .filter(|i| filter.as_ref().is_none_or(|f| filter_eval(i, f)))
                .collect();
            match q.get("orderBy").map(String::as_str) {
                None | Some("") | Some("name") => {}
                Some("creationTimestamp desc") => {
                    matching.sort_by_key(|i| std::cmp::Reverse((image_created(i), int64(&i["id"]))))
                }
                Some(other) => {
                    let message = format!(
                        "Invalid value for field 'orderBy': '{other}'. Only 'name' and 'creationTimestamp desc' are supported."
                    );
                    return (400, error(400, "invalid", &message));
                }
            }
            let max: usize = q
                .get("maxResults")
                .and_then(|m| m.parse().ok())
                .unwrap_or(500)
                .clamp(1, 500);
            let start: usize = q.get("pageToken").and_then(|t| t.parse().ok()).unwrap_or(0);
            let page: Vec<Value> = matching
                .iter()
                .skip(start)
                .take(max)
                .map(|i| (*i).clone())
                .collect();
            let mut reply = json!({
                "kind": "compute#imageList", "id": format!("projects/{project}/global/images"),
                "selfLink": format!("https://www.googleapis.com/compute/v1/projects/{project}/global/images"),
            });
            if !page.is_empty() {
                reply["items"] = json!(page);
            }
            if start + max < matching.len() {
                reply["nextPageToken"] = json!((start + max).to_string());
            }
            (200, reply)
        }
        // images.getFromFamily (see `family_latest`); 404 `notFound` when the family has no
        // such image, as for a family that does not exist.
        (
            "GET",
            [
                "compute",
                "v1",
                "projects",
                project,
                "global",
                "images",
                "family",
                family,
            ],
        ) => match family_latest(&st, family) {
            Some(image) => (200, image.clone()),
            None => {
                let message = format!(
                    "The resource 'projects/{project}/global/images/family/{family}' was not found"
                );
                (404, error(404, "notFound", &message))
            }
        },
        // images.get (https://cloud.google.com/compute/docs/reference/rest/v1/images/get).
        (
            "GET",
            [
                "compute",
                "v1",
                "projects",
                project,
                "global",
                "images",
                name,
            ],
        ) => match st.images.get(*name) {
            Some(image) => (200, image.clone()),
            None => {
                let message =
                    format!("The resource 'projects/{project}/global/images/{name}' was not found");
                (404, error(404, "notFound", &message))
            }
        },
        // images.delete (https://cloud.google.com/compute/docs/reference/rest/v1/images/delete):
        // 404 when missing; otherwise a global operation, the image DELETING until it lands
        // (after `op_delay`), then gone. `image_delete_errors` fails it, the image left READY.
        (
            "DELETE",
            [
                "compute",
                "v1",
                "projects",
                project,
                "global",
                "images",
                name,
            ],
        ) => {
            let Some(image) = st.images.get_mut(*name) else {
                let message =
                    format!("The resource 'projects/{project}/global/images/{name}' was not found");
                return (404, error(404, "notFound", &message));
            };
            let fail = f.image_delete_errors > 0;
            let (effect, error) = if fail {
                f.image_delete_errors -= 1;
                let e = (
                    "INTERNAL_ERROR".to_string(),
                    "injected image delete failure".to_string(),
                );
                (Effect::None, Some(e))
            } else {
                image["status"] = json!("DELETING");
                (Effect::RemoveImage(name.to_string()), None)
            };
            let target = image_url(project, name);
            (
                200,
                new_global_op(
                    &mut st, project, "delete", &target, f.op_delay, effect, error,
                ),
            )
        }
        // globalOperations.get (https://cloud.google.com/compute/docs/reference/rest/v1/globalOperations/get).
        ("GET", ["compute", "v1", "projects", _, "global", "operations", op]) => {
            finish_op(&mut st, op);
            match st.ops.get(*op) {
                Some(o) if is_global_op(o) => (200, o.body.clone()),
                _ => (
                    404,
                    error(
                        404,
                        "notFound",
                        &format!("The resource '{op}' was not found"),
                    ),
                ),
            }
        }
        // globalOperations.wait
        // (https://cloud.google.com/compute/docs/reference/rest/v1/globalOperations/wait):
        // returns when the operation is DONE or after at most 2 minutes, whichever comes first.
        (
            "POST",
            [
                "compute",
                "v1",
                "projects",
                _,
                "global",
                "operations",
                op,
                "wait",
            ],
        ) => {
            let done_at = match st.ops.get(*op) {
                Some(o) if is_global_op(o) => o.done_at,
                _ => {
                    let message = format!("The resource '{op}' was not found");
                    return (404, error(404, "notFound", &message));
                }
            };
            let wait = done_at
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(120));
            drop(st);
            drop(f);
            std::thread::sleep(wait);
            let mut st = state.lock().unwrap();
            finish_op(&mut st, op);
            (200, st.ops[*op].body.clone())
        }
        _ => (
            404,
            error(
                404,
                "notFound",
                &format!("the fake does not serve {method} /{}", parts.join("/")),
            ),
        ),
    }
}
