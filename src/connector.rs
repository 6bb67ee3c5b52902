//! How cwo reaches a worker. A provider hands out an [`Instance`] with its [`Target`] (plus the
//! host key its API published, if it has one); the connector builds the transport for it — a
//! directory on this machine gets a [`LocalTransport`], an SSH server an [`SshTransport`] with
//! the `[ssh]` connection timing — and owns host-key pinning: the first authenticated
//! connection pins the key the host presented in a [`KnownHosts`] store (the journal), later
//! connections are held to it, and the key a bootstrap prints from inside the host is checked
//! against it here.

use std::sync::Arc;
use std::time::Duration;

use crate::config::SshSettings;
use crate::model::{Instance, Target};
use crate::transport::ssh::{SshTarget, SshTransport};
use crate::transport::{KnownHosts, KnownHostsError, Transport, local::LocalTransport};

/// Why a worker cannot be reached, or its host key not trusted.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("worker {worker} is not reached over SSH ({target})")]
    NotSsh {
        worker: String,
        /// How it is reached instead.
        target: String,
    },
    #[error("worker {0} has no address yet")]
    NoAddress(String),
    #[error("worker {worker}: {source}")]
    KnownHosts {
        worker: String,
        #[source]
        source: KnownHostsError,
    },
    /// The key the host printed from inside is not the one the connection pinned: a connection
    /// intercepted on its first use would have pinned the interceptor's key.
    #[error(
        "the host reports key `{printed}` but the connection presented `{presented}`: someone may be between cwo and the host"
    )]
    HostKeyMismatch { printed: String, presented: String },
}

/// Builds transports from targets; cheap to clone (one per provider or command that needs one).
#[derive(Clone)]
pub struct Connector {
    connect_timeout: Duration,
    keepalive: Duration,
    known_hosts: Arc<dyn KnownHosts>,
}

impl Connector {
    /// Connections use `ssh`'s timing (`connect_timeout`, `keepalive`) and pin host keys in
    /// `known_hosts`.
    pub fn new(ssh: &SshSettings, known_hosts: Arc<dyn KnownHosts>) -> Connector {
        Connector {
            connect_timeout: ssh.connect_timeout,
            keepalive: ssh.keepalive,
            known_hosts,
        }
    }

    /// A transport to `instance`, whatever its target. Connecting is lazy: the first command
    /// opens the connection (and pins the host key, for SSH).
    pub fn connect(&self, instance: &Instance) -> Result<Box<dyn Transport>, ConnectError> {
        match &instance.target {
            Target::Local { .. } => Ok(Box::new(LocalTransport::new(instance.name.clone()))),
            Target::Ssh { .. } => Ok(Box::new(self.ssh(instance)?)),
        }
    }

    /// An SSH transport to `instance` (for a caller that closes it itself).
    pub(crate) fn ssh(&self, instance: &Instance) -> Result<SshTransport, ConnectError> {
        let Target::Ssh {
            host,
            port,
            user,
            key_path,
            host_key,
            pin_as,
        } = &instance.target
        else {
            return Err(ConnectError::NotSsh {
                worker: instance.name.clone(),
                target: format!("{:?}", instance.target),
            });
        };
        if host.is_empty() {
            return Err(ConnectError::NoAddress(instance.name.clone()));
        }
        Ok(SshTransport::new(
            instance.name.clone(),
            pin_as.clone(),
            SshTarget {
                host: host.clone(),
                port: *port,
                user: user.clone(),
                key_path: key_path.into(),
                host_key: host_key.clone(),
                connect_timeout: self.connect_timeout,
                keepalive: self.keepalive,
            },
            Some(self.known_hosts.clone()),
        ))
    }

    /// The key pinned for `instance` by its first authenticated connection; `None` for a local
    /// worker or one not connected to yet.
    fn pinned(&self, instance: &Instance) -> Result<Option<String>, ConnectError> {
        let Target::Ssh { pin_as, .. } = &instance.target else {
            return Ok(None);
        };
        self.known_hosts
            .pinned(pin_as)
            .map_err(|source| ConnectError::KnownHosts {
                worker: instance.name.clone(),
                source,
            })
    }

