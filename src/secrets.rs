//! Secrets for the agent: `sm://projects/P/secrets/S/versions/V` (Secret Manager) or `env:NAME`
//! (the controller's environment). Fetched by the controller, handed to the agent process only
//! (never metadata, argv or the worker's disk), and masked in every log line cwo writes or shows.

use std::collections::BTreeMap;

use crate::config::GcpSettings;

/// Replaces secret values in output with `*` of the same byte length, so a masked log keeps the
/// byte offsets of the worker's log (resume offsets stay exact).
#[derive(Debug, Clone, Default)]
pub(crate) struct Masker {
    secrets: Vec<Vec<u8>>,
}

impl Masker {
    pub(crate) fn new(values: impl IntoIterator<Item = String>) -> Masker {
        let mut secrets: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| v.len() >= 4)
            .map(String::into_bytes)
            .collect();
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Masker { secrets }
    }

    pub(crate) fn mask(&self, data: &[u8]) -> Vec<u8> {
        let mut out = data.to_vec();
        for s in &self.secrets {
            let mut i = 0;
            while i + s.len() <= out.len() {
                if &out[i..i + s.len()] == s.as_slice() {
                    out[i..i + s.len()].fill(b'*');
                    i += s.len();
                } else {
                    i += 1;
                }
            }
        }
        out
    }

    pub(crate) fn mask_str(&self, text: &str) -> String {
        if self.secrets.is_empty() {
            return text.to_string();
        }
        String::from_utf8_lossy(&self.mask(text.as_bytes())).into_owned()
    }
}

/// Why a secret reference could not be resolved: which setting, which reference, and the cause.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{key} = \"env:{var}\" but {var} is not set in cwo's environment")]
    EnvNotSet { key: String, var: String },
    #[error("{key}: `{value}` is not sm://projects/P/secrets/S/versions/V")]
    BadReference { key: String, value: String },
    #[error("{key} must be a secret reference (env:NAME or sm://…), not the secret itself")]
    NotAReference { key: String },
    #[error("Secret Manager client")]
    Client(#[source] google_cloud_gax::client_builder::Error),
    #[error("reading secret {value} for {key}")]
    Access {
        key: String,
        value: String,
        #[source]
        source: google_cloud_gax::error::Error,
    },
    #[error("secret {value} is not UTF-8 text")]
    NotUtf8 { value: String },
}

/// One secret reference resolved by the controller. `key` is the setting it came from (for the
/// error); a plain value is refused, so a secret never sits in a settings file.
pub(crate) async fn resolve_one(
    key: &str,
    value: &str,
    gcp: &GcpSettings,
) -> Result<String, SecretError> {
    let mut sm = None;
    resolve_value(key, value, gcp, &mut sm)
        .await?
        .ok_or_else(|| SecretError::NotAReference {
            key: key.to_string(),
        })
}

/// `Some(secret)` for a reference, `None` for a plain value. `sm` is the Secret Manager client,
/// made on first use.
async fn resolve_value(
    key: &str,
    value: &str,
    gcp: &GcpSettings,
    sm: &mut Option<google_cloud_secretmanager_v1::client::SecretManagerService>,
) -> Result<Option<String>, SecretError> {
    if let Some(var) = value.strip_prefix("env:") {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| SecretError::EnvNotSet {
                key: key.to_string(),
                var: var.to_string(),
            });
    }
    let Some(name) = value.strip_prefix("sm://") else {
        return Ok(None);
    };
    if !name.starts_with("projects/") || !name.contains("/secrets/") || !name.contains("/versions/")
    {
        return Err(SecretError::BadReference {
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    if sm.is_none() {
        let b = crate::util::gcp_api::configure(
            google_cloud_secretmanager_v1::client::SecretManagerService::builder(),
            &gcp.secrets_endpoint,
            &gcp.credentials,
        );
        *sm = Some(b.build().await.map_err(SecretError::Client)?);
    }
    let client = sm.as_ref().expect("built above");
    let resp = client
        .access_secret_version()
        .set_name(name)
        .send()
        .await
        .map_err(|source| SecretError::Access {
            key: key.to_string(),
            value: value.to_string(),
            source,
        })?;
    let data = resp.payload.map(|p| p.data).unwrap_or_default();
    String::from_utf8(data.to_vec())
        .map(Some)
        .map_err(|_| SecretError::NotUtf8 {
            value: value.to_string(),
        })
}

/// `agent.env` with every reference resolved, plus the masker for the secret values.
pub(crate) async fn resolve(
    env: &BTreeMap<String, String>,
    gcp: &GcpSettings,
) -> Result<(Vec<(String, String)>, Masker), SecretError> {
    let mut out = Vec::new();
    let mut secret_values = Vec::new();
    let mut sm = None;
    for (key, value) in env {
        let setting = format!("agent.env.{key}");
        match resolve_value(&setting, value, gcp, &mut sm).await? {
            Some(v) => {
                secret_values.push(v.clone());
                out.push((key.clone(), v));
            }
            None => out.push((key.clone(), value.clone())),
        }
    }
    Ok((out, Masker::new(secret_values)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_length_and_hides_every_occurrence() {
        let m = Masker::new(["s3cret-value".to_string(), "abc".to_string()]);
        let line = b"token=s3cret-value and again s3cret-value; abc stays (too short to mask)";
        let masked = m.mask(line);
        assert_eq!(masked.len(), line.len());
        assert_eq!(
            String::from_utf8(masked).unwrap(),
            "token=************ and again ************; abc stays (too short to mask)"
        );
    }

    #[test]
    fn env_references_resolve_and_missing_ones_fail_clearly() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut env = BTreeMap::new();
        env.insert("PLAIN".to_string(), "1".to_string());
        env.insert("FROM_ENV".to_string(), "env:PATH".to_string());
        let (out, masker) = rt.block_on(resolve(&env, &GcpSettings::default())).unwrap();
        assert_eq!(out[0].1, std::env::var("PATH").unwrap());
        assert_eq!(out[1], ("PLAIN".to_string(), "1".to_string()));
        assert!(
            masker
                .mask_str(&std::env::var("PATH").unwrap())
                .chars()
                .all(|c| c == '*')
        );
        env.insert(
            "MISSING".to_string(),
            "env:CWO_TEST_SURELY_UNSET".to_string(),
        );
        let err = rt
            .block_on(resolve(&env, &GcpSettings::default()))
            .unwrap_err();
        assert!(
            err.to_string().contains("CWO_TEST_SURELY_UNSET is not set"),
            "{err}"
        );
    }
}
