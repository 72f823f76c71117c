//! The one Prometheus text-format parser (exposition format 0.0.4, and the OpenMetrics
//! text that model servers also emit). It borrows from the input — no allocation per
//! sample — and reads a body in chunks of any size with a bounded line buffer, so a
//! huge or hostile `/metrics` answer costs bounded memory and is cut at a byte limit.
//!
//! ```
//! use modelgate_core::prom::{Limits, Parser};
//! let mut waiting = 0.0;
//! let mut p = Parser::new(Limits::default());
//! p.feed(b"# TYPE q gauge\nq{model_name=\"m\"} 3\n", &mut |s| if s.name == "q" { waiting += s.value });
//! let stats = p.finish(&mut |_| {});
//! assert_eq!((waiting, stats.samples), (3.0, 1));
//! ```

use std::borrow::Cow;

/// One sample line: `name{labels} value [timestamp]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: Labels<'a>,
    pub value: f64,
}

/// The text between `{` and `}` of a sample, validated; read values with [`Labels::get`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Labels<'a> {
    raw: &'a str,
}

impl<'a> Labels<'a> {
    /// The value of label `key`, unescaped (borrowed unless it contains escapes).
    pub fn get(&self, key: &str) -> Option<Cow<'a, str>> {
        self.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| unescape(v))
    }

    /// `(name, raw escaped value)` pairs, in order.
    pub fn iter(&self) -> LabelIter<'a> {
        LabelIter { rest: self.raw }
    }

    pub fn is_empty(&self) -> bool {
        self.raw.trim().is_empty()
    }
}

/// Iterator over the label pairs of a validated label set.
pub struct LabelIter<'a> {
    rest: &'a str,
}

impl<'a> Iterator for LabelIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let (pair, rest) = split_label(self.rest).ok()??;
        self.rest = rest;
        Some(pair)
    }
}

/// Splits the first `name="value"` off a label list; `Ok(None)` at the end.
type LabelSplit<'a> = Result<Option<((&'a str, &'a str), &'a str)>, ()>;

fn split_label(s: &str) -> LabelSplit<'_> {
    let s = s.trim_start_matches([' ', '\t', ',']);
    if s.is_empty() {
        return Ok(None);
    }
    let name_end = s.find(|c: char| !is_label_char(c)).ok_or(())?;
    let name = s.get(..name_end).ok_or(())?;
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(());
    }
    let rest = s.get(name_end..).ok_or(())?.trim_start();
    let rest = rest.strip_prefix('=').ok_or(())?.trim_start();
    let body = rest.strip_prefix('"').ok_or(())?;
    let mut escaped = false;
    for (i, b) in body.bytes().enumerate() {
        match (escaped, b) {
            (true, _) => escaped = false,
            (false, b'\\') => escaped = true,
            (false, b'"') => {
                let value = body.get(..i).ok_or(())?;
                let after = body.get(i + 1..).ok_or(())?.trim_start();
                // A pair must be followed by a comma or the end of the set.
                if !(after.is_empty() || after.starts_with(',')) {
                    return Err(());
                }
                return Ok(Some(((name, value), after)));
            }
            _ => {}
        }
    }
    Err(())
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_name_char(c: char) -> bool {
    is_label_char(c) || c == ':'
}

fn unescape(raw: &str) -> Cow<'_, str> {
    if !raw.contains('\\') {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

/// Why a line is not a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Parses one line: `Ok(None)` for blank lines and `#` comments (HELP, TYPE, EOF).
pub fn parse_line(line: &str) -> Result<Option<Sample<'_>>, Malformed> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let name_end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let name = line.get(..name_end).ok_or(Malformed)?;
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(Malformed);
    }
    let mut rest = line.get(name_end..).ok_or(Malformed)?;
    let mut labels = Labels::default();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let close = closing_brace(after_brace).ok_or(Malformed)?;
        let raw = after_brace.get(..close).ok_or(Malformed)?;
        validate_labels(raw)?;
        labels = Labels { raw };
        rest = after_brace.get(close + 1..).ok_or(Malformed)?;
    }
    // The value must be separated from the name/labels by whitespace.
    if !rest.starts_with([' ', '\t']) {
        return Err(Malformed);
    }
    let mut fields = rest.split_ascii_whitespace();
    let value: f64 = fields
        .next()
        .ok_or(Malformed)?
        .parse()
        .map_err(|_| Malformed)?;
    match fields.next() {
        None => {}
        // OpenMetrics exemplar after the value.
        Some(t) if t.starts_with('#') => {}
        Some(ts) => {
            ts.parse::<f64>().map_err(|_| Malformed)?;
            if let Some(extra) = fields.next() {
                if !extra.starts_with('#') {
                    return Err(Malformed);
                }
            }
        }
    }
    Ok(Some(Sample {
        name,
        labels,
        value,
    }))
}

/// Index of the `}` that closes a label set, skipping quoted values.
fn closing_brace(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, b) in s.bytes().enumerate() {
        match (quoted, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => quoted = false,
            (false, _, b'"') => quoted = true,
            (false, _, b'}') => return Some(i),
            _ => {}
        }
    }
    None
}

