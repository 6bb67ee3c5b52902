//! The headless-Chromium driver (tests/common/browser.rs) on a page like `cwo serve`'s dashboard:
//! a server-rendered table and a live log fed by server-sent events, whose stream stays open for
//! as long as the page does.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::browser::{Browser, WINDOW};

/// One request the site answered: its path and its Authorization header.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    authorization: Option<String>,
}

/// The page's server: `/` is the page, `/events` an event stream that sends `event N` every
/// 200 ms and never ends by itself (it stops when the browser goes or the site is dropped).
struct Site {
    url: String,
    server: Arc<tiny_http::Server>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>cwo dashboard</title>
<style>body{font-family:sans-serif} table{border-collapse:collapse} td,th{border:1px solid #888;padding:4px}</style>
</head><body>
<h1>Workers</h1>
<table id="workers">
<tr><th>worker</th><th>state</th><th>task</th></tr>
<tr><td>cwo-proj-a1b2c3</td><td>running</td><td>proj-0000beef</td></tr>
<tr><td>cwo-proj-d4e5f6</td><td>idle</td><td></td></tr>
</table>
<h2>Log</h2>
<ul id="log"></ul>
<script>
const source = new EventSource("/events");
source.onmessage = (e) => {
  const li = document.createElement("li");
  li.className = "event";
  li.textContent = e.data;
  document.getElementById("log").appendChild(li);
};
</script>
</body></html>
"#;

impl Site {
    fn start() -> Site {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}/", server.server_addr().to_ip().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (srv, log, halt) = (server.clone(), seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for req in srv.incoming_requests() {
                let authorization = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Authorization"))
                    .map(|h| h.value.to_string());
                let path = req.url().to_string();
                log.lock().unwrap().push(Seen {
                    path: path.clone(),
                    authorization,
                });
                match path.as_str() {
                    "/" => {
                        let html = tiny_http::Header::from_bytes(
                            "Content-Type",
                            "text/html; charset=utf-8",
                        )
                        .unwrap();
                        let _ =
                            req.respond(tiny_http::Response::from_string(PAGE).with_header(html));
                    }
                    "/events" => {
                        let halt = halt.clone();
                        std::thread::spawn(move || stream_events(req, &halt));
                    }
                    _ => {
                        let _ = req.respond(tiny_http::Response::empty(404));
                    }
                }
            }
        });
        Site {
            url,
            server,
            seen,
            stop,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.server.unblock();
    }
}

