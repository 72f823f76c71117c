//! Sources: where a model comes from and how to list one revision of it.
//! `hf://org/name[@rev]`, `s3://` `az://` (object_store), `gs://` (gcs.rs), `http(s)://` single files or
//! `.tar`/`.tar.gz` archives, `file://` and plain paths.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::TryStreamExt;
use globset::{Glob, GlobSet, GlobSetBuilder};
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;
use serde::Deserialize;

use crate::digest::{sha256_hex, Expected};
use crate::retry::{classify_response, Failure, RetryPolicy};
use crate::safe_path::RelPath;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchiveKind {
    Tar,
    TarGz,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceSpec {
    Hf {
        repo: String,
        revision: String,
    },
    /// `s3://` and `az://` through object_store.
    Store {
        url: String,
    },
    /// `gs://` through the GCS JSON API.
    Gcs {
        url: String,
    },
    Http {
        url: String,
        archive: Option<ArchiveKind>,
    },
    Local(PathBuf),
}

impl SourceSpec {
    /// Parses a source string. A bare `org/name` (what the seed's `MODEL_ID` held) is a Hub
    /// repo unless it exists on disk; paths starting with `/` or `.` are local.
    pub fn parse(raw: &str, revision: Option<&str>) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("source: empty (set --source or MODEL_ID)".into());
        }
        if let Some(rest) = raw.strip_prefix("hf://") {
            return Self::hf(rest, revision);
        }
        if raw.starts_with("gs://") {
            return Ok(Self::Gcs {
                url: raw.to_string(),
            });
        }
        for scheme in ["s3://", "az://", "abfs://", "abfss://"] {
            if raw.starts_with(scheme) {
                return Ok(Self::Store {
                    url: raw.to_string(),
                });
            }
        }
        if raw.starts_with("http://") || raw.starts_with("https://") {
            let path = raw.split(['?', '#']).next().unwrap_or(raw);
            let archive = if path.ends_with(".tar.gz") || path.ends_with(".tgz") {
                Some(ArchiveKind::TarGz)
            } else if path.ends_with(".tar") {
                Some(ArchiveKind::Tar)
            } else {
                None
            };
            return Ok(Self::Http {
                url: raw.to_string(),
                archive,
            });
        }
        if let Some(p) = raw.strip_prefix("file://") {
            return Ok(Self::Local(PathBuf::from(p)));
        }
        if raw.contains("://") {
            return Err(format!(
                "source: unknown scheme in {raw:?} (hf, s3, gs, az, http, https, file)"
            ));
        }
        let looks_local = raw.starts_with('/') || raw.starts_with('.') || Path::new(raw).exists();
        if !looks_local && raw.split('@').next().unwrap_or("").matches('/').count() == 1 {
            return Self::hf(raw, revision);
        }
        Ok(Self::Local(PathBuf::from(raw)))
    }

    fn hf(rest: &str, revision: Option<&str>) -> Result<Self, String> {
        let (repo, rev) = match rest.split_once('@') {
            Some((r, v)) => (r, Some(v)),
            None => (rest, None),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let valid = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !(parts.len() == 2 || parts.len() == 3 && parts.first() == Some(&"datasets"))
            || !parts.iter().all(|p| valid(p))
        {
            return Err(format!("source: {repo:?} is not a Hub repo id (org/name)"));
        }
        let revision = rev.or(revision).unwrap_or("main").to_string();
        if revision.is_empty() {
            return Err("revision: empty".into());
        }
        Ok(Self::Hf {
            repo: repo.to_string(),
            revision,
        })
    }

    /// The source as it may appear in logs and metadata (no credentials, no query).
    pub fn display(&self) -> String {
        match self {
            Self::Hf { repo, revision } => format!("hf://{repo}@{revision}"),
            Self::Store { url } | Self::Gcs { url } | Self::Http { url, .. } => {
                crate::log::redact_url(url)
            }
            Self::Local(p) => p.display().to_string(),
        }
    }
}

/// How requests are authorised.
#[derive(Clone)]
pub enum Auth {
    None,
    /// A fixed token (the Hub's `HF_TOKEN`).
    Bearer(Arc<str>),
    /// Google's credential chain; tokens are cached and refreshed before they expire.
    Google(object_store::gcp::GcpCredentialProvider),
}

