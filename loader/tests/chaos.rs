//! Loader chaos: SIGKILL at random points (download, verification, swap, cleanup) while the
//! server cuts connections, then restart; a server stalling mid-file; the disk filling up
//! mid-download. After each fault the served path is absent or one complete revision,
//! byte-identical to the source, with the ready file naming it; a kill costs at most about
//! one write batch (1 MiB) per connection; a stall is timed out and the load recovers; a full
//! disk fails the load, the old revision keeps serving, and the next run resumes.
//! `MODELGATE_CHAOS_KILLS` (kills wanted in all, default 6) makes the long run of
//! `scripts/soak-loader.sh`; `MODELGATE_CHAOS_SUMMARY` names a file each test appends its
//! summary row to.
// Test code throughout: its helpers may panic (clippy.toml's allow-*-in-tests).
#![cfg(test)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;

/// (name, bytes) of one revision.
type Files = Vec<(&'static str, Vec<u8>)>;
/// Files of the loader's own bookkeeping inside a served revision.
const OWN: [&str; 3] = [".ready", "metadata.json", ".modelgate-manifest.json"];

fn files_under(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// None when nothing is served; Some(rev) when exactly `rev` is served, complete and
/// byte-identical; Err(why) otherwise.
fn served(dest: &Path, repos: &Path) -> Result<Option<String>, String> {
    if std::fs::symlink_metadata(dest).is_err() {
        return Ok(None);
    }
    let rev = read_link_rev(dest);
    let ready = std::fs::read_to_string(dest.join(".ready")).map_err(|e| format!("ready: {e}"))?;
    if ready.trim() != rev {
        return Err(format!("ready names {ready:?}, served {rev}"));
    }
    let want = files_under(&repos.join(REPO).join("revisions").join(&rev));
    let mut got = files_under(dest);
    got.retain(|k, _| !OWN.contains(&k.as_str()));
    if got.keys().ne(want.keys()) {
        return Err(format!(
            "served {rev} has {:?}, source has {:?}",
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        ));
    }
    for (k, v) in &want {
        if got[k] != *v {
            return Err(format!("served {rev}: {k} differs from the source"));
        }
    }
    Ok(Some(rev))
}

#[test]
fn sigkill_at_random_points_never_serves_a_mixed_or_corrupt_model() {
    // Total kills wanted (the soak sets many); revisions follow one another until then.
    let target: u64 = std::env::var("MODELGATE_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let kills_per_rev = 4;
    let t = tmp();
    let repos = t.path().join("repos");
    let shared = data(6 << 20, 1);
    // Revision k: a new config and weights every time, a file that comes and goes (a mix of
    // two revisions would show), and a large file shared by all (reused, never re-fetched).
    let revision = |k: u64| -> (String, Files) {
        let mut files: Files = vec![
            ("config.json", format!("{{\"v\":{k}}}").into_bytes()),
            ("a.bin", data(8 << 20, 100 + k)),
            ("shared.bin", shared.clone()),
        ];
        if k & 1 == 0 {
            files.push(("b/c.bin", data(3 << 20, 200 + k)));
        }
        (format!("c{k}"), files)
    };
    let hub = Hub::start(&repos, &["--rate-bps", "3145728", "--cut-count", "3"]);
    let dest = t.path().join("model");
    let connections = 3u64;
    let (mut kills, mut bad, mut needed) = (0u64, Vec::new(), 0u64);
    let mut served_before: Option<String> = None;
    let mut k = 0;
    while k < 2 || (kills < target && k < target + 2) {
        k += 1;
        let (rev, files) = revision(k);
        let rev = rev.as_str();
        publish(&repos, REPO, rev, &files);
        // Bytes this revision must download: what the served one does not already have.
        let old = served_before
            .as_ref()
            .map(|r| files_under(&repos.join(REPO).join("revisions").join(r)))
            .unwrap_or_default();
        needed += files
            .iter()
            .filter(|(n, d)| old.get(*n) != Some(d))
            .map(|(_, d)| d.len() as u64)
            .sum::<u64>();
        let mut round = 0;
        loop {
            let last = round >= kills_per_rev;
            let mut c = loader(Some(&hub), REPO, &dest);
            c.args([
                "--once",
                "--chunk-size",
                "4MiB",
                "--parallel-ranges",
                "2",
                "--parallel-files",
                "2",
                "--connections",
                &connections.to_string(),
                "--read-timeout",
                "5s",
            ]);
            let mut r = Running::spawn(c);
            let exited = if last {
                let (ok, log) = r.wait_exit(Duration::from_secs(120));
                assert!(ok, "{log}");
                true
            } else {
                std::thread::sleep(Duration::from_millis(fastrand::u64(100..1500)));
                let done = r.child.try_wait().unwrap().is_some();
                if !done {
                    r.signal(9);
                    let _ = r.child.wait();
                    kills += 1;
                }
                done
            };
            match served(&dest, &repos) {
                Ok(Some(s)) if s == rev || Some(&s) == served_before.as_ref() => {}
                Ok(None) if served_before.is_none() => {}
                Ok(other) => bad.push(format!("after a kill in {rev}: serving {other:?}")),
                Err(e) => bad.push(e),
            }
            round += 1;
            if last || (exited && served(&dest, &repos) == Ok(Some(rev.to_string()))) {
                break;
            }
        }
        assert_eq!(served(&dest, &repos), Ok(Some(rev.to_string())));
        served_before = Some(rev.to_string());
    }
    let sent = hub.stats()["bytes_sent"].as_u64().unwrap();
    let lost = sent.saturating_sub(needed);
    let line = format!(
        "| loader chaos (SIGKILL + cut connections) | {kills} kills | {:.2} MiB lost ({:.2} MiB per kill) | {} corrupt or mixed models served |",
        lost as f64 / 1048576.0,
        lost as f64 / 1048576.0 / kills.max(1) as f64,
        bad.len()
    );
    summary_row(&line);
    assert!(bad.is_empty(), "{bad:#?}");
    // Per kill and connection: one 1 MiB write batch plus the piece in flight (256 KiB),
    // and the pieces cut connections counted as sent (3 cuts).
    let allowance = kills * connections * ((1 << 20) + (64 << 10) + (256 << 10));
    assert!(
        lost <= allowance + 3 * (256 << 10),
        "lost {lost} bytes over {kills} kills (allowed {allowance})"
    );
}

/// Appends one markdown row to the soak's summary file, when one is named.
fn summary_row(line: &str) {
    eprintln!("{line}");
    if let Ok(p) = std::env::var("MODELGATE_CHAOS_SUMMARY") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }
}

#[test]
fn server_stalling_mid_file_is_timed_out_and_recovers_across_a_kill() {
    let t = tmp();
    let repos = t.path().join("repos");
    let files: Files = vec![
        ("config.json", b"{\"v\":1}".to_vec()),
        ("a.bin", data(10 << 20, 300)),
    ];
    publish(&repos, REPO, "c1", &files);
    // The first four file responses send 1.5 MiB (mid-range, mid-file) and then nothing.
    let hub = Hub::start(&repos, &["--stall-after", "1572864", "--stall-count", "4"]);
    let dest = t.path().join("model");
    let flags = |c: &mut std::process::Command, read_timeout: &str| {
        c.args(["--once", "--chunk-size", "4MiB", "--parallel-ranges", "2"])
            .args(["--parallel-files", "1", "--read-timeout", read_timeout]);
    };
    // A patient loader hangs on the stalled responses; it is killed there.
    let mut c = loader(Some(&hub), REPO, &dest);
    flags(&mut c, "600s");
    let r = Running::spawn(c);
    wait_until("a stalled response", Duration::from_secs(120), || {
        hub.stats()["bytes_sent"].as_u64().unwrap() >= 1572864
    });
    std::thread::sleep(Duration::from_millis(300));
    r.signal(9);
    drop(r);
    assert_eq!(
        served(&dest, &repos),
        Ok(None),
        "a killed first load serves nothing"
    );
    // The next one meets the remaining stalls, times them out, retries and finishes.
    let mut c = loader(Some(&hub), REPO, &dest);
    flags(&mut c, "2s");
    let mut r = Running::spawn(c);
    let (ok, log) = r.wait_exit(Duration::from_secs(120));
    assert!(ok, "{log}");
    assert!(log.contains("stalled"), "no stall met: {log}");
    assert_eq!(served(&dest, &repos), Ok(Some("c1".to_string())));
    summary_row("| loader chaos (server stalls mid-file, then SIGKILL) | 1 kill | recovered | 0 corrupt or mixed models served |");
}

/// Fills the filesystem under `dir` until a write fails; returns the filler's path.
fn fill_disk(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    let p = dir.join("filler");
    let mut f = std::fs::File::create(&p).unwrap();
    let block = vec![0xa5u8; 256 << 10];
    while f.write_all(&block).is_ok() {}
    // The last partial block may be held in the page cache: flush it too, ignoring ENOSPC.
    let _ = f.sync_all();
    p
}

#[test]
fn disk_filling_up_mid_download_keeps_the_old_revision_and_resumes_once_freed() {
    let t = tmp();
    let vol = t.path().join("vol");
    // A real ENOSPC needs a small filesystem: a tmpfs, which needs root (CAP_SYS_ADMIN).
    let _mount = match Tmpfs::mount(&vol, "24m") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED disk-full chaos: cannot mount a tmpfs here ({e})");
            return;
        }
    };
    let repos = t.path().join("repos");
    publish(&repos, REPO, "c1", &[("model.bin", data(1 << 20, 400))]);
    // Slow enough (1 MiB/s per response, 12 MiB to fetch) that the disk fills while c2 is
    // on its way, even on a loaded machine.
    let hub = Hub::start(&repos, &["--rate-bps", "1048576"]);
    let dest = vol.join("model");
    let flags = ["--once", "--chunk-size", "2MiB", "--parallel-ranges", "2"];
    let mut c = loader(Some(&hub), REPO, &dest);
    c.args(flags);
    let (out, err) = run(c);
    assert!(out.status.success(), "{err}");

    publish(
        &repos,
        REPO,
        "c2",
        &[
            ("model.bin", data(10 << 20, 401)),
            ("extra.bin", data(2 << 20, 402)),
        ],
    );
    let mut c = loader(Some(&hub), REPO, &dest);
    c.args(flags);
    let mut r = Running::spawn(c);
    // Filled once some of model.bin is on disk and recorded, so there is something to resume.
    wait_until("part of c2 on disk", Duration::from_secs(120), || {
        held_bytes(&dest, "c2", "model.bin") >= 2 << 20
    });
    let filler = fill_disk(&vol);
    let (ok, log) = r.wait_exit(Duration::from_secs(120));
    assert!(!ok, "the load must fail on a full disk: {log}");
    assert!(log.contains("no space left on device"), "{log}");
    assert_eq!(
        served(&dest, &repos),
        Ok(Some("c1".to_string())),
        "the old revision keeps serving"
    );

    std::fs::remove_file(filler).unwrap();
    let mut c = loader(Some(&hub), REPO, &dest);
    c.args(flags);
    let mut r = Running::spawn(c);
    let (ok, log) = r.wait_exit(Duration::from_secs(120));
    assert!(ok, "{log}");
    assert!(log.contains("resuming"), "the bytes kept are reused: {log}");
    assert_eq!(served(&dest, &repos), Ok(Some("c2".to_string())));
    summary_row("| loader chaos (disk fills up mid-download, then freed) | 1 fill | resumed | 0 corrupt or mixed models served |");
}
