//! A fake of the Compute Engine v1 REST API (and Secret Manager's `access`, the Cloud Billing
//! Budget API's budgets and Resource Manager's `projects.get`), enough for cwo's gcp provider and
//! `cwo budget alert`, with fault injection. It speaks the JSON shapes of the real API on 127.0.0.1 and
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
            vm.body["status"] = json!("TERMINATED");
            vm.terminate_at = None;
        }
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
fn create_vm(
    st: &mut State,
    f: &mut Faults,
    config: &Config,
    zone: &str,
    name: &str,
    mut vm: Value,
    now: Instant,
) {
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
        ("POST", ["compute", "v1", "projects", _, "zones", zone, "instances"]) => {
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
            create_vm(&mut st, &mut f, config, zone, &name, vm, now);
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
                        create_vm(&mut st, &mut f, config, zone, &name, vm, now);
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
