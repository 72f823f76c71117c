//! Unpacking `.tar` / `.tar.gz` archives without trusting their names: only regular files and
//! directories, every name checked by `RelPath`, no links, no overwrites.

use std::io::{Read, Write};
use std::path::Path;

use crate::digest::{Expected, Hasher};
use crate::safe_path::RelPath;
use crate::source::ArchiveKind;
use crate::versions::ManifestEntry;

/// Bounds on what one archive may expand to (archive bombs).
pub struct Limits {
    pub max_entries: u64,
    pub max_bytes: u64,
    /// Free space (`--min-free`) that must remain while unpacking.
    pub min_free: u64,
}

/// Free space is re-checked after this many unpacked bytes.
const FREE_CHECK_EVERY: u64 = 8 << 20;

pub fn unpack(
    archive: &Path,
    kind: &ArchiveKind,
    dest: &Path,
    limits: &Limits,
) -> Result<Vec<ManifestEntry>, String> {
    let file = std::fs::File::open(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let reader: Box<dyn Read> = match kind {
        ArchiveKind::Tar => Box::new(std::io::BufReader::new(file)),
        ArchiveKind::TarGz => Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file))),
    };
    let mut ar = tar::Archive::new(reader);
    let mut out = Vec::new();
    let (mut entries, mut unpacked, mut since_check) = (0u64, 0u64, 0u64);
    for entry in ar.entries().map_err(|e| format!("archive: {e}"))? {
        let mut entry = entry.map_err(|e| format!("archive: {e}"))?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(format!(
                "archive: more than {} entries (--max-archive-entries)",
                limits.max_entries
            ));
        }
        let kind = entry.header().entry_type();
        let raw = entry.path().map_err(|e| format!("archive: {e}"))?;
        let raw = raw
            .to_str()
            .ok_or("archive: non-UTF-8 name refused")?
            .to_string();
        let name = raw.trim_start_matches("./").trim_end_matches('/');
        if name.is_empty() || name == "." {
            continue;
        }
        if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
        {
            continue;
        }
        let rel = RelPath::parse(name).map_err(|e| format!("archive entry: {e}"))?;
        let target = rel.under(dest);
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
            continue;
        }
        if !kind.is_file() {
            return Err(format!(
                "archive entry {name:?}: links and special files are refused"
            ));
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        // create_new: a second entry with the same name (or through an earlier symlink) fails.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&target)
            .map_err(|e| format!("{}: {e}", target.display()))?;
        let mut hasher = Hasher::new(&Expected::default());
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| format!("archive {name}: {e}"))?;
            if n == 0 {
                break;
            }
            let piece = buf.get(..n).unwrap_or_default();
            unpacked = unpacked.saturating_add(n as u64);
            if unpacked > limits.max_bytes {
                return Err(format!(
                    "archive: unpacks to more than {} bytes (--max-unpacked)",
                    limits.max_bytes
                ));
            }
            since_check += n as u64;
            if since_check >= FREE_CHECK_EVERY && limits.min_free > 0 {
                since_check = 0;
                let avail =
                    fs4::available_space(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
                if avail < limits.min_free {
                    return Err(format!(
                        "archive: free space fell to {avail} bytes, below --min-free {}",
                        limits.min_free
                    ));
                }
            }
            hasher.update(piece);
            f.write_all(piece)
                .map_err(|e| format!("{}: {e}", target.display()))?;
        }
        f.sync_all()
            .map_err(|e| format!("{}: {e}", target.display()))?;
        let c = hasher.finish();
        out.push(ManifestEntry {
            path: rel.as_str().to_string(),
            size: c.len,
            sha256: c.sha256,
            id: None,
        });
    }
    if out.is_empty() {
        return Err("archive: no files".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_LIMITS: Limits = Limits {
        max_entries: u64::MAX,
        max_bytes: u64::MAX,
        min_free: 0,
    };

    #[test]
    fn gzip_bomb_and_entry_floods_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // 24 MiB of zeros gzips to ~24 KiB: a small archive that unpacks large.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(24 << 20);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "zeros.bin", std::io::repeat(0).take(24 << 20))
            .unwrap();
        for i in 0..20 {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, format!("f{i}"), &b"x"[..]).unwrap();
        }
        let tarball = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tarball).unwrap();
        let ar = dir.path().join("bomb.tar.gz");
        std::fs::write(&ar, gz.finish().unwrap()).unwrap();
        let fresh = |n: &str| {
            let out = dir.path().join(n);
            std::fs::create_dir_all(&out).unwrap();
            out
        };
        let small = Limits {
            max_bytes: 4 << 20,
            ..NO_LIMITS
        };
        let err = unpack(&ar, &ArchiveKind::TarGz, &fresh("a"), &small).unwrap_err();
        assert!(err.contains("--max-unpacked"), "{err}");
        let few = Limits {
            max_entries: 10,
            ..NO_LIMITS
        };
        let err = unpack(&ar, &ArchiveKind::TarGz, &fresh("b"), &few).unwrap_err();
        assert!(err.contains("--max-archive-entries"), "{err}");
        assert_eq!(
            unpack(&ar, &ArchiveKind::TarGz, &fresh("c"), &NO_LIMITS)
                .unwrap()
                .len(),
            21
        );
    }

    fn tar_with(name: &str, kind: tar::EntryType) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(if kind == tar::EntryType::Regular {
            2
        } else {
            0
        });
        h.set_mode(0o644);
        // set_path refuses "..", so write the raw name as a hostile archive would.
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if kind == tar::EntryType::Symlink {
            h.set_link_name("/etc/passwd").unwrap();
        }
        h.set_cksum();
        let data: &[u8] = if kind == tar::EntryType::Regular {
            b"hi"
        } else {
            b""
        };
        b.append(&h, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn refuses_dotdot_and_links() {
        let dir = tempfile::tempdir().unwrap();
        for (name, kind) in [
            ("../evil", tar::EntryType::Regular),
            ("/abs", tar::EntryType::Regular),
            ("link", tar::EntryType::Symlink),
        ] {
            let ar = dir.path().join("a.tar");
            std::fs::write(&ar, tar_with(name, kind)).unwrap();
            let out = dir.path().join(format!("out-{}", name.len()));
            std::fs::create_dir_all(&out).unwrap();
            assert!(
                unpack(&ar, &ArchiveKind::Tar, &out, &NO_LIMITS).is_err(),
                "{name}"
            );
        }
        assert!(!dir.path().parent().unwrap().join("evil").exists());
    }

    #[test]
    fn unpacks_files_with_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let ar = dir.path().join("a.tar");
        std::fs::write(&ar, tar_with("sub/ok.txt", tar::EntryType::Regular)).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let m = unpack(&ar, &ArchiveKind::Tar, &out, &NO_LIMITS).unwrap();
        assert_eq!(std::fs::read(out.join("sub/ok.txt")).unwrap(), b"hi");
        assert_eq!(m[0].sha256, crate::digest::sha256_hex(b"hi"));
    }
}