/// What to check when the Hub's API answers 401 or 403.
const HUB_AUTH_HINT: &str = "private and gated repos need HF_TOKEN, with access granted";

impl Auth {
    /// What to check when a source answers 401 or 403 to these credentials.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::None => "no credentials were sent",
            Self::Bearer(_) => "check that the token (HF_TOKEN) has access",
            Self::Google(_) => {
                "check the Google credentials (GOOGLE_APPLICATION_CREDENTIALS) and the bucket's IAM"
            }
        }
    }

    /// Adds the `Authorization` header, fetching a fresh Google token when needed.
    pub async fn apply(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::RequestBuilder, Failure> {
        match self {
            Self::None => Ok(req),
            // reqwest drops Authorization on cross-host redirects (CDN), as it must.
            Self::Bearer(t) => Ok(req.bearer_auth(t)),
            Self::Google(p) => {
                let cred = p
                    .get_credential()
                    .await
                    .map_err(|e| map_store(e, &format!("{what}: credentials")))?;
                // `disable_oauth` service accounts yield an empty token: send none.
                Ok(if cred.bearer.is_empty() {
                    req
                } else {
                    req.bearer_auth(&cred.bearer)
                })
            }
        }
    }
}

/// Where the bytes of one file are fetched from.
#[derive(Clone)]
pub enum Remote {
    Http {
        url: String,
        auth: Auth,
    },
    Object {
        store: Arc<dyn ObjectStore>,
        path: ObjPath,
    },
    Local(PathBuf),
}

impl Remote {
    /// A stable description for resume bookkeeping (never includes credentials).
    pub fn identity(&self) -> String {
        match self {
            Self::Http { url, .. } => crate::log::redact_url(url),
            Self::Object { path, .. } => path.to_string(),
            Self::Local(p) => p.display().to_string(),
        }
    }
}

#[derive(Clone)]
pub struct RemoteFile {
    pub path: RelPath,
    pub expected: Expected,
    /// The source's own id for the content (LFS sha256, git blob id, ETag), used to reuse
    /// unchanged files across revisions when no sha256 is published.
    pub id: Option<String>,
    pub remote: Remote,
}

pub struct Listing {
    pub revision: String,
    pub files: Vec<RemoteFile>,
    /// Set when the single file is an archive to unpack.
    pub archive: Option<ArchiveKind>,
}

/// Include/exclude globs over relative paths.
pub struct Filters {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

impl Filters {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, String> {
        let build = |pats: &[String], field: &str| -> Result<Option<GlobSet>, String> {
            if pats.is_empty() {
                return Ok(None);
            }
            let mut b = GlobSetBuilder::new();
            for p in pats {
                b.add(Glob::new(p).map_err(|e| format!("{field}: bad glob {p:?}: {e}"))?);
            }
            b.build().map(Some).map_err(|e| format!("{field}: {e}"))
        };
        Ok(Self {
            include: build(include, "include")?,
            exclude: build(exclude, "exclude")?,
        })
    }

    pub fn accepts(&self, path: &str) -> bool {
        self.include.as_ref().is_none_or(|g| g.is_match(path))
            && !self.exclude.as_ref().is_some_and(|g| g.is_match(path))
    }
}

pub struct Source {
    pub spec: SourceSpec,
    pub client: reqwest::Client,
    pub hf_endpoint: String,
    pub token: Option<Arc<str>>,
    pub filters: Filters,
    /// Expected sha256 per relative path (`--manifest`).
    pub manifest: Option<HashMap<String, String>>,
    /// Expected sha256 of a single-file source (`--sha256`).
    pub sha256: Option<String>,
    pub store: Option<Arc<dyn ObjectStore>>,
    pub store_prefix: ObjPath,
    pub gcs: Option<crate::gcs::Bucket>,
}

#[derive(Deserialize)]
struct HfRevision {
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<HfSibling>,
}

#[derive(Deserialize)]
struct HfSibling {
    rfilename: String,
    size: Option<u64>,
    #[serde(rename = "blobId")]
    blob_id: Option<String>,
    lfs: Option<HfLfs>,
}

#[derive(Deserialize)]
struct HfLfs {
    sha256: String,
    size: Option<u64>,
}

pub(crate) fn map_reqwest(e: reqwest::Error, what: &str) -> Failure {
    // Connection, timeout and body errors are all transient from our side.
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect error"
    } else {
        "request error"
    };
    // reqwest's Display includes the URL; strip it so query signatures never reach logs.
    Failure::retryable(format!("{what}: {kind}: {}", e.without_url()))
}

