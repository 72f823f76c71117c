//! Streaming scanner for the top-level `"model"` of an OpenAI-style JSON request body.
//!
//! Fed the body chunk by chunk (any split, down to single bytes), it validates the JSON
//! syntax as it goes, decodes the top-level `model` string (escapes, `\u` surrogate pairs,
//! `\u` escapes in keys) into a fixed buffer and remembers the byte span of the string
//! token so the router can rewrite it in place. Nested `"model"` keys do not count. It
//! allocates nothing: nesting is a bitset, the model name a fixed array.
//!
//! With [`ModelScanner::with_prefix_hash`] it also feeds the prompt text (the strings that
//! [`crate::affinity`] defines) to a [`PrefixHasher`], so the prefix-affinity hash comes
//! from the same single pass and needs no copy of the body.

use std::fmt;

use crate::affinity::PrefixHasher;

/// Deepest nesting accepted (objects and arrays); deeper bodies are rejected.
pub const MAX_DEPTH: usize = 256;
/// Longest decoded `model` value accepted, in bytes.
pub const MAX_MODEL_LEN: usize = 256;

/// Longest key compared with the keys below; longer keys match none.
const KEY_CAP: usize = 12;
/// Top-level keys whose values hold prompt text.
const PROMPT_KEYS: [&[u8]; 4] = [b"messages", b"input", b"prompt", b"instructions"];
/// Keys (inside a prompt value) whose string values are prompt text.
const TEXT_KEYS: [&[u8]; 2] = [b"content", b"text"];

/// Why a body is not an acceptable OpenAI-style JSON request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanError {
    /// Not JSON: unexpected byte at `offset`.
    Malformed { offset: usize },
    /// The body ended inside the document (or was empty).
    Truncated,
    /// The top-level value is not an object.
    NotAnObject,
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The top-level `model` is a number, object, array, boolean or null.
    ModelNotString,
    /// The top-level `model` is longer than [`MAX_MODEL_LEN`] bytes.
    ModelTooLong,
    /// Two top-level `model` keys (servers would read the last one, routing the first).
    DuplicateModel,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanError::Malformed { offset } => {
                write!(
                    f,
                    "The request body is not valid JSON (unexpected byte at offset {offset})."
                )
            }
            ScanError::Truncated => {
                f.write_str("The request body is not valid JSON (it ends early).")
            }
            ScanError::NotAnObject => f.write_str("The request body must be a JSON object."),
            ScanError::TooDeep => {
                write!(f, "The request body nests deeper than {MAX_DEPTH} levels.")
            }
            ScanError::ModelNotString => f.write_str("`model` must be a string."),
            ScanError::ModelTooLong => write!(f, "`model` is longer than {MAX_MODEL_LEN} bytes."),
            ScanError::DuplicateModel => f.write_str("The request body has more than one `model`."),
        }
    }
}

/// What the scanner expects next between tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value (the document, after `:` or after `,` in an array).
    Value,
    /// A value or `]` right after `[`.
    ValueOrClose,
    /// A key or `}` right after `{`.
    KeyOrClose,
    /// A key after `,` in an object.
    Key,
    Colon,
    CommaOrClose,
    /// After the document: only whitespace.
    Done,
}

/// Where the characters of the string being read go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sink {
    /// Validated and dropped.
    Skip,
    /// A key of the top-level object or inside a prompt value, decoded into `key_buf`.
    Key,
    /// The top-level `model` value, decoded into `model_buf`.
    Model,
    /// Prompt text, decoded into the prefix hasher.
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    Backslash,
    /// Inside `\uXXXX`: digits read so far and their value.
    Hex {
        digits: u8,
        value: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpInt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    None,
    Str {
        sink: Sink,
        esc: Esc,
    },
    Num(Num),
    /// `true`, `false` or `null`: the word and how many bytes matched.
    Lit {
        word: &'static [u8],
        pos: usize,
    },
}

