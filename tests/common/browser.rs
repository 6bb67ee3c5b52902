//! A real headless Chromium driven over its DevTools protocol, for tests that load a page from a
//! local server, read its DOM and take a screenshot.
//!
//! Why the protocol and not `--dump-dom`: `chromium --headless --virtual-time-budget=N --dump-dom`
//! never returns on a page that keeps a server-sent-events stream open (virtual time waits for
//! the network to go idle). Here the page runs in real time and the test decides what to wait for.
//!
//! Transport: `--remote-debugging-pipe`. Chromium reads JSON messages, each ended by a NUL byte,
//! on its fd 3 and writes its answers and events the same way on fd 4. A reader thread turns them
//! into a channel; calls are synchronous and match answers by id. Of the events, only those that
//! something here waits on are kept.
//!
//! ```ignore
//! let mut b = match Browser::launch() {
//!     Ok(b) => b,
//!     Err(why) => return eprintln!("skipped: {why}"),
//! };
//! b.goto("http://127.0.0.1:8080/").unwrap();
//! b.wait_until("document.querySelectorAll('li').length >= 3", Duration::from_secs(10)).unwrap();
//! let html = b.dom().unwrap();
//! b.screenshot(&dir.join("page.png")).unwrap();
//! ```

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// Window and viewport (and so screenshot) size: fixed, so screenshots are comparable.
pub const WINDOW: (u32, u32) = (1280, 800);

/// How many of Chromium's last stderr lines are kept for error messages.
const STDERR_LINES: usize = 40;

/// Events kept for a later wait; every other event is dropped as it arrives.
const KEPT_EVENTS: &[&str] = &[
    "Page.loadEventFired",
    "Inspector.targetCrashed",
    "Target.detachedFromTarget",
];

pub struct Browser {
    child: Child,
    /// Our end of Chromium's fd 3.
    to_chromium: File,
    from_chromium: Receiver<Value>,
    /// Answers that arrived while another one was awaited, by id.
    answers: HashMap<u64, Value>,
    /// Kept events (see KEPT_EVENTS), oldest first.
    events: VecDeque<Value>,
    next_id: u64,
    /// The flattened session of the page target that every page-level call goes to.
    session: String,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// Set once the pipe closed: Chromium is gone and every later call fails at once.
    dead: bool,
    headers: serde_json::Map<String, Value>,
    network_enabled: bool,
    /// Limit for one protocol call and for `goto`'s load.
    pub timeout: Duration,
    // Dropped after the process is gone (fields drop after Drop::drop).
    _profile: tempfile::TempDir,
}

/// The Chromium binary: Debian's real one first (its /usr/bin/chromium is a shell wrapper that
/// adds flags of its own and prints noise), then the usual names on PATH.
pub fn chromium_binary() -> Option<PathBuf> {
    let debian = Path::new("/usr/lib/chromium/chromium");
    if debian.is_file() {
        return Some(debian.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    [
        "chromium",
        "chromium-browser",
        "google-chrome-stable",
        "google-chrome",
    ]
    .iter()
    .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
    .find(|p| p.is_file())
}

/// A pipe whose both ends are close-on-exec, so that no other process the tests spawn meanwhile
/// inherits them (a stray copy of the write end would hide Chromium's exit from the reader).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A close-on-exec copy of `fd` numbered 5 or above, so that the dup2 onto 3 and 4 in the child
/// can neither clobber the other source fd nor be a no-op that leaves close-on-exec set.
fn above_4(fd: OwnedFd) -> OwnedFd {
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 5) };
    assert!(new >= 5, "fcntl: {}", std::io::Error::last_os_error());
    unsafe { OwnedFd::from_raw_fd(new) }
}

