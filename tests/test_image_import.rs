//! `cwo image import alpine` against the fake Compute API and the fake Cloud Storage: the
//! archive checked before any call, the bucket made (once) with its lifecycle rule, the upload,
//! `images.insert` from `rawDisk.source`, and the upload deleted whatever happened.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::common::TestEnv;
use crate::common::fake_gce::FakeGce;
use crate::common::fake_gcs::FakeGcs;

const PROJECT: &str = "proj-test";
const BUCKET: &str = "cwo-images-proj-test";
const FILE: &str = "gcp_alpine-3.22.1-x86_64-uefi-tiny-r0.raw.tar.gz";
const IMAGE: &str = "alpine-3-22-1-x86-64-uefi-tiny-r0";
const FAMILY: &str = "alpine-3-22";

struct Import {
    env: TestEnv,
    gce: FakeGce,
    gcs: FakeGcs,
}

/// A gcp project on the fakes; Compute reads `rawDisk.source` objects from the storage fake.
fn setup(gcp_extra: &str) -> Import {
    let env = TestEnv::new();
    let gce = FakeGce::start(PROJECT, "127.0.0.1", None);
    let gcs = FakeGcs::start(PROJECT);
    gce.link_storage(gcs.reader());
    env.settings(&format!(
        "provider = \"gcp\"\n[gcp]\nproject = {PROJECT:?}\nendpoint = {:?}\nstorage_endpoint = {:?}\ncredentials = \"anonymous\"\nzones = [\"us-central1-a\"]\n{gcp_extra}\n",
        gce.url, gcs.url
    ));
    Import { env, gce, gcs }
}

/// A tar entry's 512-byte ustar header.
fn tar_header(name: &str, size: usize) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A gzip'd tar holding one file.
fn tar_gz(name: &str, data: &[u8]) -> Vec<u8> {
    let mut tar = tar_header(name, data.len()).to_vec();
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(512) * 512 + 1024, 0);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// A disk whose bytes are not all alike (so a mangled upload shows).
fn disk() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// Serves `data` at `http://127.0.0.1:port/<name>` for as many requests as come.
fn serve(name: &str, data: Vec<u8>) -> (String, std::sync::Arc<tiny_http::Server>) {
    let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    let s = server.clone();
    std::thread::spawn(move || {
        for req in s.incoming_requests() {
            let _ = req.respond(tiny_http::Response::from_data(data.clone()));
        }
    });
    (format!("http://127.0.0.1:{port}/releases/{name}"), server)
}

/// The `images.insert` bodies the fake received.
fn image_inserts(gce: &FakeGce) -> Vec<Value> {
    gce.log()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.contains("/global/images"))
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect()
}