/// An event stream written by hand on the raw connection: tiny_http's chunked responses buffer
/// 8 KiB before sending anything, which would hold the events back. With no length and no
/// chunking the body runs until the connection closes, which it never does on its own here.
fn stream_events(req: tiny_http::Request, stop: &AtomicBool) {
    let mut w = req.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
    if w.write_all(head.as_bytes())
        .and_then(|()| w.flush())
        .is_err()
    {
        return;
    }
    // Bounded (a minute) so that a stream nobody closes still ends.
    for n in 1..=300 {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let event = format!("data: event {n}\n\n");
        if w.write_all(event.as_bytes())
            .and_then(|()| w.flush())
            .is_err()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn launch() -> Option<Browser> {
    match Browser::launch() {
        Ok(b) => Some(b),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// Width and height from a PNG's IHDR chunk, after checking the signature.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 24 && &png[12..16] == b"IHDR",
        "not a PNG: {:?}",
        &png[..png.len().min(16)]
    );
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    (be(&png[16..20]), be(&png[20..24]))
}

#[test]
fn page_with_an_open_event_stream_loads_updates_and_shows() {
    let site = Site::start();
    let started = Instant::now();
    let Some(mut b) = launch() else { return };
    let launched = started.elapsed();
    b.set_header("Authorization", "Bearer dashboard-token")
        .unwrap();
    b.goto(&site.url).unwrap();
    let loaded = started.elapsed() - launched;

    // The stream stays open, yet the page updates from it as the events come.
    b.wait_until(
        "document.querySelectorAll('#log li.event').length >= 3",
        Duration::from_secs(15),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("page.png");
    let before = Instant::now();
    b.screenshot(&shot).unwrap();
    eprintln!(
        "launch {launched:?}, load {loaded:?}, screenshot {:?}",
        before.elapsed()
    );

    let dom = b.dom().unwrap();
    assert!(dom.starts_with("<html"), "{dom}");
    assert!(dom.contains(r#"<table id="workers">"#), "{dom}");
    assert!(dom.contains("<td>cwo-proj-a1b2c3</td>"), "{dom}");
    assert!(dom.contains(r#"<li class="event">event 1</li>"#), "{dom}");
    assert!(dom.contains(r#"<li class="event">event 3</li>"#), "{dom}");
    let events = b.eval("[...document.querySelectorAll('#log li')].map(li => li.textContent)");
    let events = events.unwrap();
    let events = events.as_array().unwrap();
    assert!(events.len() >= 3, "{events:?}");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e,
            &format!("event {}", i + 1),
            "in order, none lost: {events:?}"
        );
    }
    // A promise's value, and a thrown error, come back as such.
    assert_eq!(
        b.eval("new Promise(r => setTimeout(() => r(6 * 7), 50))")
            .unwrap(),
        42
    );
    let err = b.eval("(() => { throw new Error('boom') })()").unwrap_err();
    assert!(err.contains("boom"), "{err}");

    let png = std::fs::read(&shot).unwrap();
    assert_eq!(png_size(&png), WINDOW);
    // A rendered page, not a blank one: Chromium's PNG of a blank 1280x800 page is under 5 kB.
    assert!(
        png.len() > 10_000 && png.len() < 5_000_000,
        "{} bytes",
        png.len()
    );

    // The header reached both the page and the stream the page opened.
    let seen = site.seen();
    for path in ["/", "/events"] {
        let req = seen.iter().find(|s| s.path == path);
        let req = req.unwrap_or_else(|| panic!("no request for {path}: {seen:?}"));
        assert_eq!(
            req.authorization.as_deref(),
            Some("Bearer dashboard-token"),
            "{seen:?}"
        );
    }

    // Waits that cannot end fail with what they waited for.
    let err = b
        .wait_until("document.title === 'never'", Duration::from_millis(300))
        .unwrap_err();
    assert!(err.contains("document.title === 'never'"), "{err}");
    assert!(err.contains("last value false"), "{err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let err = b.goto(&format!("http://127.0.0.1:{port}/")).unwrap_err();
    assert!(err.contains("ERR_CONNECTION_REFUSED"), "{err}");
}

#[test]
fn with_javascript_disabled_the_server_rendered_page_shows_alone() {
    let site = Site::start();
    let Some(mut b) = launch() else { return };
    b.disable_javascript().unwrap();
    b.goto(&site.url).unwrap();
    // Long enough for several events, had the script run (one every 200 ms).
    std::thread::sleep(Duration::from_millis(1000));
    let dom = b.dom().unwrap();
    assert!(dom.contains("<td>cwo-proj-d4e5f6</td>"), "{dom}");
    assert!(dom.contains(r#"<ul id="log"></ul>"#), "{dom}");
    assert_eq!(
        b.eval("document.querySelectorAll('#log li').length")
            .unwrap(),
        0
    );
    let seen = site.seen();
    assert!(seen.iter().any(|s| s.path == "/"), "{seen:?}");
    assert!(!seen.iter().any(|s| s.path == "/events"), "{seen:?}");
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("static.png");
    b.screenshot(&shot).unwrap();
    assert_eq!(png_size(&std::fs::read(&shot).unwrap()), WINDOW);
}

#[test]
fn a_crash_fails_the_calls_at_once_and_says_so() {
    let site = Site::start();
    let Some(mut b) = launch() else { return };
    b.goto(&site.url).unwrap();
    // The renderer: page calls fail at once instead of at their 30 s timeout.
    let started = Instant::now();
    let err = b.call("Page.crash", serde_json::json!({})).unwrap_err();
    assert!(
        err.contains("the page is gone (Inspector.targetCrashed)"),
        "{err}"
    );
    let err = b.dom().unwrap_err();
    assert!(err.contains("the page is gone"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // The browser itself: its exit and its stderr.
    let err = b
        .browser_call("Browser.crash", serde_json::json!({}))
        .unwrap_err();
    assert!(
        err.starts_with("waiting for the answer to Browser.crash: chromium exited ("),
        "{err}"
    );
    assert!(err.contains("its stderr ends:"), "{err}");
    let err = b.browser_call("Browser.getVersion", serde_json::json!({}));
    assert!(err.unwrap_err().contains("chromium exited"));
}
