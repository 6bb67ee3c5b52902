//! `cwo image build | list | prune | import`: the reports, gathered through the orchestrator's
//! image module (the provider's import module for `import`) from the settings' Compute Engine
//! project.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Report;
use super::table::Table;
use crate::error::{CommandError, ErrorKind};
use crate::orchestrator::image::{self, Built, ImageList, PruneReport};
use crate::printer::Printer;
use crate::project::Project;
use crate::provider::gcp::import::{self as alpine, Firmware, ImportError, Imported};

pub(crate) async fn build(
    project: &Project,
    printer: Printer,
    stop: &CancellationToken,
) -> Result<Built, CommandError> {
    let (lifecycle, builder, spec) = project.image_builder(printer)?;
    printer.status(format!(
        "baking an image of {} into family {} (hash {})",
        spec.base, spec.family, spec.hash
    ));
    Ok(image::build(&lifecycle, &builder, &spec, stop).await?)
}

pub(crate) async fn list(project: &Project) -> Result<ImageList, CommandError> {
    let gcp = project.image_provider()?;
    Ok(image::list(&gcp, &project.settings().gcp.image_family).await?)
}

pub(crate) async fn prune(
    project: &Project,
    keep: usize,
    dry_run: bool,
) -> Result<PruneReport, CommandError> {
    let gcp = project.image_provider()?;
    Ok(image::prune(&gcp, &project.settings().gcp.image_family, keep, dry_run).await?)
}

/// `cwo image import alpine --from FILE|URL`: the file checked before any call (a URL's after
/// its download, which goes to the state dir and is removed afterwards), then imported.
pub(crate) async fn import(
    project: &Project,
    printer: Printer,
    from: &str,
    firmware: Option<Firmware>,
) -> Result<Imported, CommandError> {
    let gcp = project.gce_api();
    let rel =
        alpine::alpine_release(&alpine::file_name_of(from), firmware).map_err(import_error)?;
    let is_url = from.starts_with("https://") || from.starts_with("http://");
    if !is_url {
        let path = PathBuf::from(from);
        if !path.is_file() {
            return Err(CommandError::usage(format!("--from {from}: no such file"))
                .hint(format!("download Alpine's GCE image (the tiny-cloud `.tar.gz`) from {}, or pass its http(s) URL", alpine::ALPINE_CLOUD_URL)));
        }
        alpine::check_archive(&path).map_err(import_error)?;
        return gcp
            .import_alpine(from, &path, &rel, printer)
            .await
            .map_err(import_error);
    }
    let dir = project
        .state_dir
        .join(format!("import-{}", uuid::Uuid::new_v4().simple()));
    let result = async {
        let path = alpine::download(from, &dir, printer).await?;
        alpine::check_archive(&path)?;
        gcp.import_alpine(from, &path, &rel, printer).await
    }
    .await;
    // The download is only a step: it goes whatever happened.
    let _ = tokio::fs::remove_dir_all(&dir).await;
    result.map_err(import_error)
}

/// An import's error, with what to do about it.
fn import_error(e: ImportError) -> CommandError {
    let e = match e {
        ImportError::Provider(p) => return p.into(),
        other => other,
    };
    let cloud = alpine::ALPINE_CLOUD_URL;
    let (kind, hints): (ErrorKind, Vec<String>) = match &e {
        // Converted above, with the provider's own hints.
        ImportError::Provider(_) => (ErrorKind::User, vec![]),
        ImportError::BadArchive { .. } => (
            ErrorKind::Usage,
            vec![format!(
                "download Alpine's GCE image from {cloud}: the tiny-cloud `.tar.gz` of the GCP column (a gzip'd tar of disk.raw)"
            )],
        ),
        ImportError::Unclear(_) => (ErrorKind::Usage, vec![]),
        ImportError::Read { .. } => (ErrorKind::User, vec![]),
        ImportError::Download { .. } => (
            ErrorKind::User,
            vec!["check the URL (it is printed above), or download the file yourself and pass --from FILE".into()],
        ),
        ImportError::Storage { status, .. } => (
            ErrorKind::User,
            match status {
                Some(401) => vec!["run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS".into()],
                Some(403) => vec!["the account cwo runs as needs roles/storage.admin on gcp.project (buckets get/create, objects create/delete); if another project owns the bucket's name, set gcp.image_bucket to a name of your own".into()],
                Some(409) => vec!["another project owns that bucket name: set gcp.image_bucket to a name of your own".into()],
                _ => vec!["run the import again: it starts over, and an upload left behind is deleted by the bucket's lifecycle rule within a day".into()],
            },
        ),
    };
    let mut out = CommandError::new(kind, Arc::new(e));
    for h in hints {
        out = out.hint(h);
    }
    out
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "-".into())
}

impl Report for Built {
    fn text(&self) -> String {
        format!(
            "image {} (family {}, hash {}) from {}: {} GB, baked in {:.0} s ({:.0} s bootstrap); builder {} deleted\n",
            self.image.name,
            self.family,
            self.hash,
            self.base,
            self.image
                .disk_size_gb
                .map_or("?".into(), |g| g.to_string()),
            self.total_secs,
            self.bootstrap_secs,
            self.builder
        )
    }
}

impl Report for ImageList {
    fn text(&self) -> String {
        let mut t = Table::new(&["image", "created", "status", "hash", "current", "used by"]);
        for i in &self.images {
            t.row(vec![
                i.image.name.clone(),
                when(i.image.created_at),
                i.image.status.clone(),
                if i.image.hash.is_empty() {
                    "-".into()
                } else {
                    i.image.hash.clone()
                },
                if i.current { "yes" } else { "no" }.into(),
                if i.used_by.is_empty() {
                    "-".into()
                } else {
                    i.used_by.join(" ")
                },
            ]);
        }
        let mut out = if t.is_empty() {
            format!("family {} has no image\n", self.family)
        } else {
            t.render()
        };
        if let Some(b) = &self.boot {
            out.push_str(&format!("new workers boot {}: {}\n", b.image, b.why));
        }
        out
    }
}

impl Report for PruneReport {
    fn text(&self) -> String {
        let mut t = Table::new(&["image", "created", "action", "detail"]);
        for p in &self.images {
            t.row(vec![
                p.name.clone(),
                when(p.created_at),
                p.action.clone(),
                p.detail.clone(),
            ]);
        }
        if t.is_empty() {
            format!("family {} has no image cwo baked\n", self.family)
        } else {
            t.render()
        }
    }
}

impl Report for Imported {
    fn text(&self) -> String {
        let mut out = if self.already_existed {
            format!(
                "image {} (family {}, {}) exists already: nothing was uploaded\n",
                self.image.name, self.family, self.image.status
            )
        } else {
            format!(
                "image {} (family {}, {}, {} GB) imported from {} through {} ({:.1} MiB, {}); guest OS features {}\n",
                self.image.name,
                self.family,
                self.image.status,
                self.image
                    .disk_size_gb
                    .map_or("?".into(), |g| g.to_string()),
                self.source,
                self.upload,
                self.uploaded_bytes as f64 / (1u64 << 20) as f64,
                if self.upload_deleted {
                    "upload deleted"
                } else {
                    "upload NOT deleted: see the warning above"
                },
                self.guest_os_features.join(", ")
            )
        };
        out.push_str(&format!(
            "boot workers from it with these settings (under [gcp] in cwo.toml):\n  gcp.image = \"{}\"\n  gcp.ssh_user = \"{}\"\nthen `cwo image build` bakes the bootstrap on top of it\n",
            self.image_setting, self.ssh_user
        ));
        out
    }
}
