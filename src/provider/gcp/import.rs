//! `cwo image import alpine` (issue 16): Alpine's published GCE disk (the `.tar.gz` of a
//! `tiny-cloud` release from https://alpinelinux.org/cloud/) made into an image of gcp.project.
//!
//! Compute Engine creates an image from a raw disk only through Cloud Storage: the archive is
//! uploaded to `gcp.image_bucket` (created when missing, with a lifecycle rule deleting objects
//! a day old: the backstop if cwo dies mid-import), `images.insert` is sent with
//! `rawDisk.source` naming the object, and the object is deleted once the image is READY or
//! the insert failed (https://cloud.google.com/compute/docs/import/import-existing-image).
//!
//! The upload goes through the official `google-cloud-storage` crate's `Storage` client, which
//! speaks Cloud Storage's JSON API (multipart or resumable uploads). The bucket (get, insert)
//! and the object's deletion are hand-written JSON API calls instead of the crate's
//! `StorageControl` client: that client speaks gRPC only, which no local fake of Cloud Storage
//! answers (the tests run against a JSON API fake), and the JSON API's three calls are small.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use google_cloud_compute_v1::model as gce;
use google_cloud_storage::streaming_source::{Seek, SizeHint, StreamingSource};
use serde::Serialize;
use serde_json::{Value, json};

use super::GcpProvider;
use super::images::ImageInfo;
use crate::printer::Printer;
use crate::provider::{BoxError, ProviderError};

/// The login Alpine's cloud images create (tiny-cloud's default cloud user).
pub(crate) const ALPINE_LOGIN: &str = "alpine";
/// Where Alpine publishes its cloud images.
pub(crate) const ALPINE_CLOUD_URL: &str = "https://alpinelinux.org/cloud/";
/// The host `rawDisk.source` must name: Compute reads the object from Cloud Storage itself,
/// whatever endpoint cwo uploads through.
const RAW_DISK_HOST: &str = "https://storage.googleapis.com";
/// How long an image may stay PENDING after its insert finished.
const READY_TIMEOUT: Duration = Duration::from_secs(1200);

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file is not what Compute Engine imports: nothing was called.
    #[error("{path} is not a Compute Engine disk archive: {why}")]
    BadArchive { path: String, why: String },
    /// What the file name does not say (and no flag said either).
    #[error("{0}")]
    Unclear(String),
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("downloading {url}: {why}")]
    Download {
        url: String,
        why: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A Cloud Storage call failed (`status`: its HTTP status, when it got one).
    #[error("{what}: {message}")]
    Storage {
        what: String,
        status: Option<u16>,
        message: String,
        #[source]
        source: Option<BoxError>,
    },
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

/// The firmware an Alpine build boots with (Alpine publishes `bios` and `uefi` variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Uefi,
    Bios,
}

/// What an Alpine release file becomes: its image name, family, firmware and architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AlpineRelease {
    /// The file name it was read from.
    pub file_name: String,
    pub image: String,
    pub family: String,
    pub firmware: Firmware,
    /// `X86_64` or `ARM64` when the name says.
    pub arch: Option<&'static str>,
    /// `3.22.1`, `edge`, … when the name says.
    pub version: Option<String>,
}

/// `cwo image import`'s report.
#[derive(Debug, Serialize)]
pub struct Imported {
    pub schema_version: u32,
    pub image: ImageInfo,
    pub family: String,
    /// The settings that make workers boot it.
    pub image_setting: String,
    pub ssh_user: String,
    /// The file or URL imported.
    pub source: String,
    pub firmware: Firmware,
    pub guest_os_features: Vec<String>,
    /// `gs://bucket/object` the disk went through ("" when the image already existed).
    pub upload: String,
    pub uploaded_bytes: u64,
    pub bucket_created: bool,
    /// Whether the uploaded object is gone (the bucket's lifecycle rule deletes it otherwise).
    pub upload_deleted: bool,
    /// The image existed already: nothing was uploaded.
    pub already_existed: bool,
}

