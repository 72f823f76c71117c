//! Loader against the HF-compatible test hub: correctness, integrity, faults, resume, swaps.
// Test code throughout: its helpers may panic (clippy.toml's allow-*-in-tests).
#![cfg(test)]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn parallel_ranges_download_is_byte_exact() {
    let t = tmp();
    let repos = t.path().join("repos");
    let big = data(12 * 1024 * 1024 + 12345, 1);
    let files = vec![
        ("config.json", b"{\"a\":1}\n".to_vec()),
        ("sub/tokenizer.json", data(3000, 2)),
        ("model.safetensors", big.clone()),
        ("empty.txt", Vec::new()),
    ];
    publish(&repos, REPO, "c1", &files);
    let hub = Hub::start(&repos, &[]);
    let dest = t.path().join("model");
    let mut c = loader(Some(&hub), "hf://org/model", &dest);
    c.args(["--once", "--chunk-size", "1MiB", "--parallel-ranges", "4"]);
    let (out, err) = run(c);
    assert!(out.status.success(), "{err}");
    for (name, bytes) in &files {
        assert_eq!(&std::fs::read(dest.join(name)).unwrap(), bytes, "{name}");
    }
    assert_eq!(read_link_rev(&dest), "c1");
    assert_eq!(
        std::fs::read_to_string(dest.join(".ready")).unwrap().trim(),
        "c1"
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dest.join("metadata.json")).unwrap())
            .unwrap();
    assert_eq!(meta["revision"], "c1");
    assert_eq!(meta["remote_sha"], "c1");
    let stats = hub.stats();
    assert!(stats["range_requests"].as_u64().unwrap() >= 13, "{stats}");
    assert_eq!(
        stats["bytes_sent"].as_u64().unwrap(),
        files.iter().map(|f| f.1.len() as u64).sum::<u64>()
    );
    // Second run: same revision, nothing downloaded.
    let mut c = loader(Some(&hub), "hf://org/model", &dest);
    c.arg("--once");
    let (out, err) = run(c);
    assert!(out.status.success(), "{err}");
    assert_eq!(hub.stats()["file_requests"], stats["file_requests"]);
}

#[test]
fn corrupted_byte_is_detected_retried_and_never_served() {
    let t = tmp();
    let repos = t.path().join("repos");
    let big = data(3 * 1024 * 1024, 3);
    publish(
        &repos,
        REPO,
        "c1",
        &[("model.bin", big.clone()), ("config.json", b"{}".to_vec())],
    );

    // One corrupted response: detected, file re-downloaded, then correct.
    let hub = Hub::start(&repos, &["--corrupt-count", "1"]);
    let dest = t.path().join("a");
    let mut c = loader(Some(&hub), REPO, &dest);
    c.args(["--once", "--chunk-size", "1MiB"]);
    let (out, err) = run(c);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("integrity check failed"), "{err}");
    assert_eq!(std::fs::read(dest.join("model.bin")).unwrap(), big);
    drop(hub);

    // Always corrupted: fails, nothing served, no sentinel.
    let hub = Hub::start(&repos, &["--corrupt-count", "1000000"]);
    let dest = t.path().join("b");
    let mut c = loader(Some(&hub), REPO, &dest);
    c.args(["--once", "--retries", "2"]);
    let (out, err) = run(c);
    assert!(!out.status.success(), "{err}");
    assert!(
        std::fs::symlink_metadata(&dest).is_err(),
        "dest must not exist"
    );
    assert!(!dest.join(".ready").exists());
}

#[test]
fn dotdot_names_are_refused() {
    let t = tmp();
    let repos = t.path().join("repos");
    publish(&repos, REPO, "c1", &[("config.json", b"{}".to_vec())]);
    let hub = Hub::start(&repos, &["--inject-sibling", "../../evil.txt"]);
    let dest = t.path().join("d/model");
    let mut c = loader(Some(&hub), REPO, &dest);
    c.arg("--once");
    let (out, err) = run(c);
    assert!(!out.status.success());
    assert!(err.contains("escapes the destination"), "{err}");
    assert!(!t.path().join("evil.txt").exists());
    assert!(std::fs::symlink_metadata(&dest).is_err());
}

