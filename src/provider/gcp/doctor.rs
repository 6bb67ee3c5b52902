//! `cwo doctor` for the gcp provider.

use super::{Clients, GcpProvider, classify, firewall_name};
use crate::config::GcpSettings;
use crate::provider::{Check, CheckStatus};
use crate::util::gcp_api::configure;

/// A check whose outcome is known (`Some`: passed or failed) or could not be read (`None`).
fn check(name: &'static str, ok: Option<bool>, detail: String, fix: &str) -> Check {
    let status = match ok {
        Some(true) => CheckStatus::Ok,
        Some(false) => CheckStatus::Fail,
        None => CheckStatus::Warn,
    };
    Check::new(name, status, detail, fix)
}

fn vcpus(machine: &str) -> f64 {
    match machine {
        "e2-micro" | "e2-small" | "e2-medium" => 2.0,
        m => m
            .rsplit('-')
            .next()
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(2.0),
    }
}

impl GcpProvider {
    /// What `cwo doctor` checks for gcp: credentials, the project, OS Login, the firewall rule,
    /// the budget alert, the vCPU quota for the machine type, and the TTL. Without credentials
    /// or access to the project, nothing further can be checked.
    pub(crate) async fn checks(&self) -> Vec<Check> {
        let s = &self.settings;
        let mut out = Vec::new();
        let (credentials, clients) = self.credentials_check().await;
        out.push(credentials);
        let Some(c) = clients else { return out };
        let project = project_check(c, s).await;
        let reachable = project.status == CheckStatus::Ok;
        out.push(project);
        if !reachable {
            return out;
        }
        out.extend(os_login_check(s).await);
        out.push(self.firewall_check(c).await);
        out.extend(alpine_image_check(c, s).await);
        // Whether the cloud itself alerts on the project's spend (a warning, never a failure).
        out.push(super::budget::doctor_check(s).await);
        out.extend(quota_check(s).await);
        out.push(ttl_check(s));
        out
    }

    async fn credentials_check(&self) -> (Check, Option<&Clients>) {
        match self.clients().await {
            Ok(c) => (
                check(
                    "credentials",
                    Some(true),
                    if self.settings.credentials == "anonymous" {
                        "anonymous (emulator/test endpoint)".into()
                    } else {
                        "Application Default Credentials".into()
                    },
                    "",
                ),
                Some(c),
            ),
            Err(e) => (
                check(
                    "credentials",
                    Some(false),
                    e.to_string(),
                    "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS, and gcp.project",
                ),
                None,
            ),
        }
    }

    async fn firewall_check(&self, c: &Clients) -> Check {
        let s = &self.settings;
        let name = firewall_name(&self.project_slug);
        match c
            .firewalls
            .get()
            .set_project(&s.project)
            .set_firewall(&name)
            .send()
            .await
        {
            Ok(fw) => check(
                "firewall",
                Some(true),
                format!(
                    "{name} allows tcp:{} from {}",
                    s.ssh_port,
                    fw.source_ranges.join(", ")
                ),
                "",
            ),
            Err(e) if e.http_status_code() == Some(404) => check(
                "firewall",
                Some(true),
                format!(
                    "{name} does not exist yet; `cwo up` creates it (SSH from this machine's /32 only)"
                ),
                "",
            ),
            Err(e) => check(
                "firewall",
                Some(false),
                classify(e, "reading the firewall rule", false).one_line(),
                "grant compute.firewalls.get/create",
            ),
        }
    }
}

/// When gcp.image names an Alpine image of the project itself (which only `cwo image import`
/// makes): whether it exists, and if not, how to make it.
async fn alpine_image_check(c: &Clients, s: &GcpSettings) -> Option<Check> {
    let (family, name) = super::import::own_alpine_image(&s.image, &s.project)?;
    let found = if family {
        c.images
            .get_from_family()
            .set_project(&s.project)
            .set_family(&name)
            .send()
            .await
    } else {
        c.images
            .get()
            .set_project(&s.project)
            .set_image(&name)
            .send()
            .await
    };
    let what = if family {
        format!("image family {name}")
    } else {
        format!("image {name}")
    };
    Some(match found {
        Ok(img) => check(
            "alpine image",
            Some(true),
            format!(
                "gcp.image: {what} is {}{}",
                img.name.as_deref().unwrap_or("?"),
                if s.ssh_user == super::import::ALPINE_LOGIN {
                    String::new()
                } else {
                    format!(
                        "; gcp.ssh_user is \"{}\", and Alpine's login is \"{}\"",
                        s.ssh_user,
                        super::import::ALPINE_LOGIN
                    )
                }
            ),
            if s.ssh_user == super::import::ALPINE_LOGIN {
                ""
            } else {
                "set gcp.ssh_user = \"alpine\""
            },
        ),
        Err(e) if e.http_status_code() == Some(404) => check(
            "alpine image",
            Some(false),
            format!(
                "gcp.image names {what} in {}, which does not exist yet: Alpine is not a public Compute Engine image, it is imported",
                s.project
            ),
            &format!(
                "download Alpine's GCE image (the tiny-cloud `.tar.gz`) from {}, run `cwo image import alpine --from <file or URL>`, and set gcp.ssh_user = \"{}\"",
                super::import::ALPINE_CLOUD_URL,
                super::import::ALPINE_LOGIN
            ),
        ),
        Err(e) => check(
            "alpine image",
            None,
            classify(e, &format!("reading {what}"), false).one_line(),
            "grant compute.images.get to check this",
        ),
    })
}

