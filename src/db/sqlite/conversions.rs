//! Conversions on SQLite: the lease on one (task, format) and how it ended
//! (`ConversionRepo`).

use std::time::Duration;

use async_trait::async_trait;

use super::SqliteDatabase;
use crate::{
    db::{
        ConversionClaim, ConversionEnd, ConversionRepo, DbResult,
        rows::{self, now_ms},
    },
    tasks::TaskId,
};

#[async_trait]
impl ConversionRepo for SqliteDatabase {
    async fn begin_conversion(
        &self,
        task: TaskId,
        format: &str,
        source_sha256: &str,
        holder: &str,
        lease: Duration,
    ) -> DbResult<ConversionClaim> {
        let now = now_ms();
        // One statement takes it when it is free (one writer connection, so the statements of one call do not interleave with another's).
        let taken: Option<String> = sqlx::query_scalar(
            "INSERT INTO conversions (task_id, format, status, holder, lease_expires_at, source_sha256, \
             permanent, attempts, updated_at) VALUES (?1, ?2, 'running', ?3, ?4, ?5, 0, 1, ?6) \
             ON CONFLICT (task_id, format) DO UPDATE SET status = 'running', holder = excluded.holder, \
             lease_expires_at = excluded.lease_expires_at, source_sha256 = excluded.source_sha256, \
             error_code = NULL, error_message = NULL, permanent = 0, attempts = conversions.attempts + 1, \
             updated_at = excluded.updated_at \
             WHERE conversions.source_sha256 <> excluded.source_sha256 \
             OR (conversions.status = 'failed' AND conversions.permanent = 0) \
             OR (conversions.status = 'running' \
                 AND (conversions.holder = excluded.holder OR conversions.lease_expires_at < ?6)) \
             RETURNING holder",
        )
        .bind(task.to_string())
        .bind(format)
        .bind(holder)
        .bind(now.saturating_add(rows::millis(lease)))
        .bind(source_sha256)
        .bind(now)
        .fetch_optional(&self.writer)
        .await?;
        if taken.as_deref() == Some(holder) {
            return Ok(ConversionClaim::Taken);
        }
        let row: Option<(String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT status, error_code, error_message FROM conversions WHERE task_id = ?1 AND format = ?2",
        )
        .bind(task.to_string())
        .bind(format)
        .fetch_optional(&self.writer)
        .await?;
        Ok(ConversionClaim::not_taken(row))
    }

    async fn renew_conversion(&self, task: TaskId, format: &str, holder: &str, lease: Duration) -> DbResult<bool> {
        let now = now_ms();
        let renewed = sqlx::query(
            "UPDATE conversions SET lease_expires_at = ?1, updated_at = ?2 \
             WHERE task_id = ?3 AND format = ?4 AND holder = ?5 AND status = 'running'",
        )
        .bind(now.saturating_add(rows::millis(lease)))
        .bind(now)
        .bind(task.to_string())
        .bind(format)
        .bind(holder)
        .execute(&self.writer)
        .await?;
        Ok(renewed.rows_affected() == 1)
    }

    async fn end_conversion(&self, task: TaskId, format: &str, holder: &str, end: ConversionEnd<'_>) -> DbResult<()> {
        let (status, code, message, permanent) = match end {
            ConversionEnd::Done => ("done", None, None, false),
            ConversionEnd::Failed { code, message, permanent } => ("failed", Some(code), Some(message), permanent),
        };
        sqlx::query(
            "UPDATE conversions SET status = ?1, holder = NULL, lease_expires_at = NULL, error_code = ?2, \
             error_message = ?3, permanent = ?4, updated_at = ?5 \
             WHERE task_id = ?6 AND format = ?7 AND holder = ?8 AND status = 'running'",
        )
        .bind(status)
        .bind(code)
        .bind(message)
        .bind(i32::from(permanent))
        .bind(now_ms())
        .bind(task.to_string())
        .bind(format)
        .bind(holder)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn list_conversions(&self, task: TaskId) -> DbResult<Vec<(String, ConversionClaim)>> {
        let rows: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(crate::db::LIST_CONVERSIONS)
            .bind(task.to_string())
            .bind(now_ms())
            .fetch_all(&self.reader)
            .await?;
        Ok(rows.into_iter().filter_map(ConversionClaim::listed).collect())
    }
}
