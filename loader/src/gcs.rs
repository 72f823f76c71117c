//! Google Cloud Storage through its JSON API (`/storage/v1/b/{bucket}/o` to list,
//! `/download/storage/v1/b/{bucket}/o/{name}?alt=media&generation=N` to read, with `Range`),
//! fetched by the loader's own HTTP client like every other source.
//!
//! Not object_store's GCS client: it lists and reads through the XML API, which emulators such
//! as `gcp-storage-emulator` do not serve. Its credential chain is still what signs requests
//! (service account JSON via `GOOGLE_APPLICATION_CREDENTIALS` or `GOOGLE_SERVICE_ACCOUNT*`,
//! gcloud's application-default credentials, then the metadata server).
//! `STORAGE_EMULATOR_HOST` points every call at an emulator without credentials, as Google's
//! own client libraries do.

use base64::Engine as _;
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use serde::Deserialize;

use crate::digest::Expected;
use crate::retry::{classify_response, Failure, RetryPolicy};
use crate::safe_path::RelPath;
use crate::source::{
    encode_segment, map_reqwest, read_capped, short_rev, Auth, Listing, Remote, RemoteFile,
};

const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
/// One page of a listing (GCS sends at most 1,000 items, well under this).
const MAX_PAGE_BYTES: usize = 16 << 20;
/// A prefix with more objects than this is refused rather than held in memory.
const MAX_OBJECTS: usize = 100_000;

/// One `gs://bucket/prefix` source.
pub struct Bucket {
    endpoint: String,
    bucket: String,
    /// The object name or directory the URL names, without a trailing `/`.
    prefix: String,
    auth: Auth,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    items: Vec<Object>,
    #[serde(rename = "nextPageToken")]
    next_page_token: Option<String>,
}

#[derive(Deserialize)]
struct Object {
    name: String,
    /// A decimal string in the JSON API.
    #[serde(deserialize_with = "u64_or_string")]
    size: u64,
    generation: Option<String>,
    #[serde(rename = "md5Hash")]
    md5_hash: Option<String>,
}

