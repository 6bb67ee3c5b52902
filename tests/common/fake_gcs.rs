//! A fake of the Cloud Storage JSON API (https://cloud.google.com/storage/docs/json_api) on
//! 127.0.0.1, enough for `cwo image import`: object uploads through the google-cloud-storage
//! crate's `Storage` client (multipart, resumable in chunks, media), buckets get and insert with
//! lifecycle rules, objects get (metadata or `alt=media`) and delete, every request recorded,
//! with injected HTTP failures and a fake clock for the lifecycle's `age`.
//!
//! What the crate (1.21) sends for `write_object(…).send_buffered()` / `.send_unbuffered()`:
//! below its resumable threshold (16 MiB unless set) one
//! `POST /upload/storage/v1/b/{bucket}/o?uploadType=multipart&name=…` whose
//! `multipart/related` body has the metadata JSON, the media and, when it computed the CRC32C
//! as it read, a third part with the trailing checksums; at or above it (or of unknown size)
//! `POST …?uploadType=resumable&name=…` (metadata JSON; the session URI comes back in
//! `Location`), then `PUT`s to that URI with `Content-Range`: the buffered path in chunks of
//! its buffer size (8 MiB unless set, a multiple of 256 KiB), each answered 308 with the
//! persisted `Range` until the last, answered 200 with the object; the unbuffered path one PUT
//! of the rest (`bytes {o}-{n-1}/{n}`, or `bytes {o}-*/*` when the size is unknown), after a
//! `bytes */*` query when it resumes. It checks the answer's `crc32c` (and `md5Hash` when it
//! computed one) against what it sent, so the fake computes both.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::fake_gce::{MissingObject, ObjectReader};

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The path, percent-encoded as sent.
    pub path: String,
    /// The query string ("" when none).
    pub query: String,
    pub body_len: usize,
    pub content_range: Option<String>,
    pub content_type: Option<String>,
    /// The status the fake answered with.
    pub status: u16,
}

#[derive(Default)]
pub struct Faults {
    /// The next requests whose "METHOD path?query" contains the key answer with the status
    /// (the request's data is dropped, as a failed request's is).
    pub http: VecDeque<(String, u16)>,
}

struct Object {
    data: Vec<u8>,
    /// The object resource, as `objects.get` shows it.
    meta: Value,
    /// When it was created, on the fake's clock (for the lifecycle's `age`).
    created: Instant,
}

struct Bucket {
    body: Value,
    objects: BTreeMap<String, Object>,
}

/// A resumable upload session (https://cloud.google.com/storage/docs/performing-resumable-uploads).
struct Session {
    bucket: String,
    name: String,
    /// The metadata the session was started with.
    meta: Value,
    if_generation_match: Option<String>,
    data: Vec<u8>,
    /// The object, once the last byte has arrived.
    done: Option<Value>,
}

#[derive(Default)]
struct State {
    buckets: BTreeMap<String, Bucket>,
    /// Bucket names someone else owns: the bucket namespace is global.
    foreign: HashSet<String>,
    sessions: HashMap<String, Session>,
    next: u64,
    log: Vec<Recorded>,
    /// How far the fake's clock is ahead of the real one (`advance`).
    ahead: Duration,
}

pub struct FakeGcs {
    pub url: String,
    /// The project `buckets.insert` is asked for.
    pub project: String,
    state: Arc<Mutex<State>>,
    pub faults: Arc<Mutex<Faults>>,
    server: Arc<tiny_http::Server>,
}

/// The project number the fake's buckets show.
pub const PROJECT_NUMBER: &str = "415104041262";

const KIB256: usize = 256 * 1024;

impl FakeGcs {
    pub fn start(project: &str) -> FakeGcs {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind the fake"));
        let port = server.server_addr().to_ip().unwrap().port();
        let fake = FakeGcs {
            url: format!("http://127.0.0.1:{port}"),
            project: project.to_string(),
            state: Arc::default(),
            faults: Arc::default(),
            server: server.clone(),
        };
        let (state, faults, url) = (fake.state.clone(), fake.faults.clone(), fake.url.clone());
        std::thread::spawn(move || {
            for request in server.incoming_requests() {
                let (state, faults, url) = (state.clone(), faults.clone(), url.clone());
                std::thread::spawn(move || handle(request, &state, &faults, &url));
            }
        });
        fake
    }

