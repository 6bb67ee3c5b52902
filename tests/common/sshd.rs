//! A real OpenSSH `sshd` on 127.0.0.1, started per test with its own host key, config and
//! authorized key, all inside the test's temp dir. It logs in as the user running the tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_for;

pub struct Sshd {
    pub dir: PathBuf,
    pub port: u16,
    pub user: String,
    /// The client key that may log in.
    pub client_key: PathBuf,
    /// Where sessions start (the login's home as sshd would use it), when not the real home.
    home: Option<PathBuf>,
    child: Option<Child>,
}

fn sshd_binary() -> Option<PathBuf> {
    ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "cwo-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (openssh-client) is installed by scripts/test.sh");
    assert!(st.success());
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sshd {
    /// `None` (with a visible message) when this machine cannot run a test sshd.
    pub fn start(dir: &Path) -> Option<Sshd> {
        Sshd::start_at(dir, None)
    }

    /// A test sshd whose sessions start in `home`, as they would in the login's home directory:
    /// for settings relative to the login's home (the default `ssh.workspace`) without touching
    /// the real home of the user running the tests. Every command runs through a ForceCommand
    /// that changes to `home` and then runs the requested command as sshd would have.
    pub fn start_with_home(dir: &Path, home: &Path) -> Option<Sshd> {
        std::fs::create_dir_all(home).unwrap();
        Sshd::start_at(dir, Some(home.to_path_buf()))
    }

    fn start_at(dir: &Path, home: Option<PathBuf>) -> Option<Sshd> {
        let Some(bin) = sshd_binary() else {
            eprintln!("skipped: needs sshd (scripts/test.sh installs openssh-server)");
            return None;
        };
        let root = unsafe { libc::geteuid() } == 0;
        if root && !Path::new("/run/sshd").is_dir() {
            eprintln!("skipped: sshd needs /run/sshd (scripts/test.sh creates it)");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let client_key = dir.join("client_key");
        keygen(&client_key);
        keygen(&dir.join("host_key"));
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let mut sshd = Sshd {
            dir: dir.to_path_buf(),
            port: free_port(),
            user,
            client_key,
            home,
            child: None,
        };
        sshd.write_config(&bin);
        sshd.spawn(&bin);
        Some(sshd)
    }

    fn write_config(&self, _bin: &Path) {
        let d = self.dir.display();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nAllowUsers {user}\nLogLevel ERROR\nPrintMotd no\n\
             ClientAliveInterval 0\nMaxStartups 100\nMaxSessions 100\n",
            port = self.port,
            user = self.user,
        );
        let config = match &self.home {
            Some(home) => format!(
                "{config}ForceCommand cd '{}' && HOME=\"$PWD\" && export HOME && eval \"$SSH_ORIGINAL_COMMAND\"\n",
                home.display()
            ),
            None => config,
        };
        std::fs::write(self.dir.join("sshd_config"), config).unwrap();
    }

    fn spawn(&mut self, bin: &Path) {
        let child = Command::new(bin)
            .args(["-D", "-e", "-f"])
            .arg(self.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("sshd.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_for(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "sshd did not start: {}",
            std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
        );
    }

    pub fn host(&self) -> String {
        format!("{}@127.0.0.1:{}", self.user, self.port)
    }

    pub fn listener_pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Cuts every open connection (kills the per-connection sshd processes); the listener stays.
    pub fn cut_connections(&self) -> usize {
        let out = Command::new("pgrep")
            .args(["-P", &self.listener_pid().to_string()])
            .output()
            .unwrap();
        let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        for pid in &pids {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        pids.len()
    }

    /// Restarts with a new host key on the same port (a replaced host, or a man in the middle).
    pub fn replace_host_key(&mut self) {
        self.stop();
        std::fs::remove_file(self.dir.join("host_key")).unwrap();
        std::fs::remove_file(self.dir.join("host_key.pub")).unwrap();
        keygen(&self.dir.join("host_key"));
        let bin = sshd_binary().unwrap();
        self.spawn(&bin);
    }

    /// Starts the listener again after `stop`, with the same host key and settings.
    pub fn restart(&mut self) {
        let bin = sshd_binary().unwrap();
        self.spawn(&bin);
    }

    pub fn stop(&mut self) {
        if let Some(c) = &self.child {
            // Per-connection processes outlive a killed listener: they go first, with the
            // listener paused so that it accepts none in between (a connection accepted after
            // the cut would outlive the listener, served by its orphaned child).
            let _ = Command::new("kill")
                .args(["-STOP", &c.id().to_string()])
                .status();
            self.cut_connections();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}