#[test]
fn http_500s_and_429s_are_retried_with_retry_after() {
    let t = tmp();
    let repos = t.path().join("repos");
    let big = data(2 * 1024 * 1024, 4);
    publish(&repos, REPO, "c1", &[("model.bin", big.clone())]);
    let hub = Hub::start(
        &repos,
        &[
            "--fail-first",
            "3",
            "--throttle-first",
            "2",
            "--retry-after",
            "1",
        ],
    );
    let dest = t.path().join("model");
    let mut c = loader(Some(&hub), REPO, &dest);
    c.args(["--once", "--parallel-ranges", "1"]);
    let start = Instant::now();
    let (out, err) = run(c);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("HTTP 500") && err.contains("HTTP 429"),
        "{err}"
    );
    // Two 429s with Retry-After: 1 s each on one sequential path.
    assert!(
        start.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(std::fs::read(dest.join("model.bin")).unwrap(), big);
}

#[test]
fn stalled_server_is_timed_out_and_retried() {
    let t = tmp();
    let repos = t.path().join("repos");
    let big = data(2 * 1024 * 1024, 5);
    publish(&repos, REPO, "c1", &[("model.bin", big.clone())]);
    let hub = Hub::start(&repos, &["--stall-after", "100000", "--stall-count", "1"]);
    let dest = t.path().join("model");
    let mut c = loader(Some(&hub), REPO, &dest);
    c.args(["--once", "--read-timeout", "1s"]);
    let (out, err) = run(c);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("stalled"), "{err}");
    assert_eq!(std::fs::read(dest.join("model.bin")).unwrap(), big);
}

#[test]
fn resumes_after_the_process_is_killed_mid_file() {
    let t = tmp();
    let repos = t.path().join("repos");
    let big = data(16 * 1024 * 1024, 6);
    publish(&repos, REPO, "c1", &[("model.bin", big.clone())]);
    let dest = t.path().join("model");
    {
        // 2 ranges x 1 MiB/s: ~8 s for the whole file, killed after a few chunks.
        let hub = Hub::start(&repos, &["--rate-bps", "1048576"]);
        let mut c = loader(Some(&hub), REPO, &dest);
        c.args(["--once", "--chunk-size", "1MiB", "--parallel-ranges", "2"]);
        let r = Running::spawn(c);
        wait_until("3 MiB on disk", Duration::from_secs(30), || {
            held_bytes(&dest, "c1", "model.bin") >= 3 << 20
        });
        r.signal(9);
    }
    assert!(
        std::fs::symlink_metadata(&dest).is_err(),
        "killed run must not serve"
    );
    let hub = Hub::start(&repos, &[]);
    let mut c = loader(Some(&hub), REPO, &dest);
    c.args(["--once", "--chunk-size", "1MiB", "--parallel-ranges", "2"]);
    let (out, err) = run(c);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming"), "{err}");
    assert_eq!(std::fs::read(dest.join("model.bin")).unwrap(), big);
    let sent = hub.stats()["bytes_sent"].as_u64().unwrap();
    assert!(
        sent <= big.len() as u64 - 3 * 1024 * 1024,
        "resume re-sent {sent} bytes"
    );
}