    pub fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap()
    }

    /// Every request, in order.
    pub fn log(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().log.clone()
    }

    /// The buckets, as `buckets.get` shows them.
    pub fn buckets(&self) -> Vec<Value> {
        let st = self.state.lock().unwrap();
        st.buckets.values().map(|b| b.body.clone()).collect()
    }

    /// Every object as (bucket, object resource).
    pub fn objects(&self) -> Vec<(String, Value)> {
        let st = self.state.lock().unwrap();
        st.buckets
            .iter()
            .flat_map(|(b, bucket)| bucket.objects.values().map(|o| (b.clone(), o.meta.clone())))
            .collect()
    }

    /// An object's bytes.
    pub fn object(&self, bucket: &str, name: &str) -> Option<Vec<u8>> {
        let st = self.state.lock().unwrap();
        Some(st.buckets.get(bucket)?.objects.get(name)?.data.clone())
    }

    /// A bucket made by someone else (the console, an earlier run), empty, with no lifecycle.
    pub fn add_bucket(&self, name: &str, location: &str) {
        let mut st = self.state.lock().unwrap();
        let body = bucket_body(&mut st, name, location, None);
        st.buckets.insert(
            name.to_string(),
            Bucket {
                body,
                objects: BTreeMap::new(),
            },
        );
    }

    /// A bucket name another project owns: `buckets.insert` answers 409 and `buckets.get` 403,
    /// as the shared bucket namespace does.
    pub fn add_foreign_bucket(&self, name: &str) {
        self.state.lock().unwrap().foreign.insert(name.to_string());
    }

    /// Puts an object directly (as `gcloud storage cp` would).
    pub fn put_object(&self, bucket: &str, name: &str, data: &[u8]) {
        let mut st = self.state.lock().unwrap();
        assert!(st.buckets.contains_key(bucket), "add the bucket first");
        insert_object(&mut st, &self.url, bucket, name, data.to_vec(), &json!({}));
    }

    /// Moves the fake's clock forward and applies the buckets' lifecycle rules, as Cloud
    /// Storage does in the background ("Object Lifecycle Management … the age condition is
    /// satisfied when a resource reaches the specified age", in days;
    /// https://cloud.google.com/storage/docs/lifecycle).
    pub fn advance(&self, by: Duration) {
        let mut st = self.state.lock().unwrap();
        st.ahead += by;
        let now = Instant::now() + st.ahead;
        for bucket in st.buckets.values_mut() {
            let rules = bucket.body["lifecycle"]["rule"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            bucket.objects.retain(|name, object| {
                !rules.iter().any(|rule| {
                    let c = &rule["condition"];
                    let old = c["age"].as_u64().is_none_or(|days| {
                        object.created + Duration::from_secs(days * 86_400) <= now
                    });
                    let prefix = c["matchesPrefix"].as_array().is_none_or(|p| {
                        p.iter().any(|p| name.starts_with(p.as_str().unwrap_or("")))
                    });
                    let suffix = c["matchesSuffix"]
                        .as_array()
                        .is_none_or(|s| s.iter().any(|s| name.ends_with(s.as_str().unwrap_or(""))));
                    rule["action"]["type"] == "Delete" && old && prefix && suffix
                })
            });
        }
    }

    /// How Compute reads this fake's objects for an image's `rawDisk.source`: hand it to
    /// `FakeGce::link_storage`.
    pub fn reader(&self) -> ObjectReader {
        let state = self.state.clone();
        Arc::new(move |bucket: &str, name: &str| {
            let st = state.lock().unwrap();
            let b = st.buckets.get(bucket).ok_or(MissingObject::Bucket)?;
            let o = b.objects.get(name).ok_or(MissingObject::Object)?;
            Ok(o.data.len() as u64)
        })
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

/// CRC32C (Castagnoli), as Cloud Storage computes an object's `crc32c`.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, entry) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *entry = c;
        }
        t
    });
    let mut crc = !0u32;
    for b in data {
        crc = table[((crc ^ u32::from(*b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// MD5 (RFC 1321), as Cloud Storage computes an object's `md5Hash`.
pub fn md5(data: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: Vec<u32> = (0..64)
        .map(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32)
        .collect();
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_le_bytes());
    let mut h: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    for chunk in msg.chunks(64) {
        let m: Vec<u32> = chunk
            .chunks(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let [mut a, mut b, mut c, mut d] = h;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(k[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        h = [
            h[0].wrapping_add(a),
            h[1].wrapping_add(b),
            h[2].wrapping_add(c),
            h[3].wrapping_add(d),
        ];
    }
    let mut out = [0u8; 16];
    for (i, word) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
    }
    out
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Cloud Storage's error shape (https://cloud.google.com/storage/docs/json_api/v1/status-codes).
fn error(code: u16, reason: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}]}})
}

fn no_bucket() -> (u16, Value) {
    let message = "The specified bucket does not exist.";
    (404, error(404, "notFound", message))
}

/// What the fake answers: a status, a body (JSON, or none), and extra headers.
struct Reply {
    status: u16,
    body: Option<Vec<u8>>,
    json: bool,
    headers: Vec<(String, String)>,
}

impl From<(u16, Value)> for Reply {
    fn from((status, body): (u16, Value)) -> Reply {
        Reply {
            status,
            body: Some(serde_json::to_vec(&body).unwrap()),
            json: true,
            headers: Vec::new(),
        }
    }
}

impl Reply {
    fn empty(status: u16) -> Reply {
        Reply {
            status,
            body: None,
            json: false,
            headers: Vec::new(),
        }
    }
}

/// Percent-decoding (`+` is a space only in a query string).
fn decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    Ok(v) => out.push(v),
                    Err(_) => out.extend_from_slice(&b[i..i + 3]),
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

fn query_map(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k, true), decode(v, true))
        })
        .collect()
}

