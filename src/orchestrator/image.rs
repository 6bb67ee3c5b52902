//! `cwo image build | list | prune` (issue 16): worker images baked from the native bootstrap.
//!
//! A build is a worker's bring-up with another ending. The builder is journaled ahead of its
//! create, carries the worker labels and the TTL, and is reaped like any worker if cwo dies; it
//! boots `gcp.image` with no bootstrap at boot, is bootstrapped in `bake` mode (the per-worker
//! parts left out, the per-host state cleaned), stopped, and imaged from its boot disk; then it
//! is deleted whatever happened.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::error::OrchestratorError;
use super::worker::WorkerLifecycle;
use crate::model::IMAGING_LABEL;
use crate::provider::gcp::GcpProvider;
use crate::provider::gcp::images::{self, HASH_LABEL, ImageInfo};
use crate::provider::{DeleteOutcome, Provider, ProviderError};

/// What a build makes its image from and how it labels it.
pub struct BuildSpec {
    /// The image family (`gcp.image_family`).
    pub family: String,
    /// What the current settings bake to (`bootstrap::image_hash`).
    pub hash: String,
    /// The image the builder boots (`gcp.image`).
    pub base: String,
    pub project_slug: String,
    /// One line on what went in (base, opencode, packages), kept as the image's description.
    pub description: String,
}

/// `cwo image build`'s report.
#[derive(Debug, Serialize)]
pub struct Built {
    pub schema_version: u32,
    pub image: ImageInfo,
    pub family: String,
    pub hash: String,
    pub base: String,
    /// The builder VM (deleted).
    pub builder: String,
    pub bootstrap_secs: f64,
    pub total_secs: f64,
}

/// Brings up a builder, bakes it, images it and deletes it (also when any step fails, or on
/// `stop`).
pub(crate) async fn build(
    lifecycle: &WorkerLifecycle,
    gcp: &GcpProvider,
    spec: &BuildSpec,
    stop: &CancellationToken,
) -> Result<Built, OrchestratorError> {
    let started = Instant::now();
    // A failed bring-up has already torn its builder down.
    let Some(builder) = lifecycle.bring_up(stop).await? else {
        return Err(OrchestratorError::Image {
            what: "stopped before the builder was up".into(),
            source: ProviderError::Transient("interrupted".into()),
        });
    };
    let name = builder.instance.name.clone();
    let bootstrapped = started.elapsed();
    let made = tokio::select! {
        made = image_of(gcp, &name, spec) => made,
        () = stop.cancelled() => Err(OrchestratorError::Image {
            what: format!("stopped while imaging builder {name}"),
            source: ProviderError::Transient("interrupted".into()),
        }),
    };
    drop(builder);
    let reason = if made.is_ok() { "image built" } else { "error" };
    let deleted = lifecycle.tear_down(&name, reason).await;
    let image = match (made, deleted) {
        (Ok(image), Ok(())) => image,
        (Err(problem), Ok(())) => return Err(problem),
        (Ok(_), Err(cleanup)) => return Err(cleanup),
        (Err(problem), Err(cleanup)) => {
            return Err(OrchestratorError::Abandoned {
                name,
                problem: Box::new(problem),
                cleanup: Box::new(cleanup),
            });
        }
    };
    Ok(Built {
        schema_version: 1,
        image,
        family: spec.family.clone(),
        hash: spec.hash.clone(),
        base: spec.base.clone(),
        builder: name,
        bootstrap_secs: bootstrapped.as_secs_f64(),
        total_secs: started.elapsed().as_secs_f64(),
    })
}

/// Stops the baked builder and makes the image from its boot disk.
async fn image_of(
    gcp: &GcpProvider,
    builder: &str,
    spec: &BuildSpec,
) -> Result<ImageInfo, OrchestratorError> {
    let fail = |what: String| move |source| OrchestratorError::Image { what, source };
    // Marked first: every command that sees a stopped worker deletes it, a builder being imaged
    // excepted (`Instance::being_imaged`).
    let mut labels = gcp
        .get(builder)
        .await
        .and_then(|i| i.ok_or_else(|| ProviderError::NotFound(builder.to_string())))
        .map_err(fail(format!("could not read builder {builder}")))?
        .labels;
    labels.insert(
        IMAGING_LABEL.to_string(),
        Utc::now().timestamp().to_string(),
    );
    gcp.set_labels(builder, &labels)
        .await
        .map_err(fail(format!(
            "could not mark builder {builder} as being imaged"
        )))?;
    // An image of a running VM's disk may miss what is still in its page cache; Compute
    // refuses it without forceCreate. Stopped, the disk is consistent.
    gcp.stop_vm(builder)
        .await
        .map_err(fail(format!("could not stop builder {builder}")))?;
    let disk = gcp.boot_disk(builder).await.map_err(fail(format!(
        "could not find the boot disk of builder {builder}"
    )))?;
    let name = images::new_image_name(&spec.family, Utc::now());
    let labels = BTreeMap::from([
        (HASH_LABEL.to_string(), spec.hash.clone()),
        ("cwo-managed".to_string(), "true".to_string()),
        ("cwo-project".to_string(), spec.project_slug.clone()),
    ]);
    let body = images::image_from_disk(&name, &spec.family, &disk, labels, &spec.description);
    // One request id per build, the same on a retry: one image, however often the insert is sent.
    let request_id = uuid::Uuid::new_v4().to_string();
    gcp.insert_image(body, &request_id)
        .await
        .map_err(fail(format!(
            "could not create image {name} from builder {builder}"
        )))
}

