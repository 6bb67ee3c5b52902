//! `[bootstrap]` and `[watchdog]` settings: how a fresh VM is made ready, and when it turns itself off.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::util::shell::is_env_name;

/// The smallest swap file cwo makes: opencode alone peaks near an e2-micro's RAM.
pub(crate) const MIN_SWAP_MIB: u32 = 1024;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// `native` on cloud VMs (gcp, terraform); `none` on the local provider and on hosts you
    /// already have (cwo does not harden a machine you did not ask it to).
    Auto,
    /// One POSIX sh script over one SSH session.
    Native,
    /// The shipped Ansible playbook (`ansible-playbook` must be on PATH).
    Ansible,
    /// Use the host as it is.
    None,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Auto => "auto",
            Method::Native => "native",
            Method::Ansible => "ansible",
            Method::None => "none",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapSettings {
    pub method: Method,
    /// Swap file size (`/swapfile`): "2G", "1536M", or "off". Never below 1G.
    #[serde(with = "swap_str")]
    pub swap: Option<u32>,
    /// opencode version installed from the npm registry (the musl build on Alpine), or "none".
    pub opencode: String,
    /// Extra packages (same name on apt and apk).
    pub packages: Vec<String>,
    /// The unprivileged user that owns the workspace and runs the agent.
    pub user: String,
    /// The workspace on a bootstrapped worker, owned by `user` (replaces `ssh.workspace` there).
    pub workspace: String,
    /// HTTP(S) proxy the VM downloads packages through ("" = direct). No credentials: the
    /// script is VM metadata on GCE.
    #[serde(deserialize_with = "proxy_url")]
    pub proxy: String,
    /// npm registry the opencode build is fetched from.
    pub npm_registry: String,
    /// Environment defaults for the agent on small machines, written to `/etc/cwo/agent.env`;
    /// `agent.env` still wins. A key set to "" is left out.
    pub agent_env: BTreeMap<String, String>,
    /// Playbook for `method = "ansible"` ("" = the one shipped inside cwo).
    pub ansible_playbook: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WatchdogSettings {
    /// Power off after this many minutes with no agent running and no heartbeat from cwo
    /// (which touches it every minute): at least 5.
    #[serde(deserialize_with = "idle_minutes")]
    pub idle_minutes: u32,
    /// What the watchdog does once no controller has been heard from for `idle_minutes`:
    /// "auto" (stop orphaned agents and leave the VM to its TTL; power off only a cloud VM with
    /// `gcp.ttl = "none"`), "stop-agents", or a shell command run as root when no agent runs
    /// (such as "poweroff", or "logger cwo-watchdog: idle" to see what it would do).
    pub action: String,
}

impl Default for BootstrapSettings {
    fn default() -> Self {
        let mut agent_env = BTreeMap::new();
        // Bun's heap sized for a small VM: opencode peaks ~0.43 GB instead of 0.5–0.75 GB.
        agent_env.insert("BUN_JSC_forceRAMSize".into(), "268435456".into());
        agent_env.insert("OPENCODE_DISABLE_LSP_DOWNLOAD".into(), "1".into());
        BootstrapSettings {
            method: Method::Auto,
            swap: Some(2048),
            opencode: "1.18.33".into(),
            packages: Vec::new(),
            user: "cwo".into(),
            workspace: "/workspace".into(),
            proxy: String::new(),
            npm_registry: "https://registry.npmjs.org".into(),
            agent_env,
            ansible_playbook: PathBuf::new(),
        }
    }
}

impl Default for WatchdogSettings {
    fn default() -> Self {
        WatchdogSettings {
            idle_minutes: 30,
            action: "auto".into(),
        }
    }
}

impl BootstrapSettings {
    /// The agent environment defaults that are written out: set, with a name the shell takes.
    /// The native script and the playbook both write exactly these.
    pub(crate) fn agent_env_defaults(&self) -> impl Iterator<Item = (&String, &String)> {
        self.agent_env
            .iter()
            .filter(|(k, v)| !v.is_empty() && is_env_name(k))
    }
}

/// Why a swap size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwapError {
    #[error("`{0}` is not a size: use e.g. \"2G\", \"1536M\" or \"off\"")]
    NotASize(String),
    #[error(
        "swap `{0}` is below the 1G minimum (opencode peaks near an e2-micro's RAM); use \"1G\" or more, or \"off\""
    )]
    BelowMinimum(String),
}

/// Parses "2G", "1536M", "1024" (MiB) or "off".
pub(crate) fn parse_swap(text: &str) -> Result<Option<u32>, SwapError> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("off") || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'G' | 'g')) => (&t[..i], 1024),
        Some((i, 'M' | 'm')) => (&t[..i], 1),
        _ => (t, 1),
    };
    let n: u32 = num
        .trim()
        .parse()
        .map_err(|_| SwapError::NotASize(t.to_string()))?;
    let mib = n.saturating_mul(mult);
    if mib < MIN_SWAP_MIB {
        return Err(SwapError::BelowMinimum(t.to_string()));
    }
    Ok(Some(mib))
}

fn idle_minutes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let m = u32::deserialize(d)?;
    if m < 5 {
        return Err(serde::de::Error::custom(format!(
            "{m} minutes is too short: cwo touches the heartbeat every minute and a VM being set up has none yet; use 5 or more"
        )));
    }
    Ok(m)
}

fn proxy_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let url = String::deserialize(d)?;
    if url.is_empty() {
        return Ok(url);
    }
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err(serde::de::Error::custom(format!(
            "proxy `{url}` must start with http:// or https://"
        )));
    };
    if rest.split('/').next().unwrap_or("").contains('@') {
        return Err(serde::de::Error::custom(
            "the proxy URL carries credentials, which would end up in the VM's metadata and disk; use a proxy that allows the VMs' addresses instead",
        ));
    }
    Ok(url)
}

mod swap_str {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_str("off"),
            Some(m) if m % 1024 == 0 => s.serialize_str(&format!("{}G", m / 1024)),
            Some(m) => s.serialize_str(&format!("{m}M")),
        }
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_swap(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_never_fires_between_heartbeats() {
        let parse = |m: u32| toml::from_str::<WatchdogSettings>(&format!("idle_minutes = {m}"));
        assert_eq!(parse(5).unwrap().idle_minutes, 5);
        assert!(parse(1).unwrap_err().to_string().contains("too short"));
    }

    #[test]
    fn proxies_with_credentials_are_refused() {
        let parse = |p: &str| toml::from_str::<BootstrapSettings>(&format!("proxy = {p:?}"));
        assert_eq!(
            parse("http://10.0.0.2:3128").unwrap().proxy,
            "http://10.0.0.2:3128"
        );
        assert!(
            parse("http://u:secret@10.0.0.2:3128")
                .unwrap_err()
                .to_string()
                .contains("credentials")
        );
        assert!(
            parse("10.0.0.2:3128")
                .unwrap_err()
                .to_string()
                .contains("http://")
        );
    }

    #[test]
    fn swap_sizes_parse_and_the_minimum_holds() {
        assert_eq!(parse_swap("2G"), Ok(Some(2048)));
        assert_eq!(parse_swap("1536M"), Ok(Some(1536)));
        assert_eq!(parse_swap("off"), Ok(None));
        assert!(
            parse_swap("512M")
                .unwrap_err()
                .to_string()
                .contains("1G minimum")
        );
        assert!(
            parse_swap("two")
                .unwrap_err()
                .to_string()
                .contains("not a size")
        );
    }
}