/// Bucket names (https://cloud.google.com/storage/docs/buckets#naming): 3–63 characters
/// (dotted names up to 222) of lowercase letters, digits, `-`, `_` and `.`, starting and
/// ending with a letter or digit.
fn valid_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    let max = if name.contains('.') { 222 } else { 63 };
    (3..=max).contains(&b.len())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        })
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn bucket_body(st: &mut State, name: &str, location: &str, lifecycle: Option<&Value>) -> Value {
    st.next += 1;
    let location = location.to_uppercase();
    // Multi-regions (US, EU, ASIA) and dual-regions are not single regions.
    let location_type = if location.contains('-') {
        "region"
    } else {
        "multi-region"
    };
    let mut body = json!({
        "kind": "storage#bucket", "id": name, "name": name,
        "selfLink": format!("https://www.googleapis.com/storage/v1/b/{name}"),
        "projectNumber": PROJECT_NUMBER, "metageneration": "1", "location": location,
        "locationType": location_type, "storageClass": "STANDARD",
        "etag": format!("CA{}=", st.next), "timeCreated": now_rfc3339(), "updated": now_rfc3339(),
    });
    if let Some(l) = lifecycle {
        body["lifecycle"] = l.clone();
    }
    body
}

/// Validates a bucket's `lifecycle` as Cloud Storage does
/// (https://cloud.google.com/storage/docs/json_api/v1/buckets#lifecycle): each rule needs an
/// `action.type` and at least one condition; `age` is a non-negative number of days. The fake
/// applies (`FakeGcs::advance`) `Delete` with `age`, `matchesPrefix` and `matchesSuffix`;
/// other actions and conditions are refused as not modelled.
fn check_lifecycle(lifecycle: &Value) -> Result<(), String> {
    let Some(rules) = lifecycle.get("rule") else {
        return Ok(());
    };
    for (i, rule) in rules
        .as_array()
        .ok_or("lifecycle.rule must be a list")?
        .iter()
        .enumerate()
    {
        match rule["action"]["type"].as_str() {
            Some("Delete") => {}
            None => return Err(format!("lifecycle.rule[{i}].action.type is required")),
            Some(other) => {
                return Err(format!(
                    "the fake does not model the lifecycle action {other:?} (rule {i})"
                ));
            }
        }
        let Some(condition) = rule["condition"].as_object().filter(|c| !c.is_empty()) else {
            return Err(format!(
                "lifecycle.rule[{i}].condition needs at least one condition"
            ));
        };
        for (key, value) in condition {
            match key.as_str() {
                "age" if value.as_u64().is_some() => {}
                "age" => {
                    return Err(format!(
                        "lifecycle.rule[{i}].condition.age must be a non-negative integer: {value}"
                    ));
                }
                "matchesPrefix" | "matchesSuffix" if value.is_array() => {}
                other => {
                    return Err(format!(
                        "the fake does not model the lifecycle condition {other:?} (rule {i})"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The object resource (https://cloud.google.com/storage/docs/json_api/v1/objects#resource).
fn object_meta(
    url: &str,
    bucket: &str,
    name: &str,
    generation: u64,
    data: &[u8],
    given: &Value,
) -> Value {
    let now = now_rfc3339();
    let enc = encode_segment(name);
    let mut meta = json!({
        "kind": "storage#object", "id": format!("{bucket}/{name}/{generation}"),
        "selfLink": format!("{url}/storage/v1/b/{bucket}/o/{enc}"),
        "mediaLink": format!("{url}/download/storage/v1/b/{bucket}/o/{enc}?generation={generation}&alt=media"),
        "name": name, "bucket": bucket, "generation": generation.to_string(),
        "metageneration": "1",
        "contentType": given["contentType"].as_str().unwrap_or("application/octet-stream"),
        "storageClass": "STANDARD", "size": data.len().to_string(),
        "md5Hash": b64(&md5(data)), "crc32c": b64(&crc32c(data).to_be_bytes()),
        "etag": b64(&generation.to_be_bytes()),
        "timeCreated": now, "updated": now, "timeStorageClassUpdated": now, "timeFinalized": now,
    });
    if let Some(m) = given.get("metadata").filter(|m| m.is_object()) {
        meta["metadata"] = m.clone();
    }
    meta
}

fn insert_object(
    st: &mut State,
    url: &str,
    bucket: &str,
    name: &str,
    data: Vec<u8>,
    given: &Value,
) -> Value {
    st.next += 1;
    let generation = 1_700_000_000_000_000 + st.next;
    let meta = object_meta(url, bucket, name, generation, &data, given);
    let created = Instant::now() + st.ahead;
    st.buckets.get_mut(bucket).expect("checked").objects.insert(
        name.to_string(),
        Object {
            data,
            meta: meta.clone(),
            created,
        },
    );
    meta
}

/// The checksums a client stated (in the metadata, a trailing multipart part, or an
/// `x-goog-hash` header) must be the data's: "If the checksum you supply doesn't match the
/// checksum Cloud Storage calculates, the upload fails" with 400
/// (https://cloud.google.com/storage/docs/data-validation).
fn check_checksums(stated: &Value, data: &[u8]) -> Result<(), (u16, Value)> {
    if let Some(c) = stated["crc32c"].as_str() {
        let calc = b64(&crc32c(data).to_be_bytes());
        if c != calc {
            let message =
                format!("Provided CRC32C \"{c}\" doesn't match calculated CRC32C \"{calc}\".");
            return Err((400, error(400, "invalid", &message)));
        }
    }
    if let Some(m) = stated["md5Hash"].as_str() {
        let calc = b64(&md5(data));
        if m != calc {
            let message =
                format!("Provided MD5 hash \"{m}\" doesn't match calculated MD5 hash \"{calc}\".");
            return Err((400, error(400, "invalid", &message)));
        }
    }
    Ok(())
}

/// `x-goog-hash: crc32c=…,md5=…` as the metadata fields it states.
fn goog_hash(header: Option<&str>) -> Value {
    let mut stated = json!({});
    for part in header.unwrap_or("").split(',') {
        match part.trim().split_once('=') {
            Some(("crc32c", v)) => stated["crc32c"] = json!(v),
            Some(("md5", v)) => stated["md5Hash"] = json!(v),
            _ => {}
        }
    }
    stated
}

/// `ifGenerationMatch` (https://cloud.google.com/storage/docs/request-preconditions): "0" means
/// the object must not exist, any other value must be its generation; else 412.
fn check_generation(
    st: &State,
    bucket: &str,
    name: &str,
    want: Option<&String>,
) -> Result<(), (u16, Value)> {
    let Some(want) = want else {
        return Ok(());
    };
    let current = st
        .buckets
        .get(bucket)
        .and_then(|b| b.objects.get(name))
        .map(|o| o.meta["generation"].as_str().unwrap_or("").to_string());
    let holds = match current {
        None => want == "0",
        Some(g) => *want == g,
    };
    if holds {
        Ok(())
    } else {
        let message = "At least one of the pre-conditions you specified did not hold.";
        Err((412, error(412, "conditionNotMet", message)))
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The parts of a `multipart/related` body, each as (its headers, lower-cased, and its bytes).
fn multipart_parts(content_type: &str, body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .ok_or("no boundary in the Content-Type")?;
    let delimiter = format!("--{boundary}").into_bytes();
    let mut at = find(body, &delimiter, 0).ok_or("no first boundary")? + delimiter.len();
    let mut parts = Vec::new();
    loop {
        if body[at..].starts_with(b"--") {
            return Ok(parts);
        }
        let headers_start = at + 2;
        let headers_end = find(body, b"\r\n\r\n", headers_start).ok_or("a part without headers")?;
        let content_start = headers_end + 4;
        let mut next_delimiter = b"\r\n".to_vec();
        next_delimiter.extend_from_slice(&delimiter);
        let content_end = find(body, &next_delimiter, content_start)
            .ok_or("a part without its closing boundary")?;
        let headers = String::from_utf8_lossy(&body[headers_start..headers_end]).to_lowercase();
        parts.push((headers, body[content_start..content_end].to_vec()));
        at = content_end + next_delimiter.len();
    }
}

/// `Content-Range` of a resumable PUT: `bytes {first}-{last}/{total|*}`, `bytes {first}-*/*`
/// (the rest in this request, size unknown) or `bytes */{total|*}` (a status query, or the
/// end of an upload whose bytes have all arrived).
struct Range {
    first: Option<u64>,
    last: Option<u64>,
    total: Option<u64>,
}

fn parse_range(header: &str) -> Option<Range> {
    let spec = header.trim().strip_prefix("bytes ")?;
    let (span, total) = spec.split_once('/')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    if span == "*" {
        return Some(Range {
            first: None,
            last: None,
            total,
        });
    }
    let (first, last) = span.split_once('-')?;
    let last = if last == "*" {
        None
    } else {
        Some(last.parse().ok()?)
    };
    Some(Range {
        first: Some(first.parse().ok()?),
        last,
        total,
    })
}

fn handle(
    mut request: tiny_http::Request,
    state: &Mutex<State>,
    faults: &Mutex<Faults>,
    url: &str,
) {
    let method = request.method().to_string();
    let raw = request.url().to_string();
    let (path, query) = raw.split_once('?').unwrap_or((&raw, ""));
    let (path, query) = (path.to_string(), query.to_string());
    let header = |name: &str| {
        request
            .headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str().to_string())
    };
    let content_range = header("content-range");
    let content_type = header("content-type");
    let hash = header("x-goog-hash");
    let mut body = Vec::new();
    let _ = request.as_reader().read_to_end(&mut body);
    let call = format!("{method} {path}?{query}");
    let injected = {
        let mut f = faults.lock().unwrap();
        f.http
            .iter()
            .position(|(k, _)| call.contains(k.as_str()))
            .and_then(|i| f.http.remove(i))
            .map(|(_, status)| status)
    };
    let reply = match injected {
        Some(status) => Reply::from((status, error(status, "backendError", "injected failure"))),
        None => {
            let mut st = state.lock().unwrap();
            let req = Req {
                method: &method,
                path: &path,
                q: query_map(&query),
                body: &body,
                content_range: content_range.as_deref(),
                content_type: content_type.as_deref(),
                hash: hash.as_deref(),
                url,
            };
            route(&mut st, &req)
        }
    };
    state.lock().unwrap().log.push(Recorded {
        method,
        path,
        query,
        body_len: body.len(),
        content_range,
        content_type,
        status: reply.status,
    });
    let data = reply.body.unwrap_or_default();
    let mut response = tiny_http::Response::from_data(data).with_status_code(reply.status);
    if reply.json {
        response.add_header(
            "Content-Type: application/json; charset=UTF-8"
                .parse::<tiny_http::Header>()
                .unwrap(),
        );
    }
    for (k, v) in reply.headers {
        response.add_header(tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap());
    }
    let _ = request.respond(response);
}

struct Req<'a> {
    method: &'a str,
    path: &'a str,
    q: HashMap<String, String>,
    body: &'a [u8],
    content_range: Option<&'a str>,
    content_type: Option<&'a str>,
    hash: Option<&'a str>,
    url: &'a str,
}

fn route(st: &mut State, req: &Req) -> Reply {
    let parts: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    match (req.method, &parts[..]) {
        // buckets.get (https://cloud.google.com/storage/docs/json_api/v1/buckets/get): 404 when
        // missing, 403 when another project owns the name.
        ("GET", ["storage", "v1", "b", bucket]) => {
            let bucket = decode(bucket, false);
            if st.foreign.contains(&bucket) {
                let message = "The caller does not have storage.buckets.get access to the Google Cloud Storage bucket. Permission 'storage.buckets.get' denied on resource (or it may not exist).";
                return (403, error(403, "forbidden", message)).into();
            }
            match st.buckets.get(&bucket) {
                Some(b) => (200, b.body.clone()).into(),
                None => no_bucket().into(),
            }
        }
        // buckets.insert (https://cloud.google.com/storage/docs/json_api/v1/buckets/insert):
        // `project` is required; the name must be valid and free (409 "Your previous request
        // to create the named bucket succeeded and you already own it." for one of ours, 409
        // "The requested bucket name is not available…" for someone else's); `location`
        // defaults to US and is shown upper-case; `lifecycle` is validated (`check_lifecycle`).
        ("POST", ["storage", "v1", "b"]) => {
            if req.q.get("project").is_none_or(|p| p.is_empty()) {
                return (400, error(400, "required", "Required parameter: project")).into();
            }
            let input: Value = serde_json::from_slice(req.body).unwrap_or(json!({}));
            let name = input["name"].as_str().unwrap_or("").to_string();
            if !valid_bucket_name(&name) {
                let message = format!("Invalid bucket name: '{name}'");
                return (400, error(400, "invalid", &message)).into();
            }
            if st.buckets.contains_key(&name) {
                let message = "Your previous request to create the named bucket succeeded and you already own it.";
                return (409, error(409, "conflict", message)).into();
            }
            if st.foreign.contains(&name) {
                let message = "The requested bucket name is not available. The bucket namespace is shared by all users of the system. Please select a different name and try again.";
                return (409, error(409, "conflict", message)).into();
            }
            if let Some(l) = input.get("lifecycle")
                && let Err(why) = check_lifecycle(l)
            {
                return (400, error(400, "invalid", &why)).into();
            }
            let location = input["location"].as_str().unwrap_or("US");
            let body = bucket_body(st, &name, location, input.get("lifecycle"));
            st.buckets.insert(
                name,
                Bucket {
                    body: body.clone(),
                    objects: BTreeMap::new(),
                },
            );
            (200, body).into()
        }
        // objects.get (https://cloud.google.com/storage/docs/json_api/v1/objects/get): the
        // metadata, or with `alt=media` the data.
        ("GET", ["storage", "v1", "b", bucket, "o", object]) => {
            let (bucket, object) = (decode(bucket, false), decode(object, false));
            let Some(b) = st.buckets.get(&bucket) else {
                return no_bucket().into();
            };
            let Some(o) = b.objects.get(&object) else {
                let message = format!("No such object: {bucket}/{object}");
                return (404, error(404, "notFound", &message)).into();
            };
            if req.q.get("alt").map(String::as_str) == Some("media") {
                return Reply {
                    status: 200,
                    body: Some(o.data.clone()),
                    json: false,
                    headers: vec![(
                        "Content-Type".into(),
                        o.meta["contentType"].as_str().unwrap_or("").to_string(),
                    )],
                };
            }
            (200, o.meta.clone()).into()
        }
        // objects.delete (https://cloud.google.com/storage/docs/json_api/v1/objects/delete):
        // 204 with no body; 404 when missing.
        ("DELETE", ["storage", "v1", "b", bucket, "o", object]) => {
            let (bucket, object) = (decode(bucket, false), decode(object, false));
            let Some(b) = st.buckets.get_mut(&bucket) else {
                return no_bucket().into();
            };
            match b.objects.remove(&object) {
                Some(_) => Reply::empty(204),
                None => {
                    let message = format!("No such object: {bucket}/{object}");
                    (404, error(404, "notFound", &message)).into()
                }
            }
        }
        // objects.insert (https://cloud.google.com/storage/docs/json_api/v1/objects/insert) with
        // `uploadType` multipart, media or resumable (https://cloud.google.com/storage/docs/uploads-downloads).
        ("POST", ["upload", "storage", "v1", "b", bucket, "o"]) => {
            upload_start(st, req, &decode(bucket, false))
        }
        // A resumable session's PUTs (https://cloud.google.com/storage/docs/performing-resumable-uploads).
        ("PUT", ["upload", "storage", "v1", "b", _, "o"]) => upload_put(st, req),
        _ => {
            let message = format!("the fake does not serve {} {}", req.method, req.path);
            (404, error(404, "notFound", &message)).into()
        }
    }
}

/// The start of an upload: a whole object (multipart, media) or a resumable session. An upload
/// into a bucket that does not exist answers 404 "The specified bucket does not exist.".
fn upload_start(st: &mut State, req: &Req, bucket: &str) -> Reply {
    if !st.buckets.contains_key(bucket) {
        return no_bucket().into();
    }
    let generation = req.q.get("ifGenerationMatch");
    match req.q.get("uploadType").map(String::as_str) {
        // A multipart upload: "the first part… metadata… the second part… the object data"
        // (https://cloud.google.com/storage/docs/uploading-objects#rest-upload-objects); the
        // google-cloud-storage crate adds a third part with the checksums it computed as it
        // read the data, which are checked like the metadata's.
        Some("multipart") => {
            let parts = match multipart_parts(req.content_type.unwrap_or(""), req.body) {
                Ok(parts) if parts.len() >= 2 => parts,
                Ok(_) => {
                    return (
                        400,
                        error(
                            400,
                            "invalid",
                            "A multipart upload needs a metadata part and a media part.",
                        ),
                    )
                        .into();
                }
                Err(why) => {
                    return (
                        400,
                        error(400, "invalid", &format!("Malformed multipart body: {why}")),
                    )
                        .into();
                }
            };
            let meta: Value = match serde_json::from_slice(&parts[0].1) {
                Ok(m) => m,
                Err(e) => {
                    return (
                        400,
                        error(
                            400,
                            "parseError",
                            &format!("Metadata part is not JSON: {e}"),
                        ),
                    )
                        .into();
                }
            };
            let data = parts[1].1.clone();
            let name = req
                .q
                .get("name")
                .cloned()
                .or_else(|| meta["name"].as_str().map(str::to_string))
                .unwrap_or_default();
            if name.is_empty() {
                return (400, error(400, "required", "Required object name")).into();
            }
            if let Err(e) = check_checksums(&meta, &data) {
                return e.into();
            }
            for (_, trailing) in &parts[2..] {
                let stated: Value = serde_json::from_slice(trailing).unwrap_or(json!({}));
                if let Err(e) = check_checksums(&stated, &data) {
                    return e.into();
                }
            }
            if let Err(e) = check_generation(st, bucket, &name, generation) {
                return e.into();
            }
            (200, insert_object(st, req.url, bucket, &name, data, &meta)).into()
        }
        // A simple upload: the body is the data, `name` in the query.
        Some("media") => {
            let Some(name) = req.q.get("name").filter(|n| !n.is_empty()) else {
                return (400, error(400, "required", "Required object name")).into();
            };
            if let Err(e) = check_generation(st, bucket, name, generation) {
                return e.into();
            }
            let given =
                json!({"contentType": req.content_type.unwrap_or("application/octet-stream")});
            (
                200,
                insert_object(st, req.url, bucket, name, req.body.to_vec(), &given),
            )
                .into()
        }
        // A resumable session: "If successful, the response includes a 200 OK status code…
        // and the session URI in the Location header."
        Some("resumable") => {
            let meta: Value = if req.body.is_empty() {
                json!({})
            } else {
                match serde_json::from_slice(req.body) {
                    Ok(m) => m,
                    Err(e) => {
                        return (
                            400,
                            error(400, "parseError", &format!("Metadata is not JSON: {e}")),
                        )
                            .into();
                    }
                }
            };
            let name = req
                .q
                .get("name")
                .cloned()
                .or_else(|| meta["name"].as_str().map(str::to_string))
                .unwrap_or_default();
            if name.is_empty() {
                return (400, error(400, "required", "Required object name")).into();
            }
            if let Err(e) = check_generation(st, bucket, &name, generation) {
                return e.into();
            }
            st.next += 1;
            let id = format!("fake-upload-{}", st.next);
            let location = format!(
                "{}/upload/storage/v1/b/{bucket}/o?uploadType=resumable&name={}&upload_id={id}",
                req.url,
                encode_segment(&name)
            );
            st.sessions.insert(
                id,
                Session {
                    bucket: bucket.to_string(),
                    name,
                    meta,
                    if_generation_match: generation.cloned(),
                    data: Vec::new(),
                    done: None,
                },
            );
            let mut reply = Reply::empty(200);
            reply.headers.push(("Location".into(), location));
            reply
        }
        other => (
            400,
            error(400, "invalid", &format!("Invalid uploadType: {other:?}")),
        )
            .into(),
    }
}

/// 308 "Resume Incomplete" with the persisted `Range` (none when nothing is), as Cloud Storage
/// answers a chunk that does not end the upload or a status query.
fn incomplete(persisted: usize) -> Reply {
    let mut reply = Reply::empty(308);
    if persisted > 0 {
        reply
            .headers
            .push(("Range".into(), format!("bytes=0-{}", persisted - 1)));
    }
    reply
}

/// A PUT to a session URI. Semantics from https://cloud.google.com/storage/docs/performing-resumable-uploads:
/// - `Content-Range: bytes */{total|*}` with no body asks for the status: 308 with the
///   persisted `Range`, or 200 with the object once complete; when `total` equals what has
///   arrived, it completes the upload (how an empty object or a finished one is closed).
/// - `bytes {first}-{last}/{total|*}` carries data from `first`, which must not be past what
///   is persisted (bytes already persisted are skipped). "All chunks must be a multiple of 256
///   KiB (256 x 1024 bytes) in size, except for the final chunk that completes the upload": of
///   a chunk that does not complete it, only whole 256 KiB units are kept, and the 308's
///   `Range` says so ("check the Range header… it's possible that Cloud Storage doesn't
///   persist all the bytes"). The chunk that brings the data to `total` completes the upload:
///   200 with the object, its checksums checked against the session's metadata and any
///   `x-goog-hash`.
/// - `bytes {first}-*/*` is the google-cloud-storage crate's "the rest of an upload of unknown
///   size, in this request" (its `send_unbuffered` tests expect it to complete the upload), so
///   it completes with what has arrived.
/// - A PUT after completion answers 200 with the object again; an unknown session 404.
fn upload_put(st: &mut State, req: &Req) -> Reply {
    let Some(id) = req.q.get("upload_id") else {
        return (
            400,
            error(400, "invalid", "A PUT needs a session URI (upload_id)"),
        )
            .into();
    };
    let Some(session) = st.sessions.get_mut(id) else {
        return (404, error(404, "notFound", "No such upload session")).into();
    };
    if let Some(object) = &session.done {
        return (200, object.clone()).into();
    }
    let Some(range) = parse_range(req.content_range.unwrap_or("bytes */*")) else {
        let message = format!("Invalid Content-Range: {:?}", req.content_range);
        return (400, error(400, "invalid", &message)).into();
    };
    let finish = match (range.first, range.last, range.total) {
        (None, _, Some(total)) => session.data.len() as u64 == total,
        (None, _, None) => false,
        (Some(first), last, total) => {
            if first > session.data.len() as u64 {
                let message = format!(
                    "Chunk starts at byte {first}, but only {} bytes have been persisted.",
                    session.data.len()
                );
                return (400, error(400, "invalid", &message)).into();
            }
            if let Some(last) = last
                && last + 1 - first != req.body.len() as u64
            {
                let message = format!(
                    "Content-Range says {} bytes, the request has {}.",
                    last + 1 - first,
                    req.body.len()
                );
                return (400, error(400, "invalid", &message)).into();
            }
            let skip = (session.data.len() as u64 - first) as usize;
            let fresh = &req.body[skip.min(req.body.len())..];
            let end = session.data.len() + fresh.len();
            match (last, total) {
                (None, _) => {
                    session.data.extend_from_slice(fresh);
                    true
                }
                (Some(_), Some(total)) if end as u64 == total => {
                    session.data.extend_from_slice(fresh);
                    true
                }
                (Some(_), Some(total)) if end as u64 > total => {
                    let message = format!("Chunk ends at byte {end}, past the total {total}.");
                    return (400, error(400, "invalid", &message)).into();
                }
                _ => {
                    let keep = end / KIB256 * KIB256;
                    let take = keep.saturating_sub(session.data.len());
                    session.data.extend_from_slice(&fresh[..take]);
                    false
                }
            }
        }
    };
    if !finish {
        return incomplete(session.data.len());
    }
    let (bucket, name, data) = (
        session.bucket.clone(),
        session.name.clone(),
        session.data.clone(),
    );
    let meta = session.meta.clone();
    let generation = session.if_generation_match.clone();
    if let Err(e) =
        check_checksums(&meta, &data).and_then(|()| check_checksums(&goog_hash(req.hash), &data))
    {
        return e.into();
    }
    if !st.buckets.contains_key(&bucket) {
        return no_bucket().into();
    }
    if let Err(e) = check_generation(st, &bucket, &name, generation.as_ref()) {
        return e.into();
    }
    let object = insert_object(st, req.url, &bucket, &name, data, &meta);
    st.sessions.get_mut(id).expect("found above").done = Some(object.clone());
    (200, object).into()
}
