//! Persistence behind repository traits. Handlers and the scheduler speak these traits;
//! each database backend is one implementation of them (SQLite, PostgreSQL),
//! and no SQL lives anywhere else.
//!
//! Every status change is written together with its event in one transaction, and the
//! caller publishes the returned events only after that transaction committed.

mod accounts;
pub mod channels;
pub mod copy;
mod deliveries;
mod listing;
mod postgres;
mod rows;
#[cfg(test)]
mod scratch;
mod sqlite;
mod usage;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::tasks::{Artifact, NewTask, Picture, Task, TaskEvent, TaskId, TaskStatus};

pub use accounts::*;
pub use channels::{
    ChannelRepo, ChannelStats, Destination, LastError, Rehome, RehomeRoute, Rehomed, Stored, StoredChannel,
};
pub use deliveries::{DeliveryRepo, NextStep};
pub use postgres::{PgNotifier, PostgresDatabase};
pub use sqlite::SqliteDatabase;
pub use usage::{
    Activity, Billing, HourlyCredits, HourlyTasks, Price, UsageFilter, UsageRecord, UsageRepo, UsageTotals,
};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database query failed")]
    Query(#[from] sqlx::Error),
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("unsupported database URL `{0}`")]
    UnsupportedUrl(String),
}

pub type DbResult<T> = Result<T, DbError>;

/// The result of trying to add a task to a channel's queue.
#[derive(Debug)]
pub enum Enqueued {
    /// A new task, and its `queued` event.
    Created(Task, TaskEvent),
    /// The same Idempotency-Key with the same request: the task made the first time.
    Replayed(Task),
    /// The same Idempotency-Key with a different request.
    KeyConflict,
    /// The channel already holds `max_queue` waiting tasks.
    QueueFull { waiting: u32 },
    /// The payer's balance does not cover the task's price.
    InsufficientQuota { balance: i64, price: i64 },
    /// The token's spending cap does not cover it.
    SpendCapReached { cap: i64, spent: i64, price: i64 },
    /// The owner already has this many tasks queued or running.
    TooManyActive { limit: u32 },
}

/// The terms of a claim.
#[derive(Debug, Clone, Copy)]
pub struct ClaimTerms {
    /// How long the claim lasts without renewal.
    pub lease: Duration,
    /// How long the task may run from now.
    pub deadline: Duration,
    /// Waiting tasks whose changed position is announced with the claim.
    pub window: u32,
    /// A waiting task is only taken while fewer than this many of the channel's tasks
    /// run, counting every process and detached work on push workers. Re-claiming a
    /// task whose lease lapsed is always allowed: it is already counted.
    pub max_running: u32,
}

/// A task taken off a channel's queue under a lease.
#[derive(Debug)]
pub struct Claimed {
    pub task: Task,
    /// The `processing` event of the claim, then the re-announced positions of the
    /// tasks still waiting.
    pub events: Vec<TaskEvent>,
}

/// How a task ends.
#[derive(Debug, Clone)]
pub enum Finish {
    Succeeded { metadata: serde_json::Value },
    Failed { code: String, message: String },
    Canceled,
}

impl Finish {
    pub fn status(&self) -> TaskStatus {
        match self {
            Finish::Succeeded { .. } => TaskStatus::Succeeded,
            Finish::Failed { .. } => TaskStatus::Failed,
            Finish::Canceled => TaskStatus::Canceled,
        }
    }

    /// What the ended task's row records: its error code and message, and its metadata
    /// (an empty object unless it succeeded).
    fn recorded(&self) -> (Option<String>, Option<String>, serde_json::Value) {
        let empty = || serde_json::Value::Object(Default::default());
        match self {
            Finish::Succeeded { metadata } => (None, None, metadata.clone()),
            Finish::Failed { code, message } => (Some(code.clone()), Some(message.clone()), empty()),
            Finish::Canceled => (None, None, empty()),
        }
    }
}

