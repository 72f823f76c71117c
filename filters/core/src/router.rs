//! Model router policy: which requests are inference requests, which model they ask for
//! (read from the JSON body with [`crate::json_scan`]), which target serves them (weighted
//! choice), what the body and the routing headers become, and the `/v1/models` answer.
//! The proxy-wasm glue (`filters/model_router`) only moves bytes and headers.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::config::{validate_path, ConfigError, FilterConfig, FilterKind};
use crate::error::ApiError;
use crate::json_scan::{ModelScanner, ScanError, MAX_MODEL_LEN};
use crate::prng::Prng;
// One lowering rule for the router and the load shedder.
pub use crate::shed::effective_criticality;
use crate::vocab::Criticality;

/// Largest weight of one target; keeps sums far from overflow and the draw unbiased.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// Largest accepted `prefix_affinity.chars`.
pub const MAX_PREFIX_CHARS: usize = 65_536;

// ---------------------------------------------------------------------------------------
// Configuration

/// The plugin configuration as written (JSON); see docs/model-router.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfigJson {
    /// Client-facing models.
    pub models: Vec<ModelJson>,
    /// Model (name or alias) for requests whose body has no `model`.
    #[serde(default)]
    pub default_model: Option<String>,
    /// Exact paths (query ignored) whose POST bodies are routed.
    #[serde(default = "default_inference_paths")]
    pub inference_paths: Vec<String>,
    /// Path answered with the model list (`null`: pass through).
    #[serde(default = "default_models_path")]
    pub models_path: Option<String>,
    /// Most body bytes read before answering 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Prefix-affinity hash header, off when absent.
    #[serde(default)]
    pub prefix_affinity: Option<PrefixAffinityJson>,
    /// `owned_by` in the model list.
    #[serde(default = "default_owned_by")]
    pub owned_by: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelJson {
    /// Client-facing name (listed in `/v1/models`).
    pub name: String,
    /// Other client-facing names for the same model (not listed).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Target models with weights; default: one target named like the model.
    #[serde(default)]
    pub targets: Vec<TargetJson>,
    /// `critical` | `standard` | `sheddable` (default `standard`).
    #[serde(default)]
    pub criticality: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetJson {
    /// Model name the server knows; written into the body and `x-modelgate-model`.
    pub name: String,
    /// Share = weight / sum of the model's weights (default 1; 0 sends nothing).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixAffinityJson {
    /// Characters of system message + first user turn that are hashed.
    #[serde(default = "default_prefix_chars")]
    pub chars: usize,
}

fn default_inference_paths() -> Vec<String> {
    [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}

fn default_models_path() -> Option<String> {
    Some("/v1/models".to_string())
}

fn default_max_body_bytes() -> usize {
    1 << 20
}

fn default_owned_by() -> String {
    "modelgate".to_string()
}

fn default_weight() -> u32 {
    1
}

fn default_prefix_chars() -> usize {
    256
}

/// One target of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub weight: u32,
    /// `"model":"<name>"`, written into bodies that lack a model; its tail after
    /// `"model":` (the name as a JSON string token) replaces a client's model.
    member_json: String,
}

impl Target {
    /// The name as a JSON string token.
    fn json(&self) -> &str {
        self.member_json.get(MEMBER_PREFIX.len()..).unwrap_or("")
    }
}

const MEMBER_PREFIX: &str = "\"model\":";

/// One client-facing model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub name: String,
    pub aliases: Vec<String>,
    pub criticality: Criticality,
    pub targets: Vec<Target>,
    pub total_weight: u64,
}

/// The validated router configuration, built once per `on_configure`.
#[derive(Debug, Clone)]
pub struct Router {
    models: Vec<Model>,
    /// Names and aliases to model index.
    lookup: HashMap<String, usize>,
    default_model: Option<usize>,
    inference_paths: Vec<String>,
    models_path: Option<String>,
    max_body_bytes: usize,
    prefix_chars: Option<usize>,
    /// The `/v1/models` body, rendered once.
    models_body: Vec<u8>,
    owned_by: String,
}

/// Header values must be visible ASCII: target names become `x-modelgate-model`.
fn is_header_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

impl Router {
    pub fn models(&self) -> &[Model] {
        &self.models
    }
}

impl FilterConfig for Router {
    const KIND: FilterKind = FilterKind::ModelRouter;
    type Json = RouterConfigJson;