fn features(body: &Value) -> Vec<String> {
    let mut f: Vec<String> = body["guestOsFeatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["type"].as_str().unwrap().to_string())
        .collect();
    f.sort();
    f
}

/// The object `rawDisk.source` names in `BUCKET`.
fn object_of(body: &Value) -> String {
    let src = body["rawDisk"]["source"].as_str().unwrap();
    let prefix = format!("https://storage.googleapis.com/{BUCKET}/");
    assert!(src.starts_with(&prefix), "{src}");
    src[prefix.len()..].to_string()
}

fn uploads(gcs: &FakeGcs) -> usize {
    gcs.log()
        .iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/upload/"))
        .count()
}

#[test]
fn import_from_a_file_uploads_creates_the_image_and_deletes_the_upload() {
    let t = setup("");
    let archive = tar_gz("disk.raw", &disk());
    let file = write(t.env.tmp.path(), FILE, &archive);
    let run = t
        .env
        .cwo(&[
            "image",
            "import",
            "alpine",
            "--from",
            file.to_str().unwrap(),
            "--format",
            "json",
        ])
        .ok();
    let doc = run.json();
    assert_eq!(doc["image"]["name"], IMAGE);
    assert_eq!(doc["image"]["status"], "READY");
    assert_eq!(
        doc["image_setting"],
        format!("projects/{PROJECT}/global/images/family/{FAMILY}")
    );
    assert_eq!(doc["ssh_user"], "alpine");
    assert_eq!(doc["bucket_created"], true);
    assert_eq!(doc["upload_deleted"], true);
    assert_eq!(doc["uploaded_bytes"], archive.len());

    // The bucket was made with the rule that deletes an upload a day old.
    let buckets = t.gcs.buckets();
    assert_eq!(buckets.len(), 1);
    assert_eq!(buckets[0]["name"], BUCKET);
    assert_eq!(buckets[0]["location"], "US-CENTRAL1");
    let rules = buckets[0]["lifecycle"]["rule"].as_array().unwrap();
    assert!(
        rules
            .iter()
            .any(|r| r["action"]["type"] == "Delete" && r["condition"]["age"] == 1),
        "{rules:?}"
    );

    // One images.insert, from the upload, with the guest OS features of a UEFI build.
    let inserts = image_inserts(&t.gce);
    assert_eq!(inserts.len(), 1, "{inserts:?}");
    let body = &inserts[0];
    assert_eq!(body["name"], IMAGE);
    assert_eq!(body["family"], FAMILY);
    assert_eq!(body["architecture"], "X86_64");
    let object = object_of(body);
    assert_eq!(
        features(body),
        ["GVNIC", "UEFI_COMPATIBLE", "VIRTIO_SCSI_MULTIQUEUE"]
    );
    // Compute read the whole archive, and the upload is gone afterwards.
    let image = t.gce.image(IMAGE).unwrap();
    assert_eq!(image["archiveSizeBytes"], archive.len().to_string());
    assert!(t.gcs.objects().is_empty(), "{:?}", t.gcs.objects());
    assert!(
        t.gcs.log().iter().any(|r| r.method == "DELETE"
            && r.path.ends_with(&format!("/o/{object}"))
            && r.status == 204),
        "{:?}",
        t.gcs.log()
    );

    // The text says what to set; a second import of the same file uploads nothing.
    let again = t
        .env
        .cwo(&[
            "image",
            "import",
            "alpine",
            "--from",
            file.to_str().unwrap(),
        ])
        .ok();
    assert!(again.stdout.contains("exists already"), "{}", again.stdout);
    assert!(
        again.stdout.contains(&format!(
            "gcp.image = \"projects/{PROJECT}/global/images/family/{FAMILY}\""
        )),
        "{}",
        again.stdout
    );
    assert!(again.stdout.contains("gcp.ssh_user = \"alpine\""));
    assert_eq!(uploads(&t.gcs), 1);
    assert_eq!(image_inserts(&t.gce).len(), 1);
}

#[test]
fn import_from_a_url_uses_the_existing_bucket_and_a_bios_build_is_not_uefi() {
    let t = setup("image_bucket = \"my-images\"");
    t.gcs.add_bucket("my-images", "us-central1");
    let name = "alpine-3.21.4-x86_64-bios-tiny-r0.tar.gz";
    let archive = tar_gz("disk.raw", &disk());
    let (url, _server) = serve(name, archive.clone());
    let run = t
        .env
        .cwo(&[
            "image", "import", "alpine", "--from", &url, "--format", "json",
        ])
        .ok();
    assert!(run.stderr.contains("downloading"), "{}", run.stderr);
    let doc = run.json();
    assert_eq!(doc["image"]["name"], "alpine-3-21-4-x86-64-bios-tiny-r0");
    assert_eq!(doc["family"], "alpine-3-21");
    assert_eq!(doc["bucket_created"], false);
    // The bucket was there: read, never created again.
    assert!(
        !t.gcs
            .log()
            .iter()
            .any(|r| r.method == "POST" && r.path == "/storage/v1/b"),
        "{:?}",
        t.gcs.log()
    );
    let inserts = image_inserts(&t.gce);
    let body = &inserts[0];
    assert!(
        body["rawDisk"]["source"]
            .as_str()
            .unwrap()
            .starts_with("https://storage.googleapis.com/my-images/")
    );
    assert_eq!(features(body), ["GVNIC", "VIRTIO_SCSI_MULTIQUEUE"]);
    let image = t.gce.image("alpine-3-21-4-x86-64-bios-tiny-r0").unwrap();
    assert_eq!(image["archiveSizeBytes"], archive.len().to_string());
    assert!(t.gcs.objects().is_empty());
    // The download went to the state dir, and is gone.
    let left: Vec<_> = std::fs::read_dir(&t.env.state)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("import-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_upload_is_deleted_when_the_insert_fails() {
    let t = setup("");
    let file = write(t.env.tmp.path(), FILE, &tar_gz("disk.raw", &disk()));
    t.gce.faults().http.push_back((
        "POST /compute/v1/projects/proj-test/global/images".into(),
        400,
    ));
    let run = t.env.cwo(&[
        "image",
        "import",
        "alpine",
        "--from",
        file.to_str().unwrap(),
    ]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(run.stderr.contains(IMAGE), "{}", run.stderr);
    assert_eq!(uploads(&t.gcs), 1, "{:?}", t.gcs.log());
    assert!(t.gcs.objects().is_empty(), "{:?}", t.gcs.objects());
    assert!(t.gcs.log().iter().any(|r| r.method == "DELETE"));
    assert!(t.gce.image(IMAGE).is_none());
}

#[test]
fn an_upload_that_cannot_be_deleted_is_intact_said_and_left_to_the_lifecycle_rule() {
    let t = setup("");
    let archive = tar_gz("disk.raw", &disk());
    let file = write(t.env.tmp.path(), FILE, &archive);
    t.gcs
        .faults()
        .http
        .push_back(("DELETE /storage/v1/b/".into(), 403));
    let run = t
        .env
        .cwo(&[
            "image",
            "import",
            "alpine",
            "--from",
            file.to_str().unwrap(),
            "--format",
            "json",
        ])
        .ok();
    assert_eq!(run.json()["upload_deleted"], false);
    let object = object_of(&image_inserts(&t.gce)[0]);
    assert!(
        run.stderr
            .contains(&format!("gcloud storage rm gs://{BUCKET}/{object}")),
        "{}",
        run.stderr
    );
    // What arrived is the file, byte for byte.
    assert_eq!(t.gcs.object(BUCKET, &object).unwrap(), archive);
    // The bucket's rule deletes it once it is a day old.
    t.gcs.advance(Duration::from_secs(23 * 3600));
    assert!(t.gcs.object(BUCKET, &object).is_some());
    t.gcs.advance(Duration::from_secs(2 * 3600));
    assert!(t.gcs.object(BUCKET, &object).is_none());
}

#[test]
fn a_file_that_is_not_a_gzipped_tar_of_disk_raw_is_refused_before_any_call() {
    let t = setup("");
    let dir = t.env.tmp.path();
    let cases = [
        (
            write(dir, FILE, b"QFI\xfb qcow2 image"),
            "not gzip-compressed",
        ),
        (
            write(
                dir,
                "alpine-3.22.1-x86_64-uefi-tiny-r0.tar.gz",
                &tar_gz("alpine.qcow2", &disk()),
            ),
            "first file is `alpine.qcow2`",
        ),
        (
            write(dir, "alpine-3.22.1-x86_64-uefi-tiny-r0.tgz", &{
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&disk()).unwrap();
                gz.finish().unwrap()
            }),
            "does not hold a tar archive",
        ),
    ];
    for (path, why) in &cases {
        let run = t.env.cwo(&[
            "image",
            "import",
            "alpine",
            "--from",
            path.to_str().unwrap(),
        ]);
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(run.stderr.contains(why), "{why}: {}", run.stderr);
        assert!(
            run.stderr.contains("https://alpinelinux.org/cloud/"),
            "{}",
            run.stderr
        );
    }
    // A name that says neither uefi nor bios needs --firmware.
    let plain = write(dir, "disk.tar.gz", &tar_gz("disk.raw", &disk()));
    let run = t.env.cwo(&[
        "image",
        "import",
        "alpine",
        "--from",
        plain.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--firmware"), "{}", run.stderr);
    // A bad download is refused after the download, before any cloud call.
    let (url, _server) = serve(FILE, b"<html>not found</html>".to_vec());
    let run = t.env.cwo(&["image", "import", "alpine", "--from", &url]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("not gzip-compressed"), "{}", run.stderr);
    assert!(t.gce.log().is_empty(), "{:?}", t.gce.log());
    assert!(t.gcs.log().is_empty(), "{:?}", t.gcs.log());
}

#[test]
fn doctor_explains_an_alpine_image_that_is_not_imported_yet() {
    let t = setup(&format!(
        "image = \"projects/{PROJECT}/global/images/family/{FAMILY}\"\nssh_user = \"alpine\""
    ));
    let run = t.env.cwo(&["doctor", "--format", "json"]);
    let check = crate::common::doctor_check(&run.json(), "alpine image");
    assert_eq!(check["status"], "fail", "{check}");
    let fix = check["fix"].as_str().unwrap();
    for needed in [
        "https://alpinelinux.org/cloud/",
        "cwo image import alpine --from",
        "gcp.ssh_user = \"alpine\"",
    ] {
        assert!(fix.contains(needed), "{needed}: {check}");
    }
    let file = write(t.env.tmp.path(), FILE, &tar_gz("disk.raw", &disk()));
    t.env
        .cwo(&[
            "image",
            "import",
            "alpine",
            "--from",
            file.to_str().unwrap(),
        ])
        .ok();
    let run = t.env.cwo(&["doctor", "--format", "json"]);
    let check = crate::common::doctor_check(&run.json(), "alpine image");
    assert_eq!(check["status"], "ok", "{check}");
    assert!(check["detail"].as_str().unwrap().contains(IMAGE), "{check}");
}
