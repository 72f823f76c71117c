//! Incremental Server-Sent Events parser for OpenAI-style streams: splits `data:` events
//! across chunk boundaries (LF, CRLF or CR line ends) and runs each event's data through a
//! [`UsageScanner`], so the metrics filter sees token events and the final `usage` chunk
//! without buffering the stream. State is fixed-size; nothing is allocated per chunk.

use crate::usage::{Usage, UsageScanner};

/// What one call to [`SseParser::feed`] completed.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SseProgress {
    /// Completed events whose data is JSON with a non-empty `choices` array (token events).
    pub token_events: u32,
    /// The last `usage` block seen in a completed event (servers send it in the final chunk).
    pub usage: Option<Usage>,
    /// A `data: [DONE]` event completed.
    pub done: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    /// Nothing read on this line yet.
    Start,
    /// Reading the field name.
    Field,
    /// Reading the value of a `data` field.
    Data,
    /// Reading a value we ignore, or a comment.
    Skip,
}

const DONE: &[u8] = b"[DONE]";

#[derive(Clone, Debug)]
pub struct SseParser {
    line: Line,
    field: [u8; 5],
    field_len: usize,
    /// The optional single space after `data:` is not part of the value.
    skip_space: bool,
    /// A CR ended the previous line; an LF right after it belongs to the same line end.
    after_cr: bool,
    event_has_data: bool,
    /// Data lines in this event so far (a second one is joined with a newline).
    data_lines: u32,
    /// The first bytes of the event's data, to recognise `[DONE]`.
    head: [u8; 7],
    head_len: usize,
    json: UsageScanner,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    pub const fn new() -> Self {
        Self {
            line: Line::Start,
            field: [0; 5],
            field_len: 0,
            skip_space: false,
            after_cr: false,
            event_has_data: false,
            data_lines: 0,
            head: [0; 7],
            head_len: 0,
            json: UsageScanner::new(),
        }
    }

