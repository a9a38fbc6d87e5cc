//! Stored files (input pictures, generated outputs) behind an OpenDAL [`Operator`], so
//! local disk and S3-compatible object storage (S3, Tencent COS) are one code path. Keys
//! are always made by kiln (UUIDs and task ids), never taken from a request.
//!
//! A file kept in a bucket is private. How a client gets it is [`Links`]: kiln's own
//! `/files/{key}` URL (kiln streams the bytes), a presigned GET URL, or a CDN's URL
//! (`storage.public_base_url`); docs/storage.md says which when.

mod bucket;

use std::{ops::Range, time::Duration};

use bytes::Bytes;
use opendal::{ErrorKind, Operator, services};

use crate::config::{Config, ServeMode, StorageConfig};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no stored object `{0}`")]
    NotFound(String),
    #[error("storage backend failed")]
    Backend(#[from] opendal::Error),
}

pub type StorageResult<T> = Result<T, StorageError>;

/// Local files move through memory in pieces of this size.
const CHUNK: usize = 256 * 1024;

/// Writes to a bucket go in parts of this size: a file up to it is one `PutObject`, a
/// larger one a multipart upload (S3 refuses parts under 5 MiB but the last). It is also
/// what a write holds in memory at most, so a 100 MiB output never is.
pub const PART: usize = 8 * 1024 * 1024;

/// Objects never change under a key (they only disappear at retention), so any cache
/// may keep them; the same header as kiln's own `/files` answers.
const CACHE_CONTROL: &str = "public, max-age=86400, immutable";

#[derive(Clone, Debug)]
pub struct Storage {
    op: Operator,
    links: Links,
}

/// How clients reach a stored file.
#[derive(Clone, Debug)]
pub enum Links {
    /// Through kiln only: local files.
    Kiln,
    /// Objects in a bucket.
    Bucket {
        serve: ServeMode,
        presign_ttl: Duration,
        /// The CDN's base and the key prefix, when a CDN serves the bucket.
        public: Option<(url::Url, String)>,
    },
}

fn classify(key: &str, err: opendal::Error) -> StorageError {
    if err.kind() == ErrorKind::NotFound { StorageError::NotFound(key.to_owned()) } else { StorageError::Backend(err) }
}

fn unexpected(what: &'static str, err: impl std::error::Error + Send + Sync + 'static) -> StorageError {
    StorageError::Backend(opendal::Error::new(ErrorKind::Unexpected, what).set_source(err))
}

impl Storage {
    /// Builds the operator the configuration names.
    pub fn from_config(config: &Config) -> StorageResult<Self> {
        Self::open(config, bucket::http_client().map_err(|e| unexpected("cannot build the HTTP client", e))?)
    }

    /// Like [`Storage::from_config`], with the HTTP client a bucket is reached through
    /// given (tests route a COS bucket's host name to a local server with it).
    pub fn from_config_with_client(config: &Config, http: reqwest::Client) -> StorageResult<Self> {
        Self::open(config, http)
    }

    fn open(config: &Config, http: reqwest::Client) -> StorageResult<Self> {
        match &config.storage {
            StorageConfig::Fs { .. } => {
                let root = config.storage_root().unwrap_or_else(|| config.server.data_dir.join("files"));
                std::fs::create_dir_all(&root).map_err(|e| unexpected("cannot create storage root", e))?;
                let builder = services::Fs::default().root(&root.to_string_lossy());
                Ok(Self { op: Operator::new(builder)?, links: Links::Kiln })
            }
            StorageConfig::S3(settings) | StorageConfig::Cos(settings) => {
                let cos = matches!(config.storage, StorageConfig::Cos(_));
                let op = bucket::operator(settings, cos, http)?;
                let public = settings.public_base_url.clone().map(|base| (base, bucket::key_prefix(settings)));
                Ok(Self {
                    op,
                    links: Links::Bucket { serve: settings.serve, presign_ttl: settings.presign_ttl, public },
                })
            }
        }
    }

    pub fn from_operator(op: Operator) -> Self {
        Self { op, links: Links::Kiln }
    }

    fn is_bucket(&self) -> bool {
        matches!(self.links, Links::Bucket { .. })
    }

    pub async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> StorageResult<()> {
        let mut write = self.op.write_with(key, bytes).content_type(content_type);
        if self.is_bucket() {
            write = write.chunk(PART).cache_control(CACHE_CONTROL);
        }
        write.await.map(|_| ()).map_err(|e| classify(key, e))
    }