fn u64_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        N(u64),
        S(String),
    }
    match Num::deserialize(d)? {
        Num::N(n) => Ok(n),
        Num::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// `STORAGE_EMULATOR_HOST` as Google's clients read it: `host:port` or a full URL.
fn emulator_endpoint(raw: &str) -> Option<String> {
    let raw = raw.trim().trim_end_matches('/');
    if raw.is_empty() {
        None
    } else if raw.contains("://") {
        Some(raw.to_string())
    } else {
        Some(format!("http://{raw}"))
    }
}

impl Bucket {
    /// Reads the bucket and prefix from `gs://bucket/prefix` and credentials from the
    /// environment. `GOOGLE_BASE_URL` moves the endpoint (as it does for object_store).
    pub fn from_env(url: &str) -> Result<Self, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("source: {e}"))?;
        let bucket = parsed
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| format!("source: no bucket in {url:?}"))?
            .to_string();
        let prefix = parsed.path().trim_matches('/').to_string();
        if let Some(endpoint) = std::env::var("STORAGE_EMULATOR_HOST")
            .ok()
            .and_then(|h| emulator_endpoint(&h))
        {
            return Ok(Self {
                endpoint,
                bucket,
                prefix,
                auth: Auth::None,
            });
        }
        let builder = GoogleCloudStorageBuilder::from_env().with_url(url);
        let endpoint = builder
            .get_config_value(&GoogleConfigKey::BaseUrl)
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
            .trim_end_matches('/')
            .to_string();
        let anonymous = builder
            .get_config_value(&GoogleConfigKey::SkipSignature)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let auth = if anonymous {
            Auth::None
        } else {
            let store = builder.build().map_err(|e| format!("source: {e}"))?;
            Auth::Google(store.credentials().clone())
        };
        Ok(Self {
            endpoint,
            bucket,
            prefix,
            auth,
        })
    }

    fn object_url(&self, api: &str, name: &str) -> String {
        format!(
            "{}/{api}/b/{}/o/{}",
            self.endpoint,
            encode_segment(&self.bucket),
            encode_segment(name)
        )
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        client: &reqwest::Client,
        url: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<T, Failure> {
        let mut url =
            reqwest::Url::parse(url).map_err(|e| Failure::Fatal(format!("{what}: {e}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let req = self.auth.apply(client.get(url), what).await?;
        let resp = req.send().await.map_err(|e| map_reqwest(e, what))?;
        if let Some(f) = classify_response(&resp, what, self.auth.hint()) {
            return Err(f);
        }
        let body = read_capped(resp, MAX_PAGE_BYTES, what).await?;
        serde_json::from_slice(&body).map_err(|e| Failure::Fatal(format!("{what}: bad JSON: {e}")))
    }

    /// Every object under the prefix (or the one object it names), each pinned to the
    /// generation listed so an overwrite during the download cannot mix revisions.
    pub async fn list(
        &self,
        client: &reqwest::Client,
        retry: &RetryPolicy,
        display: &str,
    ) -> Result<Listing, Failure> {
        let what = format!("list {display}");
        let list_url = format!(
            "{}/storage/v1/b/{}/o",
            self.endpoint,
            encode_segment(&self.bucket)
        );
        let dir = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut objects: Vec<Object> = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page: Page = retry
                .run(&what, || async {
                    let mut q = vec![("prefix", dir.as_str())];
                    if let Some(t) = &token {
                        q.push(("pageToken", t.as_str()));
                    }
                    self.get_json(client, &list_url, &q, &what).await
                })
                .await?;
            objects.extend(page.items.into_iter().filter(|o| !o.name.ends_with('/')));
            if objects.len() > MAX_OBJECTS {
                return Err(Failure::Fatal(format!(
                    "{what}: more than {MAX_OBJECTS} objects"
                )));
            }
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        let single = objects.is_empty();
        if single {
            // The URL may name one object rather than a prefix.
            let url = self.object_url("storage/v1", &self.prefix);
            let one: Object = retry
                .run(&what, || self.get_json(client, &url, &[], &what))
                .await?;
            objects.push(one);
        }
        let mut files = Vec::with_capacity(objects.len());
        let mut fingerprint = String::new();
        for o in objects {
            let rel = if single {
                o.name.rsplit('/').next().unwrap_or(&o.name)
            } else {
                o.name.strip_prefix(&dir).unwrap_or(&o.name)
            };
            let path = RelPath::parse(rel).map_err(|e| Failure::Fatal(format!("{what}: {e}")))?;
            let generation = o.generation.unwrap_or_default();
            // GCS publishes md5 as base64; composite objects have none.
            let md5 = o
                .md5_hash
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .filter(|d| d.len() == 16)
                .map(hex::encode);
            fingerprint.push_str(&format!("{rel}\t{}\t{generation}\n", o.size));
            let mut url = self.object_url("download/storage/v1", &o.name);
            url.push_str("?alt=media");
            if !generation.is_empty() {
                url.push_str(&format!("&generation={}", encode_segment(&generation)));
            }
            files.push(RemoteFile {
                path,
                expected: Expected {
                    size: Some(o.size),
                    md5: md5.clone(),
                    ..Default::default()
                },
                // A new write is a new generation, so the pair names the content.
                id: md5.or_else(|| Some(format!("{}#{generation}", o.name))),
                remote: Remote::Http {
                    url,
                    auth: self.auth.clone(),
                },
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Listing {
            revision: short_rev(&fingerprint),
            files,
            archive: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulator_host_accepts_host_port_or_url() {
        assert_eq!(
            emulator_endpoint("localhost:9023").as_deref(),
            Some("http://localhost:9023")
        );
        assert_eq!(
            emulator_endpoint("https://gcs.local:4443/").as_deref(),
            Some("https://gcs.local:4443")
        );
        assert_eq!(emulator_endpoint(" "), None);
    }

    #[test]
    fn object_sizes_parse_from_strings_and_numbers() {
        let p: Page = serde_json::from_str(
            r#"{"items":[{"name":"a","size":"12","generation":"7"},{"name":"b","size":3}],
               "nextPageToken":"t"}"#,
        )
        .unwrap();
        assert_eq!(p.items[0].size, 12);
        assert_eq!(p.items[1].size, 3);
        assert_eq!(p.next_page_token.as_deref(), Some("t"));
        assert!(serde_json::from_str::<Object>(r#"{"name":"a","size":"x"}"#).is_err());
    }
}