/// Incremental scanner; one per request.
#[derive(Clone)]
pub struct ModelScanner {
    /// Bytes consumed so far (absolute offset of the next byte).
    pos: usize,
    expect: Expect,
    token: Token,
    depth: usize,
    /// Bit `d` set: the container at depth `d + 1` is an object.
    objects: [u64; MAX_DEPTH / 64],
    /// The key being read (its first [`KEY_CAP`] bytes) and its full length.
    key_buf: [u8; KEY_CAP],
    key_len: usize,
    /// The key just read is the top-level `model`, so the next value is the model.
    value_is_model: bool,
    /// The key just read is a top-level prompt key / a text key inside a prompt value.
    value_is_prompt: bool,
    value_is_text: bool,
    /// Depth of the contents of the top-level prompt value being read (0: not in one).
    prompt_depth: usize,
    hasher: PrefixHasher,
    /// High surrogate waiting for its low half inside the model or a text string.
    high_surrogate: Option<u32>,
    model_buf: [u8; MAX_MODEL_LEN],
    model_len: usize,
    /// Byte span of the model string token, quotes included.
    model_span: Option<(usize, usize)>,
    model_start: usize,
    /// Offset of the top-level `{`, and how many top-level keys were read.
    object_start: Option<usize>,
    top_keys: usize,
    error: Option<ScanError>,
}

impl Default for ModelScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ModelScanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelScanner")
            .field("pos", &self.pos)
            .field("expect", &self.expect)
            .field("model", &self.model())
            .field("error", &self.error)
            .finish()
    }
}

impl ModelScanner {
    pub const fn new() -> Self {
        Self::with_prefix_hash(0)
    }

    /// A scanner that also hashes the first `chars` characters of the prompt (0: off).
    pub const fn with_prefix_hash(chars: usize) -> Self {
        Self {
            pos: 0,
            expect: Expect::Value,
            token: Token::None,
            depth: 0,
            objects: [0; MAX_DEPTH / 64],
            key_buf: [0; KEY_CAP],
            key_len: 0,
            value_is_model: false,
            value_is_prompt: false,
            value_is_text: false,
            prompt_depth: 0,
            hasher: PrefixHasher::new(chars),
            high_surrogate: None,
            model_buf: [0; MAX_MODEL_LEN],
            model_len: 0,
            model_span: None,
            model_start: 0,
            object_start: None,
            top_keys: 0,
            error: None,
        }
    }

    /// Bytes consumed so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }

    /// The decoded top-level `model`, once its string has ended.
    pub fn model(&self) -> Option<&str> {
        self.model_span?;
        std::str::from_utf8(self.model_buf.get(..self.model_len)?).ok()
    }

    /// Byte span `[start, end)` of the model string token in the body, quotes included.
    pub fn model_span(&self) -> Option<(usize, usize)> {
        self.model_span
    }

    /// Offset of the top-level `{` (where a missing `model` can be inserted).
    pub fn object_start(&self) -> Option<usize> {
        self.object_start
    }

    /// Number of top-level keys read so far.
    pub fn top_level_keys(&self) -> usize {
        self.top_keys
    }

    /// True while the prefix hash is configured and more prompt text could change it.
    pub fn prefix_pending(&self) -> bool {
        self.hasher.wants_more()
    }

    /// The prefix-affinity hash of the prompt text read so far (`None`: no text).
    pub fn prefix_hash(&self) -> Option<u64> {
        self.hasher.finish()
    }

    /// True once the whole document has been read and is valid.
    pub fn is_complete(&self) -> bool {
        self.error.is_none() && self.expect == Expect::Done && self.token == Token::None
    }