    /// The host key connections to `instance` are held to: the one its provider published,
    /// else the one its first connection pinned. `None` before any connection (or locally).
    pub(crate) fn host_key(&self, instance: &Instance) -> Result<Option<String>, ConnectError> {
        match &instance.target {
            Target::Ssh {
                host_key: Some(k), ..
            } => Ok(Some(k.clone())),
            _ => self.pinned(instance),
        }
    }

    /// Checks the host key a bootstrap `printed` from inside the host against the key the
    /// connection pinned (only the key type and data count, not the comment). Nothing pinned
    /// (the provider's own key was used, or a local worker) has nothing to compare.
    pub(crate) fn check_host_key(
        &self,
        instance: &Instance,
        printed: &str,
    ) -> Result<(), ConnectError> {
        match self.pinned(instance)? {
            Some(pinned) => same_key(printed, &pinned),
            None => Ok(()),
        }
    }
}

fn same_key(printed: &str, pinned: &str) -> Result<(), ConnectError> {
    let fields = |k: &str| k.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    if fields(printed) == fields(pinned) {
        Ok(())
    } else {
        Err(ConnectError::HostKeyMismatch {
            printed: fields(printed),
            presented: fields(pinned),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::model::InstanceStatus;

    /// An in-memory pin store.
    #[derive(Default)]
    struct Pins(Mutex<BTreeMap<String, String>>);

    impl KnownHosts for Pins {
        fn pinned(&self, pin_as: &str) -> Result<Option<String>, KnownHostsError> {
            Ok(self.0.lock().unwrap().get(pin_as).cloned())
        }
        fn pin(&self, pin_as: &str, _address: &str, key: &str) -> Result<(), KnownHostsError> {
            self.0
                .lock()
                .unwrap()
                .entry(pin_as.into())
                .or_insert(key.into());
            Ok(())
        }
    }

    fn ssh_worker(host_key: Option<&str>) -> Instance {
        Instance {
            name: "w1".into(),
            status: InstanceStatus::Running,
            created_at: chrono::Utc::now(),
            labels: BTreeMap::new(),
            target: Target::Ssh {
                host: "192.0.2.7".into(),
                port: 22,
                user: "admin".into(),
                key_path: "/nonexistent".into(),
                host_key: host_key.map(str::to_string),
                pin_as: "admin@192.0.2.7:22".into(),
            },
            workspace: "/w".into(),
            zone: None,
        }
    }

    #[test]
    fn the_printed_host_key_must_be_the_pinned_one() {
        let pins = Arc::new(Pins::default());
        let c = Connector::new(&SshSettings::default(), pins.clone());
        let w = ssh_worker(None);
        let k = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample";
        // Nothing pinned yet: nothing to compare.
        assert!(c.check_host_key(&w, k).is_ok());
        pins.pin("admin@192.0.2.7:22", "", &format!("{k} root@vm"))
            .unwrap();
        assert!(c.check_host_key(&w, k).is_ok());
        let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOther";
        assert!(matches!(
            c.check_host_key(&w, other),
            Err(ConnectError::HostKeyMismatch { .. })
        ));
        assert_eq!(
            c.host_key(&w).unwrap().as_deref(),
            Some(&*format!("{k} root@vm"))
        );
        // The provider's published key is the one connections are held to.
        assert_eq!(
            c.host_key(&ssh_worker(Some(other))).unwrap().as_deref(),
            Some(other)
        );
    }

    #[test]
    fn targets_pick_their_transport() {
        let c = Connector::new(&SshSettings::default(), Arc::new(Pins::default()));
        let mut local = ssh_worker(None);
        local.target = Target::Local {
            root: "/tmp/w1".into(),
        };
        assert!(c.connect(&local).is_ok());
        assert!(matches!(c.ssh(&local), Err(ConnectError::NotSsh { .. })));
        assert!(c.connect(&ssh_worker(None)).is_ok());
        let mut unaddressed = ssh_worker(None);
        if let Target::Ssh { host, .. } = &mut unaddressed.target {
            host.clear();
        }
        assert!(matches!(
            c.connect(&unaddressed),
            Err(ConnectError::NoAddress(_))
        ));
    }
}
