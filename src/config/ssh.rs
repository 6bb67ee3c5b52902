//! `[ssh]`: hosts you already have, the key, the workspace and connection timeouts.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration_str, nonzero_duration_str};
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SshSettings {
    /// Hosts you already have, for `provider = "ssh"`: "user@host:port" (port 22 if left out).
    #[serde(deserialize_with = "host_list")]
    pub hosts: Vec<String>,
    /// Private key for those hosts (OpenSSH format). Your ~/.ssh config, agent and known_hosts
    /// are never used.
    pub key: String,
    /// Directory on each worker reached over SSH (hosts and VMs) that holds cwo's workspaces
    /// (relative to the login directory, or absolute).
    pub workspace: String,
    /// How long to wait for a host or VM to answer and accept the key.
    #[serde(with = "nonzero_duration_str")]
    pub connect_timeout: Duration,
    /// Keepalive interval on the connection (three unanswered ones drop it).
    #[serde(with = "duration_str")]
    pub keepalive: Duration,
}

impl Default for SshSettings {
    fn default() -> Self {
        SshSettings {
            hosts: vec![],
            key: String::new(),
            workspace: ".cwo/workspaces".into(),
            connect_timeout: Duration::from_secs(120),
            keepalive: Duration::from_secs(15),
        }
    }
}

/// A parsed `user@host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddr {
    pub user: String,
    pub host: String,
    pub port: u16,
}

impl HostAddr {
    pub fn parse(s: &str) -> Result<HostAddr, HostAddrError> {
        let (user, rest) = s
            .split_once('@')
            .ok_or_else(|| HostAddrError::NoUser(s.to_string()))?;
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>().map_err(|_| HostAddrError::BadPort {
                    port: p.to_string(),
                    addr: s.to_string(),
                })?,
            ),
            _ => (rest.trim_start_matches('[').trim_end_matches(']'), 22),
        };
        if user.is_empty() || host.is_empty() {
            return Err(HostAddrError::Incomplete(s.to_string()));
        }
        Ok(HostAddr {
            user: user.to_string(),
            host: host.to_string(),
            port,
        })
    }
}

/// Why a host entry is not `user@host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostAddrError {
    #[error("`{0}` needs a user: user@host[:port]")]
    NoUser(String),
    #[error("`{port}` in `{addr}` is not a port")]
    BadPort { port: String, addr: String },
    #[error("`{0}` is not user@host[:port]")]
    Incomplete(String),
}

impl fmt::Display for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}:{}", self.user, self.host, self.port)
    }
}

fn host_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    for h in &v {
        HostAddr::parse(h).map_err(serde::de::Error::custom)?;
    }
    Ok(v)
}