    /// Scans `chunk`, the next bytes of the body. Returns how many bytes were consumed:
    /// all of them, or fewer when the model string ended or the prefix hash became final
    /// inside `chunk` — scanning stops right there so the caller can decide whether to read
    /// on (feed the rest then).
    pub fn feed(&mut self, chunk: &[u8]) -> Result<usize, ScanError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let had_model = self.model_span.is_some();
        let hashing = self.hasher.wants_more();
        let mut i = 0;
        while let Some(&b) = chunk.get(i) {
            // Fast path: plain bytes inside a string we do not keep (prompts are most of
            // the body) need no state change, only the check for control characters. Prompt
            // text goes to the hasher in the same pass, up to and including the first byte it
            // refuses (as the byte-wise path would); the rest of the string is then skipped.
            if let Token::Str {
                sink: sink @ (Sink::Skip | Sink::Text),
                esc: Esc::None,
            } = self.token
            {
                let rest = chunk.get(i..).unwrap_or_default();
                let plain = |c: u8| c != b'"' && c != b'\\' && c >= 0x20;
                let run = match sink {
                    Sink::Text if self.high_surrogate.is_none() => {
                        let mut n = 0;
                        while let Some(&c) = rest.get(n).filter(|&&c| plain(c)) {
                            n += 1;
                            if !self.hasher.byte(c) {
                                self.text_done();
                                break;
                            }
                        }
                        n
                    }
                    Sink::Text => 0,
                    _ => rest.iter().position(|&c| !plain(c)).unwrap_or(rest.len()),
                };
                if run > 0 {
                    i += run;
                    self.pos += run;
                    if hashing && !self.hasher.wants_more() {
                        break;
                    }
                    continue;
                }
            }
            match self.step(b) {
                Ok(true) => {
                    i += 1;
                    self.pos += 1;
                }
                // The byte ended a number; reprocess it as structure.
                Ok(false) => {}
                Err(e) => {
                    self.error = Some(e);
                    return Err(e);
                }
            }
            if (!had_model && self.model_span.is_some()) || (hashing && !self.hasher.wants_more()) {
                break;
            }
        }
        Ok(i)
    }

    /// Feeds all of `chunk`, reading on past the points where [`Self::feed`] stops (the
    /// model string, the final prefix hash): for a caller that wants every answer of the
    /// body, not the earliest. Returns the bytes consumed — all of `chunk`, unless the
    /// scanner stopped making progress (a scanner bug, reported rather than looped on).
    pub fn feed_all(&mut self, chunk: &[u8]) -> Result<usize, ScanError> {
        let mut done = 0;
        while let Some(rest @ [_, ..]) = chunk.get(done..) {
            match self.feed(rest)? {
                0 => break,
                n => done += n,
            }
        }
        Ok(done)
    }

    /// Declares the end of the body: the document must be complete.
    pub fn finish(&mut self) -> Result<(), ScanError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.is_complete() {
            return Ok(());
        }
        self.error = Some(ScanError::Truncated);
        Err(ScanError::Truncated)
    }

    /// One byte. `Ok(false)`: not consumed (it ended a number), feed it again.
    fn step(&mut self, b: u8) -> Result<bool, ScanError> {
        match self.token {
            Token::None => self.structural(b).map(|()| true),
            Token::Str { sink, esc } => self.string_byte(sink, esc, b).map(|()| true),
            Token::Num(state) => self.number_byte(state, b),
            Token::Lit { word, pos } => {
                if word.get(pos) != Some(&b) {
                    return Err(self.malformed());
                }
                if pos + 1 == word.len() {
                    self.token = Token::None;
                    self.value_done();
                } else {
                    self.token = Token::Lit { word, pos: pos + 1 };
                }
                Ok(true)
            }
        }
    }

    fn malformed(&self) -> ScanError {
        ScanError::Malformed { offset: self.pos }
    }

    fn structural(&mut self, b: u8) -> Result<(), ScanError> {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            return Ok(());
        }
        match self.expect {
            Expect::Value => self.begin_value(b),
            Expect::ValueOrClose if b == b']' => self.close(),
            Expect::ValueOrClose => self.begin_value(b),
            Expect::KeyOrClose if b == b'}' => self.close(),
            Expect::KeyOrClose | Expect::Key if b == b'"' => {
                let sink = if self.depth == 1 || (self.prompt_depth > 0 && self.hasher.wants_more())
                {
                    self.key_len = 0;
                    Sink::Key
                } else {
                    Sink::Skip
                };
                self.token = Token::Str {
                    sink,
                    esc: Esc::None,
                };
                Ok(())
            }
            Expect::Colon if b == b':' => {
                self.expect = Expect::Value;
                Ok(())
            }
            Expect::CommaOrClose if b == b',' => {
                self.expect = if self.in_object() {
                    Expect::Key
                } else {
                    Expect::Value
                };
                Ok(())
            }
            Expect::CommaOrClose if b == b'}' && self.in_object() => self.close(),
            Expect::CommaOrClose if b == b']' && !self.in_object() => self.close(),
            _ => Err(self.malformed()),
        }
    }

    fn begin_value(&mut self, b: u8) -> Result<(), ScanError> {
        if self.depth == 0 && b != b'{' {
            return Err(if is_value_start(b) {
                ScanError::NotAnObject
            } else {
                self.malformed()
            });
        }
        let is_model = std::mem::replace(&mut self.value_is_model, false);
        let is_prompt = std::mem::replace(&mut self.value_is_prompt, false);
        // Text: a prompt key's string, a text key's string, or a string item of a prompt list.
        let is_text = std::mem::replace(&mut self.value_is_text, false)
            || is_prompt
            || (self.prompt_depth > 0 && self.depth == self.prompt_depth && !self.in_object());
        if is_model && b != b'"' {
            return Err(if is_value_start(b) {
                ScanError::ModelNotString
            } else {
                self.malformed()
            });
        }
        match b {
            b'{' | b'[' => {
                self.open(b == b'{')?;
                if is_prompt {
                    self.prompt_depth = self.depth;
                }
                Ok(())
            }
            b'"' => {
                let sink = if is_model {
                    self.model_start = self.pos;
                    self.model_len = 0;
                    Sink::Model
                } else if is_text && self.hasher.wants_more() {
                    self.hasher.separator();
                    Sink::Text
                } else {
                    Sink::Skip
                };
                self.token = Token::Str {
                    sink,
                    esc: Esc::None,
                };
                Ok(())
            }
            b'-' => {
                self.token = Token::Num(Num::Minus);
                Ok(())
            }
            b'0' => {
                self.token = Token::Num(Num::Zero);
                Ok(())
            }
            b'1'..=b'9' => {
                self.token = Token::Num(Num::Int);
                Ok(())
            }
            b't' | b'f' | b'n' => {
                let word: &'static [u8] = match b {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                self.token = Token::Lit { word, pos: 1 };
                Ok(())
            }
            _ => Err(self.malformed()),
        }
    }

    fn in_object(&self) -> bool {
        let d = self.depth.wrapping_sub(1);
        self.objects
            .get(d / 64)
            .is_some_and(|w| w & (1u64 << (d % 64)) != 0)
    }

    fn open(&mut self, object: bool) -> Result<(), ScanError> {
        let d = self.depth;
        if d == 0 {
            self.object_start = Some(self.pos);
        }
        let Some(word) = self.objects.get_mut(d / 64) else {
            return Err(ScanError::TooDeep);
        };
        if object {
            *word |= 1u64 << (d % 64);
        } else {
            *word &= !(1u64 << (d % 64));
        }
        self.depth += 1;
        self.expect = if object {
            Expect::KeyOrClose
        } else {
            Expect::ValueOrClose
        };
        Ok(())
    }

    fn close(&mut self) -> Result<(), ScanError> {
        self.depth = self.depth.saturating_sub(1);
        if self.depth < self.prompt_depth {
            self.prompt_depth = 0;
        }
        self.value_done();
        Ok(())
    }

    fn value_done(&mut self) {
        self.expect = if self.depth == 0 {
            Expect::Done
        } else {
            Expect::CommaOrClose
        };
    }

    fn string_byte(&mut self, sink: Sink, esc: Esc, b: u8) -> Result<(), ScanError> {
        match esc {
            Esc::None => match b {
                b'"' => self.end_string(sink),
                b'\\' => {
                    self.token = Token::Str {
                        sink,
                        esc: Esc::Backslash,
                    };
                    Ok(())
                }
                0x00..=0x1f => Err(self.malformed()),
                _ => self.push_raw(sink, b),
            },
            Esc::Backslash => {
                let decoded = match b {
                    b'"' => b'"',
                    b'\\' => b'\\',
                    b'/' => b'/',
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'u' => {
                        self.token = Token::Str {
                            sink,
                            esc: Esc::Hex {
                                digits: 0,
                                value: 0,
                            },
                        };
                        return Ok(());
                    }
                    _ => return Err(self.malformed()),
                };
                self.token = Token::Str {
                    sink,
                    esc: Esc::None,
                };
                self.push_raw(sink, decoded)
            }
            Esc::Hex { digits, value } => {
                let Some(d) = (b as char).to_digit(16) else {
                    return Err(self.malformed());
                };
                let value = value * 16 + d;
                if digits < 3 {
                    self.token = Token::Str {
                        sink,
                        esc: Esc::Hex {
                            digits: digits + 1,
                            value,
                        },
                    };
                    return Ok(());
                }
                self.token = Token::Str {
                    sink,
                    esc: Esc::None,
                };
                self.push_code_point(sink, value)
            }
        }
    }

    /// A byte of the string as it is (a raw byte or a one-byte escape).
    fn push_raw(&mut self, sink: Sink, b: u8) -> Result<(), ScanError> {
        match sink {
            Sink::Skip => Ok(()),
            Sink::Key => {
                if let Some(slot) = self.key_buf.get_mut(self.key_len) {
                    *slot = b;
                }
                self.key_len = self.key_len.saturating_add(1);
                Ok(())
            }
            Sink::Model => {
                if self.high_surrogate.is_some() {
                    return Err(self.malformed());
                }
                self.push_model_bytes(&[b])
            }
            Sink::Text => {
                if self.high_surrogate.take().is_some() {
                    self.push_text(REPLACEMENT);
                }
                self.push_text(&[b]);
                Ok(())
            }
        }
    }

    /// Prompt text to the hasher; once it is final the rest of the string is skipped.
    /// Returns how many bytes the hasher took.
    fn push_text(&mut self, bytes: &[u8]) -> usize {
        for (n, &b) in bytes.iter().enumerate() {
            if !self.hasher.byte(b) {
                self.text_done();
                return n;
            }
        }
        bytes.len()
    }

    /// The hash is final: the rest of the string is skipped.
    fn text_done(&mut self) {
        if let Token::Str { esc, .. } = self.token {
            self.token = Token::Str {
                sink: Sink::Skip,
                esc,
            };
        }
        self.high_surrogate = None;
    }

    fn push_code_point(&mut self, sink: Sink, cp: u32) -> Result<(), ScanError> {
        match sink {
            Sink::Skip => Ok(()),
            Sink::Key => match u8::try_from(cp) {
                Ok(b) if b.is_ascii() => self.push_raw(sink, b),
                _ => {
                    self.key_len = KEY_CAP + 1;
                    Ok(())
                }
            },
            Sink::Text => {
                // Lone surrogates become U+FFFD (servers accept them; they are only hashed).
                let cp = match (self.high_surrogate.take(), cp) {
                    (Some(high), 0xDC00..=0xDFFF) => {
                        0x10000 + ((high - 0xD800) << 10) + (cp - 0xDC00)
                    }
                    (Some(_), 0xD800..=0xDBFF) => {
                        self.push_text(REPLACEMENT);
                        self.high_surrogate = Some(cp);
                        return Ok(());
                    }
                    (Some(_), _) => {
                        self.push_text(REPLACEMENT);
                        cp
                    }
                    (None, 0xD800..=0xDBFF) => {
                        self.high_surrogate = Some(cp);
                        return Ok(());
                    }
                    (None, _) => cp,
                };
                let c = char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER);
                let mut utf8 = [0u8; 4];
                let bytes = c.encode_utf8(&mut utf8).as_bytes();
                self.push_text(bytes);
                Ok(())
            }
            Sink::Model => {
                let cp = match (self.high_surrogate.take(), cp) {
                    (Some(high), 0xDC00..=0xDFFF) => {
                        0x10000 + ((high - 0xD800) << 10) + (cp - 0xDC00)
                    }
                    (Some(_), _) => return Err(self.malformed()),
                    (None, 0xD800..=0xDBFF) => {
                        self.high_surrogate = Some(cp);
                        return Ok(());
                    }
                    (None, _) => cp,
                };
                let Some(c) = char::from_u32(cp) else {
                    return Err(self.malformed());
                };
                let mut utf8 = [0u8; 4];
                let bytes = c.encode_utf8(&mut utf8).as_bytes();
                self.push_model_bytes(bytes)
            }
        }
    }

    fn push_model_bytes(&mut self, bytes: &[u8]) -> Result<(), ScanError> {
        let end = self.model_len + bytes.len();
        let Some(dst) = self.model_buf.get_mut(self.model_len..end) else {
            return Err(ScanError::ModelTooLong);
        };
        dst.copy_from_slice(bytes);
        self.model_len = end;
        Ok(())
    }

    fn end_string(&mut self, sink: Sink) -> Result<(), ScanError> {
        self.token = Token::None;
        match sink {
            Sink::Skip => {
                // A key (inside nested objects) or a value.
                self.after_string();
            }
            Sink::Key => {
                let key = self.key_buf.get(..self.key_len).unwrap_or_default();
                if self.depth == 1 {
                    self.top_keys += 1;
                    let is_model = key == b"model";
                    if is_model && self.model_span.is_some() {
                        return Err(ScanError::DuplicateModel);
                    }
                    self.value_is_model = is_model;
                    self.value_is_prompt = PROMPT_KEYS.contains(&key);
                } else {
                    self.value_is_text = TEXT_KEYS.contains(&key);
                }
                self.expect = Expect::Colon;
            }
            Sink::Text => {
                if self.high_surrogate.take().is_some() {
                    self.push_text(REPLACEMENT);
                }
                self.value_done();
            }
            Sink::Model => {
                if self.high_surrogate.is_some() {
                    return Err(self.malformed());
                }
                let valid = self
                    .model_buf
                    .get(..self.model_len)
                    .is_some_and(|b| std::str::from_utf8(b).is_ok());
                if !valid {
                    return Err(self.malformed());
                }
                self.model_span = Some((self.model_start, self.pos + 1));
                self.value_done();
            }
        }
        Ok(())
    }

    /// A skipped string ended: it was a key when we expected one, else a value.
    fn after_string(&mut self) {
        if matches!(self.expect, Expect::KeyOrClose | Expect::Key) {
            self.expect = Expect::Colon;
        } else {
            self.value_done();
        }
    }

    /// Number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number_byte(&mut self, state: Num, b: u8) -> Result<bool, ScanError> {
        let next = match (state, b) {
            (Num::Minus, b'0') => Some(Num::Zero),
            (Num::Minus, b'1'..=b'9') => Some(Num::Int),
            (Num::Int, b'0'..=b'9') => Some(Num::Int),
            (Num::Zero | Num::Int, b'.') => Some(Num::Dot),
            (Num::Dot | Num::Frac, b'0'..=b'9') => Some(Num::Frac),
            (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Some(Num::Exp),
            (Num::Exp, b'+' | b'-') => Some(Num::ExpSign),
            (Num::Exp | Num::ExpSign | Num::ExpInt, b'0'..=b'9') => Some(Num::ExpInt),
            _ => None,
        };
        if let Some(n) = next {
            self.token = Token::Num(n);
            return Ok(true);
        }
        // The number ends here; it must be complete, and `b` is structure.
        if !matches!(state, Num::Zero | Num::Int | Num::Frac | Num::ExpInt) {
            return Err(self.malformed());
        }
        self.token = Token::None;
        self.value_done();
        Ok(false)
    }
}

