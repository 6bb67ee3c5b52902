//! `cwo serve` (issue 17): the loop plus the HTTP server, driven over real HTTP with curl.

use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::common::{TestEnv, kill, wait_for};

const SECRET: &str = "it's a secret to everybody";
const TOKEN: &str = "s3rve-t0ken-for-tests";

/// An agent that commits, so a claimed task completes.
const COMMITTING: &str = r#"echo "working on $CWO_TASK_ID"
printf 'done\n' > "out-$CWO_TASK_ID.txt"
git add "out-$CWO_TASK_ID.txt"
git commit -q -m "$CWO_TASK_ID""#;

/// A project on the local provider whose loop polls once an hour: only a webhook makes it look
/// again. `extra` is appended at the end (tables).
fn project(agent: &str, extra: &str) -> TestEnv {
    let env = TestEnv::new();
    // RELEASE: a file a test creates to let a waiting agent finish.
    let release = env.tmp.path().join("release");
    env.agent(
        agent,
        &format!("env = {{ RELEASE = {:?} }}", release.display().to_string()),
    );
    let path = env.project.join("cwo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("poll_interval = \"200ms\"", "poll_interval = \"1h\"");
    std::fs::write(
        &path,
        format!(
            "{text}\n[github]\nwebhook_secret = \"env:TEST_HOOK_SECRET\"\n[serve]\ntoken = \"\"\n{extra}\n"
        ),
    )
    .unwrap();
    env
}

/// A running `cwo serve`, its stderr collected.
struct Served {
    child: Child,
    stderr: Arc<Mutex<String>>,
    base: String,
}