    /// Parses `chunk`, reporting the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> SseProgress {
        let mut progress = SseProgress::default();
        let mut rest = chunk;
        while let Some((&b, tail)) = rest.split_first() {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    rest = tail;
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    self.end_line(&mut progress);
                    rest = tail;
                }
                _ if self.line == Line::Data => {
                    // Pass the run of value bytes up to the next line end in one call.
                    let n = rest
                        .iter()
                        .position(|&c| c == b'\n' || c == b'\r')
                        .unwrap_or(rest.len());
                    let (value, after) = rest.split_at(n);
                    self.data_bytes(value);
                    rest = after;
                }
                _ => {
                    self.other_byte(b);
                    rest = tail;
                }
            }
        }
        progress
    }

    /// Ends the stream: an event without its closing blank line still counts (lenient).
    pub fn finish(&mut self) -> SseProgress {
        let mut progress = SseProgress::default();
        if self.line != Line::Start {
            self.end_line(&mut progress);
        }
        self.dispatch(&mut progress);
        progress
    }

    fn other_byte(&mut self, b: u8) {
        match self.line {
            Line::Start if b == b':' => self.line = Line::Skip,
            Line::Start | Line::Field => {
                self.line = Line::Field;
                if b == b':' {
                    self.start_value();
                } else {
                    match self.field.get_mut(self.field_len) {
                        Some(slot) => *slot = b,
                        None => self.line = Line::Skip,
                    }
                    self.field_len += 1;
                }
            }
            Line::Data | Line::Skip => {}
        }
    }

    fn start_value(&mut self) {
        if self.field.get(..self.field_len) == Some(&b"data"[..]) {
            self.line = Line::Data;
            self.skip_space = true;
            if self.data_lines > 0 {
                self.json.feed(b"\n");
                self.push_head(b"\n");
            }
            self.data_lines += 1;
            self.event_has_data = true;
        } else {
            self.line = Line::Skip;
        }
    }

    fn data_bytes(&mut self, mut value: &[u8]) {
        if self.skip_space {
            self.skip_space = false;
            if let Some(rest) = value.strip_prefix(b" ") {
                value = rest;
            }
        }
        self.push_head(value);
        self.json.feed(value);
    }

    fn push_head(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match self.head.get_mut(self.head_len) {
                Some(slot) => {
                    *slot = b;
                    self.head_len += 1;
                }
                None => return,
            }
        }
    }

    fn end_line(&mut self, progress: &mut SseProgress) {
        match self.line {
            Line::Start => self.dispatch(progress),
            // A line with a field name and no colon: a field with an empty value.
            Line::Field => {
                self.start_value();
            }
            Line::Data | Line::Skip => {}
        }
        self.line = Line::Start;
        self.field_len = 0;
        self.skip_space = false;
    }

    fn dispatch(&mut self, progress: &mut SseProgress) {
        if self.event_has_data {
            if self.head.get(..self.head_len) == Some(DONE) {
                progress.done = true;
            } else {
                if self.json.choices_nonempty() {
                    progress.token_events += 1;
                }
                if let Some(u) = self.json.usage() {
                    progress.usage = Some(u);
                }
            }
        }
        self.event_has_data = false;
        self.data_lines = 0;
        self.head_len = 0;
        self.json.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(content: &str) -> String {
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{content}\"}},\"finish_reason\":null}}]}}\n\n"
        )
    }

    /// A vLLM-shaped stream: role chunk, 3 tokens, finish, usage chunk, [DONE].
    fn stream(line_end: &str) -> String {
        let mut s = String::new();
        s.push_str(&chunk(""));
        for t in ["Hel", "lo", "\\n\\n:data: x"] {
            s.push_str(&chunk(t));
        }
        s.push_str(": keep-alive comment\n\n");
        s.push_str("event: message\nid: 7\nretry: 100\n");
        s.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":3,\"total_tokens\":14}}\n\n");
        s.push_str("data: [DONE]\n\n");
        s.replace('\n', line_end)
    }

    fn run(input: &[u8], cuts: &[usize]) -> SseProgress {
        let mut p = SseParser::new();
        let mut total = SseProgress::default();
        let mut last = 0;
        let add = |r: SseProgress, total: &mut SseProgress| {
            total.token_events += r.token_events;
            total.usage = r.usage.or(total.usage);
            total.done |= r.done;
        };
        for &c in cuts {
            add(p.feed(&input[last..c]), &mut total);
            last = c;
        }
        add(p.feed(&input[last..]), &mut total);
        add(p.finish(), &mut total);
        total
    }

    fn expected() -> SseProgress {
        SseProgress {
            token_events: 4,
            usage: Some(Usage {
                prompt_tokens: 11,
                completion_tokens: 3,
            }),
            done: true,
        }
    }

    #[test]
    fn every_chunk_boundary_every_line_ending() {
        for eol in ["\n", "\r\n", "\r"] {
            let s = stream(eol);
            let b = s.as_bytes();
            assert_eq!(run(b, &[]), expected(), "eol {eol:?}");
            for i in 0..=b.len() {
                assert_eq!(run(b, &[i]), expected(), "eol {eol:?} cut {i}");
            }
            for i in (0..b.len()).step_by(7) {
                for j in (i..b.len()).step_by(13) {
                    assert_eq!(run(b, &[i, j]), expected(), "eol {eol:?} cuts {i},{j}");
                }
            }
            let singles: Vec<usize> = (1..b.len()).collect();
            assert_eq!(run(b, &singles), expected(), "eol {eol:?} byte by byte");
        }
    }

    #[test]
    fn progress_is_reported_when_events_complete() {
        let mut p = SseParser::new();
        let c = chunk("a");
        let (first, second) = c.split_at(c.len() - 1);
        assert_eq!(p.feed(first.as_bytes()).token_events, 0);
        assert_eq!(p.feed(second.as_bytes()).token_events, 1);
        let r = p.feed(b"data: [DONE]\n\n");
        assert!(r.done);
        assert_eq!(r.token_events, 0);
    }

    #[test]
    fn multi_line_data_is_one_json_document() {
        let r = run(
            b"data: {\"usage\":\ndata: {\"prompt_tokens\":2,\ndata:\"completion_tokens\":5}}\n\n",
            &[],
        );
        assert_eq!(
            r.usage,
            Some(Usage {
                prompt_tokens: 2,
                completion_tokens: 5
            })
        );
    }

    #[test]
    fn no_space_after_colon_and_missing_final_blank_line() {
        let r = run(b"data:{\"choices\":[{}]}\n\ndata:[DONE]", &[]);
        assert_eq!(r.token_events, 1);
        assert!(r.done);
    }

    #[test]
    fn garbage_and_oversized_fields_are_harmless() {
        let mut input = b"dataaaaaaaaa: {\"choices\":[{}]}\n\n".to_vec();
        input.extend_from_slice(b"\xff\xfe\x00garbage\n\n{{{{\n\ndata: }}}}]]\n\n");
        input.extend_from_slice(&vec![b'x'; 100_000]);
        let r = run(&input, &[3, 50, 1000]);
        assert_eq!(r.token_events, 0);
        assert_eq!(r.usage, None);
        assert!(!r.done);
    }

    #[test]
    fn continuous_usage_reports_the_last_block() {
        let s = "data: {\"choices\":[{}],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1}}\n\n\
                 data: {\"choices\":[{}],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}\n\n";
        let r = run(s.as_bytes(), &[]);
        assert_eq!(r.token_events, 2);
        assert_eq!(
            r.usage,
            Some(Usage {
                prompt_tokens: 4,
                completion_tokens: 2
            })
        );
    }
}