/// A name as Compute Engine's resource names go (RFC 1035: lowercase letters, digits and
/// hyphens, starting with a letter, at most 63 characters), from a release file's name:
/// `gcp_alpine-3.22.1-x86_64-uefi-tiny-r0.raw.tar.gz` → `alpine-3-22-1-x86-64-uefi-tiny-r0`.
pub(crate) fn image_name_from(file_name: &str) -> String {
    let mut stem = file_name.to_ascii_lowercase();
    for ext in [".tar.gz", ".tgz", ".raw", ".img"] {
        if let Some(s) = stem.strip_suffix(ext) {
            stem = s.to_string();
        }
    }
    // Alpine's files carry the cloud as a prefix (`gcp_alpine-…`): the image says alpine first.
    if let Some(i) = stem.find("alpine") {
        stem = stem[i..].to_string();
    }
    let mut name = String::new();
    for c in stem.chars() {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (name.is_empty() || name.ends_with('-'))) {
            name.push(c);
        }
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name = format!("alpine-{name}");
    }
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

/// Reads an Alpine release file's name: version, architecture and firmware, the image name and
/// family. `firmware` overrides what the name says (and is needed when it says nothing).
pub(crate) fn alpine_release(
    file_name: &str,
    firmware: Option<Firmware>,
) -> Result<AlpineRelease, ImportError> {
    let lower = file_name.to_ascii_lowercase();
    let version = lower.find("alpine-").and_then(|i| {
        let rest = &lower[i + "alpine-".len()..];
        if rest.starts_with("edge") {
            return Some("edge".to_string());
        }
        let v: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let v = v.trim_end_matches('.').to_string();
        (v.split('.').count() >= 2).then_some(v)
    });
    let arch = if lower.contains("aarch64") || lower.contains("arm64") {
        Some("ARM64")
    } else if lower.contains("x86_64") || lower.contains("x86-64") {
        Some("X86_64")
    } else {
        None
    };
    let said = if lower.contains("uefi") {
        Some(Firmware::Uefi)
    } else if lower.contains("bios") {
        Some(Firmware::Bios)
    } else if arch == Some("ARM64") {
        // Arm VMs on Compute Engine boot UEFI only.
        Some(Firmware::Uefi)
    } else {
        None
    };
    let Some(firmware) = firmware.or(said) else {
        return Err(ImportError::Unclear(format!(
            "the name {file_name} does not say whether it is a UEFI or a BIOS build (Alpine's names carry `-uefi-` or `-bios-`); pass --firmware uefi or --firmware bios"
        )));
    };
    let mut family = match &version {
        Some(v) if v == "edge" => "alpine-edge".to_string(),
        Some(v) => {
            let mut parts = v.split('.');
            format!(
                "alpine-{}-{}",
                parts.next().unwrap_or("0"),
                parts.next().unwrap_or("0")
            )
        }
        None => "cwo-alpine".to_string(),
    };
    // An image family holds one architecture's images: Arm builds get a family of their own.
    if arch == Some("ARM64") {
        family.push_str("-arm64");
    }
    Ok(AlpineRelease {
        file_name: file_name.to_string(),
        image: image_name_from(file_name),
        family,
        firmware,
        arch,
        version,
    })
}

/// The guest OS features an Alpine image is created with
/// (https://cloud.google.com/compute/docs/images/create-custom#guest-os-features):
/// `VIRTIO_SCSI_MULTIQUEUE` (Alpine's `linux-virt` kernel has virtio-scsi with multiqueue),
/// `GVNIC` (it has the `gve` driver, so machine types that need gVNIC can boot it), and
/// `UEFI_COMPATIBLE` only for a UEFI build: a BIOS build marked so would be booted with UEFI
/// firmware and not find its boot loader.
pub(crate) fn guest_os_features(firmware: Firmware) -> Vec<gce::guest_os_feature::Type> {
    use gce::guest_os_feature::Type;
    let mut out = vec![Type::VirtioScsiMultiqueue, Type::Gvnic];
    if firmware == Firmware::Uefi {
        out.push(Type::UefiCompatible);
    }
    out
}

