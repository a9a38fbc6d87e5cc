//! The PostgreSQL implementation of the repositories: for several kiln processes on one
//! database. It mirrors the SQLite implementation statement for statement (same tables,
//! same millisecond times, same text ids) and departs from it only where several writers
//! need it: a claim skips rows another process holds (`FOR UPDATE SKIP LOCKED`), and
//! admission to a channel, the count of running tasks a claim checks and an owner's
//! limit hold a row lock for the length of their transaction, which SQLite's single
//! writer gave for free.

mod accounts;
mod channels;
mod conversions;
mod deliveries;
mod notify;

use std::{str::FromStr, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{
    PgConnection, Postgres, Transaction,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
};
use uuid::Uuid;

use super::{
    Billing, ChannelLoad, ClaimTerms, Claimed, Database, DbError, DbResult, Enqueued, FileRepo, Finish, JournalRepo,
    MessageRepo, Scope, SingletonRepo, StoredFile, TaskFilter, TaskRepo, Transition, listing, payload, queue_full,
    rows::{self, Columns, now_ms, to_time},
};
use crate::tasks::{Artifact, EventKind, NewTask, Picture, Task, TaskEvent, TaskId, TaskStatus};

mod usage;

pub use notify::PgNotifier;

/// Also what `kiln db copy` migrates a PostgreSQL target with.
pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a request waits for a free connection before it fails: a pool exhausted
/// for this long means the database is down or far too slow, and an answer beats a hang.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle connections beyond what the load needs are closed after this.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Connections are replaced after this, so a server-side change (a failover behind a
/// proxy, a changed setting) reaches every one of them.
const MAX_LIFETIME: Duration = Duration::from_secs(1800);

/// The advisory locks of Idempotency-Keys: this class, and the key's hash (`kiln` in
/// ASCII; two-key advisory locks never meet the one-key ones).
const IDEMPOTENCY_LOCKS: i32 = 0x6b69_6c6e;

pub struct PostgresDatabase {
    pool: PgPool,
    /// Several processes share this database: what one commits, the others hear over
    /// LISTEN/NOTIFY.
    notifier: Arc<PgNotifier>,
}

impl PostgresDatabase {
    /// Connects with the URL's options (`sslmode`, `sslrootcert`, `application_name`,
    /// …) and runs the migrations. sqlx takes a PostgreSQL advisory lock while it
    /// migrates, so several processes starting at once apply each migration once.
    pub async fn connect(url: &str, max_connections: u32) -> DbResult<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let options = if options.get_application_name().is_none() { options.application_name("kiln") } else { options };
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(IDLE_TIMEOUT)
            .max_lifetime(MAX_LIFETIME)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        let notifier = PgNotifier::new(pool.clone());
        Ok(Self { pool, notifier })
    }
}

/// Appends one event, taking the next sequence number from the task row.
async fn append_event(conn: &mut PgConnection, id: TaskId, kind: EventKind, data: Value) -> DbResult<TaskEvent> {
    let seq: i64 = sqlx::query_scalar("UPDATE tasks SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq")
        .bind(id.to_string())
        .fetch_one(&mut *conn)
        .await?;
    insert_event(conn, id, seq, kind, data).await
}

