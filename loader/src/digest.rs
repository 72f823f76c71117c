//! Hashes computed while bytes stream in, and the check against what the source published.

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// What a source (or the operator, via `--sha256` / `--manifest`) says a file must be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub size: Option<u64>,
    /// Lower-case hex sha256 (HF LFS files, manifests, `--sha256`).
    pub sha256: Option<String>,
    /// Git blob id (sha1 of `blob <len>\0<bytes>`), which the Hub publishes for non-LFS files.
    pub git_blob_sha1: Option<String>,
    /// S3 single-part ETag, which is the MD5 of the content.
    pub md5: Option<String>,
}

impl Expected {
    /// True when some hash, not only a size, will be checked.
    pub fn has_hash(&self) -> bool {
        self.sha256.is_some() || self.git_blob_sha1.is_some() || self.md5.is_some()
    }
}

/// All hashes a file needs, fed in order.
pub struct Hasher {
    sha256: Sha256,
    sha1: Option<Sha1>,
    md5: Option<Md5>,
    len: u64,
}

impl Hasher {
    pub fn new(expected: &Expected) -> Self {
        let sha1 = match (&expected.git_blob_sha1, expected.size) {
            (Some(_), Some(size)) => {
                let mut h = Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                Some(h)
            }
            _ => None,
        };
        Self {
            sha256: Sha256::new(),
            sha1,
            md5: expected.md5.as_ref().map(|_| Md5::new()),
            len: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        if let Some(h) = self.sha1.as_mut() {
            h.update(data);
        }
        if let Some(h) = self.md5.as_mut() {
            h.update(data);
        }
        self.len += data.len() as u64;
    }

    pub fn finish(self) -> Computed {
        Computed {
            len: self.len,
            sha256: hex::encode(self.sha256.finalize()),
            git_blob_sha1: self.sha1.map(|h| hex::encode(h.finalize())),
            md5: self.md5.map(|h| hex::encode(h.finalize())),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Computed {
    pub len: u64,
    pub sha256: String,
    pub git_blob_sha1: Option<String>,
    pub md5: Option<String>,
}

impl Computed {
    /// Compares every published value; the error says which one differed.
    pub fn verify(&self, expected: &Expected) -> Result<(), String> {
        if let Some(size) = expected.size {
            if size != self.len {
                return Err(format!("size {} != published {size}", self.len));
            }
        }
        if let Some(want) = &expected.sha256 {
            if !want.eq_ignore_ascii_case(&self.sha256) {
                return Err(format!("sha256 {} != published {want}", self.sha256));
            }
        }
        if let (Some(want), Some(got)) = (&expected.git_blob_sha1, &self.git_blob_sha1) {
            if !want.eq_ignore_ascii_case(got) {
                return Err(format!("git blob id {got} != published {want}"));
            }
        }
        if let (Some(want), Some(got)) = (&expected.md5, &self.md5) {
            if !want.eq_ignore_ascii_case(got) {
                return Err(format!("md5 {got} != published ETag {want}"));
            }
        }
        Ok(())
    }
}

/// Hex sha256 of a byte slice (revision ids of listings, tests).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `sha256sum`-format manifest: `<hex>  <path>` per line (`*` binary marker allowed).
pub fn parse_manifest(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (hash, rest) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("manifest line {}: expected '<sha256>  <path>'", n + 1))?;
        let path = rest.trim_start().trim_start_matches('*');
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("manifest line {}: {hash:?} is not a sha256", n + 1));
        }
        out.push((path.to_string(), hash.to_ascii_lowercase()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_id_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        let exp = Expected {
            size: Some(6),
            git_blob_sha1: Some("ce013625030ba8dba906f756967f9e9ca394464a".into()),
            ..Default::default()
        };
        let mut h = Hasher::new(&exp);
        h.update(b"hel");
        h.update(b"lo\n");
        assert_eq!(h.finish().verify(&exp), Ok(()));
    }

    #[test]
    fn mismatch_names_the_hash() {
        let exp = Expected {
            size: Some(1),
            sha256: Some("00".repeat(32)),
            ..Default::default()
        };
        let mut h = Hasher::new(&exp);
        h.update(b"x");
        let err = h.finish().verify(&exp).unwrap_err();
        assert!(err.contains("sha256"), "{err}");
    }

    #[test]
    fn manifest_parses_sha256sum_output() {
        let m = parse_manifest(&format!(
            "{}  a/b.bin\n{} *c\n",
            "ab".repeat(32),
            "CD".repeat(32)
        ))
        .unwrap();
        assert_eq!(m[0], ("a/b.bin".to_string(), "ab".repeat(32)));
        assert_eq!(m[1], ("c".to_string(), "cd".repeat(32)));
        assert!(parse_manifest("nothash x").is_err());
    }
}
