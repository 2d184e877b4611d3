//! Opening the object store that holds blocks and indexes, from a URL.
//!
//! `file:///path` is a local (or shared) directory; `s3://bucket/prefix`, `az://container/prefix`
//! and `gs://bucket/prefix` are the clouds' stores, with credentials from each cloud's standard
//! environment (see `docs/operations.md`). Cloud clients retry transient failures (5xx,
//! resets, timeouts) with exponential backoff before an error reaches the caller.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

use crate::{Result, StorageError};

/// Where blocks live, parsed from a `--storage-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A directory.
    Local(PathBuf),
    /// An S3 (or S3-compatible) bucket, under a key prefix.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix (may be empty).
        prefix: String,
    },
    /// An Azure Blob container, under a prefix.
    Azure {
        /// Container name.
        container: String,
        /// Blob name prefix (may be empty).
        prefix: String,
    },
    /// A Google Cloud Storage bucket, under a prefix.
    Gcs {
        /// Bucket name.
        bucket: String,
        /// Object name prefix (may be empty).
        prefix: String,
    },
}

impl StoreLocation {
    /// Parses `file:///path`, `s3://bucket/prefix`, `az://container/prefix` (also
    /// `azure://`) or `gs://bucket/prefix`.
    pub fn parse(url: &str) -> Result<Self> {
        let invalid = |reason: &'static str| StorageError::InvalidStoreUrl { url: url.to_string(), reason };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| invalid("expected scheme://..."))?;
        if scheme == "file" {
            if rest.is_empty() || !rest.starts_with('/') {
                return Err(invalid("file URLs need an absolute path: file:///path"));
            }
            return Ok(Self::Local(PathBuf::from(rest)));
        }
        let (name, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if name.is_empty() {
            return Err(invalid("the bucket or container name is missing"));
        }
        let (name, prefix) = (name.to_string(), prefix.trim_matches('/').to_string());
        match scheme {
            "s3" | "s3a" => Ok(Self::S3 { bucket: name, prefix }),
            "az" | "azure" | "abfs" => Ok(Self::Azure { container: name, prefix }),
            "gs" => Ok(Self::Gcs { bucket: name, prefix }),
            _ => Err(invalid("supported schemes: file, s3, az, gs")),
        }
    }

    /// A short description for logs (no credentials ever appear in a location).
    pub fn describe(&self) -> String {
        match self {
            Self::Local(p) => format!("file://{}", p.display()),
            Self::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            Self::Azure { container, prefix } => format!("az://{container}/{prefix}"),
            Self::Gcs { bucket, prefix } => format!("gs://{bucket}/{prefix}"),
        }
    }
}

/// How cloud stores are reached.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Endpoint override (an S3-compatible server, an Azure emulator); plain `http://` is
    /// allowed only when the endpoint says so.
    pub endpoint: Option<String>,
}

/// Retries of cloud requests: exponential backoff from 100 ms up to 15 s between attempts,
/// for at most 10 attempts or 3 minutes.
fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: 10,
        retry_timeout: Duration::from_secs(180),
    }
}

/// Opens the store at `location`. Cloud credentials come from the environment (and, per
/// cloud, web identity / workload identity / instance metadata), as `docs/operations.md` lists.
pub fn open_store(location: &StoreLocation, options: &StoreOptions) -> Result<Arc<dyn ObjectStore>> {
    let endpoint = options.endpoint.clone();
    let plain_http = endpoint.as_deref().is_some_and(|e| e.starts_with("http://"));
    let (store, prefix): (Arc<dyn ObjectStore>, &str) = match location {
        StoreLocation::Local(dir) => return local_store(dir),
        StoreLocation::S3 { bucket, prefix } => {
            let mut b =
                with_aws_profile(AmazonS3Builder::from_env()).with_bucket_name(bucket).with_retry(retry_config());
            if let Some(e) = endpoint {
                b = b.with_endpoint(e).with_allow_http(plain_http);
            }
            (Arc::new(b.build()?), prefix)
        }
        StoreLocation::Azure { container, prefix } => {
            let mut b = MicrosoftAzureBuilder::from_env().with_container_name(container).with_retry(retry_config());
            if let Some(e) = endpoint {
                b = b.with_endpoint(e).with_allow_http(plain_http);
            }
            (Arc::new(b.build()?), prefix)
        }
        StoreLocation::Gcs { bucket, prefix } => {
            let b = GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket).with_retry(retry_config());
            (Arc::new(b.build()?), prefix)
        }
    };
    Ok(if prefix.is_empty() { store } else { Arc::new(PrefixStore::new(store, prefix)) })
}