fn validate_labels(raw: &str) -> Result<(), Malformed> {
    let mut rest = raw;
    loop {
        match split_label(rest) {
            Ok(Some((_, r))) => rest = r,
            Ok(None) => return Ok(()),
            Err(()) => return Err(Malformed),
        }
    }
}

/// Bounds on what one scrape may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes read in total; the rest of the body is ignored (and `truncated` set).
    pub max_bytes: usize,
    /// Longer lines are skipped (and counted in `overlong`), never buffered whole.
    pub max_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 4 << 20,
            max_line_bytes: 16 << 10,
        }
    }
}

/// What a parse saw, for logs and the scrape's error kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseStats {
    pub bytes: usize,
    pub lines: usize,
    pub samples: usize,
    /// Lines that are neither samples nor comments (including invalid UTF-8).
    pub malformed: usize,
    /// Lines longer than `max_line_bytes`, skipped.
    pub overlong: usize,
    /// The input went past `max_bytes`; what followed was not read.
    pub truncated: bool,
}

/// Incremental parser: feed the body chunk by chunk (any split, even inside a line);
/// it keeps at most one partial line between chunks.
#[derive(Debug)]
pub struct Parser {
    limits: Limits,
    partial: Vec<u8>,
    /// Inside an overlong line: drop bytes until the next newline.
    skipping: bool,
    stats: ParseStats,
}

