//! Request paths as a server reads them, for matching configured paths and prefixes: the
//! filters must not see `//v1/chat/completions` or `/%76%31/chat/completions` as anything
//! other than `/v1/chat/completions`, since common servers normalise them back (issue 11,
//! finding 8). Envoy's `normalize_path` and `merge_slashes` do the same in front of us; this
//! is the filters' own guard when a config lacks them.

use std::borrow::Cow;

/// The path part of `raw` (query and fragment dropped), normalised: percent-encoded
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded, runs of `/` merged, and `.` and
/// `..` segments resolved (`..` never climbs above the root). Other escapes (`%2F`, `%00`,
/// non-ASCII) stay as written, as in RFC 3986 normalisation. Borrows when nothing changes,
/// which is the common case, so a request costs no allocation.
pub fn normalize(raw: &[u8]) -> Cow<'_, [u8]> {
    let end = raw
        .iter()
        .position(|b| *b == b'?' || *b == b'#')
        .unwrap_or(raw.len());
    let path = raw.get(..end).unwrap_or(raw);
    if is_normal(path) {
        return Cow::Borrowed(path);
    }
    // Decode unreserved escapes first: `%2e%2e` is `..` to a server.
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = path.get(i) {
        if b == b'%' {
            if let Some(c) = unreserved_escape(path.get(i + 1..i + 3)) {
                decoded.push(c);
                i += 3;
                continue;
            }
        }
        decoded.push(b);
        i += 1;
    }
    let mut out: Vec<u8> = Vec::with_capacity(decoded.len() + 1);
    for segment in decoded.split(|b| *b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                // Drop the last segment and its slash.
                let cut = out.iter().rposition(|b| *b == b'/').unwrap_or(0);
                out.truncate(cut);
            }
            s => {
                out.push(b'/');
                out.extend_from_slice(s);
            }
        }
    }
    // A trailing slash (or a trailing `.`/`..` segment) leaves the path a directory.
    let dir = decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    if out.is_empty() || dir {
        out.push(b'/');
    }
    Cow::Owned(out)
}

/// True when [`normalize`] would return `path` unchanged.
fn is_normal(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') || path.contains(&b'%') {
        return false;
    }
    // No `//`, and no `.` or `..` segment.
    !path.windows(2).any(|w| w == b"//")
        && path.split(|b| *b == b'/').all(|s| s != b"." && s != b"..")
}

/// The unreserved character a two-hex-digit escape stands for, if it is one.
fn unreserved_escape(hex: Option<&[u8]>) -> Option<u8> {
    let [h, l] = hex? else { return None };
    let digit = |c: &u8| char::from(*c).to_digit(16);
    let c = u8::try_from(digit(h)? * 16 + digit(l)?).ok()?;
    (c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')).then_some(c)
}

/// True when `path` (a request's `:path`) starts with `prefix` once normalised.
pub fn has_prefix(path: &[u8], prefix: &str) -> bool {
    normalize(path).starts_with(prefix.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> String {
        String::from_utf8(normalize(p.as_bytes()).into_owned()).unwrap()
    }

    #[test]
    fn doubled_slashes_and_escaped_letters_are_the_plain_path() {
        assert_eq!(norm("//v1/chat/completions"), "/v1/chat/completions");
        assert_eq!(norm("/%76%31/chat/completions"), "/v1/chat/completions");
        assert_eq!(norm("/v1//chat///completions?x=1"), "/v1/chat/completions");
        assert_eq!(norm("/%2F%2Fv1"), "/%2F%2Fv1");
        assert_eq!(norm("/%7e%5F"), "/~_");
    }

    #[test]
    fn dot_segments_are_resolved_and_never_climb_above_the_root() {
        assert_eq!(
            norm("/health/../v1/chat/completions"),
            "/v1/chat/completions"
        );
        assert_eq!(norm("/v1/./chat/completions"), "/v1/chat/completions");
        assert_eq!(norm("/../../v1/models"), "/v1/models");
        assert_eq!(norm("/%2e%2e/v1/models"), "/v1/models");
        assert_eq!(norm("/v1/chat/.."), "/v1/");
        assert_eq!(norm("/v1/.."), "/");
        assert_eq!(norm(""), "/");
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for p in ["/v1/chat/completions", "/", "/v1/", "/a.b/c..d/.e"] {
            assert!(matches!(normalize(p.as_bytes()), Cow::Borrowed(_)), "{p}");
            assert_eq!(norm(p), p);
        }
        assert_eq!(norm("/v1/models?limit=2#x"), "/v1/models");
        assert!(matches!(normalize(b"/v1/models?x"), Cow::Borrowed(_)));
        // Not UTF-8: bytes pass through.
        assert_eq!(&*normalize(b"//v1/\xff"), b"/v1/\xff");
    }

    #[test]
    fn prefixes_match_the_normalised_path() {
        assert!(has_prefix(b"//v1/chat/completions", "/v1/"));
        assert!(has_prefix(b"/%76%31/chat/completions", "/v1/"));
        assert!(!has_prefix(b"/v1/../health", "/v1/"));
    }
}