/// Whether the project answers and its instances can be listed.
async fn project_check(c: &Clients, s: &GcpSettings) -> Check {
    let listed = c
        .instances
        .aggregated_list()
        .set_project(&s.project)
        .set_filter("labels.cwo-managed = true")
        .set_max_results(1u32)
        .send()
        .await;
    match listed {
        Ok(_) => check(
            "project",
            Some(true),
            format!("{} answers; instances can be listed", s.project),
            "",
        ),
        Err(e) => check(
            "project",
            Some(false),
            classify(e, "listing instances", false).one_line(),
            &format!("grant {} on the project", super::ROLES),
        ),
    }
}

/// Whether OS Login is forced at project level (cwo's per-worker keys need it off per VM).
async fn os_login_check(s: &GcpSettings) -> Option<Check> {
    let projects = configure(
        google_cloud_compute_v1::client::Projects::builder(),
        &s.endpoint,
        &s.credentials,
    )
    .build()
    .await
    .ok()?;
    Some(match projects.get().set_project(&s.project).send().await {
        Ok(p) => {
            let forced = p
                .common_instance_metadata
                .iter()
                .flat_map(|m| m.items.iter())
                .any(|i| {
                    i.key.as_deref() == Some("enable-oslogin")
                        && i.value
                            .as_deref()
                            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
                });
            if forced {
                check(
                    "os login",
                    Some(true),
                    "enable-oslogin=TRUE at project level; cwo sets FALSE on each VM, which wins unless an org policy enforces OS Login".into(),
                    "if constraints/compute.requireOsLogin is enforced, cwo's per-worker keys cannot log in: exempt the project",
                )
            } else {
                check(
                    "os login",
                    Some(true),
                    "not forced at project level".into(),
                    "",
                )
            }
        }
        Err(e) => check(
            "os login",
            None,
            format!("could not read project metadata: {e}"),
            "grant compute.projects.get to check this",
        ),
    })
}

/// The CPUS quota of the first zone's region: (region, limit, usage). `Ok(None)`: the region
/// lists no CPUS quota.
pub(super) async fn cpus_quota(
    s: &GcpSettings,
) -> Result<Option<(String, f64, f64)>, crate::provider::ProviderError> {
    let Some(zone) = s.zones.first() else {
        return Ok(None);
    };
    let region = crate::cost::region_of(zone).to_string();
    let what = format!("reading the CPUS quota of {region}");
    let regions = configure(
        google_cloud_compute_v1::client::Regions::builder(),
        &s.endpoint,
        &s.credentials,
    )
    .build()
    .await
    .map_err(|e| crate::provider::ProviderError::Transient(format!("{what}: {e}")))?;
    let found = regions
        .get()
        .set_project(&s.project)
        .set_region(&region)
        .send()
        .await
        .map_err(|e| classify(e, &what, false))?;
    Ok(found
        .quotas
        .into_iter()
        .find(|q| q.metric.as_ref().and_then(|m| m.name()) == Some("CPUS"))
        .map(|q| (region, q.limit.unwrap_or(0.0), q.usage.unwrap_or(0.0))))
}

/// How many more workers of the configured machine type the region's CPUS quota has room for
/// (`None`: the region lists no CPUS quota).
pub(super) async fn fleet_room(
    s: &GcpSettings,
) -> Result<Option<crate::provider::Room>, crate::provider::ProviderError> {
    let need = vcpus(&s.machine_type);
    Ok(cpus_quota(s)
        .await?
        .map(|(region, limit, usage)| crate::provider::Room {
            workers: ((limit - usage).max(0.0) / need).floor() as usize,
            why: format!(
                "the CPUS quota of {region}: {} of {limit} free, {need} per {}",
                limit - usage,
                s.machine_type
            ),
        }))
}

/// Whether the first zone's region has the vCPUs the machine type needs free.
async fn quota_check(s: &GcpSettings) -> Option<Check> {
    let zone = s.zones.first()?;
    let region = crate::cost::region_of(zone).to_string();
    let need = vcpus(&s.machine_type);
    Some(match cpus_quota(s).await.ok().flatten() {
        Some((region, limit, usage)) => {
            let free = limit - usage;
            check(
                "quota",
                Some(free >= need),
                format!(
                    "CPUS in {region}: {free} of {limit} free; {} needs {need}",
                    s.machine_type
                ),
                "request more CPUS quota for the region in the console (IAM & Admin > Quotas), or pick another region in gcp.zones",
            )
        }
        None => check(
            "quota",
            None,
            format!("could not read the CPUS quota of {region}"),
            "grant compute.regions.get to check this",
        ),
    })
}

/// Whether Compute Engine deletes a VM cwo loses track of.
fn ttl_check(s: &GcpSettings) -> Check {
    match s.ttl {
        Some(t) => check(
            "ttl",
            Some(true),
            format!(
                "running VMs are deleted by Compute Engine {} after they start (a stopped VM loses that timer: `cwo status`, `cwo run` and `cwo reap` delete stopped workers)",
                humantime::format_duration(t)
            ),
            "",
        ),
        None => check(
            "ttl",
            Some(false),
            "gcp.ttl = \"none\": a VM cwo loses track of runs until `cwo reap` finds it".into(),
            "set gcp.ttl (e.g. \"90m\"), and `cwo schedule install`",
        ),
    }
}