impl Parser {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            partial: Vec::new(),
            skipping: false,
            stats: ParseStats::default(),
        }
    }

    /// Parses the complete lines in `chunk` (plus the partial line held from before),
    /// calling `on_sample` for each sample. Returns `false` once `max_bytes` is reached:
    /// the caller should stop reading.
    pub fn feed(&mut self, chunk: &[u8], on_sample: &mut dyn FnMut(&Sample<'_>)) -> bool {
        let room = self.limits.max_bytes.saturating_sub(self.stats.bytes);
        let chunk = if chunk.len() > room {
            self.stats.truncated = true;
            chunk.get(..room).unwrap_or_default()
        } else {
            chunk
        };
        self.stats.bytes += chunk.len();
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(nl);
            rest = after.get(1..).unwrap_or_default();
            if self.skipping {
                self.skipping = false;
                continue;
            }
            if self.partial.len() + line.len() > self.limits.max_line_bytes {
                self.partial.clear();
                self.stats.lines += 1;
                self.stats.overlong += 1;
            } else if self.partial.is_empty() {
                self.line(line, on_sample);
            } else {
                let mut joined = std::mem::take(&mut self.partial);
                joined.extend_from_slice(line);
                self.line(&joined, on_sample);
                joined.clear();
                self.partial = joined;
            }
        }
        if !rest.is_empty() && !self.skipping {
            if self.partial.len() + rest.len() > self.limits.max_line_bytes {
                self.partial.clear();
                self.skipping = true;
                self.stats.lines += 1;
                self.stats.overlong += 1;
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
        !self.stats.truncated
    }

    /// Ends the input: a last line without a newline counts, unless the input was cut
    /// at `max_bytes` (then it is probably incomplete and is dropped).
    pub fn finish(mut self, on_sample: &mut dyn FnMut(&Sample<'_>)) -> ParseStats {
        if !self.partial.is_empty() && !self.stats.truncated {
            let last = std::mem::take(&mut self.partial);
            self.line(&last, on_sample);
        }
        self.stats
    }

    fn line(&mut self, line: &[u8], on_sample: &mut dyn FnMut(&Sample<'_>)) {
        self.stats.lines += 1;
        let Ok(text) = std::str::from_utf8(line) else {
            self.stats.malformed += 1;
            return;
        };
        match parse_line(text) {
            Ok(Some(sample)) => {
                self.stats.samples += 1;
                on_sample(&sample);
            }
            Ok(None) => {}
            Err(Malformed) => self.stats.malformed += 1,
        }
    }
}

/// Parses a whole body at once (tests, small inputs).
pub fn parse(body: &[u8], limits: Limits, on_sample: &mut dyn FnMut(&Sample<'_>)) -> ParseStats {
    let mut p = Parser::new(limits);
    p.feed(body, on_sample);
    p.finish(on_sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Sample<'_> {
        parse_line(line).unwrap().unwrap()
    }

    #[test]
    fn plain_and_labelled_samples() {
        let s = one("vllm:num_requests_waiting{model_name=\"m\"} 3.0");
        assert_eq!((s.name, s.value), ("vllm:num_requests_waiting", 3.0));
        assert_eq!(s.labels.get("model_name").as_deref(), Some("m"));
        assert_eq!(one("up 1").labels.get("x"), None);
        assert_eq!(one("x 1 1700000000000").value, 1.0);
        assert_eq!(one("  x{} 2  ").value, 2.0);
    }

    #[test]
    fn special_values() {
        assert_eq!(one("x +Inf").value, f64::INFINITY);
        assert_eq!(one("x -Inf").value, f64::NEG_INFINITY);
        assert!(one("x NaN").value.is_nan());
        assert_eq!(one("x 1.5e3").value, 1500.0);
    }

    #[test]
    fn label_values_with_commas_braces_quotes_and_escapes() {
        let s = one(r#"m{a="x,y}z",b="say \"hi\"\\n",c="line\nbreak",} 7"#);
        assert_eq!(s.labels.get("a").as_deref(), Some("x,y}z"));
        assert_eq!(s.labels.get("b").as_deref(), Some("say \"hi\"\\n"));
        assert_eq!(s.labels.get("c").as_deref(), Some("line\nbreak"));
        assert_eq!(s.labels.iter().count(), 3);
        assert_eq!(s.value, 7.0);
    }

    #[test]
    fn openmetrics_exemplars_and_eof() {
        assert_eq!(parse_line("# EOF"), Ok(None));
        let s = one(r#"req_total{a="b"} 5 # {trace_id="abc"} 1.0 123"#);
        assert_eq!(s.value, 5.0);
    }

    #[test]
    fn garbage_lines_are_malformed() {
        for bad in [
            "x",
            "x{",
            "x{a=\"b\"",
            "x{a=b} 1",
            "x{a=\"b\" c=\"d\"} 1",
            "x{1a=\"b\"} 1",
            "x 1 2 3",
            "x one",
            "9x 1",
            "x{a=\"b\"}1",
            "{a=\"b\"} 1",
            "<html><body>502 Bad Gateway</body></html>",
        ] {
            assert_eq!(parse_line(bad), Err(Malformed), "{bad}");
        }
    }

    fn collect(chunks: &[&[u8]], limits: Limits) -> (Vec<(String, f64)>, ParseStats) {
        let mut out = Vec::new();
        let mut p = Parser::new(limits);
        let mut f = |s: &Sample<'_>| out.push((s.name.to_string(), s.value));
        for c in chunks {
            if !p.feed(c, &mut f) {
                break;
            }
        }
        let stats = p.finish(&mut f);
        (out, stats)
    }

    #[test]
    fn every_chunk_boundary_gives_the_same_samples() {
        let body = "# HELP a x\n# TYPE a gauge\na{l=\"v,}\"} 1\nb 2\r\nbad line\nc{} 3";
        let (whole, stats) = collect(&[body.as_bytes()], Limits::default());
        assert_eq!(whole.len(), 3);
        assert_eq!((stats.samples, stats.malformed), (3, 1));
        for cut in 0..=body.len() {
            let (a, b) = body.as_bytes().split_at(cut);
            assert_eq!(collect(&[a, b], Limits::default()).0, whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = body.as_bytes().chunks(1).collect();
        assert_eq!(collect(&bytes, Limits::default()).0, whole);
    }

    #[test]
    fn overlong_lines_are_skipped_without_buffering_them() {
        let limits = Limits {
            max_bytes: 1 << 20,
            max_line_bytes: 32,
        };
        let long = format!("x{{a=\"{}\"}} 1\n", "y".repeat(100));
        let body = format!("a 1\n{long}b 2\n");
        for size in [1, 7, 40, body.len()] {
            let chunks: Vec<&[u8]> = body.as_bytes().chunks(size).collect();
            let (samples, stats) = collect(&chunks, limits);
            assert_eq!(
                samples,
                vec![("a".into(), 1.0), ("b".into(), 2.0)],
                "chunk {size}"
            );
            assert_eq!(stats.overlong, 1);
        }
    }

    #[test]
    fn byte_limit_truncates_and_drops_the_cut_line() {
        let limits = Limits {
            max_bytes: 10,
            max_line_bytes: 64,
        };
        let (samples, stats) = collect(&[b"a 1\nb 2\nccc 3\nd 4\n"], limits);
        assert_eq!(samples, vec![("a".into(), 1.0), ("b".into(), 2.0)]);
        assert!(stats.truncated);
        assert_eq!(stats.bytes, 10);
    }

    #[test]
    fn huge_input_costs_bounded_memory() {
        let line = "vllm:num_requests_waiting{model_name=\"m\",engine=\"0\"} 1\n";
        let body = line.repeat(200_000); // ~11 MB
        let limits = Limits::default();
        let mut n = 0usize;
        let mut p = Parser::new(limits);
        for chunk in body.as_bytes().chunks(64 << 10) {
            if !p.feed(chunk, &mut |_| n += 1) {
                break;
            }
            assert!(p.partial.capacity() <= limits.max_line_bytes * 2);
        }
        let stats = p.finish(&mut |_| n += 1);
        assert!(stats.truncated);
        assert_eq!(stats.bytes, limits.max_bytes);
        assert_eq!(n, limits.max_bytes / line.len());
    }

    #[test]
    fn binary_garbage_is_counted_not_fatal() {
        let mut body = vec![0xff, 0xfe, 0x00, b'\n'];
        body.extend_from_slice(b"ok 1\n");
        let (samples, stats) = collect(&[&body], Limits::default());
        assert_eq!(samples.len(), 1);
        assert_eq!(stats.malformed, 1);
    }
}