/// The refusal of a task by a channel that already holds `capacity` tasks queued and
/// running, or `None` when it has room.
fn queue_full(queued: i64, running: i64, capacity: u32) -> Option<Enqueued> {
    (queued + running >= i64::from(capacity)).then(|| Enqueued::QueueFull { waiting: queued.max(0) as u32 })
}

/// The result of a conditional status change.
#[derive(Debug)]
pub enum Transition {
    /// Done; the events written, to be published.
    Done(Task, Vec<TaskEvent>),
    /// The task was not in a state from which this change is allowed.
    Refused(Task),
    NotFound,
}

/// Whose records a listing covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scope {
    /// Everyone's (an admin's view).
    #[default]
    All,
    /// One owner's; `None` is what anonymous callers made.
    Owner(Option<Uuid>),
}

/// A page of tasks, newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub scope: Scope,
    pub status: Option<TaskStatus>,
    /// Only tasks made from this stored picture.
    pub picture_id: Option<Uuid>,
    /// Only tasks older than this one (the cursor).
    pub before: Option<TaskId>,
    pub limit: u32,
}

/// A file that may be served under `/files/{key}`.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub key: String,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    pub created_at: DateTime<Utc>,
    pub expired: bool,
}

impl From<Artifact> for StoredFile {
    fn from(artifact: Artifact) -> Self {
        Self {
            key: artifact.key,
            content_type: artifact.content_type,
            size: artifact.size,
            sha256: artifact.sha256,
            created_at: artifact.created_at,
            expired: artifact.expired_at.is_some(),
        }
    }
}

/// Per-channel queue depth.
#[derive(Debug, Clone)]
pub struct ChannelLoad {
    pub channel: String,
    pub queued: u64,
    pub running: u64,
}

/// Tasks, their event log and their artifacts: one aggregate, since a task's status,
/// events and outputs change together.
#[async_trait]
pub trait TaskRepo: Send + Sync {
    /// Admits a task to its channel's queue (refusing it when `max_queue` are waiting),
    /// checks the owner's limit of active tasks, reserves its price from the payer's
    /// balance (and the token's cap), and records it with its `queued` event and its
    /// usage record, binding the Idempotency-Key — all in one transaction.
    async fn enqueue(
        &self,
        task: &NewTask,
        max_queue: u32,
        idempotency: Option<(&str, &str)>,
        billing: &Billing,
    ) -> DbResult<Enqueued>;

    async fn get_task(&self, id: TaskId) -> DbResult<Option<Task>>;
    async fn list_tasks(&self, filter: &TaskFilter) -> DbResult<Vec<Task>>;
    /// 1-based position among the channel's waiting tasks; `None` unless queued.
    async fn queue_position(&self, id: TaskId) -> DbResult<Option<u32>>;

    /// Takes the oldest waiting task of `channel` (or a running one whose lease expired)
    /// in one short transaction, and leases it to `owner`.
    async fn claim(&self, channel: &str, owner: &str, terms: &ClaimTerms) -> DbResult<Option<Claimed>>;
    /// Re-announces the positions of the first `window` waiting tasks of `channel` whose
    /// position changed since they were last told.
    async fn announce_positions(&self, channel: &str, window: u32) -> DbResult<Vec<TaskEvent>>;
    /// Extends a lease; false when the task is no longer ours or no longer running.
    async fn renew_lease(&self, id: TaskId, owner: &str, lease: Duration) -> DbResult<bool>;
    /// Marks a running task as finishing (its provider is done; kiln makes its outputs),
    /// with the provider's `metadata`, leases it to `owner` and moves its deadline to at
    /// least `deadline`. `first`: only if nobody began finishing it (a worker's
    /// `completed` callback, which may come twice); otherwise only if `owner` holds its
    /// lease (the run that claimed it). False when refused, or the task no longer runs.
    /// The task leaves its worker (`placement`): the job is done there, and a worker
    /// found lost meanwhile must not hand the task to another dispatcher.
    async fn claim_finishing(
        &self,
        id: TaskId,
        first: bool,
        owner: &str,
        lease: Duration,
        deadline: DateTime<Utc>,
        metadata: &serde_json::Value,
    ) -> DbResult<bool>;
    /// Makes the leases of running tasks (and of conversions) claimable again at once.
    /// Called at start-up by a backend that only one process may use; returns the tasks.
    async fn release_leases(&self) -> DbResult<u64>;
    /// Hands running tasks leased to `owner` back to the queue at a graceful stop:
    /// claimable again at once, by any process, no longer renewable by `owner`, and the
    /// interrupted run not counted as an attempt (a stop is not a crash the task may
    /// have caused). Returns the tasks handed back, with their channels.
    async fn hand_back(&self, owner: &str, ids: &[TaskId]) -> DbResult<Vec<(TaskId, String)>>;