    /// Stores a local file by streaming it in chunks, never holding it whole in memory.
    /// In a bucket, a file larger than [`PART`] is a multipart upload; one that fails, or
    /// whose caller goes away (a task canceled, a lease lost), is aborted, so no parts
    /// are left behind to pay for.
    pub async fn put_file(&self, key: &str, file: std::fs::File, content_type: &str) -> StorageResult<()> {
        use tokio::io::AsyncReadExt;
        let mut file = tokio::fs::File::from_std(file);
        let mut open = self.op.writer_with(key).content_type(content_type);
        if self.is_bucket() {
            open = open.chunk(PART).cache_control(CACHE_CONTROL);
        }
        let mut guard = Unfinished { writer: Some(open.await.map_err(|e| classify(key, e))?), key: key.to_owned() };
        let copied: StorageResult<()> = async {
            let writer = guard.writer.as_mut().ok_or_else(|| unexpected("no writer", std::fmt::Error))?;
            loop {
                let mut chunk = bytes::BytesMut::with_capacity(CHUNK);
                let read = file.read_buf(&mut chunk).await.map_err(|e| unexpected("cannot read the upload", e))?;
                if read == 0 {
                    break;
                }
                writer.write(chunk.freeze()).await.map_err(|e| classify(key, e))?;
            }
            writer.close().await.map(|_| ()).map_err(|e| classify(key, e))
        }
        .await;
        let writer = guard.writer.take();
        if copied.is_err()
            && let Some(mut writer) = writer
            && let Err(err) = writer.abort().await
        {
            tracing::warn!(key, error = %err, "cannot abort a failed upload");
        }
        copied
    }

    pub async fn get(&self, key: &str) -> StorageResult<Bytes> {
        self.op.read(key).await.map(|b| b.to_bytes()).map_err(|e| classify(key, e))
    }

    /// Reads a byte range, as a stream of chunks. From a bucket it is one ranged GET
    /// whose body is passed on as it arrives.
    pub async fn stream(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> StorageResult<impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static> {
        let mut open = self.op.reader_with(key);
        if !self.is_bucket() {
            open = open.chunk(CHUNK);
        }
        let reader = open.await.map_err(|e| classify(key, e))?;
        reader.into_bytes_stream(range).await.map_err(|e| classify(key, e))
    }

    pub async fn delete(&self, key: &str) -> StorageResult<()> {
        self.op.delete(key).await.map_err(|e| classify(key, e))
    }

    /// Writes and removes a probe object: storage is reachable and writable.
    pub async fn check_writable(&self) -> StorageResult<()> {
        let key = format!(".probe/{}", uuid::Uuid::new_v4());
        self.op.write(&key, Bytes::from_static(b"ok")).await?;
        self.op.delete(&key).await?;
        Ok(())
    }

    /// The URL to hand out for a file instead of kiln's own `/files/{key}`: the CDN's
    /// when `public_base_url` is set, else a presigned GET URL when files are served by
    /// redirect. `None`: kiln's own URL.
    pub async fn link(&self, key: &str) -> StorageResult<Option<String>> {
        match &self.links {
            Links::Kiln => Ok(None),
            Links::Bucket { public: Some((base, prefix)), .. } => Ok(Some(public_url(base, prefix, key))),
            Links::Bucket { serve: ServeMode::Proxy, .. } => Ok(None),
            Links::Bucket { serve: ServeMode::Redirect, presign_ttl, .. } => {
                Ok(Some(self.presign(key, *presign_ttl).await?))
            }
        }
    }

    /// Where `GET /files/{key}` sends the client instead of streaming the file itself:
    /// with `serve = "redirect"`, the URL [`Storage::link`] hands out.
    pub async fn redirect(&self, key: &str) -> StorageResult<Option<String>> {
        match &self.links {
            Links::Bucket { serve: ServeMode::Redirect, .. } => self.link(key).await,
            _ => Ok(None),
        }
    }

    /// A presigned GET URL for a key, valid for `ttl`.
    pub async fn presign(&self, key: &str, ttl: Duration) -> StorageResult<String> {
        let request = self.op.presign_read(key, ttl).await.map_err(|e| classify(key, e))?;
        Ok(request.uri().to_string())
    }

    /// A stored object's size and its backend's ETag (a multipart upload's ends in
    /// `-{parts}` on S3).
    pub async fn stat(&self, key: &str) -> StorageResult<(u64, Option<String>)> {
        let meta = self.op.stat(key).await.map_err(|e| classify(key, e))?;
        Ok((meta.content_length(), meta.etag().map(str::to_owned)))
    }
}

/// A write under way. Dropped before it finished (its future dropped), it aborts the
/// write in the background: otherwise a multipart upload would stay open in the bucket.
struct Unfinished {
    writer: Option<opendal::Writer>,
    key: String,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let Some(mut writer) = self.writer.take() else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let key = std::mem::take(&mut self.key);
        runtime.spawn(async move {
            if let Err(err) = writer.abort().await {
                tracing::warn!(key, error = %err, "cannot abort an interrupted upload");
            }
        });
    }
}

/// `{base}/{prefix}{key}`: the CDN serves the bucket from its top, so the key prefix is
/// part of the path.
fn public_url(base: &url::Url, prefix: &str, key: &str) -> String {
    format!("{}/{prefix}{key}", base.as_str().trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_url_is_the_base_the_prefix_and_the_key() {
        let base = url::Url::parse("https://cdn.example.com/assets/").expect("url");
        assert_eq!(public_url(&base, "kiln/", "pictures/a.png"), "https://cdn.example.com/assets/kiln/pictures/a.png");
        let bare = url::Url::parse("https://cdn.example.com").expect("url");
        assert_eq!(public_url(&bare, "", "images/t/0.png"), "https://cdn.example.com/images/t/0.png");
    }
}