pub fn map_store(e: object_store::Error, what: &str) -> Failure {
    match e {
        object_store::Error::NotFound { .. } => Failure::Fatal(format!("{what}: not found")),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => {
            Failure::Fatal(format!("{what}: access denied (check credentials)"))
        }
        other => Failure::retryable(format!("{what}: {other}")),
    }
}

/// Builds the object store for `s3://` and `az://` URLs from the usual environment
/// (`AWS_*`, `AZURE_*`). Retries and total timeouts are ours, not the store's.
pub fn build_store(
    url: &str,
    connect_timeout: std::time::Duration,
) -> Result<(Arc<dyn ObjectStore>, ObjPath), String> {
    use object_store::{ClientConfigKey as C, RetryConfig};
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("source: {e}"))?;
    let prefix = ObjPath::from_url_path(parsed.path()).map_err(|e| format!("source: {e}"))?;
    // Set through config keys so the environment's client settings (AWS_ALLOW_HTTP, proxies)
    // survive; the whole-request timeout is effectively off because our stall timeout and
    // retries cover slow bodies.
    let connect = format!("{}ms", connect_timeout.as_millis().max(1));
    let total = "24h";
    let retry = RetryConfig {
        max_retries: 0,
        ..Default::default()
    };
    let err = |e: object_store::Error| format!("source: {e}");
    let store: Arc<dyn ObjectStore> = match parsed.scheme() {
        "s3" => {
            use object_store::aws::AmazonS3ConfigKey as K;
            Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_config(K::Client(C::ConnectTimeout), &connect)
                    .with_config(K::Client(C::Timeout), total)
                    .with_retry(retry)
                    .build()
                    .map_err(err)?,
            )
        }
        _ => {
            use object_store::azure::AzureConfigKey as K;
            Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_config(K::Client(C::ConnectTimeout), &connect)
                    .with_config(K::Client(C::Timeout), total)
                    .with_retry(retry)
                    .build()
                    .map_err(err)?,
            )
        }
    };
    Ok((store, prefix))
}

impl Source {
    pub async fn list(&self, retry: &RetryPolicy) -> Result<Listing, Failure> {
        let mut listing = match &self.spec {
            SourceSpec::Hf { repo, revision } => self.list_hf(repo, revision, retry).await?,
            SourceSpec::Store { url } => self.list_store(url, retry).await?,
            SourceSpec::Gcs { url } => {
                let bucket = self
                    .gcs
                    .as_ref()
                    .ok_or_else(|| Failure::Fatal("gcs: not configured".into()))?;
                bucket
                    .list(&self.client, retry, &crate::log::redact_url(url))
                    .await?
            }
            SourceSpec::Http { url, archive } => {
                self.list_http(url, archive.clone(), retry).await?
            }
            SourceSpec::Local(p) => list_local(p).await?,
        };
        if listing.archive.is_none() {
            listing
                .files
                .retain(|f| self.filters.accepts(f.path.as_str()));
            if listing.files.is_empty() {
                return Err(Failure::Fatal(format!(
                    "{}: no files (after include/exclude filters)",
                    self.spec.display()
                )));
            }
        }
        if let Some(sha) = &self.sha256 {
            match listing.files.as_mut_slice() {
                [one] => one.expected.sha256 = Some(sha.clone()),
                _ => {
                    return Err(Failure::Fatal(
                        "--sha256 needs a single-file source; use --manifest for many files".into(),
                    ))
                }
            }
        }
        if let Some(manifest) = &self.manifest {
            for f in &mut listing.files {
                let key = if listing.archive.is_some() {
                    None
                } else {
                    manifest.get(f.path.as_str())
                };
                match key {
                    Some(h) => f.expected.sha256 = Some(h.clone()),
                    None if listing.archive.is_none() => {
                        return Err(Failure::Fatal(format!(
                            "{}: not listed in --manifest; refusing an unverifiable file",
                            f.path
                        )))
                    }
                    None => {}
                }
            }
        }
        Ok(listing)
    }

