//! How every Google API client cwo builds (Compute, Secret Manager, Resource Manager) is pointed
//! at its endpoint and credentials.

/// Points a Google API client builder at an endpoint ("" = Google's) with the configured
/// credentials ("" = Application Default Credentials, "anonymous" for emulators and tests).
pub(crate) fn configure<F, Cr>(
    builder: google_cloud_gax::client_builder::ClientBuilder<F, Cr>,
    endpoint: &str,
    credentials: &str,
) -> google_cloud_gax::client_builder::ClientBuilder<F, Cr>
where
    google_cloud_auth::credentials::Credentials: Into<Cr>,
{
    // cwo retries on its own terms (by error kind, with progress and one deadline per
    // operation); the client's built-in policy (up to 10 tries in 60 s per call) would nest
    // inside those loops and keep a failing call silent for minutes.
    let mut b = builder.with_retry_policy(google_cloud_gax::retry_policy::NeverRetry);
    if !endpoint.is_empty() {
        b = b.with_endpoint(endpoint.to_string());
    }
    if credentials == "anonymous" {
        b = b.with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
    }
    b
}
