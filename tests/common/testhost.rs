//! Isolated test hosts (DESIGN §4) for tests that change the host: bootstrap, Ansible, swap.
//! `tests/host/build-rootfs.sh` builds a Debian rootfs once (cached under target/testhost);
//! `tests/host/testhost.sh` starts a fresh overlay of it with sshd in its own network namespace,
//! reaching the registries only through tinyproxy on the host side of its veth pair.
//! A stopped host is an `Image`: hosts started from it are copies of it (its changes as a lower
//! layer), the stand-in for VMs booted from an image `cwo image build` made.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

const ROOTFS: &str = "bookworm-3";

pub struct TestHost {
    pub dir: tempfile::TempDir,
    pub ip: String,
    pub proxy: String,
    /// The admin login's private key (passwordless sudo, like a cloud image's login).
    pub key: PathBuf,
    /// `ssh-ed25519 AAAA…`
    pub host_key: String,
    /// The image this host is a copy of: its files are a layer of this host's, so it is kept
    /// until this host is down (fields drop after `Drop::drop`).
    base: Option<Image>,
}

/// A stopped host: its upper dir (what it changed) over its own layers, read-only from now on.
#[derive(Clone)]
pub struct Image(Arc<TestHost>);

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What is missing to run isolated hosts here, if anything.
fn missing() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("root".into());
    }
    let gone: Vec<&str> = [
        "debootstrap",
        "tinyproxy",
        "ip",
        "unshare",
        "nsenter",
        "flock",
        "ssh",
    ]
    .into_iter()
    .filter(|p| {
        !Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .collect();
    (!gone.is_empty()).then(|| gone.join(", "))
}

static BUILD: Mutex<()> = Mutex::new(());

/// The cached rootfs, built on first use (about a minute), shared by every test and process.
fn rootfs() -> PathBuf {
    let dir = manifest().join("target/testhost").join(ROOTFS);
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !dir.is_dir() {
        std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
        eprintln!(
            "building the test-host rootfs with debootstrap (once): {}",
            dir.display()
        );
        let st = Command::new("flock")
            .arg(manifest().join("target/testhost/.lock"))
            .arg("sh")
            .arg(manifest().join("tests/host/build-rootfs.sh"))
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "building the test-host rootfs failed");
    }
    dir
}

impl TestHost {
    /// A fresh host, or None (with a visible message) where this machine cannot make one.
    pub fn start(test: &str) -> Option<TestHost> {
        if let Some(what) = missing() {
            eprintln!("skipped {test}: needs root + debootstrap + tinyproxy (missing: {what})");
            return None;
        }
        Some(TestHost::up(None))
    }

