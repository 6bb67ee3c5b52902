//! A batch of workers in one `regionInstances.bulkInsert`
//! (https://cloud.google.com/compute/docs/reference/rest/v1/regionInstances/bulkInsert): Compute
//! Engine picks zones with capacity among gcp.zones (`locationPolicy`, `targetShape: ANY`) and
//! creates between 1 (`minCount`) and k (`count`) VMs.
//!
//! Every instance of one call shares one body (v1's `perInstanceProperties` carries only `name`
//! and `hostname`), so what is a worker's own is set on each VM right after the batch, before
//! anything connects to it, the three calls of one VM side by side:
//! - its SSH key, with `instances.setMetadata`
//!   (https://cloud.google.com/compute/docs/reference/rest/v1/instances/setMetadata): a private
//!   key is never shared between workers, and the shared body carries no `ssh-keys` at all (with
//!   project keys blocked, nobody can log in until the worker's own key is there);
//! - its `cwo-worker` label, with `instances.setLabels`;
//! - the same label on its boot disk, with `disks.setLabels`
//!   (https://cloud.google.com/compute/docs/reference/rest/v1/disks/setLabels): the disk bills
//!   apart from the VM, and DESIGN invariant 3 puts `cwo-managed`, `cwo-project` and
//!   `cwo-worker` on the VM and its boot disk alike, as a single insert's body does. The disk is
//!   the VM's `disks[].source`; its labels come from the shared body's `initializeParams`, so
//!   they are read (`disks.get`, for the label fingerprint the call needs) and sent back with
//!   the worker's added.
//!
//! Nothing in cwo reads `cwo-worker` (the reaper, status and the journal go by the VM's name),
//! but the billing export does: it is how a resource's cost rows are attributed to a worker.
//! Each update is conditional on a fingerprint; a stale one (someone else changed the VM or the
//! disk meanwhile) is read again and sent anew.
//!
//! A VM that comes up without its key (or a label) is deleted and reported as an error; one
//! that cannot be deleted then carries the shared `cwo-managed`/`cwo-project` labels the reaper
//! finds it by.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use google_cloud_compute_v1::model::{
    self as gce, BulkInsertInstanceResource, BulkInsertInstanceResourcePerInstanceProperties,
    InstanceProperties, LocationPolicy, LocationPolicyLocation, Metadata, Operation,
};

use super::{GcpProvider, VISIBILITY_TIMEOUT, classify, last_segment};
use crate::provider::{Instance, Provider, ProviderError, WorkerSpec};

/// The one label that differs between the workers of a batch.
const WORKER_LABEL: &str = "cwo-worker";
/// How many stale fingerprints (someone else changed the VM meanwhile) a per-VM update takes.
const FINGERPRINT_TRIES: u32 = 5;

/// The region all `zones` are in (`us-central1-a` → `us-central1`), or `None` when they span
/// several: one bulk insert places VMs in one region.
fn one_region(zones: &[String]) -> Option<String> {
    let region = |z: &String| z.rsplit_once('-').map(|(r, _)| r.to_string());
    let first = region(zones.first()?)?;
    zones
        .iter()
        .all(|z| region(z).as_ref() == Some(&first))
        .then_some(first)
}

/// Whether `image` comes from one of Google's public image projects, whose images run the guest
/// environment that installs `ssh-keys` added to a running VM's metadata
/// (https://cloud.google.com/compute/docs/images/guest-environment). An image imported by the
/// user (Alpine) may not: its workers get their keys in their own insert bodies instead.
fn has_guest_agent(image: &str) -> bool {
    const PUBLIC: [&str; 7] = [
        "debian-cloud",
        "ubuntu-os-cloud",
        "ubuntu-os-pro-cloud",
        "rocky-linux-cloud",
        "centos-cloud",
        "rhel-cloud",
        "suse-cloud",
    ];
    let project = image
        .trim_start_matches("https://www.googleapis.com/compute/v1/")
        .strip_prefix("projects/")
        .and_then(|rest| rest.split('/').next());
    project.is_some_and(|p| PUBLIC.contains(&p))
}

/// The request id of a batch: the same specs (their idempotency keys, in order) give the same
/// request, so Compute answers a retried batch with its first operation and creates nothing new.
fn batch_request_id(keys: &[&str]) -> String {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("bulk/{}", keys.join("/")).as_bytes(),
    )
    .to_string()
}

