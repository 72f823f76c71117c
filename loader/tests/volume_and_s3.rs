//! Loader against a full disk (a small tmpfs) and against a real S3 API (moto's server).
// Test code throughout: its helpers may panic (clippy.toml's allow-*-in-tests).
#![cfg(test)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn full_disk_is_refused_before_download_and_keeps_serving_the_old_revision() {
    let t = tmp();
    let vol = t.path().join("vol");
    let _mount = match Tmpfs::mount(&vol, "4m") {
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

#[test]
fn s3_source_via_moto() {
    let Some(moto_bin) = tool("venv/bin/moto_server") else {
        return;
    };
    let port = free_port();
    let _moto = Server(
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
        request(port, "GET", "/", &[], b"").0 == 200
    });
    let (code, body) = request(port, "PUT", "/models", &[], b"");
    assert_eq!(code, 200, "{body}");

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
