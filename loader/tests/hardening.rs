//! Loader against hostile or broken sources and shared volumes (issue 11's review findings):
//! bounded memory and bytes, hooks on a shared volume, secrets at rest, resume checks.
// Test code throughout: its helpers may panic (clippy.toml's allow-*-in-tests).
#![cfg(test)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;

#[test]
fn server_ignoring_range_is_streamed_with_bounded_memory() {
    let t = tmp();
    let repos = t.path().join("repos");
    publish(&repos, REPO, "c1", &[("config.json", b"{}".to_vec())]);
    // A 320 MiB sparse file with marks at a few offsets: quick to make, big enough to show
    // memory growing with the file.
    let size: u64 = 320 << 20;
    let big = repos.join(REPO).join("revisions/c1/model.bin");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(size).unwrap();
    for off in [0, 1 << 20, 100 << 20, size - 8] {
        std::os::unix::fs::FileExt::write_all_at(&f, b"modelgat", off).unwrap();
    }
    drop(f);
    let hub = Hub::start(&repos, &["--ignore-range"]);
    let dest = t.path().join("model");
    let mut c = loader(Some(&hub), REPO, &dest);
    c.args(["--status-addr", "127.0.0.1:0"]);
    let r = Running::spawn(c);
    let port = r.status_port();
    wait_until("model served", Duration::from_secs(300), || {
        http_get(port, "/ready").0 == 200
    });
    let peak = peak_rss(r.child.id());
    assert!(r.log().contains("ignores Range"), "{}", r.log());
    assert_eq!(
        std::fs::metadata(dest.join("model.bin")).unwrap().len(),
        size
    );
    assert!(
        peak < 128 << 20,
        "peak RSS {} MiB for a {} MiB file",
        peak >> 20,
        size >> 20
    );
}

/// A loopback HTTP/1.1 server answering every request with `respond(method, path)` (a raw
/// head and a body length of pseudo-random bytes, sent then closed). Serves `max` requests.
fn raw_server(
    max: usize,
    respond: impl Fn(&str, &str) -> (String, u64) + Send + 'static,
) -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        for conn in l.incoming().take(max) {
            let Ok(mut s) = conn else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let mut parts = line.split(' ');
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let (head, body_len) = respond(&method, &path);
            let _ = s.write_all(head.as_bytes());
            let block = data(1 << 20, 99);
            let mut left = body_len;
            while left > 0 {
                let n = left.min(block.len() as u64) as usize;
                if s.write_all(&block[..n]).is_err() {
                    break;
                }
                left -= n as u64;
            }
        }
    });
    (port, h)
}

#[test]
fn unsized_stream_stops_at_min_free() {
    // HEAD refused, GET sends 400 MiB with no length: only free space can stop it.
    let (port, _h) = raw_server(8, |method, _| {
        if method == "HEAD" {
            (
                "HTTP/1.1 405 No\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                0,
            )
        } else {
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".into(),
                400 << 20,
            )
        }
    });
    let t = tmp();
    let avail = fs4::available_space(t.path()).unwrap();
    // Leave room for about 48 MiB; the stream is much longer.
    let min_free = avail.saturating_sub(48 << 20);
    let dest = t.path().join("model");
    let mut c = loader(None, &format!("http://127.0.0.1:{port}/blob.bin"), &dest);
    c.args([
        "--once",
        "--retries",
        "0",
        "--min-free",
        &min_free.to_string(),
    ]);
    let (out, err) = run(c);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("--min-free"), "{err}");
    assert!(std::fs::symlink_metadata(&dest).is_err());
}

#[test]
fn oversized_listing_is_refused() {
    let (port, _h) = raw_server(4, |_, _| {
        (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n".into(),
            80 << 20,
        )
    });
    let t = tmp();
    let dest = t.path().join("model");
    let mut c = loader(None, REPO, &dest);
    c.args(["--once", "--retries", "0"])
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"));
    let (out, err) = run(c);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("larger than"), "{err}");
}

