//! The on-disk layout: each revision in `<versions>/<rev>/`, downloads in progress in
//! `<versions>/.partial-<rev>/`, and the served path a symlink switched by renaming a
//! temporary symlink over it (atomic for every reader).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};

pub const MANIFEST: &str = ".modelgate-manifest.json";
pub const DONE_LOG: &str = ".modelgate-done.jsonl";
pub const PARTS_DIR: &str = ".modelgate-parts";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// The source's content id (LFS sha256, git blob id, ETag), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub revision: String,
    pub source: String,
    pub completed_at: String,
    pub files: Vec<ManifestEntry>,
}

pub struct Layout {
    /// The served path (a symlink we own).
    pub dest: PathBuf,
    pub versions: PathBuf,
}

/// Revision ids become directory names: keep them to a safe alphabet.
pub fn dir_name(rev: &str) -> String {
    let s: String = rev
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(96)
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("r{s}")
    } else {
        s
    }
}

impl Layout {
    pub fn version_dir(&self, rev: &str) -> PathBuf {
        self.versions.join(dir_name(rev))
    }

    pub fn partial_dir(&self, rev: &str) -> PathBuf {
        self.versions.join(format!(".partial-{}", dir_name(rev)))
    }

    pub fn prepare(&self) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.versions)?;
        if let Some(parent) = self.dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        Ok(())
    }

    /// The complete revision the served symlink points at, if any.
    pub fn current(&self) -> Option<Manifest> {
        let target = std::fs::read_link(&self.dest).ok()?;
        let dir = if target.is_absolute() {
            target
        } else {
            self.dest.parent()?.join(target)
        };
        read_manifest(&dir)
    }

    /// Points the served path at `rev`'s directory, atomically.
    pub fn switch(&self, rev: &str) -> std::io::Result<()> {
        let dir = self.version_dir(rev);
        let parent = self.dest.parent().unwrap_or(Path::new("."));
        // Relative target when possible, so other containers may mount the volume elsewhere.
        let target = dir
            .strip_prefix(parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| dir.clone());
        match std::fs::symlink_metadata(&self.dest) {
            Ok(m) if m.is_dir() => {
                // A plain directory (say, an empty mount point left by an older setup).
                std::fs::remove_dir(&self.dest).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "{} is a non-empty directory, not a loader symlink; point --dest at a path inside the volume ({e})",
                            self.dest.display()
                        ),
                    )
                })?;
            }
            Ok(m) if m.is_file() => {
                return Err(std::io::Error::other(format!(
                    "{} is a regular file, not a loader symlink",
                    self.dest.display()
                )))
            }
            _ => {}
        }
        let name = self
            .dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)?;
        std::fs::rename(&tmp, &self.dest)?;
        sync_dir(parent);
        Ok(())
    }

    /// Removes complete revisions beyond the newest `keep` (the served one always stays),
    /// and partial downloads of other revisions.
    pub fn prune(&self, keep: usize, serving: &str, downloading: Option<&str>) {
        let serving_dir = dir_name(serving);
        let keep_partial = downloading.map(|r| format!(".partial-{}", dir_name(r)));
        let Ok(rd) = std::fs::read_dir(&self.versions) else {
            return;
        };
        let mut complete: Vec<(std::time::SystemTime, PathBuf, String)> = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if name.starts_with(".partial-") {
                if Some(&name) != keep_partial.as_ref() {
                    crate::info!("removing stale partial download {}", path.display());
                    let _ = std::fs::remove_dir_all(&path);
                }
                continue;
            }
            if name.starts_with(".deleting-") {
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            if name.starts_with('.') || name == serving_dir {
                continue;
            }
            if let Ok(m) = std::fs::metadata(path.join(MANIFEST)) {
                complete.push((m.modified().unwrap_or(std::time::UNIX_EPOCH), path, name));
            }
        }
        complete.sort_by_key(|c| std::cmp::Reverse(c.0));
        for (_, path, name) in complete.into_iter().skip(keep.saturating_sub(1)) {
            crate::info!("removing old revision {name}");
            // Renamed away first: a kill mid-removal never leaves a manifest over missing files.
            let doomed = self.versions.join(format!(".deleting-{name}"));
            match std::fs::rename(&path, &doomed) {
                Ok(()) => {
                    let _ = std::fs::remove_dir_all(&doomed);
                }
                Err(_) => {
                    let _ = std::fs::remove_file(path.join(MANIFEST));
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
        }
    }

    /// Takes the volume lock, waiting (and saying so) while another loader holds it.
    pub async fn lock(&self) -> std::io::Result<VolumeLock> {
        let path = self.versions.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        let mut warned = false;
        loop {
            if file.try_lock_exclusive()? {
                let _ = file.set_len(0);
                let _ = writeln!(&file, "{}", std::process::id());
                return Ok(VolumeLock { _file: file });
            }
            if !warned {
                crate::info!(
                    "waiting for {} (another loader is working on this volume)",
                    path.display()
                );
                warned = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Held while downloading and switching; the kernel releases it if the process dies.
pub struct VolumeLock {
    _file: std::fs::File,
}

pub fn read_manifest(dir: &Path) -> Option<Manifest> {
    serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).ok()?).ok()
}

pub fn write_manifest(dir: &Path, m: &Manifest) -> std::io::Result<()> {
    write_atomic(
        &dir.join(MANIFEST),
        &serde_json::to_vec_pretty(m).unwrap_or_default(),
    )
}

/// Write to a temp file, fsync, rename: readers see the old or the new content, never half.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, data, 0o644)
}

/// `write_atomic` with the file's permission bits.
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.tmp-");
    // A loader killed between create and rename left its temp file (another pid): the
    // volume lock makes this process the only writer, so every one is stale.
    if let Ok(rd) = std::fs::read_dir(parent) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let tmp = parent.join(format!("{prefix}{}", std::process::id()));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have cleared bits; the mode is exactly what was asked.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(parent);
    Ok(())
}

pub fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Files finished in a partial directory (survives a restart).
pub fn read_done(partial: &Path) -> Vec<ManifestEntry> {
    std::fs::read_to_string(partial.join(DONE_LOG))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn append_done(partial: &Path, e: &ManifestEntry) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(partial.join(DONE_LOG))?;
    let mut line = serde_json::to_vec(e).unwrap_or_default();
    line.push(b'\n');
    f.write_all(&line)
}

/// Hardlink `from` to `to` (same filesystem), else copy.
pub fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(p) = to.parent() {
        std::fs::create_dir_all(p)?;
    }
    let _ = std::fs::remove_file(to);
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(_) => std::fs::copy(from, to).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_clears_the_temp_file_of_a_killed_writer() {
        let d = tempfile::tempdir().unwrap();
        let stale = d.path().join("..ready.tmp-999999");
        std::fs::write(&stale, "half").unwrap();
        write_atomic(&d.path().join(".ready"), b"c9\n").unwrap();
        assert!(!stale.exists());
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(".ready")]);
    }

    #[test]
    fn switch_is_a_relative_symlink_and_prune_keeps_serving() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout {
            dest: d.path().join("model"),
            versions: d.path().join(".versions"),
        };
        l.prepare().unwrap();
        for (i, rev) in ["a", "b", "c"].iter().enumerate() {
            let dir = l.version_dir(rev);
            std::fs::create_dir_all(&dir).unwrap();
            let m = Manifest {
                revision: rev.to_string(),
                source: "s".into(),
                completed_at: i.to_string(),
                files: vec![],
            };
            write_manifest(&dir, &m).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        l.switch("a").unwrap();
        assert_eq!(
            std::fs::read_link(&l.dest).unwrap(),
            PathBuf::from(".versions/a")
        );
        assert_eq!(l.current().unwrap().revision, "a");
        l.switch("c").unwrap();
        assert_eq!(l.current().unwrap().revision, "c");
        l.prune(2, "c", None);
        assert!(l.version_dir("c").exists());
        assert!(l.version_dir("b").exists());
        assert!(!l.version_dir("a").exists());
    }

    #[test]
    fn dir_names_are_safe() {
        assert_eq!(dir_name("refs/pr/1"), "refs_pr_1");
        assert_eq!(dir_name(".."), "r..");
    }
}
