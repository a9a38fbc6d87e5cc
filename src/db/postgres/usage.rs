//! Credits on PostgreSQL: the reservation made in the transaction that queues a task, the
//! settlement made in the one that ends it, and the reads of prices and usage.

use async_trait::async_trait;
use sqlx::{PgConnection, Postgres};

use super::{PostgresDatabase, begin};
use crate::{
    db::{
        Activity, Billing, DbResult, Enqueued, Price, UsageFilter, UsageRecord, UsageRepo, UsageTotals, listing,
        rows::{self, now_ms},
        usage::{Settlement, task_price},
    },
    tasks::{NewTask, Task},
};

/// Whether queueing `task` must check the owner's active-task limit or reserve credits
/// (then [`reserve`] does, under locks); when it need not, the task is queued in one
/// statement. An anonymous or free caller needs neither.
pub(super) async fn needs_reservation(pool: &sqlx::PgPool, task: &NewTask, billing: &Billing) -> DbResult<bool> {
    if billing.max_active.is_some() && task.owner_id.is_some() {
        return Ok(true);
    }
    if billing.payer.is_none() {
        return Ok(false);
    }
    let (per_task, per_image): (i64, i64) = sqlx::query_as("SELECT per_task, per_image FROM prices WHERE model = $1")
        .bind(&task.model)
        .fetch_optional(pool)
        .await?
        .unwrap_or((0, 0));
    Ok(task_price(per_task, per_image, billing.images) > 0)
}

/// Checks the owner's active-task limit (not counting the task itself, already
/// inserted) and reserves the task's price. `Err` carries the refusal; the caller rolls
/// back by dropping the transaction.
pub(super) async fn reserve(
    conn: &mut PgConnection,
    task: &NewTask,
    billing: &Billing,
) -> DbResult<Result<(), Enqueued>> {
    if let (Some(limit), Some(owner)) = (billing.max_active, task.owner_id) {
        // The owner's row stays locked to the end: another process admitting a task of
        // the same owner counts after this one commits, so the limit holds exactly.
        sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE").bind(owner.to_string()).execute(&mut *conn).await?;
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tasks WHERE owner_id = $1 AND status IN ('queued', 'running') AND id != $2",
        )
        .bind(owner.to_string())
        .bind(task.id.to_string())
        .fetch_one(&mut *conn)
        .await?;
        if active >= i64::from(limit) {
            return Ok(Err(Enqueued::TooManyActive { limit }));
        }
    }
    let (per_task, per_image): (i64, i64) = sqlx::query_as("SELECT per_task, per_image FROM prices WHERE model = $1")
        .bind(&task.model)
        .fetch_optional(&mut *conn)
        .await?
        .unwrap_or((0, 0));
    // A 3D task asks for no images (`billing.images` is 0), so a per-image price never
    // makes it look more expensive than it can be.
    let price = task_price(per_task, per_image, billing.images);
    let reserved = match billing.payer {
        Some(payer) if price > 0 => {
            let left: Option<i64> = sqlx::query_scalar(
                "UPDATE users SET balance = balance - $1, updated_at = $3 WHERE id = $2 AND balance >= $1 RETURNING balance",
            )
            .bind(price)
            .bind(payer.to_string())
            .bind(now_ms())
            .fetch_optional(&mut *conn)
            .await?;
            if left.is_none() {
                let balance: i64 = sqlx::query_scalar("SELECT balance FROM users WHERE id = $1")
                    .bind(payer.to_string())
                    .fetch_optional(&mut *conn)
                    .await?
                    .unwrap_or(0);
                return Ok(Err(Enqueued::InsufficientQuota { balance, price }));
            }
            if let Some(token) = billing.token {
                let spent: Option<i64> = sqlx::query_scalar(
                    "UPDATE api_tokens SET spent = spent + $1 WHERE id = $2 \
                         AND (spend_cap IS NULL OR spent + $1 <= spend_cap) RETURNING spent",
                )
                .bind(price)
                .bind(token.to_string())
                .fetch_optional(&mut *conn)
                .await?;
                if spent.is_none() {
                    let (cap, spent): (Option<i64>, i64) =
                        sqlx::query_as("SELECT spend_cap, spent FROM api_tokens WHERE id = $1")
                            .bind(token.to_string())
                            .fetch_optional(&mut *conn)
                            .await?
                            .unwrap_or((None, 0));
                    return Ok(Err(Enqueued::SpendCapReached { cap: cap.unwrap_or(0), spent, price }));
                }
            }
            price
        }
        _ => 0,
    };
    sqlx::query(
        "INSERT INTO usage (task_id, user_id, token_id, channel, model, kind, per_task, per_image, reserved, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(task.id.to_string())
    .bind(task.owner_id.map(|u| u.to_string()))
    .bind(task.token_id.map(|u| u.to_string()))
    .bind(&task.channel)
    .bind(&task.model)
    .bind(task.kind.as_str())
    .bind(if reserved > 0 { per_task } else { 0 })
    .bind(if reserved > 0 { per_image } else { 0 })
    .bind(reserved)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(Ok(()))
}