    fn validate(cfg: RouterConfigJson) -> Result<Self, ConfigError> {
        if cfg.models.is_empty() {
            return Err(ConfigError::new("models", "at least one model is required"));
        }
        let mut models = Vec::with_capacity(cfg.models.len());
        let mut lookup = HashMap::new();
        for (i, m) in cfg.models.into_iter().enumerate() {
            let field = |f: &str| format!("models[{i}].{f}");
            for (j, name) in std::iter::once(&m.name).chain(m.aliases.iter()).enumerate() {
                let f = if j == 0 {
                    field("name")
                } else {
                    field(&format!("aliases[{}]", j - 1))
                };
                if name.is_empty() || name.len() > MAX_MODEL_LEN {
                    return Err(ConfigError::new(
                        f,
                        format!("must be 1 to {MAX_MODEL_LEN} bytes"),
                    ));
                }
                if lookup.insert(name.clone(), i).is_some() {
                    return Err(ConfigError::new(
                        f,
                        format!("`{name}` is already a model name or alias"),
                    ));
                }
            }
            let criticality = match m.criticality.as_deref() {
                None => Criticality::Standard,
                Some(c) => Criticality::parse(c).ok_or_else(|| {
                    ConfigError::new(
                        field("criticality"),
                        format!("`{c}` is not one of {}", Criticality::NAMES),
                    )
                })?,
            };
            let targets_json = if m.targets.is_empty() {
                vec![TargetJson {
                    name: m.name.clone(),
                    weight: 1,
                }]
            } else {
                m.targets
            };
            let mut targets = Vec::with_capacity(targets_json.len());
            let mut total_weight = 0u64;
            for (j, t) in targets_json.into_iter().enumerate() {
                if !is_header_token(&t.name) || t.name.len() > MAX_MODEL_LEN {
                    return Err(ConfigError::new(
                        field(&format!("targets[{j}].name")),
                        format!("`{}` must be 1 to {MAX_MODEL_LEN} visible ASCII characters (it is sent as a header)", t.name),
                    ));
                }
                if t.weight > MAX_WEIGHT {
                    return Err(ConfigError::new(
                        field(&format!("targets[{j}].weight")),
                        format!("{} is above the maximum {MAX_WEIGHT}", t.weight),
                    ));
                }
                total_weight += u64::from(t.weight);
                let json = serde_json::to_string(&t.name).map_err(|e| {
                    ConfigError::new(field(&format!("targets[{j}].name")), e.to_string())
                })?;
                targets.push(Target {
                    name: t.name,
                    weight: t.weight,
                    member_json: format!("{MEMBER_PREFIX}{json}"),
                });
            }
            if total_weight == 0 {
                return Err(ConfigError::new(
                    field("targets"),
                    "the weights must not all be 0",
                ));
            }
            models.push(Model {
                name: m.name,
                aliases: m.aliases,
                criticality,
                targets,
                total_weight,
            });
        }
        let default_model = match &cfg.default_model {
            None => None,
            Some(name) => Some(*lookup.get(name).ok_or_else(|| {
                ConfigError::new(
                    "default_model",
                    format!("`{name}` is not a configured model name or alias"),
                )
            })?),
        };
        for (i, p) in cfg.inference_paths.iter().enumerate() {
            validate_path(&format!("inference_paths[{i}]"), p)?;
        }
        if let Some(p) = &cfg.models_path {
            validate_path("models_path", p)?;
        }
        if cfg.max_body_bytes == 0 {
            return Err(ConfigError::new("max_body_bytes", "must be greater than 0"));
        }
        let prefix_chars = match cfg.prefix_affinity {
            None => None,
            Some(p) if p.chars == 0 || p.chars > MAX_PREFIX_CHARS => {
                return Err(ConfigError::new(
                    "prefix_affinity.chars",
                    format!("{} must be between 1 and {MAX_PREFIX_CHARS}", p.chars),
                ))
            }
            Some(p) => Some(p.chars),
        };
        let mut router = Router {
            models,
            lookup,
            default_model,
            inference_paths: cfg.inference_paths,
            models_path: cfg.models_path,
            max_body_bytes: cfg.max_body_bytes,
            prefix_chars,
            models_body: Vec::new(),
            owned_by: cfg.owned_by,
        };
        router.models_body = router.render_models();
        Ok(router)
    }
}

impl Router {
    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    pub fn prefix_affinity_chars(&self) -> Option<usize> {
        self.prefix_chars
    }

    /// The model a client-facing name or alias refers to.
    pub fn resolve(&self, name: &str) -> Option<usize> {
        self.lookup.get(name).copied()
    }

