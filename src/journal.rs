//! Writing files to storage so that a crash never leaves one that no record points to.
//!
//! A write is noted in the database ([`crate::db::JournalRepo`]) before it starts, and
//! the transaction that records the file — a picture, an artifact — clears the note. A
//! process killed between the write and the record leaves the note behind; [`sweep`]
//! (at start-up and in the daily retention run) deletes the file it names. A write whose
//! record is refused (the task ended meanwhile) is deleted at once by [`abandon`].
//!
//! Uploads are spooled to unnamed temporary files, which the operating system removes
//! with the process; [`sweep_spool`] removes the named ones a filesystem without
//! unnamed files can leave.

use std::{path::Path, time::Duration};

use bytes::Bytes;
use chrono::Utc;

use crate::{
    db::Db,
    storage::{Storage, StorageError},
};

/// What to write: bytes in memory, or a spooled file streamed from disk.
pub enum Body {
    Bytes(Bytes),
    File(std::fs::File),
}

/// Notes the write, then writes. On failure the partial file is deleted and the note
/// cleared; the note stays only when the process dies.
pub async fn write(db: &Db, storage: &Storage, key: &str, body: Body, content_type: &str) -> anyhow::Result<()> {
    db.begin_file(key).await?;
    let written = match body {
        Body::Bytes(bytes) => storage.put(key, bytes, content_type).await,
        Body::File(file) => storage.put_file(key, file, content_type).await,
    };
    if let Err(err) = written {
        abandon(db, storage, key).await;
        return Err(err.into());
    }
    Ok(())
}

/// Deletes a written file whose record will not be made, unless a record references its
/// key after all, and clears its note. Failures are logged: the note then stays for the
/// sweep.
pub async fn abandon(db: &Db, storage: &Storage, key: &str) {
    match db.find_file(key).await {
        Ok(Some(_)) => {}
        Ok(None) => match storage.delete(key).await {
            Ok(()) | Err(StorageError::NotFound(_)) => {}
            Err(err) => {
                tracing::warn!(key, error = %err, "cannot delete an unrecorded file; the next sweep will");
                return;
            }
        },
        Err(err) => {
            tracing::warn!(key, error = %err, "cannot check an unrecorded file; the next sweep will");
            return;
        }
    }
    if let Err(err) = db.forget_file(key).await {
        tracing::warn!(key, error = %err, "cannot clear the note of an unrecorded file");
    }
}

/// Deletes the files of notes older than `older_than` that no record references, and
/// clears the notes. Returns how many files were deleted.
///
/// A note younger than `older_than` may belong to a write still in progress in another
/// process; at the start of the only process that uses the database, every note is a
/// leftover and `older_than` is zero.
pub async fn sweep(db: &Db, storage: &Storage, older_than: Duration) -> anyhow::Result<usize> {
    let cutoff = Utc::now() - chrono::Duration::from_std(older_than)?;
    let keys = db.pending_files_before(cutoff).await?;
    let mut deleted = 0;
    for key in &keys {
        if db.find_file(key).await?.is_none() {
            match storage.delete(key).await {
                Ok(()) => deleted += 1,
                Err(StorageError::NotFound(_)) => {}
                Err(err) => {
                    tracing::warn!(key, error = %err, "cannot delete a file left by a crash");
                    continue;
                }
            }
        }
        db.forget_file(key).await?;
    }
    if !keys.is_empty() {
        tracing::info!(notes = keys.len(), deleted, "files left by an interrupted write were removed");
    }
    Ok(deleted)
}

/// Removes files older than `older_than` from the upload spool directory.
pub fn sweep_spool(dir: &Path, older_than: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= older_than);
        if old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}