impl Served {
    fn start(env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Served {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut cmd = env.cmd(&all);
        cmd.env("TEST_HOOK_SECRET", SECRET)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = collect(child.stderr.take().unwrap());
        let mut base = String::new();
        let up = wait_for(Duration::from_secs(30), || {
            let text = stderr.lock().unwrap();
            match text.split_once("serving http://") {
                Some((_, rest)) => {
                    let addr = rest.split('/').next().unwrap();
                    base = format!("http://{addr}");
                    true
                }
                None => false,
            }
        });
        assert!(up, "cwo serve did not start: {}", stderr.lock().unwrap());
        Served {
            child,
            stderr,
            base,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, as a service manager stops it; its exit code and stderr.
    fn stop(mut self) -> (Option<i32>, String) {
        kill(&self.child, "TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return (status.code(), self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "cwo serve did not stop after SIGTERM: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    crate::common::collect_output(pipe).0
}

/// An HTTP answer.
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// One request through curl (`extra`: its options, e.g. `-H`, `--data-binary`).
fn http(url: &str, extra: &[&str]) -> Answer {
    let out = std::process::Command::new("curl")
        .args(["-s", "-S", "-i", "-H", "Expect:", "--max-time", "60"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    Answer {
        status,
        headers: headers.to_string(),
        body: body.to_string(),
    }
}

fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// Sends a webhook delivery: `signature` None = signed with SECRET, Some("") = unsigned.
fn deliver(s: &Served, event: &str, id: &str, body: &str, signature_: Option<&str>) -> Answer {
    let sig = match signature_ {
        None => signature(SECRET, body.as_bytes()),
        Some(s) => s.to_string(),
    };
    let mut args = vec![
        "-X".to_string(),
        "POST".into(),
        "-H".into(),
        "Content-Type: application/json".into(),
        "-H".into(),
        format!("X-GitHub-Event: {event}"),
        "-H".into(),
        format!("X-GitHub-Delivery: {id}"),
        "--data-binary".into(),
        body.to_string(),
    ];
    if !sig.is_empty() {
        args.push("-H".into());
        args.push(format!("X-Hub-Signature-256: {sig}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    http(&s.url("/webhooks/github"), &args)
}

fn claimed(env: &TestEnv, id: &str) -> bool {
    env.ball(id)["state"] != "pending"
}

/// With the poll an hour away, only a verified delivery makes the loop look: a forged or
/// unsigned one is refused (401, a line on stderr) and changes nothing, a signed one wakes the
/// loop, which claims the new task; the same delivery again is a replay (200, nothing done); a
/// body over the limit is refused with 413.
#[test]
fn a_signed_webhook_wakes_the_loop_and_forged_replayed_or_oversized_ones_do_nothing() {
    let env = project(COMMITTING, "");
    let s = Served::start(&env, &[], &[]);
    // The loop's first look finds nothing, then waits for its hourly poll.
    std::thread::sleep(Duration::from_millis(500));
    let a = env.add(&["first"]);
    let body = r#"{"action":"labeled","issue":{"number":1}}"#;

    let forged = deliver(
        &s,
        "issues",
        "d-forged",
        body,
        Some(&signature("guess", body.as_bytes())),
    );
    assert_eq!(forged.status, 401, "{}", forged.body);
    let unsigned = deliver(&s, "issues", "d-unsigned", body, Some(""));
    assert_eq!(unsigned.status, 401, "{}", unsigned.body);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!claimed(&env, &a), "a refused delivery woke the loop");
    let err = s.stderr();
    assert!(err.contains("webhook refused (delivery d-forged"), "{err}");
    assert!(err.contains("no X-Hub-Signature-256 header"), "{err}");

    let ping = deliver(&s, "ping", "d-ping", r#"{"zen":"hi"}"#, None);
    assert_eq!(ping.status, 200);
    assert_eq!(ping.json()["result"], "pong");

    let sent = Instant::now();
    let woke = deliver(&s, "issues", "d-1", body, None);
    assert_eq!(woke.status, 200, "{}", woke.body);
    assert_eq!(woke.json()["result"], "woke");
    assert!(
        wait_for(Duration::from_secs(30), || claimed(&env, &a)),
        "the signed delivery did not make the loop claim {a}: {}",
        s.stderr()
    );
    eprintln!("webhook to claim: {:?}", sent.elapsed());
    assert!(wait_for(Duration::from_secs(60), || env.ball(&a)["state"]
        == "complete"));

    // The same delivery again: a replay, answered 200, and the next task stays unclaimed. The
    // loop reads the tracker after every event of its own too (a task's end): it is given a
    // moment to settle after the first task first (with an idle worker it then has nothing to
    // do for idle_timeout, 5 min); the log says which deliveries woke it either way.
    std::thread::sleep(Duration::from_secs(2));
    let b = env.add(&["second"]);
    let replay = deliver(&s, "issues", "d-1", body, None);
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(replay.json()["result"], "duplicate");
    // An event cwo does not act on, and an action of a waking event it does not act on.
    let star = deliver(&s, "star", "d-star", "{}", None);
    assert_eq!(star.json()["result"], "ignored");
    let edited = deliver(&s, "issues", "d-edit", r#"{"action":"edited"}"#, None);
    assert_eq!(edited.json()["result"], "ignored");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !claimed(&env, &b),
        "a replay or an ignored event woke the loop"
    );
    let woke = s.stderr().matches(": looking at the tracker now").count();
    assert_eq!(woke, 1, "{}", s.stderr());

    // Over the size limit: 413, before any signature is looked at.
    let big = env.tmp.path().join("big.json");
    std::fs::write(&big, vec![b' '; 6 * 1024 * 1024]).unwrap();
    let at = format!("@{}", big.display());
    let too_big = http(
        &s.url("/webhooks/github"),
        &[
            "-X",
            "POST",
            "-H",
            "X-GitHub-Event: issues",
            "-H",
            "X-GitHub-Delivery: d-big",
            "-H",
            "X-Hub-Signature-256: sha256=00",
            "--data-binary",
            &at,
        ],
    );
    assert_eq!(too_big.status, 413, "{}", too_big.body);
    assert!(!claimed(&env, &b));

    // A new delivery (GitHub sends check_suite when CI finishes) wakes it again.
    let check = deliver(&s, "check_suite", "d-2", r#"{"action":"completed"}"#, None);
    assert_eq!(check.json()["result"], "woke");
    assert!(
        wait_for(Duration::from_secs(30), || claimed(&env, &b)),
        "{}",
        s.stderr()
    );
    assert!(wait_for(Duration::from_secs(60), || env.ball(&b)["state"]
        == "complete"));
    let (code, err) = s.stop();
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(env.live_workers(), 0, "{err}");
    // Stored: d-ping, d-1, d-star, d-edit, d-2; never the refused ones (a forged delivery
    // cannot use up an id GitHub will send).
    assert_eq!(
        env.journal("SELECT id FROM webhook_deliveries ORDER BY received_at"),
        "d-ping\nd-1\nd-star\nd-edit\nd-2"
    );
}

/// `/healthz`: every service with its status and the age of its observation; a journal that
/// cannot be read turns the answer into a 503, and it recovers with the journal.
#[test]
fn healthz_reports_each_service_and_is_503_while_the_journal_is_unreadable() {
    let env = project(COMMITTING, "");
    let s = Served::start(&env, &[], &[]);
    let observed = |a: &Answer| {
        let j = a.json();
        ["tracker", "provider", "forge"]
            .iter()
            .all(|k| j["services"][k]["status"] != "pending")
    };
    let mut h = http(&s.url("/healthz"), &[]);
    assert!(
        wait_for(Duration::from_secs(20), || {
            h = http(&s.url("/healthz"), &[]);
            observed(&h)
        }),
        "{}",
        h.body
    );
    assert_eq!(h.status, 200, "{}", h.body);
    let j = h.json();
    assert_eq!(j["schema_version"], 1);
    assert_eq!(j["status"], "ok");
    assert_eq!(j["services"]["journal"]["status"], "ok");
    assert_eq!(j["services"]["tracker"]["status"], "ok", "{j}");
    assert_eq!(j["services"]["provider"]["status"], "ok", "{j}");
    assert!(
        j["services"]["provider"]["detail"]
            .as_str()
            .unwrap()
            .starts_with("local:"),
        "{j}"
    );
    // No GitHub repository here: the forge is off, which is no error.
    assert_eq!(j["services"]["forge"]["status"], "off", "{j}");
    assert!(j["services"]["tracker"]["age_secs"].as_i64().unwrap() >= 0);

    let journal = env.state.join("journal.sqlite");
    let aside = env.state.join("journal.sqlite.aside");
    std::fs::rename(&journal, &aside).unwrap();
    std::fs::create_dir(&journal).unwrap();
    let down = http(&s.url("/healthz"), &[]);
    assert_eq!(down.status, 503, "{}", down.body);
    let j = down.json();
    assert_eq!(j["status"], "error");
    assert_eq!(j["services"]["journal"]["status"], "error");
    assert_eq!(
        j["services"]["tracker"]["status"], "ok",
        "only the journal failed"
    );
    std::fs::remove_dir(&journal).unwrap();
    std::fs::rename(&aside, &journal).unwrap();
    let back = http(&s.url("/healthz"), &[]);
    assert_eq!(back.status, 200, "{}", back.body);
    let (code, err) = s.stop();
    assert_eq!(code, Some(0), "{err}");
}

/// Parsed server-sent events: (event, id, data) in order.
fn events(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    // Only whole events (a blank line ends each).
    let whole = match text.rfind("\n\n") {
        Some(end) => &text[..end + 2],
        None => return out,
    };
    for block in whole.split("\n\n") {
        let (mut event, mut id, mut data) = (String::new(), String::new(), Vec::new());
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_string();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v.to_string());
            } else if line == "data:" {
                data.push(String::new());
            }
        }
        if !event.is_empty() {
            out.push((event, id, data.join("\n")));
        }
    }
    out
}

/// curl following an SSE stream, its output collected.
fn stream(url: &str, headers: &[&str]) -> (Child, Arc<Mutex<String>>) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-N", "--max-time", "120"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let mut child = cmd
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = collect(child.stdout.take().unwrap());
    (child, out)
}

fn text_of(evs: &[(String, String, String)]) -> String {
    evs.iter()
        .filter(|(e, _, _)| e == "log")
        .map(|(_, _, d)| serde_json::from_str::<String>(d).unwrap())
        .collect()
}

/// The agent's log over SSE while the agent writes it: cut after a few events and resumed from
/// the last event id (as EventSource does) or from `?offset=`, the text received is the log
/// byte for byte, with no gap and no repeat; `/log?offset=N` returns the bytes from N.
#[test]
fn the_live_log_over_sse_has_no_gap_or_repeat_across_a_reconnect() {
    let env = project(
        r#"i=0
while [ "$i" -lt 40 ]; do i=$((i + 1)); echo "line $i: héllo wörld"; sleep 0.05; done
while [ ! -e "$RELEASE" ]; do sleep 0.05; done
echo "last line"
git commit -q --allow-empty -m "$CWO_TASK_ID""#,
        "",
    );
    let id = env.add(&["a chatty task"]);
    let s = Served::start(&env, &[], &[]);
    // The first poll claims it (the task was there before the loop started).
    assert!(
        wait_for(Duration::from_secs(30), || {
            env.journal("SELECT count(*) FROM attempts") == "1"
        }),
        "{}",
        s.stderr()
    );
    let url = s.url(&format!("/api/v1/tasks/{id}/log/stream"));
    let (mut first, got) = stream(&url, &[]);
    assert!(
        wait_for(Duration::from_secs(30), || events(&got.lock().unwrap())
            .len()
            >= 3),
        "no events: {}",
        got.lock().unwrap()
    );
    let _ = first.kill();
    let _ = first.wait();
    let before = events(&got.lock().unwrap());
    let last_id = before.last().unwrap().1.clone();
    // Resumed from the last event id, and (a second client) from the same offset by query.
    let (mut resumed, rest) = stream(&url, &[&format!("Last-Event-ID: {last_id}")]);
    let (mut by_query, rest_q) = stream(&format!("{url}?offset={last_id}"), &[]);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(env.tmp.path().join("release"), "").unwrap();
    let ended = |out: &Arc<Mutex<String>>| {
        events(&out.lock().unwrap())
            .iter()
            .any(|(e, _, _)| e == "end")
    };
    assert!(
        wait_for(Duration::from_secs(60), || ended(&rest) && ended(&rest_q)),
        "no end event: {}\n{}",
        rest.lock().unwrap(),
        s.stderr()
    );
    let _ = resumed.wait();
    let _ = by_query.wait();
    let log_path = env.journal(&format!(
        "SELECT log_path FROM attempts WHERE ball_id = '{id}'"
    ));
    let file = std::fs::read_to_string(&log_path).unwrap();
    let after = events(&rest.lock().unwrap());
    let whole = format!("{}{}", text_of(&before), text_of(&after));
    assert_eq!(whole, file, "the stream and the log differ");
    assert_eq!(
        format!(
            "{}{}",
            text_of(&before),
            text_of(&events(&rest_q.lock().unwrap()))
        ),
        file
    );
    assert!(file.contains("line 40: héllo wörld\n") && file.contains("last line"));
    // Each event's id is the offset after its bytes.
    let mut offset = 0usize;
    for (e, id_, data) in before.iter().chain(after.iter()) {
        if e == "log" {
            offset += serde_json::from_str::<String>(data).unwrap().len();
        }
        assert_eq!(id_, &offset.to_string());
    }
    // The same bytes from an offset, over plain HTTP.
    let from: usize = last_id.parse().unwrap();
    let part = http(
        &s.url(&format!("/api/v1/tasks/{id}/log?offset={from}")),
        &[],
    );
    assert_eq!(part.status, 200);
    assert_eq!(part.body, file[from..]);
    assert_eq!(part.header("x-log-offset").unwrap(), file.len().to_string());
    assert!(wait_for(Duration::from_secs(30), || env.ball(&id)["state"]
        == "complete"));
    let done = http(
        &s.url(&format!("/api/v1/tasks/{id}/log?offset={}", file.len())),
        &[],
    );
    assert_eq!(done.body, "");
    assert_eq!(done.header("x-log-complete").unwrap(), "true");
    let missing = http(&s.url("/api/v1/tasks/proj-nope/log"), &[]);
    assert_eq!(missing.status, 404);
    let (code, err) = s.stop();
    assert_eq!(code, Some(0), "{err}");
}

/// Anything but loopback needs serve.token, and refuses to start without it; with a token set
/// (on any address) every route but /healthz and the webhook wants it, as a bearer token or the
/// cookie `/?token=` sets.
#[test]
fn a_token_guards_everything_but_health_and_the_webhook_and_is_required_off_loopback() {
    let env = project(COMMITTING, "");
    let open = env.cwo(&["serve", "--listen", "0.0.0.0:0"]);
    assert_eq!(open.code, 2, "{}", open.stderr);
    assert!(
        open.stderr
            .contains("refusing to listen on 0.0.0.0:0 without serve.token"),
        "{}",
        open.stderr
    );
    assert!(
        open.stderr.contains("hint: set serve.token"),
        "{}",
        open.stderr
    );
    assert!(
        !env.state.join("journal.sqlite").exists(),
        "nothing ran before the refusal"
    );
    // Without a token, only loopback names are answered (a rebound DNS name is refused), but
    // the webhook, which has its own HMAC, is.
    let local = Served::start(&env, &[], &[]);
    let rebound = http(
        &local.url("/api/v1/state"),
        &["-H", "Host: evil.example:8484"],
    );
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    let by_name = http(&local.url("/healthz"), &["-H", "Host: localhost:8484"]);
    assert_eq!(by_name.status, 200, "{}", by_name.body);
    assert_eq!(local.stop().0, Some(0));

    let path = env.project.join("cwo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("token = \"\"", "token = \"env:TEST_SERVE_TOKEN\""),
    )
    .unwrap();
    // A reference to an empty value is no token: refused, not taken as "" (which anyone has).
    let mut empty = env.cmd(&["serve", "--listen", "127.0.0.1:0"]);
    let empty = empty.env("TEST_SERVE_TOKEN", " \n").output().unwrap();
    assert_eq!(empty.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&empty.stderr).contains("serve.token resolves to an empty value"),
        "{}",
        String::from_utf8_lossy(&empty.stderr)
    );
    let s = Served::start(&env, &[], &[("TEST_SERVE_TOKEN", TOKEN)]);
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let task = env.add(&["a task"]);
    for route in [
        "/".to_string(),
        "/api/v1/state".into(),
        "/api/v1/workers".into(),
        format!("/api/v1/tasks/{task}"),
        format!("/api/v1/tasks/{task}/log"),
        format!("/api/v1/tasks/{task}/log/stream"),
        "//api/v1/state".into(),
        "/api/v1/state/".into(),
    ] {
        let route = route.as_str();
        let no = http(&s.url(route), &[]);
        assert_eq!(no.status, 401, "{route}: {}", no.body);
        assert_eq!(no.header("www-authenticate").as_deref(), Some("Bearer"));
        let wrong = http(&s.url(route), &["-H", "Authorization: Bearer nope"]);
        assert_eq!(wrong.status, 401, "{route}");
    }
    assert_eq!(http(&s.url("/api/v1/state"), &["-H", &bearer]).status, 200);
    let lower = format!("Authorization: bearer {TOKEN}");
    assert_eq!(http(&s.url("/api/v1/state"), &["-H", &lower]).status, 200);
    // /healthz answers everyone, with its details only for the token's holder.
    let anyone = http(&s.url("/healthz"), &[]);
    assert_eq!(anyone.status, 200);
    assert_eq!(anyone.json()["services"]["journal"]["detail"], "");
    let holder = http(&s.url("/healthz"), &["-H", &bearer]).json();
    assert!(
        holder["services"]["journal"]["detail"]
            .as_str()
            .unwrap()
            .ends_with("journal.sqlite"),
        "{holder}"
    );
    let ping = deliver(&s, "ping", "d-ping", "{}", None);
    assert_eq!(
        ping.status, 200,
        "the webhook has its own HMAC: {}",
        ping.body
    );
    // A browser: the token once in the address, then a cookie (EventSource sends no headers).
    let wrong = http(&s.url("/?token=nope"), &[]);
    assert_eq!(wrong.status, 401);
    let login = http(&s.url(&format!("/?token={TOKEN}")), &[]);
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location").as_deref(), Some("/"));
    let cookie = login.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let page = http(&s.url("/"), &["-H", &format!("Cookie: {pair}")]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<h2>Workers</h2>"), "{}", page.body);
    let (code, err) = s.stop();
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains(TOKEN), "the token is never logged: {err}");
}

/// `/api/v1/state` is `cwo status`'s report (the same tasks, workers and pull requests), this
/// month's `cwo cost --by day`, and the budget line; `/api/v1/tasks/{id}` one task with its
/// attempts; unknown tasks and routes are 404s with a JSON error.
#[test]
fn the_state_api_serves_the_typed_reports() {
    let env = project(COMMITTING, "budget_usd = 5");
    let done = env.add(&["done already", "--priority", "high"]);
    env.cwo(&["run", "--once"]).ok();
    // A blocked task, and one that waits on it: neither is ready, so the loop claims nothing
    // while the report is read.
    let blocker = env.add(&["blocked by a person"]);
    let balls = std::fs::read_to_string(env.balls_path()).unwrap();
    let balls: Vec<String> = balls
        .lines()
        .map(|l| {
            if l.contains(&blocker) {
                l.replace("\"state\":\"pending\"", "\"state\":\"blocked\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    env.write_balls(&balls);
    let waiting = env.add(&["waits for the blocked one", "--depends-on", &blocker]);
    let s = Served::start(&env, &[], &[]);
    let state = http(&s.url("/api/v1/state"), &[]);
    assert_eq!(state.status, 200, "{}", state.body);
    assert_eq!(
        state.header("content-type").as_deref(),
        Some("application/json")
    );
    let state = state.json();
    let status = env.cwo(&["status", "--format", "json"]).ok().json();
    assert_eq!(state["status"]["tasks"], status["tasks"]);
    assert_eq!(state["status"]["workers"], status["workers"]);
    assert_eq!(state["status"]["pull_requests"], status["pull_requests"]);
    let cost = env
        .cwo(&[
            "cost",
            "--by",
            "day",
            "--since",
            &chrono::Utc::now().format("%Y-%m-01").to_string(),
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(state["cost"]["by_day"]["rows"], cost["rows"]);
    assert_eq!(state["budget"]["limit_usd"], 5.0);
    assert_eq!(state["budget"]["status"], "ok", "{}", state["budget"]);
    let mut settings = crate::common::filters(&env);
    settings.add_filter(r#""(today_usd|month_usd|expected_usd|list_usd|known_expected_usd|known_list_usd|percent|billed_seconds|fleet_hourly_usd|hourly_usd)": [0-9.e-]+"#, r#""$1": [USD]"#);
    settings.add_filter(r#""controller_pid": "\d+""#, r#""controller_pid": "[PID]""#);
    settings.add_filter(r#""day": "\d{4}-\d{2}-\d{2}""#, r#""day": "[DAY]""#);
    settings.bind(|| insta::assert_json_snapshot!("serve_state", state));

    let task = http(&s.url(&format!("/api/v1/tasks/{done}")), &[]).json();
    assert_eq!(task["schema_version"], 1);
    assert_eq!(task["task"]["state"], "complete");
    assert_eq!(task["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(task["attempts"][0]["outcome"], "done");
    let pending = http(&s.url(&format!("/api/v1/tasks/{waiting}")), &[]).json();
    assert_eq!(pending["task"]["state"], "pending");
    assert_eq!(pending["attempts"], serde_json::json!([]));
    let workers = http(&s.url("/api/v1/workers"), &[]).json();
    assert_eq!(workers["workers"], serde_json::json!([]));
    let nope = http(&s.url("/api/v1/tasks/proj-00000000"), &[]);
    assert_eq!(nope.status, 404);
    assert_eq!(nope.json()["error"], "no task proj-00000000");
    let route = http(&s.url("/api/v2/nothing"), &[]);
    assert_eq!(route.status, 404);
    assert!(
        route.json()["error"]
            .as_str()
            .unwrap()
            .contains("/api/v1/state")
    );
    let (code, err) = s.stop();
    assert_eq!(code, Some(0), "{err}");
}

/// `cwo github webhook-url`: what GitHub's form wants, with the secret's reference (never its
/// value) and what stands between GitHub and the URL.
#[test]
fn webhook_url_says_what_to_paste_and_what_is_missing() {
    let env = project(COMMITTING, "public_url = \"https://cwo.example.com/\"");
    let out = env
        .cwo(&["github", "webhook-url", "--format", "json"])
        .ok()
        .json();
    assert_eq!(
        out["payload_url"],
        "https://cwo.example.com/webhooks/github"
    );
    assert_eq!(out["content_type"], "application/json");
    assert_eq!(out["secret"], "env:TEST_HOOK_SECRET");
    let events: Vec<&str> = out["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        events.contains(&"issues") && events.contains(&"check_suite"),
        "{events:?}"
    );
    let warnings = out["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].as_str().unwrap().contains("set serve.token"),
        "{warnings:?}"
    );
    let bare = TestEnv::new();
    let text = bare.cwo(&["github", "webhook-url"]).ok();
    assert!(
        text.stdout
            .contains("Payload URL:   http://127.0.0.1:8484/webhooks/github"),
        "{}",
        text.stdout
    );
    assert!(
        text.stderr.contains("GitHub cannot reach it"),
        "{}",
        text.stderr
    );
    assert!(
        text.stderr.contains("github.webhook_secret is not set"),
        "{}",
        text.stderr
    );
    assert!(!text.stdout.contains("warning"), "{}", text.stdout);
}

/// The dashboard in a real browser (headless Chromium over its DevTools pipe) while a fleet of
/// two runs: the workers and the task board, a task's log growing live over SSE, no page-wide
/// horizontal scroll on a phone's width, and with JavaScript off the same tables rendered by
/// the server.
#[test]
fn the_dashboard_in_a_real_browser_shows_the_fleet_and_a_live_log() {
    let mut b = match crate::common::browser::Browser::launch() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    // Each agent ticks until released, and says what the test leaves in RELEASE.say.
    let env = project(
        r#"i=0
while [ ! -e "$RELEASE" ]; do
  i=$((i + 1)); echo "tick $i of $CWO_TASK_ID"
  if [ -e "$RELEASE.say" ]; then cat "$RELEASE.say"; fi
  sleep 0.1
done
git commit -q --allow-empty -m "$CWO_TASK_ID""#,
        "[workers]\nmax = 2",
    );
    let ids: Vec<String> = ["first <task>", "second task", "third task"]
        .iter()
        .map(|t| env.add(&[t]))
        .collect();
    let s = Served::start(&env, &[], &[]);
    assert!(
        wait_for(Duration::from_secs(60), || env
            .journal("SELECT count(*) FROM attempts WHERE ended_at IS NULL")
            == "2"),
        "two agents never ran: {}",
        s.stderr()
    );
    b.goto(&s.url("/")).unwrap();
    b.wait_until(
        "document.querySelectorAll('#workers tbody tr').length === 2",
        Duration::from_secs(20),
    )
    .unwrap();
    let column = |b: &mut crate::common::browser::Browser, state: &str| -> String {
        b.eval(&format!(
            "document.querySelector('.column[data-state=\"{state}\"]').textContent"
        ))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
    };
    let running = column(&mut b, "in_progress");
    assert!(
        running.contains("first <task>") && running.contains("second task"),
        "{running}"
    );
    assert!(column(&mut b, "pending").contains("third task"));
    let money = b
        .eval("document.getElementById('money').textContent")
        .unwrap();
    assert!(
        money.as_str().unwrap().contains("/h now (2 worker(s))"),
        "{money}"
    );
    let shot = env.tmp.path().join("dashboard.png");
    b.screenshot(&shot).unwrap();
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );

    // A task's log: what the agent says after the page loaded arrives over the stream.
    b.goto(&s.url(&format!("/?task={}", ids[0]))).unwrap();
    b.wait_until(
        &format!(
            "document.getElementById('logtext').textContent.includes('of {}')",
            ids[0]
        ),
        Duration::from_secs(20),
    )
    .unwrap();
    std::fs::write(
        env.tmp.path().join("release.say"),
        "said after the page loaded\n",
    )
    .unwrap();
    b.wait_until(
        "document.getElementById('logtext').textContent.includes('said after the page loaded')",
        Duration::from_secs(20),
    )
    .unwrap();
    // The board refreshes itself: the third task, claimed once a worker is free, shows up
    // without a reload.
    std::fs::write(env.tmp.path().join("release"), "").unwrap();
    b.wait_until(
        "document.querySelector('.column[data-state=\"complete\"]').textContent.includes('first')",
        Duration::from_secs(60),
    )
    .unwrap();

    // A phone: the page itself does not scroll sideways (wide tables scroll in their box).
    b.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
    )
    .unwrap();
    b.goto(&s.url("/")).unwrap();
    let wide = b
        .eval("document.documentElement.scrollWidth")
        .unwrap()
        .as_i64()
        .unwrap();
    assert!(wide <= 390, "the page is {wide}px wide on a 390px screen");
    b.screenshot(&env.tmp.path().join("phone.png")).unwrap();

    // JavaScript off: the same tables, rendered by the server.
    let mut plain = crate::common::browser::Browser::launch().unwrap();
    plain.disable_javascript().unwrap();
    plain.goto(&s.url("/")).unwrap();
    let dom = plain.dom().unwrap();
    assert!(dom.contains("<h2>Workers</h2>"), "{dom}");
    for id in &ids {
        assert!(dom.contains(id.as_str()), "{id} not on the page: {dom}");
    }
    assert!(
        dom.contains("first &lt;task&gt;"),
        "titles are escaped: {dom}"
    );
    assert!(wait_for(Duration::from_secs(60), || ids
        .iter()
        .all(|id| env.ball(id)["state"] == "complete")));
    let (code, err) = s.stop();
    assert_eq!(code, Some(0), "{err}");
}

/// Pull requests go to a GitHub repository cwo has no credentials for: the loop runs (it says
/// why there will be no pull requests), and /healthz says the forge is in error, not off.
#[test]
fn healthz_reports_a_forge_without_credentials_as_an_error() {
    let env = project(COMMITTING, "");
    let path = env.project.join("cwo.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "[github]\n",
            "[github]\nrepo = \"owner/name\"\napi_url = \"http://127.0.0.1:9\"\n",
        ),
    )
    .unwrap();
    let s = Served::start(&env, &[], &[]);
    let mut h = http(&s.url("/healthz"), &[]);
    assert!(wait_for(Duration::from_secs(20), || {
        h = http(&s.url("/healthz"), &[]);
        h.json()["services"]["forge"]["status"] != "pending"
    }));
    assert_eq!(h.status, 503, "{}", h.body);
    let j = h.json();
    assert_eq!(j["services"]["forge"]["status"], "error", "{j}");
    assert!(
        j["services"]["forge"]["detail"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("token"),
        "{j}"
    );
    assert_eq!(j["services"]["tracker"]["status"], "ok", "{j}");
    let (code, err) = s.stop();
    assert_eq!(code, Some(0), "{err}");
}

/// `cwo doctor` says whether `cwo serve` would start with these settings and whether its
/// secrets resolve, before anyone relies on the webhook.
#[test]
fn doctor_checks_what_serve_needs() {
    let env = project(COMMITTING, "");
    let serve_check = |vars: &[(&str, &str)]| {
        let mut cmd = env.cmd(&["doctor", "--format", "json"]);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        crate::common::doctor_check(&doc, "serve")
    };
    let missing = serve_check(&[]);
    assert_eq!(missing["status"], "fail", "{missing}");
    assert!(
        missing["detail"]
            .as_str()
            .unwrap()
            .contains("TEST_HOOK_SECRET is not set"),
        "{missing}"
    );
    let fine = serve_check(&[("TEST_HOOK_SECRET", SECRET)]);
    assert_eq!(fine["status"], "ok", "{fine}");
    assert!(
        fine["detail"]
            .as_str()
            .unwrap()
            .contains("webhooks verified with github.webhook_secret"),
        "{fine}"
    );
    let open = env
        .cmd(&[
            "--config",
            "serve.listen=0.0.0.0:8484",
            "doctor",
            "--format",
            "json",
        ])
        .env("TEST_HOOK_SECRET", SECRET)
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&open.stdout).unwrap();
    let check = crate::common::doctor_check(&doc, "serve");
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["fix"].as_str().unwrap().contains("serve.token"),
        "{check}"
    );
}