    pub fn model(&self, index: usize) -> Option<&Model> {
        self.models.get(index)
    }

    /// The target of `model`'s request, drawn by weight.
    pub fn choose(&self, model: usize, rng: &mut Prng) -> usize {
        let Some(m) = self.models.get(model) else {
            return 0;
        };
        if m.targets.len() < 2 {
            return 0;
        }
        let mut draw = rng.below(m.total_weight);
        for (i, t) in m.targets.iter().enumerate() {
            let w = u64::from(t.weight);
            if draw < w {
                return i;
            }
            draw -= w;
        }
        m.targets.len().saturating_sub(1)
    }

    /// What to do with a request, from its headers alone.
    pub fn on_headers<'a>(&'a self, req: &RequestHead<'_>) -> HeadersAction<'a> {
        let path = req.path.split(['?', '#']).next().unwrap_or("");
        if let Some(models_path) = &self.models_path {
            if req.method == "GET" {
                if path == models_path {
                    return HeadersAction::Reply(200, Cow::Borrowed(&self.models_body));
                }
                if let Some(id) = path
                    .strip_prefix(models_path.as_str())
                    .and_then(|r| r.strip_prefix('/'))
                {
                    let id = percent_decode(id);
                    return match self.listed_model(&id) {
                        Some(m) => HeadersAction::Reply(200, Cow::Owned(self.render_model(m))),
                        None => HeadersAction::Error(ApiError::model_not_found(&id)),
                    };
                }
            }
        }
        if req.method != "POST" || !self.inference_paths.iter().any(|p| p == path) {
            return HeadersAction::PassThrough;
        }
        if let Some(ct) = req.content_type {
            if !is_json_media_type(ct) {
                return HeadersAction::Error(ApiError::unsupported_media_type(ct));
            }
        }
        if let Some(len) = req
            .content_length
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            if len > self.max_body_bytes as u64 {
                return HeadersAction::Error(ApiError::too_large(self.max_body_bytes));
            }
        }
        if req.end_of_stream {
            return HeadersAction::Error(scan_error(ScanError::Truncated));
        }
        HeadersAction::ReadBody
    }

    /// A model listed in `/v1/models` (by name; aliases are not listed).
    fn listed_model(&self, id: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == id)
    }

    fn render_model(&self, m: &Model) -> Vec<u8> {
        serde_json::to_vec(&ModelObject {
            id: &m.name,
            object: "model",
            created: 0,
            owned_by: &self.owned_by,
        })
        .unwrap_or_default()
    }

    fn render_models(&self) -> Vec<u8> {
        let data: Vec<ModelObject<'_>> = self
            .models
            .iter()
            .map(|m| ModelObject {
                id: &m.name,
                object: "model",
                created: 0,
                owned_by: &self.owned_by,
            })
            .collect();
        serde_json::to_vec(&ModelList {
            object: "list",
            data,
        })
        .unwrap_or_default()
    }

    /// The prefix-affinity hash of a whole body, when configured and the body has a prompt.
    pub fn prefix_hash(&self, body: &[u8]) -> Option<u64> {
        prefix_hash(body, self.prefix_chars?)
    }
}

#[derive(Serialize)]
struct ModelObject<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'a str,
}

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<ModelObject<'a>>,
}

/// `application/json` or any `+json` type, parameters allowed.
fn is_json_media_type(ct: &str) -> bool {
    let media = ct.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/json")
        || (media.len() > 5
            && media
                .get(media.len() - 5..)
                .is_some_and(|s| s.eq_ignore_ascii_case("+json")))
}

/// `%XX` decoding for model ids in `/v1/models/<id>` (ids may contain `/` or `:`).
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The parts of the request head the router looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// `:path`, query included.
    pub path: &'a str,
    pub content_type: Option<&'a str>,
    pub content_length: Option<&'a str>,
    /// No body follows the headers.
    pub end_of_stream: bool,
}

/// The decision after the request headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadersAction<'a> {
    /// Not an inference request: forward untouched (the glue drops a client-sent
    /// `x-modelgate-model`, which routes trust).
    PassThrough,
    /// Answer with this JSON body and status.
    Reply(u16, Cow<'a, [u8]>),
    /// Answer with an OpenAI-shaped error.
    Error(ApiError),
    /// An inference request: read its body with a [`BodyRouting`].
    ReadBody,
}

