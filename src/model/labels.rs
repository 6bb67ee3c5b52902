//! The labels every billed resource carries (DESIGN invariant 3), and the selector that finds a
//! project's workers by them.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;

/// The label that carries a worker's expiry: when its TTL ends, in Unix seconds, or "never".
pub(crate) const EXPIRES_LABEL: &str = "cwo-expires-at";
/// On a VM booted from an image `cwo image build` baked: that image's name.
pub(crate) const IMAGE_LABEL: &str = "cwo-image";

/// On an image builder `cwo image build` stopped to image its disk: when it was stopped (Unix
/// seconds). A stopped VM is otherwise deleted at once by every command that sees it; this one
/// is spared for [`IMAGING_GRACE`] after the mark, while its disk becomes an image.
pub(crate) const IMAGING_LABEL: &str = "cwo-imaging";
/// How long a marked builder may stay stopped; the build deletes it long before (an image of a
/// 10 GB disk takes minutes), a build killed meanwhile leaves it to the next sweep after this.
pub(crate) const IMAGING_GRACE: Duration = Duration::from_secs(60 * 60);

/// The `cwo-expires-at` value for a worker created now with `ttl`.
pub(crate) fn expires_at(ttl: Option<Duration>) -> String {
    match ttl {
        Some(ttl) => (Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default())
            .timestamp()
            .to_string(),
        None => "never".into(),
    }
}

/// The labels every worker carries from its creation on, whatever the provider: how the reaper,
/// `status` and the billing export find it and attribute its cost. `cwo up --plan` shows these.
pub(crate) fn worker_labels(
    project_slug: &str,
    name: &str,
    machine_type: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("cwo-managed".to_string(), "true".to_string()),
        ("cwo-project".to_string(), project_slug.to_string()),
        ("cwo-worker".to_string(), name.to_string()),
        ("cwo-machine".to_string(), machine_type.to_string()),
    ])
}

/// The selector that finds every worker of the project `project_slug`: the two labels all of
/// them carry, whatever the provider.
pub(crate) fn project_selector(project_slug: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("cwo-managed".to_string(), "true".to_string()),
        ("cwo-project".to_string(), project_slug.to_string()),
    ])
}
