//! Loader against a full disk (a small tmpfs) and against a real S3 API (moto's server).
// Test helpers outside #[test] fns panic on purpose: a failed setup is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Result<Mount, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(Mount(dir.to_path_buf()))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

#[test]
fn full_disk_is_refused_before_download_and_keeps_serving_the_old_revision() {
    let t = tmp();
    let vol = t.path().join("vol");
    let _mount = match mount_tmpfs(&vol, "4m") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED full_disk test: cannot mount a tmpfs here ({e})");
            return;
        }
    };
    let repos = t.path().join("repos");
    let small = data(1 << 20, 20);
    publish(&repos, "org/model", "c1", &[("model.bin", small.clone())]);
    let hub = Hub::start(&repos, &[]);
    let dest = vol.join("model");
    let mut c = loader(Some(&hub), "org/model", &dest);
    c.arg("--once");
    let (out, err) = run(c);
    assert!(out.status.success(), "{err}");

    publish(
        &repos,
        "org/model",
        "c2",
        &[
            ("model.bin", data(3 << 20, 21)),
            ("more.bin", data(1 << 20, 22)),
        ],
    );
    let mut c = loader(Some(&hub), "org/model", &dest);
    c.arg("--once");
    let (out, err) = run(c);
    assert!(!out.status.success());
    assert!(err.contains("not enough free space"), "{err}");
    assert_eq!(
        hub.stats()["bytes_sent"].as_u64().unwrap(),
        small.len() as u64,
        "nothing of c2 fetched"
    );
    assert_eq!(read_link_rev(&dest), "c1");
    assert_eq!(std::fs::read(dest.join("model.bin")).unwrap(), small);
    assert_eq!(
        std::fs::read_to_string(dest.join(".ready")).unwrap().trim(),
        "c1"
    );
}

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One request with a short read timeout; None when nothing answered.
fn try_request(port: u16, req: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    (!out.is_empty()).then_some(out)
}

fn raw_request(port: u16, req: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn s3_source_via_moto() {
    let moto_bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/venv/bin/moto_server");
    if !moto_bin.exists() {
        eprintln!(
            "SKIPPED s3 test: {} missing (run scripts/setup.sh)",
            moto_bin.display()
        );
        return;
    }
    let port = free_port();
    let _moto = Moto(
        Command::new(&moto_bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // A fresh venv's moto takes many seconds to answer its first request (it compiles every
    // module on first import): wait for a real answer, not an open port.
    wait_until("moto answering", Duration::from_secs(120), || {
        try_request(
            port,
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        )
        .is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    });
    let created = raw_request(
        port,
        "PUT /models HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(created.starts_with("HTTP/1.1 200"), "{created}");

    let big = data(5 * 1024 * 1024 + 7, 30);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("llama/config.json", b"{\"x\":1}".to_vec()),
        ("llama/w/model.bin", big.clone()),
    ];
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use object_store::ObjectStoreExt;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(format!("http://127.0.0.1:{port}"))
            .with_allow_http(true)
            .with_bucket_name("models")
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .unwrap();
        for (k, v) in &files {
            store
                .put(&object_store::path::Path::from(*k), v.clone().into())
                .await
                .unwrap();
        }
    });

    let t = tmp();
    let dest = t.path().join("model");
    let mut c = loader(None, "s3://models/llama", &dest);
    c.args(["--once", "--chunk-size", "1MiB"])
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1");
    let (out, err) = run(c);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        std::fs::read(dest.join("config.json")).unwrap(),
        b"{\"x\":1}"
    );
    assert_eq!(std::fs::read(dest.join("w/model.bin")).unwrap(), big);
    let manifest = std::fs::read_to_string(dest.join(".modelgate-manifest.json")).unwrap();
    assert!(manifest.contains("w/model.bin"), "{manifest}");
}