fn scan_error(e: ScanError) -> ApiError {
    let msg = e.to_string();
    match e {
        ScanError::Malformed { .. }
        | ScanError::Truncated
        | ScanError::NotAnObject
        | ScanError::TooDeep => ApiError::new(400, "invalid_request_error", "invalid_json", msg),
        ScanError::ModelNotString => ApiError::bad_request("invalid_type", msg),
        ScanError::ModelTooLong => ApiError::bad_request("invalid_value", msg),
        ScanError::DuplicateModel => ApiError::bad_request("invalid_value", msg),
    }
}

// ---------------------------------------------------------------------------------------
// Per-request body routing

/// Per-request state while the body is read.
#[derive(Debug, Clone, Default)]
pub struct BodyRouting {
    scanner: ModelScanner,
    /// Model and target, once the model was read.
    choice: Option<(usize, usize)>,
}

/// What the body tells the glue to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyStep<'r> {
    /// Keep buffering (pause) and call again with the next bytes.
    NeedMore,
    /// Answer with this error.
    Error(ApiError),
    /// Route the request.
    Route(Route<'r>),
}

/// A routing decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'r> {
    pub model: usize,
    pub target: usize,
    /// A body change, when the body must carry the target's name.
    pub edit: Option<BodyEdit<'r>>,
    /// The whole body is buffered (end of stream was reached), so a prefix hash can be
    /// computed from it.
    pub whole_body: bool,
}

/// Replace the body's first `drop` bytes by its first `keep` bytes followed by `insert`
/// (and a comma when `comma`). Only a prefix of the body changes, which is the one body
/// edit Envoy supports in the middle of buffered data (drain the front, prepend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyEdit<'r> {
    pub keep: usize,
    pub drop: usize,
    insert: &'r str,
    comma: bool,
}

impl BodyEdit<'_> {
    /// The new front of the body from the old body's first `keep` bytes.
    pub fn new_prefix(&self, kept: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(kept.len() + self.insert.len() + 1);
        out.extend_from_slice(kept);
        out.extend_from_slice(self.insert.as_bytes());
        if self.comma {
            out.push(b',');
        }
        out
    }

    /// Length of the new prefix (for `content-length` without building it).
    pub fn new_prefix_len(&self) -> usize {
        self.keep + self.insert.len() + usize::from(self.comma)
    }

    /// Length of the whole new body, given the old length.
    pub fn new_body_len(&self, old_len: usize) -> usize {
        old_len.saturating_sub(self.drop) + self.new_prefix_len()
    }

    /// Applies the edit to a whole body (tests and hosts that replace whole bodies).
    pub fn apply(&self, body: &[u8]) -> Vec<u8> {
        let mut out = self.new_prefix(body.get(..self.keep).unwrap_or(body));
        out.extend_from_slice(body.get(self.drop..).unwrap_or_default());
        out
    }
}

impl BodyRouting {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of the body consumed so far; the next call's `chunk` starts here.
    pub fn consumed(&self) -> usize {
        self.scanner.consumed()
    }