/// U+FFFD in UTF-8.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

fn is_value_start(b: u8) -> bool {
    matches!(
        b,
        b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `body` whole, then in every two-piece split and byte by byte; all must agree.
    fn scan_all_ways(body: &[u8]) -> Result<(String, (usize, usize)), ScanError> {
        let whole = scan_in_pieces(body, &[body.len()]);
        for cut in 0..=body.len() {
            assert_eq!(
                scan_in_pieces(body, &[cut, body.len()]),
                whole,
                "split at {cut}"
            );
        }
        let bytes: Vec<usize> = (1..=body.len()).collect();
        assert_eq!(scan_in_pieces(body, &bytes), whole, "byte by byte");
        whole
    }

    /// Feeds `body` cut at the (ascending) offsets in `cuts`, reading to the end.
    fn scan_in_pieces(body: &[u8], cuts: &[usize]) -> Result<(String, (usize, usize)), ScanError> {
        let mut s = ModelScanner::new();
        let mut start = 0;
        for &end in cuts {
            assert_eq!(s.feed_all(&body[start..end])?, end - start, "scanner stuck");
            start = end;
        }
        s.finish()?;
        assert_eq!(s.consumed(), body.len());
        match (s.model(), s.model_span()) {
            (Some(m), Some(span)) => Ok((m.to_string(), span)),
            _ => Ok((String::new(), (0, 0))),
        }
    }

    fn model_of(body: &str) -> Result<String, ScanError> {
        scan_all_ways(body.as_bytes()).map(|(m, _)| m)
    }

    #[test]
    fn finds_top_level_model_and_its_span() {
        let body =
            r#"{"messages":[{"role":"user","content":"hi"}],"model":"llama-3-8b","stream":true}"#;
        let (m, (a, b)) = scan_all_ways(body.as_bytes()).unwrap();
        assert_eq!(m, "llama-3-8b");
        assert_eq!(&body[a..b], r#""llama-3-8b""#);
    }

    #[test]
    fn nested_model_keys_do_not_count() {
        let body = r#"{"tools":[{"model":"nested"}],"meta":{"model":"deep","x":{"model":1}},"model":"top"}"#;
        assert_eq!(model_of(body).unwrap(), "top");
        let body = r#"{"meta":{"model":"deep"},"messages":[]}"#;
        assert_eq!(model_of(body).unwrap(), "");
        // A string value that spells "model" is not a key.
        let body = r#"{"x":"model","y":["model"],"model":"m"}"#;
        assert_eq!(model_of(body).unwrap(), "m");
    }

    #[test]
    fn escapes_in_value_and_key() {
        assert_eq!(
            model_of(r#"{"model":"a\"b\\c\/d\n"}"#).unwrap(),
            "a\"b\\c/d\n"
        );
        assert_eq!(model_of(r#"{"\u006dodel":"x"}"#).unwrap(), "x");
        assert_eq!(model_of(r#"{"mod\u0065l":"x"}"#).unwrap(), "x");
        assert_eq!(model_of(r#"{"model\u0000":"x"}"#).unwrap(), "");
        assert_eq!(model_of(r#"{"m\u00f6del":"x"}"#).unwrap(), "");
        assert_eq!(model_of(r#"{"models":"x","mode":"y"}"#).unwrap(), "");
        assert_eq!(
            model_of(r#"{"model":"caf\u00e9-\u4e2d"}"#).unwrap(),
            "café-中"
        );
        assert_eq!(model_of(r#"{"model":"\ud83d\ude00"}"#).unwrap(), "😀");
    }

    #[test]
    fn raw_unicode_passes_through() {
        assert_eq!(
            model_of(r#"{"model":"модель-😀","prompt":"日本語"}"#).unwrap(),
            "модель-😀"
        );
    }

    #[test]
    fn rejects_lone_surrogates_and_bad_escapes_in_model() {
        for body in [
            r#"{"model":"\ud83d"}"#,
            r#"{"model":"\ude00"}"#,
            r#"{"model":"\ud83dx"}"#,
            r#"{"model":"\ud83d\u0041"}"#,
            r#"{"model":"\x"}"#,
            r#"{"model":"\u12G4"}"#,
        ] {
            assert!(
                matches!(model_of(body), Err(ScanError::Malformed { .. })),
                "{body}"
            );
        }
        assert!(matches!(
            scan_in_pieces(b"{\"model\":\"a\xff\"}", &[13]),
            Err(ScanError::Malformed { .. })
        ));
    }

    #[test]
    fn model_must_be_a_string() {
        for body in [
            r#"{"model":1}"#,
            r#"{"model":null}"#,
            r#"{"model":true}"#,
            r#"{"model":["a"]}"#,
            r#"{"model":{"name":"a"}}"#,
        ] {
            assert_eq!(model_of(body), Err(ScanError::ModelNotString), "{body}");
        }
    }

    #[test]
    fn malformed_documents() {
        for body in [
            "{",
            "",
            "   ",
            r#"{"model":"a""#,
            r#"{"model":"a",}"#,
            r#"{"model" "a"}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            r#"{"a":"x"]"#,
            r#"{"a":[1}"#,
            r#"{"model":"a"} x"#,
            r#"{"model":"a"}{}"#,
            "{\"a\":\"tab\there\"}",
            r#"{'model':'a'}"#,
        ] {
            let r = model_of(body);
            assert!(
                matches!(
                    r,
                    Err(ScanError::Malformed { .. }) | Err(ScanError::Truncated)
                ),
                "{body:?} gave {r:?}"
            );
        }
    }

    #[test]
    fn valid_numbers_and_literals() {
        let body = r#"{"a":0,"b":-1.5e+10,"c":2E-3,"d":[true,false,null],"e":{},"f":[],"model":"m","g":10}"#;
        assert_eq!(model_of(body).unwrap(), "m");
        assert_eq!(model_of(" \r\n\t{ \"model\" : \"m\" } \n").unwrap(), "m");
    }

    #[test]
    fn top_level_must_be_an_object() {
        for body in [r#"["model"]"#, r#""model""#, "1", "null"] {
            assert_eq!(model_of(body), Err(ScanError::NotAnObject), "{body}");
        }
    }

    #[test]
    fn duplicate_model_is_rejected() {
        assert_eq!(
            model_of(r#"{"model":"a","x":1,"model":"b"}"#),
            Err(ScanError::DuplicateModel)
        );
    }

    #[test]
    fn limits() {
        let long = format!(r#"{{"model":"{}"}}"#, "x".repeat(MAX_MODEL_LEN + 1));
        assert_eq!(model_of(&long), Err(ScanError::ModelTooLong));
        let ok = format!(r#"{{"model":"{}"}}"#, "x".repeat(MAX_MODEL_LEN));
        assert_eq!(model_of(&ok).unwrap().len(), MAX_MODEL_LEN);
        let deep = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert_eq!(
            scan_in_pieces(deep.as_bytes(), &[deep.len()]),
            Err(ScanError::TooDeep)
        );
        let fits = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(scan_in_pieces(fits.as_bytes(), &[fits.len()]).is_ok());
    }

    #[test]
    fn feed_stops_right_after_the_model() {
        let body = br#"{"model":"m","messages":[1,2,3]}"#;
        let mut s = ModelScanner::new();
        let n = s.feed(body).unwrap();
        assert_eq!(n, br#"{"model":"m""#.len());
        assert_eq!(s.model(), Some("m"));
        assert!(!s.is_complete());
        assert_eq!(s.feed(&body[n..]).unwrap(), body.len() - n);
        s.finish().unwrap();
    }

    #[test]
    fn feed_all_reads_past_the_model_and_the_final_prefix_hash() {
        let body = br#"{"model":"m","prompt":"abcdefgh","n":1}"#;
        let mut s = ModelScanner::with_prefix_hash(2);
        assert_eq!(s.feed_all(body).unwrap(), body.len());
        assert_eq!(s.model(), Some("m"));
        assert!(s.prefix_hash().is_some() && !s.prefix_pending());
        s.finish().unwrap();
        let mut bad = ModelScanner::new();
        assert!(bad.feed_all(br#"{"model":"m",x"#).is_err());
        assert_eq!(bad.feed_all(b"}"), bad.finish().map(|()| 0));
    }

    #[test]
    fn errors_are_sticky() {
        let mut s = ModelScanner::new();
        assert!(s.feed(b"{x").is_err());
        assert!(s.feed(b"\"model\":\"a\"}").is_err());
        assert!(s.finish().is_err());
    }

    /// serde_json agrees with the scanner on a corpus of tricky bodies.
    #[test]
    fn agrees_with_serde_json() {
        let bodies = [
            r#"{"model":"a","messages":[{"role":"system","content":"x\"y"},{"content":[{"type":"text","text":"é"}]}]}"#,
            r#"{"n":[1,2.5,-0,1e3,{"model":[]}],"model":"z\u00e9"}"#,
            r#"{"model":"\u0041\u00DF\u6771\uD800\uDC00"}"#,
            r#"{}"#,
        ];
        for body in bodies {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            let expected = v
                .get("model")
                .and_then(|m| m.as_str())
                .unwrap_or("")
                .to_string();
            assert_eq!(model_of(body).unwrap(), expected, "{body}");
        }
    }
}
