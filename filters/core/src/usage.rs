//! Streaming scanner for OpenAI-style *responses*: finds the top-level
//! `usage.prompt_tokens` / `usage.completion_tokens` and whether `choices` is non-empty, in a
//! JSON document fed in chunks of any size. It keeps no copy of the document (fixed-size
//! state, no heap), so the metrics filter reads response bodies as they stream through.
//! (Requests' `model` is read by [`crate::json_scan::ModelScanner`].)

/// Token counts from an OpenAI-style `usage` block.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

const MAX_KEY_LEN: usize = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TopKey {
    Other,
    Usage,
    Choices,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UsageKey {
    Other,
    Prompt,
    Completion,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StrRole {
    Ignore,
    Key,
}

/// Incremental scanner state. `feed` any number of chunks; read the results at any time.
#[derive(Clone, Debug)]
pub struct UsageScanner {
    depth: u32,
    /// Container kind at depth 1 and 2 (`true`: object); deeper levels never matter.
    obj1: bool,
    obj2: bool,
    expect_key: bool,
    in_string: bool,
    escape: bool,
    role: StrRole,
    key: [u8; MAX_KEY_LEN],
    key_len: usize,
    key_overflow: bool,
    top_key: TopKey,
    usage_key: UsageKey,
    /// Number being read for `usage_key` (a value position at depth 2 under `usage`).
    number: Option<u64>,
    prompt: Option<u64>,
    completion: Option<u64>,
    choices_nonempty: bool,
    broken: bool,
}

impl Default for UsageScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl UsageScanner {
    pub const fn new() -> Self {
        Self {
            depth: 0,
            obj1: false,
            obj2: false,
            expect_key: false,
            in_string: false,
            escape: false,
            role: StrRole::Ignore,
            key: [0; MAX_KEY_LEN],
            key_len: 0,
            key_overflow: false,
            top_key: TopKey::Other,
            usage_key: UsageKey::Other,
            number: None,
            prompt: None,
            completion: None,
            choices_nonempty: false,
            broken: false,
        }
    }

    /// Forgets everything, for the next document (no allocation).
    pub fn reset(&mut self) {
        *self = Self::new();
    }

    /// The `usage` token counts, when the block carried at least one of them.
    pub fn usage(&self) -> Option<Usage> {
        if self.prompt.is_none() && self.completion.is_none() {
            return None;
        }
        Some(Usage {
            prompt_tokens: self.prompt.unwrap_or(0),
            completion_tokens: self.completion.unwrap_or(0),
        })
    }

    /// True when the top-level `choices` array has at least one element.
    pub fn choices_nonempty(&self) -> bool {
        self.choices_nonempty
    }

    /// True when the input was not JSON the scanner can follow (it stops looking).
    pub fn broken(&self) -> bool {
        self.broken
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if self.broken {
                return;
            }
            if self.in_string {
                self.string_byte(b);
            } else {
                self.structural_byte(b);
            }
        }
    }

    fn string_byte(&mut self, b: u8) {
        if self.escape {
            self.escape = false;
            match self.role {
                StrRole::Key => self.key_overflow = true,
                StrRole::Ignore => {}
            }
            return;
        }
        match b {
            b'\\' => self.escape = true,
            b'"' => self.end_string(),
            _ => match self.role {
                StrRole::Key => {
                    match self.key.get_mut(self.key_len) {
                        Some(slot) => *slot = b,
                        None => self.key_overflow = true,
                    }
                    self.key_len = self.key_len.saturating_add(1);
                }
                StrRole::Ignore => {}
            },
        }
    }

    fn end_string(&mut self) {
        self.in_string = false;
        match self.role {
            StrRole::Key => {
                let key = if self.key_overflow {
                    &[][..]
                } else {
                    self.key.get(..self.key_len).unwrap_or(&[])
                };
                if self.depth == 1 {
                    self.top_key = match key {
                        b"usage" => TopKey::Usage,
                        b"choices" => TopKey::Choices,
                        _ => TopKey::Other,
                    };
                } else {
                    self.usage_key = match key {
                        b"prompt_tokens" => UsageKey::Prompt,
                        b"completion_tokens" => UsageKey::Completion,
                        _ => UsageKey::Other,
                    };
                }
                self.expect_key = false;
            }
            StrRole::Ignore => {}
        }
        self.role = StrRole::Ignore;
    }

    /// A value starts at the current position (not a key): note what it means for us.
    fn value_start(&mut self, b: u8) {
        if self.depth == 2 && !self.obj2 && self.top_key == TopKey::Choices {
            self.choices_nonempty = true;
        }
        if self.depth == 2
            && self.obj2
            && self.top_key == TopKey::Usage
            && b.is_ascii_digit()
            && matches!(self.usage_key, UsageKey::Prompt | UsageKey::Completion)
        {
            self.number = Some(u64::from(b - b'0'));
        }
    }

    fn commit_number(&mut self) {
        if let Some(n) = self.number.take() {
            match self.usage_key {
                UsageKey::Prompt => self.prompt = Some(n),
                UsageKey::Completion => self.completion = Some(n),
                UsageKey::Other => {}
            }
            self.usage_key = UsageKey::Other;
        }
    }

    fn structural_byte(&mut self, b: u8) {
        if let Some(n) = self.number {
            if b.is_ascii_digit() {
                self.number = Some(n.saturating_mul(10).saturating_add(u64::from(b - b'0')));
                return;
            }
            self.commit_number();
        }
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'{' | b'[' => {
                self.value_start(b);
                self.depth = self.depth.saturating_add(1);
                let is_obj = b == b'{';
                match self.depth {
                    1 => {
                        self.obj1 = is_obj;
                        self.top_key = TopKey::Other;
                    }
                    2 => {
                        self.obj2 = is_obj;
                        self.usage_key = UsageKey::Other;
                    }
                    _ => {}
                }
                self.expect_key = is_obj;
            }
            b'}' | b']' => {
                if self.depth == 0 {
                    self.broken = true;
                    return;
                }
                self.depth -= 1;
                self.expect_key = false;
            }
            b',' => {
                self.expect_key = match self.depth {
                    1 => self.obj1,
                    2 => self.obj2,
                    _ => false,
                };
            }
            b':' => self.expect_key = false,
            b'"' => {
                self.in_string = true;
                self.role = self.string_role();
                if self.role != StrRole::Key {
                    self.value_start(b);
                }
                match self.role {
                    StrRole::Key => {
                        self.key_len = 0;
                        self.key_overflow = false;
                    }
                    StrRole::Ignore => {}
                }
            }
            _ => {
                if self.depth == 0 {
                    // Scalars at top level (e.g. `[DONE]`'s letters are inside an array).
                    self.broken = true;
                    return;
                }
                self.value_start(b);
            }
        }
    }

    fn string_role(&self) -> StrRole {
        let in_key_position = match self.depth {
            1 => self.obj1 && self.expect_key,
            2 => self.obj2 && self.expect_key && self.top_key == TopKey::Usage,
            _ => false,
        };
        if in_key_position {
            StrRole::Key
        } else {
            StrRole::Ignore
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_split(doc: &[u8], at: &[usize]) -> UsageScanner {
        let mut s = UsageScanner::new();
        let mut last = 0;
        for &i in at {
            s.feed(&doc[last..i]);
            last = i;
        }
        s.feed(&doc[last..]);
        s
    }

    /// Every split into two and into single bytes gives the same answer as one feed.
    fn all_boundaries(doc: &[u8], check: impl Fn(&UsageScanner)) {
        check(&scan_split(doc, &[]));
        for i in 0..=doc.len() {
            check(&scan_split(doc, &[i]));
        }
        let singles: Vec<usize> = (1..doc.len()).collect();
        check(&scan_split(doc, &singles));
    }

    #[test]
    fn chat_completion_response_usage() {
        let doc = br#"{"id":"c1","object":"chat.completion","model":"llama-3.1-8b",
            "choices":[{"index":0,"message":{"role":"assistant","content":"hi \"usage\": {\"prompt_tokens\": 99}"}}],
            "usage":{"prompt_tokens":12,"total_tokens":19,"completion_tokens":7}}"#;
        all_boundaries(doc, |s| {
            assert_eq!(
                s.usage(),
                Some(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 7
                })
            );
            assert!(s.choices_nonempty());
            assert!(!s.broken());
        });
    }

    #[test]
    fn usage_only_at_top_level_and_nested_keys_ignored() {
        let doc = br#"{"choices":[],"x":{"usage":{"prompt_tokens":5}},"usage":{"prompt_tokens_details":{"cached_tokens":3},"prompt_tokens":8,"completion_tokens":0}}"#;
        all_boundaries(doc, |s| {
            assert_eq!(
                s.usage(),
                Some(Usage {
                    prompt_tokens: 8,
                    completion_tokens: 0
                })
            );
            assert!(!s.choices_nonempty());
        });
    }

    #[test]
    fn null_usage_and_missing_usage() {
        assert_eq!(
            scan_split(br#"{"usage":null,"choices":[{}]}"#, &[]).usage(),
            None
        );
        assert_eq!(scan_split(br#"{"a":1}"#, &[]).usage(), None);
    }

    #[test]
    fn garbage_is_survived() {
        for doc in [&b"}}}"[..], b"not json", b"\xff\xfe{", b"[DONE]", b""] {
            let s = scan_split(doc, &[]);
            assert_eq!(s.usage(), None);
        }
        let mut s = UsageScanner::new();
        s.feed(b"}");
        assert!(s.broken());
        s.reset();
        s.feed(br#"{"usage":{"completion_tokens":1}}"#);
        assert_eq!(
            s.usage(),
            Some(Usage {
                prompt_tokens: 0,
                completion_tokens: 1
            })
        );
    }

    #[test]
    fn huge_numbers_saturate() {
        let s = scan_split(
            br#"{"usage":{"prompt_tokens":99999999999999999999999999}}"#,
            &[],
        );
        assert_eq!(s.usage().map(|u| u.prompt_tokens), Some(u64::MAX));
    }
}