    /// Feeds the next body bytes (`chunk` starts at [`Self::consumed`]).
    /// `total` is the body length buffered so far (for the size limit).
    pub fn feed<'r>(
        &mut self,
        router: &'r Router,
        chunk: &[u8],
        total: usize,
        end_of_stream: bool,
        rng: &mut Prng,
    ) -> BodyStep<'r> {
        if total > router.max_body_bytes {
            return BodyStep::Error(ApiError::too_large(router.max_body_bytes));
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            let n = match self.scanner.feed(rest) {
                Ok(n) => n,
                Err(e) => return BodyStep::Error(scan_error(e)),
            };
            rest = rest.get(n..).unwrap_or_default();
            if self.choice.is_none() {
                if let Some(requested) = self.scanner.model() {
                    let Some(model) = router.resolve(requested) else {
                        return BodyStep::Error(ApiError::model_not_found(requested));
                    };
                    let target = router.choose(model, rng);
                    self.choice = Some((model, target));
                    let same_name = router
                        .model(model)
                        .and_then(|m| m.targets.get(target))
                        .is_some_and(|t| t.name == requested);
                    // Stop reading here unless the body must change or be hashed.
                    if same_name && router.prefix_chars.is_none() {
                        return BodyStep::Route(Route {
                            model,
                            target,
                            edit: None,
                            whole_body: false,
                        });
                    }
                }
            }
        }
        if !end_of_stream {
            return BodyStep::NeedMore;
        }
        if let Err(e) = self.scanner.finish() {
            return BodyStep::Error(scan_error(e));
        }
        let (model, target, edit) = match self.choice {
            Some((model, target)) => {
                let edit = self.replace_edit(router, model, target);
                (model, target, edit)
            }
            None => {
                let Some(model) = router.default_model else {
                    return BodyStep::Error(ApiError::bad_request(
                        "missing_required_parameter",
                        "The request body has no `model`; set it to one of the models in /v1/models.",
                    ));
                };
                let target = router.choose(model, rng);
                let edit = self.insert_edit(router, model, target);
                (model, target, edit)
            }
        };
        BodyStep::Route(Route {
            model,
            target,
            edit,
            whole_body: true,
        })
    }

    fn target(router: &Router, model: usize, target: usize) -> Option<&Target> {
        router.model(model)?.targets.get(target)
    }

    fn replace_edit<'r>(
        &self,
        router: &'r Router,
        model: usize,
        target: usize,
    ) -> Option<BodyEdit<'r>> {
        let t = Self::target(router, model, target)?;
        if self.scanner.model() == Some(t.name.as_str()) {
            return None;
        }
        let (start, end) = self.scanner.model_span()?;
        Some(BodyEdit {
            keep: start,
            drop: end,
            insert: t.json(),
            comma: false,
        })
    }

    fn insert_edit<'r>(
        &self,
        router: &'r Router,
        model: usize,
        target: usize,
    ) -> Option<BodyEdit<'r>> {
        let t = Self::target(router, model, target)?;
        let brace = self.scanner.object_start()?;
        Some(BodyEdit {
            keep: brace + 1,
            drop: brace + 1,
            insert: &t.member_json,
            comma: self.scanner.top_level_keys() > 0,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Prefix affinity

/// FNV-1a over the first `chars` characters of the prompt's stable prefix: the system
/// message (or Responses `instructions`) and the first user turn (or `prompt` / `input`).
/// `None` when the body has no such text or is not JSON.
pub fn prefix_hash(body: &[u8], chars: usize) -> Option<u64> {
    let view: PromptView<'_> = serde_json::from_slice(body).ok()?;
    let mut h = PrefixHasher::new(chars);
    if let Some(s) = &view.instructions {
        h.feed(s);
    }
    let turns = view.messages.or(view.input).unwrap_or_default();
    if let Some(s) = &turns.system {
        turns_feed(&mut h, s);
    }
    h.separator();
    if let Some(u) = &turns.user {
        turns_feed(&mut h, u);
    } else if let Some(p) = &view.prompt {
        h.feed(p);
    }
    h.finish()
}

fn turns_feed(h: &mut PrefixHasher, parts: &[Cow<'_, str>]) {
    for p in parts {
        h.feed(p);
    }
}

/// `n` in decimal into `buf`, for header values without allocating.
pub fn decimal(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(d) = buf.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    buf.get(i..).unwrap_or_default()
}

/// 16 lowercase hex digits, the header form of a prefix hash.
pub fn hash_hex(h: u64) -> [u8; 16] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [b'0'; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let nibble = (h >> (60 - 4 * i)) & 0xf;
        *o = DIGITS.get(nibble as usize).copied().unwrap_or(b'0');
    }
    out
}

struct PrefixHasher {
    budget: usize,
    hash: u64,
    fed: bool,
}

impl PrefixHasher {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;

    fn new(chars: usize) -> Self {
        Self {
            budget: chars,
            hash: Self::OFFSET,
            fed: false,
        }
    }

    fn byte(&mut self, b: u8) {
        self.hash ^= u64::from(b);
        self.hash = self.hash.wrapping_mul(Self::PRIME);
    }

    fn feed(&mut self, s: &str) {
        for c in s.chars() {
            if self.budget == 0 {
                return;
            }
            self.budget -= 1;
            self.fed = true;
            let mut buf = [0u8; 4];
            for &b in c.encode_utf8(&mut buf).as_bytes() {
                self.byte(b);
            }
        }
    }

    /// Between system and user text, so "ab"+"c" and "a"+"bc" differ.
    fn separator(&mut self) {
        self.byte(0x1e);
    }

    fn finish(&self) -> Option<u64> {
        self.fed.then_some(self.hash)
    }
}

/// The fields of an OpenAI request body that make up its stable prefix. Other fields are
/// skipped without being built; strings are borrowed unless they contain escapes.
#[derive(Deserialize, Default)]
struct PromptView<'a> {
    /// Chat Completions.
    #[serde(default, borrow)]
    messages: Option<Turns<'a>>,
    /// Responses (`input` string or items) and Embeddings (`input` string or list).
    #[serde(default, borrow)]
    input: Option<Turns<'a>>,
    /// Responses system text.
    #[serde(default, borrow)]
    instructions: Option<Cow<'a, str>>,
    /// Completions (`prompt` string or list of strings).
    #[serde(default, borrow)]
    prompt: Option<FirstText<'a>>,
}

/// System text and first user text of a message list (or a bare string as user text).
#[derive(Default)]
struct Turns<'a> {
    system: Option<Vec<Cow<'a, str>>>,
    user: Option<Vec<Cow<'a, str>>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for Turns<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Turns<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message list or a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Turns {
                    system: None,
                    user: Some(vec![Cow::Borrowed(v)]),
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Turns {
                    system: None,
                    user: Some(vec![Cow::Owned(v.to_string())]),
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut turns = Turns::default();
                while turns.system.is_none() || turns.user.is_none() {
                    let Some(item) = seq.next_element::<Item<'a>>()? else {
                        return Ok(turns);
                    };
                    match item {
                        Item::Message { role, content } => {
                            let slot = match role.as_ref() {
                                "system" | "developer" => &mut turns.system,
                                "user" => &mut turns.user,
                                _ => continue,
                            };
                            if slot.is_none() {
                                *slot = Some(content);
                            }
                        }
                        // Embeddings / completions-style list of strings: the first is the text.
                        Item::Text(t) if turns.user.is_none() => turns.user = Some(vec![t]),
                        Item::Text(_) | Item::Other => {}
                    }
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(turns)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Turns::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Turns::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Turns::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Turns::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Turns::default())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Turns::default())
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// One element of `messages` / `input`.
enum Item<'a> {
    Message {
        role: Cow<'a, str>,
        content: Vec<Cow<'a, str>>,
    },
    Text(Cow<'a, str>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Item<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Item<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut role: Option<Cow<'a, str>> = None;
                let mut content = Vec::new();
                while let Some(key) = map.next_key::<MessageKey>()? {
                    match key {
                        MessageKey::Role => role = Some(map.next_value::<CowStr<'a>>()?.0),
                        MessageKey::Content => content = map.next_value::<Content<'a>>()?.0,
                        MessageKey::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(match role {
                    Some(role) => Item::Message { role, content },
                    None => Item::Other,
                })
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Item::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Item::Text(Cow::Owned(v.to_string())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Item::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Item::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Item::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Item::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Item::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Item::Other)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The message keys we read, matched without allocating the key.
enum MessageKey {
    Role,
    Content,
    Other,
}

impl<'de> Deserialize<'de> for MessageKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MessageKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(match v {
                    "role" => MessageKey::Role,
                    "content" => MessageKey::Content,
                    _ => MessageKey::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

/// A string, borrowed when it has no escapes; anything else reads as "".
struct CowStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(CowStr(match FirstText::deserialize(d)? {
            FirstText(Some(s)) => s,
            FirstText(None) => Cow::Borrowed(""),
        }))
    }
}

/// Message content: a string, or the `text` of each part of a part list.
struct Content<'a>(Vec<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Content<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("message content")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Content(vec![Cow::Borrowed(v)]))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Content(vec![Cow::Owned(v.to_string())]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element::<Part<'a>>()? {
                    if let Some(t) = part.text {
                        parts.push(t.0);
                    }
                }
                Ok(Content(parts))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Content(Vec::new()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Content(Vec::new()))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Content(Vec::new()))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Content(Vec::new()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Content(Vec::new()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Content(Vec::new()))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A content part; only its `text` matters (`text` and `input_text` parts have one).
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(default, borrow)]
    text: Option<CowStr<'a>>,
}

impl<'a> std::ops::Deref for CowStr<'a> {
    type Target = Cow<'a, str>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'a> From<CowStr<'a>> for Cow<'a, str> {
    fn from(c: CowStr<'a>) -> Self {
        c.0
    }
}

/// A string, or the first string of a list; other values read as none.
struct FirstText<'a>(Option<Cow<'a, str>>);

impl std::ops::Deref for FirstText<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for FirstText<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = FirstText<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(FirstText(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(FirstText(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<FirstText<'a>>()?.and_then(|f| f.0);
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstText(first))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(FirstText(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FirstText(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(FirstText(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(FirstText(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(FirstText(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(FirstText(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