    /// `testhost.sh up`, on the rootfs alone or on `base`'s layers.
    fn up(base: Option<Image>) -> TestHost {
        let rootfs = rootfs();
        let dir = tempfile::tempdir().unwrap();
        let mut up = Command::new("sh");
        up.arg(manifest().join("tests/host/testhost.sh"))
            .arg("up")
            .arg(dir.path())
            .arg(&rootfs);
        if let Some(image) = &base {
            up.arg(image.0.dir.path());
        }
        let out = up.output().unwrap();
        assert!(
            out.status.success(),
            "test host did not start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} missing from the test host's env"))
                .trim_matches('\'')
                .to_string()
        };
        TestHost {
            ip: get("IP"),
            proxy: get("PROXY"),
            key: PathBuf::from(get("KEY")),
            host_key: get("HOSTKEY"),
            dir,
            base,
        }
    }

    /// Stops the host (its processes, network and swap go) and keeps its files as an image.
    pub fn stop(self) -> Image {
        down(self.dir.path());
        Image(Arc::new(self))
    }

    /// Runs `command` on the host as `user` with OpenSSH (host key pinned, no ~/.ssh).
    pub fn ssh(&self, user: &str, command: &str) -> Output {
        // A bootstrap that changed sshd's settings reloads it: sshd re-executes itself and
        // refuses connections for a moment.
        for _ in 0..50 {
            let out = self.ssh_once(user, command);
            if out.status.code() == Some(255)
                && String::from_utf8_lossy(&out.stderr).contains("Connection refused")
            {
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
            return out;
        }
        self.ssh_once(user, command)
    }

    fn ssh_once(&self, user: &str, command: &str) -> Output {
        let kh = self.dir.path().join("known_hosts");
        std::fs::write(&kh, format!("{} {}\n", self.ip, self.host_key)).unwrap();
        Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", kh.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-i"])
            .arg(&self.key)
            .arg(format!("{user}@{}", self.ip))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Like `ssh`, stdout as text; panics when the command fails.
    #[track_caller]
    pub fn sh(&self, user: &str, command: &str) -> String {
        let out = self.ssh(user, command);
        assert!(
            out.status.success(),
            "`{command}` as {user} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The host's end state as one text: what the bootstrap is meant to make, nothing else.
    pub fn probe(&self) -> String {
        self.sh("admin", &format!("sudo sh -c {}", shell_words(PROBE)))
    }
}

/// The end state the bootstrap makes, as comparable text.
const PROBE: &str = r#"
echo "swap: $(grep '^/swapfile ' /proc/swaps | awk '{print $1, $3}') mode $(stat -c %a /swapfile) size $(wc -c < /swapfile)"
echo "fstab: $(grep swapfile /etc/fstab)"
for p in git ca-certificates curl ripgrep cron; do echo "pkg $p: $(dpkg-query -W -f='${Status}' $p 2>&1)"; done
echo "opencode: $(readlink /usr/local/bin/opencode) $(test -x /usr/local/bin/opencode && echo executable)"
echo "user: $(getent passwd cwo | cut -d: -f1,6,7) shadow $(grep '^cwo:' /etc/shadow | cut -d: -f2)"
echo "workspace: $(stat -c '%U %G %a' /workspace) state $(stat -c '%U %G %a' /var/lib/cwo)"
echo "cwo keys: $(stat -c '%U %a' /home/cwo/.ssh /home/cwo/.ssh/authorized_keys | tr '\n' ' ') $(cmp -s /home/admin/.ssh/authorized_keys /home/cwo/.ssh/authorized_keys && echo same-as-admin)"
sshd -T 2>/dev/null | grep -E '^(passwordauthentication|kbdinteractiveauthentication|permitrootlogin|pubkeyauthentication) '
echo "sshd drop-in: $(md5sum < /etc/ssh/sshd_config.d/60-cwo.conf)"
echo "agent.env: $(md5sum < /etc/cwo/agent.env)"
cat /etc/cwo/agent.env
echo "watchdog: $(md5sum < /usr/local/sbin/cwo-watchdog) $(stat -c %a /usr/local/sbin/cwo-watchdog)"
cat /etc/cwo/watchdog.conf
echo "cron.d: $(cat /etc/cron.d/cwo-watchdog) $(stat -c %a /etc/cron.d/cwo-watchdog)"
echo "cron running: $([ -f /run/crond.pid ] && kill -0 "$(cat /run/crond.pid)" && echo yes)"
echo "heartbeat: $(stat -c %U /var/lib/cwo/heartbeat)"
"#;

fn shell_words(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Image {
    /// A new host booted from this image: its own host key and the admin's key, as any fresh
    /// host (on GCE the guest agent writes both at boot).
    pub fn start(&self) -> TestHost {
        TestHost::up(Some(self.clone()))
    }

    /// Runs `script` (sh, as root) in the image's files, read-only; its stdout, or a panic.
    #[track_caller]
    pub fn inspect(&self, script: &str) -> String {
        let out = Command::new("sh")
            .arg(manifest().join("tests/host/testhost.sh"))
            .arg("inspect")
            .arg(self.0.dir.path())
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "inspecting the image failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn down(dir: &Path) {
    let st = Command::new("sh")
        .arg(manifest().join("tests/host/testhost.sh"))
        .arg("down")
        .arg(dir)
        .status();
    assert!(
        st.is_ok_and(|s| s.success()),
        "testhost.sh down {} failed",
        dir.display()
    );
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Already down when stopped (it keeps no env then): a second `down` does nothing.
        let _ = Command::new("sh")
            .arg(manifest().join("tests/host/testhost.sh"))
            .arg("down")
            .arg(self.dir.path())
            .status();
    }
}