async fn insert_event(
    conn: &mut PgConnection,
    id: TaskId,
    seq: i64,
    kind: EventKind,
    data: Value,
) -> DbResult<TaskEvent> {
    let now = now_ms();
    sqlx::query("INSERT INTO task_events (task_id, seq, kind, data, created_at) VALUES ($1, $2, $3, $4, $5)")
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
/// position changed. Two statements whatever the window, as on SQLite: one update
/// numbers the waiting tasks and takes each changed one's next sequence number, one
/// insert writes all their events.
async fn announce_positions(conn: &mut PgConnection, channel: &str, window: u32) -> DbResult<Vec<TaskEvent>> {
    if window == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "WITH w AS (SELECT id, ROW_NUMBER() OVER (ORDER BY rowid) AS pos FROM tasks \
             WHERE channel = $1 AND status = 'queued' ORDER BY rowid LIMIT $2) \
         UPDATE tasks SET last_position = w.pos, last_seq = last_seq + 1 FROM w \
         WHERE tasks.id = w.id AND tasks.last_position IS DISTINCT FROM w.pos \
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

/// Writes several events in one statement, one array per column.
async fn insert_events(conn: &mut PgConnection, events: &[TaskEvent]) -> DbResult<()> {
    let ids: Vec<String> = events.iter().map(|e| e.task_id.to_string()).collect();
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let data: Vec<String> = events.iter().map(|e| e.data.to_string()).collect();
    let times: Vec<i64> = events.iter().map(|e| e.created_at.timestamp_millis()).collect();
    sqlx::query(
        "INSERT INTO task_events (task_id, seq, kind, data, created_at) \
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[])",
    )
    .bind(ids)
    .bind(seqs)
    .bind(kinds)
    .bind(data)
    .bind(times)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn task_in(conn: &mut PgConnection, id: TaskId) -> DbResult<Option<Task>> {
    let row = sqlx::query("SELECT * FROM tasks WHERE id = $1").bind(id.to_string()).fetch_optional(&mut *conn).await?;
    row.as_ref().map(rows::task).transpose()
}

/// Reads a task and locks its row, having first locked its channel's counter row when
/// ending it will change the counters: every transaction takes the counter row before
/// task rows (admission, claims, ends), so two of them never wait on each other in a
/// circle.
async fn lock_task(conn: &mut PgConnection, id: TaskId) -> DbResult<Option<Task>> {
    let Some(task) = task_in(conn, id).await? else { return Ok(None) };
    if matches!(task.status, TaskStatus::Queued | TaskStatus::Running) {
        lock_counts(conn, &task.channel).await?;
    }
    let row = sqlx::query("SELECT * FROM tasks WHERE id = $1 FOR UPDATE")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(rows::task).transpose()
}

/// Clears the note that a file was being written: its record commits with this.
async fn file_recorded(conn: &mut PgConnection, key: &str) -> DbResult<()> {
    sqlx::query("DELETE FROM pending_files WHERE key = $1").bind(key).execute(&mut *conn).await?;
    Ok(())
}

/// Ends `task` (read in this transaction, its status allowing `finish`) with its
/// terminal event and settles its usage; when it was waiting, re-announces the positions behind it.
async fn finish_in(
    conn: &mut PgConnection,
    task: &Task,
    finish: &Finish,
    window: u32,
) -> DbResult<(Task, Vec<TaskEvent>)> {
    let id = task.id;
    let next = finish.status();
    let now = now_ms();
    let artifacts = if matches!(finish, Finish::Succeeded { .. }) {
        let rows = sqlx::query("SELECT * FROM artifacts WHERE task_id = $1 ORDER BY created_at, name")
            .bind(id.to_string())
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(rows::artifact).collect::<DbResult<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let (code, message, metadata) = finish.recorded();
    let row = sqlx::query(
        "UPDATE tasks SET status = $1, finished_at = $2, error_code = $3, error_message = $4, metadata = $5, \
             progress = CASE WHEN $1 = 'succeeded' THEN 100 ELSE progress END, last_seq = last_seq + 1, \
             lease_owner = NULL, lease_expires_at = NULL, last_position = NULL, placement = NULL, \
             submitting_at = NULL, client_secret = NULL \
         WHERE id = $6 RETURNING *",
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

/// Locks a channel's counter row (making it first) and reads it. Held to the end of the
/// transaction, the lock serializes every admission to the channel across processes,
/// so `queued + running` stays within the capacity exactly, as SQLite's single writer
/// keeps it; the task inserted under it also gets the next place in the queue.
async fn lock_counts(conn: &mut PgConnection, channel: &str) -> DbResult<(i64, i64)> {
    const LOCK: &str = "SELECT queued, running FROM channel_queues WHERE channel = $1 FOR UPDATE";
    // The row exists but for a channel's first task: an insert first would cost every
    // admission a statement, and wait on the row's holder besides.
    let row = match sqlx::query(LOCK).bind(channel).fetch_optional(&mut *conn).await? {
        Some(row) => row,
        None => {
            add_counter_row(&mut *conn, channel).await?;
            sqlx::query(LOCK).bind(channel).fetch_one(&mut *conn).await?
        }
    };
    Ok((row.int("queued")?, row.int("running")?))
}

async fn add_counter_row<'c>(conn: impl sqlx::PgExecutor<'c>, channel: &str) -> DbResult<()> {
    sqlx::query("INSERT INTO channel_queues (channel) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(channel)
        .execute(conn)
        .await?;
    Ok(())
}

/// Queues a task that needs no reservation ([`usage::needs_reservation`]) and has no
/// Idempotency-Key in one statement committed on its own: the channel's counter row is
/// locked and checked, and the task, its usage record and its `queued` event are
/// written, all inside PostgreSQL. Every admission to the channel waits for that lock, so it is
/// held for no round trip to kiln (a transaction of statements held it for six).
/// `None` when the channel has no counter row yet (its first task).
async fn admit_at_once(pool: &PgPool, task: &NewTask, capacity: u32) -> DbResult<Option<Enqueued>> {
    let now = now_ms();
    let row = sqlx::query(
        "WITH q AS (SELECT queued, running FROM channel_queues WHERE channel = $4 FOR UPDATE), \
         t AS (INSERT INTO tasks (id, kind, model, channel, status, prompt, picture_id, params, last_seq, \
                   last_position, created_at, client_secret, owner_id, token_id, webhook_url) \
               SELECT $1, $2, $3, $4, 'queued', $5, $6, $7, 1, q.queued + 1, $8, $9, $10, $11, $12 \
               FROM q WHERE q.queued + q.running < $13 RETURNING *), \
         u AS (INSERT INTO usage (task_id, user_id, token_id, channel, model, kind, per_task, per_image, reserved, \
                   created_at) \
               SELECT id, owner_id, token_id, channel, model, kind, 0, 0, 0, created_at FROM t), \
         e AS (INSERT INTO task_events (task_id, seq, kind, data, created_at) \
               SELECT id, 1, 'queued', jsonb_build_object('status', 'queued', 'position', last_position)::text, \
                   created_at FROM t) \
         SELECT q.queued AS waiting, t.* FROM q LEFT JOIN t ON true",
    )
    .bind(task.id.to_string())
    .bind(task.kind.as_str())
    .bind(&task.model)
    .bind(&task.channel)
    .bind(&task.prompt)
    .bind(task.picture_id.map(|p| p.to_string()))
    .bind(task.params.to_string())
    .bind(now)
    .bind(&task.client_secret)
    .bind(task.owner_id.map(|u| u.to_string()))
    .bind(task.token_id.map(|u| u.to_string()))
    .bind(&task.webhook_url)
    .bind(i64::from(capacity))
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    if row.opt_text("id")?.is_none() {
        let waiting = row.int("waiting")?;
        return Ok(Some(Enqueued::QueueFull { waiting: waiting.max(0) as u32 }));
    }
    let stored = rows::task(&row)?;
    let position = row.opt_int("last_position")?.unwrap_or(1).clamp(0, i64::from(u32::MAX)) as u32;
    let event = TaskEvent {
        task_id: task.id,
        seq: 1,
        kind: EventKind::Queued,
        data: payload::queued(position),
        created_at: to_time(now),
    };
    Ok(Some(Enqueued::Created(stored, event)))
}

/// Records `artifact` if its task is in `status` (`running` for an output the run
/// made, `succeeded` for one made from a finished task's model) and not recorded yet,
/// and clears its pending-file note. `false` when nothing was written.
async fn insert_artifact(conn: &mut PgConnection, artifact: &Artifact, status: &str) -> DbResult<bool> {
    let current: Option<String> = sqlx::query_scalar("SELECT status FROM tasks WHERE id = $1")
        .bind(artifact.task_id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    if current.as_deref() != Some(status) {
        return Ok(false);
    }
    let inserted = sqlx::query(
        "INSERT INTO artifacts (id, task_id, name, role, key, content_type, size, sha256, metadata, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
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

async fn begin(pool: &PgPool) -> DbResult<Transaction<'static, Postgres>> {
    Ok(pool.begin().await?)
}

#[async_trait]
impl TaskRepo for PostgresDatabase {
    async fn enqueue(
        &self,
        task: &NewTask,
        capacity: u32,
        idempotency: Option<(&str, &str)>,
        billing: &Billing,
    ) -> DbResult<Enqueued> {
        // An Idempotency-Key needs its lock taken before the key is looked up, in a
        // transaction: one statement reads with the snapshot it started with.
        if idempotency.is_none() && !usage::needs_reservation(&self.pool, task, billing).await? {
            if let Some(enqueued) = admit_at_once(&self.pool, task, capacity).await? {
                return Ok(enqueued);
            }
            add_counter_row(&self.pool, &task.channel).await?;
            if let Some(enqueued) = admit_at_once(&self.pool, task, capacity).await? {
                return Ok(enqueued);
            }
            return Err(DbError::Corrupt(format!("channel {} has no counter row", task.channel)));
        }
        let mut tx = begin(&self.pool).await?;
        if let Some((key, hash)) = idempotency {
            // Requests with one key take turns (a client retrying on another replica while
            // its first try is still being handled): the second finds the first's binding
            // instead of failing on it at the end.
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind(IDEMPOTENCY_LOCKS)
                .bind(key)
                .execute(&mut *tx)
                .await?;
            let existing = sqlx::query("SELECT request_hash, task_id FROM idempotency_keys WHERE key = $1")
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
        let (queued, running) = lock_counts(&mut tx, &task.channel).await?;
        if let Some(full) = queue_full(queued, running, capacity) {
            return Ok(full);
        }
        let position = queued + 1;
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO tasks (id, kind, model, channel, status, prompt, picture_id, params, last_seq, last_position, \
                 created_at, client_secret, owner_id, token_id, webhook_url) \
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, 1, $8, $9, $10, $11, $12, $13) RETURNING *",
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
                "INSERT INTO idempotency_keys (key, request_hash, task_id, created_at) VALUES ($1, $2, $3, $4)",
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
            sqlx::query("SELECT * FROM tasks WHERE id = $1").bind(id.to_string()).fetch_optional(&self.pool).await?;
        row.as_ref().map(rows::task).transpose()
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> DbResult<Vec<Task>> {
        let rows = listing::tasks::<Postgres>(filter).build().fetch_all(&self.pool).await?;
        rows.iter().map(rows::task).collect()
    }

    async fn queue_position(&self, id: TaskId) -> DbResult<Option<u32>> {
        let position: Option<i64> = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM tasks q WHERE q.channel = t.channel AND q.status = 'queued' AND q.rowid <= t.rowid) \
             FROM tasks t WHERE t.id = $1 AND t.status = 'queued'",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        Ok(position.map(|p| p.max(1) as u32))
    }

    async fn claim(&self, channel: &str, owner: &str, terms: &ClaimTerms) -> DbResult<Option<Claimed>> {
        let ClaimTerms { lease, deadline, window, max_running } = *terms;
        let now = now_ms();
        let mut tx = begin(&self.pool).await?;
        // The counter row first: claims of one channel then take turns, so the count of
        // running tasks the claim checks is the one it leaves behind, in every process.
        // A task row another transaction holds (being finished, moved) is skipped.
        let (_, running) = lock_counts(&mut tx, channel).await?;
        let row = sqlx::query(
            "UPDATE tasks SET status = 'running', lease_owner = $1, lease_expires_at = $2, attempts = attempts + 1, \
                 started_at = COALESCE(started_at, $3), deadline_at = $4, progress = 0, \
                 stage = CASE WHEN status = 'running' THEN 'restarting' ELSE 'starting' END, \
                 last_seq = last_seq + 1, last_position = NULL, \
                 placement = CASE WHEN provider_job_id IS NULL THEN NULL ELSE placement END \
             WHERE rowid = COALESCE( \
                 (SELECT rowid FROM tasks WHERE channel = $5 AND status = 'running' AND lease_expires_at < $3 \
                     ORDER BY rowid LIMIT 1 FOR UPDATE SKIP LOCKED), \
                 (SELECT rowid FROM tasks WHERE channel = $5 AND status = 'queued' AND $6 \
                     ORDER BY rowid LIMIT 1 FOR UPDATE SKIP LOCKED)) \
             RETURNING *",
        )
        .bind(owner)
        .bind(now + lease.as_millis() as i64)
        .bind(now)
        .bind(now + deadline.as_millis() as i64)
        .bind(channel)
        .bind(running < i64::from(max_running))
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
        let mut tx = begin(&self.pool).await?;
        let events = announce_positions(&mut tx, channel, window).await?;
        tx.commit().await?;
        Ok(events)
    }

    async fn renew_lease(&self, id: TaskId, owner: &str, lease: Duration) -> DbResult<bool> {
        let done = sqlx::query(
            "UPDATE tasks SET lease_expires_at = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'running'",
        )
        .bind(now_ms() + lease.as_millis() as i64)
        .bind(id.to_string())
        .bind(owner)
        .execute(&self.pool)
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
            "UPDATE tasks SET finishing_at = COALESCE(finishing_at, $1), lease_owner = $2, lease_expires_at = $3, \
                 placement = NULL, deadline_at = GREATEST(COALESCE(deadline_at, 0), $4), metadata = $5 \
             WHERE id = $6 AND status = 'running' \
                 AND (($7 = 1 AND finishing_at IS NULL) OR ($7 = 0 AND lease_owner = $2))",
        )
        .bind(now)
        .bind(owner)
        .bind(now + lease.as_millis() as i64)
        .bind(deadline.timestamp_millis())
        .bind(metadata.to_string())
        .bind(id.to_string())
        .bind(i64::from(first))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn release_leases(&self) -> DbResult<u64> {
        sqlx::query("UPDATE conversions SET lease_expires_at = 0 WHERE status = 'running'").execute(&self.pool).await?;
        let done =
            sqlx::query("UPDATE tasks SET lease_expires_at = 0 WHERE status = 'running'").execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    async fn hand_back(&self, owner: &str, ids: &[TaskId]) -> DbResult<Vec<(TaskId, String)>> {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let rows = sqlx::query(
            "UPDATE tasks SET lease_owner = NULL, lease_expires_at = 0, attempts = GREATEST(attempts - 1, 0) \
             WHERE id = ANY($1) AND lease_owner = $2 AND status = 'running' RETURNING id, channel",
        )
        .bind(&ids)
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::task_and_channel).collect()
    }

    async fn record_progress(&self, id: TaskId, progress: u8, stage: &str) -> DbResult<Option<TaskEvent>> {
        let mut tx = begin(&self.pool).await?;
        let seq: Option<i64> = sqlx::query_scalar(
            "UPDATE tasks SET progress = $1, stage = $2, last_seq = last_seq + 1 WHERE id = $3 AND status = 'running' \
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
        let mut tx = begin(&self.pool).await?;
        if !insert_artifact(&mut tx, artifact, "running").await? {
            return Ok(None);
        }
        let event = append_event(&mut tx, artifact.task_id, EventKind::Result, event).await?;
        tx.commit().await?;
        Ok(Some(event))
    }

    async fn add_derived_artifact(&self, artifact: &Artifact) -> DbResult<bool> {
        let mut tx = begin(&self.pool).await?;
        if !insert_artifact(&mut tx, artifact, "succeeded").await? {
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn mark_submitting(&self, id: TaskId, submitting: bool) -> DbResult<()> {
        sqlx::query("UPDATE tasks SET submitting_at = $1 WHERE id = $2 AND status = 'running'")
            .bind(submitting.then(now_ms))
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn record_submission(
        &self,
        id: TaskId,
        job_id: &str,
        placement: Option<&str>,
    ) -> DbResult<Option<TaskEvent>> {
        let mut tx = begin(&self.pool).await?;
        let done = sqlx::query(
            "UPDATE tasks SET provider_job_id = $1, placement = $2, submitting_at = NULL, stage = 'submitted' \
             WHERE id = $3 AND status = 'running'",
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
        let progress: i64 = sqlx::query_scalar("SELECT progress FROM tasks WHERE id = $1")
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
        sqlx::query("UPDATE tasks SET placement = $1 WHERE id = $2 AND status = 'running'")
            .bind(placement)
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn placement_loads(&self, channel: &str) -> DbResult<Vec<(String, u32)>> {
        let rows = sqlx::query(
            "SELECT placement, COUNT(*) AS n FROM tasks \
             WHERE channel = $1 AND status = 'running' AND placement IS NOT NULL GROUP BY placement",
        )
        .bind(channel)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::placement_load).collect()
    }

    async fn release_placement(&self, channel: &str, placement: &str) -> DbResult<u64> {
        let done = sqlx::query(
            "UPDATE tasks SET lease_expires_at = 0 WHERE channel = $1 AND placement = $2 AND status = 'running'",
        )
        .bind(channel)
        .bind(placement)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn client_secret(&self, id: TaskId) -> DbResult<Option<String>> {
        let secret: Option<Option<String>> =
            sqlx::query_scalar("SELECT client_secret FROM tasks WHERE id = $1 AND status IN ('queued', 'running')")
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await?;
        Ok(secret.flatten())
    }

    async fn find_artifact(&self, id: TaskId, name: &str) -> DbResult<Option<Artifact>> {
        let row = sqlx::query("SELECT * FROM artifacts WHERE task_id = $1 AND name = $2")
            .bind(id.to_string())
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::artifact).transpose()
    }

    async fn finish(&self, id: TaskId, finish: &Finish, window: u32) -> DbResult<Transition> {
        let mut tx = begin(&self.pool).await?;
        let Some(task) = lock_task(&mut tx, id).await? else { return Ok(Transition::NotFound) };
        if !task.status.can_become(finish.status()) {
            return Ok(Transition::Refused(task));
        }
        let (finished, events) = finish_in(&mut tx, &task, finish, window).await?;
        tx.commit().await?;
        Ok(Transition::Done(finished, events))
    }

    async fn list_events(&self, id: TaskId, after: i64) -> DbResult<Vec<TaskEvent>> {
        let rows = sqlx::query("SELECT * FROM task_events WHERE task_id = $1 AND seq > $2 ORDER BY seq")
            .bind(id.to_string())
            .bind(after)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::event).collect()
    }

    async fn list_artifacts(&self, id: TaskId) -> DbResult<Vec<Artifact>> {
        let rows = sqlx::query("SELECT * FROM artifacts WHERE task_id = $1 ORDER BY created_at, name")
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::artifact).collect()
    }

    async fn overdue(&self, now: DateTime<Utc>) -> DbResult<Vec<(TaskId, String)>> {
        let rows = sqlx::query(
            "SELECT id, channel FROM tasks WHERE status = 'running' AND deadline_at < $1 \
                 AND NOT (finishing_at IS NOT NULL AND lease_expires_at > $1)",
        )
        .bind(now.timestamp_millis())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::task_and_channel).collect()
    }

    async fn channel_loads(&self) -> DbResult<Vec<ChannelLoad>> {
        let rows = sqlx::query("SELECT channel, queued, running FROM channel_queues WHERE queued > 0 OR running > 0")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::channel_load).collect()
    }

    async fn count_by_status(&self) -> DbResult<Vec<(TaskStatus, u64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status").fetch_all(&self.pool).await?;
        rows::status_counts(&rows)
    }
}

#[async_trait]
impl FileRepo for PostgresDatabase {
    async fn insert_picture(&self, picture: &Picture) -> DbResult<()> {
        let mut tx = begin(&self.pool).await?;
        sqlx::query(
            "INSERT INTO pictures (id, key, content_type, format, width, height, size, sha256, original_name, created_at, \
                 owner_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
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
        let row =
            sqlx::query("SELECT * FROM pictures WHERE id = $1").bind(id.to_string()).fetch_optional(&self.pool).await?;
        row.as_ref().map(rows::picture).transpose()
    }

    async fn list_pictures(&self, scope: Scope, offset: u64, limit: u32) -> DbResult<(Vec<Picture>, u64)> {
        let (mut page, mut count) = listing::pictures::<Postgres>(scope, offset, limit);
        let rows = page.build().fetch_all(&self.pool).await?;
        let total: i64 = count.build_query_scalar().fetch_one(&self.pool).await?;
        Ok((rows.iter().map(rows::picture).collect::<DbResult<_>>()?, total.max(0) as u64))
    }

    async fn find_file(&self, key: &str) -> DbResult<Option<StoredFile>> {
        let row = sqlx::query(
            "SELECT key, content_type, size, sha256, created_at, expired_at FROM artifacts WHERE key = $1 \
             UNION ALL SELECT key, content_type, size, sha256, created_at, expired_at FROM pictures WHERE key = $1 LIMIT 1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::stored_file).transpose()
    }

    async fn expire_files_before(&self, cutoff: DateTime<Utc>) -> DbResult<Vec<String>> {
        let now = now_ms();
        let cutoff = cutoff.timestamp_millis();
        let mut tx = begin(&self.pool).await?;
        let mut keys: Vec<String> = sqlx::query_scalar(
            "UPDATE artifacts SET expired_at = $1 WHERE created_at < $2 AND expired_at IS NULL RETURNING key",
        )
        .bind(now)
        .bind(cutoff)
        .fetch_all(&mut *tx)
        .await?;
        let pictures: Vec<String> = sqlx::query_scalar(
            "UPDATE pictures SET expired_at = $1 WHERE created_at < $2 AND expired_at IS NULL RETURNING key",
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
impl JournalRepo for PostgresDatabase {
    async fn begin_file(&self, key: &str) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO pending_files (key, created_at) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET created_at = excluded.created_at",
        )
        .bind(key)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn forget_file(&self, key: &str) -> DbResult<()> {
        file_recorded(&mut *self.pool.acquire().await?, key).await
    }

    async fn pending_files_before(&self, cutoff: DateTime<Utc>) -> DbResult<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT key FROM pending_files WHERE created_at < $1 ORDER BY created_at")
            .bind(cutoff.timestamp_millis())
            .fetch_all(&self.pool)
            .await?)
    }
}

#[async_trait]
impl MessageRepo for PostgresDatabase {
    async fn remember_message(&self, id: &str, now: DateTime<Utc>) -> DbResult<bool> {
        let done = sqlx::query("INSERT INTO webhook_messages (id, received_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(id)
            .bind(now.timestamp_millis())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn forget_messages_before(&self, cutoff: DateTime<Utc>) -> DbResult<u64> {
        let done = sqlx::query("DELETE FROM webhook_messages WHERE received_at < $1")
            .bind(cutoff.timestamp_millis())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl SingletonRepo for PostgresDatabase {
    async fn hold_singleton(&self, name: &str, holder: &str, ttl: Duration, now: DateTime<Utc>) -> DbResult<bool> {
        let until = now.timestamp_millis().saturating_add(rows::millis(ttl));
        // One statement: the row lock of ON CONFLICT makes concurrent takers take turns.
        let held: Option<String> = sqlx::query_scalar(
            "INSERT INTO singletons (name, holder, until) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until \
             WHERE singletons.holder = excluded.holder OR singletons.until < $4 \
             RETURNING holder",
        )
        .bind(name)
        .bind(holder)
        .bind(until)
        .bind(now.timestamp_millis())
        .fetch_optional(&self.pool)
        .await?;
        Ok(held.as_deref() == Some(holder))
    }
}

#[async_trait]
impl Database for PostgresDatabase {
    async fn ping(&self) -> DbResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    fn notifier(&self) -> Arc<dyn crate::notify::Notifier> {
        Arc::clone(&self.notifier) as Arc<dyn crate::notify::Notifier>
    }
}

/// What SQLite's single writer gave for free, checked with several connections standing
/// in for several kiln processes. They run against the server named by
/// `KILN_TEST_DATABASE_URL` (`scripts/with-postgres.sh` starts one), each in a database
/// of its own, and are skipped (saying so) without it.
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Notify;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{db::ClaimTerms, tasks::TaskKind};

    /// `n` connections to one database: `n` processes, as far as the database can tell.
    async fn processes(n: usize) -> Option<Vec<Arc<PostgresDatabase>>> {
        let url = crate::db::scratch::postgres_url().await?;
        let mut all = Vec::new();
        for _ in 0..n {
            all.push(Arc::new(PostgresDatabase::connect(&url, 4).await.expect("connect")));
        }
        Some(all)
    }

    fn task(channel: &str) -> NewTask {
        NewTask {
            id: TaskId(Uuid::now_v7()),
            kind: TaskKind::TextTo3d,
            model: "echo".into(),
            channel: channel.into(),
            prompt: Some("a vase".into()),
            picture_id: None,
            params: serde_json::json!({}),
            client_secret: None,
            owner_id: None,
            token_id: None,
            webhook_url: None,
        }
    }

    #[tokio::test]
    async fn a_channel_admits_exactly_its_capacity_across_processes() {
        let Some(dbs) = processes(3).await else { return };
        let mut submissions = tokio::task::JoinSet::new();
        for i in 0..60 {
            let db = Arc::clone(&dbs[i % dbs.len()]);
            submissions.spawn(async move { db.enqueue(&task("busy"), 6, None, &Billing::default()).await });
        }
        let mut positions = Vec::new();
        let mut full = 0;
        while let Some(done) = submissions.join_next().await {
            match done.expect("join").expect("enqueue") {
                Enqueued::Created(_, event) => positions.push(event.data["position"].as_u64().expect("position")),
                Enqueued::QueueFull { .. } => full += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        positions.sort_unstable();
        assert_eq!(positions, vec![1, 2, 3, 4, 5, 6], "six admitted, each told its own place");
        assert_eq!(full, 54);
    }

    #[tokio::test]
    async fn concurrent_claims_never_take_one_task_twice_nor_pass_max_running() {
        let Some(dbs) = processes(3).await else { return };
        for _ in 0..10 {
            dbs[0].enqueue(&task("gpu"), 100, None, &Billing::default()).await.expect("enqueue");
        }
        let terms =
            ClaimTerms { lease: Duration::from_secs(30), deadline: Duration::from_secs(60), window: 5, max_running: 4 };
        let mut claims = tokio::task::JoinSet::new();
        for i in 0..12 {
            let db = Arc::clone(&dbs[i % dbs.len()]);
            claims.spawn(async move { db.claim("gpu", &format!("process-{i}"), &terms).await });
        }
        let mut taken = Vec::new();
        while let Some(done) = claims.join_next().await {
            if let Some(claimed) = done.expect("join").expect("claim") {
                taken.push(claimed.task.id);
            }
        }
        taken.sort_unstable();
        let before = taken.len();
        taken.dedup();
        assert_eq!(taken.len(), before, "no task claimed twice");
        assert_eq!(taken.len(), 4, "as many as max_running, no more");
        let loads = dbs[1].channel_loads().await.expect("loads");
        assert_eq!((loads[0].queued, loads[0].running), (6, 4), "the counters agree");
    }

    #[tokio::test]
    async fn work_and_events_reach_the_other_processes() {
        let Some(dbs) = processes(2).await else { return };
        let stop = CancellationToken::new();
        let hearing = dbs[1].notifier().listen(stop.clone()).expect("PostgreSQL listens");
        let wake = Arc::new(Notify::new());
        dbs[1].notifier().register("relief", &wake);
        // The listener connects in the background; notify until it has heard.
        let woken = async {
            loop {
                dbs[0].notifier().work("relief");
                if tokio::time::timeout(Duration::from_millis(200), wake.notified()).await.is_ok() {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), woken).await.expect("the other process's dispatcher woke");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), hearing).await.expect("the listener stops").expect("join");
    }
}