#[test]
fn loader_on_a_shared_volume_runs_its_hook_when_another_switched() {
    let t = tmp();
    let repos = t.path().join("repos");
    publish(&repos, REPO, "c1", &[("model.bin", data(1 << 20, 1))]);
    let hub = Hub::start(&repos, &[]);
    let dest = t.path().join("model");
    let mut first = loader(Some(&hub), REPO, &dest);
    first.arg("--once");
    let (out, err) = run(first);
    assert!(out.status.success(), "{err}");

    // Loader B serves c1 and polls; it is paused while loader A switches the volume to c2.
    let hook_out = t.path().join("hook.txt");
    let mut b = loader(Some(&hub), REPO, &dest);
    b.args(["--poll-interval", "300ms", "--status-addr", "127.0.0.1:0"])
        .arg("--update-hook-cmd")
        .arg(format!(
            "echo $MODELGATE_PREVIOUS_REVISION $MODELGATE_REVISION > {}",
            hook_out.display()
        ));
    let b = Running::spawn(b);
    let port = b.status_port();
    wait_until("B ready on c1", Duration::from_secs(60), || {
        http_get(port, "/ready").1.contains("\"c1\"")
    });
    b.signal(19); // SIGSTOP
    publish(&repos, REPO, "c2", &[("model.bin", data(1 << 20, 2))]);
    let mut a = loader(Some(&hub), REPO, &dest);
    a.arg("--once");
    let (out, err) = run(a);
    b.signal(18); // SIGCONT
    assert!(out.status.success(), "{err}");
    assert_eq!(read_link_rev(&dest), "c2");
    wait_until("B's hook announced c2", Duration::from_secs(60), || {
        std::fs::read_to_string(&hook_out).is_ok_and(|s| s.trim() == "c1 c2")
    });
    assert!(http_get(port, "/ready").1.contains("\"c2\""));
}

#[test]
fn metadata_is_redacted_and_private_and_hooks_see_no_secrets() {
    let t = tmp();
    let repos = t.path().join("repos");
    publish(&repos, REPO, "c1", &[("model.bin", data(4000, 1))]);
    let hub = Hub::start(&repos, &[]);
    let url = format!(
        "http://user:pw-sekrit@127.0.0.1:{}/{REPO}/resolve/main/model.bin?X-Amz-Signature=sig-sekrit",
        hub.port
    );
    let dest = t.path().join("model");
    let hook_out = t.path().join("hook-env.txt");
    let go = || {
        let mut c = loader(Some(&hub), &url, &dest);
        c.arg("--once")
            .env("HF_TOKEN", "hf_sekrit")
            .env("AWS_SECRET_ACCESS_KEY", "aws_sekrit")
            .arg("--update-hook-cmd")
            .arg(format!("env > {}", hook_out.display()));
        let (out, err) = run(c);
        assert!(out.status.success(), "{err}");
    };
    go();
    let meta_path = dest.join("metadata.json");
    let meta = std::fs::read_to_string(&meta_path).unwrap();
    assert!(!meta.contains("sekrit"), "{meta}");
    assert!(meta.contains("127.0.0.1"), "{meta}");
    let mode = std::fs::metadata(&meta_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "metadata.json mode {mode:o}");

    publish(&repos, REPO, "c2", &[("model.bin", data(4000, 2))]);
    go();
    let env = std::fs::read_to_string(&hook_out).unwrap();
    assert!(env.contains("MODELGATE_REVISION="), "{env}");
    assert!(env.contains("PATH="), "{env}");
    assert!(!env.contains("sekrit"), "hook saw a secret:\n{env}");
}

#[test]
fn resume_rechecks_finished_files_against_the_listing_sha256() {
    let t = tmp();
    let repos = t.path().join("repos");
    let good = data(2 << 20, 5);
    publish(&repos, REPO, "c1", &[("model.bin", good.clone())]);
    let hub = Hub::start(&repos, &[]);
    let dest = t.path().join("model");
    // What a previous run left: a finished file of the right size but other bytes, logged
    // with its own (wrong) sha256.
    let partial = versions_of(&dest).join(".partial-c1");
    std::fs::create_dir_all(&partial).unwrap();
    let bad = data(2 << 20, 6);
    std::fs::write(partial.join("model.bin"), &bad).unwrap();
    let good_sha = modelgate_loader::digest::sha256_hex(&good);
    let entry = serde_json::json!({
        "path": "model.bin",
        "size": bad.len(),
        "sha256": modelgate_loader::digest::sha256_hex(&bad),
        "id": good_sha,
    });
    std::fs::write(partial.join(".modelgate-done.jsonl"), format!("{entry}\n")).unwrap();
    let mut c = loader(Some(&hub), REPO, &dest);
    c.arg("--once");
    let (out, err) = run(c);
    assert!(out.status.success(), "{err}");
    assert_eq!(std::fs::read(dest.join("model.bin")).unwrap(), good);
}
