//! Stored files (input pictures, generated outputs) behind an OpenDAL [`Operator`], so
//! local disk and S3-compatible object storage are one code path. Keys are always made
//! by kiln (UUIDs and task ids), never taken from a request.

use std::ops::Range;

use bytes::Bytes;
use opendal::{ErrorKind, Operator, services};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no stored object `{0}`")]
    NotFound(String),
    #[error("storage backend failed")]
    Backend(#[from] opendal::Error),
}

pub type StorageResult<T> = Result<T, StorageError>;

/// Files move through memory in pieces of this size.
const CHUNK: usize = 256 * 1024;

#[derive(Clone, Debug)]
pub struct Storage {
    op: Operator,
}

fn classify(key: &str, err: opendal::Error) -> StorageError {
    if err.kind() == ErrorKind::NotFound { StorageError::NotFound(key.to_owned()) } else { StorageError::Backend(err) }
}

impl Storage {
    /// Builds the operator the configuration names.
    pub fn from_config(config: &Config) -> StorageResult<Self> {
        let root = config.storage_root();
        std::fs::create_dir_all(&root).map_err(|e| {
            StorageError::Backend(
                opendal::Error::new(ErrorKind::Unexpected, "cannot create storage root").set_source(e),
            )
        })?;
        let builder = services::Fs::default().root(&root.to_string_lossy());
        Ok(Self { op: Operator::new(builder)? })
    }

    pub fn from_operator(op: Operator) -> Self {
        Self { op }
    }

    pub async fn put(&self, key: &str, bytes: Bytes, content_type: &str) -> StorageResult<()> {
        self.op.write_with(key, bytes).content_type(content_type).await.map(|_| ()).map_err(|e| classify(key, e))
    }

    /// Stores a local file by streaming it in chunks, never holding it whole in memory.
    pub async fn put_file(&self, key: &str, file: std::fs::File, content_type: &str) -> StorageResult<()> {
        use tokio::io::AsyncReadExt;
        let mut file = tokio::fs::File::from_std(file);
        let mut writer = self.op.writer_with(key).content_type(content_type).await.map_err(|e| classify(key, e))?;
        loop {
            let mut chunk = bytes::BytesMut::with_capacity(CHUNK);
            let read = file.read_buf(&mut chunk).await.map_err(|e| {
                StorageError::Backend(
                    opendal::Error::new(ErrorKind::Unexpected, "cannot read the upload").set_source(e),
                )
            })?;
            if read == 0 {
                break;
            }
            writer.write(chunk.freeze()).await.map_err(|e| classify(key, e))?;
        }
        writer.close().await.map(|_| ()).map_err(|e| classify(key, e))
    }

    pub async fn get(&self, key: &str) -> StorageResult<Bytes> {
        self.op.read(key).await.map(|b| b.to_bytes()).map_err(|e| classify(key, e))
    }

    /// Reads a byte range, as a stream of chunks.
    pub async fn stream(
        &self,
        key: &str,
        range: Range<u64>,
    ) -> StorageResult<impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static> {
        let reader = self.op.reader_with(key).chunk(CHUNK).await.map_err(|e| classify(key, e))?;
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
}
