//! Worker images (`cwo image`, issue 16): which image a new worker boots from, and the Compute
//! calls that make, list and delete cwo's images.
//!
//! An image `cwo image build` baked carries the hash of everything that went into it
//! ([`HASH_LABEL`], from `bootstrap::image_hash`). With `gcp.use_image = "auto"` a worker boots
//! from the newest READY image of `gcp.image_family` with the current settings' hash, so its
//! bootstrap finds everything in place and only checks it; every VM booted from one carries
//! [`IMAGE_LABEL`], which is how `cwo image prune` knows an image is in use.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use google_cloud_compute_v1::model::{self as gce, Operation};
use serde::Serialize;

use super::{GcpProvider, classify};
use crate::config::UseImage;
use crate::provider::{BootImage, DeleteOutcome, ProviderError, ProviderErrorKind};

/// On an image: the hash of what it was baked from.
pub(crate) const HASH_LABEL: &str = "cwo-image-hash";
pub(crate) use crate::model::IMAGE_LABEL;

/// How long a fallback to gcp.image, made because the images could not be listed, holds.
const RELIST_AFTER: Duration = Duration::from_secs(10 * 60);

/// The boot image a provider chose, and until when (`None`: for good).
#[derive(Debug)]
pub(crate) struct Chosen {
    image: BootImage,
    until: Option<Instant>,
}

/// One of cwo's images, as `cwo image list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ImageInfo {
    pub name: String,
    pub family: String,
    /// The hash of what it was baked from ("" for an image cwo did not bake).
    pub hash: String,
    pub created_at: Option<DateTime<Utc>>,
    /// PENDING, READY, FAILED or DELETING.
    pub status: String,
    pub disk_size_gb: Option<i64>,
    pub archive_size_bytes: Option<i64>,
    pub description: String,
    /// Deprecated, obsolete or deleted (never booted from).
    pub deprecated: bool,
}

impl ImageInfo {
    fn from_api(img: &gce::Image) -> ImageInfo {
        ImageInfo {
            name: img.name.clone().unwrap_or_default(),
            family: img.family.clone().unwrap_or_default(),
            hash: img.labels.get(HASH_LABEL).cloned().unwrap_or_default(),
            created_at: img
                .creation_timestamp
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
            status: img
                .status
                .as_ref()
                .and_then(|s| s.name())
                .unwrap_or("")
                .to_string(),
            disk_size_gb: img.disk_size_gb,
            archive_size_bytes: img.archive_size_bytes,
            description: img.description.clone().unwrap_or_default(),
            deprecated: img
                .deprecated
                .as_ref()
                .and_then(|d| d.state.as_ref())
                .and_then(|s| s.name())
                .is_some_and(|s| s != "ACTIVE"),
        }
    }

    /// The path a VM's `sourceImage` names it by.
    pub(crate) fn source_path(&self, project: &str) -> String {
        format!("projects/{project}/global/images/{}", self.name)
    }

    /// READY and not deprecated: a VM can boot from it.
    pub(crate) fn bootable(&self) -> bool {
        self.status == "READY" && !self.deprecated
    }

    fn fits(&self, disk_gb: u32) -> bool {
        self.disk_size_gb.is_none_or(|gb| gb <= i64::from(disk_gb))
    }
}

/// The newest bootable image of `images` baked with `hash` that fits a boot disk of `disk_gb`
/// (Compute refuses a disk smaller than its image: an image baked before gcp.disk_size_gb was
/// lowered does not fit).
pub(crate) fn newest_matching<'a>(
    images: &'a [ImageInfo],
    hash: &str,
    disk_gb: u32,
) -> Option<&'a ImageInfo> {
    images
        .iter()
        .filter(|i| i.bootable() && i.hash == hash && i.fits(disk_gb))
        .max_by_key(|i| i.created_at)
}

/// A name for a new image of `family`, unique to the second: `<family>-<yyyymmdd>-<hhmmss>`
/// (Compute's 63-character limit cuts the family, never the time).
pub(crate) fn new_image_name(family: &str, now: DateTime<Utc>) -> String {
    let stamp = now.format("%Y%m%d-%H%M%S").to_string();
    let keep = 63 - stamp.len() - 1;
    let family = family.get(..keep.min(family.len())).unwrap_or(family);
    format!("{}-{stamp}", family.trim_end_matches('-'))
}

