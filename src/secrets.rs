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

/// A [`Masker`] over a stream that arrives in chunks cut anywhere: a secret split across two
/// chunks is masked too. The bytes at a chunk's end that could begin a secret wait for the next
/// chunk (or [`StreamMask::finish`]); everything else comes out at once, same length, so a
/// masked copy of the stream keeps its offsets.
#[derive(Debug)]
pub(crate) struct StreamMask<'a> {
    masker: &'a Masker,
    /// Held back: raw bytes, and which of them an earlier chunk's secret already covered.
    held: Vec<u8>,
    starred: Vec<bool>,
}

impl<'a> StreamMask<'a> {
    pub(crate) fn new(masker: &'a Masker) -> StreamMask<'a> {
        StreamMask {
            masker,
            held: Vec::new(),
            starred: Vec::new(),
        }
    }

    /// The masked bytes that can be written now.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        if self.masker.secrets.is_empty() {
            return bytes.to_vec();
        }
        self.held.extend_from_slice(bytes);
        let mut masked = self.masker.mask(&self.held);
        for (i, s) in self.starred.iter().enumerate() {
            if *s {
                masked[i] = b'*';
            }
        }
        let keep = self.masker.open_prefix(&self.held);
        let cut = self.held.len() - keep;
        self.starred = (cut..self.held.len())
            .map(|i| masked[i] == b'*' && self.held[i] != b'*')
            .collect();
        self.held.drain(..cut);
        masked.truncate(cut);
        masked
    }

    /// What is still held back, masked (the stream ended).
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        let mut masked = self.masker.mask(&self.held);
        for (i, s) in self.starred.iter().enumerate() {
            if *s {
                masked[i] = b'*';
            }
        }
        self.held.clear();
        self.starred.clear();
        masked
    }
}

impl Masker {
    /// The length of the longest end of `data` that a secret starts with and goes beyond.
    fn open_prefix(&self, data: &[u8]) -> usize {
        let longest = self.secrets.first().map_or(0, Vec::len);
        (1..longest.min(data.len() + 1))
            .rev()
            .find(|&k| {
                let tail = &data[data.len() - k..];
                self.secrets
                    .iter()
                    .any(|s| s.len() > k && s.starts_with(tail))
            })
            .unwrap_or(0)
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
    #[error("{key} resolves to an empty value: an empty secret is one anyone has")]
    Empty { key: String },
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

/// A setting that guards something (a token, an HMAC key): "" = not set; otherwise resolved and
/// trimmed (a Secret Manager value often ends with a newline), and a reference to nothing is
/// refused rather than taken as a secret.
pub(crate) async fn resolve_nonempty(
    key: &str,
    reference: &str,
    gcp: &GcpSettings,
) -> Result<Option<String>, SecretError> {
    if reference.is_empty() {
        return Ok(None);
    }
    let value = resolve_one(key, reference, gcp).await?;
    match value.trim() {
        "" => Err(SecretError::Empty {
            key: key.to_string(),
        }),
        v => Ok(Some(v.to_string())),
    }
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
    fn a_secret_cut_across_chunks_is_masked_and_the_stream_keeps_its_length() {
        let m = Masker::new(["s3cret-value".to_string(), "value-two".to_string()]);
        let text = b"a s3cret-value, then value-two and s3cret-val at the end";
        let whole = m.mask(text);
        // Every way of cutting the stream in two, and in single bytes.
        for cut in 0..=text.len() {
            let mut s = StreamMask::new(&m);
            let mut out = s.push(&text[..cut]);
            out.extend(s.push(&text[cut..]));
            out.extend(s.finish());
            assert_eq!(out, whole, "cut at {cut}");
        }
        let mut s = StreamMask::new(&m);
        let mut out: Vec<u8> = text.iter().flat_map(|b| s.push(&[*b])).collect();
        out.extend(s.finish());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(whole).unwrap()
        );
        // Only what could start a secret waits: a plain line comes out at once.
        let mut s = StreamMask::new(&m);
        assert_eq!(s.push(b"plain line\n"), b"plain line\n");
        assert_eq!(s.push(b"ends with s3c"), b"ends with ");
        assert_eq!(s.push(b"ond\n"), b"s3cond\n");
        // Overlapping secrets: a byte covered once stays covered.
        let o = Masker::new(["abcd".to_string(), "cdXY".to_string()]);
        let mut s = StreamMask::new(&o);
        let mut out = s.push(b"..abcd");
        out.extend(s.push(b"ZZ"));
        out.extend(s.finish());
        assert_eq!(String::from_utf8(out).unwrap(), "..****ZZ");
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