/// Settles a task's usage in the transaction that ended it: a succeeded task is
/// charged its price (per task, plus per image made, never more than was reserved),
/// anything else nothing; the rest of the reservation goes back to the payer's balance
/// and the token's cap. A task is settled once: its record's `outcome` is set here.
pub(super) async fn settle(conn: &mut PgConnection, task: &Task, images: u32) -> DbResult<()> {
    let row = sqlx::query(
        "SELECT user_id, token_id, per_task, per_image, reserved FROM usage WHERE task_id = $1 AND outcome IS NULL",
    )
    .bind(task.id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(()) };
    let reservation = rows::reservation(&row)?;
    let settlement = Settlement::of(task, &reservation, images);
    let refund = settlement.refund;
    if refund > 0 {
        if let Some(user) = &reservation.user_id {
            sqlx::query("UPDATE users SET balance = balance + $1, updated_at = $3 WHERE id = $2")
                .bind(refund)
                .bind(user)
                .bind(now_ms())
                .execute(&mut *conn)
                .await?;
        }
        if let Some(token) = &reservation.token_id {
            sqlx::query("UPDATE api_tokens SET spent = GREATEST(spent - $1, 0) WHERE id = $2")
                .bind(refund)
                .bind(token)
                .execute(&mut *conn)
                .await?;
        }
    }
    sqlx::query(
        "UPDATE usage SET charged = $1, outcome = $2, queue_ms = $3, run_ms = $4, upstream_id = $5, finished_at = $6 \
         WHERE task_id = $7",
    )
    .bind(settlement.charged)
    .bind(task.status.as_str())
    .bind(settlement.queue_ms)
    .bind(settlement.run_ms)
    .bind(&task.provider_job_id)
    .bind(settlement.finished_at)
    .bind(task.id.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[async_trait]
impl UsageRepo for PostgresDatabase {
    async fn activity(&self, since: chrono::DateTime<chrono::Utc>) -> DbResult<Activity> {
        const HOUR: i64 = 3_600_000;
        let since = since.timestamp_millis();
        let rows = sqlx::query(
            "SELECT (created_at / $2) * $2 AS hour, model, COALESCE(outcome, 'pending') AS outcome, COUNT(*) AS n \
             FROM usage WHERE created_at >= $1 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .bind(since)
        .bind(HOUR)
        .fetch_all(&self.pool)
        .await?;
        let tasks = rows.iter().map(rows::hourly_tasks).collect::<DbResult<Vec<_>>>()?;
        let rows = sqlx::query(
            "SELECT (finished_at / $2) * $2 AS hour, SUM(charged)::BIGINT AS credits FROM usage \
             WHERE finished_at >= $1 AND charged > 0 GROUP BY 1 ORDER BY 1",
        )
        .bind(since)
        .bind(HOUR)
        .fetch_all(&self.pool)
        .await?;
        let credits = rows.iter().map(rows::hourly_credits).collect::<DbResult<Vec<_>>>()?;
        let rows = sqlx::query(
            "SELECT channel, run_ms FROM usage WHERE finished_at >= $1 AND run_ms IS NOT NULL ORDER BY channel, run_ms",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        Ok(Activity { tasks, credits, run_times: rows::run_times(&rows)? })
    }

    async fn list_prices(&self) -> DbResult<Vec<Price>> {
        let rows =
            sqlx::query("SELECT model, per_task, per_image FROM prices ORDER BY model").fetch_all(&self.pool).await?;
        rows.iter().map(rows::price).collect()
    }

    async fn set_price(&self, price: &Price) -> DbResult<()> {
        let mut tx = begin(&self.pool).await?;
        if price.per_task == 0 && price.per_image == 0 {
            sqlx::query("DELETE FROM prices WHERE model = $1").bind(&price.model).execute(&mut *tx).await?;
        } else {
            sqlx::query(
                "INSERT INTO prices (model, per_task, per_image, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (model) DO UPDATE SET per_task = $2, per_image = $3, updated_at = $4",
            )
            .bind(&price.model)
            .bind(price.per_task)
            .bind(price.per_image)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_usage(&self, filter: &UsageFilter) -> DbResult<Vec<UsageRecord>> {
        let rows = listing::usage_records::<Postgres>(filter).build().fetch_all(&self.pool).await?;
        rows.iter().map(rows::usage_record).collect()
    }

    async fn usage_totals(&self, filter: &UsageFilter) -> DbResult<UsageTotals> {
        let mut query = listing::usage::<Postgres>(
            "SELECT COUNT(*) AS tasks, \
                 COUNT(*) FILTER (WHERE u.outcome = 'succeeded') AS succeeded, \
                 COUNT(*) FILTER (WHERE u.outcome = 'failed') AS failed, \
                 COUNT(*) FILTER (WHERE u.outcome = 'canceled') AS canceled, \
                 COALESCE(SUM(u.charged), 0)::BIGINT AS charged FROM usage u WHERE 1 = 1",
            filter,
        );
        let row = query.build().fetch_one(&self.pool).await?;
        rows::usage_totals(&row)
    }
}