/// One image as `cwo image list` shows it.
#[derive(Debug, Serialize)]
pub struct ListedImage {
    #[serde(flatten)]
    pub image: ImageInfo,
    /// Baked from the current settings: new workers boot from the newest such image.
    pub current: bool,
    /// The live VMs booted from it.
    pub used_by: Vec<String>,
}

/// `cwo image list`'s report.
#[derive(Debug, Serialize)]
pub struct ImageList {
    pub schema_version: u32,
    pub family: String,
    /// What the current settings bake to.
    pub hash: String,
    /// The image new workers boot from, and why.
    pub boot: Option<crate::provider::BootImage>,
    pub images: Vec<ListedImage>,
}

/// The live VMs of any cwo project in gcp.project, by the baked image they booted from.
async fn users(gcp: &GcpProvider) -> Result<BTreeMap<String, Vec<String>>, OrchestratorError> {
    let selector = BTreeMap::from([("cwo-managed".to_string(), "true".to_string())]);
    let vms = gcp
        .list(&selector)
        .await
        .map_err(|source| OrchestratorError::Image {
            what: "could not list the VMs that may use an image".into(),
            source,
        })?;
    let mut by_image: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for vm in vms {
        if let Some(image) = vm.labels.get(crate::model::IMAGE_LABEL) {
            by_image.entry(image.clone()).or_default().push(vm.name);
        }
    }
    Ok(by_image)
}

async fn listed(
    gcp: &GcpProvider,
    family: &str,
    hash: &str,
) -> Result<Vec<ListedImage>, OrchestratorError> {
    let images = gcp
        .list_images(family)
        .await
        .map_err(|source| OrchestratorError::Image {
            what: format!("could not list the images of family {family}"),
            source,
        })?;
    let mut users = users(gcp).await?;
    Ok(images
        .into_iter()
        .map(|image| ListedImage {
            current: !hash.is_empty() && image.hash == hash,
            used_by: users.remove(&image.name).unwrap_or_default(),
            image,
        })
        .collect())
}

pub(crate) async fn list(gcp: &GcpProvider, family: &str) -> Result<ImageList, OrchestratorError> {
    let boot = gcp.boot_image().await.and_then(Result::ok);
    let hash = boot.as_ref().map(|b| b.hash.clone()).unwrap_or_default();
    Ok(ImageList {
        schema_version: 1,
        family: family.to_string(),
        images: listed(gcp, family, &hash).await?,
        hash,
        boot,
    })
}

/// What `cwo image prune` did with one image.
#[derive(Debug, Serialize)]
pub struct Pruned {
    pub name: String,
    pub created_at: Option<chrono::DateTime<Utc>>,
    /// kept | in-use | deleted | gone | failed
    pub action: String,
    pub detail: String,
}

/// `cwo image prune`'s report.
#[derive(Debug, Serialize)]
pub struct PruneReport {
    pub schema_version: u32,
    pub family: String,
    pub keep: usize,
    pub dry_run: bool,
    pub images: Vec<Pruned>,
}

impl PruneReport {
    pub fn failed(&self) -> usize {
        self.images.iter().filter(|p| p.action == "failed").count()
    }
}

/// Deletes the images cwo baked in `family` beyond the newest `keep` bootable ones, never one
/// a live VM booted from (checked again right before each delete), the one new workers boot
/// from, or one still being created (a build running now).
pub(crate) async fn prune(
    gcp: &GcpProvider,
    family: &str,
    keep: usize,
    dry_run: bool,
) -> Result<PruneReport, OrchestratorError> {
    // Only cwo's own images: another tool's image in the same family is left alone.
    let images: Vec<ListedImage> = listed(gcp, family, "")
        .await?
        .into_iter()
        .filter(|i| !i.image.hash.is_empty())
        .collect();
    // What new workers boot from now (the newest image baked from the current settings).
    let booted = gcp
        .boot_image()
        .await
        .and_then(Result::ok)
        .and_then(|b| b.baked);
    let mut out = Vec::with_capacity(images.len());
    let mut bootable_kept = 0;
    for listed in images {
        let bootable = listed.image.bootable();
        let pending = listed.image.status == "PENDING";
        let ImageInfo {
            name, created_at, ..
        } = listed.image;
        let mut p = Pruned {
            name,
            created_at,
            action: String::new(),
            detail: String::new(),
        };
        if pending {
            p.action = "kept".into();
            p.detail = "being created".into();
        } else if bootable && bootable_kept < keep {
            bootable_kept += 1;
            p.action = "kept".into();
            p.detail = format!("one of the newest {keep} bootable");
        } else if booted.as_deref() == Some(p.name.as_str()) {
            p.action = "kept".into();
            p.detail = "new workers boot from it (baked from the current settings)".into();
        } else if !listed.used_by.is_empty() {
            p.action = "in-use".into();
            p.detail = format!("booted {}", listed.used_by.join(", "));
        } else if dry_run {
            p.action = "delete".into();
            p.detail = "would be deleted (--dry-run)".into();
        } else {
            // A worker may have booted from it since the list: look again, just before.
            let now_used = users(gcp).await?.remove(&p.name).unwrap_or_default();
            if !now_used.is_empty() {
                p.action = "in-use".into();
                p.detail = format!("booted {}", now_used.join(", "));
            } else {
                match gcp.delete_image(&p.name).await {
                    Ok(DeleteOutcome::Deleted) => p.action = "deleted".into(),
                    Ok(DeleteOutcome::AlreadyGone) => {
                        p.action = "gone".into();
                        p.detail = "already deleted".into();
                    }
                    Err(e) => {
                        p.action = "failed".into();
                        p.detail = e.one_line();
                    }
                }
            }
        }
        out.push(p);
    }
    Ok(PruneReport {
        schema_version: 1,
        family: family.to_string(),
        keep,
        dry_run,
        images: out,
    })
}