    /// Appends a `processing` event while the task runs; `None` when it no longer runs.
    async fn record_progress(&self, id: TaskId, progress: u8, stage: &str) -> DbResult<Option<TaskEvent>>;
    /// Records a stored output and its `result` event while the task runs, clearing its
    /// file's note in the same transaction. `None` when the task no longer runs or
    /// already has an output of that name.
    async fn add_artifact(&self, artifact: &Artifact, event: serde_json::Value) -> DbResult<Option<TaskEvent>>;
    /// Records an output made after the task succeeded (a conversion asked for later),
    /// clearing its file's note, with no event: the task's log has ended. False when the
    /// task is not `succeeded` or already has an output of that name.
    async fn add_derived_artifact(&self, artifact: &Artifact) -> DbResult<bool>;
    /// Marks a submission to the upstream as in flight (`true`) or as provably not taken
    /// (`false`), while the task runs.
    async fn mark_submitting(&self, id: TaskId, submitting: bool) -> DbResult<()>;
    /// Records the upstream's id for the job and where it was placed, with a
    /// `processing` event, in one transaction; `None` when the task no longer runs.
    async fn record_submission(&self, id: TaskId, job_id: &str, placement: Option<&str>)
    -> DbResult<Option<TaskEvent>>;
    /// Records where a running task was placed (a push worker's base URL).
    async fn place(&self, id: TaskId, placement: &str) -> DbResult<()>;
    /// Running tasks of a channel per placement.
    async fn placement_loads(&self, channel: &str) -> DbResult<Vec<(String, u32)>>;
    /// Makes a channel's running tasks placed on `placement` claimable again at once
    /// (the push worker was lost); returns how many.
    async fn release_placement(&self, channel: &str, placement: &str) -> DbResult<u64>;
    /// A task's sealed client secret (a client's own provider key), while it runs.
    async fn client_secret(&self, id: TaskId) -> DbResult<Option<String>>;
    /// The output of a task with that name, if one was recorded.
    async fn find_artifact(&self, id: TaskId, name: &str) -> DbResult<Option<Artifact>>;
    /// Ends a task if its status allows it, with its terminal event, and settles its
    /// usage: the price charged on success, the rest of the reservation refunded.
    async fn finish(&self, id: TaskId, finish: &Finish, window: u32) -> DbResult<Transition>;

    async fn list_events(&self, id: TaskId, after: i64) -> DbResult<Vec<TaskEvent>>;
    async fn list_artifacts(&self, id: TaskId) -> DbResult<Vec<Artifact>>;
    /// Running tasks whose deadline has passed, with their channels — but not a task
    /// being finished under a live lease: its model exists, and each file it still
    /// makes is under a conversion's own time ceiling.
    async fn overdue(&self, now: DateTime<Utc>) -> DbResult<Vec<(TaskId, String)>>;

    async fn channel_loads(&self) -> DbResult<Vec<ChannelLoad>>;
    async fn count_by_status(&self) -> DbResult<Vec<(TaskStatus, u64)>>;
}