/// The `images.insert` body for a release uploaded to `gs://bucket/object`.
pub(crate) fn import_body(
    rel: &AlpineRelease,
    bucket: &str,
    object: &str,
    labels: BTreeMap<String, String>,
) -> gce::Image {
    let mut body = gce::Image::new()
        .set_name(&rel.image)
        .set_family(&rel.family)
        .set_description(format!(
            "Alpine Linux {} ({}), imported by cwo from {}",
            rel.version.as_deref().unwrap_or("?"),
            match rel.firmware {
                Firmware::Uefi => "uefi",
                Firmware::Bios => "bios",
            },
            rel.file_name
        ))
        .set_raw_disk(
            gce::image::RawDisk::new()
                .set_source(raw_disk_source(bucket, object))
                .set_container_type(gce::image::raw_disk::ContainerType::Tar),
        )
        .set_guest_os_features(
            guest_os_features(rel.firmware)
                .into_iter()
                .map(|t| gce::GuestOsFeature::new().set_type(t)),
        )
        .set_labels(labels);
    match rel.arch {
        Some("ARM64") => body = body.set_architecture(gce::image::Architecture::Arm64),
        Some("X86_64") => body = body.set_architecture(gce::image::Architecture::X8664),
        _ => {}
    }
    body
}

/// `rawDisk.source`: the object's `https://storage.googleapis.com/` URL, each part encoded.
pub(crate) fn raw_disk_source(bucket: &str, object: &str) -> String {
    format!("{RAW_DISK_HOST}/{bucket}/{}", encode(object))
}

/// Percent-encodes a URL path segment (RFC 3986 unreserved characters stay).
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks, cheaply, that `path` is what Compute Engine imports: a gzip'd tar whose first file
/// is `disk.raw` ("The disk image filename must be disk.raw … compressed … as a tar.gz").
/// Returns the file's size.
pub(crate) fn check_archive(path: &Path) -> Result<u64, ImportError> {
    let shown = path.display().to_string();
    let read_err = |source| ImportError::Read {
        path: shown.clone(),
        source,
    };
    let bad = |why: String| ImportError::BadArchive {
        path: shown.clone(),
        why,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let mut magic = [0u8; 2];
    if file.read_exact(&mut magic).is_err() || magic != [0x1f, 0x8b] {
        return Err(bad(format!(
            "it is not gzip-compressed ({size} bytes{}); Alpine's GCE download is the `.tar.gz` (not the qcow2 or vhd)",
            if size >= 2 {
                format!(", starting {:02x} {:02x}", magic[0], magic[1])
            } else {
                String::new()
            }
        )));
    }
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut tar = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    // Pax and GNU long-name headers may come before the first file: skip a few.
    for _ in 0..4 {
        let mut header = [0u8; 512];
        if let Err(e) = tar.read_exact(&mut header) {
            return Err(bad(format!(
                "its gzip stream does not hold a tar header ({e})"
            )));
        }
        if header.iter().all(|b| *b == 0) {
            return Err(bad("the tar archive is empty".into()));
        }
        let field = |r: std::ops::Range<usize>| {
            let f = &header[r];
            let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
            String::from_utf8_lossy(&f[..end]).into_owned()
        };
        let mut name = field(0..100);
        if header[257..262] == *b"ustar" {
            let prefix = field(345..500);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
        }
        let checksum: u64 = header
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    *b as u64
                }
            })
            .sum();
        let stated = u64::from_str_radix(field(148..156).trim(), 8).ok();
        if stated != Some(checksum) {
            return Err(bad(
                "its gzip stream does not hold a tar archive (the first header's checksum is wrong)"
                    .into(),
            ));
        }
        match header[156] {
            b'x' | b'g' | b'L' | b'K' => {
                let size = u64::from_str_radix(field(124..136).trim(), 8)
                    .map_err(|_| bad("a tar header's size is unreadable".into()))?;
                let padded = size.div_ceil(512) * 512;
                std::io::copy(&mut (&mut tar).take(padded), &mut std::io::sink())
                    .map_err(|e| bad(format!("its tar stream ends early ({e})")))?;
                continue;
            }
            _ => {}
        }
        let plain = name.trim_start_matches("./");
        if plain == "disk.raw" {
            return Ok(size);
        }
        return Err(bad(format!(
            "its first file is `{name}`, and Compute Engine needs a tar of one file named `disk.raw` (e.g. `tar --format=oldgnu -Sczf image.tar.gz disk.raw`); Alpine's GCE download is one"
        )));
    }
    Err(bad("no file in its first tar headers".into()))
}

