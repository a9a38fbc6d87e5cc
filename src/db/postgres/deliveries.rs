//! Outbound webhook deliveries in PostgreSQL. A claim is one statement whose choice
//! skips the rows another process is claiming (`FOR UPDATE SKIP LOCKED`), so two
//! senders never take the same delivery at once.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{PostgresDatabase, begin};
use crate::{
    db::{
        DbResult, DeliveryRepo, NextStep,
        rows::{self, millis, now_ms, to_time},
    },
    deliveries::{Attempt, Delivery, NewDelivery},
    tasks::TaskId,
};

#[async_trait]
impl DeliveryRepo for PostgresDatabase {
    async fn insert_delivery(&self, delivery: &NewDelivery) -> DbResult<bool> {
        let created = delivery.created_at.timestamp_millis();
        let done = sqlx::query(
            "INSERT INTO webhook_deliveries (id, task_id, owner_id, url, event, payload, status, next_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7, $7) ON CONFLICT (task_id, event, url) DO NOTHING",
        )
        .bind(delivery.id.to_string())
        .bind(delivery.task_id.to_string())
        .bind(delivery.owner_id.map(|o| o.to_string()))
        .bind(&delivery.url)
        .bind(delivery.event.as_str())
        .bind(&delivery.payload)
        .bind(created)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_deliveries(&self, owner: &str, lease: Duration, limit: u32) -> DbResult<Vec<Delivery>> {
        let now = now_ms();
        let rows = sqlx::query(
            "UPDATE webhook_deliveries SET lease_owner = $1, lease_until = $2 \
             WHERE id IN (SELECT id FROM webhook_deliveries \
                 WHERE status = 'pending' AND next_at <= $3 AND (lease_until IS NULL OR lease_until <= $3) \
                 ORDER BY next_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING *",
        )
        .bind(owner)
        .bind(now.saturating_add(millis(lease)))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = rows.iter().map(rows::delivery).collect::<DbResult<Vec<_>>>()?;
        // RETURNING gives no order.
        claimed.sort_by_key(|d| d.next_at);
        Ok(claimed)
    }

    async fn record_attempt(&self, id: Uuid, owner: &str, attempt: &Attempt, next: NextStep) -> DbResult<bool> {
        let (status, next_at, finished_at) = next.recorded();
        let mut tx = begin(&self.pool).await?;
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, at, status_code, error, duration_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.to_string())
        .bind(attempt.at.timestamp_millis())
        .bind(attempt.status_code.map(i64::from))
        .bind(&attempt.error)
        .bind(i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        let held = sqlx::query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, status = $1, next_at = $2, finished_at = $3, \
                 lease_owner = NULL, lease_until = NULL \
             WHERE id = $4 AND lease_owner = $5 AND status = 'pending'",
        )
        .bind(status.as_str())
        .bind(next_at)
        .bind(finished_at)
        .bind(id.to_string())
        .bind(owner)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !held {
            // Another sender took the delivery over; the count still covers this attempt.
            sqlx::query("UPDATE webhook_deliveries SET attempts = attempts + 1 WHERE id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(held)
    }

    async fn deliveries_for_task(&self, task: TaskId) -> DbResult<Vec<(Delivery, Vec<Attempt>)>> {
        let rows = sqlx::query("SELECT * FROM webhook_deliveries WHERE task_id = $1 ORDER BY created_at, id")
            .bind(task.to_string())
            .fetch_all(&self.pool)
            .await?;
        let attempts = sqlx::query(
            "SELECT a.delivery_id, a.at, a.status_code, a.error, a.duration_ms FROM webhook_attempts a \
             JOIN webhook_deliveries d ON d.id = a.delivery_id WHERE d.task_id = $1 ORDER BY a.at, a.rowid",
        )
        .bind(task.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows::deliveries_with_attempts(&rows, &attempts)
    }

    async fn finished_without_delivery(&self, since: DateTime<Utc>) -> DbResult<Vec<TaskId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM tasks t WHERE t.webhook_url IS NOT NULL AND t.finished_at >= $1 \
                 AND t.status IN ('succeeded', 'failed', 'canceled') \
                 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.task_id = t.id) \
             ORDER BY t.finished_at LIMIT 1000",
        )
        .bind(since.timestamp_millis())
        .fetch_all(&self.pool)
        .await?;
        ids.iter().map(|id| Ok(TaskId(rows::parse_uuid(id)?))).collect()
    }

    async fn next_delivery_due(&self) -> DbResult<Option<DateTime<Utc>>> {
        let due: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(GREATEST(next_at, COALESCE(lease_until, 0))) FROM webhook_deliveries WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(due.map(to_time))
    }

    async fn prune_deliveries(&self, before: DateTime<Utc>) -> DbResult<u64> {
        // The attempts go with their delivery (ON DELETE CASCADE).
        let done =
            sqlx::query("DELETE FROM webhook_deliveries WHERE status IN ('delivered', 'failed') AND finished_at < $1")
                .bind(before.timestamp_millis())
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }
}