/// Stored input pictures and the lookup of any stored file by key.
#[async_trait]
pub trait FileRepo: Send + Sync {
    /// Records a picture, clearing its file's note in the same transaction.
    async fn insert_picture(&self, picture: &Picture) -> DbResult<()>;
    async fn get_picture(&self, id: Uuid) -> DbResult<Option<Picture>>;
    /// Newest first; `offset`/`limit` paging.
    async fn list_pictures(&self, scope: Scope, offset: u64, limit: u32) -> DbResult<(Vec<Picture>, u64)>;
    async fn find_file(&self, key: &str) -> DbResult<Option<StoredFile>>;
    /// Marks pictures and artifacts created before `cutoff` as expired and returns
    /// their storage keys, for deletion.
    async fn expire_files_before(&self, cutoff: DateTime<Utc>) -> DbResult<Vec<String>>;
}

/// Files being written to storage whose record is not committed yet. A write is noted
/// before it starts; the transaction that records the file (a picture, an artifact)
/// clears the note, so a note that stays behind names a file a crash left without a
/// record, for the sweep to delete.
#[async_trait]
pub trait JournalRepo: Send + Sync {
    /// Notes that a file is about to be written under `key`.
    async fn begin_file(&self, key: &str) -> DbResult<()>;
    /// Clears a note: the file was deleted, or is referenced after all.
    async fn forget_file(&self, key: &str) -> DbResult<()>;
    /// Keys noted before `cutoff` and never recorded, oldest first.
    async fn pending_files_before(&self, cutoff: DateTime<Utc>) -> DbResult<Vec<String>>;
}

/// Ids of accepted signed messages, so a replay is refused across every kiln process.
#[async_trait]
pub trait MessageRepo: Send + Sync {
    /// Records a message id; false when it was already recorded.
    async fn remember_message(&self, id: &str, now: DateTime<Utc>) -> DbResult<bool>;
    /// Forgets ids received before `cutoff` (older messages are refused as stale anyway).
    async fn forget_messages_before(&self, cutoff: DateTime<Utc>) -> DbResult<u64>;
}

/// Work that one process at a time should do when several share the database (the
/// daily retention run, the deadline sweep, the webhook sweeps): a named lease, taken
/// by whoever asks when it is free or lapsed, and kept by renewing it.
#[async_trait]
pub trait SingletonRepo: Send + Sync {
    /// Takes or renews the lease `name` for `holder` until `now + ttl`; true when
    /// `holder` has it, false when another holder's lease has not lapsed.
    async fn hold_singleton(&self, name: &str, holder: &str, ttl: Duration, now: DateTime<Utc>) -> DbResult<bool>;
}

/// What [`ConversionRepo::begin_conversion`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConversionClaim {
    /// The caller holds the lease now: it converts, renewing the lease while it works.
    Taken,
    /// Another holder converts now; its lease has not lapsed.
    Held,
    /// Made already, from the same model.
    Done,
    /// Failed for good from the same model: converting again would fail the same way.
    Failed { code: String, message: String },
}

impl ConversionClaim {
    /// What a conversion the caller could not take is, from its row's `status`,
    /// `error_code` and `error_message` (read after the attempt), alike on every backend.
    pub(crate) fn not_taken(row: Option<(String, Option<String>, Option<String>)>) -> Self {
        match row {
            Some((status, _, _)) if status == "done" => Self::Done,
            Some((status, code, message)) if status == "failed" => {
                Self::Failed { code: code.unwrap_or_default(), message: message.unwrap_or_default() }
            }
            // Running under another holder's live lease (or changed since: asked again).
            _ => Self::Held,
        }
    }

    /// A row of [`LIST_CONVERSIONS`]; `None` when it may be asked for again.
    pub(crate) fn listed(
        (format, state, code, message): (String, String, Option<String>, Option<String>),
    ) -> Option<(String, Self)> {
        let claim = match state.as_str() {
            "done" => Self::Done,
            "running" => Self::Held,
            "failed" => Self::Failed { code: code.unwrap_or_default(), message: message.unwrap_or_default() },
            _ => return None,
        };
        Some((format, claim))
    }
}