/// The file name a URL or path ends with.
pub(crate) fn file_name_of(source: &str) -> String {
    let s = source.split(['?', '#']).next().unwrap_or(source);
    s.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(s)
        .to_string()
}

/// Downloads `url` into `dir` (streamed; progress on stderr), returning the file.
pub(crate) async fn download(
    url: &str,
    dir: &Path,
    printer: Printer,
) -> Result<PathBuf, ImportError> {
    let failed = |why: String, source: Option<BoxError>| ImportError::Download {
        url: url.to_string(),
        why,
        source,
    };
    let name = file_name_of(url);
    let name = if name.is_empty() {
        "download.tar.gz".to_string()
    } else {
        name
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| failed(format!("creating {}", dir.display()), Some(Box::new(e))))?;
    let dest = dir.join(&name);
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| failed("setting up the HTTP client".into(), Some(Box::new(e))))?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .map_err(|e| failed("the request failed".into(), Some(Box::new(e))))?;
    if !resp.status().is_success() {
        return Err(failed(format!("HTTP {}", resp.status()), None));
    }
    let total = resp.content_length();
    printer.status(format!(
        "downloading {url} ({})",
        total.map_or("size unknown".into(), mib)
    ));
    let mut file = tokio::fs::File::create(&dest)
        .await
        .map_err(|e| failed(format!("creating {}", dest.display()), Some(Box::new(e))))?;
    let mut got: u64 = 0;
    let mut shown: u64 = 0;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                let _ = tokio::fs::remove_file(&dest).await;
                return Err(failed(
                    format!("the transfer broke after {}", mib(got)),
                    Some(Box::new(e)),
                ));
            }
        };
        if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut file, &chunk).await {
            let _ = tokio::fs::remove_file(&dest).await;
            return Err(failed(
                format!("writing {}", dest.display()),
                Some(Box::new(e)),
            ));
        }
        got += chunk.len() as u64;
        let step = total.map_or(64 << 20, |t| (t / 10).max(1 << 20));
        if got - shown >= step {
            shown = got;
            printer.status(format!("downloaded {}{}", mib(got), of(total)));
        }
    }
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(|e| failed(format!("writing {}", dest.display()), Some(Box::new(e))))?;
    if let Some(t) = total
        && t != got
    {
        let _ = tokio::fs::remove_file(&dest).await;
        return Err(failed(
            format!("got {got} of the {t} bytes announced"),
            None,
        ));
    }
    printer.status(format!("downloaded {} to {}", mib(got), dest.display()));
    Ok(dest)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn of(total: Option<u64>) -> String {
    total.map_or(String::new(), |t| format!(" of {}", mib(t)))
}

/// A file as the Storage client reads it, saying how far the upload got.
struct Progress {
    file: tokio::fs::File,
    size: u64,
    sent: Arc<AtomicU64>,
    shown: u64,
    printer: Printer,
}

impl StreamingSource for Progress {
    type Error = std::io::Error;

    async fn next(&mut self) -> Option<Result<bytes::Bytes, Self::Error>> {
        let mut buf = vec![0u8; 256 * 1024];
        match tokio::io::AsyncReadExt::read(&mut self.file, &mut buf).await {
            Err(e) => Some(Err(e)),
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                let sent = self.sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                if sent - self.shown >= (self.size / 10).max(8 << 20) {
                    self.shown = sent;
                    self.printer
                        .status(format!("uploaded {}{}", mib(sent), of(Some(self.size))));
                }
                Some(Ok(bytes::Bytes::from(buf)))
            }
        }
    }

    async fn size_hint(&self) -> Result<SizeHint, Self::Error> {
        Ok(SizeHint::with_exact(self.size))
    }
}

impl Seek for Progress {
    type Error = std::io::Error;