/// Adds the keys (and region) of an AWS profile from the shared files (`~/.aws/credentials`,
/// `~/.aws/config`, or `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`) when the environment
/// holds no keys: profile `AWS_PROFILE`, else `default`. Web identity (IRSA), ECS and instance
/// credentials are left to the builder, which tries them when no keys are set.
fn with_aws_profile(builder: AmazonS3Builder) -> AmazonS3Builder {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if env("AWS_ACCESS_KEY_ID").is_some() {
        return builder;
    }
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
    let home = env("HOME").map(PathBuf::from).unwrap_or_default();
    let read = |var: &str, default: &str| {
        let path = env(var).map(PathBuf::from).unwrap_or_else(|| home.join(".aws").join(default));
        std::fs::read_to_string(path).unwrap_or_default()
    };
    let credentials = ini_section(&read("AWS_SHARED_CREDENTIALS_FILE", "credentials"), &profile);
    let config_section = if profile == "default" { profile.clone() } else { format!("profile {profile}") };
    let config = ini_section(&read("AWS_CONFIG_FILE", "config"), &config_section);
    let key = |k: &str| credentials.get(k).or_else(|| config.get(k)).cloned();
    let mut b = builder;
    match (key("aws_access_key_id"), key("aws_secret_access_key")) {
        (Some(id), Some(secret)) => {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
            if let Some(token) = key("aws_session_token") {
                b = b.with_token(token);
            }
        }
        _ if env("AWS_PROFILE").is_some() => {
            tracing::warn!(profile = %profile, "AWS profile has no keys in the shared files; trying other credentials");
        }
        _ => {}
    }
    if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
        if let Some(region) = config.get("region") {
            b = b.with_region(region);
        }
    }
    b
}

/// The `key = value` pairs of `[section]` in an INI text.
fn ini_section(text: &str, section: &str) -> std::collections::HashMap<String, String> {
    let mut current = None;
    let mut out = std::collections::HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = Some(name.trim().to_string());
        } else if current.as_deref() == Some(section) {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    out
}

/// A local-filesystem object store rooted at `dir` (created if missing).
pub fn local_store(dir: &FsPath) -> Result<Arc<dyn ObjectStore>> {
    std::fs::create_dir_all(dir)?;
    Ok(Arc::new(LocalFileSystem::new_with_prefix(dir)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ini_sections() {
        let text = "[default]\naws_access_key_id = A\n# note\n[profile dev]\nregion=eu-west-1\n[dev]\nx = y = z\n";
        assert_eq!(ini_section(text, "default").get("aws_access_key_id").map(String::as_str), Some("A"));
        assert_eq!(ini_section(text, "profile dev").get("region").map(String::as_str), Some("eu-west-1"));
        assert_eq!(ini_section(text, "dev").get("x").map(String::as_str), Some("y = z"));
        assert!(ini_section(text, "missing").is_empty());
    }

    #[test]
    fn parses_every_scheme() {
        assert_eq!(StoreLocation::parse("file:///var/blocks").unwrap(), StoreLocation::Local("/var/blocks".into()));
        assert_eq!(
            StoreLocation::parse("s3://bkt/a/b/").unwrap(),
            StoreLocation::S3 { bucket: "bkt".into(), prefix: "a/b".into() }
        );
        assert_eq!(
            StoreLocation::parse("az://c").unwrap(),
            StoreLocation::Azure { container: "c".into(), prefix: String::new() }
        );
        assert_eq!(
            StoreLocation::parse("gs://g/p").unwrap(),
            StoreLocation::Gcs { bucket: "g".into(), prefix: "p".into() }
        );
        for bad in ["file://relative", "s3://", "ftp://x/y", "nothing"] {
            assert!(StoreLocation::parse(bad).is_err(), "{bad}");
        }
    }
}
