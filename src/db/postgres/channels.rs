//! The PostgreSQL implementation of the channel repository.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{PostgresDatabase, announce_positions, begin, finish_in, lock_counts};
use crate::{
    config::ChannelConfig,
    db::{
        DbResult, TaskRepo,
        channels::{self, ChannelRepo, ChannelStats, Pick, RehomeRoute, Rehomed, Stored, StoredChannel, WHOLE_QUEUE},
        rows::{self, Columns, now_ms},
    },
};

#[async_trait]
impl ChannelRepo for PostgresDatabase {
    async fn list_channels(&self) -> DbResult<Vec<StoredChannel>> {
        let rows = sqlx::query("SELECT * FROM channels ORDER BY id").fetch_all(&self.pool).await?;
        rows.iter().map(rows::channel).collect()
    }

    async fn get_channel(&self, id: Uuid) -> DbResult<Option<StoredChannel>> {
        let row =
            sqlx::query("SELECT * FROM channels WHERE id = $1").bind(id.to_string()).fetch_optional(&self.pool).await?;
        row.as_ref().map(rows::channel).transpose()
    }

    async fn create_channel(&self, config: &ChannelConfig, sealed_secret: Option<&str>) -> DbResult<Stored> {
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO channels (id, name, config, secret, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (name) DO NOTHING RETURNING *",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(&config.name)
        .bind(rows::channel_config_json(config)?)
        .bind(sealed_secret)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(Stored::Done(Box::new(rows::channel(&row)?))),
            None => Ok(Stored::NameTaken),
        }
    }

    async fn update_channel(&self, id: Uuid, config: &ChannelConfig, sealed_secret: Option<&str>) -> DbResult<Stored> {
        let mut tx = begin(&self.pool).await?;
        let holders: Vec<String> = sqlx::query_scalar("SELECT id FROM channels WHERE id = $1 OR name = $2")
            .bind(id.to_string())
            .bind(&config.name)
            .fetch_all(&mut *tx)
            .await?;
        if !holders.contains(&id.to_string()) {
            return Ok(Stored::NotFound);
        }
        if holders.len() > 1 {
            return Ok(Stored::NameTaken);
        }
        let row = sqlx::query(
            "UPDATE channels SET name = $1, config = $2, secret = $3, updated_at = $4 WHERE id = $5 RETURNING *",
        )
        .bind(&config.name)
        .bind(rows::channel_config_json(config)?)
        .bind(sealed_secret)
        .bind(now_ms())
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(Stored::NotFound) };
        let stored = rows::channel(&row)?;
        tx.commit().await?;
        Ok(Stored::Done(Box::new(stored)))
    }

    async fn delete_channel(&self, id: Uuid) -> DbResult<Option<StoredChannel>> {
        let row = sqlx::query("DELETE FROM channels WHERE id = $1 RETURNING *")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::channel).transpose()
    }

    async fn channel_stats(&self, since: DateTime<Utc>) -> DbResult<Vec<ChannelStats>> {
        let loads = self.channel_loads().await?;
        let rows = sqlx::query(
            "SELECT id, channel, status, started_at, finished_at, error_code, error_message FROM tasks \
             WHERE finished_at >= $1 ORDER BY finished_at, rowid",
        )
        .bind(since.timestamp_millis())
        .fetch_all(&self.pool)
        .await?;
        channels::stats(loads, &rows)
    }

    async fn rehome_queued(&self, channel: &str, route: &RehomeRoute<'_>) -> DbResult<Rehomed> {
        let mut tx = begin(&self.pool).await?;
        // Counter rows before task rows, as everywhere (see `lock_counts`): no admission
        // or claim of this channel runs meanwhile in any process.
        lock_counts(&mut tx, channel).await?;
        let rows = sqlx::query(
            "SELECT *, client_secret IS NOT NULL AS has_client_key FROM tasks \
             WHERE channel = $1 AND status = 'queued' ORDER BY rowid FOR UPDATE",
        )
        .bind(channel)
        .fetch_all(&mut *tx)
        .await?;
        let mut rehoming = channels::Rehoming::new(channel);
        for row in &rows {
            let task = rows::task(row)?;
            let Some((to, otherwise)) = rehoming.route(route(&task, row.flag("has_client_key")?)) else { continue };
            let destination = loop {
                match rehoming.pick(&to) {
                    Pick::Count(candidate) => {
                        // Locked like an admission's, so moves and admissions in other
                        // processes count each other.
                        let (queued, running) = lock_counts(&mut tx, &candidate).await?;
                        rehoming.learn(candidate, queued + running);
                    }
                    Pick::Chosen(destination) => break destination,
                }
            };
            match destination {
                Some(to) => {
                    // Only the channel changes (the counters follow through a trigger);
                    // the place is announced below, with everyone else's that moved.
                    sqlx::query(
                        "UPDATE tasks SET channel = $1, last_position = NULL WHERE id = $2 AND status = 'queued'",
                    )
                    .bind(&to)
                    .bind(task.id.to_string())
                    .execute(&mut *tx)
                    .await?;
                    // The usage record names the channel that runs (and bills) the task.
                    sqlx::query("UPDATE usage SET channel = $1 WHERE task_id = $2")
                        .bind(&to)
                        .bind(task.id.to_string())
                        .execute(&mut *tx)
                        .await?;
                    rehoming.moved(task.id, to);
                }
                None => {
                    let (ended, events) = finish_in(&mut tx, &task, &otherwise, 0).await?;
                    rehoming.ended(ended, events);
                }
            }
        }
        for queue in rehoming.changed_queues() {
            let events = announce_positions(&mut tx, &queue, WHOLE_QUEUE).await?;
            rehoming.done.events.extend(events);
        }
        tx.commit().await?;
        Ok(rehoming.done)
    }
}
