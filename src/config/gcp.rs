//! `[gcp]`: the project, zones and VM shape for `provider = "gcp"` (and terraform's VMs).

use std::time::Duration;

use serde::{Deserialize, Serialize};
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GcpSettings {
    /// The GCP project VMs are created in.
    pub project: String,
    /// Zones to try, in order; a zone out of capacity falls through to the next. Never empty.
    #[serde(deserialize_with = "zone_list")]
    pub zones: Vec<String>,
    pub machine_type: String,
    /// Boot image: a family or image path (Debian 12 by default; an Alpine image you imported;
    /// Ubuntu minimal).
    pub image: String,
    /// Boot workers from an image `cwo image build` baked: "auto" (the newest image in
    /// `image_family` baked from exactly the current settings, else `image` and the full
    /// bootstrap), "always" (such an image or no worker at all), "never" (always `image`).
    pub use_image: UseImage,
    /// The image family `cwo image build` adds its images to.
    #[serde(deserialize_with = "image_family")]
    pub image_family: String,
    /// The Cloud Storage bucket `cwo image import` uploads a disk through ("" = "cwo-images-"
    /// followed by gcp.project); created when missing, the upload deleted after a day.
    pub image_bucket: String,
    /// The Cloud Storage endpoint ("" = Google's). For private endpoints and tests.
    pub storage_endpoint: String,
    pub disk_size_gb: u32,
    /// pd-standard (free-tier eligible) or pd-balanced.
    pub disk_type: String,
    /// Spot VMs: cheaper, can be preempted, never free tier.
    pub spot: bool,
    /// Hard lifetime enforced by GCE (`maxRunDuration` + DELETE): the VM dies even if cwo does.
    /// "none" turns it off, on purpose.
    #[serde(with = "ttl_str")]
    pub ttl: Option<Duration>,
    pub network: String,
    /// Who may reach the VMs' SSH port: a CIDR, or "" to detect this machine's public address.
    pub ssh_source: String,
    /// Login on the VM (its key goes into the instance's `ssh-keys` metadata).
    pub ssh_user: String,
    pub ssh_port: u16,
    /// The Compute API endpoint ("" = Google's). For emulators, private endpoints and tests.
    pub endpoint: String,
    /// The Secret Manager endpoint ("" = Google's).
    pub secrets_endpoint: String,
    /// "" = Application Default Credentials; "anonymous" for emulators and tests.
    pub credentials: String,
    /// The Cloud Billing account `cwo budget alert` puts the project's budget on (an ID such as
    /// "012345-6789AB-CDEF01"; "" = none: `--billing-account` then, and `cwo doctor` warns).
    pub billing_account: String,
    /// The Cloud Billing Budget API endpoint. For private endpoints and tests.
    pub billing_endpoint: String,
    /// The Cloud Resource Manager endpoint (the project number a budget's scope is written with).
    pub resourcemanager_endpoint: String,
}

impl Default for GcpSettings {
    fn default() -> Self {
        GcpSettings {
            project: String::new(),
            zones: vec![
                "us-central1-a".into(),
                "us-central1-b".into(),
                "us-central1-c".into(),
            ],
            machine_type: "e2-micro".into(),
            image: "projects/debian-cloud/global/images/family/debian-12".into(),
            use_image: UseImage::Auto,
            image_family: "cwo-worker".into(),
            image_bucket: String::new(),
            storage_endpoint: String::new(),
            disk_size_gb: 10,
            disk_type: "pd-standard".into(),
            spot: false,
            ttl: Some(Duration::from_secs(90 * 60)),
            network: "global/networks/default".into(),
            ssh_source: String::new(),
            ssh_user: "cwo-admin".into(),
            ssh_port: 22,
            endpoint: String::new(),
            secrets_endpoint: String::new(),
            credentials: String::new(),
            billing_account: String::new(),
            billing_endpoint: "https://billingbudgets.googleapis.com".into(),
            resourcemanager_endpoint: "https://cloudresourcemanager.googleapis.com".into(),
        }
    }
}

/// `gcp.use_image`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UseImage {
    Auto,
    Always,
    Never,
}

impl GcpSettings {
    /// The bucket `cwo image import` uploads through.
    pub(crate) fn image_bucket(&self) -> String {
        if self.image_bucket.is_empty() {
            format!("cwo-images-{}", self.project)
        } else {
            self.image_bucket.clone()
        }
    }
}

/// An image family is a resource name: lowercase letters, digits and hyphens, starting with a
/// letter, at most 63 characters (Compute Engine's naming rule, RFC 1035).
fn image_family<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let f = String::deserialize(d)?;
    let ok = f.len() <= 63
        && f.starts_with(|c: char| c.is_ascii_lowercase())
        && !f.ends_with('-')
        && f.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Err(serde::de::Error::custom(format!(
            "`{f}` is not an image family name: lowercase letters, digits and hyphens, starting with a letter, at most 63 characters (e.g. \"cwo-worker\")"
        )));
    }
    Ok(f)
}

mod ttl_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_str("none"),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "none" {
            return Ok(None);
        }
        let ttl = humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}); write it like \"4h\", or \"none\" to turn the TTL off"
            ))
        })?;
        if ttl < Duration::from_secs(30) || ttl > Duration::from_secs(120 * 86400) {
            return Err(serde::de::Error::custom(
                "GCE accepts a TTL between 30s and 120 days (or \"none\")",
            ));
        }
        Ok(Some(ttl))
    }
}
fn zone_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if v.iter().all(|z| z.trim().is_empty()) {
        return Err(serde::de::Error::custom(
            "gcp.zones is empty: cwo would have no zone to create VMs in; list at least one, e.g. zones = [\"us-central1-a\"], or remove the line for the default (us-central1-a, -b, -c)",
        ));
    }
    if let Some(i) = v.iter().position(|z| z.trim().is_empty() || z.trim() != z) {
        return Err(serde::de::Error::custom(format!(
            "gcp.zones entry {} is {:?}, not a zone name; write names like \"us-central1-a\"",
            i + 1,
            v[i]
        )));
    }
    Ok(v)
}
