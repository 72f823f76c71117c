//! Remote file names made safe to join onto a destination directory.

use std::fmt;
use std::path::{Path, PathBuf};

/// A relative path with only normal components: no `..`, no root, no empty or `.` parts,
/// no backslashes or NULs, and not in the loader's own `.modelgate*` namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

impl RelPath {
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("empty file name".into());
        }
        if name.starts_with('/') {
            return Err(format!("absolute path {name:?} refused"));
        }
        if name.contains('\\') || name.contains('\0') {
            return Err(format!("file name {name:?} has a backslash or NUL"));
        }
        for part in name.split('/') {
            match part {
                "" | "." => return Err(format!("file name {name:?} has an empty or '.' part")),
                ".." => return Err(format!("file name {name:?} escapes the destination ('..')")),
                _ => {}
            }
        }
        if name.starts_with(".modelgate") {
            return Err(format!("file name {name:?} is reserved for the loader"));
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `base` joined with this path; safe because every component is a normal name.
    pub fn under(&self, base: &Path) -> PathBuf {
        base.join(&self.0)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_normal_names() {
        assert!(RelPath::parse("config.json").is_ok());
        assert!(RelPath::parse("a/b/model-00001.safetensors").is_ok());
        assert!(RelPath::parse("..hidden").is_ok());
    }

    #[test]
    fn refuses_escapes() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "a\\..\\b",
            ".modelgate-manifest.json",
        ] {
            assert!(RelPath::parse(bad).is_err(), "{bad}");
        }
    }
}