#[test]
fn new_revision_is_swapped_in_while_the_old_stays_readable() {
    let t = tmp();
    let repos = t.path().join("repos");
    let shared = data(4 * 1024 * 1024, 7);
    let w1 = data(3 * 1024 * 1024, 8);
    let w2 = data(3 * 1024 * 1024, 9);
    publish(
        &repos,
        REPO,
        "c1",
        &[("shared.bin", shared.clone()), ("weights.bin", w1.clone())],
    );
    // 4 MiB/s per response keeps rev 2's download visible for ~1 s.
    let hub = Hub::start(&repos, &["--rate-bps", "4194304"]);
    let dest = t.path().join("model");
    let hook_out = t.path().join("hook.txt");
    let mut c = loader(Some(&hub), REPO, &dest);
    c.args([
        "--poll-interval",
        "200ms",
        "--status-addr",
        "127.0.0.1:0",
        "--chunk-size",
        "1MiB",
        "--parallel-ranges",
        "1",
    ])
    .arg("--update-hook-cmd")
    .arg(format!(
        "echo $MODELGATE_PREVIOUS_REVISION $MODELGATE_REVISION > {}",
        hook_out.display()
    ));
    let r = Running::spawn(c);
    let port = r.status_port();
    wait_until("rev c1 ready", Duration::from_secs(30), || {
        http_get(port, "/ready").0 == 200
    });
    assert!(http_get(port, "/ready").1.contains("\"c1\""));
    let old_handle = std::fs::File::open(dest.join("weights.bin")).unwrap();
    let sent_before = hub.stats()["bytes_sent"].as_u64().unwrap();

    publish(
        &repos,
        REPO,
        "c2",
        &[("shared.bin", shared.clone()), ("weights.bin", w2.clone())],
    );
    wait_until("download of c2 to start", Duration::from_secs(10), || {
        versions_of(&dest).join(".partial-c2").exists()
    });
    // While c2 downloads beside it, c1 stays served and readable, and /ready stays 200.
    let mut checks = 0;
    while read_link_rev(&dest) == "c1" {
        let (code, body) = http_get(port, "/ready");
        if read_link_rev(&dest) != "c1" {
            break;
        }
        assert!(
            code == 200 && body.contains("\"c1\"") || body.contains("updating"),
            "{code} {body}"
        );
        assert_eq!(std::fs::read(dest.join("weights.bin")).unwrap(), w1);
        checks += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        checks >= 3,
        "c2 finished too quickly to observe ({checks} checks)"
    );
    wait_until("rev c2 ready", Duration::from_secs(30), || {
        http_get(port, "/ready").1.contains("\"c2\"")
    });
    assert_eq!(std::fs::read(dest.join("weights.bin")).unwrap(), w2);
    assert_eq!(std::fs::read(dest.join("shared.bin")).unwrap(), shared);
    // The handle opened on c1 still reads c1's bytes.
    let mut old = Vec::new();
    std::io::Read::read_to_end(&mut &old_handle, &mut old).unwrap();
    assert_eq!(old, w1);
    // Only the changed file was downloaded.
    let sent = hub.stats()["bytes_sent"].as_u64().unwrap() - sent_before;
    assert_eq!(sent, w2.len() as u64, "unchanged file must be reused");
    let meta = std::fs::read_to_string(dest.join("metadata.json")).unwrap();
    assert!(meta.contains("\"revision\": \"c2\""), "{meta}");
    wait_until("hook ran", Duration::from_secs(10), || {
        std::fs::read_to_string(&hook_out)
            .map(|s| s.trim() == "c1 c2")
            .unwrap_or(false)
    });
    let metrics = http_get(port, "/metrics").1;
    assert!(
        metrics.contains("modelgate_loader_updates_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("modelgate_loader_revision_info{revision=\"c2\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("modelgate_loader_files_reused_total 1"),
        "{metrics}"
    );
    // SIGTERM: drains and exits 0.
    r.signal(15);
    let mut r = r;
    let (ok, log) = r.wait_exit(Duration::from_secs(10));
    assert!(ok, "no clean exit after SIGTERM: {log}");
}

#[test]
fn two_loaders_on_one_volume_download_once() {
    let t = tmp();
    let repos = t.path().join("repos");
    let big = data(4 * 1024 * 1024, 10);
    publish(&repos, REPO, "c1", &[("model.bin", big.clone())]);
    let hub = Hub::start(&repos, &["--rate-bps", "8388608"]);
    let dest = t.path().join("model");
    let spawn = || {
        let mut c = loader(Some(&hub), REPO, &dest);
        c.arg("--once");
        Running::spawn(c)
    };
    let mut a = spawn();
    let mut b = spawn();
    assert!(a.child.wait().unwrap().success(), "{}", a.log());
    assert!(b.child.wait().unwrap().success(), "{}", b.log());
    assert_eq!(std::fs::read(dest.join("model.bin")).unwrap(), big);
    assert_eq!(
        hub.stats()["bytes_sent"].as_u64().unwrap(),
        big.len() as u64
    );
}

#[test]
fn hf_token_is_sent_and_never_logged() {
    let t = tmp();
    let repos = t.path().join("repos");
    publish(
        &repos,
        REPO,
        "c1",
        &[
            ("config.json", b"{}".to_vec()),
            ("model.bin", data(2 << 20, 11)),
        ],
    );
    let hub = Hub::start(&repos, &["--require-token", "hf_sekrit"]);
    let dest = t.path().join("model");
    let mut c = loader(Some(&hub), REPO, &dest);
    c.arg("--once");
    let (out, err) = run(c);
    assert!(!out.status.success());
    assert!(err.contains("HF_TOKEN"), "{err}");
    let mut c = loader(Some(&hub), REPO, &dest);
    c.arg("--once").env("HF_TOKEN", "hf_sekrit");
    let (out, err) = run(c);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("sekrit"));
}

#[test]
fn http_tar_gz_archive_is_unpacked_and_checked() {
    let t = tmp();
    let repos = t.path().join("repos");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    {
        let mut b = tar::Builder::new(&mut gz);
        let payload = data(100_000, 12);
        let mut h = tar::Header::new_gnu();
        h.set_size(payload.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "weights/model.bin", payload.as_slice())
            .unwrap();
        b.finish().unwrap();
    }
    let archive = gz.finish().unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&archive));
    publish(&repos, REPO, "c1", &[("model.tar.gz", archive)]);
    let hub = Hub::start(&repos, &[]);
    let url = format!("{}/org/model/resolve/main/model.tar.gz", hub.endpoint());
    let dest = t.path().join("model");
    let mut c = loader(None, &url, &dest);
    c.args(["--once", "--sha256", &sha]);
    let (out, err) = run(c);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        std::fs::read(dest.join("weights/model.bin")).unwrap(),
        data(100_000, 12)
    );
    // A wrong --sha256 is never served.
    let dest2 = t.path().join("model2");
    let mut c = loader(None, &url, &dest2);
    c.args(["--once", "--retries", "1", "--sha256", &"0".repeat(64)]);
    let (out, _) = run(c);
    assert!(!out.status.success());
    assert!(std::fs::symlink_metadata(&dest2).is_err());
}