/// How a conversion ended, for [`ConversionRepo::end_conversion`].
#[derive(Debug, Clone, Copy)]
pub enum ConversionEnd<'a> {
    Done,
    Failed { code: &'a str, message: &'a str, permanent: bool },
}

/// Conversions of a task's model into other formats, shared by the processes using the
/// database: one of them makes a given (task, format) at a time, under a lease, and a
/// failure that would repeat is remembered for the model it was made from.
#[async_trait]
pub trait ConversionRepo: Send + Sync {
    /// Takes the conversion of `(task, format)` from the model `source_sha256` for
    /// `holder` until `now + lease` when nobody holds it: never tried, failed in a way
    /// worth retrying, its holder's lease lapsed, made from another model, or already
    /// `holder`'s. Otherwise says who has it or how it ended.
    async fn begin_conversion(
        &self,
        task: TaskId,
        format: &str,
        source_sha256: &str,
        holder: &str,
        lease: Duration,
    ) -> DbResult<ConversionClaim>;
    /// Extends `holder`'s lease; false when it is no longer `holder`'s.
    async fn renew_conversion(&self, task: TaskId, format: &str, holder: &str, lease: Duration) -> DbResult<bool>;
    /// Ends `holder`'s conversion (nothing when it is no longer `holder`'s).
    async fn end_conversion(&self, task: TaskId, format: &str, holder: &str, end: ConversionEnd<'_>) -> DbResult<()>;
    /// The task's conversions that are under way (`Held`), made (`Done`) or failed for
    /// good (`Failed`), by format; the others may be asked for again.
    async fn list_conversions(&self, task: TaskId) -> DbResult<Vec<(String, ConversionClaim)>>;
}

/// The query of [`ConversionRepo::list_conversions`], alike on every backend: `$1` the
/// task, `$2` now; each row's `state` is `done`, `failed`, `running` or `free`.
pub(crate) const LIST_CONVERSIONS: &str = "SELECT format, CASE WHEN status = 'done' THEN 'done' \
     WHEN status = 'failed' AND permanent = 1 THEN 'failed' \
     WHEN status = 'running' AND lease_expires_at >= $2 THEN 'running' ELSE 'free' END AS state, \
     error_code, error_message FROM conversions WHERE task_id = $1 ORDER BY format";

/// The whole database.
#[async_trait]
pub trait Database:
    TaskRepo
    + FileRepo
    + JournalRepo
    + MessageRepo
    + SingletonRepo
    + ConversionRepo
    + UsageRepo
    + AccountRepo
    + DeliveryRepo
    + ChannelRepo
{
    async fn ping(&self) -> DbResult<()>;
    /// Whether several kiln processes may share this database (leases then expire on
    /// their own instead of being released at start-up).
    fn shared(&self) -> bool;
    /// How the processes sharing this database tell each other what they committed.
    fn notifier(&self) -> Arc<dyn crate::notify::Notifier>;
}

pub type Db = Arc<dyn Database>;

/// Opens the database named by `url` and runs the embedded migrations.
pub async fn connect(url: &str, max_connections: u32) -> DbResult<Db> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteDatabase::connect(url, max_connections).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresDatabase::connect(url, max_connections).await?))
    } else {
        Err(DbError::UnsupportedUrl(url.split(':').next().unwrap_or_default().to_owned()))
    }
}

/// Event payloads shared by every backend.
pub(crate) mod payload {
    use serde_json::{Value, json};

    use super::Finish;
    use crate::tasks::{Artifact, Task};

    pub fn queued(position: u32) -> Value {
        json!({ "status": "queued", "position": position })
    }

    pub fn processing(progress: u8, stage: &str) -> Value {
        json!({ "status": "running", "progress": progress, "stage": stage })
    }