    async fn seek(&mut self, offset: u64) -> Result<(), Self::Error> {
        use tokio::io::AsyncSeekExt;
        self.file.seek(std::io::SeekFrom::Start(offset)).await?;
        // A resumed upload sends from `offset` again.
        self.sent.store(offset, Ordering::Relaxed);
        self.shown = self.shown.min(offset);
        Ok(())
    }
}

/// Cloud Storage's JSON API, as cwo calls it by hand (see the module comment).
struct StorageApi {
    http: reqwest::Client,
    /// `…/storage/v1`.
    base: String,
    credentials: Option<google_cloud_auth::credentials::Credentials>,
}

impl StorageApi {
    fn new(endpoint: &str, credentials: &str) -> Result<StorageApi, ImportError> {
        let failed = |message: String, source: Option<BoxError>| ImportError::Storage {
            what: "setting up the Cloud Storage client".into(),
            status: None,
            message,
            source,
        };
        let credentials = if credentials == "anonymous" {
            None
        } else {
            Some(
                google_cloud_auth::credentials::Builder::default()
                    .build()
                    .map_err(|e| {
                        failed(
                            "no Application Default Credentials".into(),
                            Some(Box::new(e)),
                        )
                    })?,
            )
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| failed("the HTTP client".into(), Some(Box::new(e))))?;
        Ok(StorageApi {
            http,
            base: format!("{}/storage/v1", storage_endpoint(endpoint)),
            credentials,
        })
    }

    /// One JSON call: the answer's status and JSON body (`Null` when it has none).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<(u16, Value), ImportError> {
        let failed = |message: String, source: Option<BoxError>| ImportError::Storage {
            what: what.to_string(),
            status: None,
            message,
            source,
        };
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(c) = &self.credentials {
            let headers = match c.headers(http::Extensions::new()).await {
                Ok(google_cloud_auth::credentials::CacheableResource::New { data, .. }) => data,
                Ok(google_cloud_auth::credentials::CacheableResource::NotModified) => {
                    return Err(failed("the credentials gave no token".into(), None));
                }
                Err(e) => {
                    return Err(failed(
                        "the credentials gave no token".into(),
                        Some(Box::new(e)),
                    ));
                }
            };
            req = req.headers(headers);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| failed("the request failed".into(), Some(Box::new(e))))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status, value))
    }
}

/// Cloud Storage's error message in a JSON error body.
fn message_of(status: u16, body: &Value) -> String {
    body.pointer("/error/message")
        .and_then(|m| m.as_str())
        .map(|m| format!("HTTP {status}: {m}"))
        .unwrap_or_else(|| format!("HTTP {status}"))
}

fn storage_endpoint(endpoint: &str) -> String {
    if endpoint.is_empty() {
        RAW_DISK_HOST.to_string()
    } else {
        endpoint.trim_end_matches('/').to_string()
    }
}

/// The lifecycle rule an import bucket gets: objects a day old are deleted
/// (https://cloud.google.com/storage/docs/lifecycle: `age` is in days).
pub(crate) fn lifecycle() -> Value {
    json!({"rule": [{"action": {"type": "Delete"}, "condition": {"age": 1}}]})
}

