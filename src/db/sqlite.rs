//! The SQLite implementation of the repositories: kiln's embedded default.
//!
//! SQLite has one writer. Writes go through a pool of exactly one connection, so they
//! queue in-process instead of fighting over the file lock, and every write transaction
//! is a few short statements; reads use a separate pool and never wait for writes (WAL).

mod accounts;
mod channels;
mod conversions;
mod deliveries;

use std::{str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{
    Sqlite, SqliteConnection, Transaction,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous},
};
use uuid::Uuid;

use super::{
    Billing, ChannelLoad, ClaimTerms, Claimed, Database, DbError, DbResult, Enqueued, FileRepo, Finish, JournalRepo,
    MessageRepo, Scope, SingletonRepo, StoredFile, TaskFilter, TaskRepo, Transition, listing, payload, queue_full,
    rows::{self, Columns, now_ms, to_time},
};
use crate::tasks::{Artifact, EventKind, NewTask, Picture, Task, TaskEvent, TaskId, TaskStatus};

mod usage;

/// Also what `kiln db copy` migrates a SQLite target with.
pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteDatabase {
    writer: SqlitePool,
    reader: SqlitePool,
    /// One process owns a SQLite database: what it commits, only it needs to hear.
    notifier: Arc<crate::notify::Local>,
}

impl SqliteDatabase {
    pub async fn connect(url: &str, max_connections: u32) -> DbResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if let Some(parent) = options.get_filename().parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| DbError::Query(sqlx::Error::Io(e)))?;
        }
        let writer = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await?;
        MIGRATOR.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self { writer, reader, notifier: crate::notify::Local::new() })
    }
}

/// Appends one event, taking the next sequence number from the task row.
async fn append_event(conn: &mut SqliteConnection, id: TaskId, kind: EventKind, data: Value) -> DbResult<TaskEvent> {
    let seq: i64 = sqlx::query_scalar("UPDATE tasks SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq")
        .bind(id.to_string())
        .fetch_one(&mut *conn)
        .await?;
    insert_event(conn, id, seq, kind, data).await
}

async fn insert_event(
    conn: &mut SqliteConnection,
    id: TaskId,
    seq: i64,
    kind: EventKind,
    data: Value,
) -> DbResult<TaskEvent> {
    let now = now_ms();
    sqlx::query("INSERT INTO task_events (task_id, seq, kind, data, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")
        .bind(id.to_string())
        .bind(seq)
        .bind(kind.as_str())
        .bind(data.to_string())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(TaskEvent { task_id: id, seq, kind, data, created_at: to_time(now) })
}

/// Re-announces the positions of the first `window` waiting tasks of a channel whose
/// position changed. Two statements whatever the window: one update numbers the waiting
/// tasks and takes each changed one's next sequence number, one insert writes all their
/// events, because on SQLite the statement count, not the SQL, is what costs.
async fn announce_positions(conn: &mut SqliteConnection, channel: &str, window: u32) -> DbResult<Vec<TaskEvent>> {
    if window == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "WITH w AS (SELECT id, ROW_NUMBER() OVER (ORDER BY rowid) AS pos FROM tasks \
             WHERE channel = ?1 AND status = 'queued' ORDER BY rowid LIMIT ?2) \
         UPDATE tasks SET last_position = w.pos, last_seq = last_seq + 1 FROM w \
         WHERE tasks.id = w.id AND tasks.last_position IS NOT w.pos \
         RETURNING tasks.id AS id, tasks.last_seq AS seq, tasks.last_position AS pos",
    )
    .bind(channel)
    .bind(i64::from(window))
    .fetch_all(&mut *conn)
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut events = rows::queued_events(&rows, now_ms())?;
    insert_events(conn, &events).await?;
    // RETURNING gives no order; subscribers of one task only need its own in order.
    events.sort_by_key(|e| e.seq);
    Ok(events)
}

