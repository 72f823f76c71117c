//! Loader against real storage emulators on loopback, installed by scripts/setup.sh into
//! tools/: Azure Blob (Azurite from npm) and GCS (`gcp-storage-emulator` from PyPI). Each
//! covers listing, ranged reads, resume after SIGKILL, sha256 verification and credentials
//! from the usual env vars.
// Test code throughout: its helpers may panic (clippy.toml's allow-*-in-tests).
#![cfg(test)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

fn manifest(dir: &Path, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let p = dir.join("SHA256SUMS");
    let text: String = files
        .iter()
        .map(|(n, d)| format!("{}  {n}\n", hex::encode(Sha256::digest(d))))
        .collect();
    std::fs::write(&p, text).unwrap();
    p
}

/// Loads `source` three ways: killed mid-file then resumed (ranged reads, state kept), and
/// with a wrong sha256 in the manifest (refused, nothing served).
fn exercise(source: &str, env: &[(&str, String)], files: &[(&str, Vec<u8>)], big: &str) {
    let t = tmp();
    let good = manifest(t.path(), files);
    let with_env = |c: &mut Command| {
        for (k, v) in env {
            c.env(k, v);
        }
    };
    let dest = t.path().join("model");
    let flags = [
        "--once",
        "--chunk-size",
        "1MiB",
        "--parallel-ranges",
        "1",
        "--connections",
        "1",
    ];
    // Killed once a few MiB of the big file are on disk; the next run resumes.
    let mut c = loader(None, source, &dest);
    c.args(flags).arg("--manifest").arg(&good);
    with_env(&mut c);
    let mut r = Running::spawn(c);
    let parts = versions_of(&dest);
    let mut killed = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        if r.child.try_wait().unwrap().is_some() {
            break;
        }
        let held = std::fs::read_dir(&parts)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                e.path()
                    .join(".modelgate-parts")
                    .join(format!("{big}.part.state"))
            })
            .find_map(|p| std::fs::read(p).ok())
            .and_then(|s| serde_json::from_slice::<serde_json::Value>(&s).ok())
            .and_then(|v| {
                v["got"]
                    .as_array()
                    .map(|g| g.iter().filter_map(|x| x.as_u64()).sum::<u64>())
            })
            .unwrap_or(0);
        if held >= 2 << 20 {
            r.signal(9);
            let _ = r.child.wait();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        killed,
        "the download finished before it could be killed:\n{}",
        r.log()
    );
    assert!(
        std::fs::symlink_metadata(&dest).is_err(),
        "killed run must not serve"
    );
    let mut c = loader(None, source, &dest);
    c.args(flags).arg("--manifest").arg(&good);
    with_env(&mut c);
    let (out, err) = run(c);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming"), "{err}");
    for (name, d) in files {
        assert_eq!(&std::fs::read(dest.join(name)).unwrap(), d, "{name}");
    }

    // A sha256 the bytes do not match: retried, then refused; nothing served.
    let mut wrong: Vec<(&str, Vec<u8>)> = files.to_vec();
    wrong.iter_mut().find(|(n, _)| *n == big).unwrap().1.push(0);
    let bad_dir = t.path().join("bad");
    std::fs::create_dir_all(&bad_dir).unwrap();
    let bad = manifest(&bad_dir, &wrong);
    let dest2 = t.path().join("model2");
    let mut c = loader(None, source, &dest2);
    c.args(["--once", "--retries", "1"])
        .arg("--manifest")
        .arg(&bad);
    with_env(&mut c);
    let (out, err) = run(c);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("integrity check failed"), "{err}");
    assert!(std::fs::symlink_metadata(&dest2).is_err());
}

fn model_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("config.json", b"{\"x\":1}".to_vec()),
        ("w/model.bin", data(24 * 1024 * 1024 + 7, 40)),
    ]
}