/// A spec's labels without its worker label: what must be equal for a batch to share a body.
fn shared_labels(spec: &WorkerSpec) -> BTreeMap<&String, &String> {
    spec.labels
        .iter()
        .filter(|(k, _)| k.as_str() != WORKER_LABEL)
        .collect()
}

/// One error of the batch, for each of its specs (an error is not `Clone`): the same kind, so
/// retry and fallback decide alike, with the whole error on one line as the cause.
fn for_each_spec(e: &ProviderError, what: &str) -> ProviderError {
    ProviderError::Api {
        kind: e.kind(),
        what: what.to_string(),
        source: e.one_line().into(),
    }
}

impl GcpProvider {
    /// `create_many`: one bulk insert for the specs, or the single creates when it does not fit
    /// (one spec, zones in several regions, specs that cannot share one body).
    pub(super) async fn create_batch(
        &self,
        specs: &[(WorkerSpec, String)],
    ) -> Vec<Result<Instance, ProviderError>> {
        // The boot image is decided once, before any body is built.
        if let Err(e) = self.boot_image_choice().await {
            return specs
                .iter()
                .map(|(s, _)| {
                    Err(for_each_spec(
                        &e,
                        &format!("choosing the image of VM {}", s.name),
                    ))
                })
                .collect();
        }
        let singles =
            || futures::future::join_all(specs.iter().map(|(spec, key)| self.create(spec, key)));
        let zones = &self.settings.zones;
        if specs.len() < 2 || zones.is_empty() {
            return singles().await;
        }
        if !has_guest_agent(&self.settings.image) {
            tracing::debug!(
                image = %self.settings.image,
                "the boot image may have no guest agent to apply a key added after boot: creating the {} workers with single inserts, each with its key in its own body",
                specs.len()
            );
            return singles().await;
        }
        let Some(region) = one_region(zones) else {
            tracing::debug!(
                ?zones,
                "gcp.zones span several regions and a bulk insert creates in one: creating the {} workers with single inserts",
                specs.len()
            );
            return singles().await;
        };
        if specs
            .iter()
            .any(|(s, _)| shared_labels(s) != shared_labels(&specs[0].0))
        {
            tracing::debug!(
                "the workers' labels differ beyond cwo-worker, so they cannot share one bulk insert body: creating them with single inserts"
            );
            return singles().await;
        }
        // The policy names the region's zones (a zone it does not name stays allowed), so it
        // needs compute.regions.get: without it, the single inserts into gcp.zones still work.
        let policy = match self.location_policy(&region).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(
                    "could not read the zones of {region} for a bulk insert ({}); creating the {} workers with single inserts",
                    e.one_line(),
                    specs.len()
                );
                return singles().await;
            }
        };
        let what = format!("creating {} VMs in {region}", specs.len());
        if let Err(e) = self.ensure_firewall().await {
            return specs
                .iter()
                .map(|_| Err(for_each_spec(&e, &what)))
                .collect();
        }
        let mut results: Vec<Option<Result<Instance, ProviderError>>> =
            specs.iter().map(|_| None).collect();
        // Each worker's own key, made before the call: one that cannot be made is not sent.
        let mut batch: Vec<(usize, String)> = Vec::new();
        for (i, (spec, _)) in specs.iter().enumerate() {
            match crate::provider::worker_key(&self.key_path(&spec.name), &spec.name) {
                Ok(public) => batch.push((i, public)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if !batch.is_empty() {
            let sent: Vec<&(WorkerSpec, String)> = batch.iter().map(|(i, _)| &specs[*i]).collect();
            match self.bulk_insert(&region, &sent, policy).await {
                Err(e) => {
                    for (i, _) in &batch {
                        results[*i] = Some(Err(for_each_spec(&e, &what)));
                    }
                }
                Ok(created) => {
                    let names: Vec<&str> = sent.iter().map(|(s, _)| s.name.as_str()).collect();
                    match self.find_created(&names, created).await {
                        Err(e) => {
                            for (i, _) in &batch {
                                results[*i] = Some(Err(for_each_spec(&e, &what)));
                            }
                        }
                        Ok(mut found) => {
                            let seen = found.len();
                            let finishing = batch.iter().filter_map(|(i, public)| {
                                let vm = found.remove(&specs[*i].0.name)?;
                                Some(async move { (*i, self.finish_worker(vm, public).await) })
                            });
                            for (i, r) in futures::future::join_all(finishing).await {
                                results[i] = Some(r);
                            }
                            for (i, _) in &batch {
                                let name = &specs[*i].0.name;
                                results[*i].get_or_insert_with(|| {
                                    Err(if seen >= created {
                                        ProviderError::Capacity(format!(
                                            "Compute Engine created {created} of the {} VMs asked for in {} ({region}); none for {name}",
                                            sent.len(),
                                            zones.join(", ")
                                        ))
                                    } else {
                                        ProviderError::Transient(format!(
                                            "VM {name} may have been created in {region} but is not visible after {}; `cwo reap` finds it by its labels",
                                            humantime::format_duration(VISIBILITY_TIMEOUT)
                                        ))
                                    })
                                });
                            }
                        }
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every spec has a result"))
            .collect()
    }

    /// The shared body: the single insert's body for `spec` (the one place it is built), with a
    /// bare machine and disk type (the instance is in no zone yet) and nothing of the worker's
    /// own (its key, its label).
    fn bulk_properties(&self, spec: &WorkerSpec) -> InstanceProperties {
        let s = &self.settings;
        let vm = self.instance_body(spec, &s.zones[0], "");
        let mut labels = vm.labels;
        labels.remove(WORKER_LABEL);
        let disks = vm.disks.into_iter().map(|mut d| {
            if let Some(p) = d.initialize_params.as_mut() {
                p.disk_type = Some(s.disk_type.clone());
                p.labels.remove(WORKER_LABEL);
            }
            d
        });
        let metadata = vm.metadata.map(|mut m| {
            m.items.retain(|i| i.key.as_deref() != Some("ssh-keys"));
            m
        });
        InstanceProperties::new()
            .set_machine_type(&s.machine_type)
            .set_labels(labels)
            .set_or_clear_tags(vm.tags)
            .set_disks(disks)
            .set_network_interfaces(vm.network_interfaces)
            .set_or_clear_metadata(metadata)
            .set_or_clear_scheduling(vm.scheduling)
    }

    /// gcp.zones allowed, the region's other zones denied (a zone a location policy does not
    /// name stays allowed), Compute picking among them (`ANY`).
    async fn location_policy(&self, region: &str) -> Result<LocationPolicy, ProviderError> {
        let c = self.clients().await?;
        let all = self
            .region_zones
            .get_or_try_init(|| async {
                let r = self
                    .retry(|| async {
                        c.regions
                            .get()
                            .set_project(&self.settings.project)
                            .set_region(region)
                            .send()
                            .await
                            .map_err(|e| classify(e, &format!("reading region {region}"), false))
                    })
                    .await?;
                Ok::<_, ProviderError>(r.zones.iter().map(|z| last_segment(z)).collect())
            })
            .await?;
        let wanted = &self.settings.zones;
        let locations: HashMap<String, LocationPolicyLocation> = all
            .iter()
            .chain(wanted)
            .map(|z| {
                use gce::location_policy_location::Preference;
                let p = if wanted.contains(z) {
                    Preference::Allow
                } else {
                    Preference::Deny
                };
                (
                    format!("zones/{z}"),
                    LocationPolicyLocation::new().set_preference(p),
                )
            })
            .collect();
        Ok(LocationPolicy::new()
            .set_locations(locations)
            .set_target_shape(gce::location_policy::TargetShape::Any))
    }

    /// Sends the bulk insert (transient failures again with the same request id) and waits for
    /// its region operation. Returns how many VMs Compute created.
    async fn bulk_insert(
        &self,
        region: &str,
        sent: &[&(WorkerSpec, String)],
        policy: LocationPolicy,
    ) -> Result<usize, ProviderError> {
        let c = self.clients().await?;
        let body = BulkInsertInstanceResource::new()
            .set_count(sent.len() as i64)
            .set_min_count(1)
            .set_instance_properties(self.bulk_properties(&sent[0].0))
            .set_per_instance_properties(sent.iter().map(|(spec, _)| {
                (
                    spec.name.clone(),
                    BulkInsertInstanceResourcePerInstanceProperties::new().set_name(&spec.name),
                )
            }))
            .set_location_policy(policy);
        let keys: Vec<&str> = sent.iter().map(|(_, key)| key.as_str()).collect();
        let request_id = batch_request_id(&keys);
        let what = format!("creating {} VMs in {region}", sent.len());
        let op = self
            .retry(|| async {
                c.region_instances
                    .bulk_insert()
                    .set_project(&self.settings.project)
                    .set_region(region)
                    .set_request_id(&request_id)
                    .set_body(body.clone())
                    .send()
                    .await
                    .map_err(|e| classify(e, &what, true))
            })
            .await?;
        let op = self
            .wait_done(op, &what, |name| async move {
                c.region_instances
                    .get_operation()
                    .set_project(&self.settings.project)
                    .set_region(region)
                    .set_operation(name)
                    .send()
                    .await
            })
            .await?;
        Ok(created_count(&op).unwrap_or(sent.len()))
    }

    /// The VMs of `names` that exist, as the API shows them (their fingerprints included), from
    /// the project's list: polled until the `created` ones are visible, or for
    /// `VISIBILITY_TIMEOUT` (a new VM can stay invisible for a while).
    async fn find_created(
        &self,
        names: &[&str],
        created: usize,
    ) -> Result<HashMap<String, gce::Instance>, ProviderError> {
        let selector = crate::model::project_selector(&self.project_slug);
        let deadline = tokio::time::Instant::now() + VISIBILITY_TIMEOUT;
        loop {
            let found: HashMap<String, gce::Instance> = self
                .list_vms(&selector)
                .await?
                .into_iter()
                .filter_map(|vm| {
                    let name = vm.name.clone()?;
                    names.contains(&name.as_str()).then_some((name, vm))
                })
                .collect();
            if found.len() >= created.min(names.len()) || tokio::time::Instant::now() > deadline {
                return Ok(found);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Makes a VM of the batch the worker's own (its key, its label and its boot disk's) and
    /// returns the worker; a VM that cannot be made so is deleted.
    async fn finish_worker(
        &self,
        vm: gce::Instance,
        public_key: &str,
    ) -> Result<Instance, ProviderError> {
        let name = vm.name.clone().unwrap_or_default();
        let zone = vm.zone.as_deref().map(last_segment).unwrap_or_default();
        self.remember_zone(&name, &zone);
        let line = format!("{}:{}", self.settings.ssh_user, public_key.trim());
        let c = self.clients().await?;
        let read_vm = || async {
            self.get_in(&zone, &name).await?.ok_or_else(|| {
                ProviderError::NotFound(format!("VM {name} is gone (deleted by someone else?)"))
            })
        };
        let keyed_what = format!("adding its SSH key to VM {name}");
        let keyed = self.update(&zone, &keyed_what, vm.clone(), read_vm, |vm| {
            let current = vm.metadata.clone().unwrap_or_default();
            let has = |i: &gce::metadata::Items| i.key.as_deref() == Some("ssh-keys");
            if current
                .items
                .iter()
                .any(|i| has(i) && i.value.as_deref() == Some(line.as_str()))
            {
                return None;
            }
            // The metadata is replaced whole: everything it has, with only this key.
            let mut items: Vec<gce::metadata::Items> =
                current.items.into_iter().filter(|i| !has(i)).collect();
            items.push(
                gce::metadata::Items::new()
                    .set_key("ssh-keys")
                    .set_value(&line),
            );
            let body = Metadata::new()
                .set_or_clear_fingerprint(current.fingerprint)
                .set_items(items);
            let (zone, name) = (zone.clone(), name.clone());
            Some(async move {
                c.instances
                    .set_metadata()
                    .set_project(&self.settings.project)
                    .set_zone(zone)
                    .set_instance(name)
                    .set_body(body)
                    .send()
                    .await
            })
        });
        let labelled_what = format!("labelling VM {name}");
        let labelled = self.update(&zone, &labelled_what, vm.clone(), read_vm, |vm| {
            if vm.labels.get(WORKER_LABEL) == vm.name.as_ref() {
                return None;
            }
            let mut labels = vm.labels.clone();
            labels.insert(WORKER_LABEL.into(), name.clone());
            let body = gce::InstancesSetLabelsRequest::new()
                .set_labels(labels)
                .set_or_clear_label_fingerprint(vm.label_fingerprint.clone());
            let (zone, name) = (zone.clone(), name.clone());
            Some(async move {
                c.instances
                    .set_labels()
                    .set_project(&self.settings.project)
                    .set_zone(zone)
                    .set_instance(name)
                    .set_body(body)
                    .send()
                    .await
            })
        });
        let disk_labelled = self.label_boot_disk(&vm, &zone, &name);
        let (keyed, labelled, disk_labelled) = futures::join!(keyed, labelled, disk_labelled);
        match keyed.and(labelled).and(disk_labelled) {
            Ok(()) => {
                let mut vm = vm;
                vm.labels.insert(WORKER_LABEL.into(), name.clone());
                Ok(self.to_instance(&vm, None))
            }
            Err(e) => {
                let gone = match self.delete(&name).await {
                    Ok(_) => "it was deleted".to_string(),
                    Err(d) => format!(
                        "deleting it failed too ({}); `cwo reap` finds it by its labels",
                        d.one_line()
                    ),
                };
                Err(for_each_spec(
                    &e,
                    &format!("VM {name} came up without its own key or labels; {gone}"),
                ))
            }
        }
    }

    /// The `cwo-worker` label on a VM's boot disk, with the shared labels it was created with
    /// (and any added since) kept: `disks.get` for its labels and their fingerprint, then
    /// `disks.setLabels`, which replaces the labels whole.
    async fn label_boot_disk(
        &self,
        vm: &gce::Instance,
        vm_zone: &str,
        name: &str,
    ) -> Result<(), ProviderError> {
        let (zone, disk) = boot_disk(vm, vm_zone, name);
        let what = format!("labelling boot disk {disk} of VM {name}");
        let c = self.clients().await?;
        let read = || async {
            self.retry(|| async {
                c.disks
                    .get()
                    .set_project(&self.settings.project)
                    .set_zone(&zone)
                    .set_disk(&disk)
                    .send()
                    .await
                    .map_err(|e| {
                        classify(e, &format!("reading boot disk {disk} of VM {name}"), false)
                    })
            })
            .await
        };
        let current = read().await?;
        self.update(&zone, &what, current, read, |d| {
            if d.labels.get(WORKER_LABEL).map(String::as_str) == Some(name) {
                return None;
            }
            let mut labels = d.labels.clone();
            labels.insert(WORKER_LABEL.into(), name.to_string());
            let body = gce::ZoneSetLabelsRequest::new()
                .set_labels(labels)
                .set_or_clear_label_fingerprint(d.label_fingerprint.clone());
            let (zone, disk) = (zone.clone(), disk.clone());
            Some(async move {
                c.disks
                    .set_labels()
                    .set_project(&self.settings.project)
                    .set_zone(zone)
                    .set_resource(disk)
                    .set_body(body)
                    .send()
                    .await
            })
        })
        .await
    }

    /// A conditional update of one resource in `zone` (a VM's `setMetadata` and `setLabels`, a
    /// disk's `setLabels`): `send` builds it from the resource as last read (`None`: nothing
    /// to change) with that read's fingerprint. A stale fingerprint (412 `conditionNotMet`:
    /// the resource changed meanwhile) reads it again with `read` and sends anew; transient
    /// failures are retried; the zone operation is waited for.
    async fn update<R, F, Fut, G, GFut>(
        &self,
        zone: &str,
        what: &str,
        mut current: R,
        read: G,
        send: F,
    ) -> Result<(), ProviderError>
    where
        F: Fn(&R) -> Option<Fut>,
        Fut: std::future::Future<Output = Result<Operation, google_cloud_compute_v1::Error>>,
        G: Fn() -> GFut,
        GFut: std::future::Future<Output = Result<R, ProviderError>>,
    {
        for _ in 0..FINGERPRINT_TRIES {
            let sent = self
                .retry(|| async {
                    let Some(call) = send(&current) else {
                        return Ok(Sent::Nothing);
                    };
                    match call.await {
                        Ok(op) => Ok(Sent::Applying(Box::new(op))),
                        Err(e) if e.http_status_code() == Some(412) => Ok(Sent::Stale),
                        Err(e) => Err(classify(e, what, false)),
                    }
                })
                .await?;
            match sent {
                Sent::Nothing => return Ok(()),
                Sent::Applying(op) => {
                    return self.wait_operation(zone, *op, what).await.map(|_| ());
                }
                Sent::Stale => current = read().await?,
            }
        }
        Err(ProviderError::Transient(format!(
            "{what}: it kept changing under cwo ({FINGERPRINT_TRIES} stale fingerprints)"
        )))
    }
}

/// The boot disk of `vm` as (zone, name): its `disks[].source`
/// (`…/projects/P/zones/Z/disks/D`), which Compute fills in for every attached disk; without
/// one, the disk Compute names after the VM in the VM's zone (the shared body names none).
fn boot_disk(vm: &gce::Instance, vm_zone: &str, name: &str) -> (String, String) {
    let source = vm
        .disks
        .iter()
        .find(|d| d.boot == Some(true))
        .or(vm.disks.first())
        .and_then(|d| d.source.as_deref());
    let parsed = source.and_then(|s| {
        let (before, disk) = s.rsplit_once("/disks/")?;
        let (_, zone) = before.rsplit_once("zones/")?;
        (!zone.is_empty() && !disk.is_empty() && !zone.contains('/'))
            .then(|| (zone.to_string(), disk.to_string()))
    });
    parsed.unwrap_or_else(|| (vm_zone.to_string(), name.to_string()))
}

/// What a conditional update's call came to.
enum Sent {
    /// The resource already is as wanted.
    Nothing,
    /// Accepted: its operation.
    Applying(Box<Operation>),
    /// Refused: the fingerprint sent was stale.
    Stale,
}

/// How many VMs a bulk insert's operation says it created, over its zones.
fn created_count(op: &Operation) -> Option<usize> {
    let per_zone = &op
        .instances_bulk_insert_operation_metadata
        .as_ref()?
        .per_location_status;
    Some(
        per_zone
            .values()
            .map(|s| s.created_vm_count.unwrap_or(0).max(0) as usize)
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_public_images_are_trusted_to_apply_keys_after_boot() {
        assert!(super::has_guest_agent(
            "projects/debian-cloud/global/images/family/debian-12"
        ));
        assert!(super::has_guest_agent(
            "https://www.googleapis.com/compute/v1/projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64"
        ));
        assert!(!super::has_guest_agent(
            "projects/my-project/global/images/alpine-3-20"
        ));
        assert!(!super::has_guest_agent("alpine"));
    }

    use super::*;

    #[test]
    fn one_region_of_zones_or_none_across_regions() {
        let z = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            one_region(&z(&["us-central1-a", "us-central1-f"])).as_deref(),
            Some("us-central1")
        );
        assert_eq!(
            one_region(&z(&["europe-west4-b"])).as_deref(),
            Some("europe-west4")
        );
        assert_eq!(one_region(&z(&["us-central1-a", "us-east1-b"])), None);
        assert_eq!(one_region(&[]), None);
    }

    #[test]
    fn the_boot_disk_is_the_vms_disk_source_or_named_after_it() {
        let vm = |disks: Vec<gce::AttachedDisk>| gce::Instance::new().set_disks(disks);
        let attached =
            |boot: bool, source: &str| gce::AttachedDisk::new().set_boot(boot).set_source(source);
        assert_eq!(
            boot_disk(
                &vm(vec![
                    attached(
                        false,
                        "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a/disks/data"
                    ),
                    attached(
                        true,
                        "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-b/disks/w-boot"
                    ),
                ]),
                "us-central1-f",
                "w"
            ),
            ("us-central1-b".to_string(), "w-boot".to_string())
        );
        assert_eq!(
            boot_disk(
                &vm(vec![attached(
                    true,
                    "projects/p/zones/europe-west4-a/disks/w"
                )]),
                "x",
                "w"
            ),
            ("europe-west4-a".to_string(), "w".to_string())
        );
        assert_eq!(
            boot_disk(
                &vm(vec![gce::AttachedDisk::new().set_boot(true)]),
                "us-central1-a",
                "w"
            ),
            ("us-central1-a".to_string(), "w".to_string())
        );
        assert_eq!(
            boot_disk(&vm(vec![]), "us-central1-a", "w"),
            ("us-central1-a".to_string(), "w".to_string())
        );
    }

    #[test]
    fn a_batch_request_id_is_its_keys() {
        let a = batch_request_id(&["k1", "k2"]);
        assert_eq!(
            a,
            batch_request_id(&["k1", "k2"]),
            "a retry is the same request"
        );
        assert_ne!(a, batch_request_id(&["k2", "k1"]));
        assert_ne!(a, batch_request_id(&["k1"]));
        assert!(uuid::Uuid::parse_str(&a).is_ok(), "{a}");
    }
}