impl Browser {
    /// Starts a fresh headless Chromium with a blank page attached. Err(reason) only when no
    /// Chromium is installed (the caller prints "skipped: <reason>" and returns); a Chromium that
    /// is there but does not come up is a test failure, so that panics with its stderr.
    pub fn launch() -> Result<Browser, String> {
        let Some(bin) = chromium_binary() else {
            return Err(
                "needs chromium (none at /usr/lib/chromium/chromium nor on PATH; \
                 scripts/test.sh installs Debian's chromium package)"
                    .to_string(),
            );
        };
        let profile = tempfile::Builder::new()
            .prefix("cwo-chromium-")
            .tempdir()
            .unwrap();
        let (cmd_read, cmd_write) = pipe();
        let (out_read, out_write) = pipe();
        let (child_in, child_out) = (above_4(cmd_read), above_4(out_write));
        let (child_in_fd, child_out_fd) = (child_in.as_raw_fd(), child_out.as_raw_fd());
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--headless",
            // Tests run as root, where Chromium's sandbox refuses to start.
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-pipe",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-component-extensions-with-background-pages",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-sync",
            "--disable-breakpad",
            // Tests only load pages from loopback; a proxy from the environment has no part in it.
            "--no-proxy-server",
            // Containers often have a small /dev/shm, where Chromium crashes for lack of room.
            "--disable-dev-shm-usage",
            // No keyring over D-Bus.
            "--password-store=basic",
            "--hide-scrollbars",
            "--mute-audio",
        ])
        .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        unsafe {
            cmd.pre_exec(move || {
                // Its own process group, so that Drop can end the renderers and helpers with it.
                if libc::setpgid(0, 0) != 0
                    || libc::dup2(child_in_fd, 3) != 3
                    || libc::dup2(child_out_fd, 4) != 4
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        // Only Chromium may hold its ends: our copies go, so its exit closes the pipe.
        drop((child_in, child_out));

        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let err_pipe = child.stderr.take().unwrap();
        let tail = stderr.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(err_pipe);
            let mut line = Vec::new();
            while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                line.clear();
                // Machines without a D-Bus (containers, CI) get dozens of these on every start;
                // they would push what matters out of the tail.
                if text.contains(":ERROR:dbus/") {
                    continue;
                }
                let mut t = tail.lock().unwrap();
                if t.len() == STDERR_LINES {
                    t.pop_front();
                }
                t.push_back(text);
            }
        });

        let (tx, rx) = channel();
        let out_read = File::from(out_read);
        std::thread::spawn(move || {
            let mut r = BufReader::new(out_read);
            let mut msg = Vec::new();
            loop {
                msg.clear();
                match r.read_until(0, &mut msg) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                if msg.last() == Some(&0) {
                    msg.pop();
                }
                let Ok(v) = serde_json::from_slice::<Value>(&msg) else {
                    continue;
                };
                if tx.send(v).is_err() {
                    break;
                }
            }
        });

        let mut b = Browser {
            child,
            to_chromium: File::from(cmd_write),
            from_chromium: rx,
            answers: HashMap::new(),
            events: VecDeque::new(),
            next_id: 1,
            session: String::new(),
            stderr,
            dead: false,
            headers: serde_json::Map::new(),
            network_enabled: false,
            timeout: Duration::from_secs(30),
            _profile: profile,
        };
        if let Err(e) = b.open_page() {
            panic!("{} did not come up: {e}", bin.display());
        }
        Ok(b)
    }

    fn open_page(&mut self) -> Result<(), String> {
        let target = self.browser_call("Target.createTarget", json!({"url": "about:blank"}))?;
        let target_id = target["targetId"]
            .as_str()
            .ok_or("no targetId")?
            .to_string();
        let attached = self.browser_call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        )?;
        self.session = attached["sessionId"]
            .as_str()
            .ok_or("no sessionId")?
            .to_string();
        self.call("Page.enable", json!({}))?;
        // Headless Chromium takes a strip of --window-size for its (invisible) browser frame; the
        // page gets exactly WINDOW this way, so screenshots have a known size.
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": WINDOW.0, "height": WINDOW.1, "deviceScaleFactor": 1, "mobile": false}),
        )?;
        Ok(())
    }

    /// Loads `url` and waits (up to `timeout`) for its load event: the document and its
    /// subresources, not for streams the page keeps open.
    pub fn goto(&mut self, url: &str) -> Result<(), String> {
        // A load event from before this navigation must not end the wait.
        self.events.retain(|e| e["method"] != "Page.loadEventFired");
        let nav = self.call("Page.navigate", json!({"url": url}))?;
        if let Some(err) = nav["errorText"].as_str() {
            return Err(format!("loading {url}: {err}"));
        }
        let session = self.session.clone();
        self.wait_event(&format!("the load event of {url}"), self.timeout, |e| {
            e["method"] == "Page.loadEventFired" && e["sessionId"] == session.as_str()
        })?;
        Ok(())
    }

    /// Sends `name: value` with every request the page makes from now on (added to the headers
    /// set before: Chromium replaces the whole set on each call).
    pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), String> {
        if !self.network_enabled {
            self.call("Network.enable", json!({}))?;
            self.network_enabled = true;
        }
        self.headers.insert(name.to_string(), json!(value));
        self.call(
            "Network.setExtraHTTPHeaders",
            json!({"headers": Value::Object(self.headers.clone())}),
        )?;
        Ok(())
    }

    /// Turns the page's own scripts off for later navigations (to see what the server renders);
    /// `eval`, `dom` and `wait_until` keep working.
    pub fn disable_javascript(&mut self) -> Result<(), String> {
        self.call(
            "Emulation.setScriptExecutionDisabled",
            json!({"value": true}),
        )?;
        Ok(())
    }

    /// The value of `js` in the page (a promise is awaited), as JSON; `undefined` is Null. A thrown
    /// exception is an Err with its description.
    pub fn eval(&mut self, js: &str) -> Result<Value, String> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            let what = ex["exception"]["description"]
                .as_str()
                .or(ex["text"].as_str())
                .unwrap_or("exception");
            return Err(format!("evaluating `{js}`: {what}"));
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Polls `predicate` (a JS expression) until it is `true`, up to `limit`. The error tells the
    /// predicate and its last value or exception.
    pub fn wait_until(&mut self, predicate: &str, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let last = match self.eval(predicate) {
                Ok(Value::Bool(true)) => return Ok(()),
                Ok(v) => format!("last value {v}"),
                // A page between two documents can fail an evaluation; a dead browser or a
                // crashed page cannot come back.
                Err(e) if self.dead || self.page_alive(predicate).is_err() => return Err(e),
                Err(e) => format!("last error {e}"),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "waited {limit:?} for `{predicate}` to be true; {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The page's current DOM as HTML (`document.documentElement.outerHTML`).
    pub fn dom(&mut self) -> Result<String, String> {
        match self.eval("document.documentElement.outerHTML")? {
            Value::String(s) => Ok(s),
            other => Err(format!("document.documentElement.outerHTML was {other}")),
        }
    }

    /// A PNG of the viewport (WINDOW) at `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<(), String> {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        let data = r["data"]
            .as_str()
            .ok_or("Page.captureScreenshot: no data")?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("Page.captureScreenshot: {e}"))?;
        std::fs::write(path, png).map_err(|e| format!("writing {}: {e}", path.display()))
    }

    /// A protocol call to the page's session.
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let session = self.session.clone();
        self.send(method, params, Some(&session))
    }

    /// A protocol call to the browser itself (no session).
    pub fn browser_call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        self.send(method, params, None)
    }

    fn send(
        &mut self,
        method: &str,
        params: Value,
        session: Option<&str>,
    ) -> Result<Value, String> {
        if self.dead {
            return Err(format!("{method}: {}", self.death()));
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        if let Err(e) = self.to_chromium.write_all(&bytes) {
            self.dead = true;
            return Err(format!("sending {method}: {e}; {}", self.death()));
        }
        let deadline = Instant::now() + self.timeout;
        let what = format!("the answer to {method}");
        loop {
            if let Some(answer) = self.answers.remove(&id) {
                if let Some(err) = answer.get("error") {
                    let why = err["message"].as_str().unwrap_or("error");
                    return Err(format!("{method}: {why}"));
                }
                return Ok(answer["result"].clone());
            }
            // A crashed page never answers: fail now rather than at the timeout.
            if session.is_some() {
                self.page_alive(&what)?;
            }
            self.pump(&what, deadline, self.timeout)?;
        }
    }

    /// Waits for a kept event matching `pred`, removes and returns it.
    fn wait_event(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = self.events.iter().position(&pred) {
                return Ok(self.events.remove(i).unwrap());
            }
            self.page_alive(what)?;
            self.pump(what, deadline, limit)?;
        }
    }

    /// Err once the page's renderer crashed or its session was detached. The event stays queued,
    /// so every later page call fails the same way at once.
    fn page_alive(&self, what: &str) -> Result<(), String> {
        let session = self.session.as_str();
        let gone = self.events.iter().find(|e| match e["method"].as_str() {
            Some("Inspector.targetCrashed") => e["sessionId"] == session,
            Some("Target.detachedFromTarget") => e["params"]["sessionId"] == session,
            _ => false,
        });
        match gone {
            Some(e) => Err(format!(
                "waiting for {what}: the page is gone ({}); {}",
                e["method"].as_str().unwrap_or_default(),
                self.stderr_tail()
            )),
            None => Ok(()),
        }
    }

    /// Takes one message from Chromium (waiting until `deadline`) and files it.
    fn pump(&mut self, what: &str, deadline: Instant, limit: Duration) -> Result<(), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.from_chromium.recv_timeout(left) {
            Ok(msg) => {
                if let Some(id) = msg["id"].as_u64() {
                    self.answers.insert(id, msg);
                } else if let Some(m) = msg["method"].as_str()
                    && KEPT_EVENTS.contains(&m)
                {
                    self.events.push_back(msg);
                }
                Ok(())
            }
            Err(RecvTimeoutError::Timeout) => {
                Err(format!("waiting for {what}: timed out after {limit:?}"))
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.dead = true;
                Err(format!("waiting for {what}: {}", self.death()))
            }
        }
    }

    /// How the Chromium process ended, without reaping it: while it is an unreaped zombie its pid,
    /// and so its process group's id, cannot go to another process before Drop kills the group.
    fn exit_status(&self) -> Option<String> {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.child.id(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        let pid = unsafe { info.si_pid() };
        if rc != 0 || pid == 0 {
            return None;
        }
        let status = unsafe { info.si_status() };
        Some(match info.si_code {
            libc::CLD_EXITED => format!("exit status {status}"),
            _ => format!("signal {status}"),
        })
    }

    /// Why Chromium is gone: its exit status (once it has one) and its stderr tail.
    fn death(&mut self) -> String {
        let end = Instant::now() + Duration::from_secs(2);
        let status = loop {
            match self.exit_status() {
                Some(st) => break Some(st),
                None if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                None => break None,
            }
        };
        // The stderr reader may still be taking the last lines.
        std::thread::sleep(Duration::from_millis(100));
        match status {
            Some(st) => format!("chromium exited ({st}); {}", self.stderr_tail()),
            None => format!(
                "chromium closed its pipe but runs on; {}",
                self.stderr_tail()
            ),
        }
    }

    fn stderr_tail(&self) -> String {
        let t = self.stderr.lock().unwrap();
        let lines: Vec<&str> = t.iter().map(String::as_str).collect();
        format!("its stderr ends:\n{}", lines.join("\n"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        if !self.dead {
            // A polite close first (Chromium then ends its own helpers); no answer awaited.
            let close = json!({"id": self.next_id, "method": "Browser.close"});
            let mut bytes = serde_json::to_vec(&close).unwrap();
            bytes.push(0);
            let _ = self.to_chromium.write_all(&bytes);
        }
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end && self.exit_status().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The whole group, Chromium's own (made in pre_exec): the browser if it did not close, and
        // any helper it left. Its leader is not reaped yet, so the group id is still its own.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
