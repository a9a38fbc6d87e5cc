//! The PostgreSQL implementation of the channel repository.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::{PostgresDatabase, announce_positions, begin, finish_in, lock_counts};
use crate::{
    config::ChannelConfig,
    db::{
        DbResult, TaskRepo,
        channels::{
            ChannelRepo, ChannelStats, LastError, Rehome, RehomeRoute, Rehomed, Stored, StoredChannel, percentile,
        },
        rows::{self, Columns, now_ms, parse_uuid, to_time},
    },
    tasks::{TaskId, TaskStatus},
};

/// A channel's statistics, made when first met.
fn stats_of<'m>(stats: &'m mut BTreeMap<String, ChannelStats>, channel: &str) -> &'m mut ChannelStats {
    stats
        .entry(channel.to_owned())
        .or_insert_with(|| ChannelStats { channel: channel.to_owned(), ..Default::default() })
}

/// Re-announce every changed place: a queue is bounded by its channel's capacity, and a
/// move is rare, so every client whose place changed hears of it.
const WHOLE_QUEUE: u32 = u32::MAX;

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
        let mut stats: BTreeMap<String, ChannelStats> = BTreeMap::new();
        for load in self.channel_loads().await? {
            let s = stats_of(&mut stats, &load.channel);
            (s.queued, s.running) = (load.queued, load.running);
        }
        let rows = sqlx::query(
            "SELECT id, channel, status, started_at, finished_at, error_code, error_message FROM tasks \
             WHERE finished_at >= $1 ORDER BY finished_at, rowid",
        )
        .bind(since.timestamp_millis())
        .fetch_all(&self.pool)
        .await?;
        let mut runs: HashMap<String, Vec<f64>> = HashMap::new();
        for row in &rows {
            let channel: String = row.try_get("channel")?;
            let s = stats_of(&mut stats, &channel);
            let status: String = row.try_get("status")?;
            let finished: i64 = row.try_get("finished_at")?;
            match TaskStatus::parse(&status) {
                Some(TaskStatus::Succeeded) => {
                    s.succeeded += 1;
                    if let Some(started) = row.try_get::<Option<i64>, _>("started_at")? {
                        runs.entry(channel).or_default().push((finished - started).max(0) as f64 / 1000.0);
                    }
                }
                Some(TaskStatus::Failed) => {
                    s.failed += 1;
                    // Rows come oldest first: the last one written is the latest.
                    s.last_error = Some(LastError {
                        task_id: TaskId(parse_uuid(&row.try_get::<String, _>("id")?)?),
                        code: row.try_get::<Option<String>, _>("error_code")?.unwrap_or_default(),
                        message: row.try_get::<Option<String>, _>("error_message")?.unwrap_or_default(),
                        at: to_time(finished),
                    });
                }
                Some(TaskStatus::Canceled) => s.canceled += 1,
                _ => {}
            }
        }
        for s in stats.values_mut() {
            let ended = s.succeeded + s.failed;
            s.success_rate = (ended > 0).then(|| s.succeeded as f64 / ended as f64);
            if let Some(runs) = runs.get_mut(&s.channel) {
                runs.sort_by(f64::total_cmp);
                s.p50_seconds = percentile(runs, 50.0);
                s.p95_seconds = percentile(runs, 95.0);
            }
        }
        Ok(stats.into_values().collect())
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
        let mut done = Rehomed::default();
        // Queued and running tasks per destination, as admission counts them.
        let mut held: HashMap<String, i64> = HashMap::new();
        let mut stayed = false;
        for row in &rows {
            let task = rows::task(row)?;
            let has_client_key = row.flag("has_client_key")?;
            let (to, otherwise) = match route(&task, has_client_key) {
                Rehome::Stay => {
                    stayed = true;
                    continue;
                }
                Rehome::Move { to, otherwise } => (to, otherwise),
            };
            let mut destination = None;
            for candidate in to.iter().filter(|d| d.channel != channel) {
                let count = match held.get(&candidate.channel) {
                    Some(count) => *count,
                    None => {
                        // Locked like an admission's, so moves and admissions in other
                        // processes count each other.
                        let (queued, running) = lock_counts(&mut tx, &candidate.channel).await?;
                        let count = queued + running;
                        held.insert(candidate.channel.clone(), count);
                        count
                    }
                };
                if count < i64::from(candidate.capacity) {
                    destination = Some(candidate.channel.clone());
                    break;
                }
            }
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
                    *held.entry(to.clone()).or_default() += 1;
                    done.moved.push((task.id, to));
                }
                None => {
                    let (ended, events) = finish_in(&mut tx, &task, &otherwise, 0).await?;
                    done.failed.push(ended);
                    done.events.extend(events);
                }
            }
        }
        let mut destinations: Vec<&str> = done.moved.iter().map(|(_, to)| to.as_str()).collect();
        destinations.sort_unstable();
        destinations.dedup();
        for to in destinations {
            done.events.extend(announce_positions(&mut tx, to, WHOLE_QUEUE).await?);
        }
        if stayed && (!done.moved.is_empty() || !done.failed.is_empty()) {
            done.events.extend(announce_positions(&mut tx, channel, WHOLE_QUEUE).await?);
        }
        tx.commit().await?;
        Ok(done)
    }
}