impl GcpProvider {
    /// Imports an Alpine release archive (already checked with [`check_archive`]): bucket,
    /// upload, `images.insert`, the upload deleted whatever happened. `source` is what the
    /// user named (file or URL), for the report.
    pub(crate) async fn import_alpine(
        &self,
        source: &str,
        file: &Path,
        rel: &AlpineRelease,
        printer: Printer,
    ) -> Result<Imported, ImportError> {
        let s = &self.settings;
        if s.project.is_empty() {
            return Err(
                ProviderError::InvalidSpec("cwo image import needs gcp.project".into()).into(),
            );
        }
        let report = |image: ImageInfo| Imported {
            schema_version: 1,
            image,
            family: rel.family.clone(),
            image_setting: format!("projects/{}/global/images/family/{}", s.project, rel.family),
            ssh_user: ALPINE_LOGIN.into(),
            source: source.to_string(),
            firmware: rel.firmware,
            guest_os_features: guest_os_features(rel.firmware)
                .iter()
                .map(|t| t.name().unwrap_or_default().to_string())
                .collect(),
            upload: String::new(),
            uploaded_bytes: 0,
            bucket_created: false,
            upload_deleted: true,
            already_existed: false,
        };
        if let Some(existing) = self.get_image(&rel.image).await? {
            printer.status(format!(
                "image {} exists already ({}): nothing to upload",
                existing.name, existing.status
            ));
            return Ok(Imported {
                already_existed: true,
                ..report(existing)
            });
        }
        let api = StorageApi::new(&s.storage_endpoint, &s.credentials)?;
        let bucket = s.image_bucket();
        let bucket_created = self.ensure_bucket(&api, &bucket, printer).await?;
        let object = format!(
            "cwo-import-{}-{}.tar.gz",
            rel.image,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let uploaded = self.upload(file, &bucket, &object, printer).await;
        let outcome = match uploaded {
            Ok(bytes) => self
                .insert_imported(rel, &bucket, &object, printer)
                .await
                .map(|i| (i, bytes)),
            Err(e) => Err(e),
        };
        // The upload goes whatever happened (a failed upload may have left the object).
        let deleted = self.delete_upload(&api, &bucket, &object).await;
        let upload_deleted = match &deleted {
            Ok(()) => true,
            Err(e) => {
                printer.warn(format!(
                    "the upload gs://{bucket}/{object} could not be deleted ({e}); the bucket's lifecycle rule deletes it within a day, or run `gcloud storage rm gs://{bucket}/{object}`"
                ));
                false
            }
        };
        let (image, bytes) = outcome?;
        Ok(Imported {
            upload: format!("gs://{bucket}/{object}"),
            uploaded_bytes: bytes,
            bucket_created,
            upload_deleted,
            ..report(image)
        })
    }

    /// The bucket, created (with the lifecycle rule, in gcp.zones' region) when missing.
    /// Returns whether it was created.
    async fn ensure_bucket(
        &self,
        api: &StorageApi,
        bucket: &str,
        printer: Printer,
    ) -> Result<bool, ImportError> {
        let what = format!("reading bucket {bucket}");
        let (status, body) = api
            .call(
                reqwest::Method::GET,
                &format!("/b/{}", encode(bucket)),
                None,
                &what,
            )
            .await?;
        match status {
            200 => {
                let has_rule = body
                    .pointer("/lifecycle/rule")
                    .and_then(|r| r.as_array())
                    .is_some_and(|rules| {
                        rules.iter().any(|r| {
                            r.pointer("/action/type").and_then(|t| t.as_str()) == Some("Delete")
                                && r.pointer("/condition/age").is_some()
                        })
                    });
                if !has_rule {
                    printer.warn(format!(
                        "bucket {bucket} has no lifecycle rule deleting old objects: cwo deletes its upload itself, but one left by an interrupted import stays (and is billed) until deleted"
                    ));
                }
                return Ok(false);
            }
            404 => {}
            _ => {
                return Err(ImportError::Storage {
                    what,
                    status: Some(status),
                    message: message_of(status, &body),
                    source: None,
                });
            }
        }
        let location = self
            .settings
            .zones
            .first()
            .map(|z| crate::cost::region_of(z).to_string())
            .unwrap_or_else(|| "US".into());
        printer.status(format!(
            "creating bucket {bucket} in {location} (uploads deleted after a day)"
        ));
        let what = format!("creating bucket {bucket}");
        let insert = json!({
            "name": bucket,
            "location": location,
            "lifecycle": lifecycle(),
            "labels": {"cwo-managed": "true"},
        });
        let (status, body) = api
            .call(
                reqwest::Method::POST,
                &format!("/b?project={}", encode(&self.settings.project)),
                Some(&insert),
                &what,
            )
            .await?;
        match status {
            200 => Ok(true),
            _ => Err(ImportError::Storage {
                what,
                status: Some(status),
                message: message_of(status, &body),
                source: None,
            }),
        }
    }

    /// Uploads `file` through the `google-cloud-storage` crate; returns the bytes sent.
    async fn upload(
        &self,
        file: &Path,
        bucket: &str,
        object: &str,
        printer: Printer,
    ) -> Result<u64, ImportError> {
        let s = &self.settings;
        let what = format!("uploading to gs://{bucket}/{object}");
        let failed =
            |status: Option<u16>, message: String, source: Option<BoxError>| ImportError::Storage {
                what: what.clone(),
                status,
                message,
                source,
            };
        let mut builder = google_cloud_storage::client::Storage::builder();
        if !s.storage_endpoint.is_empty() {
            builder = builder.with_endpoint(storage_endpoint(&s.storage_endpoint));
        }
        if s.credentials == "anonymous" {
            builder = builder.with_credentials(
                google_cloud_auth::credentials::anonymous::Builder::new().build(),
            );
        }
        let client = builder.build().await.map_err(|e| {
            failed(
                None,
                "cannot set up the Cloud Storage client (credentials?)".into(),
                Some(Box::new(e)),
            )
        })?;
        let handle = tokio::fs::File::open(file)
            .await
            .map_err(|e| ImportError::Read {
                path: file.display().to_string(),
                source: e,
            })?;
        let size = handle
            .metadata()
            .await
            .map_err(|e| ImportError::Read {
                path: file.display().to_string(),
                source: e,
            })?
            .len();
        printer.status(format!("uploading {} to gs://{bucket}/{object}", mib(size)));
        let source = Progress {
            file: handle,
            size,
            sent: Arc::new(AtomicU64::new(0)),
            shown: 0,
            printer,
        };
        // `ifGenerationMatch = 0` (the object must not exist yet) makes the write idempotent,
        // so the client may retry and resume it.
        let written = client
            .write_object(format!("projects/_/buckets/{bucket}"), object, source)
            .set_if_generation_match(0)
            .set_content_type("application/gzip")
            .send_unbuffered()
            .await
            .map_err(|e| {
                let status = e.http_status_code();
                failed(status, "the upload failed".into(), Some(Box::new(e)))
            })?;
        Ok(written.size.max(0) as u64)
    }

    /// `images.insert` from the uploaded object, then waits for the image to be READY.
    async fn insert_imported(
        &self,
        rel: &AlpineRelease,
        bucket: &str,
        object: &str,
        printer: Printer,
    ) -> Result<ImageInfo, ImportError> {
        let labels = BTreeMap::from([
            ("cwo-managed".to_string(), "true".to_string()),
            ("cwo-project".to_string(), self.project_slug.clone()),
        ]);
        let body = import_body(rel, bucket, object, labels);
        printer.status(format!(
            "creating image {} (family {}) from gs://{bucket}/{object}",
            rel.image, rel.family
        ));
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut image = self.insert_image(body, &request_id).await?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while image.status == "PENDING" {
            if tokio::time::Instant::now() > deadline {
                return Err(ProviderError::Transient(format!(
                    "image {} is still PENDING {} after its insert",
                    rel.image,
                    humantime::format_duration(READY_TIMEOUT)
                ))
                .into());
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            image = self.get_image(&rel.image).await?.ok_or_else(|| {
                ProviderError::NotFound(format!("image {} vanished while PENDING", rel.image))
            })?;
        }
        if image.status != "READY" {
            return Err(ProviderError::InvalidSpec(format!(
                "image {} ended {} (Compute could not read the disk: is it an x86_64/arm64 GCE build of Alpine?)",
                rel.image, image.status
            ))
            .into());
        }
        Ok(image)
    }

    /// Deletes the uploaded object (gone already counts as deleted).
    async fn delete_upload(
        &self,
        api: &StorageApi,
        bucket: &str,
        object: &str,
    ) -> Result<(), ImportError> {
        let what = format!("deleting gs://{bucket}/{object}");
        let path = format!("/b/{}/o/{}", encode(bucket), encode(object));
        let mut tries = 0;
        loop {
            let (status, body) = api
                .call(reqwest::Method::DELETE, &path, None, &what)
                .await?;
            match status {
                200 | 204 | 404 => return Ok(()),
                429 | 500..=599 if tries < 3 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(500 << tries)).await;
                }
                _ => {
                    return Err(ImportError::Storage {
                        what,
                        status: Some(status),
                        message: message_of(status, &body),
                        source: None,
                    });
                }
            }
        }
    }
}