impl GcpProvider {
    /// The images of `family` in gcp.project (every status), newest first.
    pub(crate) async fn list_images(&self, family: &str) -> Result<Vec<ImageInfo>, ProviderError> {
        let c = self.clients().await?;
        let filter = format!("family = \"{family}\"");
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let token = page.clone();
            let resp = self
                .retry(|| async {
                    let mut req = c
                        .images
                        .list()
                        .set_project(&self.settings.project)
                        .set_filter(&filter)
                        .set_max_results(500u32);
                    if let Some(t) = &token {
                        req = req.set_page_token(t);
                    }
                    req.send().await.map_err(|e| {
                        classify(e, &format!("listing the images of family {family}"), false)
                    })
                })
                .await?;
            // The filter is the server's; the family is checked here too.
            out.extend(
                resp.items
                    .iter()
                    .map(ImageInfo::from_api)
                    .filter(|i| i.family == family),
            );
            match resp.next_page_token {
                Some(t) if !t.is_empty() => page = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.name.cmp(&a.name)));
        Ok(out)
    }

    /// The image a new worker boots from, decided once per provider (the first create, or
    /// `cwo up --plan`): see the module comment. `Err` only with `use_image = "always"`
    /// when there is no such image (or the images cannot be listed). A fallback to gcp.image
    /// because the images could not be listed holds for `RELIST_AFTER` only: a long `cwo run`
    /// does not boot the base image for good over one failed list.
    pub(crate) async fn boot_image_choice(&self) -> Result<BootImage, ProviderError> {
        if let Some(c) = self.boot.lock().expect("boot choice lock").as_ref()
            && c.until.is_none_or(|until| Instant::now() < until)
        {
            return Ok(c.image.clone());
        }
        let (image, settled) = self.choose_boot_image().await?;
        let until = (!settled).then(|| Instant::now() + RELIST_AFTER);
        *self.boot.lock().expect("boot choice lock") = Some(Chosen {
            image: image.clone(),
            until,
        });
        Ok(image)
    }

    /// The image chosen by [`Self::boot_image_choice`], once it was.
    pub(crate) fn chosen_boot_image(&self) -> Option<BootImage> {
        self.boot
            .lock()
            .expect("boot choice lock")
            .as_ref()
            .map(|c| c.image.clone())
    }

    /// The choice, and whether it is settled (false: gcp.image because the images could not be
    /// listed, chosen again after `RELIST_AFTER`).
    async fn choose_boot_image(&self) -> Result<(BootImage, bool), ProviderError> {
        let s = &self.settings;
        let base = |why: String, hash: Option<&String>, stale: bool| BootImage {
            image: s.image.clone(),
            baked: None,
            why,
            hash: hash.cloned().unwrap_or_default(),
            build_would_help: stale,
        };
        let family = &s.image_family;
        let Some(hash) = self.image_hash.as_ref() else {
            return match s.use_image {
                UseImage::Always => Err(ProviderError::InvalidSpec(
                    "gcp.use_image = \"always\" needs bootstrap.method = \"native\": only the native bootstrap can check a baked image".into(),
                )),
                _ => Ok((
                    base(
                        "gcp.image: baked images are used with the native bootstrap only".into(),
                        None,
                        false,
                    ),
                    true,
                )),
            };
        };
        if s.use_image == UseImage::Never {
            return Ok((
                base("gcp.use_image = \"never\"".into(), Some(hash), false),
                true,
            ));
        }
        let images = match self.list_images(family).await {
            Ok(images) => images,
            // "auto" never stops a worker for want of a list: it boots gcp.image, as it did
            // before images existed (the reason is in the plan, the hint and `cwo doctor`).
            Err(e) if s.use_image == UseImage::Auto => {
                let why = format!(
                    "gcp.image: the images of family {family} cannot be listed ({})",
                    e.one_line()
                );
                return Ok((base(why, Some(hash), false), false));
            }
            Err(e) => return Err(e),
        };
        if let Some(img) = newest_matching(&images, hash, s.disk_size_gb) {
            let image = BootImage {
                image: img.source_path(&s.project),
                baked: Some(img.name.clone()),
                why: format!("baked from these settings (hash {hash}) by `cwo image build`"),
                hash: hash.clone(),
                build_would_help: false,
            };
            return Ok((image, true));
        }
        let too_big = images
            .iter()
            .find(|i| i.bootable() && i.hash == *hash && !i.fits(s.disk_size_gb));
        let why = match (too_big, images.iter().find(|i| i.bootable())) {
            (Some(big), _) => format!(
                "gcp.image: {}, baked from these settings, needs a {} GB disk and gcp.disk_size_gb is {}",
                big.name,
                big.disk_size_gb.unwrap_or_default(),
                s.disk_size_gb
            ),
            (None, Some(newest)) => format!(
                "gcp.image: the newest image of family {family}, {}, was baked from other settings (hash {}, these settings are {hash})",
                newest.name, newest.hash
            ),
            (None, None) => format!("gcp.image: family {family} has no image (hash {hash} wanted)"),
        };
        if s.use_image == UseImage::Always {
            return Err(ProviderError::InvalidSpec(format!(
                "gcp.use_image = \"always\", but {}; run `cwo image build`",
                why.trim_start_matches("gcp.image: ")
            )));
        }
        Ok((base(why, Some(hash), true), true))
    }

    /// Stops a VM (`instances.stop`) and waits until it is stopped. Compute Engine clears a
    /// stopped VM's termination timer: the caller deletes it.
    pub(crate) async fn stop_vm(&self, name: &str) -> Result<(), ProviderError> {
        let Some((zone, _)) = self.find(name).await? else {
            return Err(ProviderError::NotFound(format!("VM {name}")));
        };
        let c = self.clients().await?;
        let what = format!("stopping VM {name} in {zone}");
        let request_id = uuid::Uuid::new_v4().to_string();
        let op = self
            .retry(|| async {
                c.instances
                    .stop()
                    .set_project(&self.settings.project)
                    .set_zone(&zone)
                    .set_instance(name)
                    .set_request_id(&request_id)
                    .send()
                    .await
                    .map_err(|e| classify(e, &what, false))
            })
            .await?;
        self.wait_operation(&zone, op, &what).await?;
        // The operation is done when the VM is TERMINATED; a read says so too.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            match self.get_in(&zone, name).await? {
                Some(vm) if vm.status == Some(gce::instance::Status::Terminated) => return Ok(()),
                None => return Err(ProviderError::NotFound(format!("VM {name}"))),
                Some(_) if tokio::time::Instant::now() > deadline => {
                    return Err(ProviderError::Transient(format!(
                        "VM {name} is not stopped 2 min after its stop finished"
                    )));
                }
                Some(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
            }
        }
    }

    /// The URL of a VM's boot disk.
    pub(crate) async fn boot_disk(&self, name: &str) -> Result<String, ProviderError> {
        let Some((_, vm)) = self.find(name).await? else {
            return Err(ProviderError::NotFound(format!("VM {name}")));
        };
        vm.disks
            .iter()
            .find(|d| d.boot == Some(true))
            .and_then(|d| d.source.clone())
            .ok_or_else(|| ProviderError::InvalidSpec(format!("VM {name} has no boot disk")))
    }

    /// `images.insert` (retried with the same request id) and its global operation; returns
    /// the image as the API then shows it.
    pub(crate) async fn insert_image(
        &self,
        body: gce::Image,
        request_id: &str,
    ) -> Result<ImageInfo, ProviderError> {
        let c = self.clients().await?;
        let name = body.name.clone().unwrap_or_default();
        let what = format!("creating image {name}");
        let op = self
            .retry(|| async {
                c.images
                    .insert()
                    .set_project(&self.settings.project)
                    .set_request_id(request_id)
                    .set_body(body.clone())
                    .send()
                    .await
                    .map_err(|e| classify(e, &what, false))
            })
            .await?;
        self.wait_global(op, &what).await?;
        self.get_image(&name).await?.ok_or_else(|| {
            ProviderError::Transient(format!("image {name} was created but is not visible yet"))
        })
    }

    /// `images.get`; `None` on 404.
    pub(crate) async fn get_image(&self, name: &str) -> Result<Option<ImageInfo>, ProviderError> {
        let c = self.clients().await?;
        self.retry(|| async {
            match c
                .images
                .get()
                .set_project(&self.settings.project)
                .set_image(name)
                .send()
                .await
            {
                Ok(img) => Ok(Some(ImageInfo::from_api(&img))),
                Err(e) if e.http_status_code() == Some(404) => Ok(None),
                Err(e) => Err(classify(e, &format!("reading image {name}"), false)),
            }
        })
        .await
    }

    /// `images.delete` and its operation.
    pub(crate) async fn delete_image(&self, name: &str) -> Result<DeleteOutcome, ProviderError> {
        let c = self.clients().await?;
        let what = format!("deleting image {name}");
        let request_id = uuid::Uuid::new_v4().to_string();
        let op = match self
            .retry(|| async {
                match c
                    .images
                    .delete()
                    .set_project(&self.settings.project)
                    .set_image(name)
                    .set_request_id(&request_id)
                    .send()
                    .await
                {
                    Ok(op) => Ok(Some(op)),
                    Err(e) if e.http_status_code() == Some(404) => Ok(None),
                    Err(e) => Err(classify(e, &what, false)),
                }
            })
            .await?
        {
            Some(op) => op,
            None => return Ok(DeleteOutcome::AlreadyGone),
        };
        match self.wait_global(op, &what).await {
            Ok(_) => Ok(DeleteOutcome::Deleted),
            Err(e) if e.kind() == ProviderErrorKind::NotFound => Ok(DeleteOutcome::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    /// Polls a global operation until DONE.
    async fn wait_global(&self, op: Operation, what: &str) -> Result<Operation, ProviderError> {
        let c = self.clients().await?;
        self.wait_done(op, what, |name| async move {
            c.global_operations
                .get()
                .set_project(&self.settings.project)
                .set_operation(name)
                .send()
                .await
        })
        .await
    }
}

/// The body of an image made from a stopped builder's boot disk.
pub(crate) fn image_from_disk(
    name: &str,
    family: &str,
    disk: &str,
    labels: BTreeMap<String, String>,
    description: &str,
) -> gce::Image {
    gce::Image::new()
        .set_name(name)
        .set_family(family)
        .set_source_disk(disk)
        .set_labels(labels)
        .set_description(description)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(name: &str, hash: &str, created: &str, status: &str) -> ImageInfo {
        ImageInfo {
            name: name.into(),
            family: "cwo-worker".into(),
            hash: hash.into(),
            created_at: Some(created.parse().unwrap()),
            status: status.into(),
            disk_size_gb: Some(10),
            archive_size_bytes: None,
            description: String::new(),
            deprecated: false,
        }
    }

    #[test]
    fn the_newest_ready_image_with_the_hash_is_chosen() {
        let images = vec![
            img("a", "h1", "2026-11-01T00:00:00Z", "READY"),
            img("b", "h1", "2026-11-03T00:00:00Z", "READY"),
            img("c", "h1", "2026-11-04T00:00:00Z", "PENDING"),
            img("d", "h2", "2026-11-05T00:00:00Z", "READY"),
        ];
        assert_eq!(newest_matching(&images, "h1", 10).unwrap().name, "b");
        assert_eq!(newest_matching(&images, "h2", 10).unwrap().name, "d");
        assert!(newest_matching(&images, "h3", 10).is_none());
        let mut old = images.clone();
        old[1].deprecated = true;
        assert_eq!(newest_matching(&old, "h1", 10).unwrap().name, "a");
        // Baked on a bigger disk than workers now get: it does not fit.
        old[0].disk_size_gb = Some(20);
        assert!(newest_matching(&old, "h1", 10).is_none());
        assert_eq!(newest_matching(&old, "h1", 20).unwrap().name, "a");
    }

    #[test]
    fn image_names_fit_compute_and_keep_the_time() {
        let now: DateTime<Utc> = "2026-12-02T19:04:05Z".parse().unwrap();
        assert_eq!(
            new_image_name("cwo-worker", now),
            "cwo-worker-20261202-190405"
        );
        let long = "a".repeat(63);
        let n = new_image_name(&long, now);
        assert_eq!(n.len(), 63);
        assert!(n.ends_with("-20261202-190405"));
    }
}
