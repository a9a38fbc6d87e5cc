//! Credits on PostgreSQL: the reservation made in the transaction that queues a task, the
//! settlement made in the one that ends it, and the reads of prices and usage.

use async_trait::async_trait;
use sqlx::{PgConnection, Postgres, Row, postgres::PgRow};

use super::{PostgresDatabase, begin, now_ms, opt_time, opt_uuid, parse_uuid, to_time};
use crate::{
    db::{
        Activity, Billing, DbResult, Enqueued, HourlyCredits, HourlyTasks, Price, UsageFilter, UsageRecord, UsageRepo,
        UsageTotals,
    },
    tasks::{NewTask, Task, TaskId, TaskStatus},
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
    Ok(per_task.saturating_add(per_image.saturating_mul(i64::from(billing.images))) > 0)
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
    let price = per_task.saturating_add(per_image.saturating_mul(i64::from(billing.images)));
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
    let reserved: i64 = row.try_get("reserved")?;
    let charged = if task.status == TaskStatus::Succeeded {
        let per_task: i64 = row.try_get("per_task")?;
        let per_image: i64 = row.try_get("per_image")?;
        // The per-image price is for the images a text-to-image task was asked for, not
        // for a 3D task's preview pictures.
        let images = if task.kind == crate::tasks::TaskKind::TextToImage { images } else { 0 };
        per_task.saturating_add(per_image.saturating_mul(i64::from(images))).min(reserved)
    } else {
        0
    };
    let refund = reserved - charged;
    if refund > 0 {
        if let Some(user) = row.try_get::<Option<String>, _>("user_id")? {
            sqlx::query("UPDATE users SET balance = balance + $1, updated_at = $3 WHERE id = $2")
                .bind(refund)
                .bind(user)
                .bind(now_ms())
                .execute(&mut *conn)
                .await?;
        }
        if let Some(token) = row.try_get::<Option<String>, _>("token_id")? {
            sqlx::query("UPDATE api_tokens SET spent = GREATEST(spent - $1, 0) WHERE id = $2")
                .bind(refund)
                .bind(token)
                .execute(&mut *conn)
                .await?;
        }
    }
    let created = task.created_at.timestamp_millis();
    let finished = task.finished_at.map(|t| t.timestamp_millis()).unwrap_or_else(now_ms);
    let started = task.started_at.map(|t| t.timestamp_millis());
    sqlx::query(
        "UPDATE usage SET charged = $1, outcome = $2, queue_ms = $3, run_ms = $4, upstream_id = $5, finished_at = $6 \
         WHERE task_id = $7",
    )
    .bind(charged)
    .bind(task.status.as_str())
    .bind((started.unwrap_or(finished) - created).max(0))
    .bind(started.map(|s| (finished - s).max(0)))
    .bind(&task.provider_job_id)
    .bind(finished)
    .bind(task.id.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn record_from_row(row: &PgRow) -> DbResult<UsageRecord> {
    let task: String = row.try_get("task_id")?;
    Ok(UsageRecord {
        task_id: TaskId(parse_uuid(&task)?),
        user_id: opt_uuid(row.try_get("user_id")?)?,
        username: row.try_get("username")?,
        token_id: opt_uuid(row.try_get("token_id")?)?,
        token_name: row.try_get("token_name")?,
        channel: row.try_get("channel")?,
        model: row.try_get("model")?,
        kind: row.try_get("kind")?,
        reserved: row.try_get("reserved")?,
        charged: row.try_get("charged")?,
        outcome: row.try_get("outcome")?,
        error_code: row.try_get("error_code")?,
        queue_ms: row.try_get("queue_ms")?,
        run_ms: row.try_get("run_ms")?,
        upstream_id: row.try_get("upstream_id")?,
        created_at: to_time(row.try_get("created_at")?),
        finished_at: opt_time(row.try_get("finished_at")?),
    })
}

fn push_filter(query: &mut sqlx::QueryBuilder<Postgres>, filter: &UsageFilter) {
    if let Some(user) = filter.user {
        query.push(" AND u.user_id = ").push_bind(user.to_string());
    }
    if let Some(token) = filter.token {
        query.push(" AND u.token_id = ").push_bind(token.to_string());
    }
    if let Some(model) = &filter.model {
        query.push(" AND u.model = ").push_bind(model.clone());
    }
    if let Some(channel) = &filter.channel {
        query.push(" AND u.channel = ").push_bind(channel.clone());
    }
    match filter.outcome.as_deref() {
        Some("pending") => {
            query.push(" AND u.outcome IS NULL");
        }
        Some(outcome) => {
            query.push(" AND u.outcome = ").push_bind(outcome.to_owned());
        }
        None => {}
    }
    if let Some(from) = filter.from {
        query.push(" AND u.created_at >= ").push_bind(from.timestamp_millis());
    }
    if let Some(to) = filter.to {
        query.push(" AND u.created_at < ").push_bind(to.timestamp_millis());
    }
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
        let tasks = rows
            .iter()
            .map(|row| {
                Ok(HourlyTasks {
                    hour: to_time(row.try_get("hour")?),
                    model: row.try_get("model")?,
                    outcome: row.try_get("outcome")?,
                    count: row.try_get::<i64, _>("n")?.max(0) as u64,
                })
            })
            .collect::<DbResult<Vec<_>>>()?;
        let rows = sqlx::query(
            "SELECT (finished_at / $2) * $2 AS hour, SUM(charged)::BIGINT AS credits FROM usage \
             WHERE finished_at >= $1 AND charged > 0 GROUP BY 1 ORDER BY 1",
        )
        .bind(since)
        .bind(HOUR)
        .fetch_all(&self.pool)
        .await?;
        let credits = rows
            .iter()
            .map(|row| Ok(HourlyCredits { hour: to_time(row.try_get("hour")?), credits: row.try_get("credits")? }))
            .collect::<DbResult<Vec<_>>>()?;
        let rows = sqlx::query(
            "SELECT channel, run_ms FROM usage WHERE finished_at >= $1 AND run_ms IS NOT NULL ORDER BY channel, run_ms",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let mut run_times: Vec<(String, Vec<i64>)> = Vec::new();
        for row in &rows {
            let channel: String = row.try_get("channel")?;
            let ms: i64 = row.try_get("run_ms")?;
            match run_times.last_mut() {
                Some((last, times)) if *last == channel => times.push(ms),
                _ => run_times.push((channel, vec![ms])),
            }
        }
        Ok(Activity { tasks, credits, run_times })
    }

    async fn list_prices(&self) -> DbResult<Vec<Price>> {
        let rows =
            sqlx::query("SELECT model, per_task, per_image FROM prices ORDER BY model").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(Price {
                    model: row.try_get("model")?,
                    per_task: row.try_get("per_task")?,
                    per_image: row.try_get("per_image")?,
                })
            })
            .collect()
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
        let mut query = sqlx::QueryBuilder::<Postgres>::new(
            "SELECT u.*, t.error_code AS error_code, us.username AS username, k.name AS token_name \
             FROM usage u JOIN tasks t ON t.id = u.task_id \
             LEFT JOIN users us ON us.id = u.user_id LEFT JOIN api_tokens k ON k.id = u.token_id WHERE 1 = 1",
        );
        push_filter(&mut query, filter);
        if let Some(before) = filter.before {
            query.push(" AND u.task_id < ").push_bind(before.to_string());
        }
        query.push(" ORDER BY u.task_id DESC LIMIT ").push_bind(i64::from(filter.limit));
        let rows = query.build().fetch_all(&self.pool).await?;
        rows.iter().map(record_from_row).collect()
    }

    async fn usage_totals(&self, filter: &UsageFilter) -> DbResult<UsageTotals> {
        let mut query = sqlx::QueryBuilder::<Postgres>::new(
            "SELECT COUNT(*) AS tasks, \
                 COUNT(*) FILTER (WHERE u.outcome = 'succeeded') AS succeeded, \
                 COUNT(*) FILTER (WHERE u.outcome = 'failed') AS failed, \
                 COUNT(*) FILTER (WHERE u.outcome = 'canceled') AS canceled, \
                 COALESCE(SUM(u.charged), 0)::BIGINT AS charged FROM usage u WHERE 1 = 1",
        );
        push_filter(&mut query, filter);
        let row = query.build().fetch_one(&self.pool).await?;
        let count = |name: &str| -> DbResult<u64> { Ok(row.try_get::<i64, _>(name)?.max(0) as u64) };
        Ok(UsageTotals {
            tasks: count("tasks")?,
            succeeded: count("succeeded")?,
            failed: count("failed")?,
            canceled: count("canceled")?,
            charged: row.try_get("charged")?,
        })
    }
}

/// Images among a task's outputs, for the per-image price.
pub(super) fn images_of(artifacts: &[crate::tasks::Artifact]) -> u32 {
    artifacts.iter().filter(|a| a.role == "image").count().try_into().unwrap_or(u32::MAX)
}