const AZ_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's published development key.
const AZ_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn b64(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::new();
    for c in clean.chunks(4) {
        let mut n = 0u32;
        for (i, b) in c.iter().enumerate() {
            n |= u32::from(val(*b)) << (18 - 6 * i);
        }
        for i in 0..c.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let pad = |x: u8| k.iter().map(|b| b ^ x).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// A Shared Key signed request to Azurite (the loader itself signs through object_store).
fn az_request(
    port: u16,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    extra: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let mut ms: Vec<(String, String)> = vec![
        ("x-ms-date".into(), date),
        ("x-ms-version".into(), "2021-08-06".into()),
    ];
    for (k, v) in extra {
        ms.push((k.to_string(), v.to_string()));
    }
    ms.sort();
    let canon_headers: String = ms.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let mut q: Vec<&(&str, &str)> = query.iter().collect();
    q.sort();
    let canon_query: String = q.iter().map(|(k, v)| format!("\n{k}:{v}")).collect();
    let len = if body.is_empty() {
        String::new()
    } else {
        body.len().to_string()
    };
    let to_sign = format!(
        "{method}\n\n\n{len}\n\n\n\n\n\n\n\n\n{canon_headers}/{AZ_ACCOUNT}{path}{canon_query}"
    );
    let sig = b64(&hmac_sha256(&unb64(AZ_KEY), to_sign.as_bytes()));
    let mut headers: Vec<(&str, String)> =
        ms.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    headers.push(("Authorization", format!("SharedKey {AZ_ACCOUNT}:{sig}")));
    let qs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let full = if qs.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", qs.join("&"))
    };
    request(port, method, &full, &headers, body)
}

#[test]
fn azure_source_via_azurite() {
    let Some(bin) = tool("azurite/node_modules/.bin/azurite-blob") else {
        return;
    };
    let port = free_port();
    let work = tmp();
    let _srv = Server(
        Command::new(bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            // No telemetry: Azurite otherwise sends usage data to a remote endpoint.
            .args(["--skipApiVersionCheck", "--loose", "--disableTelemetry"])
            .arg("--location")
            .arg(work.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let container = format!("/{AZ_ACCOUNT}/models");
    wait_until("azurite answering", Duration::from_secs(120), || {
        let (code, _) = az_request(
            port,
            "PUT",
            &container,
            &[("restype", "container")],
            &[],
            b"",
        );
        code == 201 || code == 409
    });
    let files = model_files();
    for (name, d) in &files {
        let path = format!("{container}/llama/{name}");
        let (code, body) = az_request(
            port,
            "PUT",
            &path,
            &[],
            &[("x-ms-blob-type", "BlockBlob")],
            d,
        );
        assert_eq!(code, 201, "{body}");
    }
    let env = [
        ("AZURE_STORAGE_USE_EMULATOR", "true".to_string()),
        (
            "AZURITE_BLOB_STORAGE_URL",
            format!("http://127.0.0.1:{port}"),
        ),
    ];
    exercise("az://models/llama", &env, &files, "w/model.bin");
}

/// A service account key as Google issues it (a fresh RSA key; `token_uri` is never called:
/// object_store signs a JWT locally for GCS).
fn service_account(dir: &Path) -> PathBuf {
    let pem = dir.join("key.pem");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genpkey failed");
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "test",
        "private_key_id": "k1",
        "private_key": std::fs::read_to_string(&pem).unwrap(),
        "client_email": "loader@test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token",
    });
    let p = dir.join("sa.json");
    std::fs::write(&p, key.to_string()).unwrap();
    p
}

/// Accepts one request on a free port, answers 403, and returns its head.
fn capture_one() -> (u16, std::thread::JoinHandle<String>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        let _ = s
            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        String::from_utf8_lossy(&head).into_owned()
    });
    (port, h)
}

#[test]
fn gcs_source_via_gcp_storage_emulator() {
    let Some(bin) = tool("venv/bin/gcp-storage-emulator") else {
        return;
    };
    let port = free_port();
    let work = tmp();
    let _srv = Server(
        Command::new(bin)
            .arg("--data-dir")
            .arg(work.path())
            .args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--default-bucket", "models", "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // A fresh venv compiles every module on first start: wait for a real answer.
    wait_until(
        "gcp-storage-emulator answering",
        Duration::from_secs(120),
        || request(port, "GET", "/storage/v1/b/models", &[], b"").0 == 200,
    );
    let files = model_files();
    for (name, d) in &files {
        let path = format!(
            "/upload/storage/v1/b/models/o?uploadType=media&name=llama%2F{}",
            name.replace('/', "%2F")
        );
        let (code, body) = request(port, "POST", &path, &[], d);
        assert_eq!(code, 200, "{body}");
    }
    // Anonymous, as Google's client libraries are with STORAGE_EMULATOR_HOST.
    let env = [("STORAGE_EMULATOR_HOST", format!("127.0.0.1:{port}"))];
    exercise("gs://models/llama", &env, &files, "w/model.bin");

    // A service account key from GOOGLE_APPLICATION_CREDENTIALS signs every request.
    let t = tmp();
    let sa = service_account(t.path());
    let (cport, head) = capture_one();
    let with_sa = |base: u16, c: &mut Command| {
        c.env("GOOGLE_APPLICATION_CREDENTIALS", &sa)
            .env("GOOGLE_BASE_URL", format!("http://127.0.0.1:{base}"));
    };
    let mut c = loader(None, "gs://models/llama", &t.path().join("denied"));
    c.args(["--once", "--retries", "0"]);
    with_sa(cport, &mut c);
    let (out, err) = run(c);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("HTTP 403"), "{err}");
    // The hint names Google's credentials, not the Hub's token.
    assert!(err.contains("GOOGLE_APPLICATION_CREDENTIALS"), "{err}");
    assert!(!err.contains("HF_TOKEN"), "{err}");
    let head = head.join().unwrap();
    assert!(
        head.starts_with("GET /storage/v1/b/models/o?prefix=llama%2F "),
        "{head}"
    );
    let jwt = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("authorization: bearer ")
                .then(|| l["authorization: bearer ".len()..].to_string())
        })
        .unwrap_or_else(|| panic!("no bearer token sent:\n{head}"));
    let claims = unb64(
        &jwt.split('.')
            .nth(1)
            .unwrap()
            .replace('-', "+")
            .replace('_', "/"),
    );
    let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
    assert_eq!(claims["iss"], "loader@test.iam.gserviceaccount.com");
    assert!(!err.contains(&jwt), "token logged: {err}");

    // The same credentials against the emulator; the URL names one object.
    let dest = t.path().join("one");
    let mut c = loader(None, "gs://models/llama/config.json", &dest);
    c.arg("--once");
    with_sa(port, &mut c);
    let (out, err) = run(c);
    assert!(out.status.success(), "{err}");
    assert_eq!(std::fs::read(dest.join("config.json")).unwrap(), files[0].1);
}