    async fn list_hf(
        &self,
        repo: &str,
        revision: &str,
        retry: &RetryPolicy,
    ) -> Result<Listing, Failure> {
        let mut url = reqwest::Url::parse(&self.hf_endpoint)
            .map_err(|e| Failure::Fatal(format!("HF_ENDPOINT: {e}")))?;
        let (kind, repo_path) = match repo.strip_prefix("datasets/") {
            Some(r) => ("datasets", r),
            None => ("models", repo),
        };
        {
            let mut segs = url
                .path_segments_mut()
                .map_err(|_| Failure::Fatal("HF_ENDPOINT: not a base URL".into()))?;
            segs.pop_if_empty().push("api").push(kind);
            for s in repo_path.split('/') {
                segs.push(s);
            }
            // One segment even for `refs/pr/1`: the API wants it percent-encoded.
            segs.push("revision").push(revision);
        }
        url.query_pairs_mut().append_pair("blobs", "true");
        let what = format!("list hf://{repo}@{revision}");
        let (commit_header, info) = retry
            .run(&what, || async {
                let mut req = self.client.get(url.clone());
                if let Some(t) = &self.token {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await.map_err(|e| map_reqwest(e, &what))?;
                if let Some(f) = classify_response(&resp, &what, HUB_AUTH_HINT) {
                    return Err(f);
                }
                let commit = resp
                    .headers()
                    .get("x-repo-commit")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = read_capped(resp, MAX_LISTING_BYTES, &what).await?;
                let info: HfRevision = serde_json::from_slice(&body)
                    .map_err(|e| Failure::Fatal(format!("{what}: bad JSON: {e}")))?;
                Ok((commit, info))
            })
            .await?;
        let commit = info
            .sha
            .or(commit_header)
            .ok_or_else(|| Failure::Fatal(format!("{what}: no commit sha in the answer")))?;
        let mut files = Vec::with_capacity(info.siblings.len());
        let base = self.hf_endpoint.trim_end_matches('/');
        let repo_url = if kind == "datasets" {
            format!("datasets/{repo_path}")
        } else {
            repo_path.to_string()
        };
        for s in info.siblings {
            let path =
                RelPath::parse(&s.rfilename).map_err(|e| Failure::Fatal(format!("{what}: {e}")))?;
            let (sha256, size, blob) = match s.lfs {
                Some(lfs) => (
                    Some(lfs.sha256.to_ascii_lowercase()),
                    lfs.size.or(s.size),
                    None,
                ),
                None => (None, s.size, s.blob_id),
            };
            let id = sha256.clone().or_else(|| blob.clone());
            let encoded: Vec<String> = path.as_str().split('/').map(encode_segment).collect();
            // Pinned to the commit so a push during the download cannot mix revisions.
            let url = format!("{base}/{repo_url}/resolve/{commit}/{}", encoded.join("/"));
            files.push(RemoteFile {
                path,
                expected: Expected {
                    size,
                    sha256,
                    git_blob_sha1: blob,
                    md5: None,
                },
                id,
                remote: Remote::Http {
                    url,
                    auth: self.token.clone().map_or(Auth::None, Auth::Bearer),
                },
            });
        }
        Ok(Listing {
            revision: commit,
            files,
            archive: None,
        })
    }

    async fn list_store(&self, url: &str, retry: &RetryPolicy) -> Result<Listing, Failure> {
        let store = self
            .store
            .clone()
            .ok_or_else(|| Failure::Fatal("object store not configured".into()))?;
        let what = format!("list {}", crate::log::redact_url(url));
        let prefix = self.store_prefix.clone();
        let metas = retry
            .run(&what, || async {
                let p = if prefix.as_ref().is_empty() {
                    None
                } else {
                    Some(&prefix)
                };
                store
                    .list(p)
                    .try_collect::<Vec<_>>()
                    .await
                    .map_err(|e| map_store(e, &what))
            })
            .await?;
        let is_s3 = url.starts_with("s3://");
        let mut files = Vec::new();
        let mut fingerprint = String::new();
        let single = metas.is_empty();
        let metas = if single {
            // The URL may name one object rather than a prefix.
            let head = retry
                .run(&what, || async {
                    object_store::ObjectStoreExt::head(store.as_ref(), &prefix)
                        .await
                        .map_err(|e| map_store(e, &what))
                })
                .await?;
            vec![head]
        } else {
            metas
        };
        for m in metas {
            let loc = m.location.as_ref();
            let rel = if single {
                loc.rsplit('/').next().unwrap_or(loc)
            } else {
                loc.strip_prefix(prefix.as_ref())
                    .map(|r| r.trim_start_matches('/'))
                    .unwrap_or(loc)
            };
            let path = RelPath::parse(rel).map_err(|e| Failure::Fatal(format!("{what}: {e}")))?;
            let etag = m
                .e_tag
                .as_deref()
                .map(|e| e.trim_matches('"').to_ascii_lowercase());
            let md5 = etag
                .clone()
                .filter(|e| is_s3 && e.len() == 32 && e.bytes().all(|b| b.is_ascii_hexdigit()));
            fingerprint.push_str(&format!(
                "{rel}\t{}\t{}\n",
                m.size,
                etag.as_deref().unwrap_or("")
            ));
            files.push(RemoteFile {
                path,
                expected: Expected {
                    size: Some(m.size),
                    sha256: None,
                    git_blob_sha1: None,
                    md5,
                },
                id: etag,
                remote: Remote::Object {
                    store: store.clone(),
                    path: m.location,
                },
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let revision = short_rev(&fingerprint);
        Ok(Listing {
            revision,
            files,
            archive: None,
        })
    }

    async fn list_http(
        &self,
        url: &str,
        archive: Option<ArchiveKind>,
        retry: &RetryPolicy,
    ) -> Result<Listing, Failure> {
        let what = format!("HEAD {}", crate::log::redact_url(url));
        let (size, etag, modified) = retry
            .run(&what, || async {
                let resp = self
                    .client
                    .head(url)
                    .send()
                    .await
                    .map_err(|e| map_reqwest(e, &what))?;
                if resp.status().as_u16() == 405 {
                    return Ok((None, None, None));
                }
                if let Some(f) = classify_response(&resp, &what, Auth::None.hint()) {
                    return Err(f);
                }
                let h = |n: &str| {
                    resp.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                let size = h("content-length").and_then(|v| v.parse::<u64>().ok());
                Ok((size, h("etag"), h("last-modified")))
            })
            .await?;
        let path_part = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| {
                u.path_segments()
                    .and_then(|mut s| s.next_back().map(str::to_string))
            })
            .unwrap_or_default();
        let name = if path_part.is_empty() {
            "download".to_string()
        } else {
            path_part
        };
        let path = RelPath::parse(&name).map_err(|e| Failure::Fatal(format!("{what}: {e}")))?;
        let revision = match &self.sha256 {
            Some(s) => s.chars().take(16).collect(),
            None => short_rev(&format!(
                "{}\t{size:?}\t{etag:?}\t{modified:?}",
                crate::log::redact_url(url)
            )),
        };
        let id = etag.map(|e| e.trim_matches('"').to_string());
        Ok(Listing {
            revision,
            files: vec![RemoteFile {
                path,
                expected: Expected {
                    size,
                    ..Default::default()
                },
                id,
                remote: Remote::Http {
                    url: url.to_string(),
                    auth: Auth::None,
                },
            }],
            archive,
        })
    }
}

/// A Hub listing larger than this is refused (a repo with 100k files is ~20 MiB of JSON).
const MAX_LISTING_BYTES: usize = 64 << 20;

/// Reads a response body, refusing one larger than `cap` (the declared length or the bytes
/// actually sent).
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
    what: &str,
) -> Result<Vec<u8>, Failure> {
    let too_big = || Failure::Fatal(format!("{what}: answer larger than {cap} bytes"));
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(piece) = resp.chunk().await.map_err(|e| map_reqwest(e, what))? {
        if body.len().saturating_add(piece.len()) > cap {
            return Err(too_big());
        }
        body.extend_from_slice(&piece);
    }
    Ok(body)
}

async fn list_local(root: &Path) -> Result<Listing, Failure> {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || list_local_blocking(&root))
        .await
        .map_err(|e| Failure::Fatal(format!("list: {e}")))?
}

fn list_local_blocking(root: &Path) -> Result<Listing, Failure> {
    let io = |e: std::io::Error, p: &Path| Failure::Fatal(format!("{}: {e}", p.display()));
    let meta = std::fs::metadata(root).map_err(|e| io(e, root))?;
    let mut found: Vec<(String, PathBuf, std::fs::Metadata)> = Vec::new();
    if meta.is_file() {
        let name = root
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("model")
            .to_string();
        found.push((name, root.to_path_buf(), meta));
    } else {
        let mut stack = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(|e| io(e, &dir))? {
                let entry = entry.map_err(|e| io(e, &dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let child_rel = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let ft = entry.file_type().map_err(|e| io(e, &entry.path()))?;
                if ft.is_dir() {
                    stack.push((entry.path(), child_rel));
                } else if ft.is_file() {
                    let m = entry.metadata().map_err(|e| io(e, &entry.path()))?;
                    found.push((child_rel, entry.path(), m));
                } else {
                    crate::warn!("skipping {} (not a regular file)", entry.path().display());
                }
            }
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    let mut fingerprint = String::new();
    let mut files = Vec::with_capacity(found.len());
    for (rel, full, m) in found {
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        fingerprint.push_str(&format!("{rel}\t{}\t{mtime}\n", m.len()));
        let path = RelPath::parse(&rel).map_err(Failure::Fatal)?;
        files.push(RemoteFile {
            path,
            expected: Expected {
                size: Some(m.len()),
                ..Default::default()
            },
            id: None,
            remote: Remote::Local(full),
        });
    }
    Ok(Listing {
        revision: short_rev(&fingerprint),
        files,
        archive: None,
    })
}

pub(crate) fn short_rev(fingerprint: &str) -> String {
    sha256_hex(fingerprint.as_bytes())
        .chars()
        .take(16)
        .collect()
}

pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(
            SourceSpec::parse("hf://org/name@v1", None).unwrap(),
            SourceSpec::Hf {
                repo: "org/name".into(),
                revision: "v1".into()
            }
        );
        assert_eq!(
            SourceSpec::parse("org/name", Some("abc")).unwrap(),
            SourceSpec::Hf {
                repo: "org/name".into(),
                revision: "abc".into()
            }
        );
        assert!(matches!(
            SourceSpec::parse("/data/m", None).unwrap(),
            SourceSpec::Local(_)
        ));
        assert!(matches!(
            SourceSpec::parse("file:///data/m", None).unwrap(),
            SourceSpec::Local(_)
        ));
        assert!(matches!(
            SourceSpec::parse("https://h/x.tar.gz?sig=1", None).unwrap(),
            SourceSpec::Http {
                archive: Some(ArchiveKind::TarGz),
                ..
            }
        ));
        assert!(matches!(
            SourceSpec::parse("s3://b/p", None).unwrap(),
            SourceSpec::Store { .. }
        ));
        assert!(SourceSpec::parse("hf://../x", None).is_err());
        assert!(SourceSpec::parse("ftp://x", None).is_err());
    }

    #[test]
    fn filters_apply_globs() {
        let f = Filters::new(
            &["*.json".into(), "*.safetensors".into()],
            &["original/*".into()],
        )
        .unwrap();
        assert!(f.accepts("config.json"));
        assert!(!f.accepts("model.bin"));
        assert!(!f.accepts("original/config.json"));
    }

    #[test]
    fn encodes_segments() {
        assert_eq!(encode_segment("a b+c.json"), "a%20b%2Bc.json");
    }
}