#[test]
fn local_directory_source_is_copied_and_verified() {
    let t = tmp();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("a/x.bin"), data(3 << 20, 13)).unwrap();
    std::fs::write(src.join("config.json"), b"{}").unwrap();
    let dest = t.path().join("model");
    let mut c = loader(None, &format!("file://{}", src.display()), &dest);
    c.args(["--once", "--chunk-size", "1MiB"]);
    let (out, err) = run(c);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        std::fs::read(dest.join("a/x.bin")).unwrap(),
        data(3 << 20, 13)
    );
}

#[test]
fn gives_up_cleanly_when_retries_run_out() {
    let t = tmp();
    let repos = t.path().join("repos");
    publish(&repos, REPO, "c1", &[("model.bin", data(4 << 20, 14))]);
    // Every file response stalls: each range exhausts its retries and the run must end.
    let hub = Hub::start(
        &repos,
        &["--stall-after", "1000", "--stall-count", "1000000"],
    );
    let dest = t.path().join("model");
    let mut c = loader(Some(&hub), REPO, &dest);
    c.args([
        "--once",
        "--chunk-size",
        "1MiB",
        "--parallel-ranges",
        "3",
        "--read-timeout",
        "300ms",
        "--retries",
        "1",
    ]);
    let start = Instant::now();
    let (out, err) = run(c);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("gave up"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(std::fs::symlink_metadata(&dest).is_err());
}