/// Writes several events in one statement.
async fn insert_events(conn: &mut SqliteConnection, events: &[TaskEvent]) -> DbResult<()> {
    let rows: Vec<Value> = events
        .iter()
        .map(|e| {
            json!([e.task_id.to_string(), e.seq, e.kind.as_str(), e.data.to_string(), e.created_at.timestamp_millis()])
        })
        .collect();
    sqlx::query(
        "INSERT INTO task_events (task_id, seq, kind, data, created_at) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 FROM json_each(?1)",
    )
    .bind(Value::Array(rows).to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn task_in(conn: &mut SqliteConnection, id: TaskId) -> DbResult<Option<Task>> {
    let row = sqlx::query("SELECT * FROM tasks WHERE id = ?1").bind(id.to_string()).fetch_optional(&mut *conn).await?;
    row.as_ref().map(rows::task).transpose()
}

/// Clears the note that a file was being written: its record commits with this.
async fn file_recorded(conn: &mut SqliteConnection, key: &str) -> DbResult<()> {
    sqlx::query("DELETE FROM pending_files WHERE key = ?1").bind(key).execute(&mut *conn).await?;
    Ok(())
}

/// Ends `task` (read in this transaction, its status allowing `finish`) with its
/// terminal event and settles its usage; when it was waiting, re-announces the positions behind it.
async fn finish_in(
    conn: &mut SqliteConnection,
    task: &Task,
    finish: &Finish,
    window: u32,
) -> DbResult<(Task, Vec<TaskEvent>)> {
    let id = task.id;
    let next = finish.status();
    let now = now_ms();
    let artifacts = if matches!(finish, Finish::Succeeded { .. }) {
        let rows = sqlx::query("SELECT * FROM artifacts WHERE task_id = ?1 ORDER BY created_at, name")
            .bind(id.to_string())
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(rows::artifact).collect::<DbResult<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let (code, message, metadata) = finish.recorded();
    let row = sqlx::query(
        "UPDATE tasks SET status = ?1, finished_at = ?2, error_code = ?3, error_message = ?4, metadata = ?5, \
             progress = CASE WHEN ?1 = 'succeeded' THEN 100 ELSE progress END, last_seq = last_seq + 1, \
             lease_owner = NULL, lease_expires_at = NULL, last_position = NULL, placement = NULL, \
             submitting_at = NULL, client_secret = NULL \
         WHERE id = ?6 RETURNING *",
    )
    .bind(next.as_str())
    .bind(now)
    .bind(code)
    .bind(message)
    .bind(metadata.to_string())
    .bind(id.to_string())
    .fetch_one(&mut *conn)
    .await?;
    let finished = rows::task(&row)?;
    // Every end settles the task's credits in the transaction that records it.
    usage::settle(conn, &finished, super::usage::images_of(&artifacts)).await?;
    let seq = row.int("last_seq")?;
    let data = payload::finish(finish, task, &artifacts, now);
    let mut events = vec![insert_event(conn, id, seq, EventKind::for_status(next), data).await?];
    if task.status == TaskStatus::Queued {
        events.extend(announce_positions(conn, &task.channel, window).await?);
    }
    Ok((finished, events))
}

/// Records `artifact` if its task is in `status` (`running` for an output the run
/// made, `succeeded` for one made from a finished task's model) and not recorded yet,
/// and clears its pending-file note. `false` when nothing was written.
async fn insert_artifact(conn: &mut SqliteConnection, artifact: &Artifact, status: &str) -> DbResult<bool> {
    let current: Option<String> = sqlx::query_scalar("SELECT status FROM tasks WHERE id = ?1")
        .bind(artifact.task_id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    if current.as_deref() != Some(status) {
        return Ok(false);
    }
    let inserted = sqlx::query(
        "INSERT INTO artifacts (id, task_id, name, role, key, content_type, size, sha256, metadata, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING",
    )
    .bind(artifact.id.to_string())
    .bind(artifact.task_id.to_string())
    .bind(&artifact.name)
    .bind(&artifact.role)
    .bind(&artifact.key)
    .bind(&artifact.content_type)
    .bind(artifact.size as i64)
    .bind(&artifact.sha256)
    .bind(artifact.metadata.to_string())
    .bind(artifact.created_at.timestamp_millis())
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    file_recorded(&mut *conn, &artifact.key).await?;
    Ok(true)
}

async fn begin(pool: &SqlitePool) -> DbResult<Transaction<'static, Sqlite>> {
    Ok(pool.begin().await?)
}

#[async_trait]
impl TaskRepo for SqliteDatabase {
    async fn enqueue(
        &self,
        task: &NewTask,
        capacity: u32,
        idempotency: Option<(&str, &str)>,
        billing: &Billing,
    ) -> DbResult<Enqueued> {
        let mut tx = begin(&self.writer).await?;
        if let Some((key, hash)) = idempotency {
            let existing = sqlx::query("SELECT request_hash, task_id FROM idempotency_keys WHERE key = ?1")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = existing {
                if row.text("request_hash")? != hash {
                    return Ok(Enqueued::KeyConflict);
                }
                let task = task_in(&mut tx, TaskId(row.uuid("task_id")?))
                    .await?
                    .ok_or_else(|| DbError::Corrupt("idempotency key without task".into()))?;
                return Ok(Enqueued::Replayed(task));
            }
        }
        let counts = sqlx::query("SELECT queued, running FROM channel_queues WHERE channel = ?1")
            .bind(&task.channel)
            .fetch_optional(&mut *tx)
            .await?;
        let (queued, running): (i64, i64) = match counts {
            Some(row) => (row.int("queued")?, row.int("running")?),
            None => (0, 0),
        };
        if let Some(full) = queue_full(queued, running, capacity) {
            return Ok(full);
        }
        let position = queued + 1;
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO tasks (id, kind, model, channel, status, prompt, picture_id, params, last_seq, last_position, \
                 created_at, client_secret, owner_id, token_id, webhook_url) \
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, 1, ?8, ?9, ?10, ?11, ?12, ?13) RETURNING *",
        )
        .bind(task.id.to_string())
        .bind(task.kind.as_str())
        .bind(&task.model)
        .bind(&task.channel)
        .bind(&task.prompt)
        .bind(task.picture_id.map(|p| p.to_string()))
        .bind(task.params.to_string())
        .bind(position)
        .bind(now)
        .bind(&task.client_secret)
        .bind(task.owner_id.map(|u| u.to_string()))
        .bind(task.token_id.map(|u| u.to_string()))
        .bind(&task.webhook_url)
        .fetch_one(&mut *tx)
        .await?;
        let stored = rows::task(&row)?;
        // After the task's row, which its usage record references; a refusal drops the
        // transaction, and the row with it.
        if let Err(refused) = usage::reserve(&mut tx, task, billing).await? {
            return Ok(refused);
        }
        let event = insert_event(&mut tx, task.id, 1, EventKind::Queued, payload::queued(position as u32)).await?;
        if let Some((key, hash)) = idempotency {
            sqlx::query(
                "INSERT INTO idempotency_keys (key, request_hash, task_id, created_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(key)
            .bind(hash)
            .bind(task.id.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Enqueued::Created(stored, event))
    }

    async fn get_task(&self, id: TaskId) -> DbResult<Option<Task>> {
        let row =
            sqlx::query("SELECT * FROM tasks WHERE id = ?1").bind(id.to_string()).fetch_optional(&self.reader).await?;
        row.as_ref().map(rows::task).transpose()
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> DbResult<Vec<Task>> {
        let rows = listing::tasks::<Sqlite>(filter).build().fetch_all(&self.reader).await?;
        rows.iter().map(rows::task).collect()
    }

    async fn queue_position(&self, id: TaskId) -> DbResult<Option<u32>> {
        let position: Option<i64> = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM tasks q WHERE q.channel = t.channel AND q.status = 'queued' AND q.rowid <= t.rowid) \
             FROM tasks t WHERE t.id = ?1 AND t.status = 'queued'",
        )
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await?;
        Ok(position.map(|p| p.max(1) as u32))
    }

    async fn claim(&self, channel: &str, owner: &str, terms: &ClaimTerms) -> DbResult<Option<Claimed>> {
        let ClaimTerms { lease, deadline, window, max_running } = *terms;
        let now = now_ms();
        let mut tx = begin(&self.writer).await?;
        let row = sqlx::query(
            "UPDATE tasks SET status = 'running', lease_owner = ?1, lease_expires_at = ?2, attempts = attempts + 1, \
                 started_at = COALESCE(started_at, ?3), deadline_at = ?4, progress = 0, \
                 stage = CASE WHEN status = 'running' THEN 'restarting' ELSE 'starting' END, \
                 last_seq = last_seq + 1, last_position = NULL, \
                 placement = CASE WHEN provider_job_id IS NULL THEN NULL ELSE placement END \
             WHERE rowid = COALESCE( \
                 (SELECT rowid FROM tasks WHERE channel = ?5 AND status = 'running' AND lease_expires_at < ?3 \
                     ORDER BY rowid LIMIT 1), \
                 (SELECT rowid FROM tasks WHERE channel = ?5 AND status = 'queued' \
                     AND COALESCE((SELECT running FROM channel_queues WHERE channel = ?5), 0) < ?6 \
                     ORDER BY rowid LIMIT 1)) \
             RETURNING *",
        )
        .bind(owner)
        .bind(now + lease.as_millis() as i64)
        .bind(now)
        .bind(now + deadline.as_millis() as i64)
        .bind(channel)
        .bind(i64::from(max_running))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        let task = rows::task(&row)?;
        let seq = row.int("last_seq")?;
        let stage = task.stage.clone().unwrap_or_else(|| "starting".into());
        let mut events =
            vec![insert_event(&mut tx, task.id, seq, EventKind::Processing, payload::processing(0, &stage)).await?];
        events.extend(announce_positions(&mut tx, channel, window).await?);
        tx.commit().await?;
        Ok(Some(Claimed { task, events }))
    }

    async fn announce_positions(&self, channel: &str, window: u32) -> DbResult<Vec<TaskEvent>> {
        let mut tx = begin(&self.writer).await?;
        let events = announce_positions(&mut tx, channel, window).await?;
        tx.commit().await?;
        Ok(events)
    }

    async fn renew_lease(&self, id: TaskId, owner: &str, lease: Duration) -> DbResult<bool> {
        let done = sqlx::query(
            "UPDATE tasks SET lease_expires_at = ?1 WHERE id = ?2 AND lease_owner = ?3 AND status = 'running'",
        )
        .bind(now_ms() + lease.as_millis() as i64)
        .bind(id.to_string())
        .bind(owner)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn claim_finishing(
        &self,
        id: TaskId,
        first: bool,
        owner: &str,
        lease: Duration,
        deadline: DateTime<Utc>,
        metadata: &serde_json::Value,
    ) -> DbResult<bool> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE tasks SET finishing_at = COALESCE(finishing_at, ?1), lease_owner = ?2, lease_expires_at = ?3, \
                 placement = NULL, deadline_at = MAX(COALESCE(deadline_at, 0), ?4), metadata = ?5 \
             WHERE id = ?6 AND status = 'running' \
                 AND ((?7 = 1 AND finishing_at IS NULL) OR (?7 = 0 AND lease_owner = ?2))",
        )
        .bind(now)
        .bind(owner)
        .bind(now + lease.as_millis() as i64)
        .bind(deadline.timestamp_millis())
        .bind(metadata.to_string())
        .bind(id.to_string())
        .bind(i64::from(first))
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_leases(&self) -> DbResult<u64> {
        // Conversions the last run left half made are taken again by the next request.
        sqlx::query("UPDATE conversions SET lease_expires_at = 0 WHERE status = 'running'")
            .execute(&self.writer)
            .await?;
        let done =
            sqlx::query("UPDATE tasks SET lease_expires_at = 0 WHERE status = 'running'").execute(&self.writer).await?;
        Ok(done.rows_affected())
    }

    async fn hand_back(&self, owner: &str, ids: &[TaskId]) -> DbResult<Vec<(TaskId, String)>> {
        let mut tx = begin(&self.writer).await?;
        let mut handed = Vec::with_capacity(ids.len());
        for id in ids {
            let channel: Option<String> = sqlx::query_scalar(
                "UPDATE tasks SET lease_owner = NULL, lease_expires_at = 0, attempts = MAX(attempts - 1, 0) \
                 WHERE id = ?1 AND lease_owner = ?2 AND status = 'running' RETURNING channel",
            )
            .bind(id.to_string())
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(channel) = channel {
                handed.push((*id, channel));
            }
        }
        tx.commit().await?;
        Ok(handed)
    }

    async fn record_progress(&self, id: TaskId, progress: u8, stage: &str) -> DbResult<Option<TaskEvent>> {
        let mut tx = begin(&self.writer).await?;
        let seq: Option<i64> = sqlx::query_scalar(
            "UPDATE tasks SET progress = ?1, stage = ?2, last_seq = last_seq + 1 WHERE id = ?3 AND status = 'running' \
             RETURNING last_seq",
        )
        .bind(i64::from(progress.min(100)))
        .bind(stage)
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(seq) = seq else { return Ok(None) };
        let event =
            insert_event(&mut tx, id, seq, EventKind::Processing, payload::processing(progress.min(100), stage))
                .await?;
        tx.commit().await?;
        Ok(Some(event))
    }

    async fn add_artifact(&self, artifact: &Artifact, event: Value) -> DbResult<Option<TaskEvent>> {
        let mut tx = begin(&self.writer).await?;
        if !insert_artifact(&mut tx, artifact, "running").await? {
            return Ok(None);
        }
        let event = append_event(&mut tx, artifact.task_id, EventKind::Result, event).await?;
        tx.commit().await?;
        Ok(Some(event))
    }

    async fn add_derived_artifact(&self, artifact: &Artifact) -> DbResult<bool> {
        let mut tx = begin(&self.writer).await?;
        if !insert_artifact(&mut tx, artifact, "succeeded").await? {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn mark_submitting(&self, id: TaskId, submitting: bool) -> DbResult<()> {
        sqlx::query("UPDATE tasks SET submitting_at = ?1 WHERE id = ?2 AND status = 'running'")
            .bind(submitting.then(now_ms))
            .bind(id.to_string())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn record_submission(
        &self,
        id: TaskId,
        job_id: &str,
        placement: Option<&str>,
    ) -> DbResult<Option<TaskEvent>> {
        let mut tx = begin(&self.writer).await?;
        let done = sqlx::query(
            "UPDATE tasks SET provider_job_id = ?1, placement = ?2, submitting_at = NULL, stage = 'submitted' \
             WHERE id = ?3 AND status = 'running'",
        )
        .bind(job_id)
        .bind(placement)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let progress: i64 = sqlx::query_scalar("SELECT progress FROM tasks WHERE id = ?1")
            .bind(id.to_string())
            .fetch_one(&mut *tx)
            .await?;
        let event = append_event(
            &mut tx,
            id,
            EventKind::Processing,
            payload::processing(progress.clamp(0, 100) as u8, "submitted"),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(event))
    }

    async fn place(&self, id: TaskId, placement: &str) -> DbResult<()> {
        sqlx::query("UPDATE tasks SET placement = ?1 WHERE id = ?2 AND status = 'running'")
            .bind(placement)
            .bind(id.to_string())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn placement_loads(&self, channel: &str) -> DbResult<Vec<(String, u32)>> {
        let rows = sqlx::query(
            "SELECT placement, COUNT(*) AS n FROM tasks \
             WHERE channel = ?1 AND status = 'running' AND placement IS NOT NULL GROUP BY placement",
        )
        .bind(channel)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rows::placement_load).collect()
    }

    async fn release_placement(&self, channel: &str, placement: &str) -> DbResult<u64> {
        let done = sqlx::query(
            "UPDATE tasks SET lease_expires_at = 0 WHERE channel = ?1 AND placement = ?2 AND status = 'running'",
        )
        .bind(channel)
        .bind(placement)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    async fn client_secret(&self, id: TaskId) -> DbResult<Option<String>> {
        let secret: Option<Option<String>> =
            sqlx::query_scalar("SELECT client_secret FROM tasks WHERE id = ?1 AND status IN ('queued', 'running')")
                .bind(id.to_string())
                .fetch_optional(&self.reader)
                .await?;
        Ok(secret.flatten())
    }

    async fn find_artifact(&self, id: TaskId, name: &str) -> DbResult<Option<Artifact>> {
        let row = sqlx::query("SELECT * FROM artifacts WHERE task_id = ?1 AND name = ?2")
            .bind(id.to_string())
            .bind(name)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::artifact).transpose()
    }

    async fn finish(&self, id: TaskId, finish: &Finish, window: u32) -> DbResult<Transition> {
        let mut tx = begin(&self.writer).await?;
        let Some(task) = task_in(&mut tx, id).await? else { return Ok(Transition::NotFound) };
        if !task.status.can_become(finish.status()) {
            return Ok(Transition::Refused(task));
        }
        let (finished, events) = finish_in(&mut tx, &task, finish, window).await?;
        tx.commit().await?;
        Ok(Transition::Done(finished, events))
    }

    async fn list_events(&self, id: TaskId, after: i64) -> DbResult<Vec<TaskEvent>> {
        let rows = sqlx::query("SELECT * FROM task_events WHERE task_id = ?1 AND seq > ?2 ORDER BY seq")
            .bind(id.to_string())
            .bind(after)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(rows::event).collect()
    }

    async fn list_artifacts(&self, id: TaskId) -> DbResult<Vec<Artifact>> {
        let rows = sqlx::query("SELECT * FROM artifacts WHERE task_id = ?1 ORDER BY created_at, name")
            .bind(id.to_string())
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(rows::artifact).collect()
    }

    async fn overdue(&self, now: DateTime<Utc>) -> DbResult<Vec<(TaskId, String)>> {
        let rows = sqlx::query(
            "SELECT id, channel FROM tasks WHERE status = 'running' AND deadline_at < ?1 \
                 AND NOT (finishing_at IS NOT NULL AND lease_expires_at > ?1)",
        )
        .bind(now.timestamp_millis())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rows::task_and_channel).collect()
    }

    async fn channel_loads(&self) -> DbResult<Vec<ChannelLoad>> {
        let rows = sqlx::query("SELECT channel, queued, running FROM channel_queues WHERE queued > 0 OR running > 0")
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(rows::channel_load).collect()
    }

    async fn count_by_status(&self) -> DbResult<Vec<(TaskStatus, u64)>> {
        let rows =
            sqlx::query("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status").fetch_all(&self.reader).await?;
        rows::status_counts(&rows)
    }
}

#[async_trait]
impl FileRepo for SqliteDatabase {
    async fn insert_picture(&self, picture: &Picture) -> DbResult<()> {
        let mut tx = begin(&self.writer).await?;
        sqlx::query(
            "INSERT INTO pictures (id, key, content_type, format, width, height, size, sha256, original_name, created_at, \
                 owner_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .bind(picture.id.to_string())
        .bind(&picture.key)
        .bind(&picture.content_type)
        .bind(&picture.format)
        .bind(i64::from(picture.width))
        .bind(i64::from(picture.height))
        .bind(picture.size as i64)
        .bind(&picture.sha256)
        .bind(&picture.original_name)
        .bind(picture.created_at.timestamp_millis())
        .bind(picture.owner_id.map(|u| u.to_string()))
        .execute(&mut *tx)
        .await?;
        file_recorded(&mut tx, &picture.key).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_picture(&self, id: Uuid) -> DbResult<Option<Picture>> {
        let row = sqlx::query("SELECT * FROM pictures WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::picture).transpose()
    }

    async fn list_pictures(&self, scope: Scope, offset: u64, limit: u32) -> DbResult<(Vec<Picture>, u64)> {
        let (mut page, mut count) = listing::pictures::<Sqlite>(scope, offset, limit);
        let rows = page.build().fetch_all(&self.reader).await?;
        let total: i64 = count.build_query_scalar().fetch_one(&self.reader).await?;
        Ok((rows.iter().map(rows::picture).collect::<DbResult<_>>()?, total.max(0) as u64))
    }

    async fn find_file(&self, key: &str) -> DbResult<Option<StoredFile>> {
        let row = sqlx::query(
            "SELECT key, content_type, size, sha256, created_at, expired_at FROM artifacts WHERE key = ?1 \
             UNION ALL SELECT key, content_type, size, sha256, created_at, expired_at FROM pictures WHERE key = ?1 LIMIT 1",
        )
        .bind(key)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(rows::stored_file).transpose()
    }

    async fn expire_files_before(&self, cutoff: DateTime<Utc>) -> DbResult<Vec<String>> {
        let now = now_ms();
        let cutoff = cutoff.timestamp_millis();
        let mut tx = begin(&self.writer).await?;
        let mut keys: Vec<String> = sqlx::query_scalar(
            "UPDATE artifacts SET expired_at = ?1 WHERE created_at < ?2 AND expired_at IS NULL RETURNING key",
        )
        .bind(now)
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?;
        let pictures: Vec<String> = sqlx::query_scalar(
            "UPDATE pictures SET expired_at = ?1 WHERE created_at < ?2 AND expired_at IS NULL RETURNING key",
        )
        .bind(now)
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?;
        keys.extend(pictures);
        tx.commit().await?;
        Ok(keys)
    }
}

#[async_trait]
impl JournalRepo for SqliteDatabase {
    async fn begin_file(&self, key: &str) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO pending_files (key, created_at) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET created_at = excluded.created_at",
        )
        .bind(key)
        .bind(now_ms())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn forget_file(&self, key: &str) -> DbResult<()> {
        file_recorded(&mut *self.writer.acquire().await?, key).await
    }

    async fn pending_files_before(&self, cutoff: DateTime<Utc>) -> DbResult<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT key FROM pending_files WHERE created_at < ?1 ORDER BY created_at")
            .bind(cutoff.timestamp_millis())
            .fetch_all(&self.reader)
            .await?)
    }
}

#[async_trait]
impl MessageRepo for SqliteDatabase {
    async fn remember_message(&self, id: &str, now: DateTime<Utc>) -> DbResult<bool> {
        let done = sqlx::query("INSERT INTO webhook_messages (id, received_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
            .bind(id)
            .bind(now.timestamp_millis())
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn forget_messages_before(&self, cutoff: DateTime<Utc>) -> DbResult<u64> {
        let done = sqlx::query("DELETE FROM webhook_messages WHERE received_at < ?1")
            .bind(cutoff.timestamp_millis())
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl SingletonRepo for SqliteDatabase {
    async fn hold_singleton(&self, name: &str, holder: &str, ttl: Duration, now: DateTime<Utc>) -> DbResult<bool> {
        let until = now.timestamp_millis().saturating_add(rows::millis(ttl));
        let held: Option<String> = sqlx::query_scalar(
            "INSERT INTO singletons (name, holder, until) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until \
             WHERE singletons.holder = excluded.holder OR singletons.until < ?4 \
             RETURNING holder",
        )
        .bind(name)
        .bind(holder)
        .bind(until)
        .bind(now.timestamp_millis())
        .fetch_optional(&self.writer)
        .await?;
        Ok(held.as_deref() == Some(holder))
    }
}

#[async_trait]
impl Database for SqliteDatabase {
    async fn ping(&self) -> DbResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    fn shared(&self) -> bool {
        false
    }

    fn notifier(&self) -> Arc<dyn crate::notify::Notifier> {
        Arc::clone(&self.notifier) as Arc<dyn crate::notify::Notifier>
    }
}