    /// The terminal event of `task`, ended at `now` (ms) with `artifacts` as its outputs.
    pub fn finish(finish: &Finish, task: &Task, artifacts: &[Artifact], now: i64) -> Value {
        let outputs = Value::Array(artifacts.iter().map(Artifact::summary).collect());
        let generation_time = task.started_at.map(|s| (now - s.timestamp_millis()).max(0) as f64 / 1000.0);
        match finish {
            Finish::Succeeded { metadata } => json!({
                "status": "succeeded",
                "outputs": outputs,
                "metadata": metadata,
                "generation_time": generation_time,
            }),
            Finish::Failed { code, message } => json!({
                "status": "failed",
                "error": { "code": code, "message": message },
            }),
            Finish::Canceled => json!({ "status": "canceled" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::scratch::{Scratch, on_every_backend};

    on_every_backend!(
        a_singleton_is_held_by_one_holder_until_its_lease_lapses,
        a_finishing_task_leaves_its_worker_and_is_not_overdue_while_its_lease_lives,
    );

    /// A running task placed on worker `gpu-1`, past its deadline, for `finishing`.
    async fn placed_task(db: &Scratch) -> TaskId {
        let id = db.enqueue_task("gpu", "trellis2", None).await;
        let terms = ClaimTerms { lease: Duration::from_secs(60), deadline: Duration::ZERO, window: 0, max_running: 4 };
        let claimed = db.claim("gpu", "dispatcher", &terms).await.expect("claim").expect("a task");
        assert_eq!(claimed.task.id, id);
        db.place(id, "gpu-1").await.expect("placed");
        id
    }

    async fn a_finishing_task_leaves_its_worker_and_is_not_overdue_while_its_lease_lives(db: &Scratch) {
        let id = placed_task(db).await;
        let later = Utc::now() + chrono::Duration::seconds(5);
        assert_eq!(db.placement_loads("gpu").await.expect("loads"), [("gpu-1".to_owned(), 1)]);
        assert_eq!(db.overdue(later).await.expect("overdue").len(), 1, "past its (zero) deadline");

        // The worker said `completed`; this process finishes the task, the deadline
        // given for that already passed (a busy converter).
        let metadata = serde_json::json!({ "files": 1 });
        let past = Utc::now() - chrono::Duration::seconds(1);
        let lease = Duration::from_secs(60);
        assert!(db.claim_finishing(id, true, "finisher", lease, past, &metadata).await.expect("finishing"));
        assert!(!db.claim_finishing(id, true, "another", lease, past, &metadata).await.expect("twice"), "once");
        assert!(db.placement_loads("gpu").await.expect("loads").is_empty(), "the worker's slot is free");
        assert_eq!(db.release_placement("gpu", "gpu-1").await.expect("release"), 0, "a lost worker takes it nowhere");
        assert!(db.overdue(later).await.expect("overdue").is_empty(), "finishing under a live lease");
        // Its process died: the lease lapses and the deadline counts again.
        let lapsed = Utc::now() + chrono::Duration::seconds(61);
        assert_eq!(db.overdue(lapsed).await.expect("overdue"), [(id, "gpu".to_owned())]);
    }

    async fn a_singleton_is_held_by_one_holder_until_its_lease_lapses(db: &Scratch) {
        let ttl = Duration::from_secs(10);
        let t0 = Utc::now();
        assert!(db.hold_singleton("sweep", "a", ttl, t0).await.expect("take"));
        assert!(!db.hold_singleton("sweep", "b", ttl, t0).await.expect("refused"), "a holds it");
        assert!(db.hold_singleton("other", "b", ttl, t0).await.expect("take"), "names are apart");
        let later = t0 + chrono::Duration::seconds(8);
        assert!(db.hold_singleton("sweep", "a", ttl, later).await.expect("renew"), "its holder renews it");
        let lapsed = later + chrono::Duration::seconds(11);
        assert!(db.hold_singleton("sweep", "b", ttl, lapsed).await.expect("take over"), "lapsed: b takes it");
        assert!(!db.hold_singleton("sweep", "a", ttl, lapsed).await.expect("refused"), "and a has lost it");
    }
}