/// Whether `image` (gcp.image) names an Alpine image of `project` itself, as
/// `(is a family, name)`: `projects/P/global/images/family/F`, `projects/P/global/images/N`,
/// `global/images/…` (the project implied), or a full API URL of those.
pub(crate) fn own_alpine_image(image: &str, project: &str) -> Option<(bool, String)> {
    let path = image
        .split_once("/compute/v1/")
        .map_or(image, |(_, p)| p)
        .trim_start_matches('/');
    let rest = if let Some(r) = path.strip_prefix("global/images/") {
        r
    } else {
        let r = path.strip_prefix("projects/")?;
        let (p, r) = r.split_once('/')?;
        if p != project {
            return None;
        }
        r.strip_prefix("global/images/")?
    };
    let (family, name) = match rest.strip_prefix("family/") {
        Some(f) => (true, f),
        None => (false, rest),
    };
    (!name.is_empty() && !name.contains('/') && name.contains("alpine"))
        .then(|| (family, name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpine_file_names_become_compute_names_and_families() {
        let r = alpine_release("gcp_alpine-3.22.1-x86_64-uefi-tiny-r0.raw.tar.gz", None).unwrap();
        assert_eq!(r.image, "alpine-3-22-1-x86-64-uefi-tiny-r0");
        assert_eq!(r.family, "alpine-3-22");
        assert_eq!(r.firmware, Firmware::Uefi);
        assert_eq!(r.arch, Some("X86_64"));
        assert_eq!(r.version.as_deref(), Some("3.22.1"));
        let arm = alpine_release("alpine-3.21.0-aarch64-uefi-tiny-r0.tar.gz", None).unwrap();
        assert_eq!(arm.family, "alpine-3-21-arm64");
        let bios = alpine_release("alpine-3.20.3-x86_64-bios-tiny-r0.tar.gz", None).unwrap();
        assert_eq!(bios.firmware, Firmware::Bios);
        assert!(matches!(
            alpine_release("disk.tar.gz", None),
            Err(ImportError::Unclear(_))
        ));
        let odd = alpine_release("9.tar.gz", Some(Firmware::Bios)).unwrap();
        assert_eq!(odd.image, "alpine-9");
        assert_eq!(odd.family, "cwo-alpine");
        let long = image_name_from(&format!("alpine-{}.tar.gz", "x".repeat(80)));
        assert!(long.len() <= 63 && !long.ends_with('-'));
    }

    #[test]
    fn uefi_is_claimed_for_uefi_builds_only() {
        use gce::guest_os_feature::Type;
        assert!(guest_os_features(Firmware::Uefi).contains(&Type::UefiCompatible));
        assert!(!guest_os_features(Firmware::Bios).contains(&Type::UefiCompatible));
        assert!(guest_os_features(Firmware::Bios).contains(&Type::Gvnic));
    }

    #[test]
    fn only_alpine_images_of_the_own_project_are_recognised() {
        assert_eq!(
            own_alpine_image("projects/p/global/images/family/alpine-3-22", "p"),
            Some((true, "alpine-3-22".into()))
        );
        assert_eq!(
            own_alpine_image(
                "https://www.googleapis.com/compute/v1/projects/p/global/images/alpine-x",
                "p"
            ),
            Some((false, "alpine-x".into()))
        );
        assert_eq!(
            own_alpine_image("global/images/family/cwo-alpine", "p"),
            Some((true, "cwo-alpine".into()))
        );
        assert_eq!(
            own_alpine_image("projects/q/global/images/family/alpine-3-22", "p"),
            None
        );
        assert_eq!(
            own_alpine_image("projects/debian-cloud/global/images/family/debian-12", "p"),
            None
        );
    }

    #[test]
    fn raw_disk_sources_are_storage_urls() {
        assert_eq!(
            raw_disk_source("b", "a b.tar.gz"),
            "https://storage.googleapis.com/b/a%20b.tar.gz"
        );
    }
}
